"""Tests of rsp.data: the paper's splits, determinism by seed, TFDS through
``tfds.testing.mock_data`` (no network), selections, batching by key, augmentation,
poison files and a run's splits (``load_splits``).

Every test is deterministic (fixed seeds and keys): none can fail by chance.
"""

import os
import pickle

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rsp import data
from rsp import workdir as workdir_lib


@pytest.fixture(scope='module')
def embedded():
  return data.load('mnist_embedded', seed=0)


def _check_split(ds, shape):
  assert ds['image'].dtype == np.float32 and ds['label'].dtype == np.int32
  assert ds['image'].shape[1:] == shape and ds['image'].ndim == 4
  assert ds['label'].shape == (ds['image'].shape[0],)
  assert ds['image'].min() >= 0.0 and ds['image'].max() <= 1.0
  data.validate(ds, image_shape=shape, num_classes=10)


def _rows(images):
  """Each image as bytes, to compare sets of images across splits."""
  return [x.tobytes() for x in images]


# ------------------------------------------------------------------------------------
# mnist_embedded.


def test_embedded_split_sizes_are_stratified(embedded):
  sizes = {'train': 350, 'val': 50, 'test': 100}
  for name, per_class in sizes.items():
    ds = embedded[name]
    assert len(ds['label']) == 10 * per_class
    np.testing.assert_array_equal(np.bincount(ds['label'], minlength=10),
                                  np.full(10, per_class))
    _check_split(ds, (28, 28, 1))
  # Real digits: pixels span [0, 1] with exact 8-bit values.
  assert embedded['train']['image'].max() == 1.0
  np.testing.assert_allclose(embedded['test']['image'] * 255,
                             np.round(embedded['test']['image'] * 255), atol=1e-4)


def test_embedded_splits_partition_the_5000_digits(embedded):
  rows = sum((_rows(embedded[k]['image']) for k in ('train', 'val', 'test')), [])
  labels = np.concatenate([embedded[k]['label'] for k in ('train', 'val', 'test')])
  images, all_labels = data._embedded_arrays()  # pylint: disable=protected-access
  assert len(rows) == 5000
  assert sorted(zip(rows, labels.tolist())) == sorted(
      zip(_rows(images), all_labels.tolist()))


def test_embedded_is_deterministic_by_seed(embedded):
  again = data.load('mnist_embedded', seed=0)
  other = data.load('mnist_embedded', seed=1)
  for name in ('train', 'val', 'test'):
    np.testing.assert_array_equal(again[name]['image'], embedded[name]['image'])
    np.testing.assert_array_equal(again[name]['label'], embedded[name]['label'])
  assert set(_rows(other['test']['image'])) != set(_rows(embedded['test']['image']))


def test_embedded_custom_split_and_bad_split():
  small = data.load('mnist_embedded', embedded_split=(10, 2, 3))
  assert [len(small[k]['label']) for k in ('train', 'val', 'test')] == [100, 20, 30]
  for bad in [(400, 50, 100), (0, 50, 100), (10, 10)]:
    with pytest.raises(ValueError, match='embedded_split'):
      data.load('mnist_embedded', embedded_split=bad)


def test_unknown_dataset():
  with pytest.raises(ValueError, match="dataset='imagenet' is not known"):
    data.load('imagenet')
  with pytest.raises(ValueError, match='accepted: mnist_embedded, mnist, cifar10'):
    data.info('svhn')
  assert data.info('cifar10') == {'shape': (32, 32, 3), 'num_classes': 10}


# ------------------------------------------------------------------------------------
# TFDS data sets, mocked.


@pytest.mark.parametrize('name,shape,num_val', [('mnist', (28, 28, 1), 10),
                                               ('cifar10', (32, 32, 3), 12)])
def test_tfds_splits_follow_the_paper(name, shape, num_val):
  # 120 mock examples per split: the paper's 5k of 60k (MNIST) or of 50k (CIFAR-10)
  # held out for validation is 1/12 or 1/10 of them.
  with tfds.testing.mock_data(num_examples=120):
    splits = data.load(name, seed=0)
    again = data.load(name, seed=0)
    other = data.load(name, seed=3)
    custom = data.load(name, seed=0, val_fraction=0.5)
    with pytest.raises(ValueError, match='val_fraction'):
      data.load(name, val_fraction=1.0)
  assert len(splits['val']['label']) == num_val
  assert len(splits['train']['label']) == 120 - num_val
  assert len(splits['test']['label']) == 120
  assert len(custom['val']['label']) == 60
  for k in ('train', 'val', 'test'):
    _check_split(splits[k], shape)
    np.testing.assert_array_equal(splits[k]['image'], again[k]['image'])
    np.testing.assert_array_equal(splits[k]['label'], again[k]['label'])
  # Train and val partition the official training split; another seed splits it
  # differently.
  train_rows, val_rows = _rows(splits['train']['image']), _rows(splits['val']['image'])
  assert not set(train_rows) & set(val_rows)
  assert sorted(train_rows + val_rows) == sorted(
      _rows(other['train']['image']) + _rows(other['val']['image']))
  assert set(val_rows) != set(_rows(other['val']['image']))


def test_tfds_not_prepared_names_the_command(tmp_path):
  with pytest.raises(data.DatasetNotPreparedError) as err:
    data.load('mnist', data_dir=str(tmp_path))
  message = str(err.value)
  assert 'not prepared' in message
  assert f'python -m rsp.data --prepare=mnist --data_dir={tmp_path}' in message
  assert 'pip install -e ".[prepare]"' in message


# ------------------------------------------------------------------------------------
# Checks and selections.


def _toy(n=20, num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.random((n, 4, 4, 1), dtype=np.float32),
          'label': (np.arange(n) % num_classes).astype(np.int32)}


def test_validate_rejects_bad_splits():
  ds = _toy()
  data.validate(ds, image_shape=(4, 4, 1), num_classes=4)
  bad = [
      ({'image': ds['image']}, 'keys'),
      ({'image': ds['image'][..., 0], 'label': ds['label']}, r'\[N, H, W, C\]'),
      (dict(ds, label=ds['label'][:-1]), 'label'),
      (dict(ds, image=ds['image'] * 2), r'\[0, 1\]'),
      (dict(ds, image=np.where(ds['image'] > .5, np.nan, ds['image'])), 'finite'),
  ]
  for split, match in bad:
    with pytest.raises(ValueError, match=match):
      data.validate(split)
  with pytest.raises(ValueError, match='image shape'):
    data.validate(ds, image_shape=(28, 28, 1))
  with pytest.raises(ValueError, match=r'\[0, 3\)'):
    data.validate(ds, num_classes=3)


def test_select_and_remove_class():
  ds = _toy()
  sel = data.select_class(ds, 2)
  np.testing.assert_array_equal(sel['label'], np.full(5, 2))
  np.testing.assert_array_equal(sel['image'], ds['image'][2::4])
  rest = data.remove_class(ds, 2)
  assert len(rest['label']) == 15 and 2 not in rest['label']
  np.testing.assert_array_equal(data.class_indices(ds, 3), np.arange(3, 20, 4))
  with pytest.raises(ValueError, match='class=7 has no points; classes present'):
    data.select_class(ds, 7)
  with pytest.raises(ValueError, match='class=2 has no points'):
    data.class_indices(rest, 2)


def test_subsets():
  ds = _toy()
  np.testing.assert_array_equal(data.subset(ds, [3, 1])['label'], [3, 1])
  idx = data.seeded_subset_indices(20, 5, seed=1)
  assert len(idx) == 5 and len(set(idx.tolist())) == 5 and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(idx, data.seeded_subset_indices(20, 5, seed=1))
  np.testing.assert_array_equal(data.seeded_subset_indices(20, None, 0), np.arange(20))
  np.testing.assert_array_equal(data.seeded_subset_indices(20, 50, 0), np.arange(20))
  with pytest.raises(ValueError, match='m=0'):
    data.seeded_subset_indices(20, 0, 0)


def test_apply_poison_replaces_images_and_keeps_labels():
  ds = _toy()
  idx = data.class_indices(ds, 1)
  poisons = np.clip(ds['image'][idx] + 0.1, 0, 1)
  out = data.apply_poison(ds, idx, poisons)
  np.testing.assert_array_equal(out['label'], ds['label'])
  np.testing.assert_array_equal(out['image'][idx], poisons)
  others = np.setdiff1d(np.arange(20), idx)
  np.testing.assert_array_equal(out['image'][others], ds['image'][others])
  assert not np.array_equal(ds['image'][idx], poisons)  # The input is not modified.
  with pytest.raises(ValueError, match='shape'):
    data.apply_poison(ds, idx, poisons[:-1])
  with pytest.raises(ValueError, match=r'in \[0, 20\)'):
    data.apply_poison(ds, idx + 19, poisons)
  with pytest.raises(ValueError, match='repeat'):
    data.apply_poison(ds, np.full_like(idx, 1), poisons)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    data.apply_poison(ds, idx, poisons + 2)


# ------------------------------------------------------------------------------------
# Batching.


def test_epoch_batches_are_determined_by_the_key():
  ds = _toy(n=23)
  key = jax.random.key(0)
  first = list(data.epoch_batches(key, ds, 5))
  again = list(data.epoch_batches(key, ds, 5))
  other = list(data.epoch_batches(jax.random.key(1), ds, 5))
  assert len(first) == data.num_batches(23, 5) == 4
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert any(not np.array_equal(a['label'], b['label']) for a, b in zip(first, other))
  # Without replacement: 20 distinct examples, each image with its own label.
  rows = _rows(np.concatenate([b['image'] for b in first]))
  assert len(set(rows)) == 20
  lookup = dict(zip(_rows(ds['image']), ds['label'].tolist()))
  for b in first:
    assert b['image'].shape == (5, 4, 4, 1)
    assert [lookup[r] for r in _rows(b['image'])] == b['label'].tolist()
  full = list(data.epoch_batches(key, ds, 5, drop_remainder=False))
  assert [len(b['label']) for b in full] == [5, 5, 5, 5, 3]
  assert data.num_batches(23, 5, drop_remainder=False) == 5
  with pytest.raises(ValueError, match='batch_size=0'):
    next(data.epoch_batches(key, ds, 0))


def test_random_crop_flip_shifts_and_mirrors_each_image():
  images = jax.random.uniform(jax.random.key(0), (6, 8, 8, 3))
  out = data.random_crop_flip(jax.random.key(1), images, pad=2)
  assert out.shape == images.shape
  # Each output is a shifted (zero-padded), possibly mirrored copy of its input.
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(6):
    crops = [padded[i, a:a + 8, b:b + 8] for a in range(5) for b in range(5)]
    assert any(np.array_equal(out[i], c) or np.array_equal(out[i], c[:, ::-1])
               for c in crops)
  np.testing.assert_array_equal(out, data.random_crop_flip(jax.random.key(1), images,
                                                           pad=2))


# ------------------------------------------------------------------------------------
# Poison files.


def _poison_set(eps=0.1, seed=0):
  train = _toy(seed=seed)
  idx = data.class_indices(train, 1)
  clean = train['image'][idx]
  delta = np.random.default_rng(seed).uniform(-eps, eps, clean.shape).astype(np.float32)
  poisons = np.clip(clean + delta, 0, 1)
  args = dict(poisons=poisons, indices=idx, clean_images=clean, labels=train['label'][idx],
              metadata={'eps': eps, 'dataset': 'toy', 'target_class': 1,
                        'method': 'random', 'sigma': 0.5, 'seed': seed})
  return train, args


def test_poison_file_roundtrip(tmp_path):
  train, args = _poison_set()
  path = str(tmp_path / 'sub' / 'poisons.npz')
  data.save_poisons(path, train=train, **args)
  assert os.listdir(tmp_path / 'sub') == ['poisons.npz']  # No temporary file left.
  loaded = data.load_poisons(path, train=train)
  for k in ('poisons', 'indices', 'clean_images', 'labels'):
    np.testing.assert_array_equal(loaded[k], args[k])
  meta = loaded['metadata']
  assert meta['target_class'] == 1 and meta['eps'] == 0.1
  assert meta['format'] == data.POISON_FORMAT and 'rsp_version' in meta
  poisoned = data.apply_poison(train, loaded['indices'], loaded['poisons'])
  np.testing.assert_array_equal(poisoned['label'], train['label'])


def _bad_poison_sets():
  """(name, save_poisons kwargs, message) for poison sets that must be refused."""
  train, args = _poison_set()
  out = []
  out.append(('beyond_eps', dict(args, poisons=np.clip(args['clean_images'] + 0.3, 0, 1)),
              'beyond eps'))
  out.append(('outside_unit', dict(args, poisons=args['poisons'] - 2 * args['poisons']),
              r'leave \[0, 1\]'))
  nan = args['poisons'].copy()
  nan[0, 0, 0, 0] = np.nan
  out.append(('nan', dict(args, poisons=nan), 'NaN'))
  out.append(('wrong_labels', dict(args, labels=(args['labels'] + 1) % 4),
              'labels differ'))
  out.append(('other_clean', dict(args, clean_images=args['poisons'],
                                  poisons=args['poisons']), 'clean images differ'))
  out.append(('shapes', dict(args, indices=args['indices'][:-1]), 'inconsistent shapes'))
  out.append(('repeat', dict(args, indices=np.full_like(args['indices'], 1)), 'repeat'))
  out.append(('no_eps', dict(args, metadata={'dataset': 'toy'}), 'eps'))
  out.append(('nan_eps', dict(args, metadata={'eps': float('nan')}), 'eps'))
  return train, out


_TRAIN, _BAD = _bad_poison_sets()


@pytest.mark.parametrize('name,kwargs,match', _BAD, ids=[b[0] for b in _BAD])
def test_save_poisons_refuses_bad_sets_and_writes_nothing(tmp_path, name, kwargs, match):
  del name
  path = str(tmp_path / 'poisons.npz')
  with pytest.raises(ValueError, match=match):
    data.save_poisons(path, train=_TRAIN, **kwargs)
  assert os.listdir(tmp_path) == []


def test_a_failed_poison_write_leaves_the_old_file_and_no_temporary(tmp_path,
                                                                     monkeypatch):
  train, args = _poison_set()
  path = str(tmp_path / 'poisons.npz')
  data.save_poisons(path, train=train, **args)
  before = workdir_lib.file_digest(path)

  def killed(*unused_args, **unused_kwargs):
    raise KeyboardInterrupt()

  monkeypatch.setattr(data.np, 'savez', killed)
  with pytest.raises(KeyboardInterrupt):
    data.save_poisons(path, train=train, **dict(args, poisons=args['clean_images']))
  assert os.listdir(tmp_path) == ['poisons.npz']
  assert workdir_lib.file_digest(path) == before


def test_load_poisons_validates(tmp_path):
  train, args = _poison_set()
  # A file whose arrays were tampered with after saving is refused on load.
  path = str(tmp_path / 'tampered.npz')
  data.save_poisons(path, **args)
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  arrays['poisons'] = np.clip(arrays['clean_images'] + 0.5, 0, 1)
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match='beyond eps'):
    data.load_poisons(path)
  # Poisons of another split: labels differ.
  good = str(tmp_path / 'good.npz')
  data.save_poisons(good, **args)
  other = dict(train, label=(train['label'] + 1) % 4)
  with pytest.raises(ValueError, match='labels differ'):
    data.load_poisons(good, train=other)
  with pytest.raises(ValueError, match='indices outside'):
    data.load_poisons(good, train=data.subset(train, np.arange(3)))
  with pytest.raises(ValueError, match='does not exist'):
    data.load_poisons(str(tmp_path / 'missing.npz'))


def test_load_poisons_never_unpickles(tmp_path):
  _, args = _poison_set()
  pickled = str(tmp_path / 'poisons.pkl')
  with open(pickled, 'wb') as f:
    pickle.dump(args, f)
  with pytest.raises(ValueError, match='not a readable rsp poison file'):
    data.load_poisons(pickled)
  # An .npz holding an object array (which only unpickling could read).
  obj = str(tmp_path / 'object.npz')
  arrays = {k: v for k, v in args.items() if k != 'metadata'}
  np.savez(obj, metadata=np.array([args['metadata']], dtype=object), **arrays)
  with pytest.raises(ValueError, match='pickle'):
    data.load_poisons(obj)
  missing = str(tmp_path / 'missing_keys.npz')
  np.savez(missing, poisons=args['poisons'])
  with pytest.raises(ValueError, match='missing'):
    data.load_poisons(missing)


# ------------------------------------------------------------------------------------
# A run's splits.


def _run_config(**fields):
  return ml_collections.ConfigDict(dict(dict(
      dataset='mnist_embedded', data_dir='', data_seed=0, train_subset=0,
      poison_file='', target_class=8), **fields))


def _embedded_poisons(path, **metadata):
  train = data.load('mnist_embedded', seed=0)['train']
  idx = data.class_indices(train, 8)
  clean = train['image'][idx]
  meta = dict(dict(dataset='mnist_embedded', data_seed=0, target_class=8, eps=0.1),
              **metadata)
  data.save_poisons(path, poisons=np.clip(clean + 0.1, 0, 1), indices=idx,
                    clean_images=clean, labels=train['label'][idx], metadata=meta)
  return idx


def test_load_splits_poisons_then_subsets(embedded, tmp_path):
  path = str(tmp_path / 'poisons.npz')
  idx = _embedded_poisons(path)
  splits = data.load_splits(_run_config(poison_file=path, train_subset=500))
  expected = data.apply_poison(embedded['train'], idx,
                               np.clip(embedded['train']['image'][idx] + 0.1, 0, 1))
  keep = data.seeded_subset_indices(3500, 500, 0)
  np.testing.assert_array_equal(splits['train']['image'], expected['image'][keep])
  np.testing.assert_array_equal(splits['train']['label'], expected['label'][keep])
  np.testing.assert_array_equal(splits['test']['image'], embedded['test']['image'])
  clean = data.load_splits(_run_config())
  np.testing.assert_array_equal(clean['train']['image'], embedded['train']['image'])


def test_load_splits_refuses_a_subset_beyond_the_split():
  with pytest.raises(ValueError, match=r'config.train_subset=3501 exceeds the 3500 points '
                                       r"of the 'mnist_embedded' training split"):
    data.load_splits(_run_config(train_subset=3501))


@pytest.mark.parametrize('field,metadata,config', [
    ('dataset', dict(dataset='mnist'), {}),
    ('data_seed', dict(data_seed=3), {}),
    ('target_class', dict(target_class=1), {}),
    ('eps', {}, dict(eps=0.03)),
])
def test_load_splits_refuses_poisons_made_for_another_run(field, metadata, config,
                                                          tmp_path):
  path = str(tmp_path / 'poisons.npz')
  _embedded_poisons(path, **metadata)
  with pytest.raises(ValueError, match=rf'^config.{field}=.*config.poison_file=.* was made '
                                       rf'with {field}='):
    data.load_splits(_run_config(poison_file=path, **config))


def test_check_poison_metadata_skips_what_either_side_lacks():
  meta = {'dataset': 'mnist', 'eps': 0.1}
  data.check_poison_metadata(meta, _run_config(dataset='mnist', target_class=None),
                             path='p.npz')
  data.check_poison_metadata(meta, _run_config(dataset='mnist', eps=0.1 + 1e-12),
                             path='p.npz')
