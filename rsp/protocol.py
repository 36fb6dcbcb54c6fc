r"""The evaluation protocol: poison, train victims from scratch, certify, report.

``run_protocol(config, workdir)`` (``experiments/run.py``), for a protocol config
(``rsp/configs/protocol*.py``):

1. checks every setting, nested configs included, and the workdir's record before any
   work (``validate_config``, ``check_workdir``);
2. makes the poison sets (``make_poison_sets``): PACD (Mehra et al. 2021) crafted
   against each method of ``config.crafted_against`` (or ``config.poison_file``), and
   the baselines of ``rsp.baselines`` on the same images within the same eps;
3. trains a victim from scratch for every cell of the grid training method x
   architecture x training set x seed (``resolve_cells``, ``run_cell``) and certifies
   it (Cohen et al. 2019) on the same seeded test points with one key for all victims:
   point ``idx`` sees the same noise in every cell, so that paired differences between
   victims carry no Monte Carlo noise of the certification;
4. computes drops, paired comparisons and intervals (``rsp.metrics``), writes
   ``results.json`` and ``results.md``, then the figures (``rsp.report``).

Defenses (``config.defenses``, ``rsp.defense_cells``): every defense but 'none' adds a
cell per victim of the grid (detectors and training-time defenses, certified like the
others) or per training set and seed ('dpa', Deep Partition Aggregation, whose rows go
to ``results['dpa']``).

Workdir layout (the workdir is the record; every stage resumes)::

    WORKDIR/config.json                 the protocol config
    WORKDIR/poisons/<set>.json          what a poison set is made from (checked on restart)
    WORKDIR/poisons/pacd_<method>/      PACD's workdir (poisons.npz, checkpoints)
    WORKDIR/poisons/<baseline>.npz      random baselines
    WORKDIR/cells/<cell>/spec.json      what a cell is made from (checked on restart)
    WORKDIR/cells/<cell>/train/         the victim's training run
    WORKDIR/cells/<cell>/certify.tsv    Cohen's per-point log (certify_all_classes.tsv)
    WORKDIR/cells/<cell>/result.json    the cell's row, written when the cell is done
    WORKDIR/results.json, results.md, figures/*.png

A restarted run redoes nothing finished, resumes what was interrupted and ends with the
same rows as an uninterrupted run; a workdir made with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from rsp import attack as attack_lib
from rsp import baselines
from rsp import certification
from rsp import data as data_lib
from rsp import defense_cells
from rsp import metrics
from rsp import models
from rsp import report
from rsp import smoothing
from rsp import train as train_lib
from rsp import validation
from rsp import workdir as workdir_lib

POISON_KINDS = ('none', 'pacd', *baselines.BASELINES)
# Fields that do not change a victim's or an attack's numbers (a restart may change them).
RESUMABLE = ('log_every_steps', 'eval_batch_size', 'eval_every_epochs',
             'checkpoint_every_steps', 'checkpoint_every_epochs', 'remat', 'unroll')
# Fields the protocol sets in every nested config from its own.
_SHARED = ('dataset', 'data_dir', 'data_seed', 'target_class')


# ------------------------------------------------------------------------------------
# The grid.


@dataclasses.dataclass(frozen=True)
class Cell:
  """One victim: a training method, an architecture, a training set, a seed and a
  defense ('none', or one of ``config.defenses``: ``rsp.defense_cells``)."""
  train_method: str
  arch: str
  poison: str            # One of POISON_KINDS.
  crafted_against: str   # For 'pacd': the method its poisons target ('' otherwise).
  seed: int
  defense: str = 'none'

  @property
  def poison_set(self) -> str:
    """The training set's name: 'pacd_<crafted_against>' or the poison kind."""
    return f'pacd_{self.crafted_against}' if self.poison == 'pacd' else self.poison

  @property
  def name(self) -> str:
    defense = '' if self.defense == 'none' else f'-{self.defense}'
    return f'{self.train_method}-{self.arch}-{self.poison_set}{defense}-seed{self.seed}'


@dataclasses.dataclass
class PoisonSet:
  """Perturbed target-class training images replacing the clean ones."""
  name: str                 # 'pacd_<method>' or a random baseline's name.
  poison: str               # 'pacd' or a random baseline's name.
  crafted_against: str      # PACD's training method ('' for baselines).
  indices: np.ndarray       # [P] indices into the training split.
  poisons: np.ndarray       # [P, H, W, C]
  clean_images: np.ndarray  # [P, H, W, C]
  metadata: dict[str, Any]
  path: str


def _names(config: ml_collections.ConfigDict, field: str) -> tuple[str, ...]:
  return validation.names(f'config.{field}', config[field])


def _poison_file_method(config: ml_collections.ConfigDict) -> str:
  meta = data_lib.load_poisons(config.poison_file)['metadata']
  return str(meta.get('method') or 'file')


def pacd_methods(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The training methods the PACD poisons are crafted against (one 'pacd' set each)."""
  if 'pacd' not in _names(config, 'poison_kinds'):
    return ()
  if config.get('poison_file'):
    return (_poison_file_method(config),)
  return _names(config, 'crafted_against')


def resolve_cells(config: ml_collections.ConfigDict) -> list[Cell]:
  """The grid of victims, in the order they are trained.

  Every training method x training set x seed on ``config.archs[0]``; the other
  architectures with the methods in ``config.other_arch_methods`` (all if empty).
  Training sets: each of ``config.poison_kinds``, 'pacd' once per ``pacd_methods``.
  Then each defense of ``config.defenses`` but 'none': that grid again ('dpa': once
  per training set and seed, with ``config.dpa_victim``'s method and model).
  """
  methods = _names(config, 'train_methods')
  other = _names(config, 'other_arch_methods') or methods
  seeds = validation.distinct_ints('config.seeds', config.seeds)
  grid = [Cell(method, arch, kind, against, seed)
          for a, arch in enumerate(_names(config, 'archs'))
          for method in methods if a == 0 or method in other
          for kind in _names(config, 'poison_kinds')
          for against in (pacd_methods(config) if kind == 'pacd' else ('',))
          for seed in seeds]
  sets = list(dict.fromkeys((c.poison, c.crafted_against, c.seed) for c in grid))
  return grid + [
      dataclasses.replace(c, defense=d) for d in defense_cells.names(config)[1:]
      for c in (grid if d != defense_cells.DPA else
                [Cell(config.dpa_victim.method, config.dpa_victim.model, *s)
                 for s in sets])]


def attack_config(config: ml_collections.ConfigDict, method: str
                  ) -> ml_collections.ConfigDict:
  """The nested attack config ``config.attacks[method]`` with the protocol's data,
  target class and eps."""
  if method not in config.attacks:
    raise ValueError(f'config.crafted_against names {method!r} but config.attacks has no '
                     f'such entry; it has {sorted(config.attacks)}.')
  c = ml_collections.ConfigDict(config.attacks[method].to_dict())  # Unlocked copy.
  for field in _SHARED + ('eps',):
    c[field] = config.get(field, '')
  return c


def victim_config(config: ml_collections.ConfigDict, cell: Cell
                  ) -> ml_collections.ConfigDict:
  """The training config of ``cell``'s victim: ``config.victims[train_method]`` (DPA's
  base classifiers: ``config.dpa_victim``) with the protocol's data and target class,
  the cell's architecture and seed, and its training-time defense's fields."""
  if cell.defense == defense_cells.DPA:
    source = config.dpa_victim
  elif cell.train_method not in config.victims:
    raise ValueError(f'config.train_methods names {cell.train_method!r} but '
                     f'config.victims has no such entry; it has {sorted(config.victims)}.')
  else:
    source = config.victims[cell.train_method]
  c = ml_collections.ConfigDict(source.to_dict())
  for field in _SHARED:
    c[field] = config.get(field, '')
  c.seed = cell.seed
  c.poison_file = ''  # The protocol hands the training set over directly.
  if c.model != cell.arch:
    c.model = cell.arch
    c.model_kwargs = ml_collections.ConfigDict()
  return defense_cells.defended_victim(config, cell.defense, c)


def certification_sigma(config: ml_collections.ConfigDict,
                        victim: ml_collections.ConfigDict) -> float:
  """``config.certify.sigma`` if > 0, else the victim's training sigma."""
  if config.certify.sigma > 0:
    return float(config.certify.sigma)
  sigma = victim.get('loss', {}).get('sigma', None)
  if sigma is None or sigma <= 0:
    raise ValueError(f'config.certify.sigma={config.certify.sigma} (<= 0: the victim\'s '
                     f'training sigma), but victims trained with {victim.method!r} have '
                     'no training sigma; set config.certify.sigma > 0.')
  return float(sigma)


# ------------------------------------------------------------------------------------
# Checks, before any work.


def _validate_certify(c: ml_collections.ConfigDict) -> None:
  """The certification settings, as ``rsp.certification.certify_dataset`` will check them."""
  validation.check_ints('config.certify.', c, ('n0', 'n', 'batch_size', 'num_points'))
  validation.check_ints('config.certify.', c, ('seed', 'subset_seed'), minimum=0)
  validation.check_int('config.certify.all_classes_points', c.all_classes_points, 0,
                       meaning='0: target class only')
  if not 0 < c.alpha < 0.5:
    raise ValueError(f'config.certify.alpha={c.alpha} must be in (0, 0.5).')
  needed = smoothing.min_samples_to_certify(c.alpha)
  if c.n < needed:  # Then even n votes of n give pA_lower = alpha**(1/n) <= 1/2.
    raise ValueError(f'config.certify.n={c.n} is too small for any certificate at '
                     f'config.certify.alpha={c.alpha}; use n >= {needed}.')
  if not np.isfinite(c.sigma):
    raise ValueError(f'config.certify.sigma={c.sigma} must be finite (<= 0: each '
                     "victim's training sigma).")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a protocol config that cannot work, before any work.

  Checks the protocol's fields, the certification settings, and every nested config as
  the protocol will use it (each victim of the grid with ``rsp.train.validate_config``,
  each attack with ``rsp.attack.validate_config``); their messages name a field by its
  full path, e.g. ``config.victims.gaussian.num_epochs``.
  """
  validation.check_choice('config.dataset', config.dataset, data_lib.DATASETS)
  info = data_lib.info(config.dataset)
  validation.check_int('config.target_class', config.target_class, 0,
                       info['num_classes'] - 1)
  if not 0 < config.eps <= 1:
    raise ValueError(f'config.eps={config.eps} must be in (0, 1].')
  kinds = _names(config, 'poison_kinds')
  validation.check_choices('config.poison_kinds', kinds, POISON_KINDS)
  if 'none' not in kinds:
    raise ValueError(f"config.poison_kinds={config.poison_kinds!r} must include 'none': "
                     'the ACR drops are measured against the clean victims.')
  archs = _names(config, 'archs')
  if not archs:
    raise ValueError('config.archs is empty; name at least one victim architecture.')
  validation.check_choices('config.archs', archs, models.MODELS)
  for arch in archs:
    if tuple(models.input_shape(arch)) != tuple(info['shape']):
      raise ValueError(f'config.archs: {arch!r} takes images of shape '
                       f'{models.input_shape(arch)}, but config.dataset='
                       f'{config.dataset!r} has {info["shape"]}.')
  methods = _names(config, 'train_methods')
  if not methods:
    raise ValueError('config.train_methods is empty; name at least one.')
  if set(_names(config, 'other_arch_methods')) - set(methods):
    raise ValueError(f'config.other_arch_methods={config.other_arch_methods!r} must be '
                     f'a subset of config.train_methods={methods!r}.')
  validation.distinct_ints('config.seeds', config.seeds)
  _validate_certify(config.certify)
  validation.check_int('config.num_figure_images', config.num_figure_images)
  defense_cells.validate_config(config)
  for cell in resolve_cells(config):
    victim = victim_config(config, cell)
    with defense_cells.naming(config, cell.train_method, cell.defense):
      train_lib.validate_config(victim)
    if cell.defense != defense_cells.DPA:
      certification_sigma(config, victim)
  if 'pacd' in kinds and config.get('poison_file'):
    meta = data_lib.load_poisons(config.poison_file)['metadata']
    for key in ('dataset', 'target_class'):
      if key in meta and meta[key] != config[key]:
        raise ValueError(f'config.poison_file={config.poison_file!r} was made with '
                         f'{key}={meta[key]!r}, but config.{key}={config[key]!r}.')
    if float(meta['eps']) > config.eps + 1e-9:
      raise ValueError(f'config.poison_file={config.poison_file!r} has eps='
                       f'{meta["eps"]}, beyond config.eps={config.eps}.')
  elif 'pacd' in kinds:
    if not pacd_methods(config):
      raise ValueError("config.poison_kinds has 'pacd' but config.crafted_against is "
                       'empty and config.poison_file is unset.')
    for method in pacd_methods(config):
      attack = attack_config(config, method)
      with validation.nested(f'config.attacks.{method}'):
        attack_lib.validate_config(attack)


def _without(d: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
  return {k: v for k, v in d.items() if k not in fields}


def poison_spec(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
  """What training set ``name`` is made from, in the protocol config's own field names
  (so that a refused restart names each field as it is set); ``inputs`` holds the rest."""
  spec = {'dataset': config.dataset, 'data_seed': config.data_seed}
  if name != 'none':
    spec['target_class'] = config.target_class
  if name.startswith('pacd_') or name in baselines.RANDOM_KINDS:
    spec['eps'] = config.eps
  if name.startswith('pacd_') and config.get('poison_file'):
    spec['inputs'] = {'poison_file_sha256': workdir_lib.file_digest(config.poison_file)}
  elif name.startswith('pacd_'):
    method = name[len('pacd_'):]
    spec['attacks'] = {method: _without(config.attacks[method].to_dict(),
                                        _SHARED + ('eps',))}
  elif name in baselines.RANDOM_KINDS:
    spec['seed'] = config.seed
    spec['inputs'] = {'noise': baselines.RANDOM_KINDS[name]}
  return spec


def cell_spec(config: ml_collections.ConfigDict, cell: Cell,
              target_indices: np.ndarray, all_indices: np.ndarray | None
              ) -> dict[str, Any]:
  """Everything that determines a cell's numbers (compared on restart)."""
  victim = victim_config(config, cell)
  c = config.certify
  spec = poison_spec(config, cell.poison_set)
  spec['target_class'] = config.target_class  # The certified points.
  spec['victims'] = {cell.train_method: _without(train_lib.recorded_config(victim),
                                                 _SHARED + ('seed', 'poison_file'))}
  spec['certify'] = None if cell.defense == defense_cells.DPA else {
      'sigma': certification_sigma(config, victim), 'n0': c.n0, 'n': c.n,
      'alpha': c.alpha, 'seed': c.seed}
  fields = dataclasses.asdict(cell)
  if cell.defense == 'none':  # As recorded before defenses existed.
    del fields['defense']
  else:
    spec['defense'] = defense_cells.defense_spec(config, cell.defense)
  spec['inputs'] = dict(
      spec.get('inputs', {}), cell=fields,
      certified_points=[int(i) for i in target_indices],
      all_classes_points=None if all_indices is None else [int(i) for i in all_indices])
  return spec


def _workdir_poison_sets(config: ml_collections.ConfigDict) -> list[str]:
  """The poison sets the protocol makes in its workdir."""
  kinds = _names(config, 'poison_kinds')
  pacd = [] if config.get('poison_file') else [f'pacd_{m}' for m in pacd_methods(config)]
  return pacd + [k for k in baselines.RANDOM_KINDS if k in kinds]


def check_workdir(config: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell],
                  target_indices: np.ndarray, all_indices: np.ndarray | None) -> None:
  """Refuses (``rsp.workdir.SettingsMismatchError``, naming every differing field) a
  workdir whose poisons or cells were made with other settings; a restart may add
  cells (seeds, methods, baselines) but must not mix numbers of different settings."""
  for name in _workdir_poison_sets(config):
    workdir_lib.check_settings(os.path.join(workdir, 'poisons', f'{name}.json'),
                               poison_spec(config, name), resumable=RESUMABLE,
                               what=f'poison set ({name})')
  for cell in cells:
    workdir_lib.check_settings(os.path.join(workdir, 'cells', cell.name, 'spec.json'),
                               cell_spec(config, cell, target_indices, all_indices),
                               resumable=RESUMABLE, what=f'victim ({cell.name})')


# ------------------------------------------------------------------------------------
# Poison sets and training sets.


def _load_poison_set(name: str, poison: str, crafted_against: str, path: str,
                     train: Mapping[str, np.ndarray]) -> PoisonSet:
  f = data_lib.load_poisons(path, train=train)
  return PoisonSet(name=name, poison=poison, crafted_against=crafted_against,
                   indices=f['indices'], poisons=f['poisons'],
                   clean_images=f['clean_images'], metadata=f['metadata'], path=path)


def make_poison_sets(config: ml_collections.ConfigDict,
                     splits: Mapping[str, Mapping[str, np.ndarray]], workdir: str
                     ) -> dict[str, PoisonSet]:
  """PACD poisons per training method and the random baselines; loaded if already made.

  Returns:
    ``{name: PoisonSet}`` with names ``pacd_<method>`` and the baselines' names.
  """
  train = splits['train']
  out = {}
  if 'pacd' in _names(config, 'poison_kinds') and config.get('poison_file'):
    method = _poison_file_method(config)
    out[f'pacd_{method}'] = _load_poison_set(f'pacd_{method}', 'pacd', method,
                                             config.poison_file, train)
  for name in _workdir_poison_sets(config):
    workdir_lib.write_json(os.path.join(workdir, 'poisons', f'{name}.json'),
                           poison_spec(config, name))
    if name.startswith('pacd_'):
      method = name[len('pacd_'):]
      path = os.path.join(workdir, 'poisons', name, 'poisons.npz')
      if not os.path.isfile(path):  # pacd writes it last: its presence means done.
        logging.info('Protocol: PACD against %s into %s.', method, os.path.dirname(path))
        attack_lib.pacd(attack_config(config, method), splits, os.path.dirname(path))
      out[name] = _load_poison_set(name, 'pacd', method, path, train)
    else:
      path = os.path.join(workdir, 'poisons', f'{name}.npz')
      if not os.path.isfile(path):
        key = jax.random.fold_in(jax.random.key(config.seed), POISON_KINDS.index(name))
        baselines.save_random_baseline(
            path, key, train, name=name, target_class=config.target_class,
            eps=config.eps, metadata={'dataset': config.dataset, 'seed': config.seed,
                                      'data_seed': config.data_seed})
      out[name] = _load_poison_set(name, name, '', path, train)
  return out


def training_set(cell: Cell, train: Mapping[str, np.ndarray],
                 poison_sets: Mapping[str, PoisonSet], victim: ml_collections.ConfigDict
                 ) -> dict[str, np.ndarray]:
  """The victim's training split for ``cell``: clean, poisoned or without the target
  class, then ``victim.train_subset`` points of it if > 0 (as ``rsp.data.load_splits``
  does: drawn by the data seed, after poisoning)."""
  if cell.poison == 'none':
    out = dict(train)
  elif cell.poison == 'no_target':
    out = baselines.without_target_class(train, victim.target_class)
  else:
    p = poison_sets[cell.poison_set]
    out = data_lib.apply_poison(train, p.indices, p.poisons)
  if victim.get('train_subset', 0):
    idx = data_lib.seeded_subset_indices(len(out['label']), victim.train_subset,
                                         victim.get('data_seed', 0))
    out = data_lib.subset(out, idx)
  return out


# ------------------------------------------------------------------------------------
# One cell.


def certification_indices(config: ml_collections.ConfigDict,
                          test: Mapping[str, np.ndarray]
                          ) -> tuple[np.ndarray, np.ndarray | None]:
  """The certified test points: a seeded subset of the target class (and of all points
  if ``config.certify.all_classes_points > 0``, else None)."""
  c = config.certify
  pool = data_lib.class_indices(test, config.target_class)
  target = pool[data_lib.seeded_subset_indices(len(pool), c.num_points, c.subset_seed)]
  every = None
  if c.all_classes_points > 0:
    every = data_lib.seeded_subset_indices(len(test['label']), c.all_classes_points,
                                           c.subset_seed)
  return target, every


def run_cell(config: ml_collections.ConfigDict, cell: Cell, *,
             splits: Mapping[str, Mapping[str, np.ndarray]],
             poison_sets: Mapping[str, PoisonSet], target_indices: np.ndarray,
             all_indices: np.ndarray | None, workdir: str) -> dict[str, Any]:
  """Trains and certifies one victim, resumably; returns its row of ``results.json``.

  The row (also ``cells/<cell>/result.json``, written last) holds the cell's fields
  (``train_method``, ``arch``, ``poison``, ``crafted_against``, ``seed``, ``cell``,
  ``poison_set``), ``sigma``, ``clean_accuracy`` (the base classifier, all classes),
  ``num_train_examples``, the certification summary (``rsp.metrics.victim_summary``:
  ``acr``, ``certified_accuracy``, ``target_accuracy``, ...), ``train_seconds``,
  ``certify_seconds`` and ``time``; a detector's row also ``detection``
  (``rsp.defense_cells``). A 'dpa' cell returns ``rsp.defense_cells.run_dpa_cell``'s
  row instead.
  """
  cell_dir = os.path.join(workdir, 'cells', cell.name)
  result_path = os.path.join(cell_dir, 'result.json')
  if os.path.isfile(result_path):
    return workdir_lib.read_json(result_path)
  workdir_lib.write_json(os.path.join(cell_dir, 'spec.json'),
                         cell_spec(config, cell, target_indices, all_indices))
  victim = victim_config(config, cell)
  if cell.defense in (defense_cells.DPA, *defense_cells.DETECTORS):
    masked = training_set(cell, defense_cells.with_masks(
        splits['train'], poison_sets, cell.poison_set, config.target_class),
                          poison_sets, victim)
  if cell.defense == defense_cells.DPA:
    return defense_cells.run_dpa_cell(
        config,
        dict(dataclasses.asdict(cell), cell=cell.name, poison_set=cell.poison_set),
        train_set=masked, test=splits['test'], target_indices=target_indices,
        victim=victim, seed=cell.seed, cell_dir=cell_dir,
        num_classes=data_lib.info(config.dataset)['num_classes'])
  train_dir = os.path.join(cell_dir, 'train')
  detection = None
  if cell.defense in defense_cells.DETECTORS:
    train_set, detection = defense_cells.filter_training_set(
        config, cell.defense, masked, seed=cell.seed, target_class=config.target_class,
        feature_dir=os.path.join(workdir, 'cells',
                                 dataclasses.replace(cell, defense='none').name, 'train'),
        path=os.path.join(cell_dir, 'detection.json'))
    victim = defense_cells.retraining_config(victim)
  if os.path.isfile(os.path.join(train_dir, 'summary.json')):
    trained = train_lib.load_trained(train_dir)
  else:
    if detection is None:
      train_set = training_set(cell, splits['train'], poison_sets, victim)
    trained = train_lib.train(victim, {'train': train_set, 'test': splits['test']},
                              train_dir)
  sigma = certification_sigma(config, victim)
  c = config.certify
  test = splits['test']

  def certify(indices, tsv_name):
    return certification.certify_dataset(
        jax.random.key(c.seed), trained.apply_fn, trained.variables, test['image'],
        test['label'], indices=indices, tsv_path=os.path.join(cell_dir, tsv_name),
        num_classes=trained.num_classes, sigma=sigma, n0=c.n0, n=c.n, alpha=c.alpha,
        batch_size=c.batch_size)

  rows = certify(target_indices, 'certify.tsv')
  rows_all = None if all_indices is None else certify(all_indices,
                                                      'certify_all_classes.tsv')
  per_class = trained.summary['per_class_test_accuracy']
  train_seconds = float(trained.summary.get('train_seconds', 0.0))
  certify_seconds = float(sum(r.time for r in rows + (rows_all or [])))
  row = dict(
      dataclasses.asdict(cell), cell=cell.name, poison_set=cell.poison_set, sigma=sigma,
      clean_accuracy=float(trained.summary['test_accuracy']),
      num_train_examples=int(trained.summary.get('num_train_examples', 0)),
      **metrics.victim_summary(
          rows, rows_all, per_class_accuracy=per_class, target_class=config.target_class,
          class_counts=np.bincount(test['label'], minlength=len(per_class)),
          num_classes=trained.num_classes),
      **defense_cells.detection_row(detection),
      train_seconds=train_seconds, certify_seconds=certify_seconds,
      time=train_seconds + certify_seconds)
  workdir_lib.write_json(result_path, row)
  return workdir_lib.read_json(result_path)  # As a resumed run sees it (NaN -> None).


def _certified_points(workdir: str, cell: str, indices: np.ndarray) -> dict[str, Any]:
  """The cell's certificates of the target-class points, as arrays in their order."""
  path = os.path.join(workdir, 'cells', cell, 'certify.tsv')
  points = metrics.rows_to_arrays(metrics.read_certification_tsv(path))
  if not np.array_equal(points['idx'], indices):  # Paired comparisons need the order.
    raise ValueError(f'{path} does not hold the certified points in their order.')
  return points


# ------------------------------------------------------------------------------------
# The protocol.


def run_protocol(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole protocol; writes and returns the results.

  Args:
    config: a protocol config (``rsp/configs/protocol.py``).
    workdir: where everything goes (module docstring); the same workdir resumes.

  Returns:
    The content of ``results.json`` (described in ``rsp.report``).

  Raises:
    ValueError: a bad config, or a workdir made with other settings; raised before any
      work and before anything is written.
    rsp.report.FigureError: the figures failed; ``results.json`` and ``results.md`` are
      written and complete.
  """
  t_start = time.time()
  validate_config(config)
  splits = data_lib.load_splits(ml_collections.ConfigDict(  # The clean, whole data.
      {'dataset': config.dataset, 'data_dir': config.get('data_dir', ''),
       'data_seed': config.data_seed}))
  cells = resolve_cells(config)
  target_indices, all_indices = certification_indices(config, splits['test'])
  check_workdir(config, workdir, cells, target_indices, all_indices)
  workdir_lib.ensure_directory(workdir, name='workdir')
  workdir_lib.write_json(os.path.join(workdir, 'config.json'), config)
  logging.info('Protocol %s: %d cells in %s.', config.name, len(cells), workdir)

  poison_sets = make_poison_sets(config, splits, workdir)
  rows = []
  for i, cell in enumerate(cells):
    rows.append(run_cell(config, cell, splits=splits, poison_sets=poison_sets,
                         target_indices=target_indices, all_indices=all_indices,
                         workdir=workdir))
    logging.info('Protocol cell %d/%d %s: ACR %s, clean accuracy %.4f.', i + 1,
                 len(cells), cell.name, rows[-1].get('acr'), rows[-1]['clean_accuracy'])
  dpa_rows = [r for r in rows if r.get('defense') == defense_cells.DPA]
  rows = [r for r in rows if r.get('defense') != defense_cells.DPA]
  points = {r['cell']: _certified_points(workdir, r['cell'], target_indices)
            for r in rows}
  rows = metrics.add_paired_comparisons(metrics.add_acr_drops(rows), {
      cell: metrics.effective_radius(p['radius'], p['correct'])
      for cell, p in points.items()})
  aggregates = metrics.aggregate_rows(rows)
  poisons = {name: {'poison': p.poison, 'crafted_against': p.crafted_against,
                    'path': p.path, 'metadata': p.metadata,
                    'seconds': float(p.metadata.get('attack_seconds', 0.0)),
                    'statistics': metrics.perturbation_statistics(p.clean_images,
                                                                  p.poisons)}
             for name, p in poison_sets.items()}
  results = {
      'config': config.to_dict(), 'rows': rows, 'aggregates': aggregates,
      'transfer_matrix': metrics.transfer_matrix(aggregates), 'poisons': poisons,
      'dpa': dpa_rows,
      'certified_points': [int(i) for i in target_indices],
      'machine': report.machine_info(),
      'total_seconds': (sum(p['seconds'] for p in poisons.values()) +
                        sum(r['time'] for r in rows + dpa_rows)),
      'figures': [],
  }
  # The results first: a figure that fails loses no number.
  results = report.write_results(workdir,
                                 dict(results, wall_seconds=time.time() - t_start))
  if config.figures:
    try:
      results['figures'] = report.make_figures(results, points, poison_sets, workdir)
    except Exception as e:  # pylint: disable=broad-except
      raise report.FigureError(
          f'{workdir}: results.json and results.md are written, but the figures '
          f'failed: {type(e).__name__}: {e}') from e
    results = report.write_results(workdir, dict(results,
                                                 wall_seconds=time.time() - t_start))
  logging.info('Protocol %s done: wrote %s.', config.name,
               os.path.join(workdir, 'results.md'))
  return results
