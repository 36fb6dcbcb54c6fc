r"""Generates PACD poisons: ``rsp.attack.run_attack(config, workdir)``.

    python experiments/poison.py --config=rsp/configs/poison_mnist.py:gaussian,small \
        --workdir=/tmp/rsp/poison_mnist_gaussian

Writes ``WORKDIR/poisons.npz`` (validated on load by ``rsp.data.load_poisons``), the
config, settings, metrics and checkpoints; restarting with the same ``--workdir``
resumes. A restart with other settings (``--config.seed=1``, another ``--config.eps``)
or on other data is refused before any work, naming each differing field
(``rsp.attack.RESUMABLE_FIELDS`` lists what may change: more epochs, logging).
"""

from absl import app
from absl import flags

from rsp import attack
from rsp import scripts

_WORKDIR = scripts.define_flags(
    config_help='Attack config file.',
    workdir_help='Directory for poisons, metrics, checkpoints.')


def main(argv):
  scripts.start(argv)
  result = attack.run_attack(flags.FLAGS.config, _WORKDIR.value)
  meta = result.metadata
  print(f'wrote {result.path}: {len(result.indices)} poisons of class '
        f'{meta["target_class"]}, eps {meta["eps"]}, {meta["steps"]} steps in '
        f'{meta["attack_seconds"]:.0f} s')


if __name__ == '__main__':
  app.run(main)
