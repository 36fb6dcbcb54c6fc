"""What every ``experiments/`` script shares: its two flags and its start-up.

Each script is ``main(argv)`` over one library call::

    _WORKDIR = scripts.define_flags(config_help='Training config file.',
                                    workdir_help='Directory for checkpoints and metrics.')

    def main(argv):
      scripts.start(argv)
      train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)

    if __name__ == '__main__':
      app.run(main)
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from rsp import checkpointing
from rsp import runtime

_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir', runtime.default_cache_dir(),
    "JAX's persistent compilation cache: later runs load their compiled steps from it "
    "('' turns it off).")


def define_flags(*, config_help: str, workdir_help: str) -> flags.FlagHolder:
  """Defines the required ``--config`` (an ml_collections file, locked) and ``--workdir``.

  Returns the ``--workdir`` holder; the config is ``flags.FLAGS.config``.
  """
  workdir = flags.DEFINE_string('workdir', None, workdir_help)
  config_flags.DEFINE_config_file('config', None, config_help, lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'])
  return workdir


def start(argv: Sequence[str]) -> None:
  """Refuses stray positional arguments, hides orbax's INFO lines, turns on the
  compilation cache (``--compilation_cache_dir``), logs the devices."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {list(argv[1:])}')
  checkpointing.quiet_orbax_logging()
  if flags.FLAGS.is_parsed() and _CACHE_DIR.value:
    logging.info('Compilation cache: %s',
                 runtime.enable_compilation_cache(_CACHE_DIR.value))
  logging.info('JAX devices: %s', jax.devices())
