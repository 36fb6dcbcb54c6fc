"""The poison sets PACD is compared with: random noise in the same budget, and no data.

Each random baseline perturbs the training images of the target class (all of them, or
the same seeded fraction ``poison_fraction`` that PACD poisons:
``rsp.data.poison_indices`` with ``subset_seed``) within the same L-inf ball of radius
eps as PACD, keeps the labels, and is drawn from one key:

* ``random``: uniformly random +-eps sign noise, clipped to [0, 1]. On MNIST's black
  background the clipping turns it into a one-sided brightening (``E[delta] > 0``).
* ``random_uniform``: U[-eps, eps] noise, clipped to [0, 1].
* ``random_zero_mean``: +-eps sign noise only on the pixels in [eps, 1 - eps], where no
  clipping happens, so that ``E[delta] = 0`` exactly: the control for the brightening.

and ``no_target`` leaves the target class's training images out altogether: how far
deleting the class would go (a clean-label attacker cannot do this).

Example::

  idx, images = baselines.random_poisons(key, splits['train'], target_class=8,
                                         eps=0.1, kind='zero_mean')
  poisoned = data.apply_poison(splits['train'], idx, images)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from rsp import data as data_lib

# The random baselines, by name, and the kind of noise each draws.
RANDOM_KINDS = {'random': 'sign', 'random_uniform': 'uniform',
                'random_zero_mean': 'zero_mean'}
BASELINES = (*RANDOM_KINDS, 'no_target')
NOISE_KINDS = ('sign', 'uniform', 'zero_mean')


def zero_mean_random_poisons(key: jax.Array, train: Mapping[str, np.ndarray], *,
                             target_class: int, eps: float, poison_fraction: float = 1.0,
                             subset_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """+-eps sign noise on the target class's pixels in [eps, 1 - eps] only.

  No pixel is clipped, so ``E[delta] = 0`` exactly: the control for the one-sided
  brightening that clipping makes of ``random_poisons(kind='sign')`` on a black
  background. Pixels within eps of 0 or 1 stay unchanged.

  Returns:
    ``(indices, poisons)`` as ``random_poisons``.
  """
  idx = data_lib.poison_indices(train, target_class, poison_fraction, subset_seed)
  clean = np.asarray(train['image'], np.float32)[idx]
  signs = np.asarray(jax.random.rademacher(key, clean.shape, np.float32))
  interior = (clean >= eps) & (clean <= 1.0 - eps)
  poisons = np.clip(clean + np.float32(eps) * signs * interior, 0.0, 1.0)
  return idx, poisons.astype(np.float32)


def random_poisons(key: jax.Array, train: Mapping[str, np.ndarray], *, target_class: int,
                   eps: float, kind: str = 'sign', poison_fraction: float = 1.0,
                   subset_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random perturbations of the target class's training images within eps.

  Args:
    key: randomness.
    train: the clean training split.
    target_class: the class whose images are perturbed.
    eps: L-inf budget.
    kind: ``'sign'`` (+-eps per pixel, then clipped to [0, 1]), ``'uniform'``
      (U[-eps, eps], clipped) or ``'zero_mean'`` (``zero_mean_random_poisons``).
    poison_fraction: perturb ``round(poison_fraction * n)`` of the class's n images,
      in (0, 1] (``rsp.data.poison_indices``); the others stay clean.
    subset_seed: seeds which images a fraction < 1 perturbs.

  Returns:
    ``(indices, poisons)``: the perturbed images' indices into ``train`` (increasing)
    and their images ``[P, H, W, C]`` float32 in [0, 1].
  """
  if kind not in NOISE_KINDS:
    raise ValueError(f'kind={kind!r} is not known; accepted: {", ".join(NOISE_KINDS)}.')
  data_lib.check_poison_fraction('poison_fraction', poison_fraction)
  if kind == 'zero_mean':
    return zero_mean_random_poisons(key, train, target_class=target_class, eps=eps,
                                    poison_fraction=poison_fraction,
                                    subset_seed=subset_seed)
  idx = data_lib.poison_indices(train, target_class, poison_fraction, subset_seed)
  clean = np.asarray(train['image'])[idx]
  if kind == 'sign':
    delta = eps * np.asarray(jax.random.rademacher(key, clean.shape, np.float32))
  else:
    delta = np.asarray(jax.random.uniform(key, clean.shape, np.float32, -eps, eps))
  return idx, np.clip(clean + delta, 0.0, 1.0).astype(np.float32)


def save_random_baseline(path: str, key: jax.Array, train: Mapping[str, np.ndarray], *,
                         name: str, target_class: int, eps: float,
                         metadata: Mapping[str, Any], poison_fraction: float = 1.0,
                         subset_seed: int = 0) -> None:
  """Draws the random baseline ``name`` (a key of ``RANDOM_KINDS``) and saves it as a
  poison file (``rsp.data.save_poisons``) with ``metadata``, its kind, and the
  ``poison_fraction``, ``poison_subset_seed`` and ``num_class_images`` of its draw."""
  if name not in RANDOM_KINDS:
    raise ValueError(f'name={name!r} is not a random baseline; accepted: '
                     f'{", ".join(RANDOM_KINDS)}.')
  idx, images = random_poisons(key, train, target_class=target_class, eps=eps,
                               kind=RANDOM_KINDS[name], poison_fraction=poison_fraction,
                               subset_seed=subset_seed)
  num_class = len(data_lib.class_indices(train, target_class))
  data_lib.save_poisons(path, poisons=images, indices=idx,
                        clean_images=np.asarray(train['image'])[idx],
                        labels=np.asarray(train['label'])[idx],
                        metadata=dict(metadata, kind=name, method=name,
                                      noise=RANDOM_KINDS[name], eps=float(eps),
                                      target_class=int(target_class),
                                      poison_fraction=float(poison_fraction),
                                      poison_subset_seed=int(subset_seed),
                                      num_class_images=num_class))


def without_target_class(train: Mapping[str, np.ndarray],
                         target_class: int) -> dict[str, np.ndarray]:
  """The ``no_target`` training set: ``train`` without the target class's points."""
  return data_lib.remove_class(train, target_class)
