r"""The paper-scale MNIST protocol: full MNIST, target 8, eps 0.1.

PACD against each of Gaussian augmentation, MACER and SmoothAdv with the reference
code's constants (``poison_mnist.get_config('METHOD')``, all 5,421 class-8 training
images poisoned); LeNet victims trained from scratch with each method for 101 epochs
(``train_mnist.get_config('METHOD')``) on the clean set, each PACD set (the 3x3 transfer
matrix), the random +-eps baselines (clipped, and zero-mean) and the set without class 8;
``wide_cnn`` and ``mlp`` victims with Gaussian augmentation on every set; 3 victim seeds
(mean +- std). Certification as the reference: 500 seeded class-8 test points, N0 = 100,
N = 100,000, alpha = 0.001, sigma = the victim's training sigma.

Needs a GPU. Estimated runtime on one H100 (not measured; see README): the attacks
1-3 h each; the 105 victims about 25 h, dominated by the 21 MACER LeNets (about 40 min
each); certification about 1.5 h. ``--config.seeds=0`` cuts the victims to a third.
Expected result: the paper's abstract claims a target-class ACR drop of more than 30% for
all three training methods, and transfer across methods and architectures; see README for
what rsp measures.

Prepare the data once (network, TensorFlow)::

    pip install -e ".[prepare]" && python -m rsp.data --prepare=mnist

Command::

    python experiments/run.py --config=rsp/configs/protocol_mnist_paper.py \
        --workdir=/tmp/rsp/protocol_mnist_paper
"""

from rsp.configs import common
from rsp.configs import poison_mnist
from rsp.configs import protocol
from rsp.configs import train_mnist


def get_config(arg: str | None = None):
  common.parse_mode(arg, modes=('paper',))
  c = protocol.build_config(
      name='mnist_paper', dataset='mnist', target_class=8, eps=0.1,
      attacks={m: poison_mnist.get_config(m) for m in common.ATTACK_METHODS},
      victims={m: train_mnist.get_config(m) for m in common.ATTACK_METHODS},
      certify=protocol.paper_certify_settings(),
      poison_kinds=('none', 'pacd', 'random', 'random_zero_mean', 'no_target'),
      archs=('lenet', 'wide_cnn', 'mlp'),
      seeds=(0, 1, 2))
  c.other_arch_methods = ('gaussian',)
  return c
