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
  gives each process its own ``indices``.
* Host (float64, scipy): the binomial test, the Clopper-Pearson bound
  (``scipy.stats.beta.ppf``) and the radius.

This module is the pure core: it reads and writes no files. Certifying a data set into a
resumable log, and the certify experiment, live in ``rsp.certification``.

Every public function checks its arguments before any work and raises a ``ValueError``
naming the argument: the numbers (sigma, alpha, n0, n, ...), the key (a ``jax.random``
key, not an int seed), the images (finite float pixels in [0, 1]) and whether the model
takes images of that shape at all (traced once with ``jax.eval_shape``).

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
from typing import Any, Callable, NamedTuple, Sequence

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
MAX_SAMPLES = 2**31 - 1  # The most samples per image (n0, n): counts are int32.


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
  alpha = _check_alpha(alpha)
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
  alpha = _check_alpha(alpha)
  n = max(1, math.floor(math.log(alpha / 2) / math.log(0.5)))
  while n > 1 and scipy.stats.binomtest(n - 1, n - 1, 0.5).pvalue <= alpha:
    n -= 1
  while scipy.stats.binomtest(n, n, 0.5).pvalue > alpha:
    n += 1
  return n


# ------------------------------------------------------------------------------------
# Argument checks: every public function calls these before any work.


def _check_alpha(alpha: Any) -> float:
  value = validation.real_number(alpha)
  if value is None or not 0.0 < value < 1.0:
    raise ValueError(f'alpha={alpha!r} must be a number in the open interval (0, 1) '
                     '(the probability that a certificate is wrong; Cohen uses 0.001).')
  return value


def _check_positive_int(name: str, value: Any, maximum: int | None = None) -> None:
  validation.check_int(name, value, 1, maximum)


def _check_sigma(sigma: Any) -> float:
  value = validation.real_number(sigma)
  if value is None or not (math.isfinite(value) and value > 0):
    raise ValueError(f'sigma={sigma!r} must be a finite number > 0 (the standard '
                     'deviation of the Gaussian noise, in pixel units).')
  return value


def _check_num_classes(num_classes: Any) -> None:
  validation.check_int('num_classes', num_classes, 2)


def _is_key_array(key: Any) -> bool:
  return isinstance(key, (jax.Array, np.ndarray)) and (
      jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or key.dtype == np.uint32)


def _key_error(name: str, key: Any, expected: str) -> ValueError:
  hint = ''
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    hint = f'; for the seed {int(key)} pass jax.random.key({int(key)})'
  shape = f' of shape {key.shape} and dtype {key.dtype}' if hasattr(key, 'shape') else ''
  return ValueError(f'{name}={key!r} ({type(key).__name__}{shape}) is not {expected}: '
                    f'expected what jax.random.key(seed) returns (or a raw uint32 '
                    f'jax.random.PRNGKey(seed)){hint}.')


def _check_key(key: Any) -> jax.Array:
  """One ``jax.random`` key (typed, or a raw ``uint32[2]``) as a jax array."""
  if _is_key_array(key):
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if (typed and key.shape == ()) or (not typed and key.ndim == 1):
      return jnp.asarray(key)
  raise _key_error('key', key, 'one jax.random key')


def _check_keys(keys: Any, count: int) -> jax.Array:
  """``count`` keys (typed ``[count]`` or raw ``uint32[count, 2]``) as a jax array."""
  if _is_key_array(keys):
    typed = jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
    if keys.ndim == (1 if typed else 2):
      if keys.shape[0] != count:
        raise ValueError(f'keys has {keys.shape[0]} entries for {count} images; '
                         'expected one key per image.')
      return jnp.asarray(keys)
  raise _key_error('keys', keys, f'a batch of {count} jax.random keys')


def _check_images(name: str, images: Any, ndim: int) -> np.ndarray:
  """``images`` as float32 numpy; raises unless it has ``ndim`` dims and finite pixels
  in [0, 1]."""
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
  if array.size and (array.min() < 0.0 or array.max() > 1.0):
    raise ValueError(f'{name} holds pixel values from {array.min():g} to '
                     f'{array.max():g}; expected pixels in [0, 1] (divide uint8 images by '
                     '255; a normalisation belongs inside the model, so that sigma is in '
                     'pixel units).')
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
    raise ValueError('indices must not repeat (each point is certified once).')
  return array


def _check_common(*, num_classes, sigma, alpha, batch_size) -> tuple[float, float]:
  _check_num_classes(num_classes)
  sigma = _check_sigma(sigma)
  alpha = _check_alpha(alpha)
  _check_positive_int('batch_size', batch_size)
  return sigma, alpha


def _check_certify_args(*, num_classes, sigma, n0, n, alpha,
                        batch_size) -> tuple[float, float]:
  sigma, alpha = _check_common(num_classes=num_classes, sigma=sigma, alpha=alpha,
                               batch_size=batch_size)
  _check_positive_int('n0', n0, MAX_SAMPLES)
  _check_positive_int('n', n, MAX_SAMPLES)
  needed = min_samples_to_certify(alpha)
  if n < needed:
    raise ValueError(
        f'n={n} is too small for any certificate at alpha={alpha}: even if all n samples '
        f'vote for one class, the Clopper-Pearson lower bound alpha**(1/n) = '
        f'{alpha ** (1 / n):.4f} does not exceed 1/2. Use n >= {needed}.')
  return sigma, alpha


@functools.lru_cache(maxsize=256)
def _logits_shape(apply_fn: ApplyFn, params_treedef, params_leaves: tuple,
                  image_shape: tuple[int, ...]) -> Any:
  """``apply_fn``'s output shape on one image, by tracing (``jax.eval_shape``) only;
  cached, so that certifying image after image traces the model once."""
  params = jax.tree.unflatten(params_treedef, [jax.ShapeDtypeStruct(shape, dtype)
                                               for shape, dtype in params_leaves])
  image = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  return jax.eval_shape(apply_fn, params, image)


def check_model_input(apply_fn: ApplyFn, params: Any, image_shape: Sequence[int], *,
                      num_classes: int) -> None:
  """Raises ValueError unless ``apply_fn(params, images [B, *image_shape])`` returns
  logits ``[B, num_classes]``.

  Only traces the model (``jax.eval_shape``; nothing runs), once per model and image
  shape. An image shape the model cannot take (a flax ``ScopeParamShapeError``: the
  parameters were made for other images) is reported with the shapes involved.

  Args:
    apply_fn: ``apply_fn(params, images [B, H, W, C]) -> logits [B, K]``.
    params: the classifier's variables.
    image_shape: ``(H, W, C)`` of one image.
    num_classes: K.
  """
  image_shape = tuple(int(d) for d in image_shape)
  if not callable(apply_fn):
    raise ValueError(f'apply_fn={apply_fn!r} is not callable; expected '
                     'apply_fn(params, images) -> logits.')
  try:
    hash(apply_fn)
  except TypeError:
    raise ValueError(f'apply_fn={apply_fn!r} is not hashable; it is a static argument of '
                     'the jitted counting function (wrap it in a plain function).') from None
  leaves, treedef = jax.tree.flatten(params)
  try:
    spec = tuple((tuple(np.shape(x)), jnp.result_type(x)) for x in leaves)
  except TypeError as e:
    raise ValueError(f'params holds a leaf that is not an array ({e}); expected the '
                     "classifier's variables (a pytree of arrays).") from None
  try:
    out = _logits_shape(apply_fn, treedef, spec, image_shape)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'the model cannot take images of shape {image_shape}: apply_fn(params, images '
        f'[B, {", ".join(map(str, image_shape))}]) fails when traced with '
        f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""} '
        '(most likely its parameters were made for images of another shape: certify '
        'images of the shape the model was trained on).') from e
  if not hasattr(out, 'shape') or tuple(out.shape) != (1, num_classes):
    got = tuple(out.shape) if hasattr(out, 'shape') else type(out).__name__
    raise ValueError(f'apply_fn returned logits of shape {got} for one image of shape '
                     f'{image_shape}; expected (1, {num_classes}) (num_classes).')


def check_certify_args(key: Any, images: Any, *, indices: Any = None, num_classes: int,
                       sigma: float, n0: int, n: int, alpha: float, batch_size: int,
                       unique: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The argument checks of ``certify_many`` but the model's, for a driver that must
  refuse bad input before it writes anything.

  Args:
    key, images, indices, num_classes, sigma, n0, n, alpha, batch_size: as in
      ``certify_many``.
    unique: refuse repeated indices.

  Returns:
    ``(images as float32, indices as int64)``.

  Raises:
    ValueError: naming the argument, its value and what is accepted.
  """
  _, _, _, images, indices = _check_certify_many_args(
      key, images, indices=indices, num_classes=num_classes, sigma=sigma, n0=n0, n=n,
      alpha=alpha, batch_size=batch_size, unique=unique)
  return images, indices


def _check_certify_many_args(key, images, *, indices, num_classes, sigma, n0, n, alpha,
                             batch_size, unique):
  """``check_certify_args``, also returning sigma and alpha as floats and the key."""
  sigma, alpha = _check_certify_args(num_classes=num_classes, sigma=sigma, n0=n0, n=n,
                                     alpha=alpha, batch_size=batch_size)
  key = _check_key(key)
  images = _check_images('images', images, 4)
  indices = _check_indices(indices, images.shape[0], unique=unique)
  return sigma, alpha, key, images, indices


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
    images: ``[N, H, W, C]`` float pixels in [0, 1].
    num_classes: K.
    sigma: noise standard deviation, > 0 (a number or a 0-d array).
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
  sigma = _check_sigma(sigma)
  _check_positive_int('batch_size', batch_size)
  _check_positive_int('n', n, MAX_SAMPLES)
  images = _check_images('images', images, 4)
  keys = _check_keys(keys, images.shape[0])
  check_model_input(apply_fn, params, images.shape[1:], num_classes=num_classes)
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
    x: one image ``[H, W, C]``, float pixels in [0, 1].
    num_classes: K >= 2.
    sigma: noise standard deviation, > 0 (a number or a 0-d array).
    n: number of noisy samples; at least ``min_samples_to_predict(alpha)``.
    alpha: level of the test, in (0, 1).
    batch_size: noisy images per forward pass.
    devices: devices to shard the noise batch over (default: all local devices).

  Returns:
    The predicted class, or ``ABSTAIN`` (-1).

  Raises:
    ValueError: a bad argument (see the module docstring), before any work.
    FloatingPointError: the classifier returned NaN or inf logits.

  Example::

    c = predict(jax.random.key(0), apply_fn, variables, image, num_classes=10,
                sigma=0.5, n=100_000, alpha=0.001, batch_size=1000)
  """
  sigma, alpha = _check_common(num_classes=num_classes, sigma=sigma, alpha=alpha,
                               batch_size=batch_size)
  _check_positive_int('n', n, MAX_SAMPLES)
  needed = min_samples_to_predict(alpha)
  if n < needed:
    raise ValueError(f'n={n} is too small for PREDICT ever to return a class at '
                     f'alpha={alpha}: with all n votes for one class the two-sided '
                     f'binomial p-value 2 * 0.5**n = {min(1.0, 2 * 0.5 ** n):.4g} exceeds '
                     f'alpha. Use n >= {needed}.')
  key = _check_key(key)
  x = _check_images('x', x, 3)
  check_model_input(apply_fn, params, x.shape, num_classes=num_classes)
  counts = _counts_on_device(key[None], apply_fn, params, x[None],
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
    x: one image ``[H, W, C]``, float pixels in [0, 1].
    num_classes: K >= 2.
    sigma: noise standard deviation, > 0 (in pixel units, as in training; a number or a
      0-d array).
    n0: selection samples, >= 1 (Cohen: 100).
    n: estimation samples, at least ``min_samples_to_certify(alpha)`` (Cohen: 100,000).
    alpha: failure probability, in (0, 1) (Cohen: 0.001).
    batch_size: noisy images per forward pass.
    devices: devices to shard the noise batch over (default: all local devices).

  Returns:
    A ``CertifyResult`` (prediction, radius, pa_lower, count, n, selection_counts,
    counts).

  Raises:
    ValueError: a bad argument (see the module docstring), before any work.
    FloatingPointError: the classifier returned NaN or inf logits.

  Example::

    r = certify(jax.random.key(0), apply_fn, variables, image, num_classes=10,
                sigma=0.5, n0=100, n=100_000, alpha=0.001, batch_size=1000)
    r.prediction, r.radius
  """
  sigma, alpha = _check_certify_args(num_classes=num_classes, sigma=sigma, n0=n0, n=n,
                                     alpha=alpha, batch_size=batch_size)
  key = _check_key(key)
  x = _check_images('x', x, 3)
  check_model_input(apply_fn, params, x.shape, num_classes=num_classes)
  return _certify_points(key[None], apply_fn, params, x[None],
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
    images: ``[N, H, W, C]`` float pixels in [0, 1].
    indices: which images to certify (default: all, in order); they also name the points
      for the key derivation.
    num_classes, sigma, n0, n, alpha, batch_size, devices: as in ``certify``.

  Returns:
    One ``CertifyResult`` per index, in order.

  Raises:
    ValueError: a bad argument, before any work (as ``certify``).
    FloatingPointError: the classifier returned NaN or inf logits.
  """
  sigma, alpha, key, images, indices = _check_certify_many_args(
      key, images, indices=indices, num_classes=num_classes, sigma=sigma, n0=n0, n=n,
      alpha=alpha, batch_size=batch_size, unique=False)
  if indices.size == 0:
    return []
  check_model_input(apply_fn, params, images.shape[1:], num_classes=num_classes)
  point_keys = _point_keys(key, jnp.asarray(indices, jnp.uint32))
  return _certify_points(point_keys, apply_fn, params, images[indices],
                         num_classes=num_classes, sigma=sigma, n0=n0, n=n, alpha=alpha,
                         batch_size=batch_size, mesh=_resolve_mesh(devices))
