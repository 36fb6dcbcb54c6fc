r"""Certifying a trained model with Cohen's CERTIFY.

Argument: MODE in paper (default) | small | tiny.

* paper: the reference's settings: N0 = 100, N = 100,000, alpha = 0.001, 500 points of
  the target class (8) drawn from the test split by a recorded seed, sigma = the model's
  training sigma. Expected runtime on a 2-core AVX2 CPU (benchmarks/certify_throughput.py:
  about 18,000 LeNet and 850 ResNet-20 noisy samples/s): about 6 s per LeNet point
  (50 min for 500) and 2 min per ResNet-20 point (16 h for 500); use a GPU for CIFAR-10.
  Expected result for LeNet trained with Gaussian augmentation (sigma 0.5) on the
  embedded MNIST data: target-class ACR about 1.2.
* small: N = 10,000 on 100 target-class points: about 1 min for LeNet on 2 CPU cores.
* tiny: 4 points, N = 64, for tests (seconds).

Command::

    python experiments/certify.py --config=rsp/configs/certify.py:small \
        --config.checkpoint_dir=/tmp/rsp/train_mnist_gaussian \
        --workdir=/tmp/rsp/certify_mnist_gaussian

Certify a second model on exactly the same points (and the same noise draws) with
``--config.indices_file=/tmp/rsp/certify_mnist_gaussian/summary.json``; certify every
class with ``--config.target_class=-1`` (None or 'all' from Python).

Rerunning with the same ``--workdir`` resumes the log. A changed setting (other than
``batch_size``, ``chunk_size`` and the paths) or a changed model, for instance after the
training run went on to more epochs, is refused with the fields that differ
(``rsp.certification``).
"""

import ml_collections

from rsp.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = common.parse_mode(arg)
  c = ml_collections.ConfigDict()
  c.checkpoint_dir = ''    # Workdir of experiments/train.py holding the model.
  c.dataset = ''           # '' = the data set the model was trained on.
  c.data_dir = ''          # TFDS data directory ('' = TFDS default).
  c.data_seed = -1         # Seed of the train/val split; -1 = the training run's.
  c.split = 'test'
  c.target_class = 8       # Certify only this class; -1 = all classes.
  c.num_points = 500       # Seeded subset of that many points; <= 0 = all of them.
  c.subset_seed = 0        # Seeds the subset (recorded in summary.json as 'indices').
  c.indices_file = ''      # JSON with 'indices' (e.g. another run's summary.json).
  c.sigma = -1.0           # Noise level; <= 0 = the model's training sigma.
  c.n0 = 100               # Selection samples.
  c.n = 100_000            # Estimation samples.
  c.alpha = 0.001          # Failure probability of each certificate.
  c.batch_size = 500       # Noisy images per pass (CPU; ~10,000 on a GPU); it does not
                           # change the certificates.
  c.chunk_size = 0         # Points per TSV write; 0 = batch_size // n0.
  c.seed = 0               # Certification key; point idx uses fold_in(key, idx).
  if mode == 'small':
    c.n = 10_000
    c.num_points = 100
  elif mode == 'tiny':
    common.shrink_to_tiny(c)
  return c
