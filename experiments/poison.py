r"""Generates PACD poisons: ``rsp.attack.run_attack(config, workdir)``.

    python experiments/poison.py --config=rsp/configs/poison_mnist.py:gaussian,small \
        --workdir=/tmp/rsp/poison_mnist_gaussian

Writes ``WORKDIR/poisons.npz`` (validated on load by ``rsp.data.load_poisons``), the
metrics and checkpoints; restarting with the same ``--workdir`` resumes.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from rsp import attack
from rsp import checkpointing

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for poisons, metrics, checkpoints.')
config_flags.DEFINE_config_file('config', None, 'Attack config file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  checkpointing.quiet_orbax_logging()
  logging.info('JAX devices: %s', jax.devices())
  result = attack.run_attack(flags.FLAGS.config, _WORKDIR.value)
  meta = result.metadata
  print(f'wrote {result.path}: {len(result.indices)} poisons of class '
        f'{meta["target_class"]}, eps {meta["eps"]}, {meta["steps"]} steps in '
        f'{meta["attack_seconds"]:.0f} s')


if __name__ == '__main__':
  app.run(main)
