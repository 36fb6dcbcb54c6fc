r"""The protocol's grid: cells, poison sets' keys, sweeps, nested configs, checks, specs.

A protocol config (``rsp/configs/protocol*.py``) describes a grid; this module resolves it
without doing any work, and ``rsp.protocol`` runs it:

* ``resolve_cells``: one ``Cell`` per victim (training method x architecture x training
  set x seed, and sweep point), ``poison_keys``: one ``PoisonKey`` per poison set;
* ``attack_config`` / ``victim_config`` / ``certification_sigma``: the nested configs a
  poison set and a cell run with, the protocol's shared fields filled in;
* ``validate_config``: every setting, nested configs included, checked before any work
  (errors name each field by its full path);
* ``poison_spec`` / ``cell_spec`` / ``check_workdir``: what a poison set and a cell are
  made from, so that a restart refuses a workdir made with other settings;
* ``certification_points``: the seeded certified test points of each target class.

**Sweeps.** ``config.sweep.axes`` names axes among eps, poison_fraction, victim_sigma,
target_class and victim_epochs; the grid is then the base point (the config's own
values) and each value of each axis with the others at the base point
(``sweep_points``). A cell
records where it departs from the base point (``Cell``; None: the base value) and only
where that changes its numbers, so cells that share a victim are one cell: a clean
victim is certified once per (method, arch, victim sigma, target class, seed), whatever
the eps or fraction, and trained once per (method, arch, victim sigma, seed): the clean
victims of the other target classes copy its training run (``rsp.protocol.warm_start``);
a poison set (``PoisonKey``) is made once per (kind, method, eps,
fraction, target class), whatever the victims' sigma. The random baseline of each
budget sits beside the PACD cells of that budget. Names show the departures:
``gaussian-lenet-pacd_gaussian-eps0.05-seed0``, ``gaussian-lenet-none-sigma1-seed0``;
a grid without sweeps has the names it always had.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from rsp import attack as attack_lib
from rsp import baselines
from rsp import data as data_lib
from rsp import defense_cells
from rsp import metrics
from rsp import models
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
             'checkpoint_every_steps', 'checkpoint_every_epochs', 'remat', 'unroll')
# Fields the protocol sets in every nested config from its own.
_SHARED = ('dataset', 'data_dir', 'data_seed', 'target_class')
# ... and in every nested attack config (the poison set's budget).
_ATTACK_SHARED = _SHARED + ('eps', 'poison_fraction', 'poison_subset_seed')
# How a name shows where a cell or a poison set departs from the base point.
_AXIS_TAGS = {'target_class': 'class', 'eps': 'eps', 'poison_fraction': 'frac',
              'victim_sigma': 'sigma', 'victim_epochs': 'ep'}
# The axes a poison set depends on (a victim's sigma or epochs do not change the poisons).
POISON_AXES = ('target_class', 'eps', 'poison_fraction')
# The axes a clean victim depends on.
VICTIM_AXES = ('target_class', 'victim_sigma', 'victim_epochs')


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
    return kind + _tag(self, POISON_AXES)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One victim: a training method, an architecture, a training set and a seed, at a
  point of the sweep axes.

  The five fields after the seed say where the cell departs from the protocol's base
  point: None is ``config.target_class``, ``config.eps``, ``config.poison_fraction``, or
  the training sigma or number of epochs of ``config.victims[train_method]``.
  ``resolve_cells`` sets only the departures that change the cell's numbers (a clean
  victim has no eps or fraction), so that cells that share a victim are one cell.
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
  victim_epochs: int | None = None    # The victim's number of training epochs.
  defense: str = 'none'  # 'none' or one of config.defenses (rsp.defense_cells).

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
    'gaussian-lenet-none-sigma1-seed0', 'gaussian-lenet-none-class3-seed0',
    'gaussian-lenet-none-ep100-seed0'."""
    defense = '' if self.defense == 'none' else f'-{self.defense}'
    return (f'{self.train_method}-{self.arch}-{self.poison_set}'
            f'{_tag(self, ("victim_sigma", "victim_epochs"))}{defense}-seed{self.seed}')




def field_names(config: ml_collections.ConfigDict, field: str) -> tuple[str, ...]:
  return validation.names(f'config.{field}', config[field])


def poison_file_method(config: ml_collections.ConfigDict) -> str:
  meta = data_lib.load_poisons(config.poison_file)['metadata']
  return str(meta.get('method') or 'file')


def pacd_methods(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The training methods the PACD poisons are crafted against (one 'pacd' set each)."""
  if 'pacd' not in field_names(config, 'poison_kinds'):
    return ()
  if config.get('poison_file'):
    return (poison_file_method(config),)
  return field_names(config, 'crafted_against')


def own_sigma(config: ml_collections.ConfigDict, method: str) -> float | None:
  """The training sigma of ``config.victims[method]`` (None: it trains without noise)."""
  victim = config.victims.get(method) if 'victims' in config else None
  sigma = None if victim is None else victim.get('loss', {}).get('sigma', None)
  return None if sigma is None else float(sigma)


def own_epochs(config: ml_collections.ConfigDict, method: str) -> int | None:
  """The number of training epochs of ``config.victims[method]`` (None: no such victim)."""
  victim = config.victims.get(method) if 'victims' in config else None
  return None if victim is None else int(victim.num_epochs)


def _base(config: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
  return {'target_class': int(config.target_class), 'eps': float(config.eps),
          'poison_fraction': float(config.get('poison_fraction', 1.0)),
          'victim_sigma': own_sigma(config, method),
          'victim_epochs': own_epochs(config, method)}


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
  ``victim_epochs`` (the sweep's coordinates: a training-time defense may train
  otherwise), ``eps`` and ``poison_fraction`` (None for 'none' and 'no_target'), as in
  its row."""
  out = poison_setting(config, cell)
  sigma = own_sigma(config, cell.train_method) if cell.victim_sigma is None else \
      float(cell.victim_sigma)
  epochs = own_epochs(config, cell.train_method) if cell.victim_epochs is None else \
      int(cell.victim_epochs)
  return {'target_class': out['target_class'], 'victim_sigma': sigma,
          'victim_epochs': epochs, 'eps': out['eps'],
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
      item = int(item) if axis in ('target_class', 'victim_epochs') else float(item)
    except ValueError:
      pass
  if axis == 'victim_epochs':
    if not validation.is_int(item) or item < 1:
      raise ValueError(f"{name} a number of epochs must be an integer >= 1 (the victims' "
                       'training length).')
    return int(item)
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
                if value != base[axis] and (axis in VICTIM_AXES or
                                            cell.poison in BUDGETED)}
  return dataclasses.replace(cell, **departures)


def resolve_cells(config: ml_collections.ConfigDict) -> list[Cell]:
  """The grid of victims, in the order they are trained.

  Every training method x training set x seed on ``config.archs[0]``; the other
  architectures with the methods in ``config.other_arch_methods`` (all if empty).
  Training sets: each of ``config.poison_kinds``, 'pacd' once per ``pacd_methods``
  (with ``config.pacd_victims='own'``, a method's victims train only on the PACD set
  crafted against that method).
  All of it at the base point, then at each point of ``sweep_points``; a cell that
  two points share (the clean victim at every eps) appears once, where first met.
  Then each defense of ``config.defenses`` but 'none': that grid again ('dpa': once
  per training set and seed, with ``config.dpa_victim``'s method and model).
  """
  methods = field_names(config, 'train_methods')
  other = field_names(config, 'other_arch_methods') or methods
  seeds = validation.distinct_ints('config.seeds', config.seeds)
  own_only = config.get('pacd_victims', 'all') == 'own'
  cells = [_at_point(config, Cell(method, arch, kind, against, seed), point)
           for point in sweep_points(config)
           for a, arch in enumerate(field_names(config, 'archs'))
           for method in methods if a == 0 or method in other
           for kind in field_names(config, 'poison_kinds')
           for against in (pacd_methods(config) if kind == 'pacd' else ('',))
           if not (against and own_only and against != method)
           for seed in seeds]
  grid = list(dict.fromkeys(cells))
  sets = list(dict.fromkeys(
      dataclasses.replace(c, train_method='', arch='', victim_sigma=None,
                          victim_epochs=None) for c in grid))
  return grid + [
      dataclasses.replace(c, defense=d) for d in defense_cells.names(config)[1:]
      for c in (grid if d != defense_cells.DPA else
                [dataclasses.replace(s, train_method=config.dpa_victim.method,
                                     arch=config.dpa_victim.model) for s in sets])]


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
  """The training config of ``cell``'s victim: ``config.victims[train_method]`` (DPA's
  base classifiers: ``config.dpa_victim``) with the protocol's data and target class,
  the cell's architecture, seed, target class and training sigma, and its
  training-time defense's fields."""
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
  if cell.target_class is not None:
    c.target_class = int(cell.target_class)
  if cell.victim_sigma is not None:
    c.loss.sigma = float(cell.victim_sigma)
  if cell.victim_epochs is not None:
    c.num_epochs = int(cell.victim_epochs)
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
  kinds = field_names(config, 'poison_kinds')
  validation.check_choices('config.poison_kinds', kinds, POISON_KINDS)
  if 'none' not in kinds:
    raise ValueError(f"config.poison_kinds={config.poison_kinds!r} must include 'none': "
                     'the ACR drops are measured against the clean victims.')
  archs = field_names(config, 'archs')
  if not archs:
    raise ValueError('config.archs is empty; name at least one victim architecture.')
  validation.check_choices('config.archs', archs, models.MODELS)
  for arch in archs:
    if tuple(models.input_shape(arch)) != tuple(info['shape']):
      raise ValueError(f'config.archs: {arch!r} takes images of shape '
                       f'{models.input_shape(arch)}, but config.dataset='
                       f'{config.dataset!r} has {info["shape"]}.')
  methods = field_names(config, 'train_methods')
  if not methods:
    raise ValueError('config.train_methods is empty; name at least one.')
  if set(field_names(config, 'other_arch_methods')) - set(methods):
    raise ValueError(f'config.other_arch_methods={config.other_arch_methods!r} must be '
                     f'a subset of config.train_methods={methods!r}.')
  validation.distinct_ints('config.seeds', config.seeds)
  validation.check_choice('config.pacd_victims', config.get('pacd_victims', 'all'),
                          ('all', 'own'))
  if config.get('pacd_victims', 'all') == 'own' and 'pacd' in kinds:
    unmatched = [m for m in pacd_methods(config) if m not in methods]
    if unmatched:
      raise ValueError(f"config.pacd_victims='own' but config.crafted_against has "
                       f'{unmatched}, which config.train_methods={methods!r} does not '
                       'train: those poisons would have no victim.')
  _validate_certify(config.certify)
  validation.check_int('config.num_figure_images', config.num_figure_images)
  _validate_sweep(config, methods)
  defense_cells.validate_config(config)
  cells = resolve_cells(config)
  for cell in cells:
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
    if axis not in ('victim_sigma', 'victim_epochs') and config.get('poison_file') and \
        'pacd' in field_names(config, 'poison_kinds'):
      raise ValueError(f'config.sweep.axes={config.sweep.axes!r} sweeps {axis!r}, but '
                       f'config.poison_file={config.poison_file!r} holds PACD poisons of '
                       'one budget and class only; accepted: no poison_file, or only the '
                       "'victim_sigma' and 'victim_epochs' axes.")
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
  spec['victims'] = {cell.train_method: _without(train_lib.recorded_config(victim),
                                                 _SHARED + ('seed', 'poison_file'))}
  spec['certify'] = None if cell.defense == defense_cells.DPA else {
      'sigma': certification_sigma(config, victim), 'n0': c.n0, 'n': c.n,
      'alpha': c.alpha, 'seed': c.seed}
  fields = dataclasses.asdict(cell)
  if cell.victim_epochs is None:  # As recorded before the epochs axis existed.
    del fields['victim_epochs']
  if cell.defense == 'none':  # As recorded before defenses existed.
    del fields['defense']
  else:
    spec['defense'] = defense_cells.defense_spec(config, cell.defense)
  spec['inputs'] = dict(
      spec.get('inputs', {}), cell=fields,
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
                                         *points[cell_class(config, cell)]),
                               resumable=RESUMABLE, what=f'victim ({cell.name})')


# ------------------------------------------------------------------------------------
# The certified points.


def cell_class(config: ml_collections.ConfigDict, cell: Cell) -> int:
  """The target class of ``cell``: its departure, or the config's."""
  return int(config.target_class if cell.target_class is None else cell.target_class)


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
  classes = dict.fromkeys(cell_class(config, c) for c in cells)
  return {cls: certification_indices(config, test, cls) for cls in classes}
