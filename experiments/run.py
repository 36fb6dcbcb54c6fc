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
from absl import logging
import jax
from ml_collections import config_flags

from rsp import checkpointing
from rsp import protocol

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for poisons, victims, results.')
config_flags.DEFINE_config_file('config', None, 'Protocol config file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  checkpointing.quiet_orbax_logging()
  logging.info('JAX devices: %s', jax.devices())
  results = protocol.run_protocol(flags.FLAGS.config, _WORKDIR.value)
  with open(os.path.join(_WORKDIR.value, 'results.md')) as f:
    print(f.read())
  print(f'{len(results["rows"])} victims; wrote {_WORKDIR.value}/results.json, '
        'results.md and figures/')


if __name__ == '__main__':
  app.run(main)
