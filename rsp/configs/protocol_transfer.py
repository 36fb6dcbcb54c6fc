r"""Transfer of PACD poisons across training methods and architectures (embedded MNIST).

Argument: MODE in small (default) | tiny.

Poisons are made against each victim training method (Gaussian augmentation, MACER,
SmoothAdv; ``poison_mnist.get_config('METHOD,MODE')``), and LeNet victims are trained
with each method (``train_mnist.get_config('METHOD,MODE')``) on each poison set: the 3x3
matrix of the target-class ACR drop (poisons made against row, victim trained with
column) in ``results.md``. Victims of another architecture (``mlp``, a 784-512-512
fully connected network) are trained with Gaussian augmentation on every poison set
(``other_arch_methods``). Each victim is certified at its own training sigma (0.5 for
Gaussian augmentation and MACER, 0.75 for SmoothAdv) on the same 100 class-8 test
points, N = 10,000. The attacks are ``poison_mnist.py:METHOD,small``, whose inner
problems match these victims (MACER at sigma 0.5 and lambda 16; SmoothAdv with 5 inner
steps; since 2026-12-03 the MACER and SmoothAdv attacks' surrogates train with Gaussian
augmentation for twice the Gaussian attack's steps, which took more from converged
victims, so both rows hold the Gaussian row's poisons run on; ``small_matched`` has each
method's own surrogate); ``small_reference`` keeps the
reference's attack constants.

* small: 3 attacks and 20 victims, about 1 h 30 min on an otherwise idle 2-core CPU
  (estimated from the parts measured 2026-11-24, when the MACER and SmoothAdv victims
  trained 15 and 20 epochs: the attacks 3 min 48 s to 4 min 30 s each; training plus
  certification of a LeNet victim 2.2 min with Gaussian augmentation, 3.7 min with
  MACER, 2.3 min with SmoothAdv, twice that for today's converged MACER and SmoothAdv
  victims' training; an MLP victim 20-27 s). Measured then, with the reference attack
  constants (one seed; README has the tables): ACR drops of 36-62% for every PACD set
  on every LeNet victim except MACER poisons on the MACER victim (17%), 94-97% on the
  MLP, against 25%, -5%, 14% and 46% for random +-eps noise; with the matched inner
  problems the own-method drops were 53% (MACER) and 43% (SmoothAdv) against those
  shorter victims, docs/attack_variants.md. The ``wide_cnn`` architecture (870k parameters, 3x3
  convolutions) is left out of the small mode: on a 2-core CPU it trains at about 170-210
  images/s, 11-12 minutes per victim plus 5 minutes of certification (measured: its
  Gaussian victim's class-8 ACR fell from 1.329 to 0.444 with the Gaussian PACD
  poisons, -66.6%); add it with ``--config.archs=lenet,mlp,wide_cnn``.
* tiny: seconds per stage, for checks of the grid.

Command::

    python experiments/run.py --config=rsp/configs/protocol_transfer.py \
        --workdir=/tmp/rsp/protocol_transfer

Run one row of the matrix only with ``--config.crafted_against=macer``; add seeds with
``--config.seeds=0,1,2``.
"""

from rsp.configs import common
from rsp.configs import poison_mnist
from rsp.configs import protocol
from rsp.configs import train_mnist


def get_config(arg: str | None = None):
  mode = common.parse_mode(arg, modes=common.CPU_MODES, default='small')
  c = protocol.build_config(
      name=f'mnist_transfer_{mode}', dataset='mnist_embedded', target_class=8, eps=0.1,
      attacks={m: poison_mnist.get_config(f'{m},{mode}') for m in common.ATTACK_METHODS},
      victims={m: train_mnist.get_config(f'{m},{mode}') for m in common.ATTACK_METHODS},
      certify=protocol.certify_settings(mode),
      poison_kinds=('none', 'pacd', 'random'),
      archs=('lenet', 'mlp'))
  c.other_arch_methods = ('gaussian',)
  if mode == 'tiny':
    common.shrink_to_tiny(c)
  return c
