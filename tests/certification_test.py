"""Tests of rsp.certification, the driver: the resumable TSV log, the certify experiment
on a real (briefly trained) checkpoint, its refusal to resume onto changed inputs, and
the checks that refuse bad input before any file is written.

Every test is deterministic: fixed keys and seeds, and the assertions are about files,
settings and messages, or exact equalities that hold by construction (a point's
certificate depends only on its key, so a resumed log equals an uninterrupted one). The
failure odds of each are therefore 0; each docstring says so.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rsp import certification
from rsp import data
from rsp import metrics
from rsp import train
from rsp import workdir as workdir_lib
from rsp.configs import certify as certify_config
from rsp.configs import train_mnist

SHAPE = (4, 4, 1)
D = int(np.prod(SHAPE))


@pytest.fixture(scope='module', autouse=True)
def _fast_compilation():
  """Compiling dominates these tests: XLA's optimisations off for this module only."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


def linear_apply(params, images):
  """Two classes; class 1 iff w.x + b > 0. Logits [0, w.x + b]."""
  score = images.reshape(images.shape[0], -1) @ params['w'] + params['b']
  return jnp.stack([jnp.zeros_like(score), score], axis=-1)


def linear_params(margin: float):
  w = jnp.full((D,), 1.0 / np.sqrt(D), jnp.float32)
  b = margin - float(np.dot(np.full(D, 0.5), np.asarray(w)))
  return {'w': w, 'b': jnp.float32(b)}


def quantized_conv_apply(params, images):
  """A small CNN whose arithmetic is exact (integer inputs: the noisy image rounded to
  quarters, times 4; integer weights), so equal noise gives equal votes whatever the
  batch size or grouping of points; with sigma = 0.5 the noisy pixels are exact too.
  The same classifier as in smoothing_test.py."""
  q = jnp.round(images * 4.0)
  y = jax.lax.conv_general_dilated(q, params['kernel'], (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jax.nn.relu(y), axis=(1, 2)) @ params['dense']


def quantized_conv_params():
  rng = np.random.default_rng(0)
  return {'kernel': jnp.asarray(rng.integers(-2, 3, (3, 3, 1, 4)), jnp.float32),
          'dense': jnp.asarray(rng.integers(-2, 3, (4, 3)), jnp.float32)}


def no_work_apply(params, images):
  raise AssertionError('the classifier ran (or was traced) although it had nothing to do')


def _dataset(num=10):
  rng = np.random.default_rng(2)
  images = rng.random((num, *SHAPE)).astype(np.float32)
  labels = rng.integers(0, 2, num).astype(np.int32)
  return images, labels


def _without_time(rows):
  return [r._replace(time=0.0) for r in rows]


# ------------------------------------------------------------------------------------
# certify_dataset: the resumable log.


def test_certify_dataset_resume_equals_uninterrupted(tmp_path):
  """A log killed after three rows (mid-write of the fourth), or begun on a prefix of
  the indices, resumes to the uninterrupted log although its chunks group the points
  differently: exact, since a point's votes depend on its key alone and the quantized
  classifier's arithmetic is exact (failure odds 0)."""
  params = quantized_conv_params()
  images, labels = _dataset()
  indices = [9, 0, 4, 7, 1, 3, 8]
  kw = dict(indices=indices, num_classes=3, sigma=0.5, n0=16, n=400, alpha=0.001,
            batch_size=64, chunk_size=2)
  apply_fn = quantized_conv_apply
  key = jax.random.key(8)
  full_path = str(tmp_path / 'full.tsv')
  full = certification.certify_dataset(key, apply_fn, params, images, labels,
                                       tsv_path=full_path, **kw)
  assert [r.idx for r in full] == indices
  assert [r.label for r in full] == labels[indices].tolist()
  assert all(r.correct == int(r.predict == r.label) for r in full)
  assert len({(r.predict, r.radius) for r in full}) > 1  # The points do differ.
  with open(full_path) as f:
    full_lines = f.read().splitlines()
  assert full_lines[0] == 'idx\tlabel\tpredict\tradius\tcorrect\ttime'

  # Killed after three rows, in the middle of writing the fourth.
  resumed_path = str(tmp_path / 'resumed.tsv')
  with open(resumed_path, 'w') as f:
    f.write('\n'.join(full_lines[:4]) + '\n' + full_lines[4][:5])
  resumed = certification.certify_dataset(key, apply_fn, params, images, labels,
                                          tsv_path=resumed_path, **kw)
  assert _without_time(resumed) == _without_time(full)
  with open(resumed_path) as f:
    resumed_lines = f.read().splitlines()
  strip = lambda lines: [line.rsplit('\t', 1)[0] for line in lines]
  assert strip(resumed_lines) == strip(full_lines)

  # A first run on a prefix of the indices, then the full run, gives the same log.
  prefix_path = str(tmp_path / 'prefix.tsv')
  certification.certify_dataset(key, apply_fn, params, images, labels,
                                tsv_path=prefix_path, **dict(kw, indices=indices[:2]))
  continued = certification.certify_dataset(key, apply_fn, params, images, labels,
                                            tsv_path=prefix_path, **kw)
  assert _without_time(continued) == _without_time(full)
  # Run again when complete: nothing to do (the classifier is not even traced).
  again = certification.certify_dataset(key, no_work_apply, params, images, labels,
                                        tsv_path=full_path, **kw)
  assert again == full
  # No temporary files are left beside the logs.
  assert sorted(os.listdir(tmp_path)) == ['full.tsv', 'prefix.tsv', 'resumed.tsv']


def test_certify_dataset_refuses_a_log_of_other_points_and_leaves_it_alone(tmp_path):
  """Deterministic (failure odds 0)."""
  params = linear_params(margin=0.05)
  images, labels = _dataset()
  path = str(tmp_path / 'log.tsv')
  kw = dict(num_classes=2, sigma=0.5, n0=16, n=100, alpha=0.001, batch_size=64)
  certification.certify_dataset(jax.random.key(0), linear_apply, params, images, labels,
                                indices=[1, 2], tsv_path=path, **kw)
  with open(path) as f:
    before = f.read()
  with pytest.raises(ValueError, match='another run'):
    certification.certify_dataset(jax.random.key(0), no_work_apply, params, images,
                                  labels, indices=[2, 1, 3], tsv_path=path, **kw)
  other_labels = (labels + 1) % 2
  with pytest.raises(ValueError, match='labels that differ'):
    certification.certify_dataset(jax.random.key(0), no_work_apply, params, images,
                                  other_labels, indices=[1, 2, 3], tsv_path=path, **kw)
  with open(path) as f:
    assert f.read() == before
  for text in ('something else\n', 'no newline at the end'):
    other = tmp_path / 'other.tsv'
    other.write_text(text)
    with pytest.raises(ValueError, match='not a certification log'):
      certification.certify_dataset(jax.random.key(0), no_work_apply, params, images,
                                    labels, tsv_path=str(other), **kw)
    assert other.read_text() == text  # Not overwritten.


_GOOD = dict(num_classes=2, sigma=0.5, n0=16, n=100, alpha=0.001, batch_size=64)
_BAD_ARGS = [
    ('sigma', 0.0), ('sigma', float('nan')), ('alpha', 0.0), ('alpha', 1.5),
    ('n0', 0), ('n0', 2.5), ('n', 9), ('batch_size', 0), ('num_classes', 1),
    ('chunk_size', 0), ('chunk_size', -1), ('chunk_size', 1.5),
]


@pytest.mark.parametrize('name,value', _BAD_ARGS)
def test_certify_dataset_rejects_bad_arguments_before_writing(tmp_path, name, value):
  """Deterministic (failure odds 0)."""
  images, labels = _dataset(4)
  path = tmp_path / 'log.tsv'
  with pytest.raises(ValueError, match=name):
    certification.certify_dataset(jax.random.key(0), no_work_apply, None, images, labels,
                                  tsv_path=str(path), **dict(_GOOD, **{name: value}))
  assert not path.exists()


@pytest.mark.parametrize('bad', ['key', 'nan', 'above_one', 'uint8', 'labels_length',
                                 'labels_range', 'index_range', 'negative_index',
                                 'repeated_index', 'image_shape'])
def test_certify_dataset_rejects_bad_input_before_writing(tmp_path, bad):
  """Bad keys, images, labels, indices, or a model that cannot take the images: a
  ValueError naming the argument, and no log. Deterministic (failure odds 0)."""
  images, labels = _dataset(4)
  key, apply_fn, params, indices = jax.random.key(0), no_work_apply, None, None
  match = bad.split('_')[0]
  if bad == 'key':
    key, match = 0, r'key=0 .*jax.random.key\(0\)'
  elif bad == 'nan':
    images[1, 0, 0, 0], match = np.nan, 'images holds 1 NaN'
  elif bad == 'above_one':
    images, match = images * 255, 'divide uint8 images by 255'
  elif bad == 'uint8':
    images, match = (images * 255).astype(np.uint8), 'dtype uint8'
  elif bad == 'labels_length':
    labels = labels[:3]
  elif bad == 'labels_range':
    labels, match = labels + 2, r'labels holds values from .* \[0, 2\)'
  elif bad in ('index_range', 'negative_index', 'repeated_index'):
    indices = {'index_range': [0, 4], 'negative_index': [-1],
               'repeated_index': [1, 1]}[bad]
    match = 'indices'
  else:  # The linear classifier takes 16 pixels, not 25.
    images, apply_fn, params = np.zeros((4, 5, 5, 1), np.float32), linear_apply, \
        linear_params(0.1)
    match = r'the model cannot take images of shape \(5, 5, 1\)'
  path = tmp_path / 'log.tsv'
  with pytest.raises(ValueError, match=match):
    certification.certify_dataset(key, apply_fn, params, images, labels, indices=indices,
                                  tsv_path=str(path), **_GOOD)
  assert not path.exists()


def test_certify_dataset_refuses_a_tsv_path_that_cannot_be_a_file(tmp_path):
  """A directory where the log belongs, or a file where its directory belongs.
  Deterministic (failure odds 0)."""
  images, labels = _dataset(4)
  (tmp_path / 'dir.tsv').mkdir()
  (tmp_path / 'file').write_text('x')
  kw = dict(_GOOD, chunk_size=1)
  with pytest.raises(ValueError, match=r"tsv_path=.*dir.tsv' is a directory"):
    certification.certify_dataset(jax.random.key(0), no_work_apply, None, images, labels,
                                  tsv_path=str(tmp_path / 'dir.tsv'), **kw)
  with pytest.raises(ValueError, match=r"cannot be a directory: its parent .*file' is a "
                                       'file'):
    certification.certify_dataset(jax.random.key(0), no_work_apply, None, images, labels,
                                  tsv_path=str(tmp_path / 'file' / 'sub' / 'log.tsv'),
                                  **kw)
  assert sorted(os.listdir(tmp_path)) == ['dir.tsv', 'file']


# ------------------------------------------------------------------------------------
# certify_split: the experiment on a real checkpoint.


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
  """A training run of 2 epochs (its latest checkpoint is step 8). Tests that change it
  work on a copy."""
  workdir = str(tmp_path_factory.mktemp('train'))
  _train(workdir, num_epochs=2)
  return workdir


def _config(checkpoint_dir: str, **overrides) -> ml_collections.ConfigDict:
  config = certify_config.get_config('tiny')
  config.checkpoint_dir = checkpoint_dir
  for name, value in overrides.items():
    config[name] = value
  return config


def test_certify_split_writes_the_record_and_resumes(checkpoint_dir, tmp_path):
  """The workdir holds the config with its inputs (checkpoint step and digests, the
  points' digest, sigma), the log, the summary and the figure; a rerun with a new batch
  size resumes (it does not change the certificates), a new n is refused naming it, and
  a killed run keeps its rows and certifies the rest (that the rest equal an
  uninterrupted run's is the exact test above; LeNet's float32 logits may round
  differently for another grouping of points). Deterministic (failure odds 0)."""
  workdir = str(tmp_path / 'certify')
  summary = certification.certify_split(_config(checkpoint_dir), workdir)
  assert sorted(os.listdir(workdir)) == ['certified_accuracy.png', 'certify.tsv',
                                         'config.json', 'summary.json']
  record = workdir_lib.read_json(os.path.join(workdir, 'config.json'))
  assert record['n'] == 64 and record['target_class'] == 8
  inputs = record['inputs']
  assert inputs['checkpoint']['step'] == 8
  step_dir = os.path.join(checkpoint_dir, 'checkpoints', '8')
  assert inputs['checkpoint']['sha256'] == workdir_lib.directory_digest(step_dir)
  assert inputs['points']['count'] == 4 and inputs['indices_from_file'] is None
  assert inputs['sigma'] == 0.5  # The training sigma (config.sigma = -1).
  rows = metrics.read_certification_tsv(os.path.join(workdir, 'certify.tsv'))
  assert len(rows) == 4 and all(r.label == 8 for r in rows)
  written = workdir_lib.read_json(os.path.join(workdir, 'summary.json'))
  for name in ('indices', 'inputs', 'num_points', 'sigma', 'n', 'checkpoint_step'):
    assert written[name] == summary[name]
  assert summary['indices'] == [r.idx for r in rows]
  assert summary['checkpoint_step'] == 8 and summary['target_class'] == 8

  again = certification.certify_split(_config(checkpoint_dir, batch_size=32), workdir)
  assert again['acr'] == summary['acr'] and again['indices'] == summary['indices']
  with pytest.raises(workdir_lib.SettingsMismatchError,
                     match=r'(?s)\n  n: 64 there, 128 now\n.*--config.n=64'):
    certification.certify_split(_config(checkpoint_dir, n=128), workdir)
  with pytest.raises(workdir_lib.SettingsMismatchError,
                     match=r'(?s)\n  seed: 0 there, 1 now\n.*--config.seed=0'):
    certification.certify_split(_config(checkpoint_dir, seed=1), workdir)

  # Killed after three rows: the resumed log equals the uninterrupted one.
  killed = str(tmp_path / 'killed')
  shutil.copytree(workdir, killed)
  tsv = os.path.join(killed, 'certify.tsv')
  with open(tsv) as f:
    lines = f.read().splitlines(keepends=True)
  with open(tsv, 'w') as f:
    f.write(''.join(lines[:4]))
  resumed = certification.certify_split(_config(checkpoint_dir), killed)
  with open(tsv) as f:
    resumed_lines = f.read().splitlines(keepends=True)
  assert resumed_lines[:4] == lines[:4] and len(resumed_lines) == 5
  assert resumed['indices'] == summary['indices']


def test_resume_onto_a_model_trained_on_is_refused(checkpoint_dir, tmp_path):
  """The reported defect: a certification made from the step-8 checkpoint, complete (C)
  or killed after three points (C2), must not be resumed after the training run went
  on in place to more epochs: both refuse, naming the checkpoint's step and digest,
  and leave their files as they were. Certifying the new model into a new workdir
  works. Deterministic (failure odds 0)."""
  trained = str(tmp_path / 'train')
  shutil.copytree(checkpoint_dir, trained)
  complete, killed = str(tmp_path / 'C'), str(tmp_path / 'C2')
  certification.certify_split(_config(trained), complete)
  certification.certify_split(_config(trained), killed)
  tsv = os.path.join(killed, 'certify.tsv')
  with open(tsv) as f:
    lines = f.read().splitlines(keepends=True)
  with open(tsv, 'w') as f:
    f.write(''.join(lines[:4]))  # The header and three rows.

  _train(trained, num_epochs=3)  # Train on, in place: step 12.
  for workdir in (complete, killed):
    before = {name: open(os.path.join(workdir, name), 'rb').read()
              for name in sorted(os.listdir(workdir))}
    with pytest.raises(workdir_lib.SettingsMismatchError) as e:
      certification.certify_split(_config(trained), workdir)
    message = str(e.value)
    assert 'inputs.checkpoint.step: 8 there, 12 now' in message
    assert 'inputs.checkpoint.sha256' in message
    assert 'inputs.checkpoint.variables_sha256' in message
    assert {name: open(os.path.join(workdir, name), 'rb').read()
            for name in sorted(os.listdir(workdir))} == before
  fresh = certification.certify_split(_config(trained), str(tmp_path / 'C3'))
  assert fresh['checkpoint_step'] == 12


def test_a_moved_training_run_resumes(checkpoint_dir, tmp_path):
  """The checkpoint is fingerprinted by content, so its path may change.
  Deterministic (failure odds 0)."""
  moved = str(tmp_path / 'moved')
  shutil.copytree(checkpoint_dir, moved)
  workdir = str(tmp_path / 'certify')
  first = certification.certify_split(_config(checkpoint_dir), workdir)
  second = certification.certify_split(_config(moved), workdir)
  assert second['indices'] == first['indices'] and second['acr'] == first['acr']


def test_indices_file_certifies_the_same_points_and_is_fingerprinted(checkpoint_dir,
                                                                    tmp_path):
  """A second certification on the points another one recorded (its summary.json)
  gives the same certificates (same model, same key); a rerun after the file's indices
  changed is refused, naming the indices file. Deterministic (failure odds 0)."""
  first = certification.certify_split(_config(checkpoint_dir), str(tmp_path / 'first'))
  indices_file = str(tmp_path / 'indices.json')
  workdir_lib.write_json(indices_file, {'indices': first['indices']})
  workdir = str(tmp_path / 'second')
  config = _config(checkpoint_dir, indices_file=indices_file, target_class=-1)
  second = certification.certify_split(config, workdir)
  assert second['indices'] == first['indices'] and second['acr'] == first['acr']
  workdir_lib.write_json(indices_file, first['indices'][::-1])  # A list works too.
  with pytest.raises(workdir_lib.SettingsMismatchError,
                     match='inputs.indices_from_file.sha256'):
    certification.certify_split(config, workdir)


@pytest.mark.parametrize('target_class', [None, 'all', -1])
def test_target_class_none_all_or_minus_one_certifies_every_class(checkpoint_dir,
                                                                 tmp_path, target_class):
  """Deterministic (failure odds 0): the seeded subset is drawn from all 1,000 test
  points, so four points of one class would be a coincidence of the fixed seed, which
  this asserts does not happen."""
  config = ml_collections.ConfigDict(dict(_config(checkpoint_dir).to_dict(),
                                          target_class=target_class))
  summary = certification.certify_split(config, str(tmp_path / 'all'))
  assert summary['target_class'] is None and summary['num_points'] == 4
  rows = metrics.read_certification_tsv(str(tmp_path / 'all' / 'certify.tsv'))
  assert len({r.label for r in rows}) > 1


def test_sigma_may_be_a_0d_array(checkpoint_dir, tmp_path):
  """``jnp.float32(0.5)`` is accepted as sigma and recorded as 0.5. Deterministic
  (failure odds 0)."""
  config = ml_collections.ConfigDict(dict(_config(checkpoint_dir).to_dict(),
                                          sigma=jnp.float32(0.5)))
  summary = certification.certify_split(config, str(tmp_path / 'c'))
  assert summary['sigma'] == 0.5
  record = workdir_lib.read_json(str(tmp_path / 'c' / 'config.json'))
  assert record['sigma'] == 0.5 and record['inputs']['sigma'] == 0.5


# ------------------------------------------------------------------------------------
# certify_split: bad input is refused before any work and before any file is written.


_BAD_CONFIG = [
    ('alpha', 0.7, r'config.alpha=0.7 must be a number in the open interval \(0, 0.5\)'),
    ('alpha', 0.5, 'config.alpha=0.5'), ('alpha', 0.0, 'config.alpha=0.0'),
    ('alpha', 'small', "config.alpha='small'"),
    ('target_class', -2, r"config.target_class=-2 is not a class; accepted: an integer "
                         r"in \[0, 10\), or None, 'all' or -1"),
    ('target_class', 10, r'config.target_class=10 is not a class.*\[0, 10\)'),
    ('target_class', 'eight', "config.target_class='eight' is not a class"),
    ('target_class', 2.0, 'config.target_class=2.0 is not a class'),
    ('chunk_size', -1, r'config.chunk_size=-1 must be an integer >= 0 \(0: batch_size'),
    ('n0', 0, r'config.n0=0 must be an integer >= 1'),
    ('n', 9, r'config.n=9 is too small .* config.alpha=0.001.*config.n >= 10'),
    ('n', 2**31, r'config.n=2147483648 must be at most 2147483647'),
    ('n', 64.0, r'config.n=64.0 must be an integer'),
    ('sigma', float('nan'), 'config.sigma=nan must be a finite number'),
    ('sigma', 'half', "config.sigma='half'"),
    ('batch_size', 0, 'config.batch_size=0'),
    ('split', 'dev', "config.split='dev' is not known; accepted: train, val, test"),
    ('dataset', 'imagenet', "config.dataset='imagenet' is not known"),
    ('data_seed', -2, 'config.data_seed=-2'),
    ('seed', -1, 'config.seed=-1'), ('seed', 2**40, 'config.seed=1099511627776'),
    ('subset_seed', -1, 'config.subset_seed=-1'),
    ('num_points', 1.5, 'config.num_points=1.5'),
]


@pytest.mark.parametrize('name,value,match', _BAD_CONFIG)
def test_bad_config_is_refused_before_any_file_is_written(checkpoint_dir, tmp_path, name,
                                                          value, match):
  """Deterministic (failure odds 0)."""
  config = _config(checkpoint_dir)
  config = ml_collections.ConfigDict(dict(config.to_dict(), **{name: value}))
  workdir = tmp_path / 'certify'
  with pytest.raises(ValueError, match=match):
    certification.certify_split(config, str(workdir))
  assert not workdir.exists()


def test_bad_checkpoint_dirs_are_refused_without_writing_there(checkpoint_dir, tmp_path):
  """An empty path, a missing directory, a directory without a training run, a
  training run without a checkpoint, and a truncated training config.json (named):
  each refused, and nothing is created in them. Deterministic (failure odds 0)."""
  workdir = tmp_path / 'certify'
  with pytest.raises(ValueError, match="config.checkpoint_dir='' is empty"):
    certification.certify_split(_config(''), str(workdir))
  with pytest.raises(ValueError, match='is not a directory'):
    certification.certify_split(_config(str(tmp_path / 'missing')), str(workdir))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match='holds no config.json'):
    certification.certify_split(_config(str(empty)), str(workdir))
  shutil.copy(os.path.join(checkpoint_dir, 'config.json'), empty / 'config.json')
  with pytest.raises(ValueError, match='holds no checkpoint yet'):
    certification.certify_split(_config(str(empty)), str(workdir))
  assert sorted(os.listdir(empty)) == ['config.json']
  text = (empty / 'config.json').read_text()
  (empty / 'config.json').write_text(text[:len(text) // 2])
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"empty/config.json' is not valid JSON.*truncated"):
    certification.certify_split(_config(str(empty)), str(workdir))
  assert not workdir.exists()


def test_truncated_or_bad_indices_file_is_refused_naming_it(checkpoint_dir, tmp_path):
  """Deterministic (failure odds 0)."""
  workdir = tmp_path / 'certify'
  path = tmp_path / 'indices.json'
  path.write_text('{"indices": [216, 487, 6')  # Cut off mid-write.
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"indices.json' is not valid JSON.*truncated"):
    certification.certify_split(_config(checkpoint_dir, indices_file=str(path)),
                                str(workdir))
  for text, match in (('{"points": [1, 2]}', 'holds no list of integer indices'),
                      ('[1, 2.5]', 'holds no list of integer indices'),
                      ('[3, 3]', 'repeated indices'),
                      ('[0, 1000]', r'indices from 0 to 1000, outside the 1000 points')):
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
      certification.certify_split(_config(checkpoint_dir, indices_file=str(path)),
                                  str(workdir))
  with pytest.raises(ValueError, match='is not a file'):
    certification.certify_split(_config(checkpoint_dir, indices_file=str(tmp_path)),
                                str(workdir))
  assert not workdir.exists()


def test_a_workdir_that_cannot_be_one_is_refused(checkpoint_dir, tmp_path):
  """A file where the workdir (or a parent of it) belongs, a directory where one of
  its files belongs, and a truncated config.json of an earlier run (named): refused
  before any work, and nothing is changed. Deterministic (failure odds 0)."""
  a_file = tmp_path / 'file'
  a_file.write_text('not a directory')
  with pytest.raises(ValueError, match=r"workdir=.*file' cannot be a directory: it is a "
                                       'file'):
    certification.certify_split(_config(checkpoint_dir), str(a_file))
  with pytest.raises(ValueError, match=r"cannot be a directory: its parent .*file' is a "
                                       'file'):
    certification.certify_split(_config(checkpoint_dir), str(a_file / 'sub'))
  assert a_file.read_text() == 'not a directory'
  workdir = tmp_path / 'certify'
  (workdir / 'certify.tsv').mkdir(parents=True)
  with pytest.raises(ValueError, match=r"certify.tsv' is a directory"):
    certification.certify_split(_config(checkpoint_dir), str(workdir))
  assert os.listdir(workdir) == ['certify.tsv']
  os.rmdir(workdir / 'certify.tsv')
  (workdir / 'config.json').write_text('{"n": 6')
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r"certify/config.json' is not valid JSON.*truncated"):
    certification.certify_split(_config(checkpoint_dir), str(workdir))
  assert os.listdir(workdir) == ['config.json']


def test_a_foreign_log_is_refused_before_the_config_is_written(checkpoint_dir, tmp_path):
  """Deterministic (failure odds 0)."""
  workdir = tmp_path / 'certify'
  workdir.mkdir()
  (workdir / 'certify.tsv').write_text('epoch\tloss\n1\t0.5\n')
  with pytest.raises(ValueError, match='not a certification log'):
    certification.certify_split(_config(checkpoint_dir), str(workdir))
  assert os.listdir(workdir) == ['certify.tsv']
