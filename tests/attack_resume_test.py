"""Tests of the PACD attack's run record: what ``rsp.attack.run_attack`` (and
``experiments/poison.py``) refuse before any work, and how they recover.

A workdir holds one attack: resuming it with another seed, budget or any other
non-resumable setting, or on other data, is refused by name before a step is taken or a
file written; bad fields are refused before the workdir is made; odd workdirs fail at
once; a damaged newest checkpoint falls back to the older one and ends with the
uninterrupted attack's poisons.

Every test is deterministic (fixed seeds and keys, bit-for-bit comparisons or exact
messages): none can fail by chance.
"""

import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rsp import attack
from rsp import data
from rsp import robust_training
from rsp import workdir as workdir_lib
from rsp.configs import poison_mnist

jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**overrides):
  """The tiny Gaussian attack (an MLP surrogate, 2 epochs of 2 steps, checkpoints at
  steps 2 and 4) with ``overrides``; dotted names reach nested fields."""
  config = poison_mnist.get_config('gaussian,tiny')
  for name, value in overrides.items():
    *path, field = name.split('.')
    node = config
    for p in path:
      node = node[p]
    node[field] = value
  return config


def _snapshot(directory):
  """Every file under ``directory`` with its size and modification time."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      st = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), directory)] = (st.st_size,
                                                                   st.st_mtime_ns)
  return out


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """The tiny attack, run once without interruption by ``run_attack``."""
  workdir = str(tmp_path_factory.mktemp('attack') / 'run')
  return workdir, attack.run_attack(_tiny(), workdir)


def test_the_record_holds_settings_and_input_fingerprints(finished):
  workdir, result = finished
  assert sorted(os.listdir(workdir)) == ['attack_checkpoints', 'attack_metrics.jsonl',
                                         'config.json', 'poisons.npz', 'settings.json']
  config = workdir_lib.to_json(_tiny())  # Tuples as lists.
  assert workdir_lib.read_json(os.path.join(workdir, 'config.json')) == config
  settings = workdir_lib.read_json(os.path.join(workdir, 'settings.json'))
  splits = data.load('mnist_embedded')
  assert settings == {'config': config, 'inputs': {
      'train_data': workdir_lib.array_digest(splits['train']['image'],
                                             splits['train']['label']),
      'val_data': workdir_lib.array_digest(splits['val']['image'],
                                           splits['val']['label'])}}
  steps = [r['step'] for r in workdir_lib.read_json_lines(
      os.path.join(workdir, 'attack_metrics.jsonl'))]
  assert steps == [1, 2, 3, 4]
  assert result.metadata['seed'] == 0 and result.metadata['steps'] == 4


@pytest.mark.parametrize('overrides,message', [
    ({'seed': 1}, 'config.seed: 0 there, 1 now'),
    ({'eps': 0.05}, 'config.eps: 0.1 there, 0.05 now'),
    ({'target_class': 3}, 'config.target_class: 8 there, 3 now'),
    ({'attack.sigma': 0.75}, 'config.attack.sigma: 0.5 there, 0.75 now'),
    ({'attack.steps_per_epoch': 1}, 'config.attack.steps_per_epoch: 2 there, 1 now'),
])
def test_another_attack_in_the_workdir_is_refused_before_any_work(finished, overrides,
                                                                  message):
  """Resuming with seed 1 once restored seed 0's checkpoint and wrote seed 1's
  metadata; eps 0.05 failed only at the final save. Now: refused by name, nothing
  written, no step taken."""
  workdir, _ = finished
  before = _snapshot(workdir)
  with pytest.raises(workdir_lib.SettingsMismatchError) as e:
    attack.run_attack(_tiny(**overrides), workdir)
  assert message in str(e.value) and 'new workdir' in str(e.value)
  assert _snapshot(workdir) == before


def test_other_data_in_the_workdir_is_refused(finished):
  workdir, _ = finished
  splits = data.load('mnist_embedded')
  splits['val'] = data.subset(splits['val'], np.arange(400))
  before = _snapshot(workdir)
  with pytest.raises(workdir_lib.SettingsMismatchError, match='inputs.val_data'):
    attack.pacd(_tiny(), splits, workdir)
  assert _snapshot(workdir) == before


def test_fewer_epochs_than_the_workdir_holds_are_refused(finished):
  """The poison file would claim 2 steps for poisons of 4."""
  workdir, _ = finished
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match=r'config.attack.num_epochs=1 gives 2 steps, but .* '
                                       r'holds an attack of 4 steps'):
    attack.run_attack(_tiny(**{'attack.num_epochs': 1}), workdir)
  assert _snapshot(workdir) == before


def test_the_script_refuses_another_seed(finished):
  """experiments/poison.py on the finished workdir with --config.seed=1: exits with the
  message, writes nothing."""
  workdir, _ = finished
  before = _snapshot(workdir)
  proc = subprocess.run(
      [sys.executable, 'experiments/poison.py',
       '--config=rsp/configs/poison_mnist.py:gaussian,tiny', '--config.seed=1',
       f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu',  # This checkout's rsp, not another.
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')])))
  assert proc.returncode != 0
  assert 'config.seed: 0 there, 1 now' in proc.stderr
  assert '--config.seed=0' in proc.stderr
  assert _snapshot(workdir) == before


@pytest.mark.parametrize('overrides,match', [
    ({'target_class': -1}, r'config.target_class=-1 must be an integer >= 0'),
    ({'target_class': 10}, r'config.target_class=10 must be at most 9'),
    ({'eps': 1.5}, r'config.eps=1.5 must be a number in \(0, 1\]'),
    ({'eps': -0.1}, r'config.eps=-0.1 must be a number in \(0, 1\]'),
    ({'attack.inner.sigma': 0.0},
     r"config.attack.inner.sigma=0.0 is invalid for method 'gaussian'; accepted: "
     r'sigma > 0'),
])
def test_bad_fields_are_refused_before_the_workdir_is_made(overrides, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    attack.run_attack(_tiny(**overrides), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_jax_scalar_sigmas_are_accepted(tmp_path):
  """``jnp.float32(0.5)`` where a float belongs (outer and inner sigma)."""
  config = _tiny()
  a = config.attack.to_dict()
  a['sigma'] = jnp.float32(0.5)
  a['inner'] = {'sigma': jnp.float32(0.5)}
  config.attack = ml_collections.ConfigDict(a)
  attack.validate_config(config)
  loss = attack.inner_loss_fn('gaussian', config.attack.inner)
  assert loss.keywords == {'sigma': 0.5}
  splits = data.load('mnist_embedded')
  path = str(tmp_path / 'settings.json')
  workdir_lib.write_json(path, attack.attack_settings(config, splits))
  assert workdir_lib.check_settings(path, attack.attack_settings(_tiny(), splits))


def test_a_file_where_the_checkpoints_belong_fails_at_once(tmp_path):
  """Orbax used to retry for 300 s on a file named attack_checkpoints."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'attack_checkpoints').write_text('')
  start = time.time()
  with pytest.raises(workdir_lib.WorkdirError, match='attack_checkpoints.*is a file'):
    attack.run_attack(_tiny(), str(workdir))
  assert time.time() - start < 30
  assert sorted(os.listdir(workdir)) == ['attack_checkpoints']


def test_a_read_only_workdir_is_reported(finished, tmp_path, monkeypatch):
  """Permission bits do not stop root (CI), so the refusal is simulated by an
  ``os.access`` that denies writing."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished[0], workdir)
  before = _snapshot(workdir)
  monkeypatch.setattr(workdir_lib.os, 'access', lambda path, mode: False)
  with pytest.raises(workdir_lib.WorkdirError, match='read-only'):
    attack.run_attack(_tiny(), workdir)
  assert _snapshot(workdir) == before


def test_a_truncated_settings_file_names_the_file(finished, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished[0], workdir)
  path = os.path.join(workdir, 'settings.json')
  with open(path, 'r+') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(workdir_lib.WorkdirError, match=r'settings.json.*truncated'):
    attack.run_attack(_tiny(), workdir)


def test_a_truncated_newest_checkpoint_falls_back_and_resumes(finished, tmp_path, caplog):
  """A file of the newest checkpoint (step 4) cut in half: the attack warns, resumes
  from step 2 and ends with the uninterrupted attack's poisons, logging each step once."""
  reference_dir, reference = finished
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference_dir, workdir)
  os.remove(os.path.join(workdir, 'poisons.npz'))
  damaged = os.path.join(workdir, 'attack_checkpoints', '4', 'state', '_METADATA')
  with open(damaged, 'r+b') as f:
    f.truncate(os.path.getsize(damaged) // 2)
  with caplog.at_level('WARNING'):
    result = attack.run_attack(_tiny(), workdir)
  assert 'step 4' in caplog.text and 'falling back' in caplog.text
  assert 'Resuming from checkpoint step 2' in caplog.text
  assert sorted(os.listdir(os.path.join(workdir, 'attack_checkpoints'))) == [
      '2', '4', '4.corrupt']
  np.testing.assert_array_equal(result.poisons, reference.poisons)
  steps = [r['step'] for r in workdir_lib.read_json_lines(
      os.path.join(workdir, 'attack_metrics.jsonl'))]
  assert steps == [1, 2, 3, 4]


def test_the_cycle_schedule_is_robust_trainings():
  assert attack.smoothadv_cycle_epsilon is robust_training.smoothadv_cycle_epsilon
