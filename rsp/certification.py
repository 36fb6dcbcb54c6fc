r"""Certifying a data set, resumably: Cohen's TSV log and the certify experiment.

Two drivers over the pure core ``rsp.smoothing``:

* ``certify_dataset(key, apply_fn, params, images, labels, *, tsv_path, ...)`` certifies
  ``images[indices]`` into Cohen's log ``idx label predict radius correct time``, a
  chunk of points at a time, and resumes a partial log. Point ``idx`` is certified with
  ``fold_in(key, idx)``, so a resumed log equals an uninterrupted one (up to the
  wall-clock ``time`` column). The protocol calls it for each victim.
* ``certify_split(config, workdir)`` is the certify experiment
  (``experiments/certify.py``, config ``rsp/configs/certify.py``): it loads the latest
  checkpoint of a training run and a split, draws the points and certifies them into
  ``WORKDIR/certify.tsv``, then writes ``summary.json`` and ``certified_accuracy.png``.

The workdir records what its certificates were made from. ``config.json`` holds the
config and, under ``inputs``, the fingerprints of everything else the certificates
depend on:

* ``inputs.checkpoint``: the step of the checkpoint restored, a digest of that step's
  directory and a digest of the restored variables;
* ``inputs.points``: how many points, and a digest of their indices, images and labels;
* ``inputs.indices_from_file``: a digest of the indices read from
  ``config.indices_file`` (None without one);
* ``inputs.sigma``: the noise level used (``config.sigma`` or the training sigma).

A rerun with the same workdir resumes the log only if all of these are unchanged
(``rsp.workdir.check_settings``); otherwise it is refused before any work, naming each
field that changed, e.g. ``inputs.checkpoint.step: 8 there, 24 now`` after
``experiments/train.py`` extended the run in place with a larger ``num_epochs``. Only
the fields in ``RESUMABLE_FIELDS`` may change: they do not change the certificates
(``batch_size``, ``chunk_size``), or they are names of inputs whose content is
fingerprinted (``checkpoint_dir``, ``data_dir``, ``indices_file``), so a moved training
run resumes.

The config, the training run's config, the workdir's paths and the indices file are
checked before any work (loading the model and the data); the record and the log of an
earlier run in the workdir right after it; all of it before any file is written. Bad
input raises a ``ValueError`` naming it by its full path (``config.alpha``), its value
and what is accepted. All JSON and text files are written through ``rsp.workdir``
(atomically); the TSV log is created there and then appended to, one flushed chunk at a
time.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from rsp import checkpointing
from rsp import data as data_lib
from rsp import metrics
from rsp import models
from rsp import plotting
from rsp import smoothing
from rsp import train as train_lib
from rsp import validation
from rsp import workdir as workdir_lib

# Config fields a resumed certification may change (see the module docstring). A name
# without dots matches at any depth (rsp.workdir.check_settings), so no key of
# ``inputs`` may be one of these.
RESUMABLE_FIELDS = ('batch_size', 'chunk_size', 'checkpoint_dir', 'data_dir',
                    'indices_file')

SPLITS = ('train', 'val', 'test')

TSV_NAME = 'certify.tsv'
CONFIG_NAME = 'config.json'
SUMMARY_NAME = 'summary.json'
FIGURE_NAME = 'certified_accuracy.png'

_MAX_SEED = 2**32 - 1  # jax.random.key(seed) silently drops higher bits.


# ------------------------------------------------------------------------------------
# Checks that touch no file.


def _check_string(name: str, value: Any) -> None:
  if not isinstance(value, str):
    raise ValueError(f'{name}={value!r} must be a string (a path or a name; \'\' for none).')


def _target_class(value: Any, num_classes: int) -> int | None:
  """``config.target_class`` as a class, or None for every class (None, 'all' or -1)."""
  if value is None or (isinstance(value, str) and value == 'all') or (
      validation.is_int(value) and value == -1):
    return None
  if validation.is_int(value) and 0 <= value < num_classes:
    return int(value)
  raise ValueError(f'config.target_class={value!r} is not a class; accepted: an integer '
                   f"in [0, {num_classes}), or None, 'all' or -1 for every class.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a certification config that cannot work; reads no file.

  Checks every field of ``rsp/configs/certify.py`` but what needs the training run or
  the data (the value of ``target_class``, the indices in ``indices_file``); those are
  checked by ``certify_split`` before any work.
  """
  for name in ('checkpoint_dir', 'dataset', 'data_dir', 'indices_file'):
    _check_string(f'config.{name}', config.get(name, ''))
  if config.dataset and config.dataset not in data_lib.DATASETS:
    raise ValueError(f'config.dataset={config.dataset!r} is not known; accepted: '
                     f"{', '.join(data_lib.DATASETS)}, or '' for the data set the model "
                     'was trained on.')
  validation.check_int('config.data_seed', config.data_seed, -1,
                       meaning="-1: the training run's")
  validation.check_choice('config.split', config.split, SPLITS)
  target = config.target_class  # Its range is checked once the data set is known.
  if not (target is None or target == 'all' or validation.is_int(target)):
    raise ValueError(f'config.target_class={target!r} is not a class; accepted: an '
                     "integer (a class of the data set), or None, 'all' or -1 for every "
                     'class.')
  if not validation.is_int(config.num_points):
    raise ValueError(f'config.num_points={config.num_points!r} must be an integer (<= 0: '
                     'every point of the class).')
  validation.check_int('config.subset_seed', config.subset_seed, 0)
  sigma = validation.real_number(config.sigma)
  if sigma is None or not np.isfinite(sigma):
    raise ValueError(f'config.sigma={config.sigma!r} must be a finite number (> 0: the '
                     "noise level; <= 0: the model's training sigma).")
  alpha = validation.real_number(config.alpha)
  if alpha is None or not 0.0 < alpha < 0.5:
    raise ValueError(f'config.alpha={config.alpha!r} must be a number in the open interval '
                     '(0, 0.5): the probability that a certificate is wrong (the paper '
                     'uses 0.001; at 1/2 or more the Clopper-Pearson bound is no lower '
                     'bound).')
  validation.check_int('config.n0', config.n0, 1, smoothing.MAX_SAMPLES,
                       meaning='selection samples')
  validation.check_int('config.n', config.n, 1, smoothing.MAX_SAMPLES,
                       meaning='estimation samples')
  needed = smoothing.min_samples_to_certify(alpha)
  if config.n < needed:
    raise ValueError(
        f'config.n={config.n} is too small for any certificate at config.alpha={alpha}: '
        f'even if all n samples vote for one class, the Clopper-Pearson lower bound '
        f'alpha**(1/n) = {alpha ** (1 / config.n):.4f} does not exceed 1/2. Use '
        f'config.n >= {needed}.')
  validation.check_int('config.batch_size', config.batch_size, 1)
  validation.check_int('config.chunk_size', config.chunk_size, 0,
                       meaning='0: batch_size // n0')
  validation.check_int('config.seed', config.seed, 0, _MAX_SEED)


def _check_directory_path(name: str, path: Any) -> str:
  """``path`` as a string, refused if it cannot be a directory: empty, or it (or a
  parent) is a file. Creates nothing."""
  if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
    raise ValueError(f'{name}={path!r} must be a directory path.')
  path = os.fspath(path)
  probe = os.path.abspath(path)
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    where = 'it' if probe == os.path.abspath(path) else f'its parent {probe!r}'
    raise ValueError(f'{name}={path!r} cannot be a directory: {where} is a file. Move the '
                     'file away or choose another directory.')
  return path


def _check_file_path(name: str, path: Any) -> str:
  """``path`` as a string, refused if a directory is where the file belongs or its
  directory cannot be one."""
  if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
    raise ValueError(f'{name}={path!r} must be a file path.')
  path = os.fspath(path)
  if os.path.isdir(path):
    raise ValueError(f'{name}={path!r} is a directory, but a file belongs there.')
  _check_directory_path(f'the directory of {name}', os.path.dirname(os.path.abspath(path)))
  return path


# ------------------------------------------------------------------------------------
# Certifying a data set into a resumable TSV log.


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'


def _read_log(tsv_path: str, indices: np.ndarray, labels: np.ndarray
              ) -> tuple[list[metrics.CertificationRow], str | None]:
  """The rows already certified in ``tsv_path``; reads only.

  Returns:
    ``(rows, text)``: ``text`` is what the file must be rewritten with before appending
    (the header for a new log; the complete lines when a killed run left a partial last
    line), or None if it can be appended to as it is.

  Raises:
    ValueError: the file is not a certification log, or holds rows of other points (or
      other labels) than the first ones of ``indices``.
  """
  header = metrics.TSV_HEADER + '\n'
  if not os.path.exists(tsv_path):
    return [], header
  with open(tsv_path) as f:
    text = f.read()
  complete = text[:text.rfind('\n') + 1]
  if not complete.startswith(header):
    if header.startswith(text):  # Empty, or killed while writing the header.
      return [], header
    first = (complete or text).splitlines()[0]
    raise ValueError(f'tsv_path={tsv_path!r} exists but is not a certification log '
                     f'(first line {first!r}); move it away.')
  try:
    rows = [metrics.parse_tsv_row(line) for line in complete.split('\n')[1:] if line]
  except ValueError as e:
    raise ValueError(f'tsv_path={tsv_path!r} holds a malformed row ({e}); the log is '
                     'corrupt: delete it to start again.') from None
  done = np.asarray([r.idx for r in rows], np.int64)
  if len(done) > len(indices) or np.any(done != indices[:len(done)]):
    raise ValueError(
        f'tsv_path={tsv_path!r} holds rows for points {done[:5].tolist()}... that are not '
        f'the first {len(done)} of the requested indices {indices[:5].tolist()}...; it '
        'comes from another run: delete it or choose another path.')
  logged_labels = np.asarray([r.label for r in rows], np.int64)
  if np.any(logged_labels != labels[done]):
    raise ValueError(f'tsv_path={tsv_path!r} records labels that differ from labels; it '
                     'comes from another data set: delete it or choose another path.')
  return rows, (complete if len(complete) != len(text) else None)


def _check_labels(labels: Any, num_images: int, num_classes: int) -> np.ndarray:
  array = np.asarray(labels)
  if array.shape != (num_images,) or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f'labels has shape {array.shape} and dtype {array.dtype}; expected '
                     f'{num_images} integers (one per image).')
  array = array.astype(np.int64)
  if array.size and (array.min() < 0 or array.max() >= num_classes):
    raise ValueError(f'labels holds values from {array.min()} to {array.max()}; expected '
                     f'classes in [0, {num_classes}) (num_classes).')
  return array


def certify_dataset(key: jax.Array, apply_fn: smoothing.ApplyFn, params: Any,
                    images: Any, labels: Any, *, indices: Any = None, tsv_path: str,
                    num_classes: int, sigma: float, n0: int, n: int, alpha: float,
                    batch_size: int, chunk_size: int | None = None,
                    devices: Sequence[Any] | None = None) -> list[metrics.CertificationRow]:
  """Certifies ``images[indices]`` into Cohen's TSV log, resuming a partial log.

  Rows ``idx label predict radius correct time`` (after a header line) are appended
  ``chunk_size`` points at a time and flushed. Restarted with the same arguments, it
  keeps the rows already in ``tsv_path`` and certifies the rest; since point ``idx`` is
  certified with ``fold_in(key, idx)`` (``rsp.smoothing.certify_many``), the finished
  log equals that of an uninterrupted run (up to the wall-clock ``time`` column, the
  chunk's seconds per point). Progress and the estimated time left are logged with absl.

  It checks that the log holds the first of ``indices`` with their labels, not that it
  was made by the same model and settings: a caller that may resume onto another model
  records and checks those (as ``certify_split`` does).

  Args:
    key: a jax.random key.
    apply_fn, params: the base classifier (see ``rsp.smoothing.certify``).
    images: ``[N, H, W, C]`` float pixels in [0, 1].
    labels: ``[N]`` integer labels in [0, num_classes).
    indices: the points to certify, in order (default: all); they must not repeat.
    tsv_path: the log to write (its directory is created).
    num_classes, sigma, n0, n, alpha, batch_size, devices: as in
      ``rsp.smoothing.certify``.
    chunk_size: points per chunk between writes (default: as many as share a selection
      batch, ``max(1, batch_size // n0)``).

  Returns:
    The rows of the finished log, in order (read back from ``tsv_path``).

  Raises:
    ValueError: a bad argument, or a log of other points; before anything is written.
    FloatingPointError: the classifier returned NaN or inf logits.
  """
  images, indices = smoothing.check_certify_args(
      key, images, indices=indices, num_classes=num_classes, sigma=sigma, n0=n0, n=n,
      alpha=alpha, batch_size=batch_size, unique=True)
  labels = _check_labels(labels, images.shape[0], num_classes)
  if chunk_size is None:
    chunk_size = max(1, batch_size // n0)
  validation.check_int('chunk_size', chunk_size, 1)
  tsv_path = _check_file_path('tsv_path', tsv_path)

  rows, rewrite = _read_log(tsv_path, indices, labels)
  start = len(rows)
  if start == len(indices) and rewrite is None:
    return rows  # Nothing to do: the classifier is not even traced.
  if start < len(indices):
    smoothing.check_model_input(apply_fn, params, images.shape[1:],
                                num_classes=num_classes)
  if rewrite is not None:
    workdir_lib.write_text(tsv_path, rewrite)
  if start:
    logging.info('Resuming %s: %d of %d points already certified.', tsv_path, start,
                 len(indices))
  t_begin = time.time()
  with open(tsv_path, 'a') as log:  # Append-only: a kill loses at most a partial line.
    for chunk_start in range(start, len(indices), chunk_size):
      chunk = indices[chunk_start:chunk_start + chunk_size]
      t0 = time.time()
      results = smoothing.certify_many(
          key, apply_fn, params, images, indices=chunk, num_classes=num_classes,
          sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, devices=devices)
      seconds = (time.time() - t0) / len(chunk)
      for idx, result in zip(chunk, results):
        label = int(labels[idx])
        row = metrics.CertificationRow(int(idx), label, result.prediction, result.radius,
                                       int(result.prediction == label), seconds)
        log.write(metrics.format_tsv_row(row))
      log.flush()
      done = chunk_start + len(chunk)
      rate = (done - start) / max(time.time() - t_begin, 1e-9)
      logging.info('certified %d/%d points | %.2f points/s, %.0f noisy samples/s | '
                   'about %s left', done, len(indices), rate, rate * (n0 + n),
                   _format_seconds((len(indices) - done) / max(rate, 1e-9)))
  return metrics.read_certification_tsv(tsv_path)


# ------------------------------------------------------------------------------------
# The experiment: certify a trained checkpoint on (a subset of) a split.


def _read_training_config(checkpoint_dir: str) -> ml_collections.ConfigDict:
  """The config of the training run in ``checkpoint_dir``; refuses a directory that
  holds no (readable) training run or no checkpoint."""
  if not os.path.isdir(checkpoint_dir):
    raise ValueError(f'config.checkpoint_dir={checkpoint_dir!r} is not a directory; set '
                     'it to the workdir of experiments/train.py.')
  path = os.path.join(checkpoint_dir, 'config.json')
  if not os.path.isfile(path):
    raise ValueError(f'config.checkpoint_dir={checkpoint_dir!r} holds no config.json: '
                     'not the workdir of a training run.')
  recorded = workdir_lib.read_json(path)
  if not isinstance(recorded, dict) or not isinstance(recorded.get('dataset'), str):
    raise ValueError(f'{path!r} is not the config of a training run (it has no '
                     '"dataset"); is config.checkpoint_dir the workdir of '
                     'experiments/train.py?')
  if not os.path.isdir(os.path.join(checkpoint_dir, 'checkpoints')):
    raise ValueError(f'config.checkpoint_dir={checkpoint_dir!r} holds no checkpoint yet '
                     '(no checkpoints/ directory); train first.')
  return ml_collections.ConfigDict(recorded)


def _latest_step(checkpoint_dir: str) -> tuple[int | None, str]:
  with checkpointing.Checkpointer(os.path.join(checkpoint_dir, 'checkpoints')) as ckpt:
    return ckpt.latest_step(), ckpt.directory


def _variables_digest(variables: Any) -> str:
  return workdir_lib.array_digest(*jax.tree.leaves(variables))


def _load_checkpoint(checkpoint_dir: str) -> tuple[train_lib.TrainedModel, dict[str, Any]]:
  """The latest checkpoint of a training run, and its fingerprint ``{'step', 'sha256'
  (of the step's directory), 'variables_sha256'}``."""
  step, directory = _latest_step(checkpoint_dir)
  if step is None:
    raise ValueError(f'config.checkpoint_dir={checkpoint_dir!r} holds no checkpoint yet; '
                     'train first.')
  trained = train_lib.load_trained(checkpoint_dir)  # Restores the latest step.
  step_dir = os.path.join(directory, str(step))
  if _latest_step(checkpoint_dir)[0] != step or not os.path.isdir(step_dir):
    raise ValueError(f'config.checkpoint_dir={checkpoint_dir!r} changed while its step '
                     f'{step} was loaded (is a training run writing it?); certify once '
                     'training has finished.')
  return trained, {'step': int(step), 'sha256': workdir_lib.directory_digest(step_dir),
                   'variables_sha256': _variables_digest(trained.variables)}


def _read_indices_file(path: str) -> np.ndarray:
  """The indices in a JSON file: a list, or a dict with ``'indices'`` (e.g. another
  run's ``summary.json``)."""
  if not os.path.isfile(path):
    raise ValueError(f'config.indices_file={path!r} is not a file.')
  loaded = workdir_lib.read_json(path)  # Names the file if it is truncated.
  values = loaded.get('indices') if isinstance(loaded, dict) else loaded
  if not isinstance(values, list) or not all(validation.is_int(i) for i in values):
    raise ValueError(f'config.indices_file={path!r} holds no list of integer indices '
                     '(expected a JSON list, or a dict with "indices", such as another '
                     "certification's summary.json).")
  indices = np.asarray(values, np.int64)
  if len(np.unique(indices)) != len(indices):
    raise ValueError(f'config.indices_file={path!r} holds repeated indices; each point '
                     'is certified once.')
  return indices


def _resolve_indices(config: ml_collections.ConfigDict, labels: np.ndarray,
                     target_class: int | None,
                     file_indices: np.ndarray | None) -> np.ndarray:
  """The points to certify: the indices file's, else a seeded subset of
  ``config.num_points`` points of the target class (or of all classes)."""
  if file_indices is not None:
    if file_indices.size and (file_indices.min() < 0 or file_indices.max() >= len(labels)):
      raise ValueError(f'config.indices_file={config.indices_file!r} holds indices from '
                       f'{file_indices.min()} to {file_indices.max()}, outside the '
                       f'{len(labels)} points of split {config.split!r}.')
    return file_indices
  pool = np.arange(len(labels))
  if target_class is not None:
    pool = np.flatnonzero(labels == target_class)
    if pool.size == 0:
      raise ValueError(f'config.target_class={target_class} has no points in split '
                       f'{config.split!r}.')
  m = config.num_points
  if m <= 0 or m >= pool.size:
    return pool
  return pool[data_lib.seeded_subset_indices(pool.size, m, config.subset_seed)]


def _resolve_sigma(config: ml_collections.ConfigDict,
                   train_config: ml_collections.ConfigDict) -> float:
  if validation.real_number(config.sigma) > 0:
    return validation.real_number(config.sigma)
  sigma = validation.real_number(train_config.get('loss', {}).get('sigma', None))
  if sigma is None:
    raise ValueError(f'config.sigma={config.sigma} (<= 0: the training sigma), but the '
                     'model was trained without noise (its config has no loss.sigma); '
                     'set config.sigma > 0.')
  if not (np.isfinite(sigma) and sigma > 0):
    raise ValueError(f'config.sigma={config.sigma} (<= 0: the training sigma), but the '
                     f'training sigma {sigma} is not > 0; set config.sigma > 0.')
  return sigma


def certify_split(config: ml_collections.ConfigDict, workdir: str, *,
                  trained: train_lib.TrainedModel | None = None) -> dict[str, Any]:
  """Certifies a trained model on (a seeded subset of) a split; the certify experiment.

  Writes to ``workdir``: ``config.json`` (the config and the fingerprints of its inputs;
  see the module docstring), ``certify.tsv`` (resumable), ``summary.json`` (metrics from
  ``rsp.metrics.summarize_certification`` plus the settings, the ``inputs`` and the
  certified ``indices``, so that a second model can be certified on the same points with
  ``config.indices_file``) and ``certified_accuracy.png``.

  Args:
    config: see ``rsp/configs/certify.py``.
    workdir: output directory; rerunning with it resumes the TSV if the settings and
      inputs are the same.
    trained: an ``rsp.train.TrainedModel``; the latest checkpoint in
      ``config.checkpoint_dir`` if None.

  Returns:
    The summary dict written to ``summary.json``.

  Raises:
    ValueError: a bad config or workdir, an unusable training run, indices file or
      log, or a workdir holding certificates of other settings or inputs
      (``rsp.workdir.SettingsMismatchError``); before anything is written.
  """
  validate_config(config)
  workdir = _check_directory_path('workdir', workdir)
  config_path = os.path.join(workdir, CONFIG_NAME)
  tsv_path = os.path.join(workdir, TSV_NAME)
  for name in (CONFIG_NAME, TSV_NAME, SUMMARY_NAME, FIGURE_NAME):
    _check_file_path(f'workdir/{name}', os.path.join(workdir, name))
  if trained is None:
    if not config.checkpoint_dir:
      raise ValueError("config.checkpoint_dir='' is empty; set it to the workdir of "
                       'experiments/train.py.')
    train_config = _read_training_config(config.checkpoint_dir)
  else:
    train_config = trained.config
  dataset = config.dataset or train_config.dataset
  if dataset not in data_lib.DATASETS:
    raise ValueError(f'the training run\'s dataset={dataset!r} is not known; accepted: '
                     f'{", ".join(data_lib.DATASETS)}.')
  info = data_lib.info(dataset)
  model_name = train_config.get('model', '')
  if model_name in models.MODELS and tuple(models.input_shape(model_name)) != tuple(
      info['shape']):
    raise ValueError(f'the model ({model_name!r}) takes images of shape '
                     f'{tuple(models.input_shape(model_name))}, but config.dataset='
                     f'{dataset!r} has images of shape {tuple(info["shape"])}.')
  target_class = _target_class(config.target_class, info['num_classes'])
  sigma = _resolve_sigma(config, train_config)
  file_indices = (_read_indices_file(config.indices_file) if config.indices_file
                  else None)

  # The work: load the model and the data, and fingerprint them.
  if trained is None:
    trained, checkpoint = _load_checkpoint(config.checkpoint_dir)
  else:
    checkpoint = {'step': None, 'sha256': None,
                  'variables_sha256': _variables_digest(trained.variables)}
  if trained.num_classes != info['num_classes']:
    raise ValueError(f'the model has {trained.num_classes} classes, but config.dataset='
                     f'{dataset!r} has {info["num_classes"]}.')
  data_seed = config.data_seed if config.data_seed >= 0 else train_config.get(
      'data_seed', 0)
  kwargs = {'data_dir': config.data_dir} if config.data_dir else {}
  split = data_lib.load(dataset, seed=data_seed, **kwargs)[config.split]
  images, labels = split['image'], np.asarray(split['label'])
  indices = _resolve_indices(config, labels, target_class, file_indices)
  inputs = {
      'checkpoint': checkpoint,
      'points': {'count': int(len(indices)),
                 'sha256': workdir_lib.array_digest(indices, images[indices],
                                                    labels[indices])},
      'indices_from_file': (None if file_indices is None else
                            {'sha256': workdir_lib.array_digest(file_indices)}),
      'sigma': sigma,
  }
  settings = dict(config.to_dict(), inputs=inputs)
  workdir_lib.check_settings(config_path, settings, resumable=RESUMABLE_FIELDS,
                             what='certification')
  _read_log(tsv_path, indices, labels.astype(np.int64))  # Refuses a foreign log now.

  workdir_lib.ensure_directory(workdir, name='workdir')
  workdir_lib.write_json(config_path, settings)
  logging.info('Certifying %d points of %s/%s (sigma %.3g, n0 %d, n %d, alpha %g) with '
               'the checkpoint at step %s in %s.', len(indices), dataset, config.split,
               sigma, config.n0, config.n, config.alpha, checkpoint['step'], workdir)
  rows = certify_dataset(
      jax.random.key(config.seed), trained.apply_fn, trained.variables, images, labels,
      indices=indices, tsv_path=tsv_path, num_classes=trained.num_classes, sigma=sigma,
      n0=config.n0, n=config.n, alpha=config.alpha, batch_size=config.batch_size,
      chunk_size=config.chunk_size or None)
  summary = metrics.summarize_certification(rows, num_classes=trained.num_classes)
  summary.update(
      checkpoint_dir=config.checkpoint_dir, checkpoint_step=checkpoint['step'],
      dataset=dataset, data_seed=int(data_seed), split=config.split,
      target_class=target_class, sigma=sigma, n0=int(config.n0), n=int(config.n),
      alpha=float(config.alpha), seed=int(config.seed),
      model=train_config.get('model', ''), train_method=train_config.get('method', ''),
      poison_file=train_config.get('poison_file', ''), inputs=inputs,
      indices=[int(i) for i in indices])
  workdir_lib.write_json(os.path.join(workdir, SUMMARY_NAME), summary)
  a = metrics.rows_to_arrays(rows)
  label = f'{summary["train_method"] or "model"} (ACR {summary["acr"]:.3f})'
  plotting.plot_certified_accuracy(
      {label: (a['radius'], a['correct'])}, os.path.join(workdir, FIGURE_NAME),
      title=f'{dataset} {config.split}, sigma={sigma:g}, n={config.n}')
  logging.info('ACR %.4f, certified accuracy %.4f, abstain rate %.4f over %d points.',
               summary['acr'], summary['certified_accuracy'], summary['abstain_rate'],
               summary['num_points'])
  return summary
