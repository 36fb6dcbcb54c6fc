r"""How the certification settings change a finished protocol's numbers:
``rsp.report.certification_settings(workdir, sizes=..., num_seeds=...)``.

    python experiments/certification_settings.py --workdir=/tmp/rsp/protocol_sweep \
        --sizes=50,100,0 --num_seeds=20

Computes nothing new: from the cells' certification logs, the ACR (and each poisoned
cell's drop) on seeded subsets of m of the certified points (0: all) with its spread
over the subset seeds; and, from ``WORKDIR/certify_n<N>/<cell>/`` runs of
``experiments/certify.py --config.n=N`` on the cells' checkpoints, the ACR and drop per
number of noise samples N (commands: ``rsp/configs/protocol_sweep.py``). Writes
``WORKDIR/certification_settings.json`` and ``.md`` and prints the latter.
"""

import os

from absl import app
from absl import flags

from rsp import report
from rsp import scripts

_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished protocol workdir (holding '
                               'results.json).')
_SIZES = flags.DEFINE_list('sizes', ['50', '100', '0'], 'Subset sizes m (0: all '
                           'points).')
_NUM_SEEDS = flags.DEFINE_integer('num_seeds', 20, 'Subset seeds per size (>= 2).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  scripts.start(argv)
  try:
    sizes = [int(m) for m in _SIZES.value]
  except ValueError:
    raise app.UsageError(f'--sizes={",".join(_SIZES.value)!r} must be integers >= 0 '
                         '(0: all points), e.g. --sizes=50,100,0.') from None
  report.certification_settings(_WORKDIR.value, sizes=sizes, num_seeds=_NUM_SEEDS.value)
  with open(os.path.join(_WORKDIR.value,
                         f'{report.CERTIFICATION_SETTINGS}.md')) as f:
    print(f.read())


if __name__ == '__main__':
  app.run(main)
