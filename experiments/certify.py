r"""Certifies a trained model: ``rsp.certification.certify_split(config, workdir)``.

    python experiments/certify.py --config=rsp/configs/certify.py:small \
        --config.checkpoint_dir=/tmp/rsp/train_mnist_gaussian \
        --workdir=/tmp/rsp/certify_mnist_gaussian

Writes ``certify.tsv`` (Cohen's log), ``summary.json`` and ``certified_accuracy.png`` to
the workdir. Restarting with the same ``--workdir`` resumes the log; it is refused if the
settings or the model changed (e.g. the training run went on to more epochs).
"""

from absl import app
from absl import flags

from rsp import certification
from rsp import scripts

_WORKDIR = scripts.define_flags(
    config_help='Certification config file.',
    workdir_help='Directory for the certification log, summary and figure.')
_CHECKPOINT_DIR = flags.DEFINE_string('checkpoint_dir', None, 'Workdir of the trained '
                                      'model (overrides config.checkpoint_dir).')


def main(argv):
  scripts.start(argv)
  config = flags.FLAGS.config
  if _CHECKPOINT_DIR.value:
    config.checkpoint_dir = _CHECKPOINT_DIR.value
  summary = certification.certify_split(config, _WORKDIR.value)
  print(f'ACR {summary["acr"]:.4f}, certified accuracy {summary["certified_accuracy"]:.4f}, '
        f'abstain rate {summary["abstain_rate"]:.4f} over {summary["num_points"]} points; '
        f'wrote {_WORKDIR.value}')


if __name__ == '__main__':
  app.run(main)
