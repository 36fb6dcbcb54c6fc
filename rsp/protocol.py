r"""The evaluation protocol: poison, train victims from scratch, certify, report.

``run_protocol(config, workdir)`` (``experiments/run.py``), for a protocol config
(``rsp/configs/protocol*.py``):

1. checks every setting, nested configs included, and the workdir's record before any
   work (``prepare``: ``validate_config``, ``check_workdir``);
2. makes the poison sets (``make_poison_set`` per ``poison_keys``): PACD (Mehra et al.
   2021) crafted against each method of ``config.crafted_against`` (or
   ``config.poison_file``), and the baselines of ``rsp.baselines`` on the same images
   within the same eps, each on ``config.poison_fraction`` of the target class;
3. trains a victim from scratch for every cell of the grid training method x
   architecture x training set x seed (``resolve_cells``, ``run_cell``) and certifies
   it (Cohen et al. 2019) on the same seeded test points with one key for all victims:
   point ``idx`` sees the same noise in every cell, so that paired differences between
   victims carry no Monte Carlo noise of the certification;
4. computes drops, paired comparisons and intervals (``rsp.metrics``), writes
   ``results.json`` and ``results.md``, then the figures (``rsp.report``).

**Sweeps.** ``config.sweep.axes`` names axes among eps, poison_fraction, victim_sigma
and target_class; the grid is then the base point (the config's own values) and each
value of each axis with the others at the base point (``sweep_points``). A cell
records where it departs from the base point (``Cell``; None: the base value) and only
where that changes its numbers, so cells that share a victim are one cell: a clean
victim is trained once per (method, arch, victim sigma, target class, seed), whatever
the eps or fraction; a poison set (``PoisonKey``) is made once per (kind, method, eps,
fraction, target class), whatever the victims' sigma. The random baseline of each
budget sits beside the PACD cells of that budget. Names show the departures:
``gaussian-lenet-pacd_gaussian-eps0.05-seed0``, ``gaussian-lenet-none-sigma1-seed0``;
a grid without sweeps has the names it always had.

**Fan-out.** Many workers may share one workdir (``run_worker``, on top of
``rsp.grid``'s claims): each first takes part in making the poison sets, one claimed
item each, and waits until all exist; then it computes the cells (all of them, work
stealing, or its shard ``i/N``), each under its claim, so that no item is computed
twice and a dead worker's item is taken over after the claim's lease.
``report_protocol`` aggregates the finished cells without computing anything and names
the missing ones; ``launch`` checks everything once, starts K workers through
``rsp.grid.submit`` (submitit: local processes or a SLURM job array), waits and
reports; ``run_command`` is what ``experiments/run.py`` does with its flags.

Workdir layout (the workdir is the record; every stage resumes)::

    WORKDIR/config.json                 the protocol config
    WORKDIR/poisons/<set>.json          what a poison set is made from (checked on restart)
    WORKDIR/poisons/pacd_<method>[-<departures>]/  PACD's workdir (poisons.npz, ...)
    WORKDIR/poisons/<baseline>[-<departures>].npz  random baselines
    WORKDIR/cells/<cell>/spec.json      what a cell is made from (checked on restart)
    WORKDIR/cells/<cell>/train/         the victim's training run
    WORKDIR/cells/<cell>/certify.tsv    Cohen's per-point log (certify_all_classes.tsv)
    WORKDIR/cells/<cell>/result.json    the cell's row, written when the cell is done
    WORKDIR/compute_log/<item>@<host>-<pid>-<token>.json   one file per computation
    WORKDIR/claims/, grid_logs/         workers' claims (rsp.grid) and submitit logs
    WORKDIR/results.json, results.md, figures/*.png

A restarted run redoes nothing finished, resumes what was interrupted and ends with the
same rows as an uninterrupted run; a workdir made with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import socket
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from rsp import attack as attack_lib
from rsp import baselines
from rsp import certification
from rsp import checkpointing
from rsp import data as data_lib
from rsp import grid as grid_lib
from rsp import metrics
from rsp import models
from rsp import report
from rsp import smoothing
from rsp import train as train_lib
from rsp import validation
from rsp import workdir as workdir_lib

POISON_KINDS = ('none', 'pacd', *baselines.BASELINES)
# The training sets with a budget: an eps and a poisoned fraction.
BUDGETED = ('pacd', *baselines.RANDOM_KINDS)
# The sweep axes (``config.sweep``): each is a field of a cell and of its row.
AXES = metrics.SWEEP_AXES
# Fields that do not change a victim's or an attack's numbers (a restart may change them).
RESUMABLE = ('log_every_steps', 'eval_batch_size', 'eval_every_epochs',
             'checkpoint_every_steps', 'remat', 'unroll')
# Fields the protocol sets in every nested config from its own.
_SHARED = ('dataset', 'data_dir', 'data_seed', 'target_class')
# ... and in every nested attack config (the poison set's budget).
_ATTACK_SHARED = _SHARED + ('eps', 'poison_fraction', 'poison_subset_seed')
# How a name shows where a cell or a poison set departs from the base point.
_AXIS_TAGS = {'target_class': 'class', 'eps': 'eps', 'poison_fraction': 'frac',
              'victim_sigma': 'sigma'}
# The axes a poison set depends on (a victim's sigma does not change the poisons).
_POISON_AXES = ('target_class', 'eps', 'poison_fraction')
# Where workers record each computation: one file per computation (``compute_records``).
COMPUTE_LOG = 'compute_log'


# ------------------------------------------------------------------------------------
# The grid.


def _tag(where: Any, axes: Sequence[str]) -> str:
  """``'-eps0.05'``, ``'-class3-frac0.5'``: the departures of ``where`` on ``axes``."""
  return ''.join(f'-{_AXIS_TAGS[a]}{getattr(where, a):g}' for a in axes
                 if getattr(where, a) is not None)


@dataclasses.dataclass(frozen=True)
class PoisonKey:
  """One training set of the grid: its kind and where its budget departs from the base
  point (None: ``config.target_class``, ``config.eps``, ``config.poison_fraction``)."""
  poison: str            # One of POISON_KINDS.
  crafted_against: str   # For 'pacd': the method its poisons target ('' otherwise).
  target_class: int | None = None
  eps: float | None = None
  poison_fraction: float | None = None

  @property
  def name(self) -> str:
    """'pacd_<crafted_against>' or the poison kind, then the departures:
    'pacd_gaussian', 'random-eps0.05', 'pacd_gaussian-class3', 'none-class3'."""
    kind = f'pacd_{self.crafted_against}' if self.poison == 'pacd' else self.poison
    return kind + _tag(self, _POISON_AXES)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One victim: a training method, an architecture, a training set and a seed, at a
  point of the sweep axes.

  The last four fields say where the cell departs from the protocol's base point:
  None is ``config.target_class``, ``config.eps``, ``config.poison_fraction`` or the
  training sigma of ``config.victims[train_method]``. ``resolve_cells`` sets only the
  departures that change the cell's numbers (a clean victim has no eps or fraction), so
  that cells that share a victim are one cell.
  """
  train_method: str
  arch: str
  poison: str            # One of POISON_KINDS.
  crafted_against: str   # For 'pacd': the method its poisons target ('' otherwise).
  seed: int
  target_class: int | None = None     # The poisoned and certified class.
  eps: float | None = None            # The poisons' L-inf budget.
  poison_fraction: float | None = None  # The fraction of the class poisoned.
  victim_sigma: float | None = None   # The victim's training (and certification) sigma.

  @property
  def poison_key(self) -> PoisonKey:
    return PoisonKey(self.poison, self.crafted_against, self.target_class, self.eps,
                     self.poison_fraction)

  @property
  def poison_set(self) -> str:
    """The training set's name (``PoisonKey.name``): 'pacd_<crafted_against>' or the
    poison kind, with its departures from the base budget ('random-eps0.05')."""
    return self.poison_key.name

  @property
  def sweep_axis(self) -> str | None:
    """The axis along which the cell departs from the base point (None: it is on it)."""
    return ','.join(a for a in AXES if getattr(self, a) is not None) or None

  @property
  def name(self) -> str:
    """'gaussian-lenet-pacd_gaussian-seed0', 'gaussian-lenet-random-eps0.05-seed1',
    'gaussian-lenet-none-sigma1-seed0', 'gaussian-lenet-none-class3-seed0'."""
    return (f'{self.train_method}-{self.arch}-{self.poison_set}'
            f'{_tag(self, ("victim_sigma",))}-seed{self.seed}')


@dataclasses.dataclass
class PoisonSet:
  """Perturbed target-class training images replacing the clean ones."""
  name: str                 # PoisonKey.name: 'pacd_<method>' or a random baseline's.
  poison: str               # 'pacd' or a random baseline's name.
  crafted_against: str      # PACD's training method ('' for baselines).
  indices: np.ndarray       # [P] indices into the training split.
  poisons: np.ndarray       # [P, H, W, C]
  clean_images: np.ndarray  # [P, H, W, C]
  metadata: dict[str, Any]
  path: str
  setting: dict[str, Any] = dataclasses.field(default_factory=dict)  # Departures.


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


def own_sigma(config: ml_collections.ConfigDict, method: str) -> float | None:
  """The training sigma of ``config.victims[method]`` (None: it trains without noise)."""
  victim = config.victims.get(method) if 'victims' in config else None
  sigma = None if victim is None else victim.get('loss', {}).get('sigma', None)
  return None if sigma is None else float(sigma)


def _base(config: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
  return {'target_class': int(config.target_class), 'eps': float(config.eps),
          'poison_fraction': float(config.get('poison_fraction', 1.0)),
          'victim_sigma': own_sigma(config, method)}


def poison_setting(config: ml_collections.ConfigDict,
                   where: PoisonKey | Cell) -> dict[str, Any]:
  """The concrete ``target_class``, ``eps`` and ``poison_fraction`` of a poison set or a
  cell's training set (eps and fraction None for 'none' and 'no_target')."""
  budgeted = where.poison in BUDGETED

  def value(axis, base):
    return base if getattr(where, axis) is None else getattr(where, axis)

  return {'target_class': int(value('target_class', config.target_class)),
          'eps': float(value('eps', config.eps)) if budgeted else None,
          'poison_fraction': (float(value('poison_fraction',
                                          config.get('poison_fraction', 1.0)))
                              if budgeted else None)}


def cell_setting(config: ml_collections.ConfigDict, cell: Cell) -> dict[str, Any]:
  """The cell's concrete point: ``target_class``, ``victim_sigma`` (None: no noise),
  ``eps`` and ``poison_fraction`` (None for 'none' and 'no_target'), as in its row."""
  out = poison_setting(config, cell)
  sigma = own_sigma(config, cell.train_method) if cell.victim_sigma is None else \
      float(cell.victim_sigma)
  return {'target_class': out['target_class'], 'victim_sigma': sigma, 'eps': out['eps'],
          'poison_fraction': out['poison_fraction']}


# ------------------------------------------------------------------------------------
# Sweeps.


def sweep_axes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The axes of ``config.sweep.axes`` (() for a config without sweeps), checked."""
  sweep = config.get('sweep')
  if not sweep:
    return ()
  axes = validation.names('config.sweep.axes', sweep.get('axes', ()))
  validation.check_choices('config.sweep.axes', axes, AXES)
  return axes


def _sweep_value(axis: str, value: Any, item: Any, num_classes: int) -> Any:
  name = f'config.sweep.{axis}={value!r} has {item!r}:'
  if isinstance(item, str):
    try:
      item = int(item) if axis == 'target_class' else float(item)
    except ValueError:
      pass
  if axis == 'target_class':
    if not validation.is_int(item) or not 0 <= item < num_classes:
      raise ValueError(f'{name} a target class must be an integer in [0, '
                       f'{num_classes - 1}] (a class of config.dataset).')
    return int(item)
  number = validation.real_number(item)
  if axis == 'poison_fraction' and (number is None or not 0 < number <= 1):
    raise ValueError(f'{name} a poisoned fraction must be a number in (0, 1].')
  if axis == 'eps' and (number is None or not 0 < number <= 1):
    raise ValueError(f"{name} an eps must be a number in (0, 1] (the poisons' L-inf "
                     'budget in pixels).')
  if axis == 'victim_sigma' and (number is None or not np.isfinite(number) or
                                 number <= 0):
    raise ValueError(f"{name} a victim sigma must be a finite number > 0 (the victims' "
                     'training and certification noise).')
  return number


def sweep_values(config: ml_collections.ConfigDict, axis: str) -> tuple[Any, ...]:
  """The values of ``config.sweep.<axis>`` (a tuple of values or of comma-separated
  strings, a number or a string), checked: distinct, each a valid value of the axis."""
  validation.check_choice('axis', axis, AXES)
  value = config.sweep.get(axis, ())
  items = []
  for item in value if isinstance(value, (tuple, list)) else (value,):
    items += [p.strip() for p in item.split(',')] if isinstance(item, str) else [item]
  num_classes = data_lib.info(config.dataset)['num_classes']
  values = tuple(_sweep_value(axis, value, i, num_classes) for i in items if i != '')
  if len(set(values)) != len(values):
    raise ValueError(f'config.sweep.{axis}={value!r} repeats a value; accepted: distinct '
                     'values.')
  return values


def sweep_points(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The points of the grid, one sweep axis varied at a time around the base point:
  ``{}`` (the base point), then ``{axis: value}`` for each value of each axis of
  ``config.sweep.axes``."""
  return [{}] + [{axis: v} for axis in sweep_axes(config)
                 for v in sweep_values(config, axis)]


def _at_point(config: ml_collections.ConfigDict, cell: Cell,
              point: Mapping[str, Any]) -> Cell:
  """``cell`` at sweep point ``point``, keeping only the departures from the base point
  that change its numbers: none for a value equal to the base's, no budget for a clean
  or class-less training set."""
  base = _base(config, cell.train_method)
  departures = {axis: value for axis, value in point.items()
                if value != base[axis] and (axis in ('target_class', 'victim_sigma') or
                                            cell.poison in BUDGETED)}
  return dataclasses.replace(cell, **departures)


def resolve_cells(config: ml_collections.ConfigDict) -> list[Cell]:
  """The grid of victims, in the order they are trained.

  Every training method x training set x seed on ``config.archs[0]``; the other
  architectures with the methods in ``config.other_arch_methods`` (all if empty).
  Training sets: each of ``config.poison_kinds``, 'pacd' once per ``pacd_methods``.
  All of it at the base point, then at each point of ``sweep_points``; a cell that
  two points share (the clean victim at every eps) appears once, where first met.
  """
  methods = _names(config, 'train_methods')
  other = _names(config, 'other_arch_methods') or methods
  seeds = validation.distinct_ints('config.seeds', config.seeds)
  cells = [_at_point(config, Cell(method, arch, kind, against, seed), point)
           for point in sweep_points(config)
           for a, arch in enumerate(_names(config, 'archs'))
           for method in methods if a == 0 or method in other
           for kind in _names(config, 'poison_kinds')
           for against in (pacd_methods(config) if kind == 'pacd' else ('',))
           for seed in seeds]
  return list(dict.fromkeys(cells))


def poison_keys(config: ml_collections.ConfigDict,
                cells: Sequence[Cell]) -> list[PoisonKey]:
  """The poison sets the protocol makes in its workdir for ``cells``, in their order:
  one PACD set per crafted-against method x budget (eps, fraction) x target class, one
  per random baseline x budget x target class (PACD's from ``config.poison_file``,
  when set, is read, not made)."""
  keys = [c.poison_key for c in cells if c.poison in BUDGETED and
          not (c.poison == 'pacd' and config.get('poison_file'))]
  return list(dict.fromkeys(keys))


def attack_config(config: ml_collections.ConfigDict, method: str,
                  key: PoisonKey | None = None) -> ml_collections.ConfigDict:
  """The nested attack config ``config.attacks[method]`` with the protocol's data,
  target class, eps and poisoned fraction (those of poison set ``key`` if given)."""
  if method not in config.attacks:
    raise ValueError(f'config.crafted_against names {method!r} but config.attacks has no '
                     f'such entry; it has {sorted(config.attacks)}.')
  c = ml_collections.ConfigDict(config.attacks[method].to_dict())  # Unlocked copy.
  for field in _SHARED + ('eps',):
    c[field] = config.get(field, '')
  c.poison_fraction = float(config.get('poison_fraction', 1.0))
  c.poison_subset_seed = int(config.get('poison_subset_seed', 0))
  if key is not None:
    c.update(poison_setting(config, key))
  return c


def victim_config(config: ml_collections.ConfigDict, cell: Cell
                  ) -> ml_collections.ConfigDict:
  """The training config of ``cell``'s victim: ``config.victims[train_method]`` with the
  protocol's data and target class, the cell's architecture, seed, target class and
  training sigma."""
  if cell.train_method not in config.victims:
    raise ValueError(f'config.train_methods names {cell.train_method!r} but '
                     f'config.victims has no such entry; it has {sorted(config.victims)}.')
  c = ml_collections.ConfigDict(config.victims[cell.train_method].to_dict())
  for field in _SHARED:
    c[field] = config.get(field, '')
  c.seed = cell.seed
  c.poison_file = ''  # The protocol hands the training set over directly.
  if c.model != cell.arch:
    c.model = cell.arch
    c.model_kwargs = ml_collections.ConfigDict()
  if cell.target_class is not None:
    c.target_class = int(cell.target_class)
  if cell.victim_sigma is not None:
    c.loss.sigma = float(cell.victim_sigma)
  return c


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

  Checks the protocol's fields, the certification settings, the sweep
  (``config.sweep``: its axes, their values and what each axis needs), and every nested
  config as the protocol will use it (each victim of the grid with
  ``rsp.train.validate_config``, each attack of each budget with
  ``rsp.attack.validate_config``); their messages name a field by its full path, e.g.
  ``config.victims.gaussian.num_epochs``, ``config.sweep.eps``.
  """
  validation.check_choice('config.dataset', config.dataset, data_lib.DATASETS)
  info = data_lib.info(config.dataset)
  validation.check_int('config.target_class', config.target_class, 0,
                       info['num_classes'] - 1)
  if not 0 < config.eps <= 1:
    raise ValueError(f'config.eps={config.eps} must be in (0, 1].')
  data_lib.check_poison_fraction('config.poison_fraction',
                                 config.get('poison_fraction', 1.0))
  validation.check_int('config.poison_subset_seed', config.get('poison_subset_seed', 0),
                       0, meaning='seeds which images a poison_fraction < 1 poisons')
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
  _validate_sweep(config, methods)
  cells = resolve_cells(config)
  for cell in cells:
    victim = victim_config(config, cell)
    with validation.nested(f'config.victims.{cell.train_method}'):
      train_lib.validate_config(victim)
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
    made = float(meta.get('poison_fraction', 1.0))
    if made != float(config.get('poison_fraction', 1.0)):
      raise ValueError(f'config.poison_file={config.poison_file!r} poisons a fraction '
                       f'{made} of the class, but config.poison_fraction='
                       f'{config.get("poison_fraction", 1.0)}; accepted: '
                       f'config.poison_fraction={made}.')
  elif 'pacd' in kinds:
    if not pacd_methods(config):
      raise ValueError("config.poison_kinds has 'pacd' but config.crafted_against is "
                       'empty and config.poison_file is unset.')
    for key in poison_keys(config, cells):
      if key.poison == 'pacd':
        attack = attack_config(config, key.crafted_against, key)
        with validation.nested(f'config.attacks.{key.crafted_against}'):
          attack_lib.validate_config(attack)


def _validate_sweep(config: ml_collections.ConfigDict, methods: Sequence[str]) -> None:
  """``config.sweep``: known axes, each with valid values, and what each axis needs."""
  for axis in sweep_axes(config):
    if not sweep_values(config, axis):
      raise ValueError(f'config.sweep.axes names {axis!r} but config.sweep.{axis} is '
                       'empty; accepted: at least one value, or leave the axis out of '
                       'config.sweep.axes.')
    if axis != 'victim_sigma' and config.get('poison_file') and \
        'pacd' in _names(config, 'poison_kinds'):
      raise ValueError(f'config.sweep.axes={config.sweep.axes!r} sweeps {axis!r}, but '
                       f'config.poison_file={config.poison_file!r} holds PACD poisons of '
                       'one budget and class only; accepted: no poison_file, or only the '
                       "'victim_sigma' axis.")
    if axis == 'victim_sigma':
      if config.certify.sigma > 0:
        raise ValueError(f'config.sweep.axes sweeps the victims\' sigma, but '
                         f'config.certify.sigma={config.certify.sigma} certifies every '
                         'victim at one sigma; accepted: config.certify.sigma <= 0 (each '
                         'victim at its training sigma).')
      for method in methods:
        if method in config.victims and own_sigma(config, method) is None:
          raise ValueError(f'config.sweep.axes sweeps the victims\' sigma, but '
                           f'config.victims.{method} trains without noise (no '
                           'loss.sigma); accepted: training methods with a sigma '
                           "(gaussian, macer, smoothadv), or no 'victim_sigma' axis.")


def _without(d: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
  return {k: v for k, v in d.items() if k not in fields}


def poison_spec(config: ml_collections.ConfigDict, key: PoisonKey) -> dict[str, Any]:
  """What training set ``key`` is made from, in the protocol config's own field names
  (so that a refused restart names each field as it is set); ``inputs`` holds the rest.
  A poisoned fraction below 1 and its subset seed are recorded where they apply."""
  spec = {'dataset': config.dataset, 'data_seed': config.data_seed}
  setting = poison_setting(config, key)
  if key.poison != 'none':
    spec['target_class'] = setting['target_class']
  if key.poison in BUDGETED:
    spec['eps'] = setting['eps']
    if setting['poison_fraction'] != 1.0:
      spec['poison_fraction'] = setting['poison_fraction']
      spec['poison_subset_seed'] = int(config.get('poison_subset_seed', 0))
  if key.poison == 'pacd' and config.get('poison_file'):
    spec['inputs'] = {'poison_file_sha256': workdir_lib.file_digest(config.poison_file)}
  elif key.poison == 'pacd':
    method = key.crafted_against
    spec['attacks'] = {method: _without(config.attacks[method].to_dict(),
                                        _ATTACK_SHARED)}
  elif key.poison in baselines.RANDOM_KINDS:
    spec['seed'] = config.seed
    spec['inputs'] = {'noise': baselines.RANDOM_KINDS[key.poison]}
  return spec


def cell_spec(config: ml_collections.ConfigDict, cell: Cell,
              target_indices: np.ndarray, all_indices: np.ndarray | None
              ) -> dict[str, Any]:
  """Everything that determines a cell's numbers (compared on restart)."""
  victim = victim_config(config, cell)
  c = config.certify
  spec = poison_spec(config, cell.poison_key)
  spec['target_class'] = victim.target_class  # The certified points.
  spec['victims'] = {cell.train_method: _without(victim.to_dict(),
                                                 _SHARED + ('seed', 'poison_file'))}
  spec['certify'] = {'sigma': certification_sigma(config, victim), 'n0': c.n0, 'n': c.n,
                     'alpha': c.alpha, 'seed': c.seed}
  spec['inputs'] = dict(
      spec.get('inputs', {}), cell=dataclasses.asdict(cell),
      certified_points=[int(i) for i in target_indices],
      all_classes_points=None if all_indices is None else [int(i) for i in all_indices])
  return spec


def check_workdir(config: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell],
                  points: Mapping[int, tuple[np.ndarray, np.ndarray | None]]) -> None:
  """Refuses (``rsp.workdir.SettingsMismatchError``, naming every differing field) a
  workdir whose poisons or cells were made with other settings; a restart may add
  cells (seeds, methods, baselines, sweep values) but must not mix numbers of different
  settings.

  Args:
    config, workdir, cells: the protocol.
    points: ``certification_points``: per target class, the certified test points.
  """
  for key in poison_keys(config, cells):
    workdir_lib.check_settings(os.path.join(workdir, 'poisons', f'{key.name}.json'),
                               poison_spec(config, key), resumable=RESUMABLE,
                               what=f'poison set ({key.name})')
  for cell in cells:
    workdir_lib.check_settings(os.path.join(workdir, 'cells', cell.name, 'spec.json'),
                               cell_spec(config, cell,
                                         *points[_cell_class(config, cell)]),
                               resumable=RESUMABLE, what=f'victim ({cell.name})')


# ------------------------------------------------------------------------------------
# Poison sets and training sets.


def _cell_class(config: ml_collections.ConfigDict, cell: Cell) -> int:
  return int(config.target_class if cell.target_class is None else cell.target_class)


def poison_path(workdir: str, key: PoisonKey) -> str:
  """The poison file of ``key`` in the workdir (written last: its presence means done)."""
  if key.poison == 'pacd':
    return os.path.join(workdir, 'poisons', key.name, 'poisons.npz')
  return os.path.join(workdir, 'poisons', f'{key.name}.npz')


def _load_poison_set(name: str, poison: str, crafted_against: str, path: str,
                     train: Mapping[str, np.ndarray],
                     setting: Mapping[str, Any] | None = None) -> PoisonSet:
  f = data_lib.load_poisons(path, train=train)
  return PoisonSet(name=name, poison=poison, crafted_against=crafted_against,
                   indices=f['indices'], poisons=f['poisons'],
                   clean_images=f['clean_images'], metadata=f['metadata'], path=path,
                   setting=dict(setting or {}))


def make_poison_set(config: ml_collections.ConfigDict, key: PoisonKey,
                    splits: Mapping[str, Mapping[str, np.ndarray]], workdir: str) -> None:
  """Makes poison set ``key`` in the workdir unless its file is there: PACD (resumable,
  ``rsp.attack.pacd``) or a random baseline. Every budget and class of one baseline is
  drawn from the same key (the noise of eps 0.05 is that of eps 0.1, halved)."""
  workdir_lib.write_json(os.path.join(workdir, 'poisons', f'{key.name}.json'),
                         poison_spec(config, key))
  path = poison_path(workdir, key)
  if os.path.isfile(path):
    return
  if key.poison == 'pacd':
    logging.info('Protocol: PACD against %s into %s.', key.crafted_against,
                 os.path.dirname(path))
    attack_lib.pacd(attack_config(config, key.crafted_against, key), splits,
                    os.path.dirname(path))
    return
  setting = poison_setting(config, key)
  base_key = jax.random.fold_in(jax.random.key(config.seed),
                                POISON_KINDS.index(key.poison))
  baselines.save_random_baseline(
      path, base_key, splits['train'], name=key.poison,
      target_class=setting['target_class'], eps=setting['eps'],
      poison_fraction=setting['poison_fraction'],
      subset_seed=int(config.get('poison_subset_seed', 0)),
      metadata={'dataset': config.dataset, 'seed': config.seed,
                'data_seed': config.data_seed})


def load_poison_sets(config: ml_collections.ConfigDict,
                     splits: Mapping[str, Mapping[str, np.ndarray]], workdir: str,
                     keys: Sequence[PoisonKey], *, missing_ok: bool = False
                     ) -> dict[str, PoisonSet]:
  """The poison sets ``keys`` from the workdir (and PACD's ``config.poison_file``).

  Args:
    missing_ok: leave out the sets not made yet (for a report) instead of raising.

  Returns:
    ``{name: PoisonSet}``.
  """
  train = splits['train']
  out = {}
  if 'pacd' in _names(config, 'poison_kinds') and config.get('poison_file'):
    method = _poison_file_method(config)
    out[f'pacd_{method}'] = _load_poison_set(f'pacd_{method}', 'pacd', method,
                                             config.poison_file, train)
  for key in keys:
    path = poison_path(workdir, key)
    if missing_ok and not os.path.isfile(path):
      continue
    setting = {a: getattr(key, a) for a in _POISON_AXES if getattr(key, a) is not None}
    out[key.name] = _load_poison_set(key.name, key.poison, key.crafted_against, path,
                                     train, setting)
  return out


def make_poison_sets(config: ml_collections.ConfigDict,
                     splits: Mapping[str, Mapping[str, np.ndarray]], workdir: str
                     ) -> dict[str, PoisonSet]:
  """PACD poisons per training method and budget and the random baselines; loaded if
  already made.

  Returns:
    ``{name: PoisonSet}`` with names ``PoisonKey.name``: ``pacd_<method>``, the
    baselines' names, with their departures from the base budget.
  """
  keys = poison_keys(config, resolve_cells(config))
  for key in keys:
    make_poison_set(config, key, splits, workdir)
  return load_poison_sets(config, splits, workdir, keys)


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
                          test: Mapping[str, np.ndarray], target_class: int | None = None
                          ) -> tuple[np.ndarray, np.ndarray | None]:
  """The certified test points: a seeded subset of the target class (``target_class``,
  default ``config.target_class``), and of all points if
  ``config.certify.all_classes_points > 0`` (else None)."""
  c = config.certify
  cls = config.target_class if target_class is None else target_class
  pool = data_lib.class_indices(test, cls)
  target = pool[data_lib.seeded_subset_indices(len(pool), c.num_points, c.subset_seed)]
  every = None
  if c.all_classes_points > 0:
    every = data_lib.seeded_subset_indices(len(test['label']), c.all_classes_points,
                                           c.subset_seed)
  return target, every


def certification_points(config: ml_collections.ConfigDict,
                         test: Mapping[str, np.ndarray], cells: Sequence[Cell]
                         ) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
  """``certification_indices`` of every target class of ``cells``, by class."""
  classes = dict.fromkeys(_cell_class(config, c) for c in cells)
  return {cls: certification_indices(config, test, cls) for cls in classes}


def run_cell(config: ml_collections.ConfigDict, cell: Cell, *,
             splits: Mapping[str, Mapping[str, np.ndarray]],
             poison_sets: Mapping[str, PoisonSet], target_indices: np.ndarray,
             all_indices: np.ndarray | None, workdir: str) -> dict[str, Any]:
  """Trains and certifies one victim, resumably; returns its row of ``results.json``.

  ``target_indices`` and ``all_indices`` are the cell's certified points
  (``certification_points`` of its target class).

  The row (also ``cells/<cell>/result.json``, written last) holds the cell's fields
  (``train_method``, ``arch``, ``poison``, ``crafted_against``, ``seed``, ``cell``,
  ``poison_set``), its concrete point (``cell_setting``: ``target_class``,
  ``victim_sigma``, ``eps``, ``poison_fraction``) and ``sweep_axis`` (None on the base
  point), ``sigma`` (of the certification), ``clean_accuracy`` (the base classifier, all
  classes),
  ``num_train_examples``, the certification summary (``rsp.metrics.victim_summary``:
  ``acr``, ``certified_accuracy``, ``target_accuracy``, ...), ``train_seconds``,
  ``certify_seconds`` and ``time``.
  """
  cell_dir = os.path.join(workdir, 'cells', cell.name)
  result_path = os.path.join(cell_dir, 'result.json')
  if os.path.isfile(result_path):
    return workdir_lib.read_json(result_path)
  workdir_lib.write_json(os.path.join(cell_dir, 'spec.json'),
                         cell_spec(config, cell, target_indices, all_indices))
  victim = victim_config(config, cell)
  train_dir = os.path.join(cell_dir, 'train')
  if os.path.isfile(os.path.join(train_dir, 'summary.json')):
    trained = train_lib.load_trained(train_dir)
  else:
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
  setting = cell_setting(config, cell)
  row = dict(
      dataclasses.asdict(cell), cell=cell.name, poison_set=cell.poison_set, sigma=sigma,
      **setting, sweep_axis=cell.sweep_axis,
      clean_accuracy=float(trained.summary['test_accuracy']),
      num_train_examples=int(trained.summary.get('num_train_examples', 0)),
      **metrics.victim_summary(
          rows, rows_all, per_class_accuracy=per_class,
          target_class=setting['target_class'],
          class_counts=np.bincount(test['label'], minlength=len(per_class)),
          num_classes=trained.num_classes),
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


@dataclasses.dataclass
class Plan:
  """A protocol resolved and checked against its workdir (``prepare``): what every
  stage (a whole run, a worker, a report) starts from."""
  config: ml_collections.ConfigDict
  workdir: str
  splits: dict[str, dict[str, np.ndarray]]
  cells: list[Cell]
  poison_keys: list[PoisonKey]
  points: dict[int, tuple[np.ndarray, np.ndarray | None]]  # certification_points

  def indices(self, cell: Cell) -> tuple[np.ndarray, np.ndarray | None]:
    return self.points[_cell_class(self.config, cell)]

  def cell_done(self, cell: Cell) -> bool:
    return os.path.isfile(os.path.join(self.workdir, 'cells', cell.name, 'result.json'))

  def poison_done(self, key: PoisonKey) -> bool:
    return os.path.isfile(poison_path(self.workdir, key))


def poison_item(key: PoisonKey) -> str:
  """The work item (claim name) of a poison set: 'poisons-<name>'."""
  return f'poisons-{key.name}'


def prepare(config: ml_collections.ConfigDict, workdir: str, *,
            for_report: bool = False) -> Plan:
  """Checks everything, before any work, and resolves the grid.

  Validates the config (``validate_config``), loads the clean splits, checks that every
  poisoned fraction poisons at least one image, and refuses a workdir made with other
  settings (``check_workdir``); then, unless ``for_report``, creates the workdir and
  writes ``config.json``.

  Args:
    for_report: for ``report_protocol``: write nothing, and refuse a workdir that holds
      no protocol run.

  Raises:
    ValueError: a bad config, a fraction that poisons nothing, or a workdir made with
      other settings (``rsp.workdir.SettingsMismatchError``); nothing is written.
  """
  validate_config(config)
  if for_report and not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise ValueError(f'workdir={workdir!r} holds no protocol run (no config.json); '
                     'start one with experiments/run.py first.')
  splits = data_lib.load_splits(ml_collections.ConfigDict(  # The clean, whole data.
      {'dataset': config.dataset, 'data_dir': config.get('data_dir', ''),
       'data_seed': config.data_seed}))
  cells = resolve_cells(config)
  keys = poison_keys(config, cells)
  for key in keys:  # A fraction of a small class may round to no image at all.
    setting = poison_setting(config, key)
    field = ('config.sweep.poison_fraction' if key.poison_fraction is not None
             else 'config.poison_fraction')
    data_lib.poison_indices(splits['train'], setting['target_class'],
                            setting['poison_fraction'],
                            int(config.get('poison_subset_seed', 0)), name=field)
  points = certification_points(config, splits['test'], cells)
  check_workdir(config, workdir, cells, points)
  if not for_report:
    workdir_lib.ensure_directory(workdir, name='workdir')
    workdir_lib.write_json(os.path.join(workdir, 'config.json'), config)
  return Plan(config=config, workdir=workdir, splits=splits, cells=cells,
              poison_keys=keys, points=points)


def _record_computation(workdir: str, item: str, fn: Callable[[], Any]) -> Any:
  """Runs ``fn`` and records that this process computed ``item``: one file
  ``WORKDIR/compute_log/<item>@<host>-<pid>-<token>.json`` per computation (a file, not
  a shared log, so that no filesystem needs atomic appends)."""
  start = time.time()
  out = fn()
  record = {'item': item, 'host': socket.gethostname(), 'pid': os.getpid(),
            'start': start, 'seconds': time.time() - start,
            'slurm_job_id': os.environ.get('SLURM_JOB_ID')}
  workdir_lib.write_json(os.path.join(
      workdir, COMPUTE_LOG,
      f'{item}@{record["host"]}-{record["pid"]}-{secrets.token_hex(4)}.json'), record)
  return out


def compute_records(workdir: str) -> dict[str, list[dict[str, Any]]]:
  """Who computed what: ``{item: [record, ...]}`` from ``WORKDIR/compute_log`` (items
  are cell names and ``poison_item`` names; two records of one item mean it was
  computed twice)."""
  directory = os.path.join(workdir, COMPUTE_LOG)
  out: dict[str, list[dict[str, Any]]] = {}
  if not os.path.isdir(directory):
    return out
  for name in sorted(os.listdir(directory)):
    if name.endswith('.json') and not name.startswith('.'):
      record = workdir_lib.read_json(os.path.join(directory, name))
      out.setdefault(record['item'], []).append(record)
  return out


def _compute_cell(plan: Plan, cell: Cell,
                  poison_sets: Mapping[str, PoisonSet]) -> dict[str, Any]:
  target_indices, all_indices = plan.indices(cell)
  return run_cell(plan.config, cell, splits=plan.splits, poison_sets=poison_sets,
                  target_indices=target_indices, all_indices=all_indices,
                  workdir=plan.workdir)


def _results(plan: Plan, poison_sets: Mapping[str, PoisonSet],
             rows: Sequence[Mapping[str, Any]], t_start: float,
             missing: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
  """Computes drops, comparisons, aggregates and sweep curves of the finished ``rows``;
  writes results.json and results.md, then the figures."""
  config, workdir = plan.config, plan.workdir
  cells = {c.name: c for c in plan.cells}
  points = {r['cell']: _certified_points(workdir, r['cell'],
                                         plan.indices(cells[r['cell']])[0])
            for r in rows}
  rows = metrics.add_paired_comparisons(metrics.add_acr_drops(rows), {
      cell: metrics.effective_radius(p['radius'], p['correct'])
      for cell, p in points.items()})
  aggregates = metrics.aggregate_rows(rows)
  poisons = {name: {'poison': p.poison, 'crafted_against': p.crafted_against,
                    'setting': p.setting, 'path': p.path, 'metadata': p.metadata,
                    'seconds': float(p.metadata.get('attack_seconds', 0.0)),
                    'statistics': metrics.perturbation_statistics(p.clean_images,
                                                                  p.poisons)}
             for name, p in poison_sets.items()}
  axes = sweep_axes(config)
  base_indices = plan.points[int(config.target_class)][0]
  results = {
      'config': config.to_dict(), 'rows': rows, 'aggregates': aggregates,
      # Along the base point only: a sweep's other points would overwrite its cells.
      'transfer_matrix': metrics.transfer_matrix(
          [a for a in aggregates if a.get('sweep_axis') is None]),
      'sweeps': {axis: metrics.sweep_series(aggregates, axis) for axis in axes},
      'poisons': poisons,
      'certified_points': [int(i) for i in base_indices],
      'certified_points_by_class': {str(k): [int(i) for i in v[0]]
                                    for k, v in plan.points.items()},
      'missing': {k: list(v) for k, v in (missing or {}).items()},
      'machine': report.machine_info(),
      'total_seconds': (sum(p['seconds'] for p in poisons.values()) +
                        sum(r['time'] for r in rows)),
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
    results = report.write_results(workdir,
                                   dict(results, wall_seconds=time.time() - t_start))
  logging.info('Protocol %s: wrote %s.', config.name, os.path.join(workdir, 'results.md'))
  return results


def run_protocol(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole protocol in this process; writes and returns the
  results.

  Args:
    config: a protocol config (``rsp/configs/protocol*.py``).
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
  plan = prepare(config, workdir)
  logging.info('Protocol %s: %d poison sets, %d cells in %s.', config.name,
               len(plan.poison_keys), len(plan.cells), workdir)
  for key in plan.poison_keys:
    if not plan.poison_done(key):
      _record_computation(workdir, poison_item(key), functools.partial(
          make_poison_set, config, key, plan.splits, workdir))
  poison_sets = load_poison_sets(config, plan.splits, workdir, plan.poison_keys)
  rows = []
  for i, cell in enumerate(plan.cells):
    compute = functools.partial(_compute_cell, plan, cell, poison_sets)
    rows.append(compute() if plan.cell_done(cell) else
                _record_computation(workdir, cell.name, compute))
    logging.info('Protocol cell %d/%d %s: ACR %.4f, clean accuracy %.4f.', i + 1,
                 len(plan.cells), cell.name, rows[-1]['acr'], rows[-1]['clean_accuracy'])
  return _results(plan, poison_sets, rows, t_start)


# ------------------------------------------------------------------------------------
# Fan-out: workers that share a workdir, a report of what is done, a launcher.


def run_worker(config: ml_collections.ConfigDict, workdir: str, *,
               shard: str | tuple[int, int] | None = None, lease_seconds: float = 600.0,
               poll_seconds: float | None = None) -> dict[str, list[str]]:
  """One of many workers on a shared workdir (``rsp.grid``); writes no results.

  Two claimed phases (``rsp.grid.run_claimed``; a claim's heartbeat keeps it, and a
  dead worker's item is taken over once ``lease_seconds`` have passed):

  1. the poison sets, shared out among all the workers, who then wait until every set
     exists (``wait_for_others``: the last worker standing makes what a dead one
     left), since any cell may need any set;
  2. the cells: all of them (work stealing), or shard i of N (``shard='i/N'``: cells i,
     i + N, ... of ``resolve_cells``' order), each under its claim, so that no cell is
     computed twice; the worker returns after one pass, leaving cells that other
     workers hold to them (a cell left by a dead worker is taken by the next worker
     started once its lease has passed; ``report_protocol`` lists it).

  Then ``report_protocol`` aggregates the finished cells.

  Args:
    config, workdir: the protocol; every worker must be given the same.
    shard: None, ``'i/N'`` or ``(i, N)``.
    lease_seconds: how long a claim lives without a heartbeat (every worker of a grid
      uses the same value): minutes on a network filesystem.
    poll_seconds: how often a worker waiting for others' poison sets looks again;
      default ``rsp.grid.run_claimed``'s (a quarter of the lease, at most 60 s).

  Returns:
    ``{'poison_sets': [...], 'cells': [...]}``: the names of what this worker computed.
  """
  if shard is not None:
    grid_lib.shard_items([], *(grid_lib.parse_shard(shard) if isinstance(shard, str)
                               else shard))  # Refuses a bad shard before any work.
  plan = prepare(config, workdir)
  keys = {poison_item(k): k for k in plan.poison_keys}
  made = grid_lib.run_claimed(
      workdir, list(keys),
      lambda item: _record_computation(workdir, item, functools.partial(
          make_poison_set, config, keys[item], plan.splits, workdir)),
      is_done=lambda item: plan.poison_done(keys[item]), lease_seconds=lease_seconds,
      wait_for_others=True, poll_seconds=poll_seconds)
  poison_sets = load_poison_sets(config, plan.splits, workdir, plan.poison_keys)
  cells = {c.name: c for c in plan.cells}
  ran = grid_lib.run_claimed(
      workdir, list(cells),
      lambda name: _record_computation(workdir, name, functools.partial(
          _compute_cell, plan, cells[name], poison_sets)),
      is_done=lambda name: plan.cell_done(cells[name]), lease_seconds=lease_seconds,
      shard=shard, poll_seconds=poll_seconds)
  logging.info('Worker %s:%d computed %d poison sets and %d cells.',
               socket.gethostname(), os.getpid(), len(made), len(ran))
  return {'poison_sets': [keys[i].name for i in made], 'cells': ran}


def grid_status(config: ml_collections.ConfigDict, workdir: str, *,
                lease_seconds: float = 600.0) -> str:
  """``rsp.grid.report`` of the protocol's work items (``poison_item`` names, then the
  cells): counts of done, running, abandoned and to-do items, then one line per
  unfinished item with its claim's holder. Reads the workdir only (no data)."""
  cells = resolve_cells(config)
  done = {poison_item(k): functools.partial(os.path.isfile, poison_path(workdir, k))
          for k in poison_keys(config, cells)}
  done.update({c.name: functools.partial(
      os.path.isfile, os.path.join(workdir, 'cells', c.name, 'result.json'))
               for c in cells})
  return grid_lib.report(workdir, list(done), is_done=lambda item: done[item](),
                         lease_seconds=lease_seconds)


def report_protocol(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Aggregates the finished cells of a workdir without computing anything.

  Writes ``results.json`` and ``results.md`` (and the figures) from the cells whose
  ``result.json`` exists and the poison sets that are made; ``results['missing']``
  names the poison sets and cells not finished (``results.md`` lists them first).

  Raises:
    ValueError: a bad config, a workdir without a protocol run, or one made with other
      settings; before anything is written.
  """
  t_start = time.time()
  plan = prepare(config, workdir, for_report=True)
  poison_sets = load_poison_sets(config, plan.splits, workdir, plan.poison_keys,
                                 missing_ok=True)
  rows = [workdir_lib.read_json(os.path.join(workdir, 'cells', c.name, 'result.json'))
          for c in plan.cells if plan.cell_done(c)]
  missing = {'poison_sets': [k.name for k in plan.poison_keys if not plan.poison_done(k)],
             'cells': [c.name for c in plan.cells if not plan.cell_done(c)]}
  return _results(plan, poison_sets, rows, t_start, missing=missing)


def _launched_worker(config: dict[str, Any], workdir: str, lease_seconds: float,
                     poll_seconds: float | None) -> dict[str, list[str]]:
  """What each launched worker runs (picklable by reference)."""
  checkpointing.quiet_orbax_logging()
  logging.set_verbosity(logging.INFO)
  return run_worker(ml_collections.ConfigDict(config), workdir,
                    lease_seconds=lease_seconds, poll_seconds=poll_seconds)


def launch(config: ml_collections.ConfigDict, workdir: str, *, workers: int,
           executor: str = 'local', lease_seconds: float = 600.0,
           poll_seconds: float | None = None, **submit_kwargs: Any) -> dict[str, Any]:
  """Launches ``workers`` work-stealing workers (``run_worker``) through
  ``rsp.grid.submit``, waits for them, then reports (``report_protocol``).

  The config and the workdir are checked once here, and ``config.json`` written,
  before any worker starts; each worker checks them again (cheaply) when it starts.
  The workers make the poison sets first (a claimed phase) and then the cells.

  Args:
    config, workdir: the protocol; on SLURM the workdir (and the code) must be on a
      filesystem every node sees.
    workers: how many workers, >= 1.
    executor: 'local' (processes on this machine) or 'slurm' (one job array).
    lease_seconds, poll_seconds: see ``run_worker``.
    **submit_kwargs: ``rsp.grid.submit``'s ``timeout_min``, ``gpus_per_worker``,
      ``cpus_per_worker``, ``mem_gb``, ``slurm_kwargs`` (``partition``, ...),
      ``local_gpus``; the worker logs go to ``WORKDIR/grid_logs``.

  Returns:
    ``report_protocol``'s results.

  Raises:
    ValueError: a bad argument, config or workdir, before any worker starts.
    rsp.grid.GridJobError: a worker failed (the others ran to their end).
  """
  validation.check_int('--workers', workers, 1)
  validation.check_choice('--executor', executor, grid_lib.EXECUTORS)
  prepare(config, workdir)
  jobs = grid_lib.submit(
      _launched_worker,
      [(config.to_dict(), workdir, lease_seconds, poll_seconds)] * workers,
      executor=executor, folder=os.path.join(workdir, 'grid_logs'),
      job_name=f'rsp-{config.name}', **submit_kwargs)
  grid_lib.wait(jobs)
  return report_protocol(config, workdir)


def run_command(config: ml_collections.ConfigDict, workdir: str, *,
                shard: str | None = None, report_only: bool = False, workers: int = 0,
                executor: str = 'local', lease_seconds: float = 600.0,
                **submit_kwargs: Any) -> str:
  """What ``experiments/run.py`` does with its flags; returns the text it prints.

  * no flag: the whole protocol in this process (``run_protocol``);
  * ``shard``: one worker on shard i of N (``run_worker``);
  * ``report_only`` (``--report``): ``report_protocol``, computing nothing;
  * ``workers`` K >= 1: ``launch`` K workers with ``executor`` and ``submit_kwargs``
    (``rsp.grid.submit``'s; unused otherwise).

  Raises:
    ValueError: flags that do not go together or a bad value (named as the flag),
      before any work.
  """
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
    raise ValueError(f'--workers={workers!r} must be an integer >= 0 (0: no launcher).')
  validation.check_choice('--executor', executor, grid_lib.EXECUTORS)
  if report_only and (shard or workers):
    raise ValueError(f'--report computes nothing, so it takes no --shard or --workers '
                     f'(got --shard={shard!r}, --workers={workers}).')
  if shard and workers:
    raise ValueError(f'--shard={shard!r} runs this process as one worker and '
                     f'--workers={workers} launches workers; accepted: one of them (for '
                     'a job array of --shard workers, see docs/cluster.md).')
  if executor != 'local' and not workers:
    raise ValueError(f'--executor={executor!r} launches workers: give --workers=K.')
  if submit_kwargs.get('slurm_kwargs') and executor != 'slurm':
    raise ValueError(f'--partition (SLURM options {submit_kwargs["slurm_kwargs"]}) is '
                     f'for --executor=slurm, not --executor={executor!r}.')
  if shard:
    grid_lib.parse_shard(shard)  # Refused before any work.
    done = run_worker(config, workdir, shard=shard, lease_seconds=lease_seconds)
    return (f'Shard {shard}: computed {len(done["poison_sets"])} poison sets and '
            f'{len(done["cells"])} cells ({", ".join(done["cells"]) or "none"}).\n'
            + grid_status(config, workdir, lease_seconds=lease_seconds)
            + '\nRun with --report to aggregate the finished cells.')
  if report_only:
    results = report_protocol(config, workdir)
  elif workers:
    results = launch(config, workdir, workers=workers, executor=executor,
                     lease_seconds=lease_seconds, **submit_kwargs)
  else:
    results = run_protocol(config, workdir)
  with open(os.path.join(workdir, 'results.md')) as f:
    text = f.read()
  text += (f'\n{len(results["rows"])} victims; wrote {workdir}/results.json, '
           'results.md' + (' and figures/' if results['figures'] else '') + '.')
  if report_only or workers:  # What the workers have done, and hold.
    text += '\n' + grid_status(config, workdir, lease_seconds=lease_seconds)
  return text
