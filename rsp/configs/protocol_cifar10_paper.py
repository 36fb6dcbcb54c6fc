r"""The paper-scale CIFAR-10 protocol: target 8 (ship), eps 0.03.

PACD against each of Gaussian augmentation, MACER and SmoothAdv with the reference
code's CIFAR constants (``poison_cifar10.get_config('METHOD,paper')``: ResNet-20
surrogate with frozen BatchNorm, B_c/B_p/B_v 180/20/20, k 5, ApproxGrad 10/10 steps
(SmoothAdv 1/10), crop+flip for GA and MACER), all 4.5k ship training images poisoned;
ResNet-20 victims trained from scratch with each method
(``train_cifar10.get_config('METHOD')``: 201/101/101 epochs) on the clean set, each PACD
set (the 3x3 transfer matrix) and the random +-eps baseline; ``preact_resnet29``
victims with Gaussian augmentation on every set; one victim seed.
Certification as the reference: 500 seeded ship test points, N0 = 100, N = 100,000,
alpha = 0.001, sigma = the victim's training sigma (0.5 GA, 0.25 MACER and SmoothAdv).

Needs a GPU. Estimated runtime on one H100 (not measured; see README): the attacks
2-6 h each; the 20 victims about 45 h, dominated by the 5 MACER ResNets (about 6 h
each); certification about 5 h. Expected result: the paper's abstract claims a
target-class ACR drop of more than 30%; see README for what rsp measures.

Prepare the data once (network, TensorFlow)::

    pip install -e ".[prepare]" && python -m rsp.data --prepare=cifar10

Command::

    python experiments/run.py --config=rsp/configs/protocol_cifar10_paper.py \
        --workdir=/tmp/rsp/protocol_cifar10_paper
"""

from rsp.configs import common
from rsp.configs import poison_cifar10
from rsp.configs import protocol
from rsp.configs import train_cifar10


def get_config(arg: str | None = None):
  common.parse_mode(arg, modes=('paper',))
  c = protocol.build_config(
      name='cifar10_paper', dataset='cifar10', target_class=8, eps=0.03,
      attacks={m: poison_cifar10.get_config(f'{m},paper') for m in common.ATTACK_METHODS},
      victims={m: train_cifar10.get_config(m) for m in common.ATTACK_METHODS},
      certify=protocol.paper_certify_settings(),
      poison_kinds=('none', 'pacd', 'random'),
      archs=('resnet20', 'preact_resnet29'))
  c.other_arch_methods = ('gaussian',)
  return c
