"""End to end: experiments/certify.py on the tiny config certifies a real (briefly
trained) checkpoint, and a second model run reuses the recorded points."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rsp import data
from rsp import metrics
from rsp import smoothing
from rsp import train
from rsp.configs import certify as certify_config
from rsp.configs import train_mnist

jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def checkpoint_dir(tmp_path_factory):
  """A LeNet trained for 4 steps on 64 embedded MNIST digits (a real checkpoint)."""
  workdir = str(tmp_path_factory.mktemp('train'))
  config = train_mnist.get_config('gaussian,tiny')
  config.num_epochs = 1
  config.batch_size = 16
  splits = data.load(config.dataset, seed=config.data_seed)
  small = {'train': data.subset(splits['train'], np.arange(64)),
           'test': data.subset(splits['test'], np.arange(32))}
  train.train(config, small, workdir)
  return workdir


def test_configs():
  tiny = certify_config.get_config('tiny')
  assert tiny.num_points == 4 and tiny.n >= smoothing.min_samples_to_certify(tiny.alpha)
  paper = certify_config.get_config(None)
  assert (paper.n0, paper.n, paper.alpha, paper.num_points, paper.target_class) == (
      100, 100_000, 0.001, 500, 8)
  assert certify_config.get_config('small').n == 10_000
  with pytest.raises(ValueError, match='mode'):
    certify_config.get_config('huge')


def test_certify_script_end_to_end(checkpoint_dir, tmp_path):
  workdir = str(tmp_path / 'certify')
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'certify.py'),
       f'--config={os.path.join(ROOT, "rsp", "configs", "certify.py")}:tiny',
       f'--checkpoint_dir={checkpoint_dir}', f'--workdir={workdir}'],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'ACR' in proc.stdout

  rows = metrics.read_certification_tsv(os.path.join(workdir, 'certify.tsv'))
  summary = metrics.read_json(os.path.join(workdir, 'summary.json'))
  assert len(rows) == 4 and all(r.label == 8 for r in rows)
  assert summary['indices'] == [r.idx for r in rows]
  assert summary['num_points'] == 4 and summary['sigma'] == 0.5  # The training sigma.
  assert 0.0 <= summary['certified_accuracy'] <= 1.0 and np.isfinite(summary['acr'])
  assert metrics.read_json(os.path.join(workdir, 'config.json'))['n'] == 64
  with open(os.path.join(workdir, 'certified_accuracy.png'), 'rb') as f:
    assert f.read(4) == b'\x89PNG'

  # A second model certified on the recorded points, in-process through the library.
  config = certify_config.get_config('tiny')
  config.checkpoint_dir = checkpoint_dir
  config.indices_file = os.path.join(workdir, 'summary.json')
  config.target_class = -1  # Ignored: the indices file decides.
  other = smoothing.certify_split(config, str(tmp_path / 'again'))
  assert other['indices'] == summary['indices']
  # Same model, same key: the same certificates.
  assert other['acr'] == summary['acr']

  # Resuming the same workdir: a new batch size is fine (it does not change the
  # certificates), a new n is refused before any work.
  config.batch_size = 32
  assert smoothing.certify_split(config, str(tmp_path / 'again'))['acr'] == other['acr']
  config.n = 128
  with pytest.raises(ValueError, match='other settings.*n: 64 -> 128'):
    smoothing.certify_split(config, str(tmp_path / 'again'))
