r"""PACD against each certified defense's own training: the methods protocol.

Argument: MODE in small (default) | tiny.

For each training method M of Gaussian augmentation, MACER and SmoothAdv: PACD poisons
crafted against M (``poison_mnist.get_config('M,small')``: each attack's inner problem
matched to its victim's method and constants, docs/attack_variants.md), and LeNet
victims trained with M (``train_mnist.get_config('M,small')``) on the clean set, the
PACD set crafted against M and the random +-eps baseline of the same budget, three
victim seeds each: the diagonal of ``protocol_transfer.py``'s matrix
(``pacd_victims='own'``), with 95% Student-t intervals over the seeds, the paired
per-point comparison of every poisoned victim with the clean victim of its seed and
PACD against the random baseline over points and over seeds (results.md).

* small: 3 attacks and 27 victims. Measured one method at a time on a 2-core Intel Xeon
  (2026-12-02): gaussian 34 min, macer 52 min (an attack 4-5 min, a victim 3 and 5.5
  min); smoothadv is estimated at about 40 min (attack 6 min, victims about 90 s of
  training and 1 min of certification on an AMD EPYC): about 2 h in all. Measured
  (README, "PACD against each method's own victims"): class-8 ACR drops of 51.4%
  [43.4, 59.5] (gaussian), 35.3% [-24.1, 94.7] (macer) and 40.9% [20.6, 61.2]
  (smoothadv), every PACD victim below the random-noise victim of its seed.
* tiny: seconds per stage, one seed, for tests.

Command::

    python experiments/run.py --config=rsp/configs/protocol_methods.py \
        --workdir=/tmp/rsp/protocol_methods

One method only: ``--config.crafted_against=macer --config.train_methods=macer``.
"""

from rsp.configs import common
from rsp.configs import protocol_transfer


def get_config(arg: str | None = None):
  mode = common.parse_mode(arg, modes=common.CPU_MODES, default='small')
  c = protocol_transfer.get_config(mode)  # The three attacks and victims of each mode.
  c.name = f'mnist_methods_{mode}'
  c.archs = ('lenet',)
  c.other_arch_methods = ()
  c.pacd_victims = 'own'
  c.seeds = (0, 1, 2) if mode == 'small' else (0,)
  return c
