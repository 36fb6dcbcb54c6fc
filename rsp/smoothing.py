r"""Gaussian randomized smoothing: Monte Carlo PREDICT and CERTIFY (Cohen et al. 2019).

The smoothed classifier of a base classifier f is

    g(x) = argmax_c P(f(x + eps) = c),   eps ~ N(0, sigma^2 I).

If the top class c_A has probability at least pA_lower >= 1/2 under the noise, g is
constant on the L2 ball around x of radius

    R = sigma * Phi^-1(pA_lower)                                   (Cohen et al., Thm. 1)

where Phi^-1 is the standard normal quantile. CERTIFY picks c_A from n0 noisy samples,
then counts n_A votes for it among n fresh samples and takes pA_lower as the one-sided
(1 - alpha) Clopper-Pearson lower bound; the certificate is wrong with probability at
most alpha. PREDICT returns the top class of n samples unless a two-sided binomial test
of n_A against n_B (the runner-up) at level alpha cannot reject a tie.

Work is split as the house style asks:

* Device (``count_noisy_predictions``): one jitted function draws the noise, runs the
  classifier on fixed-size noisy batches inside ``lax.scan`` (the tail padded and
  masked), takes the argmax and returns per-class counts. Shapes depend only on the
  batch plan, never on the image, so it compiles once per (n, batch_size) for any number
  of images. When n is smaller than the batch, several images share a batch (the
  selection step's n0 = 100 samples alone leave a small model idle). The noisy batch is
  sharded over the local devices (``jax.sharding``); a multi-host ``jax.distributed`` run
  gives each process its own ``indices`` and TSV.
* Host (float64, scipy): the binomial test, the Clopper-Pearson bound
  (``scipy.stats.beta.ppf``) and the radius.

Randomness. Sample j of point i draws its noise from ``fold_in(k_i, j)`` where k_i is that
point's key (``fold_in(key, idx)`` for dataset index ``idx``, split into a selection and
an estimation stream). The counts, and so the certificate, therefore depend only on the
key, the index, the model and (sigma, n0, n): not on the batch size, the grouping of
images or the number of devices. Certifying a clean and a poisoned model with the same
key uses the same noise for both (common random numbers), which lowers the variance of
their ACR difference.

References:
  Cohen, Rosenfeld, Kolter. Certified Adversarial Robustness via Randomized Smoothing.
  ICML 2019.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from rsp import metrics
from rsp import validation

ABSTAIN = metrics.ABSTAIN  # -1: the smoothed classifier declines to predict.

ApplyFn = Callable[[Any, jax.Array], jax.Array]

_BATCH_AXIS = 'batch'
_MAX_SAMPLES = 2**31 - 1  # Counts are int32 on device.

# How many times the device function has been traced (i.e. compiled); the tests assert
# that certifying more images does not raise it.
_num_traces = 0


class CertifyResult(NamedTuple):
  """The outcome of CERTIFY for one point.

  Attributes:
    prediction: the certified class, or ``ABSTAIN``.
    radius: the certified L2 radius ``sigma * Phi^-1(pa_lower)``; 0.0 when abstaining.
    pa_lower: the one-sided (1 - alpha) Clopper-Pearson lower bound on p_A.
    count: n_A, the estimation samples that voted for the selected class.
    n: the number of estimation samples.
    selection_counts: ``[K]`` votes among the n0 selection samples.
    counts: ``[K]`` votes among the n estimation samples.
  """
  prediction: int
  radius: float
  pa_lower: float
  count: int
  n: int
  selection_counts: np.ndarray
  counts: np.ndarray


# ------------------------------------------------------------------------------------
# Statistics (host, float64).


def clopper_pearson_lower(count: int, n: int, alpha: float) -> float:
  """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial p.

  ``Beta^-1(alpha; count, n - count + 1)``, and 0 when ``count == 0``; equal to Cohen's
  ``proportion_confint(count, n, alpha=2 * alpha, method='beta')[0]``. With
  ``count == n`` it is ``alpha ** (1 / n)``.
  """
  count, n = int(count), int(n)
  if not 0 <= count <= n or n < 1:
    raise ValueError(f'count={count} must be in [0, n] and n={n} >= 1.')
  if count == 0:
    return 0.0
  return float(scipy.stats.beta.ppf(alpha, count, n - count + 1))


def radius_from_pa_lower(pa_lower: float, sigma: float) -> float:
  """``sigma * Phi^-1(pa_lower)`` (Cohen et al. 2019, Thm. 1)."""
  return float(sigma * scipy.stats.norm.ppf(pa_lower))


def predict_from_counts(counts: Any, alpha: float) -> int:
  """Cohen's PREDICT decision from the votes ``counts`` ``[K]`` of n noisy samples.

  The top two classes c_A, c_B (ties broken by the lower index) with counts n_A >= n_B:
  returns c_A if the two-sided binomial test of n_A successes in n_A + n_B trials
  against p = 1/2 has p-value <= alpha, else ``ABSTAIN``. The returned class is wrong
  with probability at most alpha (Cohen et al. 2019, Thm. 2).
  """
  counts = np.asarray(counts, np.int64)
  order = np.argsort(-counts, kind='stable')
  c_a, c_b = int(order[0]), int(order[1])
  n_a, n_b = int(counts[c_a]), int(counts[c_b])
  if n_a + n_b == 0:
    return ABSTAIN
  p_value = scipy.stats.binomtest(n_a, n_a + n_b, 0.5).pvalue
  return c_a if p_value <= alpha else ABSTAIN


def certify_from_counts(selection_counts: Any, counts: Any, *, sigma: float,
                        alpha: float) -> CertifyResult:
  """Cohen's CERTIFY decision from the selection and estimation votes.

  c_A = argmax of ``selection_counts`` (lowest index on ties); pA_lower =
  ``clopper_pearson_lower(counts[c_A], sum(counts), alpha)``; ``ABSTAIN`` with radius 0
  if pA_lower < 1/2, else c_A with radius ``sigma * Phi^-1(pA_lower)``.
  """
  selection_counts = np.asarray(selection_counts, np.int64)
  counts = np.asarray(counts, np.int64)
  c_a = int(np.argmax(selection_counts))
  n = int(counts.sum())
  n_a = int(counts[c_a])
  pa_lower = clopper_pearson_lower(n_a, n, alpha)
  if pa_lower < 0.5:
    return CertifyResult(ABSTAIN, 0.0, pa_lower, n_a, n, selection_counts, counts)
  return CertifyResult(c_a, radius_from_pa_lower(pa_lower, sigma), pa_lower, n_a, n,
                       selection_counts, counts)


def min_samples_to_certify(alpha: float) -> int:
  """The smallest n for which CERTIFY can certify at all at level ``alpha``.

  Even if all n samples vote for c_A, pA_lower = alpha^(1/n), which exceeds 1/2 only if
  n > log2(1/alpha) (10 at alpha = 0.001).
  """
  _check_alpha(alpha)
  n = max(1, math.floor(math.log(alpha) / math.log(0.5)))
  while n > 1 and clopper_pearson_lower(n - 1, n - 1, alpha) > 0.5:
    n -= 1
  while clopper_pearson_lower(n, n, alpha) <= 0.5:
    n += 1
  return n


def min_samples_to_predict(alpha: float) -> int:
  """The smallest n for which PREDICT can return a class at level ``alpha``.

  With n_A = n and n_B = 0 the two-sided p-value is 2 * 2^-n, which must be <= alpha:
  n >= log2(2/alpha) (11 at alpha = 0.001).
  """
  _check_alpha(alpha)
  n = max(1, math.floor(math.log(alpha / 2) / math.log(0.5)))
  while n > 1 and scipy.stats.binomtest(n - 1, n - 1, 0.5).pvalue <= alpha:
    n -= 1
  while scipy.stats.binomtest(n, n, 0.5).pvalue > alpha:
    n += 1
  return n


# ------------------------------------------------------------------------------------
# Argument checks: every public function calls these before any work.


def _check_alpha(alpha: Any) -> None:
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not (
      0.0 < float(alpha) < 1.0):
    raise ValueError(f'alpha={alpha!r} must be a number in the open interval (0, 1) '
                     '(the probability that a certificate is wrong; Cohen uses 0.001).')


def _check_positive_int(name: str, value: Any, maximum: int | None = None) -> None:
  validation.check_int(name, value, 1, maximum)


def _check_sigma(sigma: Any) -> None:
  if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating)) or not (
      math.isfinite(float(sigma)) and float(sigma) > 0):
    raise ValueError(f'sigma={sigma!r} must be a finite number > 0 (the standard '
                     'deviation of the Gaussian noise, in pixel units).')


def _check_num_classes(num_classes: Any) -> None:
  validation.check_int('num_classes', num_classes, 2)


def _check_images(name: str, images: Any, ndim: int) -> np.ndarray:
  """``images`` as float32 numpy; raises unless it has ``ndim`` dims and is finite."""
  try:
    array = np.asarray(images)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{name} could not be read as an array: {e}') from e
  expected = '[H, W, C] (one image)' if ndim == 3 else '[N, H, W, C]'
  if array.ndim != ndim or 0 in array.shape[-3:]:
    raise ValueError(f'{name} has shape {array.shape}; expected {expected}.')
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f'{name} has dtype {array.dtype}; expected floating-point pixels in '
                     '[0, 1] (divide uint8 images by 255).')
  array = array.astype(np.float32, copy=False)
  if not np.all(np.isfinite(array)):
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    raise ValueError(f'{name} holds {bad} NaN or inf values; images must be finite.')
  return array


def _check_indices(indices: Any, num_images: int, *, unique: bool) -> np.ndarray:
  if indices is None:
    return np.arange(num_images, dtype=np.int64)
  array = np.asarray(indices)
  if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
    raise ValueError(f'indices must be a 1-D sequence of integers; got shape '
                     f'{array.shape} and dtype {array.dtype}.')
  array = array.astype(np.int64)
  if array.size and (array.min() < 0 or array.max() >= num_images):
    raise ValueError(f'indices must lie in [0, {num_images}) (the number of images); got '
                     f'values from {array.min()} to {array.max()}.')
  if unique and len(np.unique(array)) != len(array):
    raise ValueError('indices must not repeat (each row of the TSV is one point).')
  return array


def _check_common(*, num_classes, sigma, alpha, batch_size) -> None:
  _check_num_classes(num_classes)
  _check_sigma(sigma)
  _check_alpha(alpha)
  _check_positive_int('batch_size', batch_size)


def _check_certify_args(*, num_classes, sigma, n0, n, alpha, batch_size) -> None:
  _check_common(num_classes=num_classes, sigma=sigma, alpha=alpha, batch_size=batch_size)
  _check_positive_int('n0', n0, _MAX_SAMPLES)
  _check_positive_int('n', n, _MAX_SAMPLES)
  needed = min_samples_to_certify(alpha)
  if n < needed:
    raise ValueError(
        f'n={n} is too small for any certificate at alpha={alpha}: even if all n samples '
        f'vote for one class, the Clopper-Pearson lower bound alpha**(1/n) = '
        f'{alpha ** (1 / n):.4f} does not exceed 1/2. Use n >= {needed}.')


# ------------------------------------------------------------------------------------
# Device side: noise, forward pass and vote counting in one jitted function.


@functools.lru_cache(maxsize=None)
def _mesh(devices: tuple[Any, ...]) -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.asarray(devices), (_BATCH_AXIS,))


def _resolve_mesh(devices: Sequence[Any] | None) -> jax.sharding.Mesh:
  devices = tuple(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError('devices must name at least one device.')
  return _mesh(devices)


def _next_power_of_two(x: int) -> int:
  return 1 << max(0, (x - 1).bit_length())


def batch_plan(num_images: int, n: int, batch_size: int,
               num_devices: int = 1) -> tuple[int, int, int]:
  """How ``count_noisy_predictions`` lays out the work: ``(images_per_step,
  samples_per_image, num_steps)``.

  If n samples fit in a batch several times, ``batch_size // n`` images (at most the next
  power of two above ``num_images``, so few shapes are ever compiled) share one step of n
  samples each. Otherwise one image takes ``ceil(n / batch_size)`` steps of equal size
  (the last one masked where it overshoots n). Each step's total is rounded up to a
  multiple of ``num_devices`` so the batch shards evenly.
  """
  per_batch = batch_size // n
  images_per_step = 1 if per_batch <= 1 else min(per_batch, _next_power_of_two(num_images))
  if images_per_step > 1:
    num_steps, samples = 1, n
  else:
    num_steps = -(-n // batch_size)
    samples = -(-n // num_steps)
  while (images_per_step * samples) % num_devices:
    samples += 1
  return images_per_step, samples, num_steps


def _vote_counts(keys, params, images, sigma, num_samples, *, apply_fn, num_classes,
                 samples_per_image, num_steps, mesh):
  """Per-class votes of ``apply_fn`` on ``num_samples`` noisy copies of each image.

  Args:
    keys: ``[G]`` per-image keys; sample j of image i uses ``fold_in(keys[i], j)``.
    params: the classifier's variables.
    images: ``[G, H, W, C]``.
    sigma: noise standard deviation (traced, so sigma never recompiles).
    num_samples: n (traced); samples ``j >= n`` of the last step are masked.
    apply_fn, num_classes, samples_per_image, num_steps, mesh: static.

  Returns:
    ``([G, K] int32 counts, bool: whether any unmasked logit was NaN or inf)``.
  """
  global _num_traces
  _num_traces += 1
  g, sample_shape = images.shape[0], images.shape[1:]
  b = samples_per_image
  offsets = jnp.arange(b, dtype=jnp.uint32)
  batch_sharding = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      _BATCH_AXIS)) if mesh.size > 1 else None)

  def noise_of(key, j):  # One sample's noise, a function of (key, j) alone.
    return jax.random.normal(jax.random.fold_in(key, j), sample_shape, images.dtype)

  def step(carry, t):
    counts, nonfinite = carry
    j = t.astype(jnp.uint32) * b + offsets  # [b] sample indices
    noise = jax.vmap(lambda k: jax.vmap(lambda jj: noise_of(k, jj))(j))(keys)
    noisy = (images[:, None] + sigma * noise).reshape((g * b, *sample_shape))
    if batch_sharding is not None:
      noisy = lax.with_sharding_constraint(noisy, batch_sharding)
    logits = apply_fn(params, noisy)  # [G * b, K]
    if logits.shape != (g * b, num_classes):
      raise ValueError(f'apply_fn returned logits of shape {logits.shape} for a batch '
                       f'of {g * b} images; expected ({g * b}, {num_classes}) '
                       '(num_classes).')
    valid = j < num_samples  # [b]
    predictions = jnp.argmax(logits, axis=-1).reshape(g, b)
    votes = (predictions[..., None] == jnp.arange(num_classes)) & valid[None, :, None]
    counts = counts + votes.sum(axis=1, dtype=jnp.int32)
    finite = jnp.all(jnp.isfinite(logits), axis=-1).reshape(g, b) | ~valid[None]
    return (counts, nonfinite | ~jnp.all(finite)), None

  init = (jnp.zeros((g, num_classes), jnp.int32), jnp.zeros((), bool))
  (counts, nonfinite), _ = lax.scan(step, init, jnp.arange(num_steps))
  return counts, nonfinite


_vote_counts_jit = jax.jit(
    _vote_counts, static_argnames=('apply_fn', 'num_classes', 'samples_per_image',
                                   'num_steps', 'mesh'))


def _pad_to(x: Any, size: int) -> Any:
  """Pads the leading axis of ``x`` (an array or key array) to ``size`` with its row 0."""
  missing = size - x.shape[0]
  if missing == 0:
    return x
  return jnp.concatenate([x, jnp.repeat(x[:1], missing, axis=0)], axis=0)


def _counts_on_device(keys, apply_fn, params, images, *, num_classes, sigma, n, batch_size,
                      mesh) -> np.ndarray:
  """``count_noisy_predictions`` without the argument checks."""
  num_images = images.shape[0]
  g, b, steps = batch_plan(num_images, n, batch_size, mesh.size)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(params, replicated)
  sigma = np.float32(sigma)
  num_samples = np.uint32(n)
  outputs = []
  for start in range(0, num_images, g):  # Dispatched asynchronously, gathered below.
    stop = min(start + g, num_images)
    group_keys = jax.device_put(_pad_to(keys[start:stop], g), replicated)
    group_images = jax.device_put(_pad_to(jnp.asarray(images[start:stop]), g), replicated)
    outputs.append((start, stop, _vote_counts_jit(
        group_keys, params, group_images, sigma, num_samples, apply_fn=apply_fn,
        num_classes=num_classes, samples_per_image=b, num_steps=steps, mesh=mesh)))
  counts = np.zeros((num_images, num_classes), np.int64)
  for start, stop, (group_counts, nonfinite) in outputs:
    if bool(nonfinite):
      raise FloatingPointError(
          f'apply_fn returned NaN or inf logits on noisy copies of images {start} to '
          f'{stop - 1}; check the model parameters and sigma.')
    counts[start:stop] = np.asarray(group_counts)[:stop - start]
  return counts


def count_noisy_predictions(keys: jax.Array, apply_fn: ApplyFn, params: Any,
                            images: Any, *, num_classes: int, sigma: float, n: int,
                            batch_size: int,
                            devices: Sequence[Any] | None = None) -> np.ndarray:
  """Votes of the base classifier on n Gaussian-noised copies of each image.

  ``counts[i, c] = #{j < n : argmax apply_fn(params, images[i] + sigma * eps_ij) = c}``
  with ``eps_ij ~ N(0, I)`` drawn from ``fold_in(keys[i], j)``.

  Args:
    keys: ``[N]`` keys, one per image (typed or raw ``uint32[2]`` keys).
    apply_fn: ``apply_fn(params, images [B, H, W, C]) -> logits [B, K]``, pure. It is a
      static argument of the jitted function: pass the same function object every call
      or each new one compiles again.
    params: the classifier's variables (any pytree).
    images: ``[N, H, W, C]`` float32.
    num_classes: K.
    sigma: noise standard deviation, > 0.
    n: samples per image, >= 1.
    batch_size: noisy images per forward pass; memory is bounded by it, not by n.
    devices: devices to shard each noisy batch over (default: all local devices).

  Returns:
    ``[N, K]`` int64 counts; each row sums to n.

  Raises:
    ValueError: on a bad argument, before any work.
    FloatingPointError: if the classifier returns NaN or inf logits.
  """
  _check_num_classes(num_classes)
  _check_sigma(sigma)
  _check_positive_int('batch_size', batch_size)
  _check_positive_int('n', n, _MAX_SAMPLES)
  images = _check_images('images', images, 4)
  if len(keys) != images.shape[0]:
    raise ValueError(f'keys has {len(keys)} entries for {images.shape[0]} images; '
                     'expected one key per image.')
  return _counts_on_device(keys, apply_fn, params, images, num_classes=num_classes,
                           sigma=sigma, n=n, batch_size=batch_size,
                           mesh=_resolve_mesh(devices))


# ------------------------------------------------------------------------------------
# PREDICT and CERTIFY.


@jax.jit
def _point_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


@jax.jit
def _selection_and_estimation_keys(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  streams = jax.vmap(jax.random.split)(keys)  # [N, 2]
  return streams[:, 0], streams[:, 1]


def predict(key: jax.Array, apply_fn: ApplyFn, params: Any, x: Any, *, num_classes: int,
            sigma: float, n: int, alpha: float, batch_size: int,
            devices: Sequence[Any] | None = None) -> int:
  """Cohen's PREDICT: the smoothed classifier's class at ``x``, or ``ABSTAIN``.

  Draws n noisy copies ``x + N(0, sigma^2 I)``, counts the base classifier's votes and
  returns the top class c_A unless the two-sided binomial test of its count n_A against
  the runner-up's n_B (p = 1/2) has p-value > alpha. A returned class differs from g(x)
  with probability at most alpha.

  Args:
    key: a jax.random key; the same key gives the same answer.
    apply_fn: ``apply_fn(params, images [B, H, W, C]) -> logits [B, K]``.
    params: the classifier's variables.
    x: one image ``[H, W, C]``.
    num_classes: K >= 2.
    sigma: noise standard deviation, > 0.
    n: number of noisy samples; at least ``min_samples_to_predict(alpha)``.
    alpha: level of the test, in (0, 1).
    batch_size: noisy images per forward pass.
    devices: devices to shard the noise batch over (default: all local devices).

  Returns:
    The predicted class, or ``ABSTAIN`` (-1).

  Example::

    c = predict(jax.random.key(0), apply_fn, variables, image, num_classes=10,
                sigma=0.5, n=100_000, alpha=0.001, batch_size=1000)
  """
  _check_common(num_classes=num_classes, sigma=sigma, alpha=alpha, batch_size=batch_size)
  _check_positive_int('n', n, _MAX_SAMPLES)
  needed = min_samples_to_predict(alpha)
  if n < needed:
    raise ValueError(f'n={n} is too small for PREDICT ever to return a class at '
                     f'alpha={alpha}: with all n votes for one class the two-sided '
                     f'binomial p-value 2 * 0.5**n = {min(1.0, 2 * 0.5 ** n):.4g} exceeds '
                     f'alpha. Use n >= {needed}.')
  x = _check_images('x', x, 3)
  counts = _counts_on_device(jnp.asarray(key)[None], apply_fn, params, x[None],
                             num_classes=num_classes, sigma=sigma, n=n,
                             batch_size=batch_size, mesh=_resolve_mesh(devices))
  return predict_from_counts(counts[0], alpha)


def _certify_points(point_keys, apply_fn, params, images, *, num_classes, sigma, n0, n,
                    alpha, batch_size, mesh) -> list[CertifyResult]:
  selection_keys, estimation_keys = _selection_and_estimation_keys(point_keys)
  kw = dict(num_classes=num_classes, sigma=sigma, batch_size=batch_size, mesh=mesh)
  selection = _counts_on_device(selection_keys, apply_fn, params, images, n=n0, **kw)
  estimation = _counts_on_device(estimation_keys, apply_fn, params, images, n=n, **kw)
  return [certify_from_counts(s, e, sigma=sigma, alpha=alpha)
          for s, e in zip(selection, estimation)]


def certify(key: jax.Array, apply_fn: ApplyFn, params: Any, x: Any, *, num_classes: int,
            sigma: float, n0: int, n: int, alpha: float, batch_size: int,
            devices: Sequence[Any] | None = None) -> CertifyResult:
  """Cohen's CERTIFY: a class and an L2 radius within which the smoothed classifier
  provably keeps it, each wrong with probability at most alpha.

  1. c_A = the most frequent class among n0 noisy copies (selection samples).
  2. n_A = the votes for c_A among n fresh noisy copies (estimation samples).
  3. pA_lower = one-sided (1 - alpha) Clopper-Pearson lower bound on P(f(x + eps) = c_A).
  4. ``ABSTAIN`` (radius 0.0) if pA_lower < 1/2, else c_A with radius
     ``R = sigma * Phi^-1(pA_lower)``.

  The largest possible radius is ``sigma * Phi^-1(alpha ** (1 / n))`` (3.81 sigma at
  n = 100,000 and alpha = 0.001).

  Args:
    key: a jax.random key; the same key re-derives the same certificate (it is split
      into the selection and the estimation stream).
    apply_fn: ``apply_fn(params, images [B, H, W, C]) -> logits [B, K]``.
    params: the classifier's variables.
    x: one image ``[H, W, C]``.
    num_classes: K >= 2.
    sigma: noise standard deviation, > 0 (in pixel units, as in training).
    n0: selection samples, >= 1 (Cohen: 100).
    n: estimation samples, at least ``min_samples_to_certify(alpha)`` (Cohen: 100,000).
    alpha: failure probability, in (0, 1) (Cohen: 0.001).
    batch_size: noisy images per forward pass.
    devices: devices to shard the noise batch over (default: all local devices).

  Returns:
    A ``CertifyResult`` (prediction, radius, pa_lower, count, n, selection_counts,
    counts).

  Example::

    r = certify(jax.random.key(0), apply_fn, variables, image, num_classes=10,
                sigma=0.5, n0=100, n=100_000, alpha=0.001, batch_size=1000)
    r.prediction, r.radius
  """
  _check_certify_args(num_classes=num_classes, sigma=sigma, n0=n0, n=n, alpha=alpha,
                      batch_size=batch_size)
  x = _check_images('x', x, 3)
  return _certify_points(jnp.asarray(key)[None], apply_fn, params, x[None],
                         num_classes=num_classes, sigma=sigma, n0=n0, n=n, alpha=alpha,
                         batch_size=batch_size, mesh=_resolve_mesh(devices))[0]


def certify_many(key: jax.Array, apply_fn: ApplyFn, params: Any, images: Any, *,
                 indices: Any = None, num_classes: int, sigma: float, n0: int, n: int,
                 alpha: float, batch_size: int,
                 devices: Sequence[Any] | None = None) -> list[CertifyResult]:
  """CERTIFY for several images at once, batching across images where that helps.

  Point ``idx`` is certified with key ``fold_in(key, idx)``, so
  ``certify_many(key, ..., images, indices=[i])[0] == certify(fold_in(key, i), ...,
  images[i])`` whatever else is certified alongside it.

  Args:
    key: a jax.random key.
    apply_fn, params: the base classifier (see ``certify``).
    images: ``[N, H, W, C]`` float32.
    indices: which images to certify (default: all, in order); they also name the points
      for the key derivation.
    num_classes, sigma, n0, n, alpha, batch_size, devices: as in ``certify``.

  Returns:
    One ``CertifyResult`` per index, in order.
  """
  _check_certify_args(num_classes=num_classes, sigma=sigma, n0=n0, n=n, alpha=alpha,
                      batch_size=batch_size)
  images = _check_images('images', images, 4)
  indices = _check_indices(indices, images.shape[0], unique=False)
  if indices.size == 0:
    return []
  point_keys = _point_keys(key, jnp.asarray(indices, jnp.uint32))
  return _certify_points(point_keys, apply_fn, params, images[indices],
                         num_classes=num_classes, sigma=sigma, n0=n0, n=n, alpha=alpha,
                         batch_size=batch_size, mesh=_resolve_mesh(devices))


# ------------------------------------------------------------------------------------
# Certifying a data set into a resumable TSV log.


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'


def _open_log(tsv_path: str, indices: np.ndarray, labels: np.ndarray) -> int:
  """Makes ``tsv_path`` a valid log prefix for ``indices``; returns the rows it holds.

  A partial last line (a run killed while writing) is cut off. Raises ValueError if the
  file holds rows of other points than the first ones of ``indices``.
  """
  directory = os.path.dirname(os.path.abspath(tsv_path))
  os.makedirs(directory, exist_ok=True)
  text = ''
  if os.path.exists(tsv_path):
    with open(tsv_path) as f:
      text = f.read()
  complete = text[:text.rfind('\n') + 1]
  if not complete.startswith(metrics.TSV_HEADER + '\n'):
    if complete:
      raise ValueError(f'tsv_path={tsv_path!r} exists but is not a certification log '
                       f'(first line {complete.splitlines()[0]!r}); move it away.')
    with open(tsv_path, 'w') as f:
      f.write(metrics.TSV_HEADER + '\n')
    return 0
  if len(complete) != len(text):
    with open(tsv_path, 'w') as f:
      f.write(complete)
  rows = metrics.read_certification_tsv(tsv_path)
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
  return len(rows)


def certify_dataset(key: jax.Array, apply_fn: ApplyFn, params: Any, images: Any,
                    labels: Any, *, indices: Any = None, tsv_path: str, num_classes: int,
                    sigma: float, n0: int, n: int, alpha: float, batch_size: int,
                    chunk_size: int | None = None,
                    devices: Sequence[Any] | None = None) -> list[metrics.CertificationRow]:
  """Certifies ``images[indices]`` into Cohen's TSV log, resuming a partial log.

  Rows ``idx label predict radius correct time`` (after a header line) are appended
  ``chunk_size`` points at a time and flushed. Restarted with the same arguments, it
  keeps the rows already in ``tsv_path`` and certifies the rest; since point ``idx`` is
  certified with ``fold_in(key, idx)``, the finished log equals that of an uninterrupted
  run (up to the wall-clock ``time`` column, which is the chunk's seconds per point).
  Progress and the estimated time left are logged with absl.

  Args:
    key: a jax.random key.
    apply_fn, params: the base classifier (see ``certify``).
    images: ``[N, H, W, C]`` float32.
    labels: ``[N]`` integer labels.
    indices: the points to certify, in order (default: all); they must not repeat.
    tsv_path: the log to write (its directory is created).
    num_classes, sigma, n0, n, alpha, batch_size, devices: as in ``certify``.
    chunk_size: points per chunk between writes (default: as many as share a selection
      batch, ``max(1, batch_size // n0)``).

  Returns:
    The rows of the finished log, in order (read back from ``tsv_path``).
  """
  _check_certify_args(num_classes=num_classes, sigma=sigma, n0=n0, n=n, alpha=alpha,
                      batch_size=batch_size)
  images = _check_images('images', images, 4)
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels has shape {labels.shape} and dtype {labels.dtype}; expected '
                     f'{images.shape[0]} integers (one per image).')
  indices = _check_indices(indices, images.shape[0], unique=True)
  if chunk_size is None:
    chunk_size = max(1, batch_size // n0)
  _check_positive_int('chunk_size', chunk_size)
  if not isinstance(tsv_path, (str, os.PathLike)) or not str(tsv_path):
    raise ValueError(f'tsv_path={tsv_path!r} must be a file path.')
  tsv_path = os.fspath(tsv_path)
  mesh = _resolve_mesh(devices)

  start = _open_log(tsv_path, indices, labels.astype(np.int64))
  if start:
    logging.info('Resuming %s: %d of %d points already certified.', tsv_path, start,
                 len(indices))
  params = jax.device_put(params, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  t_begin = time.time()
  with open(tsv_path, 'a') as log:
    for chunk_start in range(start, len(indices), chunk_size):
      chunk = indices[chunk_start:chunk_start + chunk_size]
      t0 = time.time()
      point_keys = _point_keys(key, jnp.asarray(chunk, jnp.uint32))
      results = _certify_points(point_keys, apply_fn, params, images[chunk],
                                num_classes=num_classes, sigma=sigma, n0=n0, n=n,
                                alpha=alpha, batch_size=batch_size, mesh=mesh)
      seconds = (time.time() - t0) / len(chunk)
      for idx, result in zip(chunk, results):
        label = int(labels[idx])
        row = metrics.CertificationRow(int(idx), label, result.prediction, result.radius,
                                       int(result.prediction == label), seconds)
        log.write(metrics.format_tsv_row(row))
      log.flush()
      done = chunk_start + len(chunk)
      elapsed = time.time() - t_begin
      rate = (done - start) / max(elapsed, 1e-9)
      logging.info('certified %d/%d points | %.2f points/s, %.0f noisy samples/s | '
                   'about %s left', done, len(indices), rate, rate * (n0 + n),
                   _format_seconds((len(indices) - done) / max(rate, 1e-9)))
  return metrics.read_certification_tsv(tsv_path)


# ------------------------------------------------------------------------------------
# The experiment: certify a trained checkpoint on (a subset of) a split.


def _resolve_indices(config, labels: np.ndarray) -> np.ndarray:
  """The points to certify: an explicit file, else a seeded subset of a class (or all)."""
  if config.get('indices_file'):
    loaded = metrics.read_json(config.indices_file)
    indices = np.asarray(loaded['indices'] if isinstance(loaded, dict) else loaded,
                         np.int64)
    return _check_indices(indices, len(labels), unique=True)
  pool = np.arange(len(labels))
  if config.target_class >= 0:
    pool = np.flatnonzero(labels == config.target_class)
    if pool.size == 0:
      raise ValueError(f'config.target_class={config.target_class} has no points in split '
                       f'{config.split!r}.')
  m = config.num_points
  if m <= 0 or m >= pool.size:
    return pool
  chosen = np.random.default_rng(config.subset_seed).choice(pool.size, m, replace=False)
  return pool[np.sort(chosen)]


# Config fields that do not change the certificates (see the module docstring), so a
# resumed run may change them.
_RESUMABLE_FIELDS = ('batch_size', 'chunk_size')


def _check_same_settings_as_log(config, workdir: str) -> None:
  """Refuses to append to a log written under different certification settings."""
  config_path = os.path.join(workdir, 'config.json')
  if not (os.path.exists(os.path.join(workdir, 'certify.tsv')) and
          os.path.exists(config_path)):
    return
  before = metrics.read_json(config_path)
  now = config.to_dict()
  changed = sorted(k for k in set(before) | set(now)
                   if k not in _RESUMABLE_FIELDS and before.get(k) != now.get(k))
  if changed:
    details = ', '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in changed)
    raise ValueError(f'workdir={workdir!r} holds a certification log made with other '
                     f'settings ({details}); use a new workdir or restore them.')


def certify_split(config, workdir: str, *, trained: Any = None) -> dict[str, Any]:
  """Certifies a trained model on (a seeded subset of) a split; the certify experiment.

  Writes to ``workdir``: ``config.json`` (resolved), ``certify.tsv`` (resumable),
  ``summary.json`` (metrics from ``rsp.metrics.summarize_certification`` plus the
  settings and the certified ``indices``, so a second model can be certified on the same
  points with ``config.indices_file``) and ``certified_accuracy.png``.

  Args:
    config: see ``rsp/configs/certify.py``.
    workdir: output directory; rerunning with it resumes the TSV.
    trained: an ``rsp.train.TrainedModel`` (fields ``apply_fn``, ``variables``,
      ``config``, ``num_classes``); loaded from ``config.checkpoint_dir`` if None.

  Returns:
    The summary dict written to ``summary.json``.
  """
  # Imported here so that ``import rsp.smoothing`` needs neither the checkpointing stack
  # nor matplotlib.
  from rsp import data as data_lib  # pylint: disable=g-import-not-at-top
  from rsp import plotting  # pylint: disable=g-import-not-at-top
  from rsp import train as train_lib  # pylint: disable=g-import-not-at-top

  if trained is None:
    if not config.checkpoint_dir:
      raise ValueError('config.checkpoint_dir is empty; set it to the workdir of '
                       'experiments/train.py.')
    trained = train_lib.load_trained(config.checkpoint_dir)
  train_config = trained.config
  sigma = config.sigma
  if sigma <= 0:
    sigma = train_config.get('loss', {}).get('sigma', None)
    if sigma is None:
      raise ValueError('config.sigma is unset (<= 0) and the model was trained without '
                       'noise (no config.loss.sigma); set --config.sigma.')
  sigma = float(sigma)
  _check_certify_args(num_classes=trained.num_classes, sigma=sigma, n0=config.n0,
                      n=config.n, alpha=config.alpha, batch_size=config.batch_size)
  dataset = config.dataset or train_config.dataset
  data_seed = config.data_seed if config.data_seed >= 0 else train_config.get('data_seed', 0)
  kwargs = {'data_dir': config.data_dir} if config.get('data_dir') else {}
  splits = data_lib.load(dataset, seed=data_seed, **kwargs)
  if config.split not in splits:
    raise ValueError(f'config.split={config.split!r} is not one of {sorted(splits)}.')
  split = splits[config.split]
  labels = np.asarray(split['label'])
  indices = _resolve_indices(config, labels)

  _check_same_settings_as_log(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  metrics.write_json_atomic(os.path.join(workdir, 'config.json'), config.to_dict())
  settings = dict(checkpoint_dir=config.checkpoint_dir, dataset=dataset,
                  data_seed=int(data_seed), split=config.split,
                  target_class=int(config.target_class), sigma=sigma, n0=int(config.n0),
                  n=int(config.n), alpha=float(config.alpha), seed=int(config.seed),
                  model=train_config.get('model', ''),
                  train_method=train_config.get('method', ''),
                  poison_file=train_config.get('poison_file', ''))
  logging.info('Certifying %d points of %s/%s (sigma %.3g, n0 %d, n %d, alpha %g) in %s.',
               len(indices), dataset, config.split, sigma, config.n0, config.n,
               config.alpha, workdir)
  rows = certify_dataset(
      jax.random.key(config.seed), trained.apply_fn, trained.variables, split['image'],
      labels, indices=indices, tsv_path=os.path.join(workdir, 'certify.tsv'),
      num_classes=trained.num_classes, sigma=sigma, n0=config.n0, n=config.n,
      alpha=config.alpha, batch_size=config.batch_size,
      chunk_size=config.chunk_size if config.chunk_size > 0 else None)
  summary = metrics.summarize_certification(rows, num_classes=trained.num_classes)
  summary.update(settings, indices=[int(i) for i in indices])
  metrics.write_json_atomic(os.path.join(workdir, 'summary.json'), summary)
  a = metrics.rows_to_arrays(rows)
  label = f'{settings["train_method"] or "model"} (ACR {summary["acr"]:.3f})'
  plotting.plot_certified_accuracy(
      {label: (a['radius'], a['correct'])},
      os.path.join(workdir, 'certified_accuracy.png'),
      title=f'{dataset} {config.split}, sigma={sigma:g}, n={config.n}')
  logging.info('ACR %.4f, certified accuracy %.4f, abstain rate %.4f over %d points.',
               summary['acr'], summary['certified_accuracy'], summary['abstain_rate'],
               summary['num_points'])
  return summary
