r"""The whole evaluation protocol: ``rsp.protocol.run_protocol(config, workdir)``.

    python experiments/run.py --config=rsp/configs/protocol.py \
        --workdir=/tmp/rsp/protocol

Makes the PACD poisons and the baselines, trains the victims from scratch, certifies them
on the same target-class test points and writes ``WORKDIR/results.json``,
``WORKDIR/results.md`` and ``WORKDIR/figures/``. Restarting with the same ``--workdir``
resumes: finished poisons, victims and certificates are not redone.
"""

import os

from absl import app
from absl import flags

from rsp import protocol
from rsp import scripts

_WORKDIR = scripts.define_flags(
    config_help='Protocol config file.',
    workdir_help='Directory for poisons, victims, results.')


def main(argv):
  scripts.start(argv)
  results = protocol.run_protocol(flags.FLAGS.config, _WORKDIR.value)
  with open(os.path.join(_WORKDIR.value, 'results.md')) as f:
    print(f.read())
  print(f'{len(results["rows"])} victims; wrote {_WORKDIR.value}/results.json, '
        'results.md and figures/')


if __name__ == '__main__':
  app.run(main)
