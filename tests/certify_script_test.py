"""End to end: experiments/certify.py on the tiny config certifies a real (briefly
trained) checkpoint, a second certification reuses the recorded points, and the script
refuses bad flags and a resume onto a model that was trained on.

Deterministic: fixed seeds and keys, assertions about files, exit codes and messages
(failure odds 0 for each test).
"""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from rsp import certification
from rsp import data
from rsp import metrics
from rsp import smoothing
from rsp import train
from rsp import workdir as workdir_lib
from rsp.configs import certify as certify_config
from rsp.configs import train_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module', autouse=True)
def _fast_compilation():
  """Compiling dominates these tests: XLA's optimisations off for this module only."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


def _train(workdir: str, num_epochs: int) -> None:
  """LeNet trained on 64 embedded MNIST digits, 4 steps per epoch (a real checkpoint)."""
  config = train_mnist.get_config('gaussian,tiny')
  config.num_epochs = num_epochs
  config.batch_size = 16
  splits = data.load(config.dataset, seed=config.data_seed)
  small = {'train': data.subset(splits['train'], np.arange(64)),
           'test': data.subset(splits['test'], np.arange(32))}
  train.train(config, small, workdir)


@pytest.fixture(scope='module')
def checkpoint_dir(tmp_path_factory):
  """A training run of one epoch (4 steps)."""
  workdir = str(tmp_path_factory.mktemp('train'))
  _train(workdir, num_epochs=1)
  return workdir


def _run_script(*flags):
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'certify.py'),
       f'--config={os.path.join(ROOT, "rsp", "configs", "certify.py")}:tiny', *flags],
      env=env, capture_output=True, text=True, timeout=300, check=False)


def test_configs():
  """Deterministic (failure odds 0)."""
  tiny = certify_config.get_config('tiny')
  assert tiny.num_points == 4 and tiny.n >= smoothing.min_samples_to_certify(tiny.alpha)
  paper = certify_config.get_config(None)
  assert (paper.n0, paper.n, paper.alpha, paper.num_points, paper.target_class) == (
      100, 100_000, 0.001, 500, 8)
  assert certify_config.get_config('small').n == 10_000
  with pytest.raises(ValueError, match='mode'):
    certify_config.get_config('huge')


def test_certify_script_end_to_end(checkpoint_dir, tmp_path):
  """The script certifies, the library certifies a second time on the recorded points
  with the same result (same model, key and program), a new batch size resumes, a new
  n is refused. Deterministic (failure odds 0)."""
  workdir = str(tmp_path / 'certify')
  proc = _run_script(f'--checkpoint_dir={checkpoint_dir}', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert 'ACR' in proc.stdout

  rows = metrics.read_certification_tsv(os.path.join(workdir, 'certify.tsv'))
  summary = workdir_lib.read_json(os.path.join(workdir, 'summary.json'))
  assert len(rows) == 4 and all(r.label == 8 for r in rows)
  assert summary['indices'] == [r.idx for r in rows]
  assert summary['num_points'] == 4 and summary['sigma'] == 0.5  # The training sigma.
  assert 0.0 <= summary['certified_accuracy'] <= 1.0 and np.isfinite(summary['acr'])
  record = workdir_lib.read_json(os.path.join(workdir, 'config.json'))
  assert record['n'] == 64 and record['inputs']['checkpoint']['step'] == 4
  with open(os.path.join(workdir, 'certified_accuracy.png'), 'rb') as f:
    assert f.read(4) == b'\x89PNG'

  # A second certification on the recorded points, in-process through the library.
  config = certify_config.get_config('tiny')
  config.checkpoint_dir = checkpoint_dir
  config.indices_file = os.path.join(workdir, 'summary.json')
  config.target_class = -1  # Ignored: the indices file decides.
  other = certification.certify_split(config, str(tmp_path / 'again'))
  assert other['indices'] == summary['indices']
  # Same model, same key: the same certificates.
  assert other['acr'] == summary['acr']

  # Resuming the same workdir: a new batch size is fine (it does not change the
  # certificates), a new n is refused before any work.
  config.batch_size = 32
  assert certification.certify_split(config, str(tmp_path / 'again'))['acr'] == \
      other['acr']
  config.n = 128
  with pytest.raises(ValueError, match=r'other settings.*\n  n: 64 there, 128 now'):
    certification.certify_split(config, str(tmp_path / 'again'))


def test_script_refuses_bad_flags_before_writing(checkpoint_dir, tmp_path):
  """--config.alpha=0.7 (accepted before): a non-zero exit naming the field, and no
  workdir. Deterministic (failure odds 0)."""
  workdir = tmp_path / 'certify'
  proc = _run_script(f'--checkpoint_dir={checkpoint_dir}', f'--workdir={workdir}',
                     '--config.alpha=0.7')
  assert proc.returncode != 0
  assert 'config.alpha=0.7 must be a number in the open interval (0, 0.5)' in proc.stderr
  assert not workdir.exists()


def test_script_refuses_to_resume_onto_a_model_trained_on(checkpoint_dir, tmp_path):
  """Certify, train the run on in place (experiments/train.py with a larger
  num_epochs does this), certify again into the same workdir: refused, naming the
  checkpoint step, and the log is kept as it was. Deterministic (failure odds 0)."""
  trained = str(tmp_path / 'train')
  shutil.copytree(checkpoint_dir, trained)
  workdir = str(tmp_path / 'certify')
  proc = _run_script(f'--checkpoint_dir={trained}', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(workdir, 'certify.tsv')) as f:
    log = f.read()
  _train(trained, num_epochs=2)
  proc = _run_script(f'--checkpoint_dir={trained}', f'--workdir={workdir}')
  assert proc.returncode != 0
  assert 'inputs.checkpoint.step: 4 there, 8 now' in proc.stderr
  with open(os.path.join(workdir, 'certify.tsv')) as f:
    assert f.read() == log
