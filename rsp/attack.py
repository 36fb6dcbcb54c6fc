r"""PACD: Poisoning Against Certified Defenses (Mehra, Kailkhura, Chen & Hamm, CVPR 2021).

A clean-label attack on one target class t: every training image of class t (or a
fraction ``config.poison_fraction`` of them, ``round(f * n_t)`` images drawn by
``config.poison_subset_seed``: ``rsp.data.poison_indices``; the rest of the class stays
clean) is replaced by a perturbed copy ``x~_j = clip(x_j + delta_j, 0, 1)``,
``||delta_j||_inf <= eps``, labels unchanged, so that a victim trained from scratch on
the poisoned set with a certified training method (Gaussian augmentation, MACER,
SmoothAdv) has a small certified radius on class t. The bilevel problem
(docs/reference_implementation.md#the-bilevel-problem)::

    min_{delta}  F(w*(delta)),     w*(delta) = argmin_w g(w, x~(delta)),

    F(w) = 1/B_v sum_{x in V_t} 1[c_hat(x) = t] * sigma/2 * (Phi^-1((1-2a) p_(1)(x) + a)
                                                         - Phi^-1((1-2a) p_(2)(x) + a)),

with ``p(x) = 1/k sum_i softmax(beta z_w(x + eta_i))`` the soft smoothed classifier on
target-class validation points V_t (``rsp.robust_training.certified_radius_surrogate``),
and g the victim's training loss on a batch of clean non-target points and poisons
(``rsp.robust_training``; ``config.attack.inner_method`` trains the surrogate with another
method than ``config.attack.method``, the victim's, e.g. Gaussian augmentation against
MACER victims). The outer objective does not depend on the poisons directly.

The attack loop (docs/reference_implementation.md#solver-and-driver). A surrogate network
is trained online together with the poisons: per outer step, a batch of
``clean_batch_size`` non-target points, a batch of ``poison_batch_size`` poisons and
``val_batch_size`` target-class validation points are drawn; then either

* ``mode='implicit'`` (the paper's): ``inner_steps`` Adam steps on g, then the implicit
  hypergradient (``rsp.bilevel.implicit_hypergrad``) with ``solver`` ('approxgrad' as in
  the paper, 'cg', 'neumann' or 'identity') warm-started from the previous solution; or
* ``mode='unrolled'``: ``inner_steps`` inner SGD steps unrolled and differentiated
  through (``rsp.bilevel.unrolled_hypergrad``), the final weights kept as the next warm
  start;

then one step of the poisons' optimiser (per-poison Adam with learning rate
``poison_learning_rate``, or a signed step) and the projection onto the eps ball and
[0, 1]. The surrogate, solver and optimiser states are re-initialised every
``reinit_every_epochs`` epochs; the poisons persist. With ``num_surrogates = K > 1`` an
ensemble of K surrogates is trained side by side on the same batches (own
initialisations and noise), surrogate j re-initialised every ``reinit_every_epochs``
epochs from epoch ``1 + floor(j * reinit_every_epochs / K)`` on, so that the poisons
always see surrogates at staggered stages of training; the poisons follow the mean of
the K hypergradients (K times the cost of a step). With ``pretrain_epochs = P > 0`` every
fresh surrogate first trains P epochs on the current training set (the clean pool and the
poisons as they are, in batches of B_c + B_p) before the outer steps go on, so that the
poisons are shaped against a surrogate as far into training as the victim will get,
not only against early ones. A non-finite objective, inner loss
or hypergradient skips the poison update and re-initialises the surrogate (logged and
counted): no NaN ever reaches a poison.

Decisions on the reference code's quirks (docs/reference_implementation.md, Q1-Q17), in
brief:

* Q3: the poisons' Adam moments are kept per poison (exact), instead of slots shared by
  whichever poisons the batch drew; ``poison_optimizer='sign'`` gives a signed step.
* Q6: noise is drawn fresh at every step for every method (the reference fixes it per
  point for MACER and SmoothAdv); all randomness comes from ``fold_in(key, step)``.
* Q8, Q15: the SmoothAdv inner problem uses the victim's attack
  (``rsp.robust_training.smoothadv_perturbation``, by default the reference's Adam variant)
  as a constant perturbation of clean points and poisons, with the reference's 20-epoch
  warm-up cycle of its radius.
* Q10, Q11: the final poisons are saved (no off-by-one) and NaN is checked every step.
* Q2: CIFAR clean and validation batches get per-image crop+flip where the reference
  applies its batch-wide crop; the poisons are not augmented (the reference augments
  them in the inner objective).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rsp import bilevel
from rsp import checkpointing
from rsp import data as data_lib
from rsp import models
from rsp import robust_training
from rsp import validation
from rsp import workdir as workdir_lib

MODES = ('implicit', 'unrolled')
SOLVERS = ('approxgrad', 'cg', 'neumann', 'identity')
INNER_METHODS = ('gaussian', 'macer', 'smoothadv')
POISON_OPTIMIZERS = ('adam', 'sign')
# Old names of the learning rates of the poisons u, the surrogate's weights v and
# ApproxGrad's p, refused with the new name.
_RENAMED_FIELDS = {'lr_u': 'poison_learning_rate', 'lr_v': 'inner_learning_rate',
                   'lr_p': 'solver_learning_rate'}


# ------------------------------------------------------------------------------------
# The objectives.


def project_linf(poisons: jax.Array, clean: jax.Array, eps: float) -> jax.Array:
  """Projects poisons onto ``{x : ||x - clean||_inf <= eps} & [0, 1]`` (both convex).

  ``clip(clean + clip(poisons - clean, -eps, eps), 0, 1)``: as ``clean`` is in [0, 1],
  the result lies in the intersection.
  """
  delta = jnp.clip(poisons - clean, -eps, eps)
  return jnp.clip(clean + delta, 0.0, 1.0)


def outer_objective(params, state, images: jax.Array, labels: jax.Array, key: jax.Array,
                    *, apply_fn, sigma: float, num_noise: int, beta: float = 16.0,
                    alpha: float = 1e-3, train: bool = False) -> jax.Array:
  """PACD's outer objective F: the mean soft certified-radius surrogate.

  ``F = 1/B sum_x 1[c_hat(x) = y] R(x)`` with ``R`` from
  ``rsp.robust_training.certified_radius_surrogate`` over ``num_noise`` noise draws.
  Misclassified points count in the denominator with radius 0 (and give no gradient).
  See docs/reference_implementation.md#the-bilevel-problem and
  docs/reference_implementation.md#q9-masking-in-the-outer-objective.

  Args:
    params, state: the surrogate's parameters and model state.
    images: ``[B, H, W, C]`` target-class validation images; labels ``[B]``.
    key: noise key.
    apply_fn: ``apply_fn(params, state, images, train) -> (logits, state)``.
    sigma, num_noise, beta, alpha: smoothing noise, k, inverse temperature, squash.
    train: the model's mode (BatchNorm) for this forward pass.

  Returns:
    The scalar F (the attacker minimises it).
  """
  b = images.shape[0]
  noisy = robust_training.add_gaussian_noise(key, images, sigma, num_noise)
  logits, _ = apply_fn(params, state, noisy, train)
  probs = robust_training.soft_smoothed_probs(logits.reshape(b, num_noise, -1), beta)
  radius, correct = robust_training.certified_radius_surrogate(probs, labels, sigma=sigma,
                                                               alpha=alpha)
  return jnp.sum(jnp.where(correct, radius, 0.0)) / b


def inner_batch(clean_images, clean_labels, poisons, target_class: int):
  """The inner training batch: clean non-target points followed by the poisons."""
  images = jnp.concatenate([clean_images, poisons], axis=0)
  labels = jnp.concatenate([clean_labels, jnp.full((poisons.shape[0],), target_class,
                                                   clean_labels.dtype)])
  return {'image': images, 'label': labels}


def surrogate_method(attack_config: ml_collections.ConfigDict) -> str:
  """The training method of the surrogate (the inner problem): ``inner_method`` if set,
  else ``method``, the victim's method the poisons target."""
  return attack_config.get('inner_method', '') or attack_config.method


def inner_loss_fn(method: str, hparams: Mapping[str, Any]):
  """The victim's training loss used as the inner objective g.

  'gaussian' and 'smoothadv' (whose adversarial perturbation is added to the batch
  beforehand, as a constant) are cross-entropy under Gaussian noise; 'macer' is the MACER
  loss. All are means over the B_c + B_p points of the batch. See
  docs/reference_implementation.md#the-bilevel-problem.
  """
  if method not in INNER_METHODS:
    raise ValueError(f'method={method!r} is not known; accepted: '
                     f'{", ".join(INNER_METHODS)}.')
  hp = dict(hparams)
  if method == 'macer':
    return robust_training.get_loss('macer', **hp)
  keep = {k: hp[k] for k in ('sigma', 'num_noise') if k in hp}
  return robust_training.get_loss('gaussian', **keep)


# The inner problem's SmoothAdv radius schedule lives with the other SmoothAdv schedule.
smoothadv_cycle_epsilon = robust_training.smoothadv_cycle_epsilon


# ------------------------------------------------------------------------------------
# The jitted outer step.


def _smoothadv_constant(params, state, clean_x, clean_y, poisons, key, adv_eps, *, inner,
                        target: int, apply_fn):
  """SmoothAdv's perturbation of the clean points and of the poisons (labelled
  ``target``) for the surrogate ``params``: one noise draw per point, ``key`` for the
  clean points and ``fold_in(key, 1)`` for the poisons; a constant of the bilevel
  gradient (the caller differentiates nothing through it)."""
  noise_c = inner.sigma * jax.random.normal(key, (clean_x.shape[0], 1, *clean_x.shape[1:]))
  noise_p = inner.sigma * jax.random.normal(jax.random.fold_in(key, 1),
                                            (poisons.shape[0], 1, *poisons.shape[1:]))
  both = jnp.concatenate([clean_x, poisons])
  labels = jnp.concatenate([clean_y, jnp.full((poisons.shape[0],), target, clean_y.dtype)])
  delta = robust_training.smoothadv_perturbation(
      params, state, both, labels, jnp.concatenate([noise_c, noise_p]), apply_fn=apply_fn,
      epsilon=adv_eps, num_steps=inner.get('num_steps', 2), pgd=inner.get('pgd', 'adam'))
  return delta[:clean_x.shape[0]], delta[clean_x.shape[0]:]


def make_pretrain_step(config: ml_collections.ConfigDict, train_apply_fn,
                       inner_tx: optax.GradientTransformation):
  """The jitted step a fresh surrogate trains with before the outer steps
  (``config.attack.pretrain_epochs``): one step of the inner optimiser on the inner loss
  g of a batch of training points with their labels (poisons included), SmoothAdv's
  perturbation added first as in the outer step, crop+flip if ``attack.augment``.

  ``step(params, state, opt_state, images, labels, adv_eps, key) -> (params, state,
  opt_state, loss)``.
  """
  a = config.attack
  method = surrogate_method(a)
  loss = inner_loss_fn(method, a.inner)
  augment = bool(a.get('augment', False))

  @jax.jit
  def step(params, state, opt_state, images, labels, adv_eps, key):
    k_aug, k_adv, k_inner = jax.random.split(key, 3)
    if augment:
      images = data_lib.random_crop_flip(k_aug, images)
    if method == 'smoothadv':
      delta, _ = _smoothadv_constant(params, state, images, labels, images[:0], k_adv,
                                     adv_eps, inner=a.inner, target=int(config.target_class),
                                     apply_fn=train_apply_fn)
      images = images + delta
    batch = {'image': images, 'label': labels}
    (value, (new_state, _)), grads = jax.value_and_grad(
        lambda w: loss(w, state, batch, k_inner, apply_fn=train_apply_fn), has_aux=True)(
            params)
    updates, opt_state = inner_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, value

  return step


def _tree_isfinite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_outer_step(config: ml_collections.ConfigDict, train_apply_fn, *,
                    return_hypergrad: bool = False):
  """A jitted PACD outer step for ``config`` (fields: ``rsp.configs.poison_common``).

  ``step(carry, clean_x, clean_y, poisons, clean_of_poisons, moments, val_x, val_y,
  adv_eps, key) -> (carry, poisons, moments, metrics)``, where ``carry`` holds the
  surrogate (params, state, inner optimiser state) and the solver's warm start (each leaf
  stacked on a leading axis of ``config.attack.num_surrogates`` if that is > 1), and
  ``moments`` the poisons' optimiser state for this batch (first, second moment, count).
  ``metrics`` are scalars; with ``return_hypergrad=True`` they also hold the batch's
  hypergradient dF/du under ``'hypergrad'`` (``[B_p, H, W, C]``; zeros if the step was
  not finite), the direction the poisons' optimiser was given.
  """
  a = config.attack
  method = surrogate_method(a)
  loss = inner_loss_fn(method, a.inner)
  inner_tx = optax.adam(a.inner_learning_rate,
                        eps_root=1e-12 if a.mode == 'unrolled' else 0.0)
  target = int(config.target_class)
  eps = float(config.eps)
  augment = bool(a.get('augment', False))
  num_surrogates = int(a.get('num_surrogates', 1))
  outer = functools.partial(outer_objective, apply_fn=train_apply_fn, sigma=a.sigma,
                            num_noise=a.outer_num_noise, beta=a.beta, alpha=a.alpha)

  def inner_value(params, state, batch, key):
    value, (new_state, _) = loss(params, state, batch, key, apply_fn=train_apply_fn)
    return value, new_state

  smoothadv_constant = functools.partial(_smoothadv_constant, inner=a.inner, target=target,
                                         apply_fn=train_apply_fn)

  def surrogate_grad(carry, clean_x, clean_y, poisons, val_x, val_y, adv_eps, keys):
    """One surrogate's inner steps and hypergradient: (carry, dF/du, F, g, residual)."""
    params, state, opt_state, solution, solver_state = carry
    k_adv, k_inner, k_outer = keys
    adv_clean = jnp.zeros_like(clean_x)
    adv_poison = jnp.zeros_like(poisons)
    if method == 'smoothadv':
      # The victim's attack, a constant for the bilevel gradient
      # (docs/reference_implementation.md#q15-the-smoothadv-inner-problem-of-the-attack).
      adv_clean, adv_poison = smoothadv_constant(params, state, clean_x, clean_y, poisons,
                                                 k_adv, adv_eps)
    clean_in = clean_x + adv_clean

    def inner_fn(w, u, st, step=0):
      batch = inner_batch(clean_in, clean_y, u + adv_poison, target)
      return inner_value(w, st, batch, jax.random.fold_in(k_inner, step))

    def outer_fn(w, u, st):
      del u  # F does not depend on the poisons directly.
      return outer(w, st, val_x, val_y, k_outer)

    inner_losses = []
    if a.mode == 'implicit':
      for i in range(a.inner_steps):
        (value, new_state), grads = jax.value_and_grad(
            lambda w: inner_fn(w, poisons, state, i), has_aux=True)(params)
        updates, opt_state = inner_tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        state = new_state
        inner_losses.append(value)
      hyper_inner = lambda w, u, st: inner_fn(w, u, st, a.inner_steps)
      grad_u, aux = bilevel.implicit_hypergrad(
          outer_fn, hyper_inner, params, poisons, method=a.solver, damping=a.damping,
          maxiter=a.solver_steps, learning_rate=a.solver_learning_rate, init=solution,
          solver_state=solver_state, has_aux=True, state=state, return_aux=True,
          unroll=bool(a.get('unroll', True)))
      solution = aux.solution
      if aux.solver_state is not None:  # Only ApproxGrad has a state; others keep theirs,
        solver_state = aux.solver_state  # so the carry's structure (and compilation) holds.
      residual, objective = aux.residual, aux.value
      inner_loss = jnp.stack(inner_losses).mean()
    else:
      grad_u, aux = bilevel.unrolled_hypergrad(
          outer_fn, inner_fn, params, poisons, num_steps=a.inner_steps,
          optimizer=inner_tx, opt_state=opt_state, has_aux=True, state=state,
          pass_step=True, remat=bool(a.get('remat', False)), return_aux=True,
          unroll=bool(a.get('unroll', True)))
      params, opt_state, state = aux.params, aux.opt_state, aux.state
      residual, objective = jnp.zeros(()), aux.value
      inner_loss = jnp.mean(aux.inner_losses)
    carry = (params, state, opt_state, solution, solver_state)
    return carry, grad_u, objective, inner_loss, residual

  @jax.jit
  def step(carry, clean_x, clean_y, poisons, clean_of_poisons, moments, val_x, val_y,
           adv_eps, key):
    k_aug, k_adv, k_inner, k_hyper, k_outer, k_val = jax.random.split(key, 6)
    del k_hyper
    if augment:
      clean_x = data_lib.random_crop_flip(k_aug, clean_x)
      val_x = data_lib.random_crop_flip(k_val, val_x)
    if num_surrogates == 1:
      carry, grad_u, objective, inner_loss, residual = surrogate_grad(
          carry, clean_x, clean_y, poisons, val_x, val_y, adv_eps, (k_adv, k_inner, k_outer))
      params = carry[0]
    else:
      # The ensemble: every surrogate (stacked on a leading axis) takes its inner steps
      # on the same batches with its own noise; the poisons follow the mean
      # hypergradient. The members are traced one after another (a rolled loop,
      # lax.map, ran the convolutions' second-order work several times slower on XLA
      # CPU; see config.attack.unroll).
      outs = [surrogate_grad(jax.tree.map(lambda x, j=j: x[j], carry), clean_x, clean_y,
                             poisons, val_x, val_y, adv_eps,
                             tuple(jax.random.fold_in(k, j)
                                   for k in (k_adv, k_inner, k_outer)))
              for j in range(num_surrogates)]
      carry, grads, objectives, inner_losses, residuals = jax.tree.map(
          lambda *xs: jnp.stack(xs), *outs)
      grad_u = jnp.mean(grads, axis=0)
      objective, inner_loss = jnp.mean(objectives), jnp.mean(inner_losses)
      residual = jnp.max(residuals)
      params = carry[0]

    finite = (_tree_isfinite(grad_u) & jnp.isfinite(objective) & jnp.isfinite(inner_loss)
              & _tree_isfinite(params))
    grad_u = jnp.where(finite, grad_u, 0.0)
    m, v, count = moments
    if a.poison_optimizer == 'adam':
      b1, b2 = 0.9, 0.999
      count = count + finite.astype(count.dtype)
      m = jnp.where(finite, b1 * m + (1 - b1) * grad_u, m)
      v = jnp.where(finite, b2 * v + (1 - b2) * grad_u ** 2, v)
      t = jnp.maximum(count, 1).astype(jnp.float32).reshape(-1, *[1] * (m.ndim - 1))
      update = (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + 1e-8)
    else:
      update = jnp.sign(grad_u)
    new_poisons = project_linf(poisons - a.poison_learning_rate * update, clean_of_poisons,
                               eps)
    new_poisons = jnp.where(finite, new_poisons, poisons)
    metrics = {
        'outer_objective': objective, 'inner_loss': inner_loss,
        'hypergrad_norm': jnp.sqrt(jnp.sum(grad_u ** 2)), 'solver_residual': residual,
        'finite': finite,
    }
    if return_hypergrad:
      metrics['hypergrad'] = grad_u
    return carry, new_poisons, (m, v, count), metrics

  return step, inner_tx


# Compiled outer steps by (config, model, objective): repeated attacks in one process (seeds,
# tests, the protocol's cells) reuse the compilation.
_STEP_CACHE: dict[Any, Any] = {}


def _cached(cache: dict, config, model, build):
  """``build()`` once per (config, model, objective) in ``cache`` (at most 17 entries)."""
  key = _step_key(config, model)
  if key not in cache:
    if len(cache) > 16:
      cache.clear()
    cache[key] = build()
  return cache[key]


def _cached_outer_step(config, model, train_apply):
  return _cached(_STEP_CACHE, config, model, lambda: make_outer_step(config, train_apply))


def _step_key(config, model):
  loop_only = ('num_epochs', 'steps_per_epoch', 'reinit_every_epochs', 'log_every_steps',
               'checkpoint_every_steps', 'pretrain_epochs')
  used = {'target_class': config.target_class, 'eps': config.eps,
          'attack': {k: v for k, v in config.attack.to_dict().items() if k not in loop_only}}
  return (json.dumps(used, sort_keys=True, default=str), model, outer_objective)


_PRETRAIN_CACHE: dict[Any, Any] = {}


def _cached_pretrain_step(config, model, train_apply, inner_tx):
  return _cached(_PRETRAIN_CACHE, config, model,
                 lambda: make_pretrain_step(config, train_apply, inner_tx))


# ------------------------------------------------------------------------------------
# The attack loop.


@dataclasses.dataclass
class PoisonResult:
  """Poisons and where they came from."""
  poisons: np.ndarray        # [P, H, W, C] the poisoned target-class training images
  indices: np.ndarray        # [P] their indices in the training split
  clean_images: np.ndarray   # [P, H, W, C]
  metadata: dict[str, Any]
  path: str                  # the poison file


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for an attack config that cannot work, before any work."""
  validation.check_choice('config.dataset', config.dataset, data_lib.DATASETS)
  validation.check_choice('config.model', config.model, models.MODELS)
  num_classes = data_lib.info(config.dataset)['num_classes']
  validation.check_int('config.target_class', config.target_class, 0, num_classes - 1,
                       meaning=f'a class of {config.dataset!r}')
  try:
    eps_ok = 0 < float(config.eps) <= 1
  except (TypeError, ValueError):
    eps_ok = False
  if not eps_ok:
    raise ValueError(f'config.eps={config.eps!r} must be a number in (0, 1] (the '
                     'poisons\' L-inf budget in pixels).')
  data_lib.check_poison_fraction('config.poison_fraction',
                                 config.get('poison_fraction', 1.0))
  validation.check_int('config.poison_subset_seed', config.get('poison_subset_seed', 0),
                       0, meaning='seeds which images a poison_fraction < 1 poisons')
  a = config.attack
  validation.check_choice('config.attack.inner_method', a.get('inner_method', ''),
                          ('',) + INNER_METHODS)
  for name, value, accepted in (('method', a.method, INNER_METHODS),
                                ('mode', a.mode, MODES), ('solver', a.solver, SOLVERS),
                                ('poison_optimizer', a.poison_optimizer,
                                 POISON_OPTIMIZERS)):
    validation.check_choice(f'config.attack.{name}', value, accepted)
  if a.sigma <= 0:
    raise ValueError(f'config.attack.sigma={a.sigma} must be > 0.')
  validation.check_ints('config.attack.', a, (
      'clean_batch_size', 'poison_batch_size', 'val_batch_size', 'inner_steps',
      'solver_steps', 'num_epochs', 'outer_num_noise', 'reinit_every_epochs'))
  validation.check_int('config.attack.num_surrogates', a.get('num_surrogates', 1), 1,
                       meaning='the size of the surrogate ensemble')
  validation.check_int('config.attack.pretrain_epochs', a.get('pretrain_epochs', 0), 0,
                       meaning='epochs a fresh surrogate trains before the outer steps')
  for old, name in _RENAMED_FIELDS.items():
    if old in a:
      raise ValueError(f'config.attack.{old} is now called config.attack.{name}.')
  for name in _RENAMED_FIELDS.values():
    value = a.get(name)
    if not (validation.is_int(value) or isinstance(value, float)) or value <= 0:
      raise ValueError(f'config.attack.{name}={value!r} must be a number > 0.')
  if a.damping < 0:
    raise ValueError(f'config.attack.damping={a.damping} must be >= 0.')
  if not 0 <= a.alpha < 0.5:
    raise ValueError(f'config.attack.alpha={a.alpha} must be in [0, 0.5).')
  robust_training.validate_hparams(surrogate_method(a), prefix='config.attack.inner.',
                                   **dict(a.inner))
  for name, meaning in (('steps_per_epoch', '0: the whole clean pool per epoch'),
                        ('checkpoint_every_steps', '0: every epoch')):
    validation.check_int(f'config.attack.{name}', a.get(name, 0), 0, meaning=meaning)


# The config fields a resumed attack may change (dotted paths into settings.json): they
# do not change the poisons of the steps already taken. More epochs continue the run;
# data_dir may move since the splits' content is fingerprinted (inputs).
RESUMABLE_FIELDS = ('config.attack.num_epochs', 'config.attack.log_every_steps',
                    'config.attack.checkpoint_every_steps', 'config.data_dir')


def attack_settings(config: ml_collections.ConfigDict,
                    splits: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
  """What an attack workdir records in ``settings.json`` and a resumed attack must match:
  ``{'config': the config, 'inputs': {'train_data', 'val_data': SHA-256 of each split's
  images and labels}}``."""
  return {'config': config.to_dict(),
          'inputs': {f'{name}_data': workdir_lib.array_digest(splits[name]['image'],
                                                              splits[name]['label'])
                     for name in ('train', 'val')}}


def surrogate_restarts(epoch: int, period: int, num_surrogates: int = 1) -> list[int]:
  """The surrogates re-initialised at the start of ``epoch`` (counted from 1; all start
  fresh at epoch 1): surrogate j every ``period`` epochs from epoch
  ``1 + floor(j * period / num_surrogates)`` on. One surrogate restarts at epochs
  1 + period, 1 + 2 period, ..."""
  if epoch <= 1:
    return []
  since = [epoch - 1 - (j * period) // num_surrogates for j in range(num_surrogates)]
  return [j for j, e in enumerate(since) if e >= 0 and e % period == 0]


def _sample(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
  return rng.choice(n, size=min(size, n), replace=False)


def pacd(config: ml_collections.ConfigDict, splits: Mapping[str, Mapping[str, np.ndarray]],
         workdir: str) -> PoisonResult:
  """Runs PACD on ``splits`` and writes ``workdir/poisons.npz``; resumable.

  Args:
    config: an attack config (``rsp/configs/poison_mnist.py``).
    splits: ``{'train', 'val'}`` clean splits; the target class's training points are
      poisoned, its validation points drive the outer objective.
    workdir: config (``config.json``), settings and input fingerprints
      (``settings.json``), metrics (``attack_metrics.jsonl``), checkpoints
      (``attack_checkpoints/``) and the poison file. If it holds an attack with the same
      settings (up to ``RESUMABLE_FIELDS``) on the same splits, the attack resumes from
      its newest intact checkpoint.

  Returns:
    The poisons (also in ``workdir/poisons.npz``).

  Raises:
    ValueError: a bad config or split; a workdir holding another attack
      (``rsp.workdir.SettingsMismatchError``, naming every differing field, e.g.
      ``config.seed``), more steps than the config asks for, or unusable
      (``rsp.workdir.WorkdirError``). Raised before any step is taken or file written.
  """
  validate_config(config)
  info = data_lib.info(config.dataset)
  for name in ('train', 'val'):
    if name not in splits:
      raise ValueError(f'splits has no {name!r} split; it has {sorted(splits)}.')
    data_lib.validate(splits[name], name=f'splits[{name!r}]', image_shape=info['shape'],
                      num_classes=info['num_classes'])
  a = config.attack
  target = int(config.target_class)
  train_ds, val_ds = splits['train'], splits['val']
  # The poisoned images (all of the class, or a seeded fraction of it); the clean pool
  # of the inner problem is every other training point, the class's unpoisoned images
  # included, as in the victim's training set.
  fraction = float(config.get('poison_fraction', 1.0))
  subset_seed = int(config.get('poison_subset_seed', 0))
  poison_idx = data_lib.poison_indices(train_ds, target, fraction, subset_seed,
                                       name='config.poison_fraction')
  num_class = len(data_lib.class_indices(train_ds, target))
  clean_pool = data_lib.subset(train_ds, np.setdiff1d(
      np.arange(len(train_ds['label'])), poison_idx))
  val_t = data_lib.select_class(val_ds, target)
  clean_poisons = np.asarray(train_ds['image'])[poison_idx]
  n_clean, n_p, n_v = len(clean_pool['label']), len(poison_idx), len(val_t['label'])
  b_c = min(a.clean_batch_size, n_clean)
  steps_per_epoch = max(1, n_clean // b_c)
  if a.get('steps_per_epoch', 0):
    steps_per_epoch = min(steps_per_epoch, int(a.steps_per_epoch))
  total_steps = steps_per_epoch * a.num_epochs

  settings = attack_settings(config, splits)
  settings_path = os.path.join(workdir, 'settings.json')
  workdir_lib.check_settings(settings_path, settings, resumable=RESUMABLE_FIELDS,
                             what='PACD attack')
  ckpt_dir = os.path.join(workdir, 'attack_checkpoints')
  workdir_lib.ensure_directory(workdir, name='workdir')
  workdir_lib.ensure_directory(ckpt_dir, name='checkpoint directory')
  ckpt = checkpointing.Checkpointer(ckpt_dir)
  done_steps = ckpt.latest_step() or 0
  if done_steps > total_steps:
    ckpt.close()
    raise ValueError(
        f'config.attack.num_epochs={a.num_epochs} gives {total_steps} steps, but '
        f'{workdir} holds an attack of {done_steps} steps; accepted: num_epochs >= '
        f'{-(-done_steps // steps_per_epoch)}, or a new workdir.')
  workdir_lib.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  workdir_lib.write_json(settings_path, settings)
  model = models.get_model(config.model, info['num_classes'],
                           **dict(config.get('model_kwargs', {})))
  train_apply = models.make_train_apply_fn(model)
  step_fn, inner_tx = _cached_outer_step(config, model, train_apply)

  root = jax.random.key(config.seed)
  init_key, step_key = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
  pretrain_key = jax.random.fold_in(root, 2)

  num_surrogates = int(a.get('num_surrogates', 1))
  pretrain_epochs = int(a.get('pretrain_epochs', 0))
  pretrain_step = (_cached_pretrain_step(config, model, train_apply, inner_tx)
                   if pretrain_epochs else None)
  poison_labels = np.full((n_p,), target, np.asarray(clean_pool['label']).dtype)

  def pretrain(carry, key, poisons_now):
    """A fresh surrogate's ``pretrain_epochs`` epochs on the clean pool and the poisons
    as they are now, in shuffled batches of B_c + B_p points (the seed of ``key``)."""
    params, state, opt_state, solution, solver_state = carry
    images = np.concatenate([clean_pool['image'], poisons_now])
    labels = np.concatenate([clean_pool['label'], poison_labels])
    batch = min(b_c + a.poison_batch_size, len(labels))
    steps = len(labels) // batch
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    loss = jnp.zeros(())
    for e in range(pretrain_epochs):
      perm = np.random.default_rng(seed + [e]).permutation(len(labels))
      adv_eps = robust_training.smoothadv_cycle_epsilon(
          e + 1, a.inner.get('epsilon', 0.0)) if surrogate_method(a) == 'smoothadv' else 0.0
      for i in range(steps):
        idx = perm[i * batch:(i + 1) * batch]
        params, state, opt_state, loss = pretrain_step(
            params, state, opt_state, images[idx], labels[idx], jnp.float32(adv_eps),
            jax.random.fold_in(key, e * steps + i))
    if pretrain_epochs:
      logging.info('PACD: pre-trained a surrogate for %d epochs (last inner loss %.4f).',
                   pretrain_epochs, float(loss))
    return (params, state, opt_state, solution, solver_state)

  def one_carry(cycle: int, j: int | None, poisons_now=None):
    """Surrogate j (None: the only one) of restart ``cycle``, drawn from
    ``fold_in(init_key, cycle)`` (then ``fold_in(., j)``) and pre-trained on
    ``poisons_now`` if given (None: untrained, the template of a checkpoint) with the
    keys of ``pretrain_key`` folded the same way."""
    keys = [jax.random.fold_in(k, cycle) for k in (init_key, pretrain_key)]
    if j is not None:
      keys = [jax.random.fold_in(k, j) for k in keys]
    params, state = models.split_variables(models.init_model(keys[0], model, info['shape']))
    solution = jax.tree.map(jnp.zeros_like, params)
    solver_state = optax.adam(a.solver_learning_rate).init(params)
    carry = (params, state, inner_tx.init(params), solution, solver_state)
    if poisons_now is not None and pretrain_epochs:
      carry = pretrain(carry, keys[1], poisons_now)
    return carry

  def fresh_carry(cycle: int, poisons_now=None):
    """Fresh surrogates of restart ``cycle`` (see ``one_carry``)."""
    if num_surrogates == 1:
      return one_carry(cycle, None, poisons_now)
    carries = [one_carry(cycle, j, poisons_now) for j in range(num_surrogates)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *carries)

  def replace_surrogate(carry, j: int, cycle: int, poisons_now):
    """``carry`` with surrogate j re-initialised (an ensemble's staggered restart)."""
    new = one_carry(cycle, j, poisons_now)
    return jax.tree.map(lambda old, x: old.at[j].set(x), carry, new)

  def fresh_moments():
    return (np.zeros_like(clean_poisons), np.zeros_like(clean_poisons),
            np.zeros((n_p,), np.int32))

  def pack(carry, poisons, moments):
    return {'carry': carry, 'poisons': poisons, 'm': moments[0], 'v': moments[1],
            'count': moments[2]}

  like = pack(fresh_carry(0), clean_poisons.copy(), fresh_moments())
  metrics_path = os.path.join(workdir, 'attack_metrics.jsonl')
  restored, meta = ckpt.restore_or_init(like, {'step': 0, 'nonfinite_steps': 0,
                                               'seconds': 0.0})
  start = int(meta['step'])
  nonfinite = int(meta['nonfinite_steps'])
  seconds = float(meta['seconds'])
  carry = restored['carry']
  poisons = np.array(restored['poisons'], np.float32)
  moments = (np.array(restored['m']), np.array(restored['v']), np.array(restored['count']))
  workdir_lib.trim_json_lines(metrics_path, start)
  if start:
    logging.info('PACD: resuming at step %d of %d from %s.', start, total_steps, workdir)
  writer = workdir_lib.JsonLinesWriter(metrics_path)
  log_every = max(1, a.get('log_every_steps', 10))
  ckpt_every = a.get('checkpoint_every_steps', 0) or steps_per_epoch  # 0: every epoch.
  t_start = time.time()
  if start == 0 and pretrain_epochs:
    carry = fresh_carry(0, poisons)  # The checkpoint's template was not pre-trained.
  for step in range(start, total_steps):
    epoch = step // steps_per_epoch + 1  # counts from 1 as in the reference
    if step % steps_per_epoch == 0 and step > 0:
      restart = surrogate_restarts(epoch, a.reinit_every_epochs, num_surrogates)
      if num_surrogates == 1 and restart:
        # Re-initialise the surrogate, the solver and every optimiser state; poisons stay.
        carry = fresh_carry(step, poisons)
        moments = fresh_moments()
        logging.info('PACD: re-initialised the surrogate at epoch %d.', epoch)
      for j in restart if num_surrogates > 1 else ():
        carry = replace_surrogate(carry, j, step, poisons)
        if j == 0:
          moments = fresh_moments()  # The poisons' moments follow the first surrogate.
        logging.info('PACD: re-initialised surrogate %d of %d at epoch %d.', j,
                     num_surrogates, epoch)
    rng = np.random.default_rng([config.seed, step])
    perm_epoch = np.random.default_rng([config.seed, 10**6 + epoch - 1]).permutation(n_clean)
    pos = step % steps_per_epoch
    ci = perm_epoch[pos * b_c:(pos + 1) * b_c]
    pi = _sample(rng, n_p, a.poison_batch_size)
    vi = _sample(rng, n_v, a.val_batch_size)
    adv_eps = robust_training.smoothadv_cycle_epsilon(
        epoch, a.inner.get('epsilon', 0.0)) if surrogate_method(a) == 'smoothadv' else 0.0
    batch_moments = (moments[0][pi], moments[1][pi], moments[2][pi])
    carry, new_p, new_m, m = step_fn(
        carry, clean_pool['image'][ci], clean_pool['label'][ci], poisons[pi],
        clean_poisons[pi], batch_moments, val_t['image'][vi], val_t['label'][vi],
        jnp.float32(adv_eps), jax.random.fold_in(step_key, step))
    m = {k: float(v) for k, v in m.items()}
    if not m['finite']:
      nonfinite += 1
      logging.warning('PACD step %d: non-finite objective, loss or hypergradient; '
                      'poison update skipped, surrogate re-initialised.', step)
      carry = fresh_carry(10**6 + step, poisons)
    else:
      poisons[pi] = np.asarray(new_p)
      for arr, new in zip(moments, new_m):
        arr[pi] = np.asarray(new)
    done = step + 1
    if done % log_every == 0 or done == total_steps:
      delta = poisons - clean_poisons
      elapsed = seconds + time.time() - t_start
      rate = (done - start) / max(time.time() - t_start, 1e-9)
      writer.write_scalars(done, dict(
          {k: v for k, v in m.items() if k != 'finite'}, epoch=epoch,
          nonfinite_steps=nonfinite, perturbation_linf=float(np.abs(delta).max()),
          perturbation_l2=float(np.sqrt((delta ** 2).reshape(n_p, -1).sum(1)).mean()),
          seconds=elapsed))
      logging.info('PACD step %d/%d epoch %d: F %.4f inner %.4f |g| %.3g res %.3g '
                   '| %.2f steps/s | %.0f s left', done, total_steps, epoch,
                   m['outer_objective'], m['inner_loss'], m['hypergrad_norm'],
                   m['solver_residual'], rate, (total_steps - done) / max(rate, 1e-9))
    if done % ckpt_every == 0 or done == total_steps:
      seconds_now = seconds + time.time() - t_start
      ckpt.save(done, pack(carry, poisons, moments),
                {'step': done, 'nonfinite_steps': nonfinite, 'seconds': seconds_now})
  seconds += time.time() - t_start
  writer.close()
  ckpt.close()

  metadata = {
      'dataset': config.dataset, 'data_seed': int(config.get('data_seed', 0)),
      'target_class': target, 'eps': float(config.eps), 'method': a.method,
      'inner_method': surrogate_method(a),
      'sigma': float(a.sigma), 'seed': int(config.seed), 'model': config.model,
      'mode': a.mode, 'solver': a.solver, 'steps': total_steps,
      'nonfinite_steps': nonfinite, 'attack_seconds': seconds, 'kind': 'pacd',
      'poison_fraction': fraction, 'poison_subset_seed': subset_seed,
      'num_class_images': num_class, 'num_surrogates': num_surrogates,
      'pretrain_epochs': pretrain_epochs,
  }
  path = os.path.join(workdir, 'poisons.npz')
  data_lib.save_poisons(path, poisons=poisons, indices=poison_idx,
                        clean_images=clean_poisons,
                        labels=np.asarray(train_ds['label'])[poison_idx], metadata=metadata)
  logging.info('PACD: wrote %s after %.0f s (%d non-finite steps).', path, seconds,
               nonfinite)
  return PoisonResult(poisons=poisons, indices=poison_idx, clean_images=clean_poisons,
                      metadata=data_lib.load_poisons(path)['metadata'], path=path)


def run_attack(config: ml_collections.ConfigDict, workdir: str) -> PoisonResult:
  """Loads the config's data (``rsp.data.load_splits``) and runs ``pacd``; what
  ``experiments/poison.py`` calls. Bad configs and a workdir holding another attack are
  refused before any work (see ``pacd``)."""
  validate_config(config)
  return pacd(config, data_lib.load_splits(config), workdir)
