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

* small: 3 attacks and 27 victims. Estimated for an otherwise idle 2-core CPU from the
  measured stage times (benchmarks/README.md: attacks 4, 4.5 and 6 min; a victim's
  training 75 s, 160 s and 90 s and its certification about 1 min): about 1 h 30 min.
  Not yet run end to end.
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
