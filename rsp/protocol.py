r"""The evaluation protocol: poison, train victims from scratch, certify, report.

``run_protocol(config, workdir)`` is what ``experiments/run.py`` and the notebooks call.
For one protocol config (``rsp/configs/protocol*.py``) it

1. loads the data once and draws the certified points: a seeded subset of the target
   class's test points (and optionally of all test points), the same for every victim;
2. makes the poison sets: PACD (Mehra et al. 2021) against each attack method in
   ``config.attack_methods`` with its nested attack config (``rsp.attack.pacd``), or the
   file ``config.poison_file``; and the baselines on the same points, each within the
   same L-inf ball of radius eps:

   * ``random``: uniformly random +-eps sign noise, clipped to [0, 1] (on MNIST's black
     background the clipping makes it a one-sided brightening, FINDINGS.md);
   * ``random_uniform``: U[-eps, eps] noise, clipped;
   * ``random_zero_mean``: +-eps sign noise only on the pixels in [eps, 1 - eps], where
     no clipping happens, so the perturbation has mean zero (a control for the
     brightening above);
   * ``no_target``: no poisons but the target class's training images left out, which
     is how far deleting the class would go (a clean-label attacker cannot);

3. trains a victim from scratch (``rsp.train.train``) for every cell of the grid
   training method x architecture x training set x seed (``resolve_cells``);
4. certifies each victim with Cohen et al.'s CERTIFY (``rsp.smoothing.certify_dataset``)
   at its training sigma, with one key for all victims so that point ``idx`` sees the
   same noise in every cell (common random numbers: the differences between victims are
   not blurred by Monte Carlo noise of the certification);
5. writes ``results.json``, ``results.md`` and ``figures/``.

Metrics per victim (``rsp.metrics``): ACR = (1/m) sum_i R_i 1[correct_i] over the m
certified points (abstentions count 0), certified accuracy at r = 0, clean accuracy
(all classes and target class) of the base classifier, and the ACR drop against the
clean victim of the same training method, architecture and seed,
``(ACR_clean - ACR_poisoned) / ACR_clean``. Cells with several seeds are reported as
mean +- sample standard deviation.

Workdir layout (the workdir is the record; every stage resumes)::

    WORKDIR/config.json                      the resolved protocol config
    WORKDIR/poisons/pacd_<method>/           PACD's workdir (poisons.npz, checkpoints)
    WORKDIR/poisons/<baseline>.npz           random baselines
    WORKDIR/cells/<cell>/spec.json           what the cell is (checked on restart)
    WORKDIR/cells/<cell>/train/              the victim's training run
    WORKDIR/cells/<cell>/certify.tsv         Cohen's per-point log
    WORKDIR/cells/<cell>/result.json         written atomically when the cell is done
    WORKDIR/results.json, results.md, figures/*.png

A restarted run skips the finished cells (``result.json``), loads finished poisons and
trained victims, resumes an interrupted attack, training or certification from its
checkpoint or log, and ends with the same rows as an uninterrupted run. A workdir whose
cells were made with other settings is refused with a ValueError (use a new workdir).

Reference: A. Mehra, B. Kailkhura, P.-Y. Chen, J. Hamm, "How Robust are Randomized
Smoothing based Defenses to Data Poisoning?", CVPR 2021; J. Cohen, E. Rosenfeld,
Z. Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from rsp import attack as attack_lib
from rsp import certification
from rsp import data as data_lib
from rsp import metrics
from rsp import models
from rsp import plotting
from rsp import train as train_lib
from rsp import validation
from rsp import version

POISONS = ('none', 'pacd', 'random', 'random_uniform', 'random_zero_mean', 'no_target')
# The random baselines and the kind of noise each uses.
RANDOM_BASELINES = {'random': 'sign', 'random_uniform': 'uniform',
                    'random_zero_mean': 'zero_mean'}
POISON_LABELS = {
    'none': 'clean',
    'pacd': 'PACD',
    'random': 'random ±eps',
    'random_uniform': 'random U[-eps, eps]',
    'random_zero_mean': 'random ±eps, zero-mean',
    'no_target': 'target class removed',
}

# Fields that do not change a cell's or an attack's numbers: a restarted run may change
# them without being refused.
_VICTIM_LOG_FIELDS = ('log_every_steps', 'eval_batch_size', 'eval_every_epochs')
_ATTACK_LOG_FIELDS = ('log_every_steps', 'checkpoint_every_steps', 'remat', 'unroll')


# ------------------------------------------------------------------------------------
# The grid.


@dataclasses.dataclass(frozen=True)
class Cell:
  """One victim: a training method, an architecture, a training set and a seed."""
  train_method: str
  arch: str
  poison: str       # one of POISONS
  attack: str       # the attack method the PACD poisons target; '' for other poisons
  seed: int

  @property
  def poison_set(self) -> str:
    """The training set's name: 'pacd_<attack>' or the poison kind."""
    return f'pacd_{self.attack}' if self.poison == 'pacd' else self.poison

  @property
  def name(self) -> str:
    return f'{self.train_method}-{self.arch}-{self.poison_set}-seed{self.seed}'


@dataclasses.dataclass
class PoisonSet:
  """Perturbed target-class training images replacing the clean ones."""
  name: str                 # 'pacd_<method>' or a random baseline's name
  poison: str               # 'pacd' or a random baseline's name
  attack: str               # the attack method ('' for baselines)
  indices: np.ndarray       # [P] indices into the training split
  poisons: np.ndarray       # [P, H, W, C]
  clean_images: np.ndarray  # [P, H, W, C]
  metadata: dict[str, Any]
  path: str


def _names(value: Any, field: str) -> tuple[str, ...]:
  """A tuple of names from a tuple, list or comma-separated string (command lines)."""
  if isinstance(value, str):
    value = (value,)
  if not isinstance(value, (tuple, list)):
    raise ValueError(f'config.{field}={value!r} must be a tuple of names.')
  out = []
  for item in value:
    if not isinstance(item, str):
      raise ValueError(f'config.{field}={value!r} must hold names (strings).')
    out.extend(p.strip() for p in item.split(',') if p.strip())
  if len(set(out)) != len(out):
    raise ValueError(f'config.{field}={value!r} repeats a name.')
  return tuple(out)


def _seeds(value: Any) -> tuple[int, ...]:
  if isinstance(value, (int, np.integer)):
    value = (value,)
  if isinstance(value, str):
    value = tuple(p for p in value.split(',') if p.strip())
  try:
    seeds = tuple(int(s) for s in value)
  except (TypeError, ValueError):
    raise ValueError(f'config.seeds={value!r} must be a tuple of integers.') from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(f'config.seeds={value!r} must be distinct integers >= 0, at least '
                     'one.')
  return seeds


def _poison_file_method(config: ml_collections.ConfigDict) -> str:
  meta = data_lib.load_poisons(config.poison_file)['metadata']
  return str(meta.get('method') or 'file')


def attack_methods(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The attacks whose PACD poisons the victims train on ('pacd' cells)."""
  if 'pacd' not in _names(config.poisons, 'poisons'):
    return ()
  if config.get('poison_file'):
    return (_poison_file_method(config),)
  return _names(config.attack_methods, 'attack_methods')


def resolve_cells(config: ml_collections.ConfigDict) -> list[Cell]:
  """The grid of victims, in the order they are trained.

  Every training method x training set x seed on ``config.archs[0]``; the other
  architectures with the methods in ``config.other_arch_methods`` (all if empty).
  Training sets: each of ``config.poisons``, with 'pacd' once per attack method.
  """
  methods = _names(config.train_methods, 'train_methods')
  other = _names(config.other_arch_methods, 'other_arch_methods') or methods
  attacks = attack_methods(config)
  cells = []
  for a, arch in enumerate(_names(config.archs, 'archs')):
    for method in methods:
      if a > 0 and method not in other:
        continue
      for poison in _names(config.poisons, 'poisons'):
        for attack in (attacks if poison == 'pacd' else ('',)):
          for seed in _seeds(config.seeds):
            cells.append(Cell(method, arch, poison, attack, seed))
  return cells


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An unlocked deep copy (config_flags hands out locked configs)."""
  return ml_collections.ConfigDict(config.to_dict())


def attack_config(config: ml_collections.ConfigDict, method: str
                  ) -> ml_collections.ConfigDict:
  """The nested attack config ``config.attacks[method]`` with the protocol's data,
  target class and eps."""
  if method not in config.attacks:
    raise ValueError(f'config.attack_methods names {method!r} but config.attacks has no '
                     f'such entry; it has {sorted(config.attacks)}.')
  c = _copy(config.attacks[method])
  c.dataset = config.dataset
  c.data_dir = config.get('data_dir', '')
  c.data_seed = config.data_seed
  c.target_class = config.target_class
  c.eps = config.eps
  return c


def victim_config(config: ml_collections.ConfigDict, cell: Cell
                  ) -> ml_collections.ConfigDict:
  """The training config of ``cell``'s victim: ``config.victims[train_method]`` with the
  protocol's data and target class, the cell's architecture and seed."""
  if cell.train_method not in config.victims:
    raise ValueError(f'config.train_methods names {cell.train_method!r} but '
                     f'config.victims has no such entry; it has {sorted(config.victims)}.')
  c = _copy(config.victims[cell.train_method])
  c.dataset = config.dataset
  c.data_dir = config.get('data_dir', '')
  c.data_seed = config.data_seed
  c.target_class = config.target_class
  c.seed = cell.seed
  c.poison_file = ''  # The protocol hands the training set over directly.
  if c.model != cell.arch:
    c.model = cell.arch
    c.model_kwargs = ml_collections.ConfigDict()
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


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a protocol config that cannot work, before any work."""
  validation.check_choice('config.dataset', config.dataset, data_lib.DATASETS)
  info = data_lib.info(config.dataset)
  if not isinstance(config.target_class, int) or \
      not 0 <= config.target_class < info['num_classes']:
    raise ValueError(f'config.target_class={config.target_class!r} must be an integer in '
                     f'[0, {info["num_classes"]}).')
  if not 0 < config.eps <= 1:
    raise ValueError(f'config.eps={config.eps} must be in (0, 1].')
  poisons = _names(config.poisons, 'poisons')
  unknown = [p for p in poisons if p not in POISONS]
  if unknown:
    raise ValueError(f'config.poisons={config.poisons!r} has unknown {unknown}; accepted: '
                     f'{", ".join(POISONS)}.')
  if 'none' not in poisons:
    raise ValueError(f"config.poisons={config.poisons!r} must include 'none': the ACR "
                     'drops are measured against the clean victims.')
  archs = _names(config.archs, 'archs')
  if not archs:
    raise ValueError('config.archs is empty; name at least one victim architecture.')
  for arch in archs:
    if arch not in models.MODELS:
      raise ValueError(f'config.archs: {arch!r} is not known; accepted: '
                       f'{", ".join(models.MODELS)}.')
    if tuple(models.input_shape(arch)) != tuple(info['shape']):
      raise ValueError(f'config.archs: {arch!r} takes images of shape '
                       f'{models.input_shape(arch)}, but config.dataset='
                       f'{config.dataset!r} has {info["shape"]}.')
  methods = _names(config.train_methods, 'train_methods')
  if not methods:
    raise ValueError('config.train_methods is empty; name at least one.')
  other = _names(config.other_arch_methods, 'other_arch_methods')
  if set(other) - set(methods):
    raise ValueError(f'config.other_arch_methods={config.other_arch_methods!r} must be '
                     f'a subset of config.train_methods={methods!r}.')
  _seeds(config.seeds)
  c = config.certify
  validation.check_ints('config.certify.', c, ('n0', 'n', 'batch_size', 'num_points'))
  validation.check_int('config.certify.all_classes_points', c.all_classes_points, 0,
                       meaning='0: target class only')
  if not 0 < c.alpha < 0.5:
    raise ValueError(f'config.certify.alpha={c.alpha} must be in (0, 0.5).')
  validation.check_int('config.num_figure_images', config.num_figure_images)
  for cell in resolve_cells(config):
    victim = victim_config(config, cell)
    train_lib.validate_config(victim)
    certification_sigma(config, victim)
  if 'pacd' in poisons:
    if config.get('poison_file'):
      meta = data_lib.load_poisons(config.poison_file)['metadata']
      for key in ('dataset', 'target_class'):
        if key in meta and meta[key] != config[key]:
          raise ValueError(f'config.poison_file={config.poison_file!r} was made with '
                           f'{key}={meta[key]!r}, but config.{key}={config[key]!r}.')
      if float(meta['eps']) > config.eps + 1e-9:
        raise ValueError(f'config.poison_file={config.poison_file!r} has eps='
                         f'{meta["eps"]}, beyond config.eps={config.eps}.')
    else:
      if not attack_methods(config):
        raise ValueError("config.poisons has 'pacd' but config.attack_methods is empty "
                         'and config.poison_file is unset.')
      for method in attack_methods(config):
        attack_lib.validate_config(attack_config(config, method))


def _plain(obj: Any) -> Any:
  """JSON's view of ``obj`` (tuples become lists), for comparing settings."""
  return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def _json_default(obj: Any) -> Any:
  if hasattr(obj, 'to_dict'):
    return obj.to_dict()
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f'{type(obj).__name__} is not JSON serialisable.')


def _without(d: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
  return {k: v for k, v in d.items() if k not in fields}


def _attack_spec(config: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
  c = attack_config(config, method).to_dict()
  c['attack'] = _without(c['attack'], _ATTACK_LOG_FIELDS)
  return _plain(c)


def _baseline_spec(config: ml_collections.ConfigDict, poison: str) -> dict[str, Any]:
  return _plain({'kind': poison, 'noise': RANDOM_BASELINES[poison], 'seed': config.seed,
                 'eps': config.eps, 'dataset': config.dataset,
                 'data_seed': config.data_seed, 'target_class': config.target_class})


def cell_spec(config: ml_collections.ConfigDict, cell: Cell,
              target_indices: np.ndarray, all_indices: np.ndarray | None
              ) -> dict[str, Any]:
  """Everything that determines a cell's numbers (compared on restart)."""
  victim = victim_config(config, cell)
  if cell.poison == 'pacd':
    source = ({'poison_file': os.path.abspath(config.poison_file)}
              if config.get('poison_file') else _attack_spec(config, cell.attack))
  elif cell.poison in RANDOM_BASELINES:
    source = _baseline_spec(config, cell.poison)
  else:
    source = {'kind': cell.poison}
  c = config.certify
  return _plain({
      'cell': dataclasses.asdict(cell),
      'victim': _without(victim.to_dict(), _VICTIM_LOG_FIELDS),
      'poisons': source,
      'certify': {'sigma': certification_sigma(config, victim), 'n0': c.n0, 'n': c.n,
                  'alpha': c.alpha, 'seed': c.seed,
                  'indices': [int(i) for i in target_indices],
                  'all_classes_indices': (None if all_indices is None
                                          else [int(i) for i in all_indices])},
  })


def _differences(before: Any, now: Any, prefix: str = '') -> list[str]:
  if isinstance(before, dict) and isinstance(now, dict):
    out = []
    for k in sorted(set(before) | set(now)):
      out += _differences(before.get(k), now.get(k), f'{prefix}{k}.')
    return out
  if before != now:
    short = lambda v: (repr(v)[:60] + '...') if len(repr(v)) > 60 else repr(v)
    return [f'{prefix[:-1]}: {short(before)} -> {short(now)}']
  return []


def check_workdir(config: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell],
                  target_indices: np.ndarray, all_indices: np.ndarray | None) -> None:
  """Refuses (ValueError) a workdir whose poisons or cells were made with other settings.

  A restarted run may add cells (more seeds, methods, baselines) but must not silently
  mix numbers made under different settings.
  """
  problems = []
  if 'pacd' in _names(config.poisons, 'poisons') and not config.get('poison_file'):
    for method in attack_methods(config):
      path = os.path.join(workdir, 'poisons', f'pacd_{method}', 'config.json')
      if os.path.isfile(path):
        before = metrics.read_json(path)
        before['attack'] = _without(before.get('attack', {}), _ATTACK_LOG_FIELDS)
        diff = _differences(_plain(before), _attack_spec(config, method))
        if diff:
          problems.append(f'poisons/pacd_{method}: {"; ".join(diff[:3])}')
  for poison in RANDOM_BASELINES:
    path = os.path.join(workdir, 'poisons', f'{poison}.npz')
    if poison in _names(config.poisons, 'poisons') and os.path.isfile(path):
      meta = data_lib.load_poisons(path)['metadata']
      diff = _differences(_plain(meta.get('spec')), _baseline_spec(config, poison))
      if diff:
        problems.append(f'poisons/{poison}.npz: {"; ".join(diff[:3])}')
  for cell in cells:
    path = os.path.join(workdir, 'cells', cell.name, 'spec.json')
    if os.path.isfile(path):
      diff = _differences(metrics.read_json(path),
                          cell_spec(config, cell, target_indices, all_indices))
      if diff:
        problems.append(f'cells/{cell.name}: {"; ".join(diff[:3])}')
  if problems:
    raise ValueError(f'workdir={workdir!r} holds results made with other settings '
                     f'({" | ".join(problems[:4])}); use a new workdir or restore the '
                     'settings.')


# ------------------------------------------------------------------------------------
# Poison sets.


def zero_mean_random_poisons(key: jax.Array, train: Mapping[str, np.ndarray], *,
                             target_class: int, eps: float
                             ) -> tuple[np.ndarray, np.ndarray]:
  """+-eps sign noise on the target class's pixels in [eps, 1 - eps] only.

  No pixel is clipped, so ``E[delta] = 0`` exactly: the control for the one-sided
  brightening that clipping turns ``rsp.attack.random_poisons(kind='sign')`` into on
  MNIST's black background (FINDINGS.md). Pixels within eps of 0 or 1 stay unchanged.

  Returns:
    ``(indices, poisons)`` as ``rsp.attack.random_poisons``.
  """
  idx = data_lib.class_indices(train, target_class)
  clean = np.asarray(train['image'], np.float32)[idx]
  signs = np.asarray(jax.random.rademacher(key, clean.shape, np.float32))
  interior = (clean >= eps) & (clean <= 1.0 - eps)
  poisons = np.clip(clean + np.float32(eps) * signs * interior, 0.0, 1.0)
  return idx, poisons.astype(np.float32)


def _baseline_key(config: ml_collections.ConfigDict, poison: str) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.seed), POISONS.index(poison))


def _load_poison_set(name: str, poison: str, attack: str, path: str,
                     train: Mapping[str, np.ndarray]) -> PoisonSet:
  f = data_lib.load_poisons(path, train=train)
  return PoisonSet(name=name, poison=poison, attack=attack, indices=f['indices'],
                   poisons=f['poisons'], clean_images=f['clean_images'],
                   metadata=f['metadata'], path=path)


def make_poison_sets(config: ml_collections.ConfigDict,
                     splits: Mapping[str, Mapping[str, np.ndarray]], workdir: str
                     ) -> dict[str, PoisonSet]:
  """PACD poisons per attack method and the random baselines; loaded if already made.

  Returns:
    ``{name: PoisonSet}`` with names ``pacd_<method>`` and the baselines' names.
  """
  train = splits['train']
  out = {}
  poisons = _names(config.poisons, 'poisons')
  if 'pacd' in poisons:
    if config.get('poison_file'):
      method = _poison_file_method(config)
      out[f'pacd_{method}'] = _load_poison_set(f'pacd_{method}', 'pacd', method,
                                               config.poison_file, train)
    for method in ([] if config.get('poison_file') else attack_methods(config)):
      attack_dir = os.path.join(workdir, 'poisons', f'pacd_{method}')
      path = os.path.join(attack_dir, 'poisons.npz')
      if not os.path.isfile(path):  # pacd writes it last: its presence means done.
        logging.info('Protocol: PACD against %s into %s.', method, attack_dir)
        attack_lib.pacd(attack_config(config, method), splits, attack_dir)
      out[f'pacd_{method}'] = _load_poison_set(f'pacd_{method}', 'pacd', method, path,
                                               train)
  for poison, noise in RANDOM_BASELINES.items():
    if poison not in poisons:
      continue
    path = os.path.join(workdir, 'poisons', f'{poison}.npz')
    if not os.path.isfile(path):
      key = _baseline_key(config, poison)
      if noise == 'zero_mean':
        idx, images = zero_mean_random_poisons(key, train, target_class=config.target_class,
                                               eps=config.eps)
      else:
        idx, images = attack_lib.random_poisons(key, train, target_class=config.target_class,
                                                eps=config.eps, kind=noise)
      data_lib.save_poisons(
          path, poisons=images, indices=idx, clean_images=np.asarray(train['image'])[idx],
          labels=np.asarray(train['label'])[idx],
          metadata={'kind': poison, 'method': poison, 'eps': float(config.eps),
                    'dataset': config.dataset, 'data_seed': int(config.data_seed),
                    'target_class': int(config.target_class), 'seed': int(config.seed),
                    'spec': _baseline_spec(config, poison)})
    out[poison] = _load_poison_set(poison, poison, '', path, train)
  return out


def training_set(cell: Cell, train: Mapping[str, np.ndarray],
                 poison_sets: Mapping[str, PoisonSet], victim: ml_collections.ConfigDict
                 ) -> dict[str, np.ndarray]:
  """The victim's training split for ``cell``: clean, poisoned or without the target
  class, then ``victim.train_subset`` points of it if > 0 (as ``rsp.train.load_splits``
  does: drawn by the data seed, after poisoning)."""
  if cell.poison == 'none':
    out = dict(train)
  elif cell.poison == 'no_target':
    out = data_lib.remove_class(train, victim.target_class)
  else:
    p = poison_sets[cell.poison_set]
    out = data_lib.apply_poison(train, p.indices, p.poisons)
  if victim.get('train_subset', 0):
    idx = data_lib.seeded_subset_indices(len(out['label']), victim.train_subset,
                                         victim.get('data_seed', 0))
    out = data_lib.subset(out, idx)
  return out


def perturbation_statistics(clean: Any, poisoned: Any, *,
                            data_range: float = 1.0) -> dict[str, Any]:
  """How visible a poison set is: norms, PSNR and SSIM of ``poisoned`` against ``clean``.

  Per image i with ``delta_i = poisoned_i - clean_i`` over its d pixels:
  ``PSNR_i = 10 log10(data_range^2 / (||delta_i||_2^2 / d))`` (skimage's
  ``peak_signal_noise_ratio``) and SSIM (Wang et al. 2004; skimage's
  ``structural_similarity``, 7x7 windows, per channel).

  Args:
    clean, poisoned: ``[N, H, W, C]`` images in [0, data_range].
    data_range: the pixel range (1 in rsp).

  Returns:
    ``num_images``; ``linf`` (max over all pixels); ``linf_mean``, ``l2_mean``, ``l2_max``
    (per-image norms); ``psnr_mean`` (dB, over the images that changed; inf if none
    did); ``ssim_mean``; ``mean_delta`` (signed mean pixel change: > 0 brightens);
    ``fraction_changed`` (of pixels); ``num_unchanged`` (images).
  """
  # Imported here: scikit-image is needed for these statistics only.
  from skimage import metrics as skmetrics  # pylint: disable=g-import-not-at-top

  clean = np.asarray(clean, np.float64)
  poisoned = np.asarray(poisoned, np.float64)
  if clean.shape != poisoned.shape or clean.ndim != 4 or clean.shape[0] == 0:
    raise ValueError(f'clean {clean.shape} and poisoned {poisoned.shape} must be the same '
                     'non-empty [N, H, W, C] shape.')
  n = clean.shape[0]
  delta = (poisoned - clean).reshape(n, -1)
  linf = np.abs(delta).max(axis=1)
  l2 = np.sqrt((delta ** 2).sum(axis=1))
  changed = linf > 0
  psnr = [skmetrics.peak_signal_noise_ratio(clean[i], poisoned[i], data_range=data_range)
          for i in np.flatnonzero(changed)]
  ssim = [skmetrics.structural_similarity(clean[i], poisoned[i], data_range=data_range,
                                          channel_axis=-1) for i in range(n)]
  return {
      'num_images': int(n),
      'linf': float(linf.max()),
      'linf_mean': float(linf.mean()),
      'l2_mean': float(l2.mean()),
      'l2_max': float(l2.max()),
      'psnr_mean': float(np.mean(psnr)) if psnr else float('inf'),
      'ssim_mean': float(np.mean(ssim)),
      'mean_delta': float(delta.mean()),
      'fraction_changed': float((delta != 0).mean()),
      'num_unchanged': int(n - changed.sum()),
  }


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


def _cell_dir(workdir: str, cell: Cell) -> str:
  return os.path.join(workdir, 'cells', cell.name)


def run_cell(config: ml_collections.ConfigDict, cell: Cell, *,
             splits: Mapping[str, Mapping[str, np.ndarray]],
             poison_sets: Mapping[str, PoisonSet], target_indices: np.ndarray,
             all_indices: np.ndarray | None, workdir: str) -> dict[str, Any]:
  """Trains and certifies one victim, resumably; returns its row of ``results.json``.

  The row (also ``cells/<cell>/result.json``, written last and atomically) holds the
  cell's fields, ``sigma``, the certification summary of the target-class points
  (``acr``, ``acr_correct_only``, ``certified_accuracy`` at r = 0, ``abstain_rate``,
  ``certified_accuracy_curve``, ``num_certified`` points, ``num_certified_correct``),
  the base classifier's clean test accuracy (``clean_accuracy``, all classes;
  ``target_accuracy``), ``train_seconds``, ``certify_seconds`` and ``time`` (their sum);
  with all-class certification also ``acr_all_classes``,
  ``certified_accuracy_all_classes`` and ``per_class_acr``.
  """
  cell_dir = _cell_dir(workdir, cell)
  result_path = os.path.join(cell_dir, 'result.json')
  if os.path.isfile(result_path):
    return metrics.read_json(result_path)
  os.makedirs(cell_dir, exist_ok=True)
  metrics.write_json_atomic(os.path.join(cell_dir, 'spec.json'),
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
  summary = metrics.summarize_certification(rows, num_classes=trained.num_classes)
  arrays = metrics.rows_to_arrays(rows)
  train_seconds = float(trained.summary.get('train_seconds', 0.0))
  certify_seconds = float(arrays['time'].sum())
  row = dict(
      dataclasses.asdict(cell), cell=cell.name, poison_set=cell.poison_set, sigma=sigma,
      acr=summary['acr'], acr_correct_only=summary['acr_correct_only'],
      certified_accuracy=summary['certified_accuracy'],
      abstain_rate=summary['abstain_rate'],
      certified_accuracy_curve=summary['certified_accuracy_curve'],
      num_certified=summary['num_points'],
      num_certified_correct=int(arrays['correct'].sum()),
      clean_accuracy=float(trained.summary['test_accuracy']),
      target_accuracy=float(trained.summary['per_class_test_accuracy']
                            [config.target_class]),
      num_train_examples=int(trained.summary.get('num_train_examples', 0)))
  if all_indices is not None:
    rows_all = certify(all_indices, 'certify_all_classes.tsv')
    s_all = metrics.summarize_certification(rows_all, num_classes=trained.num_classes)
    certify_seconds += float(metrics.rows_to_arrays(rows_all)['time'].sum())
    row.update(acr_all_classes=s_all['acr'],
               certified_accuracy_all_classes=s_all['certified_accuracy'],
               per_class_acr=s_all['per_class_acr'])
  row.update(train_seconds=train_seconds, certify_seconds=certify_seconds,
             time=train_seconds + certify_seconds)
  metrics.write_json_atomic(result_path, row)
  return metrics.read_json(result_path)  # As a resumed run sees it (NaN -> None).


# ------------------------------------------------------------------------------------
# Aggregation and reports.


def add_acr_drops(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Each row with ``acr_clean``, ``acr_drop`` (clean - poisoned) and
  ``acr_drop_relative`` ((clean - poisoned) / clean) against the clean row of the same
  training method, architecture and seed (NaN when there is none)."""
  clean = {(r['train_method'], r['arch'], r['seed']): r['acr'] for r in rows
           if r['poison'] == 'none'}
  out = []
  for r in rows:
    ref = clean.get((r['train_method'], r['arch'], r['seed']), float('nan'))
    d = metrics.compare_acr(ref, r['acr'])
    out.append(dict(r, acr_clean=d['acr_clean'], acr_drop=d['acr_drop'],
                    acr_drop_relative=d['acr_drop_relative']))
  return out


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """Mean and sample standard deviation (ddof 1; None for a single value)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


_AGGREGATED = ('acr', 'acr_drop_relative', 'certified_accuracy', 'clean_accuracy',
               'target_accuracy', 'acr_all_classes')


def aggregate_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Rows (with drops, ``add_acr_drops``) grouped over seeds: one entry per training
  method x architecture x training set, in first-appearance order, with ``<m>_mean`` and
  ``<m>_std`` (sample std, None for one seed) of the ACR, its relative drop, certified
  accuracy and the clean accuracies, ``seeds`` and ``time`` (summed)."""
  groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r['train_method'], r['arch'], r['poison'], r['attack']),
                      []).append(r)
  out = []
  for (method, arch, poison, attack), members in groups.items():
    entry = {'train_method': method, 'arch': arch, 'poison': poison, 'attack': attack,
             'poison_set': members[0]['poison_set'],
             'seeds': [int(m['seed']) for m in members],
             'num_certified': int(members[0]['num_certified']),
             'time': float(sum(m['time'] for m in members))}
    for name in _AGGREGATED:
      if all(name in m for m in members):
        entry[f'{name}_mean'], entry[f'{name}_std'] = _mean_std([m[name] for m in members])
    out.append(entry)
  return out


def transfer_matrix(aggregates: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
  """Relative ACR drop of PACD victims: rows = attack method the poisons target, columns
  = victim (``method/arch``). None unless there are several attacks or victims."""
  pacd = [a for a in aggregates if a['poison'] == 'pacd']
  attacks = list(dict.fromkeys(a['attack'] for a in pacd))
  victims = list(dict.fromkeys(f'{a["train_method"]}/{a["arch"]}' for a in pacd))
  if len(attacks) < 2 and len(victims) < 2:
    return None
  table = [[None] * len(victims) for _ in attacks]
  for a in pacd:
    table[attacks.index(a['attack'])][victims.index(
        f'{a["train_method"]}/{a["arch"]}')] = a['acr_drop_relative_mean']
  return {'attacks': attacks, 'victims': victims, 'acr_drop_relative': table}


def machine_info() -> dict[str, Any]:
  """What the numbers were measured on."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return {'platform': platform.platform(), 'cpu': cpu, 'cpu_count': os.cpu_count(),
          'devices': [f'{d.platform}:{d.device_kind}' for d in jax.devices()],
          'jax': jax.__version__, 'rsp': version.__version__}


def _fmt(mean: float | None, std: float | None = None, *, percent: bool = False,
         digits: int = 3) -> str:
  if mean is None or not np.isfinite(mean):
    return '-'
  scale, unit = (100.0, '%') if percent else (1.0, '')
  d = 1 if percent else digits
  text = f'{scale * mean:.{d}f}'
  if std is not None:
    text += f' ± {scale * std:.{d}f}'
  return text + unit


def poison_label(poison: str, attack: str = '') -> str:
  """A readable name of a training set: 'PACD (vs macer)', 'random ±eps', ..."""
  if poison == 'pacd':
    return f'PACD (vs {attack})' if attack else 'PACD'
  return POISON_LABELS.get(poison, poison)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h} h {m:02d} min' if h else (f'{m} min {s:02d} s' if m else f'{s} s')


def results_markdown(results: Mapping[str, Any], *, include_figures: bool = True) -> str:
  """The person-readable report of ``results`` (what ``results.md`` holds).

  Args:
    results: from ``run_protocol`` or ``load_results``.
    include_figures: end with links to the figures (relative to the workdir).
  """
  cfg = results['config']
  c = cfg['certify']
  machine = results['machine']
  lines = [
      f'# PACD evaluation protocol: {cfg["name"]}', '',
      f'Data `{cfg["dataset"]}` (data seed {cfg["data_seed"]}), target class '
      f'{cfg["target_class"]}, L-inf budget eps = {cfg["eps"]}. Every victim is trained '
      f'from scratch and certified (Cohen et al. CERTIFY, N0 = {c["n0"]}, N = {c["n"]}, '
      f'alpha = {c["alpha"]}, at its training sigma) on the same '
      f'{len(results["certified_points"])} target-class test points (subset seed '
      f'{c["subset_seed"]}). ACR drop: (ACR clean - ACR poisoned) / ACR clean against the '
      'clean victim of the same method, architecture and seed; mean ± sample std over '
      'seeds.', '',
      '## Target-class certification', '',
      '| training method | arch | training set | ACR | ACR drop | certified acc. (r=0) '
      '| clean acc. | target acc. | seeds |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for a in results['aggregates']:
    drop = ('-' if a['poison'] == 'none' else
            _fmt(a.get('acr_drop_relative_mean'), a.get('acr_drop_relative_std'),
                 percent=True))
    lines.append(
        f'| {a["train_method"]} | {a["arch"]} | {poison_label(a["poison"], a["attack"])} '
        f'| {_fmt(a["acr_mean"], a["acr_std"])} | {drop} '
        f'| {_fmt(a["certified_accuracy_mean"], a["certified_accuracy_std"])} '
        f'| {_fmt(a["clean_accuracy_mean"], a["clean_accuracy_std"])} '
        f'| {_fmt(a["target_accuracy_mean"], a["target_accuracy_std"])} '
        f'| {len(a["seeds"])} |')
  if any('acr_all_classes_mean' in a for a in results['aggregates']):
    lines += ['', f'All classes ({c["all_classes_points"]} seeded test points):', '',
              '| training method | arch | training set | ACR (all classes) |',
              '| --- | --- | --- | --- |']
    for a in results['aggregates']:
      lines.append(f'| {a["train_method"]} | {a["arch"]} | '
                   f'{poison_label(a["poison"], a["attack"])} | '
                   f'{_fmt(a.get("acr_all_classes_mean"), a.get("acr_all_classes_std"))} |')
  matrix = results.get('transfer_matrix')
  if matrix:
    lines += ['', '## Transfer: target-class ACR drop of PACD victims', '',
              'Rows: the training method the poisons were made against; columns: the '
              'victim (training method / architecture).', '',
              '| poisons vs \\ victim | ' + ' | '.join(matrix['victims']) + ' |',
              '| --- |' + ' --- |' * len(matrix['victims'])]
    for attack, values in zip(matrix['attacks'], matrix['acr_drop_relative']):
      lines.append(f'| {attack} | ' + ' | '.join(_fmt(v, percent=True) for v in values)
                   + ' |')
  if results['poisons']:
    lines += ['', '## Poisons: perturbation statistics', '',
              '| poison set | images | L-inf | mean L2 | PSNR (dB) | SSIM | mean change |',
              '| --- | --- | --- | --- | --- | --- | --- |']
    for name, p in results['poisons'].items():
      s = p['statistics']
      lines.append(f'| {poison_label(p["poison"], p["attack"])} | {s["num_images"]} '
                   f'| {s["linf"]:.4f} | {s["l2_mean"]:.3f} | {s["psnr_mean"]:.1f} '
                   f'| {s["ssim_mean"]:.3f} | {s["mean_delta"]:+.4f} |')
  times = [f'{poison_label(p["poison"], p["attack"])} {_duration(p["seconds"])}'
           for p in results['poisons'].values() if p.get('seconds')]
  lines += ['', '## Machine and time', '',
            f'{machine["cpu"]} ({machine["cpu_count"]} cores), devices '
            f'{", ".join(machine["devices"])}; jax {machine["jax"]}, rsp {machine["rsp"]}.',
            '',
            f'Recorded compute: {_duration(results["total_seconds"])} in all'
            + (f' (attacks: {", ".join(times)}; ' if times else ' (')
            + f'victims: {_duration(sum(r["time"] for r in results["rows"]))} for '
            f'{len(results["rows"])} trainings and certifications). This invocation: '
            f'{_duration(results["wall_seconds"])} of wall time.']
  if include_figures and results.get('figures'):
    lines += ['', '## Figures', '']
    lines += [f'![{os.path.basename(f)}]({f})' for f in results['figures']]
  return '\n'.join(lines) + '\n'


def _certified_points(workdir: str, row: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return metrics.rows_to_arrays(metrics.read_certification_tsv(
      os.path.join(workdir, 'cells', row['cell'], 'certify.tsv')))


def make_figures(config: ml_collections.ConfigDict, results: Mapping[str, Any],
                 poison_sets: Mapping[str, PoisonSet], workdir: str) -> list[str]:
  """Writes the figures; returns their paths relative to ``workdir``.

  * ``certified_accuracy_<arch>.png``: certified accuracy against radius, one panel
    per training method, one curve per training set (the points of all seeds pooled,
    which is the mean curve over seeds);
  * ``poisons_<set>.png``: clean images, poisoned images and the amplified perturbation
    (the first ``config.num_figure_images`` images that the poisons changed);
  * ``acr_drop.png``: the relative ACR drop per poisoned cell.
  """
  out = []
  rows = results['rows']
  for arch in dict.fromkeys(r['arch'] for r in rows):
    panels: dict[str, dict[str, Any]] = {}
    for a in results['aggregates']:
      if a['arch'] != arch:
        continue
      members = [r for r in rows if (r['train_method'], r['arch'], r['poison_set']) ==
                 (a['train_method'], arch, a['poison_set'])]
      points = [_certified_points(workdir, r) for r in members]
      label = f'{poison_label(a["poison"], a["attack"])} (ACR {a["acr_mean"]:.3f})'
      panels.setdefault(f'{a["train_method"]}, {arch}', {})[label] = (
          np.concatenate([p['radius'] for p in points]),
          np.concatenate([p['correct'] for p in points]))
    rel = os.path.join('figures', f'certified_accuracy_{arch}.png')
    plotting.plot_certified_accuracy_panels(
        panels, os.path.join(workdir, rel),
        title=f'{config.dataset}, class {config.target_class}, eps {config.eps}')
    out.append(rel)
  for name, p in poison_sets.items():
    rel = os.path.join('figures', f'poisons_{name}.png')
    # The first images the attack changed (a short attack leaves some untouched).
    changed = np.flatnonzero(np.any(p.poisons != p.clean_images, axis=(1, 2, 3)))
    shown = changed if changed.size else np.arange(len(p.poisons))
    shown = shown[:config.num_figure_images]
    plotting.plot_poison_examples(
        p.clean_images[shown], p.poisons[shown], os.path.join(workdir, rel),
        num_images=config.num_figure_images,
        title=f'{poison_label(p.poison, p.attack)}: max |delta| = '
              f'{float(np.abs(p.poisons - p.clean_images).max()):.3g}')
    out.append(rel)
  if any(a['poison'] != 'none' for a in results['aggregates']):
    rel = os.path.join('figures', 'acr_drop.png')
    plotting.plot_acr_drop(results['aggregates'], os.path.join(workdir, rel),
                           label=lambda a: poison_label(a['poison'], a['attack']),
                  title=f'{config.name}: target-class ACR drop')
    out.append(rel)
  return out


# ------------------------------------------------------------------------------------
# The protocol.


def load_splits(config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  kwargs = {'data_dir': config.data_dir} if config.get('data_dir') else {}
  return data_lib.load(config.dataset, seed=config.data_seed, **kwargs)


def run_protocol(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole protocol; writes and returns the results.

  Args:
    config: a protocol config (``rsp/configs/protocol.py``).
    workdir: where everything goes (see the module docstring); rerun with the same
      workdir to resume.

  Returns:
    The content of ``results.json``: ``config``, ``rows`` (one per certified victim; see
    ``run_cell``, plus ``acr_clean``, ``acr_drop``, ``acr_drop_relative``),
    ``aggregates`` (``aggregate_rows``), ``transfer_matrix`` (or None), ``poisons``
    (per poison set: path, metadata, ``statistics`` from ``perturbation_statistics``,
    attack ``seconds``), ``certified_points`` (test indices), ``machine``,
    ``total_seconds`` (recorded compute of attacks and cells), ``wall_seconds`` (this
    invocation) and ``figures`` (paths relative to ``workdir``).

  Raises:
    ValueError: a bad config, or a workdir made with other settings; raised before any
      work and before anything is written.
  """
  t_start = time.time()
  validate_config(config)
  splits = load_splits(config)
  cells = resolve_cells(config)
  target_indices, all_indices = certification_indices(config, splits['test'])
  check_workdir(config, workdir, cells, target_indices, all_indices)
  os.makedirs(workdir, exist_ok=True)
  metrics.write_json_atomic(os.path.join(workdir, 'config.json'), config.to_dict())
  logging.info('Protocol %s: %d cells in %s.', config.name, len(cells), workdir)

  poison_sets = make_poison_sets(config, splits, workdir)
  rows = []
  for i, cell in enumerate(cells):
    row = run_cell(config, cell, splits=splits, poison_sets=poison_sets,
                   target_indices=target_indices, all_indices=all_indices,
                   workdir=workdir)
    logging.info('Protocol cell %d/%d %s: ACR %.4f, certified accuracy %.3f, clean '
                 'accuracy %.4f.', i + 1, len(cells), cell.name, row['acr'],
                 row['certified_accuracy'], row['clean_accuracy'])
    rows.append(row)
  rows = add_acr_drops(rows)
  aggregates = aggregate_rows(rows)
  poisons = {}
  for name, p in poison_sets.items():
    poisons[name] = {'poison': p.poison, 'attack': p.attack, 'path': p.path,
                     'metadata': p.metadata,
                     'seconds': float(p.metadata.get('attack_seconds', 0.0)),
                     'statistics': perturbation_statistics(p.clean_images, p.poisons)}
  results = {
      'config': config.to_dict(),
      'rows': rows,
      'aggregates': aggregates,
      'transfer_matrix': transfer_matrix(aggregates),
      'poisons': poisons,
      'certified_points': [int(i) for i in target_indices],
      'machine': machine_info(),
      'total_seconds': (sum(p['seconds'] for p in poisons.values()) +
                        sum(r['time'] for r in rows)),
  }
  results['figures'] = (make_figures(config, results, poison_sets, workdir)
                        if config.figures else [])
  results['wall_seconds'] = time.time() - t_start
  metrics.write_json_atomic(os.path.join(workdir, 'results.json'), results)
  results = load_results(workdir)  # The same values as a later load_results(workdir).
  markdown = results_markdown(results)
  tmp = os.path.join(workdir, f'results.md.tmp{os.getpid()}')
  with open(tmp, 'w') as f:
    f.write(markdown)
  os.replace(tmp, os.path.join(workdir, 'results.md'))
  logging.info('Protocol %s done: wrote %s.', config.name,
               os.path.join(workdir, 'results.md'))
  return results


def load_results(workdir: str) -> dict[str, Any]:
  """The ``results.json`` a finished ``run_protocol`` left in ``workdir``."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.isfile(path):
    raise ValueError(f'workdir={workdir!r} holds no results.json: run run_protocol '
                     'first.')
  return metrics.read_json(path)
