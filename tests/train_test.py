"""Tests of rsp.train: the real loop on the tiny config, exact resumption after a kill,
data parallelism on 4 fake CPU devices, the paper-scale configs on mock TFDS data, the
argument checks, the run record's refusals and recoveries (other settings or inputs, odd
workdirs, a damaged checkpoint) and experiments/train.py end to end.

Every test is deterministic (fixed seeds and keys, bit-for-bit comparisons or exact
messages): none can fail by chance.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from rsp import data
from rsp import defenses
from rsp import models
from rsp import robust_training
from rsp import train
from rsp import workdir as workdir_lib
from rsp.configs import train_cifar10
from rsp.configs import train_mnist

# Compiling dominates these tests; XLA's optimisations buy nothing at these sizes.
jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(arg='gaussian,tiny', **overrides):
  """The tiny MNIST config with ``overrides``; dotted names reach nested fields."""
  config = train_mnist.get_config(arg)
  for name, value in overrides.items():
    *path, field = name.split('.')
    node = config
    for p in path:
      node = node[p]
    node[field] = value
  return config


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, cifar10_paper_runs, four_device_run):
  """The tiny config (LeNet, Gaussian augmentation, 64 embedded digits, 2 epochs of 4
  steps), trained once without interruption. (Its first use starts the subprocesses.)"""
  del cifar10_paper_runs, four_device_run
  workdir = str(tmp_path_factory.mktemp('tiny'))
  return workdir, train.train_and_evaluate(tiny_config(), workdir)


def _params(workdir):
  return train.load_trained(workdir).variables


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def _snapshot(directory):
  """Every file under ``directory`` with its size and modification time."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      st = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), directory)] = (st.st_size,
                                                                   st.st_mtime_ns)
  return out


# ------------------------------------------------------------------------------------
# The loop and its record.


def test_tiny_run_writes_its_record(tiny_run):
  workdir, result = tiny_run
  config = tiny_config()
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json', 'metrics.jsonl',
                                         'settings.json', 'summary.json']
  assert workdir_lib.read_json(os.path.join(workdir, 'config.json')) == config.to_dict()
  settings = workdir_lib.read_json(os.path.join(workdir, 'settings.json'))
  assert settings['config'] == train.recorded_config(config)  # Defenses off: left out.
  assert settings['config'] == {k: v for k, v in config.to_dict().items()
                                if k not in ('mixup_alpha', 'dp_sgd', 'purify')}
  assert settings['inputs']['poison_file'] is None
  train_split = data.load_splits(config)['train']
  assert settings['inputs']['train_data'] == workdir_lib.array_digest(
      train_split['image'], train_split['label'])
  records = workdir_lib.read_json_lines(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in records] == list(range(1, 9))  # log_every_steps = 1
  for r in records:
    assert set(r) >= {'loss', 'accuracy', 'grad_norm', 'images_per_second',
                      'seconds_left', 'epoch'}
    assert np.isfinite(r['loss']) and r['images_per_second'] > 0
  assert records[-1]['seconds_left'] == 0
  summary = workdir_lib.read_json(os.path.join(workdir, 'summary.json'))
  assert summary == json.loads(json.dumps(result.summary))
  assert summary['steps'] == 8 and summary['num_train_examples'] == 64
  assert summary['num_params'] == 431_080
  assert len(summary['per_class_test_accuracy']) == 10
  assert 0 <= summary['test_accuracy'] <= 1 and summary['target_class'] == 8
  assert summary['target_test_accuracy'] == summary['per_class_test_accuracy'][8]
  # Training did something: better than chance after 8 steps of batch 16.
  assert summary['test_accuracy'] > 0.15
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']


def test_load_trained_roundtrip(tiny_run, tmp_path):
  workdir, result = tiny_run
  loaded = train.load_trained(workdir)
  _assert_trees_equal(loaded.variables, result.variables)
  assert loaded.num_classes == 10 and loaded.summary == result.summary
  assert loaded.config.to_dict() == tiny_config().to_dict()
  images = np.random.default_rng(0).random((5, 28, 28, 1), dtype=np.float32)
  np.testing.assert_array_equal(
      train.predict_labels(loaded.apply_fn, loaded.variables, images),
      train.predict_labels(result.apply_fn, result.variables, images))
  with pytest.raises(ValueError, match='no config.json'):
    train.load_trained(str(tmp_path))


def test_evaluate_counts_per_class():
  # A "model" that predicts the brightest pixel's column modulo 3.
  apply_fn = models.make_apply_fn(models.get_model('mlp', 3, hidden=()))
  variables = {'params': {'Dense_0': {
      'kernel': np.eye(784, 3, dtype=np.float32), 'bias': np.zeros(3, np.float32)}}}
  images = np.zeros((5, 28, 28, 1), np.float32)
  for i, c in enumerate([0, 1, 2, 0, 1]):
    images[i, 0, c] = 1.0
  ds = {'image': images, 'label': np.array([0, 1, 1, 0, 2], np.int32)}
  ev = train.evaluate(apply_fn, variables, ds, num_classes=4, batch_size=2)
  assert ev['accuracy'] == pytest.approx(3 / 5)
  assert ev['per_class_accuracy'] == [1.0, 0.5, 0.0, None]
  assert ev['num_examples'] == 5


class _Killed(Exception):
  pass


def test_killed_run_resumes_exactly(tiny_run, tmp_path, monkeypatch):
  """A run killed mid-epoch and restarted with the same workdir ends with exactly the
  weights of the uninterrupted run, and logs every step once."""
  reference_dir, _ = tiny_run
  workdir = str(tmp_path / 'run')
  epoch_batches = data.epoch_batches

  def killed_after_six_steps(*args, **kwargs):
    for batch in epoch_batches(*args, **kwargs):
      if len(served) == 6:  # Mid second epoch; the last checkpoint is at step 4.
        raise _Killed()
      served.append(1)
      yield batch

  served = []
  monkeypatch.setattr(data, 'epoch_batches', killed_after_six_steps)
  with pytest.raises(_Killed):
    train.train_and_evaluate(tiny_config(), workdir)
  monkeypatch.setattr(data, 'epoch_batches', epoch_batches)
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  steps = [r['step'] for r in workdir_lib.read_json_lines(os.path.join(workdir,
                                                                   'metrics.jsonl'))]
  assert steps == list(range(1, 7))
  # A line cut short by the kill is dropped too.
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 7, "lo')
  result = train.train_and_evaluate(tiny_config(), workdir)
  _assert_trees_equal(_params(workdir), _params(reference_dir))
  records = workdir_lib.read_json_lines(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in records] == list(range(1, 9))
  reference = workdir_lib.read_json_lines(os.path.join(reference_dir, 'metrics.jsonl'))
  for r, ref in zip(records, reference):
    assert r['loss'] == ref['loss']
  assert result.summary['steps'] == 8
  # Restarting a finished run trains no more and gives the same model.
  again = train.train_and_evaluate(tiny_config(), workdir)
  _assert_trees_equal(again.variables, result.variables)
  assert again.summary['test_accuracy'] == result.summary['test_accuracy']
  # Another run in the same workdir is refused before it writes anything, naming every
  # differing field.
  before = _snapshot(workdir)
  with pytest.raises(workdir_lib.SettingsMismatchError,
                     match=r'config.loss.sigma: 0.5 there, 0.25 now'):
    train.train_and_evaluate(tiny_config(**{'loss.sigma': 0.25}), workdir)
  with pytest.raises(workdir_lib.SettingsMismatchError,
                     match=r'(?s)config.seed: 0 there, 1 now.*--config.seed=0'):
    train.train_and_evaluate(tiny_config(seed=1), workdir)
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(tiny_config('macer,tiny', learning_rate=0.01), workdir)
  for field in ('config.learning_rate', 'config.loss.num_noise', 'config.method'):
    assert field in str(e.value)
  assert '--config.learning_rate=0.001' in str(e.value)
  assert _snapshot(workdir) == before


# ------------------------------------------------------------------------------------
# Argument checks.


def _bad_configs():
  yield 'dataset', tiny_config(dataset='imagenet'), "config.dataset='imagenet' is not known"
  yield 'model', tiny_config(model='vgg'), "config.model='vgg' is not known"
  yield 'method', tiny_config(method='trades'), "config.method='trades' is not known"
  c = tiny_config()
  c.loss.sigma = -0.5
  yield 'sigma', c, r'config.loss.sigma=-0.5 is invalid .*accepted: sigma > 0'
  c = tiny_config()
  c.loss.sigma = 0.0
  yield 'sigma_zero', c, r'config.loss.sigma=0.0 is invalid .*accepted: sigma > 0'
  yield 'target_negative', tiny_config(target_class=-1), \
      r'config.target_class=-1 must be an integer >= 0'
  yield 'target_too_big', tiny_config(target_class=10), \
      r'config.target_class=10 must be at most 9'
  yield 'subset_too_big', tiny_config(train_subset=3501), \
      r'config.train_subset=3501 exceeds the 3500 points'
  yield 'shape', tiny_config(model='resnet20'), r'takes images of shape \(32, 32, 3\)'
  c = train_cifar10.get_config('gaussian,tiny')
  c.model = 'lenet'
  yield 'shape_cifar', c, r'config.dataset=\'cifar10\' has images of shape \(32, 32, 3\)'
  yield 'hparam', tiny_config(**{'loss.lbd': 1.0}), 'takes no hyperparameter'
  yield 'batch', tiny_config(batch_size=0), 'config.batch_size=0'
  yield 'epochs', tiny_config(num_epochs=-1), 'config.num_epochs=-1'
  yield 'lr', tiny_config(learning_rate=0.0), 'config.learning_rate'
  yield 'optimizer', tiny_config(optimizer='lbfgs'), "config.optimizer='lbfgs'"
  yield 'subset', tiny_config(train_subset=8), 'config.train_subset=8 is smaller'
  yield 'subset_neg', tiny_config(train_subset=-1), 'config.train_subset=-1'
  yield 'too_big_batch', tiny_config(train_subset=0, batch_size=4000), 'exceeds the 3500'
  # Training-time defenses.
  yield 'mixup_negative', tiny_config(mixup_alpha=-0.5), \
      r'config.mixup_alpha=-0.5 must be a finite number >= 0 \(0: no mixup\)'
  yield 'mixup_macer', tiny_config('macer,tiny', mixup_alpha=0.2), \
      r"config.mixup_alpha=0.2 \(mixup\) is accepted with config.method in standard, " \
      r"gaussian; config.method='macer'"
  yield 'mixup_smoothadv', tiny_config('smoothadv,tiny', mixup_alpha=0.2), \
      r"config.method='smoothadv'"
  dp = {'dp_sgd.enabled': True, 'optimizer': 'sgd'}
  yield 'dp_adam', tiny_config(**{'dp_sgd.enabled': True}), \
      r"config.dp_sgd.enabled=True .*config.optimizer='adam'; set config.optimizer='sgd'"
  yield 'dp_clip', tiny_config(**dp, **{'dp_sgd.l2_norm_clip': 0.0}), \
      r'config.dp_sgd.l2_norm_clip=0.0 must be a finite number > 0'
  yield 'dp_noise', tiny_config(**dp, **{'dp_sgd.noise_multiplier': -1.0}), \
      r'config.dp_sgd.noise_multiplier=-1.0 must be a finite number >= 0'
  yield 'dp_decay', tiny_config(**dp, weight_decay=1e-4), \
      r'config.weight_decay=0.0001 with config.dp_sgd.enabled=True'
  yield 'dp_mixup', tiny_config(**dp, mixup_alpha=1.0), \
      r'config.mixup_alpha=1.0 with config.dp_sgd.enabled=True'
  c = train_cifar10.get_config('gaussian,tiny')
  c.dp_sgd.enabled, c.optimizer = True, 'sgd'
  yield 'dp_batchnorm', c, r"config.dp_sgd.enabled=True with config.model='resnet20'.*" \
      r"\['batch_stats'\]"
  c = tiny_config()
  c.dp_sgd.clip = 1.0
  yield 'dp_unknown', c, r"config.dp_sgd has unknown field\(s\) \['clip'\]; accepted: " \
      'enabled, l2_norm_clip, noise_multiplier'
  yield 'purify_kind', tiny_config(**{'purify.kind': 'median'}), \
      r"config.purify.kind='median' is not known; accepted: none, bit_depth, blur, jpeg"
  yield 'purify_bits', tiny_config(**{'purify.kind': 'bit_depth', 'purify.bits': 9}), \
      r'config.purify.bits=9 must be at most 8'
  yield 'purify_sigma', tiny_config(**{'purify.kind': 'blur', 'purify.sigma': 0.0}), \
      r'config.purify.sigma=0.0 must be a finite number > 0'
  yield 'purify_quality', tiny_config(**{'purify.kind': 'jpeg', 'purify.quality': 0}), \
      r'config.purify.quality=0 must be an integer >= 1'


_BAD = list(_bad_configs())


@pytest.mark.parametrize('name,config,match', _BAD, ids=[b[0] for b in _BAD])
def test_bad_configs_raise_before_any_work(name, config, match, tmp_path):
  """Each bad field is refused by name before the workdir is made (target_class -1
  once trained and reported class 9, 10 crashed after training, a too large
  train_subset was clamped, sigma 0 trained without noise)."""
  del name
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_bad_splits_raise(tmp_path):
  config = tiny_config()
  images = np.zeros((32, 32, 32, 3), np.float32)
  splits = {'train': {'image': images, 'label': np.zeros(32, np.int32)},
            'test': {'image': images, 'label': np.zeros(32, np.int32)}}
  with pytest.raises(ValueError, match=r'image shape \(32, 32, 3\); expected \(28, 28, 1\)'):
    train.train(config, splits, str(tmp_path / 'run'))
  good = {'image': np.zeros((32, 28, 28, 1), np.float32), 'label': np.zeros(32, np.int32)}
  with pytest.raises(ValueError, match="no 'test' split"):
    train.train(config, {'train': good}, str(tmp_path / 'run'))
  with pytest.raises(ValueError, match=r'must be in \[0, 10\)'):
    train.train(config, {'train': good, 'test': dict(good, label=good['label'] + 10)},
                str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_train_subset_beyond_the_given_split_is_refused(tmp_path):
  good = {'image': np.zeros((32, 28, 28, 1), np.float32), 'label': np.zeros(32, np.int32)}
  with pytest.raises(ValueError, match='config.train_subset=64 exceeds the 32 training'):
    train.train(tiny_config(), {'train': good, 'test': good}, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


# ------------------------------------------------------------------------------------
# Training-time defenses: mixup, DP-SGD, purification.

TRAINING_DEFENSES = ('mixup', 'dp_sgd', 'bit_depth', 'blur', 'jpeg')


def defense_config(name):
  """The tiny config with one training-time defense on."""
  if name == 'mixup':
    return tiny_config(mixup_alpha=1.0)
  if name == 'dp_sgd':
    return tiny_config(**{'dp_sgd.enabled': True, 'optimizer': 'sgd',
                          'learning_rate': 0.1})
  return tiny_config(**{'purify.kind': name, 'purify.bits': 2, 'purify.quality': 10})


@pytest.fixture(scope='module')
def plain_run(tmp_path_factory):
  """The tiny config without defenses (like ``tiny_run``, without its subprocesses)."""
  workdir = str(tmp_path_factory.mktemp('plain'))
  return workdir, train.train_and_evaluate(tiny_config(), workdir)


@pytest.mark.parametrize('name', TRAINING_DEFENSES)
def test_training_defense_trains_and_changes_the_weights(name, plain_run, tmp_path):
  plain_dir, plain = plain_run
  config = defense_config(name)
  workdir = str(tmp_path / name)
  result = train.train_and_evaluate(config, workdir)
  records = workdir_lib.read_json_lines(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in records] == list(range(1, 9))
  assert all(np.isfinite(r['loss']) and np.isfinite(r['grad_norm']) for r in records)
  assert result.summary['steps'] == 8 and 0 <= result.summary['test_accuracy'] <= 1
  ours, theirs = (jax.tree.leaves(_params(d)) for d in (workdir, plain_dir))
  assert any(not np.array_equal(a, b) for a, b in zip(ours, theirs))
  # The defense is recorded (a resumed run must match it); the off ones are not.
  settings = workdir_lib.read_json(os.path.join(workdir, 'settings.json'))
  assert settings['config'] == train.recorded_config(config)
  recorded = {'mixup': 'mixup_alpha', 'dp_sgd': 'dp_sgd'}.get(name, 'purify')
  assert {'mixup_alpha', 'dp_sgd', 'purify'} & set(settings['config']) == {recorded}
  # The training data's fingerprint is that of the split handed over, before purifying.
  plain_settings = workdir_lib.read_json(os.path.join(plain_dir, 'settings.json'))
  assert settings['inputs'] == plain_settings['inputs']
  if name in ('bit_depth', 'blur', 'jpeg'):  # Same steps, same noise: only the data.
    assert records[0]['loss'] != workdir_lib.read_json_lines(
        os.path.join(plain_dir, 'metrics.jsonl'))[0]['loss']


def test_purify_images_applies_the_configured_purification():
  images = data.load('mnist_embedded', seed=0)['train']['image'][:5]
  np.testing.assert_array_equal(
      train.purify_images(defense_config('bit_depth'), images),
      defenses.bit_depth_reduce(images, 2))
  assert train.purify_images(tiny_config(), images) is images
  blurred = train.purify_images(defense_config('blur'), images)
  assert blurred.shape == images.shape and not np.array_equal(blurred, images)


def test_defenses_that_are_off_are_not_recorded():
  """A config without the defense fields (a workdir made before they existed) and one
  with them off record the same settings, so old workdirs resume."""
  ds = data.load('mnist_embedded', seed=0)['train']
  old = tiny_config()
  for field in ('mixup_alpha', 'dp_sgd', 'purify'):
    del old[field]
  train.validate_config(old)
  assert train.run_settings(old, ds) == train.run_settings(tiny_config(), ds)
  # Fields of a disabled defense change no number: they are not recorded either.
  off = tiny_config(**{'dp_sgd.l2_norm_clip': 5.0, 'purify.bits': 1})
  assert train.run_settings(off, ds) == train.run_settings(tiny_config(), ds)


def test_dp_sgd_step_is_the_mean_of_clipped_per_example_gradients():
  """One DP-SGD step without noise and momentum moves the weights by
  ``-lr mean_i g_i min(1, C / ||g_i||)`` (per-example gradients of the Gaussian loss,
  each with its own noise key), so no example moves them by more than ``lr C / B``."""
  config = tiny_config(**{'dp_sgd.enabled': True, 'optimizer': 'sgd',
                          'learning_rate': 0.5, 'momentum': 0.0,
                          'dp_sgd.noise_multiplier': 0.0, 'dp_sgd.l2_norm_clip': 0.05})
  train.validate_config(config)
  model = models.get_model('lenet', 10)
  tx = train.make_optimizer(config)
  state = train.create_train_state(jax.random.key(0), model, tx, (28, 28, 1))
  ds = data.load('mnist_embedded', seed=0)['train']
  batch = {'image': jnp.asarray(ds['image'][:4]), 'label': jnp.asarray(ds['label'][:4])}
  loss_fn = robust_training.get_loss('gaussian', sigma=0.5)
  apply_fn = models.make_train_apply_fn(model)
  step = train.make_train_step(loss_fn, apply_fn, tx, per_example=True)
  key = jax.random.key(3)
  new_state, metrics = step(state, batch, key, {})
  _, k_loss = jax.random.split(key)
  keys = jax.random.split(k_loss, 4)
  clipped = []
  for i in range(4):
    example = jax.tree.map(lambda v: v[i:i + 1], batch)
    g = jax.grad(lambda p: loss_fn(p, {}, example, keys[i], apply_fn=apply_fn)[0])(
        state.params)
    norm = float(optax.global_norm(g))
    assert norm > 0.05  # So that clipping is active.
    clipped.append(jax.tree.map(lambda x: x * min(1.0, 0.05 / norm), g))
  expected = jax.tree.map(lambda p, *gs: p - 0.5 * sum(gs) / 4, state.params, *clipped)
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  moved = optax.global_norm(jax.tree.map(lambda a, b: a - b, new_state.params,
                                         state.params))
  assert float(moved) <= 0.5 * 0.05 * (1 + 1e-5)
  assert np.isfinite(float(metrics['loss'])) and float(metrics['grad_norm']) > 0


@pytest.mark.parametrize('name', ('mixup', 'dp_sgd'))
def test_training_defense_resumes_exactly(name, tmp_path, monkeypatch):
  """Killed mid-epoch and restarted, a mixup or DP-SGD run (DP-SGD's noise state is in
  the checkpoint) ends with the weights of the uninterrupted run."""
  reference_dir = str(tmp_path / 'reference')
  train.train_and_evaluate(defense_config(name), reference_dir)
  workdir = str(tmp_path / 'run')
  epoch_batches = data.epoch_batches
  served = []

  def killed_after_six_steps(*args, **kwargs):
    for batch in epoch_batches(*args, **kwargs):
      if len(served) == 6:
        raise _Killed()
      served.append(1)
      yield batch

  monkeypatch.setattr(data, 'epoch_batches', killed_after_six_steps)
  with pytest.raises(_Killed):
    train.train_and_evaluate(defense_config(name), workdir)
  monkeypatch.setattr(data, 'epoch_batches', epoch_batches)
  train.train_and_evaluate(defense_config(name), workdir)
  _assert_trees_equal(_params(workdir), _params(reference_dir))
  # Another setting of the defense is refused, naming it.
  field = {'mixup': ('mixup_alpha', 0.5), 'dp_sgd': ('dp_sgd.noise_multiplier', 2.0)}
  with pytest.raises(workdir_lib.SettingsMismatchError, match=field[name][0]):
    train.train_and_evaluate(tiny_config(**dict([field[name]]), **(
        {} if name == 'mixup' else {'dp_sgd.enabled': True, 'optimizer': 'sgd',
                                    'learning_rate': 0.1})), workdir)


_FOUR_DEVICE_DEFENSES = textwrap.dedent('''
    import json, sys
    import jax
    import numpy as np
    import train_test
    from rsp import train

    assert jax.local_device_count() == 4, jax.devices()
    out = {}
    for name in ('mixup', 'dp_sgd'):
      result = train.train_and_evaluate(train_test.defense_config(name),
                                        sys.argv[1] + '/' + name)
      out[name] = [np.asarray(x).ravel().tolist()
                   for x in jax.tree.leaves(result.variables)]
    print('PARAMS ' + json.dumps(out), flush=True)
''')


def test_training_defenses_are_data_parallel(tmp_path):
  """Mixup and DP-SGD over 4 fake CPU devices give the weights of 1 device (up to the
  order in which the devices sum: float32 rounding)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='true')
  env['PYTHONPATH'] = os.pathsep.join([ROOT, os.path.join(ROOT, 'tests'),
                                       env.get('PYTHONPATH', '')])
  child = _Child(_FOUR_DEVICE_DEFENSES, [str(tmp_path / 'four')], env)
  try:
    ours = {name: jax.tree.leaves(train.train_and_evaluate(
        defense_config(name), str(tmp_path / name)).variables)
            for name in ('mixup', 'dp_sgd')}
    returncode, stdout, stderr = child.result()
  finally:
    child.stop()
  assert returncode == 0, stderr[-3000:]
  theirs = json.loads(stdout.split('PARAMS ')[1].splitlines()[0])
  for name in ours:
    a = np.concatenate([np.ravel(x) for x in ours[name]])
    b = np.concatenate([np.asarray(x) for x in theirs[name]])
    # As in test_four_devices_and_the_script: the weights as a whole agree.
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a), name


# ------------------------------------------------------------------------------------
# The run record: other inputs, odd workdirs, damaged files.


def _write_poisons(path, *, shift=0.05, **metadata):
  """A poison file for the embedded digits' class 8: every image brightened by
  ``shift`` (clipped), with the tiny config's metadata unless overridden."""
  train_split = data.load('mnist_embedded', seed=0)['train']
  idx = data.class_indices(train_split, 8)
  clean = train_split['image'][idx]
  meta = dict(dict(dataset='mnist_embedded', data_seed=0, target_class=8, eps=0.1,
                   method='test'), **metadata)
  data.save_poisons(path, poisons=np.clip(clean + shift, 0, 1), indices=idx,
                    clean_images=clean, labels=train_split['label'][idx], metadata=meta,
                    train=train_split)
  return path


@pytest.mark.parametrize('field,metadata,overrides', [
    ('dataset', dict(dataset='mnist'), {}),
    ('target_class', dict(target_class=3), {}),
    ('data_seed', dict(data_seed=1), {}),
    ('eps', {}, dict(eps=0.05)),
])
def test_poison_file_made_for_another_run_is_refused(field, metadata, overrides, tmp_path):
  """Deterministic. train.py used to train on such a file without a word."""
  path = _write_poisons(str(tmp_path / 'poisons.npz'), **metadata)
  config = tiny_config(poison_file=path)
  for name, value in overrides.items():  # A run that states its budget (eps).
    config[name] = value
  with pytest.raises(ValueError, match=rf'config.{field}=.* was made with {field}='):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_poison_file_changed_under_the_same_path_is_refused(tiny_run, tmp_path):
  """Deterministic. The settings record the poison file's SHA-256, not its name: new
  content under the old path is refused before any file is written, naming
  poison_file; the same content under a new path resumes."""
  del tiny_run  # Compiles the step this run shares.
  path = _write_poisons(str(tmp_path / 'poisons.npz'))
  workdir = str(tmp_path / 'run')
  first = train.train_and_evaluate(tiny_config(poison_file=path), workdir)
  settings = workdir_lib.read_json(os.path.join(workdir, 'settings.json'))
  assert settings['inputs']['poison_file'] == workdir_lib.file_digest(path)
  moved = str(tmp_path / 'moved.npz')
  shutil.copyfile(path, moved)
  _write_poisons(path, shift=-0.05)
  before = _snapshot(workdir)
  with pytest.raises(workdir_lib.SettingsMismatchError) as e:
    train.train_and_evaluate(tiny_config(poison_file=path), workdir)
  message = str(e.value)
  assert 'inputs.poison_file:' in message and 'inputs.train_data:' in message
  assert _snapshot(workdir) == before
  again = train.train_and_evaluate(tiny_config(poison_file=moved), workdir)
  assert again.summary['steps'] == first.summary['steps'] == 8
  _assert_trees_equal(again.variables, first.variables)


def test_a_file_where_the_checkpoints_belong_fails_at_once(tmp_path):
  """Deterministic. Orbax used to retry for 300 s on a file named checkpoints."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'checkpoints').write_text('not a directory')
  start = time.time()
  with pytest.raises(workdir_lib.WorkdirError, match='checkpoints.*is a file'):
    train.train_and_evaluate(tiny_config(), str(workdir))
  assert time.time() - start < 30
  assert sorted(os.listdir(workdir)) == ['checkpoints']  # Nothing written.


def test_a_read_only_workdir_is_reported(tmp_path, monkeypatch):
  """Deterministic. Permission bits do not stop root (CI), so the refusal is simulated
  by an ``os.access`` that denies writing."""
  monkeypatch.setattr(workdir_lib.os, 'access', lambda path, mode: False)
  with pytest.raises(workdir_lib.WorkdirError, match='read-only'):
    train.train_and_evaluate(tiny_config(), str(tmp_path / 'run'))


def test_a_truncated_newest_checkpoint_falls_back_to_the_older_one(tiny_run, tmp_path,
                                                                   caplog):
  """Deterministic. A file of the newest checkpoint (step 8) cut in half: the run warns,
  resumes from step 4, retrains epoch 2 and ends with the uninterrupted run's weights."""
  reference_dir, reference = tiny_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference_dir, workdir)
  os.remove(os.path.join(workdir, 'summary.json'))
  damaged = os.path.join(workdir, 'checkpoints', '8', 'state', '_METADATA')
  with open(damaged, 'r+b') as f:
    f.truncate(os.path.getsize(damaged) // 2)
  with caplog.at_level('WARNING'):
    result = train.train_and_evaluate(tiny_config(), workdir)
  assert 'step 8' in caplog.text and 'falling back' in caplog.text
  assert 'Resuming from checkpoint step 4' in caplog.text
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8',
                                                                      '8.corrupt']
  _assert_trees_equal(result.variables, reference.variables)
  _assert_trees_equal(_params(workdir), reference.variables)
  steps = [r['step'] for r in workdir_lib.read_json_lines(
      os.path.join(workdir, 'metrics.jsonl'))]
  assert steps == list(range(1, 9))


@pytest.mark.parametrize('name', ['settings.json', 'config.json'])
def test_a_truncated_record_names_the_file(name, tiny_run, tmp_path):
  """Deterministic: a half-written JSON record is refused with its path."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_run[0], workdir)
  path = os.path.join(workdir, name)
  with open(path, 'r+') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(workdir_lib.WorkdirError, match=rf'{name}.*truncated'):
    if name == 'settings.json':
      train.train_and_evaluate(tiny_config(), workdir)
    else:
      train.load_trained(workdir)


def test_numpy_and_jax_scalar_hyperparameters_are_accepted(tiny_run, tmp_path):
  """Deterministic. ``sigma=jnp.float32(0.5)`` once failed ('unhashable type') when the
  compiled step was looked up, and ``num_noise=np.int64(1)`` was refused; they train
  exactly as ``sigma=0.5, num_noise=1``."""
  _, reference = tiny_run
  config = tiny_config()
  config.loss = ml_collections.ConfigDict({'sigma': jnp.float32(0.5),
                                           'num_noise': np.int64(1)})
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  _assert_trees_equal(result.variables, reference.variables)
  recorded = workdir_lib.read_json(str(tmp_path / 'run' / 'config.json'))
  assert recorded['loss'] == {'sigma': 0.5, 'num_noise': 1}


# ------------------------------------------------------------------------------------
# The paper-scale configs, on tiny mock data.

# Paper configs with only the amount of work shrunk: one epoch of two small batches.
_CONFIG_MODULES = {'train_mnist': train_mnist, 'train_cifar10': train_cifar10}


def paper_run(module_name: str, method: str, workdir: str) -> dict:
  """Trains the paper config of ``module_name`` for ``method`` on 10 mock TFDS examples
  per split (one epoch, batch 4) and returns the facts the test checks."""
  module = _CONFIG_MODULES[module_name]
  config = module.get_config(method)
  paper = module.get_config(method)
  facts = {'dataset': config.dataset, 'train_subset': config.train_subset,
           'paper_epochs': config.num_epochs}
  config.num_epochs = 1
  config.batch_size = 4
  config.eval_batch_size = 8
  with tfds.testing.mock_data(num_examples=10):
    result = train.train_and_evaluate(config, workdir)
  saved = workdir_lib.read_json(os.path.join(workdir, 'config.json'))
  last = workdir_lib.read_json_lines(os.path.join(workdir, 'metrics.jsonl'))[-1]
  return dict(facts, steps=result.summary['steps'],
              num_params=result.summary['num_params'],
              finite_weights=all(bool(np.all(np.isfinite(v)))
                                 for v in jax.tree.leaves(result.variables)),
              last_step=last['step'], last_loss=last['loss'],
              last_grad_norm=last['grad_norm'],
              same_loss=saved['loss'] == paper.loss.to_dict(),
              same_model=saved['model'] == paper.model)


_PAPER_CHILD = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, os.path.join(os.getcwd(), 'tests'))
    import train_test  # Turns on jax_disable_most_optimizations, as in the parent.
    from rsp import robust_training
    out = {m: train_test.paper_run('train_cifar10', m, os.path.join(sys.argv[1], m))
           for m in robust_training.METHODS}
    print('RESULTS ' + json.dumps(out), flush=True)
''')


class _Child:
  """A Python subprocess started now and waited for when its output is first needed, so
  that it runs beside the tests of this process (the CPU compiles on one core)."""

  def __init__(self, script: str, args: list[str], env: dict[str, str] | None = None):
    self._proc = subprocess.Popen(
        [sys.executable, '-c', script, *args], cwd=ROOT, env=env or dict(os.environ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self._out = None

  def result(self, timeout: float = 600) -> tuple[int, str, str]:
    if self._out is None:
      try:
        stdout, stderr = self._proc.communicate(timeout=timeout)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        stdout, stderr = self._proc.communicate()
      self._out = (self._proc.returncode, stdout, stderr)
    return self._out

  def stop(self) -> None:
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.communicate()


@pytest.fixture(scope='module')
def cifar10_paper_runs(tmp_path_factory):
  """The CIFAR-10 paper configs (ResNet-20, every method), run in a subprocess: their
  compilation is most of this file's work, and it overlaps the other tests."""
  child = _Child(_PAPER_CHILD, [str(tmp_path_factory.mktemp('cifar10_paper'))])
  yield child
  child.stop()


def _check_paper_run(facts: dict, dataset: str) -> None:
  assert facts['dataset'] == dataset and facts['train_subset'] == 0
  assert facts['paper_epochs'] >= 101
  assert facts['steps'] == 2  # 9 mock training points (1 held out), batch 4.
  assert facts['num_params'] == {'mnist': 431_080, 'cifar10': 273_066}[dataset]
  assert facts['finite_weights']
  assert facts['last_step'] == 2 and np.isfinite(facts['last_loss'])
  assert np.isfinite(facts['last_grad_norm']) and facts['last_grad_norm'] > 0
  assert facts['same_loss'] and facts['same_model']


@pytest.mark.parametrize('method', robust_training.METHODS)
def test_mnist_paper_configs_run_on_mock_data(method, tmp_path):
  _check_paper_run(paper_run('train_mnist', method, str(tmp_path)), 'mnist')


def test_paper_constants():
  """The victims' hyperparameters (docs/reference_implementation.md#victim-training)."""
  m = {x: train_mnist.get_config(x) for x in robust_training.METHODS}
  c = {x: train_cifar10.get_config(x) for x in robust_training.METHODS}
  for config in list(m.values()) + list(c.values()):
    assert config.optimizer == 'adam' and config.learning_rate == 1e-3
    assert config.weight_decay == 0.0
  assert (m['gaussian'].num_epochs, m['gaussian'].batch_size, m['gaussian'].loss.sigma) == \
      (101, 200, 0.5)
  assert dict(m['macer'].loss) == dict(sigma=0.5, num_noise=16, lbd=16.0, beta=16.0,
                                       gamma=8.0, alpha=1e-3)
  assert m['smoothadv'].batch_size == 100 and m['smoothadv'].loss.sigma == 0.75
  assert m['smoothadv'].loss.epsilon == 1.0 and m['smoothadv'].smoothadv_warmup_epochs == 10
  assert (c['gaussian'].num_epochs, c['gaussian'].batch_size, c['gaussian'].augment) == \
      (201, 200, True)
  assert dict(c['macer'].loss) == dict(sigma=0.25, num_noise=16, lbd=12.0, beta=16.0,
                                       gamma=8.0, alpha=1e-3)
  assert (c['macer'].num_epochs, c['macer'].batch_size) == (101, 100)
  assert c['smoothadv'].augment is False and c['smoothadv'].loss.sigma == 0.25
  assert c['smoothadv'].loss.num_steps == 2 and c['smoothadv'].loss.pgd == 'adam'


# ------------------------------------------------------------------------------------
# Data parallelism and the script, in a subprocess with 4 fake CPU devices.

_FOUR_DEVICES = textwrap.dedent('''
    import json, runpy, sys
    import jax
    import numpy as np
    from rsp import train
    from rsp.configs import train_mnist

    assert jax.local_device_count() == 4, jax.devices()
    batch_sharding, replicated = train._data_sharding()
    batch = {'image': np.zeros((16, 28, 28, 1), np.float32),
             'label': np.zeros(16, np.int32)}
    on_devices = jax.device_put(batch, batch_sharding)
    shards = on_devices['image'].addressable_shards
    out = {'image_sharding_devices': len(on_devices['image'].sharding.device_set),
           'shard_shapes': sorted({tuple(s.data.shape) for s in shards}),
           'shard_devices': len({s.device for s in shards}),
           'fully_replicated': replicated.is_fully_replicated}
    config = train_mnist.get_config('gaussian,tiny')
    config.batch_size = 6
    try:
      train.validate_config(config)
    except ValueError as e:
      out['indivisible'] = str(e)
    print('CHECKS ' + json.dumps(out), flush=True)
    sys.argv = ['train.py', '--config=rsp/configs/train_mnist.py:gaussian,tiny',
                '--workdir=' + sys.argv[1]]
    runpy.run_path('experiments/train.py', run_name='__main__')
''')


@pytest.fixture(scope='module')
def four_device_run(tmp_path_factory):
  """experiments/train.py on the tiny config over 4 fake CPU devices, in a subprocess
  started at once (it runs beside the other tests)."""
  workdir = str(tmp_path_factory.mktemp('four_devices') / 'run')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='true')
  child = _Child(_FOUR_DEVICES, [workdir], env)
  yield workdir, child
  child.stop()


def test_four_devices_and_the_script(tiny_run, four_device_run):
  """experiments/train.py on the tiny config, data parallel over 4 fake CPU devices,
  gives the weights of the 1-device run; the batch is split 4 ways."""
  reference_dir, reference = tiny_run
  workdir, child = four_device_run
  returncode, stdout, stderr = child.result()
  assert returncode == 0, stderr[-3000:]
  checks = json.loads(stdout.split('CHECKS ')[1].splitlines()[0])
  assert checks['image_sharding_devices'] == 4 and checks['shard_devices'] == 4
  assert checks['shard_shapes'] == [[4, 28, 28, 1]]
  assert checks['fully_replicated']
  assert 'divisible by the number of local devices (4)' in checks['indivisible']
  assert 'clean test accuracy' in stdout and workdir in stdout
  assert 'step 8/8' in stderr  # Progress lines, not drowned by orbax's INFO lines.
  assert 'checkpoint_manager.py' not in stderr
  summary = workdir_lib.read_json(os.path.join(workdir, 'summary.json'))
  assert len(summary['devices']) == 4 and summary['steps'] == 8
  # The 4 devices sum the gradients in another order: they differ by float32 rounding.
  # Adam's step lr m / (sqrt(v) + 1e-8) is steep in a gradient near 0, so a weight whose
  # gradient is within rounding of 0 can move by many times the rounding: weight by
  # weight no rounding-sized bound holds (the largest difference seen was 1e-6, 15 of the
  # 431,080 weights beyond 1e-7). The weights as a whole agree: their relative L2
  # distance was 7e-8. 1e-4 leaves room for 170 weights off by a fifth of an Adam step
  # (2e-4), while the same run over other batches lands at a relative distance of 0.09.
  ours, theirs = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(_params(d))])
                  for d in (workdir, reference_dir))
  assert np.linalg.norm(ours - theirs) <= 1e-4 * np.linalg.norm(theirs)
  assert summary['test_accuracy'] == pytest.approx(reference.summary['test_accuracy'],
                                                   abs=0.002)


def test_cifar10_paper_configs_run_on_mock_data(cifar10_paper_runs):
  returncode, stdout, stderr = cifar10_paper_runs.result()
  assert returncode == 0, stderr[-3000:]
  results = json.loads(stdout.split('RESULTS ')[1].splitlines()[0])
  assert sorted(results) == sorted(robust_training.METHODS)
  for method, facts in results.items():
    try:
      _check_paper_run(facts, 'cifar10')
    except AssertionError as e:
      raise AssertionError(f'train_cifar10.py:{method}: {facts}') from e
