"""Robust training of ResNet-20 v1 on CIFAR-10 with the reference code's constants.

Argument: ``METHOD[,MODE]``, METHOD in standard | gaussian | macer | smoothadv (default
gaussian), MODE in paper (default) | small | tiny.

* paper: CIFAR-10 through TFDS (45k train), the reference constants: gaussian sigma 0.5,
  201 epochs, batch 200, crop+flip; macer sigma 0.25, k 16, lambda 12 (4 if sigma is not
  0.25), beta 16, gamma 8, 101 epochs, batch 100, crop+flip; smoothadv sigma 0.25, m 1,
  2 Adam-PGD steps, eps 1 warmed up over 10 epochs, 101 epochs, batch 100, no crop/flip.
  Adam, lr 1e-3. BatchNorm in standard training mode (``model_kwargs.norm='frozen'``
  replicates the reference's BatchNorm, which runs in inference mode with its initial
  statistics). Needs a GPU: about 0.5 h (gaussian) to 6 h (macer) on one modern GPU
  (estimated from samples/s).
* small: 3 epochs, for a CPU smoke run on prepared CIFAR-10. On a 2-core CPU under
  load (load average 4-6) a step of Gaussian augmentation (batch 200) took 3.6 s, so an
  epoch (225 steps) about 14 min; MACER's k = 16 costs 57 s a step of 100 (see
  benchmarks/train_throughput.py): the paper mode needs a GPU.
* tiny: 8 training points, 2 steps of 4, for tests on mock data.

Prepare the data once (network, TensorFlow)::

    pip install -e ".[prepare]" && python -m rsp.data --prepare=cifar10

Command::

    python experiments/train.py --config=rsp/configs/train_cifar10.py:macer \\
        --workdir=/tmp/rsp/train_cifar10_macer
"""

from rsp import robust_training
from rsp.configs import common


def get_config(arg: str | None = None):
  method, mode = common.parse_arg(arg, methods=common.TRAIN_METHODS)
  c = common.train_base_config()
  c.dataset = 'cifar10'
  c.model = 'resnet20'
  c.model_kwargs.norm = 'batch'
  c.method = method
  c.augment = method != 'smoothadv'
  # The loss's defaults are the reference's constants, except those set below; MACER's
  # lambda 12 is the reference's at sigma 0.25 (it uses 4 at other sigmas).
  c.loss.update(robust_training.loss_defaults(method))
  if method in ('standard', 'gaussian'):
    c.num_epochs = 201
    c.batch_size = 200
  elif method == 'macer':
    c.num_epochs = 101
    c.batch_size = 100
  elif method == 'smoothadv':
    c.num_epochs = 101
    c.batch_size = 100
    c.loss.pgd = 'adam'  # The reference's Adam-based "PGD", not Salman et al.'s.
    c.smoothadv_warmup_epochs = 10

  if mode == 'small':
    c.num_epochs = 3
  elif mode == 'tiny':
    common.shrink_to_tiny(c)
    # ResNet-20 on a few mock CIFAR-10 images in tests: fewer, smaller steps.
    c.num_epochs = 1
    c.batch_size = 4
    c.train_subset = 8
    c.eval_batch_size = 8
  return c
