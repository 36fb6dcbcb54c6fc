"""The victim's training methods as pure losses with one signature.

Every loss is called as::

    loss, (new_state, metrics) = loss_fn(params, state, batch, key, *, apply_fn, **hp)

* ``params``: trainable parameters (differentiated); ``state``: the rest of the model's
  variables (BatchNorm statistics, ``{}`` if none), threaded through and returned.
* ``batch``: ``{'image': [B, H, W, C] float32 in [0, 1], 'label': [B] int32}``; the
  ``standard`` and ``gaussian`` losses also take ``'soft_label'`` ``[B, K]`` (mixup's
  soft targets, ``rsp.defenses.mixup``), which then replaces ``'label'`` as the target
  of the cross-entropy (``'label'`` only feeds the accuracy metric); ``macer`` and
  ``smoothadv`` refuse it.
* ``key``: a ``jax.random`` key for the noise (and nothing else).
* ``apply_fn(params, state, images, train) -> (logits, new_state)``, as made by
  ``rsp.models.make_train_apply_fn``.
* ``metrics``: a dict of scalars for logging.

Methods (``get_loss(name)``):

* ``standard``: cross-entropy.
* ``gaussian``: Gaussian data augmentation (Cohen et al. 2019): cross-entropy on
  ``num_noise`` copies of each image with noise N(0, sigma^2 I).
* ``macer``: MACER (Zhai et al. 2020): soft smoothed cross-entropy plus lambda times the
  hinge on the soft certified-radius surrogate.
* ``smoothadv``: SmoothAdv (Salman et al. 2019): L2 PGD against the soft smoothed
  classifier with ``num_noise`` noise samples, then cross-entropy on the adversarial
  example plus the same noise; the adversarial example is a constant for the update.

The differentiable soft-smoothing pieces (``soft_smoothed_probs``,
``certified_radius_surrogate``) are shared with the PACD attack's outer objective, and
SmoothAdv's radius schedules (``smoothadv_warmup_epsilon`` for the victim,
``smoothadv_cycle_epsilon`` for the attack's inner problem) live here too.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import ndtri

Batch = Mapping[str, jax.Array]
TrainApplyFn = Callable[..., tuple[jax.Array, Any]]

# ------------------------------------------------------------------------------------
# Shared pieces.


def add_gaussian_noise(key: jax.Array, images: jax.Array, sigma: float,
                       num_noise: int = 1) -> jax.Array:
  """``num_noise`` noisy copies of each image: ``[B*num_noise, H, W, C]``.

  Copies of image i are rows ``i*num_noise ... (i+1)*num_noise - 1``, so reshaping
  the network's output to ``[B, num_noise, K]`` groups them by image. Noisy images are
  not clipped to [0, 1] (as in Cohen et al.).
  """
  tiled = jnp.repeat(images, num_noise, axis=0)
  return tiled + sigma * jax.random.normal(key, tiled.shape, tiled.dtype)


def soft_smoothed_probs(logits: jax.Array, beta: float = 1.0) -> jax.Array:
  """The soft smoothed classifier, ``mean_i softmax(beta * z(x + eta_i))``.

  Args:
    logits: ``[B, k, K]`` logits of k noisy copies of B images.
    beta: inverse temperature (Zhai et al. 2020).

  Returns:
    ``[B, K]`` class probabilities of the soft smoothed classifier.
  """
  return jnp.mean(jax.nn.softmax(beta * logits, axis=-1), axis=1)


def certified_radius_surrogate(probs: jax.Array, labels: jax.Array, *, sigma: float,
                               alpha: float = 1e-3) -> tuple[jax.Array, jax.Array]:
  """Differentiable certified-radius surrogate of a soft smoothed classifier.

  ``R(x) = sigma/2 * (Phi^-1((1-2a) p_(1) + a) - Phi^-1((1-2a) p_(2) + a))`` where p_(1),
  p_(2) are the top-two probabilities: Cohen's radius ``sigma Phi^-1(pA)`` is
  ``sigma/2 (Phi^-1(pA) - Phi^-1(pB))`` with ``pB = 1 - pA``; the top-2 gap is MACER's
  (Zhai et al. 2020) tighter two-class form. The affine squash with ``a = alpha`` keeps
  ``Phi^-1`` finite (largest radius ``sigma Phi^-1(1 - a)``); ``alpha = 0`` disables it.

  Args:
    probs: ``[B, K]`` soft smoothed probabilities.
    labels: ``[B]`` true labels.
    sigma: noise level.
    alpha: the squash parameter in [0, 1/2).

  Returns:
    ``(radius [B], correct [B] bool)``: the surrogate radius of every point and whether
    the soft smoothed classifier's top class is the true label. The radius of an
    incorrect point is meaningless; callers mask it with ``correct``.
  """
  top2, top2_idx = jax.lax.top_k(probs, 2)
  squashed = (1.0 - 2.0 * alpha) * top2 + alpha
  gap = ndtri(squashed[:, 0]) - ndtri(squashed[:, 1])
  correct = top2_idx[:, 0] == labels
  return 0.5 * sigma * gap, correct


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def _batch_cross_entropy(logits: jax.Array, labels: jax.Array, batch: Batch,
                         num_noise: int = 1) -> jax.Array:
  """Cross-entropy against ``batch['soft_label']`` (each row repeated ``num_noise``
  times, as ``add_gaussian_noise`` tiles the images) if the batch has soft labels,
  else against the integer ``labels``."""
  if 'soft_label' not in batch:
    return cross_entropy(logits, labels)
  soft = jnp.repeat(batch['soft_label'], num_noise, axis=0)
  return optax.softmax_cross_entropy(logits, soft).mean()


def _refuse_soft_labels(method: str, batch: Batch) -> None:
  if 'soft_label' in batch:
    raise ValueError(f"batch has 'soft_label' (mixup), but the {method} loss takes "
                     'integer labels only; accepted with soft labels: standard, '
                     'gaussian.')


def _check(name: str, value: Any, ok: bool, accepted: str) -> None:
  if not ok:
    raise ValueError(f'{name}={value!r} is invalid; accepted: {accepted}.')


def _is_static(x) -> bool:
  return isinstance(x, (int, float))


# ------------------------------------------------------------------------------------
# Losses.


def standard_loss(params, state, batch: Batch, key: jax.Array, *,
                  apply_fn: TrainApplyFn, train: bool = True):
  """Cross-entropy on clean images (``key`` is unused); against ``batch['soft_label']``
  if given (mixup)."""
  del key
  logits, state = apply_fn(params, state, batch['image'], train)
  loss = _batch_cross_entropy(logits, batch['label'], batch)
  return loss, (state, {'loss': loss, 'accuracy': _accuracy(logits, batch['label'])})


def gaussian_loss(params, state, batch: Batch, key: jax.Array, *,
                  apply_fn: TrainApplyFn, sigma: float = 0.5, num_noise: int = 1,
                  train: bool = True):
  """Gaussian data augmentation (Cohen, Rosenfeld & Kolter 2019).

  ``L = 1/(B m) sum_i sum_j CE(z(x_i + eta_ij), y_i)``, ``eta_ij ~ N(0, sigma^2 I)``,
  ``m = num_noise``. With ``sigma = 0`` it is the standard cross-entropy. With
  ``batch['soft_label']`` (mixup of the clean images, then the noise) the target of
  ``CE`` is that soft label.
  """
  _check('sigma', sigma, not _is_static(sigma) or sigma >= 0, 'sigma >= 0')
  _check('num_noise', num_noise, isinstance(num_noise, int) and num_noise >= 1,
         'an integer >= 1')
  noisy = add_gaussian_noise(key, batch['image'], sigma, num_noise)
  labels = jnp.repeat(batch['label'], num_noise)
  logits, state = apply_fn(params, state, noisy, train)
  loss = _batch_cross_entropy(logits, labels, batch, num_noise)
  return loss, (state, {'loss': loss, 'accuracy': _accuracy(logits, labels)})


def macer_loss(params, state, batch: Batch, key: jax.Array, *,
               apply_fn: TrainApplyFn, sigma: float = 0.25, num_noise: int = 16,
               lbd: float = 12.0, gamma: float = 8.0, beta: float = 16.0,
               alpha: float = 1e-3, train: bool = True):
  """MACER: attack-free robust training by maximising the certified radius (Zhai 2020).

  ``L = 1/B sum_i [ -log(pbar_{y_i}(x_i) + 1e-10)
                    + lbd * 1[c_hat(x_i) = y_i, xi_i <= gamma] * sigma/2 * (gamma - xi_i) ]``

  with ``pbar = mean_j softmax(z(x + eta_j))`` over ``k = num_noise`` noise draws,
  ``xi_i = Phi^-1((1-2a) p_(1) + a) - Phi^-1((1-2a) p_(2) + a)`` from the
  ``beta``-scaled soft smoothed classifier and ``c_hat`` its top class. With ``lbd = 0``
  this is the soft smoothed cross-entropy.
  """
  _check('sigma', sigma, not _is_static(sigma) or sigma > 0, 'sigma > 0')
  _check('num_noise', num_noise, isinstance(num_noise, int) and num_noise >= 1,
         'an integer >= 1')
  _check('lbd', lbd, not _is_static(lbd) or lbd >= 0, 'lbd >= 0')
  _check('gamma', gamma, not _is_static(gamma) or gamma > 0, 'gamma > 0')
  _check('beta', beta, not _is_static(beta) or beta > 0, 'beta > 0')
  _check('alpha', alpha, not _is_static(alpha) or 0 <= alpha < 0.5, '0 <= alpha < 0.5')
  _refuse_soft_labels('macer', batch)
  b = batch['image'].shape[0]
  labels = batch['label']
  noisy = add_gaussian_noise(key, batch['image'], sigma, num_noise)
  logits, state = apply_fn(params, state, noisy, train)
  logits = logits.reshape(b, num_noise, -1)  # [B, k, K]
  pbar = soft_smoothed_probs(logits, 1.0)
  ce = -jnp.log(jnp.take_along_axis(pbar, labels[:, None], 1)[:, 0] + 1e-10)
  # With sigma = 2 the surrogate radius is the Gaussian-quantile gap xi itself.
  xi, correct = certified_radius_surrogate(
      soft_smoothed_probs(logits, beta), labels, sigma=2.0, alpha=alpha)
  active = correct & (xi <= gamma) & jnp.isfinite(xi)
  hinge = jnp.where(active, 0.5 * sigma * (gamma - jnp.where(active, xi, 0.0)), 0.0)
  loss = jnp.mean(ce + lbd * hinge)
  metrics = {'loss': loss, 'ce_smooth': jnp.mean(ce), 'hinge': jnp.mean(hinge),
             'accuracy': jnp.mean(jnp.argmax(pbar, -1) == labels)}
  return loss, (state, metrics)


def _l2_norm(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1) + 1e-20)


def _per_example(scale: jax.Array, x: jax.Array) -> jax.Array:
  return scale.reshape((-1,) + (1,) * (x.ndim - 1)) * x


def project_l2(delta: jax.Array, epsilon) -> jax.Array:
  """Projects each ``delta[i]`` onto the L2 ball of radius ``epsilon``."""
  norms = _l2_norm(delta)
  return _per_example(jnp.minimum(1.0, epsilon / norms), delta)


def smoothadv_perturbation(params, state, images: jax.Array, labels: jax.Array,
                           noise: jax.Array, *, apply_fn: TrainApplyFn, epsilon,
                           num_steps: int = 2, step_size=None, pgd: str = 'salman',
                           clip: bool = True, train: bool = True) -> jax.Array:
  """SmoothAdv's L2 attack on the soft smoothed classifier (Salman et al. 2019).

  Maximises ``-log( 1/m sum_j softmax(z(x' + eta_j))_y )`` over ``||x' - x||_2 <= eps``
  with the noise ``eta`` [B, m, H, W, C] held fixed. ``pgd='salman'``: ``num_steps``
  normalised-gradient steps of size ``step_size`` (default 2 eps / num_steps), each
  followed by projection onto the ball (and [0, 1] if ``clip``). ``pgd='adam'``: the
  reference PACD code's variant, Adam ascent steps with learning rate ``eps`` (the
  first is about ``eps * sign(grad)``), clipping to [0, 1], then projection.

  Returns:
    The perturbation ``delta = x' - x`` [B, H, W, C], with its gradient stopped.
  """
  b, m = noise.shape[:2]
  step_size = 2.0 * epsilon / num_steps if step_size is None else step_size

  def attack_loss(delta):
    x_adv = images + delta
    if clip:
      x_adv = jnp.clip(x_adv, 0.0, 1.0)
    noisy = (x_adv[:, None] + noise).reshape(b * m, *images.shape[1:])
    logits, _ = apply_fn(params, state, noisy, train)
    pbar = soft_smoothed_probs(logits.reshape(b, m, -1), 1.0)
    p_y = jnp.take_along_axis(pbar, labels[:, None], 1)[:, 0]
    return -jnp.sum(jnp.log(p_y + 1e-10))

  grad_fn = jax.grad(attack_loss)
  delta = jnp.zeros_like(images)

  def finish(delta):
    if clip:
      delta = jnp.clip(images + delta, 0.0, 1.0) - images
    return project_l2(delta, epsilon)

  if pgd == 'salman':
    for _ in range(num_steps):
      g = grad_fn(delta)
      delta = delta + _per_example(step_size / _l2_norm(g), g)
      delta = finish(delta)
  elif pgd == 'adam':
    opt = optax.adam(epsilon)
    opt_state = opt.init(delta)
    for _ in range(num_steps):
      g = grad_fn(delta)
      updates, opt_state = opt.update(-g, opt_state)  # ascent
      delta = finish(delta + updates)
  else:
    raise ValueError(f"pgd={pgd!r} is not known; accepted: 'salman', 'adam'.")
  return jax.lax.stop_gradient(delta)


def smoothadv_loss(params, state, batch: Batch, key: jax.Array, *,
                   apply_fn: TrainApplyFn, sigma: float = 0.25, num_noise: int = 1,
                   epsilon=1.0, num_steps: int = 2, pgd: str = 'salman',
                   clip: bool = True, train: bool = True):
  """SmoothAdv: adversarial training of the smoothed classifier (Salman et al. 2019).

  ``x' = x + delta`` with ``delta`` from ``smoothadv_perturbation`` (a constant for the
  weight update), then ``L = 1/(B m) sum_i sum_j CE(z(x'_i + eta_ij), y_i)`` with the same
  noise ``eta`` as the attack. ``epsilon`` may be a traced scalar, so that a warm-up
  schedule does not recompile; ``epsilon = 0`` is Gaussian augmentation.
  """
  _check('sigma', sigma, not _is_static(sigma) or sigma >= 0, 'sigma >= 0')
  _check('num_noise', num_noise, isinstance(num_noise, int) and num_noise >= 1,
         'an integer >= 1')
  _check('epsilon', epsilon, not _is_static(epsilon) or epsilon >= 0, 'epsilon >= 0')
  _check('num_steps', num_steps, isinstance(num_steps, int) and num_steps >= 1,
         'an integer >= 1')
  _refuse_soft_labels('smoothadv', batch)
  images, labels = batch['image'], batch['label']
  b = images.shape[0]
  noise = sigma * jax.random.normal(key, (b, num_noise, *images.shape[1:]), images.dtype)
  delta = smoothadv_perturbation(params, state, images, labels, noise,
                                 apply_fn=apply_fn, epsilon=epsilon, num_steps=num_steps,
                                 pgd=pgd, clip=clip, train=train)
  x_adv = images + delta
  noisy = (x_adv[:, None] + noise).reshape(b * num_noise, *images.shape[1:])
  rep_labels = jnp.repeat(labels, num_noise)
  logits, state = apply_fn(params, state, noisy, train)
  loss = cross_entropy(logits, rep_labels)
  metrics = {'loss': loss, 'accuracy': _accuracy(logits, rep_labels),
             'delta_l2': jnp.mean(_l2_norm(delta))}
  return loss, (state, metrics)


LOSSES: dict[str, Callable[..., Any]] = {
    'standard': standard_loss,
    'gaussian': gaussian_loss,
    'macer': macer_loss,
    'smoothadv': smoothadv_loss,
}

METHODS = tuple(LOSSES)


def get_loss(name: str, **hparams: Any) -> Callable[..., Any]:
  """The loss of training method ``name``, with ``hparams`` bound if given.

  Args:
    name: one of ``METHODS``: 'standard', 'gaussian', 'macer', 'smoothadv'.
    **hparams: keyword hyperparameters of that loss (e.g. ``sigma=0.5``); they are
      checked here, before any work (``validate_hparams``). 0-d numpy or jax scalars
      (``jnp.float32(0.5)``) are bound as the Python numbers they hold.

  Returns:
    ``loss_fn(params, state, batch, key, *, apply_fn, ...)``.
  """
  if name not in LOSSES:
    raise ValueError(f'method={name!r} is not known; accepted: {", ".join(METHODS)}.')
  fn = LOSSES[name]
  if not hparams:
    return fn
  accepted = [p for p in inspect.signature(fn).parameters
              if p not in ('params', 'state', 'batch', 'key', 'apply_fn')]
  unknown = sorted(set(hparams) - set(accepted))
  if unknown:
    raise ValueError(f'{name} loss takes no hyperparameter(s) {unknown}; accepted: '
                     f'{accepted}.')
  hparams = plain_hparams(hparams)
  validate_hparams(name, **hparams)
  return functools.partial(fn, **hparams)


def loss_defaults(name: str, *hparams: str) -> dict[str, Any]:
  """The default hyperparameters of training method ``name``'s loss.

  The keyword defaults of the loss function (MACER's are Zhai et al.'s CIFAR-10 settings,
  which the PACD reference code uses too); configs take the constants that equal them
  from here instead of restating them. ``train`` (the model's mode, not a
  hyperparameter) is left out.

  Example: ``loss_defaults('macer', 'gamma', 'beta')`` is ``{'gamma': 8.0,
  'beta': 16.0}``.

  Args:
    name: one of ``METHODS``.
    *hparams: the hyperparameters to return; all of them if none is named.

  Returns:
    ``{hyperparameter: default value}``, in the loss's argument order.
  """
  if name not in LOSSES:
    raise ValueError(f'method={name!r} is not known; accepted: {", ".join(METHODS)}.')
  defaults = {p.name: p.default
              for p in inspect.signature(LOSSES[name]).parameters.values()
              if p.kind == p.KEYWORD_ONLY and p.default is not p.empty and
              p.name != 'train'}
  unknown = [h for h in hparams if h not in defaults]
  if unknown:
    raise ValueError(f'{name} loss has no hyperparameter(s) {unknown}; accepted: '
                     f'{list(defaults)}.')
  return {h: defaults[h] for h in (hparams or defaults)}


def plain_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
  """``hparams`` with every 0-d numpy or concrete jax scalar replaced by the Python
  number it holds (``jnp.float32(0.5)`` -> ``0.5``, ``np.int64(2)`` -> ``2``).

  Bound hyperparameters are then hashable (compiled steps are cached by them) and pass
  the losses' ``isinstance(num_noise, int)`` checks. Traced values are left alone.
  """
  out = {}
  for k, v in hparams.items():
    if isinstance(v, np.generic) or (
        isinstance(v, (np.ndarray, jax.Array)) and not isinstance(v, jax.core.Tracer)
        and np.ndim(v) == 0):
      v = np.asarray(v).item()
    out[k] = v
  return out


def _is_integer(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# Methods whose loss adds Gaussian noise of level sigma: sigma must be > 0 in a config
# (sigma = 0 is a limit case of the losses, not a robust training method).
_NOISY_METHODS = ('gaussian', 'macer', 'smoothadv')


def validate_hparams(name: str, *, prefix: str = '', **hparams: Any) -> None:
  """Raises ValueError for out-of-range hyperparameters of method ``name``.

  Args:
    name: the training method.
    prefix: how the caller's config names the hyperparameters, for the message
      (``'config.loss.'`` gives ``config.loss.sigma=0.0 is invalid ...``).
    **hparams: the hyperparameters. Numbers may be Python, numpy or 0-d jax scalars.
  """
  checks = {
      'sigma': (lambda v: v > 0 if name in _NOISY_METHODS else v >= 0,
                'sigma > 0' if name in _NOISY_METHODS else 'sigma >= 0'),
      'num_noise': (lambda v: _is_integer(v) and v >= 1, 'an integer >= 1'),
      'lbd': (lambda v: v >= 0, 'lbd >= 0'),
      'gamma': (lambda v: v > 0, 'gamma > 0'),
      'beta': (lambda v: v > 0, 'beta > 0'),
      'alpha': (lambda v: 0 <= v < 0.5, '0 <= alpha < 0.5'),
      'epsilon': (lambda v: v >= 0, 'epsilon >= 0'),
      'num_steps': (lambda v: _is_integer(v) and v >= 1, 'an integer >= 1'),
      'pgd': (lambda v: v in ('salman', 'adam'), "'salman' or 'adam'"),
  }
  for k, v in plain_hparams(hparams).items():
    if k in checks:
      ok, accepted = checks[k]
      try:
        valid = not isinstance(v, (bool, str)) or k == 'pgd'
        valid = valid and bool(ok(v))
      except (TypeError, ValueError):  # e.g. a string or an array where a number belongs.
        valid = False
      if not valid:
        raise ValueError(f'{prefix}{k}={v!r} is invalid for method {name!r}; accepted: '
                         f'{accepted}.')


# ------------------------------------------------------------------------------------
# SmoothAdv's radius schedules.


def smoothadv_warmup_epsilon(epoch: int, epsilon: float, warmup_epochs: int) -> float:
  """The victim's SmoothAdv radius at ``epoch``: a linear warm-up (Salman et al. 2019).

  ``epsilon_t = epsilon * min(1, epoch / warmup_epochs)``, ``epoch`` counting from 0 (so
  epoch 0 trains on clean points plus noise); no warm-up if ``warmup_epochs <= 0``.

  Args:
    epoch: the epoch about to be trained (from 0).
    epsilon: the final L2 radius.
    warmup_epochs: epochs to reach it.

  Returns:
    The radius as a Python float (traced by the step, so it never recompiles).
  """
  if warmup_epochs <= 0:
    return float(epsilon)
  return float(epsilon) * min(1.0, epoch / warmup_epochs)


def smoothadv_cycle_epsilon(epoch: int, epsilon: float, cycle: int = 20) -> float:
  """The SmoothAdv radius of the PACD reference attack's inner problem (Mehra 2021).

  The reference re-warms the victim's attack within every ``cycle``-epoch cycle of
  surrogate re-initialisations; with ``r = epoch % cycle`` (``epoch`` from 1)::

      r == 1: 0 (no attack)    r in {2, 3, 4}: 0.2 r epsilon    r == 0: 0    else: epsilon

  Args:
    epoch: the attack's epoch, counting from 1 as in the reference.
    epsilon: the full L2 radius.
    cycle: the cycle's length in epochs (the reference's 20).

  Returns:
    The radius as a Python float.
  """
  r = epoch % cycle
  if r in (0, 1):
    return 0.0
  if r in (2, 3, 4):
    return 0.2 * r * float(epsilon)
  return float(epsilon)
