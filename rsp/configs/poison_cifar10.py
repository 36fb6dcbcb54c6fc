"""PACD against ResNet-20 on CIFAR-10 with the reference code's constants.

Argument: ``METHOD[,MODE]``, METHOD in gaussian | macer | smoothadv (default gaussian),
MODE in paper | small | tiny.

* paper: CIFAR-10 (TFDS), target 8 ("ship"), eps 0.03; B_c/B_p/B_v 180/20/20; ApproxGrad
  niter1/niter2 10/10 (SmoothAdv 1/10); learning rates of the surrogate's weights v
  (``inner_learning_rate``) 1e-3, of ApproxGrad's p (``solver_learning_rate``) 1e-3
  (MACER 1e-4) and of the poisons u (``poison_learning_rate``) 0.1; sig 1e-3; 51 epochs
  (MACER 50, SmoothAdv 100) of 250 steps, re-initialised every 10 (SmoothAdv 20).
  Outer: k 5, beta 16, alpha 1e-3, sigma 0.5 (GA) or 0.25 (MACER, SmoothAdv); crop+flip
  of clean and validation batches for GA and MACER. The surrogate's BatchNorm is the
  reference's frozen one (``norm='frozen'``: inference mode with the initial statistics).
  Needs a GPU: an estimated 4-10 h on one modern GPU (12,500 outer steps, each 10
  inner steps and 20 Hessian-vector products at batch 200).
* small: 2 epochs of 50 steps, a CPU smoke run on prepared CIFAR-10 (tens of minutes).
* tiny: one step on a tiny batch, for tests on mock data.

Prepare the data once: ``pip install -e ".[prepare]" && python -m rsp.data --prepare=cifar10``.

Command::

    python experiments/poison.py --config=rsp/configs/poison_cifar10.py:gaussian \\
        --workdir=/tmp/rsp/poison_cifar10_gaussian
"""

from rsp import robust_training
from rsp.configs import common


def get_config(arg: str | None = None):
  method, mode = common.parse_arg(arg, methods=common.ATTACK_METHODS)
  c = common.attack_base_config()
  c.dataset = 'cifar10'
  c.model = 'resnet20'
  c.model_kwargs.norm = 'frozen'
  c.eps = 0.03
  a = c.attack
  a.method = method
  a.clean_batch_size = 180
  a.poison_batch_size = 20
  a.val_batch_size = 20
  a.outer_num_noise = 5
  a.solver_learning_rate = 1e-3
  if method == 'gaussian':
    a.sigma = 0.5
    a.inner.sigma = 0.5
    a.augment = True
    a.num_epochs = 51
  elif method == 'macer':
    a.sigma = 0.25
    a.inner.sigma = 0.25
    a.inner.num_noise = 2   # The attack's k_in and lambda (victims use 16, 12).
    a.inner.lbd = 2.0
    a.inner.update(robust_training.loss_defaults('macer', 'gamma', 'beta', 'alpha'))
    a.solver_learning_rate = 1e-4
    a.augment = True
  else:
    a.sigma = 0.25
    a.inner.sigma = 0.25
    a.inner.update(robust_training.loss_defaults('smoothadv', 'epsilon', 'num_steps'))
    a.inner.pgd = 'adam'  # The reference's Adam-based "PGD", not Salman et al.'s.
    a.inner_steps = 1
    a.num_epochs = 100
    a.reinit_every_epochs = 20

  if mode == 'small':
    a.num_epochs = 2
    a.steps_per_epoch = 50
    a.reinit_every_epochs = 1
  elif mode == 'tiny':
    common.shrink_to_tiny(c)
    # ResNet-20 on a few mock CIFAR-10 images in tests: one step on smaller batches.
    a.clean_batch_size = 4
    a.poison_batch_size = 2
    a.val_batch_size = 2
    a.inner_steps = 1
    a.solver_steps = 1
    a.num_epochs = 1
    a.steps_per_epoch = 1
  return c
