r"""Trains a (robust) classifier: ``rsp.train.train_and_evaluate(config, workdir)``.

    python experiments/train.py --config=rsp/configs/train_mnist.py:gaussian,small \
        --workdir=/tmp/rsp/train_mnist_gaussian

Restarting with the same ``--workdir`` resumes from the newest intact checkpoint; a
restart with other settings or inputs (another seed, a changed poison file) is refused
before anything is written, naming each differing field (``rsp.train.RESUMABLE_FIELDS``
lists what may change).
"""

from absl import app
from absl import flags

from rsp import scripts
from rsp import train

_WORKDIR = scripts.define_flags(
    config_help='Training config file.',
    workdir_help='Directory for checkpoints and metrics.')


def main(argv):
  scripts.start(argv)
  result = train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  s = result.summary
  target = s.get('target_test_accuracy')
  target = '' if target is None else f' (class {s["target_class"]}: {target:.4f})'
  print(f'clean test accuracy {s["test_accuracy"]:.4f}{target} after '
        f'{s["train_seconds"]:.0f} s of training ({s["steps"]} steps); wrote '
        f'{_WORKDIR.value}')


if __name__ == '__main__':
  app.run(main)
