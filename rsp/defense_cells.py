r"""The protocol's defense cells: victims trained with a defense against PACD.

``rsp.protocol`` runs, besides its undefended grid, one cell per defense of
``config.defenses`` x training set x victim (``rsp.protocol.resolve_cells``). This
module holds what those cells do differently, so that the protocol's code stays that of
one victim:

* **Training-time defenses** (the keys of ``config.training_defenses``, e.g. ``mixup``,
  ``dp_sgd``, ``purify_bit_depth``): the victim's training config with the entry's
  fields set over it (``defended_victim``; the fields are ``rsp.train``'s
  ``mixup_alpha``, ``dp_sgd`` and ``purify``, or any other training field), trained and
  certified like every other victim.
* **Detectors** (``rsp.defenses.DETECTORS``: ``spectral``, ``activation_clustering``,
  ``knn``, ``random_removal``, ``oracle``): the undefended victim of the same training
  method, architecture, training set and seed (its cell runs first, and its checkpoint
  is reused: no extra training) gives the penultimate features of the training images;
  the detector scores them, the budget (``config.defense_budget``) is removed and the
  victim is trained from scratch on the rest (``filter_training_set``). The row gets
  ``detection``: precision, recall and AUROC against the known poisons, ``removed``,
  ``target_removed_fraction``.
* **Deep Partition Aggregation** (``dpa``; Levine & Feizi, ICLR 2021), beside the
  smoothing certificates (``run_dpa_cell``): ``config.dpa_partitions`` base classifiers
  (``config.dpa_victim``, plain ``standard`` training by default) on content-hash
  partitions of the training set, their plurality vote and its certified poisoning
  size per test point. DPA certifies against insertions and removals of training
  points; a modified image is one of each, so PACD's m modified images are a budget of
  2m (stated in the row). It is no smoothing certificate and has no ACR: its rows are
  ``results['dpa']``, with a table of their own.

Workdir files of a defense cell, beside the protocol's ``spec.json``, ``train/``,
``certify.tsv`` and ``result.json``: ``detection.json`` (a detector's removals, written
before the retraining; a resumed cell reads it instead of detecting again) and, for
``dpa``, ``partitions/<j>/`` (base classifier j's training run).
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Iterator, Mapping

from absl import logging
import jax
import ml_collections
import numpy as np

from rsp import defenses
from rsp import train as train_lib
from rsp import validation
from rsp import workdir as workdir_lib

DPA = 'dpa'
DETECTORS = defenses.DETECTORS
# The arrays ``with_masks`` adds to a training split; ``rsp.protocol.training_set``
# carries them through poisoning and subsetting like the images.
MASK_KEYS = ('is_poison', 'attackable', 'clean_image')
# The detector settings (config.detectors) and what each detector reads.
DETECTOR_FIELDS = {'spectral': (), 'activation_clustering': ('ac_num_components',
                                                             'ac_reduction'),
                   'knn': ('knn_k',), 'random_removal': (), 'oracle': ()}


# ------------------------------------------------------------------------------------
# Names and configs.


def training_defenses(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The training-time defenses: the keys of ``config.training_defenses``."""
  return tuple(config.get('training_defenses') or {})


def names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """``config.defenses`` with 'none' first (the undefended cells run first)."""
  given = validation.names('config.defenses', config.get('defenses', ('none',)))
  return ('none',) + tuple(d for d in given if d != 'none')


@contextlib.contextmanager
def naming(config: ml_collections.ConfigDict, train_method: str,
           defense: str) -> Iterator[None]:
  """Names the fields of a cell's victim config by their full path in the checks inside
  the block (as ``validation.nested`` does): ``config.victims.<method>.<field>``, or
  ``config.dpa_victim.<field>`` for DPA, or, for a field that the cell's training-time
  defense sets, ``config.training_defenses.<defense>.<field>``."""
  path = 'config.dpa_victim' if defense == DPA else f'config.victims.{train_method}'
  overridden = (set(config.training_defenses[defense])
                if defense in training_defenses(config) else set())
  try:
    yield
  except ValueError as e:
    message = str(e)

    def full(match):
      field = match.group(1)
      where = f'config.training_defenses.{defense}' if field in overridden else path
      return f'{where}.{field}'

    renamed = re.sub(r'\bconfig\.([A-Za-z_]\w*)', full, message)
    raise ValueError(renamed if renamed != message else f'{path}: {message}') from e


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for defense fields that cannot work, before any work.

  ``config.defenses``: names among 'none' (required: every defense is measured against
  the undefended victims), ``DETECTORS``, 'dpa' and the keys of
  ``config.training_defenses`` (which may not reuse those names);
  ``config.defense_budget``; ``config.detectors``; ``config.dpa_partitions``. Each
  defended victim config is checked by ``rsp.protocol.validate_config`` with
  ``rsp.train.validate_config`` (``defended_victim`` refuses unknown fields).
  """
  given = validation.names('config.defenses', config.get('defenses', ('none',)))
  training = training_defenses(config)
  reserved = sorted(set(training) & {'none', DPA, *DETECTORS})
  if reserved:
    raise ValueError(f'config.training_defenses has entries {reserved}, names reserved '
                     f'for the other defenses; rename them.')
  validation.check_choices('config.defenses', given, ('none', *DETECTORS, DPA, *training))
  if 'none' not in given:
    raise ValueError(f"config.defenses={config.defenses!r} must include 'none': every "
                     'defense is measured against the undefended victims (whose '
                     'checkpoints the detectors reuse).')
  budget = config.get('defense_budget', -1.0)
  b = validation.real_number(budget)
  if b is None or not (b == -1 or (0 <= b < 1) or (b >= 1 and float(b).is_integer())):
    raise ValueError(f'config.defense_budget={budget!r} is invalid; accepted: -1 (the '
                     'number of training points the poison sets modify), a whole number '
                     '>= 0 (a count) or a fraction in [0, 1) of the training set.')
  d = config.get('detectors', {})
  validation.check_int('config.detectors.knn_k', d.get('knn_k', 50))
  validation.check_int('config.detectors.ac_num_components',
                       d.get('ac_num_components', 10))
  validation.check_choice('config.detectors.ac_reduction', d.get('ac_reduction', 'pca'),
                          defenses.AC_REDUCTIONS)
  validation.check_int('config.detectors.feature_batch_size',
                       d.get('feature_batch_size', 500))
  validation.check_int('config.dpa_partitions', config.get('dpa_partitions', 50),
                       meaning='the number of DPA base classifiers')
  if DPA in given and 'dpa_victim' not in config:
    raise ValueError("config.defenses has 'dpa' but config.dpa_victim (the training "
                     'config of its base classifiers) is unset.')
  for name in training:
    entry = config.training_defenses[name]
    if not hasattr(entry, 'items'):
      raise ValueError(f'config.training_defenses.{name}={entry!r} must be a ConfigDict '
                       'of training-config fields to set, e.g. {"mixup_alpha": 1.0}.')


def _set_fields(target: ml_collections.ConfigDict, fields: Mapping[str, Any],
                path: str) -> None:
  for key, value in fields.items():
    if key not in target:
      raise ValueError(f'{path}.{key} is not a field of the victim\'s training config; '
                       f'accepted: {", ".join(sorted(target))}.')
    if hasattr(value, 'items') and hasattr(target[key], 'items'):
      _set_fields(target[key], value, f'{path}.{key}')
      continue
    try:
      target[key] = value
    except TypeError as e:
      raise ValueError(f'{path}.{key}={value!r} does not fit the training config\'s '
                       f'field {key}={target[key]!r} ({e}).') from None


def defended_victim(config: ml_collections.ConfigDict, defense: str,
                    victim: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``victim`` with the fields of ``config.training_defenses[defense]`` set over it
  (unchanged for the other defenses); refuses a field the training config lacks."""
  if defense not in training_defenses(config):
    return victim
  out = ml_collections.ConfigDict(victim.to_dict())
  _set_fields(out, config.training_defenses[defense],
              f'config.training_defenses.{defense}')
  return out


def defense_spec(config: ml_collections.ConfigDict, defense: str) -> dict[str, Any]:
  """What a defense cell's numbers depend on beyond its victim config, in the protocol
  config's field names (compared on restart)."""
  spec: dict[str, Any] = {'defenses': defense}
  if defense in DETECTORS:
    spec['defense_budget'] = config.get('defense_budget', -1.0)
    d = config.get('detectors', {})
    fields = DETECTOR_FIELDS[defense]
    if fields:
      spec['detectors'] = {f: d.get(f) for f in fields}
  elif defense == DPA:
    spec['dpa_partitions'] = config.dpa_partitions
  return spec


# ------------------------------------------------------------------------------------
# Training sets with their poison masks.


def with_masks(train: Mapping[str, np.ndarray], poison_sets: Mapping[str, Any],
               poison_set: str, target_class: int) -> dict[str, np.ndarray]:
  """``train`` with the arrays of ``MASK_KEYS``, for ``rsp.protocol.training_set``.

  ``is_poison``: the points ``poison_sets[poison_set]`` modifies (none for the other
  training sets); ``attackable``: the points any of the protocol's poison sets
  modifies (the target class if there is none), which sizes the default budget so that
  a clean training set loses as many points as a poisoned one; ``clean_image``: the
  clean images (DPA's partitions of the unpoisoned points).
  """
  n = len(train['label'])
  is_poison = np.zeros(n, bool)
  if poison_set in poison_sets:
    is_poison[poison_sets[poison_set].indices] = True
  attackable = np.zeros(n, bool)
  for p in poison_sets.values():
    attackable[p.indices] = True
  if not poison_sets:
    attackable = np.asarray(train['label']) == target_class
  return dict(train, is_poison=is_poison, attackable=attackable,
              clean_image=np.asarray(train['image']))


def split_masks(ds: Mapping[str, np.ndarray]
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """``(training set, masks)``: the arrays of ``MASK_KEYS`` taken out of ``ds``."""
  return ({k: v for k, v in ds.items() if k not in MASK_KEYS},
          {k: ds[k] for k in MASK_KEYS})


def budget_of(config: ml_collections.ConfigDict, num_attackable: int) -> int | float:
  """``config.defense_budget`` as ``rsp.defenses.budget_count`` takes it: the count of
  attackable points for -1, an int for a whole number >= 1 (and 0), else a fraction."""
  b = float(config.get('defense_budget', -1.0))
  if b == -1:
    return int(num_attackable)
  if b == 0 or b >= 1:
    return int(b)
  return b


# ------------------------------------------------------------------------------------
# Detector cells.


def features_fn_of(trained: train_lib.TrainedModel, batch_size: int = 500):
  """``images -> [N, D]`` penultimate features of a trained model."""
  fn = defenses.make_features_fn(trained.model)
  return lambda images: defenses.penultimate_features(fn, trained.variables, images,
                                                      batch_size=batch_size)


def filter_training_set(config: ml_collections.ConfigDict, defense: str,
                        train_set: Mapping[str, np.ndarray], *, feature_dir: str,
                        seed: int, target_class: int, path: str
                        ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """A detector's filtered training set and its detection record, resumably.

  Args:
    config: the protocol config (``defense_budget``, ``detectors``).
    defense: one of ``DETECTORS``.
    train_set: the cell's training set with the arrays of ``MASK_KEYS``
      (``with_masks``, then ``rsp.protocol.training_set``).
    feature_dir: the training run of the undefended victim of the same training set,
      method, architecture and seed (finished: its cell runs first).
    seed: the cell's seed (activation clustering, random removal).
    target_class: for ``target_removed_fraction``.
    path: ``detection.json``: written before the filtered set is returned; if it exists,
      its removals are applied and nothing is detected again.

  Returns:
    ``(filtered training set without masks, detection)``; ``detection`` as
    ``rsp.defenses.apply_data_defense`` returns it.
  """
  ds, masks = split_masks(train_set)
  if os.path.isfile(path):
    detection = workdir_lib.read_json(path)
    keep = np.ones(len(ds['label']), bool)
    keep[np.asarray(detection['removed_indices'], np.int64)] = False
    return defenses.filter_dataset(ds, keep), detection
  d = config.get('detectors', {})
  features_fn = None
  if defense in defenses.FEATURE_DETECTORS:
    if not os.path.isfile(os.path.join(feature_dir, 'summary.json')):
      raise ValueError(f'{feature_dir} holds no finished training run: the detector '
                       f'{defense!r} reuses the undefended victim, whose cell runs '
                       "first; config.defenses must include 'none'.")
    features_fn = features_fn_of(train_lib.load_trained(feature_dir),
                                 d.get('feature_batch_size', 500))
  n = len(ds['label'])
  budget = budget_of(config, int(masks['attackable'].sum()))
  if isinstance(budget, int) and budget > n:
    raise ValueError(f'config.defense_budget={config.defense_budget!r} removes {budget} '
                     f'points, but the training set has {n}.')
  knn_k = d.get('knn_k', 50)
  if defense == 'knn' and knn_k > n - 1:
    raise ValueError(f'config.detectors.knn_k={knn_k} must be at most N - 1 = {n - 1} '
                     '(the training set has N points).')
  filtered, detection = defenses.apply_data_defense(
      defense, ds, is_poison=masks['is_poison'], budget=budget, features_fn=features_fn,
      seed=seed, target_class=target_class, knn_k=knn_k,
      ac_num_components=d.get('ac_num_components', 10),
      ac_reduction=d.get('ac_reduction', 'pca'))
  logging.info('Defense %s: removed %d of %d training points (precision %s, recall %s).',
               defense, detection['removed'], n, detection['precision'],
               detection['recall'])
  workdir_lib.write_json(path, detection)
  return filtered, detection


def retraining_config(victim: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The victim's config for its filtered training set: ``train_subset`` 0 (the subset
  was drawn before filtering, and the filtered set is what it trains on)."""
  out = ml_collections.ConfigDict(victim.to_dict())
  out.train_subset = 0
  return out


def detection_row(detection: Mapping[str, Any] | None) -> dict[str, Any]:
  """The row's ``detection`` (the record without the removed indices)."""
  if detection is None:
    return {}
  return {'detection': {k: v for k, v in detection.items() if k != 'removed_indices'}}


# ------------------------------------------------------------------------------------
# Deep Partition Aggregation cells.


def _partition_config(victim: ml_collections.ConfigDict, size: int
                      ) -> ml_collections.ConfigDict | None:
  """Base classifier training config for a partition of ``size`` points: batches of at
  most ``size`` (a multiple of the local device count); None if not one batch fits."""
  n_dev = jax.local_device_count()
  batch = min(int(victim.batch_size), size - size % n_dev)
  if batch < 1:
    return None
  out = ml_collections.ConfigDict(victim.to_dict())
  out.batch_size = batch
  out.train_subset = 0
  return out


def vacuous_statement(*, k: int, modified: int) -> tuple[bool, str]:
  """Whether DPA's certificate is vacuous at PACD's budget, said plainly.

  A certificate ``r`` is at most ``floor(k / 2)`` (``rsp.defenses.dpa_certify``); m
  modified images are ``2m`` insertions/removals. Vacuous iff ``2m > floor(k / 2)``.
  """
  budget, largest = 2 * modified, k // 2
  if budget > largest:
    return True, (f'Vacuous: the poisons modify {modified} training images, a budget of '
                  f'{budget} insertions/removals (each modified image counts twice), but '
                  f'{k} partitions certify at most {largest}; no test point is '
                  'certified against this attack.')
  return False, (f'Not vacuous: {modified} modified images are {budget} insertions/'
                 f'removals (each counts twice), within the largest certificate of {k} '
                 f'partitions ({largest}).')


def run_dpa_cell(config: ml_collections.ConfigDict, fields: Mapping[str, Any], *,
                 train_set: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                 target_indices: np.ndarray, victim: ml_collections.ConfigDict,
                 seed: int, num_classes: int, cell_dir: str) -> dict[str, Any]:
  """Trains DPA's base classifiers, votes, certifies; returns (and writes) the row.

  The training set's points are split by ``rsp.defenses.dpa_partition`` (content
  hashes of the possibly poisoned images, seed ``seed``) into ``k =
  config.dpa_partitions`` partitions; base classifier j trains ``victim`` from scratch
  on partition j (``partitions/<j>/``, resumable; batches of at most the partition's
  size; an empty partition votes class 0 for every point). Every test point gets the
  vote counts, DPA's prediction and its certified poisoning size ``r``
  (``rsp.defenses.dpa_certify``).

  Row (``cells/<cell>/result.json``, written last): ``fields`` (the cell's), ``defense``
  'dpa', ``dpa_partitions``, ``partition_sizes`` (min, median, max),
  ``empty_partitions``, ``num_train_examples``, ``clean_accuracy`` (all test points),
  ``target_accuracy`` (the target class's test points), ``modified_images`` (m: the
  poisons in this training set; for a clean set, the points the protocol's poison sets
  modify, so that its row states the same budget), ``dpa_budget`` (2m: a modified
  image is one removal plus one insertion), ``max_certifiable`` (floor(k / 2)),
  ``certified_accuracy`` (correct with r >= 1) and ``certified_accuracy_at_budget``
  (r >= 2m) on the certified target-class points, ``partitions_touched`` (the
  partitions whose training set the poisons change, clean ids vs poisoned ids; None
  for a clean set) and ``certified_accuracy_at_touched`` (r >= that count, the check
  against this poison set), ``certified_accuracy_curve`` (r = 0..floor(k / 2)),
  ``vacuous`` and ``statement`` (``vacuous_statement``), ``points`` (per certified
  point: ``idx``, ``label``, ``prediction``, ``certified``, ``correct``),
  ``train_seconds``, ``time``.
  """
  result_path = os.path.join(cell_dir, 'result.json')
  ds, masks = split_masks(train_set)
  n = len(ds['label'])
  k = int(config.dpa_partitions)
  ids = defenses.dpa_partition(n, k, images=ds['image'], seed=seed)
  images = np.asarray(test['image'])
  labels = np.asarray(test['label'])
  predictions = np.zeros((k, len(labels)), np.int64)
  sizes = np.bincount(ids, minlength=k)
  train_seconds = 0.0
  for j in range(k):
    part_config = _partition_config(victim, int(sizes[j]))
    if part_config is None:
      continue  # Votes class 0.
    part = defenses.filter_dataset(ds, ids == j)
    part_dir = os.path.join(cell_dir, 'partitions', f'{j:04d}')
    if os.path.isfile(os.path.join(part_dir, 'summary.json')):
      trained = train_lib.load_trained(part_dir)
    else:
      trained = train_lib.train(part_config, {'train': part, 'test': test}, part_dir)
    train_seconds += float(trained.summary.get('train_seconds', 0.0))
    predictions[j] = train_lib.predict_labels(trained.apply_fn, trained.variables, images,
                                              batch_size=victim.eval_batch_size)
  counts = defenses.dpa_votes(predictions, num_classes)
  prediction, certified = defenses.dpa_certify(counts)
  correct = prediction == labels
  target = int(config.target_class)
  poisoned = bool(masks['is_poison'].any())
  modified = int(masks['is_poison'].sum() if poisoned else masks['attackable'].sum())
  touched = None
  if poisoned:
    modified_idx = np.flatnonzero(masks['is_poison'])
    clean_ids = defenses.dpa_partition(n, k, images=masks['clean_image'], seed=seed)
    touched = int(defenses.partitions_touched(clean_ids, modified_idx, ids).size)
  pts = np.asarray(target_indices)
  r_pts, ok_pts = certified[pts], correct[pts]
  vacuous, statement = vacuous_statement(k=k, modified=modified)
  radii = np.arange(k // 2 + 1)
  row = dict(
      fields, defense=DPA, dpa_partitions=k,
      partition_sizes=[int(sizes.min()), float(np.median(sizes)), int(sizes.max())],
      empty_partitions=int(np.sum(sizes == 0)), num_train_examples=n,
      clean_accuracy=float(correct.mean()),
      target_accuracy=float(correct[labels == target].mean()),
      num_certified=int(pts.size), modified_images=modified, dpa_budget=2 * modified,
      max_certifiable=k // 2,
      certified_accuracy=defenses.dpa_certified_accuracy(r_pts, ok_pts, 1),
      certified_accuracy_at_budget=defenses.dpa_certified_accuracy(r_pts, ok_pts,
                                                                   2 * modified),
      partitions_touched=touched,
      certified_accuracy_at_touched=(None if touched is None else
                                     defenses.dpa_certified_accuracy(r_pts, ok_pts,
                                                                     touched)),
      certified_accuracy_curve={'radius': radii.tolist(), 'accuracy': [
          float(a) for a in defenses.dpa_certified_accuracy(r_pts, ok_pts, radii)]},
      median_certified_correct=(float(np.median(r_pts[ok_pts])) if ok_pts.any()
                                else None),
      vacuous=vacuous, statement=statement,
      points={'idx': pts.tolist(), 'label': labels[pts].tolist(),
              'prediction': prediction[pts].tolist(),
              'certified': r_pts.tolist(), 'correct': ok_pts.tolist()},
      train_seconds=train_seconds, certify_seconds=0.0, time=train_seconds)
  workdir_lib.write_json(result_path, row)
  return workdir_lib.read_json(result_path)
