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

* small: 3 attacks and 27 victims, each method's victims trained to convergence
  (Gaussian 100 epochs, 40 until 2026-12-04; MACER 30, SmoothAdv 40;
  ``train_mnist.py``), the MACER and SmoothAdv attacks with the Gaussian attack's
  surrogate over 440 steps (``poison_mnist.py:M,small``; both make the same poisons).
  Estimated from its parts on a 2-core AMD EPYC (2026-12-03): about 3 h 15 min one
  method after the other (attacks 3-6 min; a victim's training plus certification about
  2 min for Gaussian, 6.5 min for MACER and 4 min for SmoothAdv when alone), about 2 h
  with ``--workers=2``. Measured (README, "PACD against each method's victims trained to
  convergence"): class-8 ACR drops of 49.9% [33.4, 66.5] (gaussian, 100 epochs; 51.4%
  with 40), 46.0% [1.2, 90.9] (macer) and 40.3% [21.1, 59.5] (smoothadv), every PACD
  victim below the random-noise victim of its seed. Until 2026-12-03 the MACER and
  SmoothAdv victims trained 15 and 20 epochs, against which the drops were 35.3%
  (MACER's own surrogate) and 40.9%.
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
