"""Tests of rsp.smoothing, the pure core: the statistics against closed forms,
determinism, sharding, compile counts and the argument checks.

Each test states the probability that it fails spuriously. Tests with fixed keys are
deterministic on a given machine; their stated odds are those of drawing a failing key.
Float tolerances come from the numerics (the float64 condition of the computation or
float32 rounding), not from printed values. The classifiers are tiny pure functions on
4x4x1 images so the whole file runs in seconds.
"""

import json
import os
import inspect
import re
import subprocess
import sys
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from rsp import smoothing

SHAPE = (4, 4, 1)
D = int(np.prod(SHAPE))

# scipy's beta.ppf (Boost's ibeta_inv) is accurate to well within this many float64 ulps.
_BETA_PPF_ULPS = 1000
_EPS64 = np.finfo(np.float64).eps


@pytest.fixture(scope='module', autouse=True)
def _fast_compilation():
  """Compiling dominates these tests and XLA's optimisations buy nothing at these sizes:
  disable them for this module only."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


def constant_apply(params, images):
  """Always votes for class ``argmax(params)``."""
  return jnp.broadcast_to(params, (images.shape[0], params.shape[0]))


def linear_apply(params, images):
  """Two classes; class 1 iff w.x + b > 0. Logits [0, w.x + b]."""
  score = images.reshape(images.shape[0], -1) @ params['w'] + params['b']
  return jnp.stack([jnp.zeros_like(score), score], axis=-1)


def linear_params(margin: float):
  """w = 1/sqrt(D) (unit norm), b chosen so that x = 0.5 has distance ``margin``."""
  w = jnp.full((D,), 1.0 / np.sqrt(D), jnp.float32)
  x = np.full(SHAPE, 0.5, np.float32)
  b = margin - float(np.dot(x.reshape(-1), np.asarray(w)))
  return {'w': w, 'b': jnp.float32(b)}, x


def true_radius(params, x) -> float:
  w = np.asarray(params['w'], np.float64)
  return abs(float(x.reshape(-1) @ w + float(params['b']))) / np.linalg.norm(w)


def quantized_conv_apply(params, images):
  """A small CNN whose arithmetic is exact: integer inputs (the noisy image rounded to
  quarters, times 4) and integer weights, so every sum is exact in float32 whatever
  the batch size, summation order or device split; equal noise gives equal votes.

  With sigma a power of two (0.5 below) the noisy pixel x + sigma * eps is a single
  rounding of the exact sum, with or without a fused multiply-add, so it too is the same
  bits in every program.
  """
  q = jnp.round(images * 4.0)
  y = jax.lax.conv_general_dilated(q, params['kernel'], (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jax.nn.relu(y), axis=(1, 2)) @ params['dense']


def quantized_conv_params():
  rng = np.random.default_rng(0)
  return {'kernel': jnp.asarray(rng.integers(-2, 3, (3, 3, 1, 4)), jnp.float32),
          'dense': jnp.asarray(rng.integers(-2, 3, (4, 3)), jnp.float32)}


def no_work_apply(params, images):
  raise AssertionError('the classifier ran although the arguments were invalid')


class _Mlp(nn.Module):
  """A flax model whose first Dense layer fixes the image size it takes."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(x.reshape(x.shape[0], -1))


_MLP = _Mlp()


def mlp_apply(params, images):
  return _MLP.apply(params, images)


def mlp_params():
  return _MLP.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))


# ------------------------------------------------------------------------------------
# Statistics.


def test_clopper_pearson_boundaries_equal_exact_beta_quantiles():
  """Deterministic (failure odds 0): closed forms, to the accuracy of beta.ppf."""
  alpha = 0.001
  for n in (1, 10, 100, 100_000):
    assert smoothing.clopper_pearson_lower(0, n, alpha) == 0.0
    # nA = n: Beta(alpha; n, 1) = alpha**(1/n) in closed form.
    assert smoothing.clopper_pearson_lower(n, n, alpha) == pytest.approx(
        alpha ** (1 / n), rel=_BETA_PPF_ULPS * _EPS64)


def test_clopper_pearson_interior_matches_scipy_exact_interval():
  """Deterministic (failure odds 0). The one-sided (1 - alpha) bound is the lower end
  of the two-sided (1 - 2 alpha) exact interval; 1e-10 allows for scipy versions that
  find that end by root finding rather than by beta.ppf."""
  alpha = 0.01
  for count, n in ((1, 7), (50, 100), (99_000, 100_000)):
    two_sided = scipy.stats.binomtest(count, n).proportion_ci(
        confidence_level=1 - 2 * alpha, method='exact')
    assert smoothing.clopper_pearson_lower(count, n, alpha) == pytest.approx(
        two_sided.low, rel=1e-10)


def test_min_samples_are_the_exact_thresholds():
  """Deterministic (failure odds 0)."""
  for alpha in (0.5, 0.1, 0.001, 1e-6):
    n = smoothing.min_samples_to_certify(alpha)
    assert alpha ** (1 / n) > 0.5 and (n == 1 or alpha ** (1 / (n - 1)) <= 0.5)
    m = smoothing.min_samples_to_predict(alpha)
    assert 2 * 0.5 ** m <= alpha and (m == 1 or 2 * 0.5 ** (m - 1) > alpha)
  assert smoothing.min_samples_to_certify(0.001) == 10


def test_certify_from_counts_abstains_below_one_half():
  """Deterministic (failure odds 0)."""
  result = smoothing.certify_from_counts([30, 70], [60, 40], sigma=0.5, alpha=0.001)
  assert result.prediction == smoothing.ABSTAIN and result.radius == 0.0
  assert result.count == 40 and result.n == 100


# ------------------------------------------------------------------------------------
# The science: closed forms.


def test_constant_classifier_gets_the_largest_possible_radius():
  """Deterministic (failure odds 0): every vote goes to class 2, so pA_lower =
  alpha**(1/n) and R = sigma * Phi^-1(alpha**(1/n)).

  The tolerance is beta.ppf's accuracy times the relative condition number of
  Phi^-1 at p, p / (z * phi(z)) (about 13 here).
  """
  sigma, alpha, n = 0.25, 0.001, 500
  params = jax.nn.one_hot(2, 3)
  x = np.zeros(SHAPE, np.float32)
  result = smoothing.certify(jax.random.key(0), constant_apply, params, x, num_classes=3,
                             sigma=sigma, n0=20, n=n, alpha=alpha, batch_size=128)
  np.testing.assert_array_equal(result.counts, [0, 0, n])
  np.testing.assert_array_equal(result.selection_counts, [0, 0, 20])
  assert result.prediction == 2
  p = alpha ** (1 / n)
  z = scipy.stats.norm.ppf(p)
  condition = p / (z * scipy.stats.norm.pdf(z))
  assert result.radius == pytest.approx(sigma * z,
                                        rel=_BETA_PPF_ULPS * _EPS64 * (1 + condition))


def test_linear_classifier_radius_never_exceeds_the_true_radius_beyond_alpha():
  """For f(x) = 1[w.x + b > 0], g = f and the exact radius is |w.x + b| / ||w||.

  A certificate exceeds it only if the Clopper-Pearson bound fails, which happens with
  probability <= alpha = 0.01 per key, independently over keys. We certify 200 keys and
  allow up to 12 exceedances: P(Binomial(200, 0.01) >= 13) < 1e-6. The 1e-6 slack on
  the radius covers float32: evaluating w.x + b in float32 moves p_A, and so R, by
  about 1e-7.

  The median check fails only if at least 100 of the 200 keys give R < 0.7 R_true,
  each of which needs a 2-sigma binomial deviation or a wrong selection (p <= 0.03
  each): odds below 1e-50.
  """
  params, x = linear_params(margin=0.3)
  r_true = true_radius(params, x)
  num_keys, alpha = 200, 0.01
  images = np.broadcast_to(x, (num_keys, *SHAPE))
  results = smoothing.certify_many(jax.random.key(1), linear_apply, params, images,
                                   num_classes=2, sigma=0.5, n0=32, n=1000, alpha=alpha,
                                   batch_size=4096)
  radii = np.asarray([r.radius for r in results])
  assert all(r.prediction in (1, smoothing.ABSTAIN) for r in results)
  allowed = int(scipy.stats.binom.ppf(1 - 1e-6, num_keys, alpha))
  assert allowed == 12
  assert np.sum(radii > r_true + 1e-6) <= allowed
  # Not vacuous: most certificates are close to the truth at n = 1,000.
  assert np.median(radii) > 0.7 * r_true


def test_linear_classifier_radius_approaches_the_true_radius_as_n_grows():
  """At n = 100,000 the bound is within 0.02 of the truth (a 6-sigma binomial deviation
  would be needed to miss: probability < 1e-8), and tighter than at n = 1,000 (whose
  Clopper-Pearson gap alone is ten times larger: odds below 1e-8)."""
  params, x = linear_params(margin=0.3)
  r_true = true_radius(params, x)
  images = np.broadcast_to(x, (4, *SHAPE))
  kw = dict(num_classes=2, sigma=0.5, n0=32, alpha=0.001, batch_size=8192)
  small = smoothing.certify_many(jax.random.key(2), linear_apply, params, images, n=1000,
                                 **kw)
  large = smoothing.certify_many(jax.random.key(2), linear_apply, params, images,
                                 n=100_000, **kw)
  small_radii = np.asarray([r.radius for r in small])
  large_radii = np.asarray([r.radius for r in large])
  assert np.all(np.abs(large_radii - r_true) < 0.02)
  assert np.mean(np.abs(large_radii - r_true)) < np.mean(np.abs(small_radii - r_true))


def test_predict_abstains_on_a_fair_coin_and_is_right_when_confident():
  """The fair classifier votes class 1 iff the noise at pixel 0 is positive (p = 1/2).

  PREDICT returns a class only if the binomial test rejects p = 1/2, which under this
  null happens with probability <= alpha = 1e-6 (float32 rounding moves p by about
  1e-8, which changes that by a negligible amount). The confident classifiers have
  pA = Phi(4): abstaining would need n_B near n / 2 instead of about 0.3, odds far below
  1e-100.
  """
  params, x = linear_params(margin=0.0)
  fair = {'w': jnp.zeros(D).at[0].set(1.0), 'b': jnp.float32(-x.reshape(-1)[0])}
  kw = dict(num_classes=2, sigma=0.5, n=10_000, alpha=1e-6, batch_size=4096)
  assert smoothing.predict(jax.random.key(3), linear_apply, fair, x, **kw) == \
      smoothing.ABSTAIN
  confident, x = linear_params(margin=2.0)  # pA = Phi(4): n_B ~ 0.3 of 10,000.
  assert smoothing.predict(jax.random.key(3), linear_apply, confident, x, **kw) == 1
  negative, x = linear_params(margin=-2.0)
  assert smoothing.predict(jax.random.key(3), linear_apply, negative, x, **kw) == 0


# ------------------------------------------------------------------------------------
# Determinism, batching, sharding, compilation.


def test_same_key_same_certificate_and_batching_does_not_matter():
  """Exact equality is the claim: the noise is a function of (key, index, sample) alone
  and the quantized classifier's arithmetic is exact, so the counts (and the radii, a
  host function of them) match bit for bit (failure odds 0).

  Another key gives other counts: for each of the six images the estimation counts of
  two keys coincide with probability about 1 / sqrt(4 pi n p (1 - p)) < 0.05 (n = 300,
  p between 0.3 and 0.7 here), so all six coincide with odds below 1e-7.
  """
  params = quantized_conv_params()
  images = np.random.default_rng(0).random((6, *SHAPE)).astype(np.float32)
  kw = dict(num_classes=3, sigma=0.5, n0=16, n=300, alpha=0.001)
  key = jax.random.key(4)
  a = smoothing.certify_many(key, quantized_conv_apply, params, images, batch_size=64,
                             **kw)
  b = smoothing.certify_many(key, quantized_conv_apply, params, images, batch_size=1000,
                             **kw)
  c = smoothing.certify_many(key, quantized_conv_apply, params, images, indices=[5, 2],
                             batch_size=64, **kw)
  single = smoothing.certify(jax.random.fold_in(key, 5), quantized_conv_apply, params,
                             images[5], batch_size=7, **kw)
  assert len({tuple(r.counts) for r in a}) > 1  # The images do differ.
  for r, s in zip(a, b):
    np.testing.assert_array_equal(r.counts, s.counts)
    np.testing.assert_array_equal(r.selection_counts, s.selection_counts)
    assert r.radius == s.radius and r.prediction == s.prediction
  for r, s in ((a[5], c[0]), (a[2], c[1]), (a[5], single)):
    np.testing.assert_array_equal(r.counts, s.counts)
    assert r.radius == s.radius
  again = smoothing.certify(jax.random.fold_in(key, 5), quantized_conv_apply, params,
                            images[5], batch_size=7, **kw)
  np.testing.assert_array_equal(again.counts, single.counts)
  assert (again.prediction, again.radius) == (single.prediction, single.radius)
  other = smoothing.certify_many(jax.random.key(5), quantized_conv_apply, params, images,
                                 batch_size=64, **kw)
  assert not all(np.array_equal(r.counts, s.counts) for r, s in zip(a, other))


def test_counts_sum_to_n_and_raw_keys_work():
  """Deterministic (failure odds 0)."""
  params, x = linear_params(margin=0.1)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)  # Raw uint32[3, 2] keys.
  counts = smoothing.count_noisy_predictions(keys, linear_apply, params,
                                             np.stack([x] * 3), num_classes=2,
                                             sigma=0.5, n=777, batch_size=100)
  assert counts.shape == (3, 2) and np.all(counts.sum(axis=1) == 777)


def _trace_limited_counting(monkeypatch, max_traces: int):
  """Replaces smoothing's jitted counting function by a fresh jit of the same function
  that ``chex.assert_max_traces`` lets trace at most ``max_traces`` times in this test
  (one more trace raises an AssertionError). Returns the new jit: its ``_cache_size()``
  is the number of compilations so far."""
  chex.clear_trace_counter()
  fn = smoothing._vote_counts
  static = [name for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]  # The static arguments.
  jitted = jax.jit(chex.assert_max_traces(fn, n=max_traces), static_argnames=static)
  monkeypatch.setattr(smoothing, '_vote_counts_jit', jitted)
  return jitted


def test_one_compilation_for_many_images(monkeypatch):
  """Certifying more images, one by one or in batches, does not trace again.
  Deterministic (failure odds 0)."""
  # At most one new shape for the batches (4 images per step).
  counting = _trace_limited_counting(monkeypatch, max_traces=3)
  params, _ = linear_params(margin=0.2)
  images = np.random.default_rng(1).random((13, *SHAPE)).astype(np.float32)
  kw = dict(num_classes=2, sigma=0.5, n0=16, n=200, alpha=0.001, batch_size=64)
  smoothing.certify(jax.random.key(0), linear_apply, params, images[0], **kw)
  assert counting._cache_size() == 2  # Selection and estimation.
  for i in range(1, 6):
    smoothing.certify(jax.random.key(i), linear_apply, params, images[i], **kw)
  assert counting._cache_size() == 2
  smoothing.certify_many(jax.random.key(0), linear_apply, params, images[:9], **kw)
  after_first_batch = counting._cache_size()
  smoothing.certify_many(jax.random.key(1), linear_apply, params, images, **kw)
  smoothing.certify_many(jax.random.key(2), linear_apply, params, images[:5], **kw)
  assert counting._cache_size() == after_first_batch


_SHARDING_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    import smoothing_test as t
    from rsp import smoothing
    images = np.random.default_rng(0).random((5, *t.SHAPE)).astype(np.float32)
    results = smoothing.certify_many(jax.random.key(7), t.quantized_conv_apply,
                                     t.quantized_conv_params(), images,
                                     **t.SHARDING_KWARGS)
    json.dump({'num_devices': jax.device_count(),
               'counts': [[r.selection_counts.tolist(), r.counts.tolist()]
                          for r in results]}, sys.stdout)
""")
SHARDING_KWARGS = dict(num_classes=3, sigma=0.5, n0=8, n=250, alpha=0.001, batch_size=64)


def test_sharded_over_four_devices_equals_one_device():
  """The same key gives the same counts on 4 (fake CPU) devices as on 1; exact, as in
  the batching test (failure odds 0)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  env['PYTHONPATH'] = os.pathsep.join([os.path.dirname(tests_dir),
                                       env.get('PYTHONPATH', '')])
  proc = subprocess.run([sys.executable, '-c', _SHARDING_SCRIPT, tests_dir], env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sharded = json.loads(proc.stdout)
  assert sharded['num_devices'] == 4
  images = np.random.default_rng(0).random((5, *SHAPE)).astype(np.float32)
  results = smoothing.certify_many(jax.random.key(7), quantized_conv_apply,
                                   quantized_conv_params(), images,
                                   devices=jax.devices()[:1], **SHARDING_KWARGS)
  assert sharded['counts'] == [[r.selection_counts.tolist(), r.counts.tolist()]
                               for r in results]


def test_sigma_and_alpha_may_be_0d_arrays():
  """``jnp.float32(0.5)`` and ``np.float64(0.001)`` are numbers like 0.5 and 0.001: the
  same certificate (0.5 is exact in float32; failure odds 0)."""
  params = quantized_conv_params()
  x = np.random.default_rng(3).random(SHAPE).astype(np.float32)
  kw = dict(num_classes=3, n0=16, n=300, batch_size=64)
  plain = smoothing.certify(jax.random.key(6), quantized_conv_apply, params, x,
                            sigma=0.5, alpha=0.001, **kw)
  arrays = smoothing.certify(jax.random.key(6), quantized_conv_apply, params, x,
                             sigma=jnp.float32(0.5), alpha=np.float64(0.001), **kw)
  np.testing.assert_array_equal(plain.counts, arrays.counts)
  assert (plain.prediction, plain.radius) == (arrays.prediction, arrays.radius)
  assert isinstance(arrays.radius, float)
  assert smoothing.predict(jax.random.key(6), quantized_conv_apply, params, x,
                           sigma=np.asarray(0.5), alpha=0.001, n=300, num_classes=3,
                           batch_size=64) == smoothing.predict(
                               jax.random.key(6), quantized_conv_apply, params, x,
                               sigma=0.5, alpha=0.001, n=300, num_classes=3,
                               batch_size=64)


# ------------------------------------------------------------------------------------
# Guardrails: ValueError naming the argument, before any work. All deterministic
# (failure odds 0).


_GOOD = dict(num_classes=2, sigma=0.5, n0=16, n=100, alpha=0.001, batch_size=64)
_BAD_ARGS = [
    ('sigma', 0.0), ('sigma', -0.5), ('sigma', float('nan')), ('sigma', float('inf')),
    ('sigma', jnp.zeros(2)), ('sigma', '0.5'), ('sigma', True),
    ('alpha', 0.0), ('alpha', 1.0), ('alpha', 1.5), ('alpha', -0.1),
    ('n0', 0), ('n0', 2.5), ('n', 0), ('n', -3), ('n', 9),
    ('batch_size', 0), ('batch_size', -1), ('batch_size', 16.0),
    ('num_classes', 1),
]


@pytest.mark.parametrize('name,value', _BAD_ARGS)
def test_certify_rejects_bad_arguments_before_work(name, value):
  """Deterministic (failure odds 0)."""
  x = np.zeros(SHAPE, np.float32)
  kw = dict(_GOOD, **{name: value})
  with pytest.raises(ValueError, match=name):
    smoothing.certify(jax.random.key(0), no_work_apply, None, x, **kw)
  with pytest.raises(ValueError, match=name):
    smoothing.certify_many(jax.random.key(0), no_work_apply, None, x[None], **kw)


def test_too_small_n_says_what_n_is_needed():
  """Deterministic (failure odds 0)."""
  x = np.zeros(SHAPE, np.float32)
  with pytest.raises(ValueError, match=r'n=9 .*alpha=0.001.*n >= 10'):
    smoothing.certify(jax.random.key(0), no_work_apply, None, x, **dict(_GOOD, n=9))
  with pytest.raises(ValueError, match=r'n=10 .*n >= 11'):
    smoothing.predict(jax.random.key(0), no_work_apply, None, x, num_classes=2,
                      sigma=0.5, n=10, alpha=0.001, batch_size=64)


@pytest.mark.parametrize('bad', ['nan', 'inf', 'rank', 'empty', 'uint8', 'above_one',
                                 'negative'])
def test_bad_images_are_rejected_before_work(bad):
  """Deterministic (failure odds 0)."""
  x = np.zeros(SHAPE, np.float32)
  if bad == 'nan':
    x[0, 0, 0] = np.nan
  elif bad == 'inf':
    x[1, 2, 0] = -np.inf
  elif bad == 'rank':
    x = x[..., 0]
  elif bad == 'empty':
    x = np.zeros((0, 4, 1), np.float32)
  elif bad == 'uint8':
    x = np.zeros(SHAPE, np.uint8)
  elif bad == 'above_one':
    x = np.full(SHAPE, 255.0, np.float32)  # Pixels as uint8 values, as floats.
  else:
    x[3, 3, 0] = -0.5  # A normalised image.
  match = {'rank': 'shape', 'empty': 'shape', 'uint8': 'dtype',
           'above_one': r'x holds pixel values from .* \[0, 1\] \(divide uint8 images by '
                        '255',
           'negative': r'x holds pixel values from -0.5 to 0.*divide'}.get(bad, 'x ')
  with pytest.raises(ValueError, match=match):
    smoothing.certify(jax.random.key(0), no_work_apply, None, x, **_GOOD)
  with pytest.raises(ValueError, match=match):
    smoothing.predict(jax.random.key(0), no_work_apply, None, x, num_classes=2, sigma=0.5,
                      n=100, alpha=0.001, batch_size=64)
  with pytest.raises(ValueError, match='images'):
    smoothing.certify_many(jax.random.key(0), no_work_apply, None, x[None], **_GOOD)
  with pytest.raises(ValueError, match='images'):
    smoothing.count_noisy_predictions(jax.random.key(0)[None], no_work_apply, None,
                                      x[None], num_classes=2, sigma=0.5, n=10,
                                      batch_size=8)


@pytest.mark.parametrize('key', [0, 7, np.int64(3), 1.5, None, np.zeros(2, np.float32),
                                 'key'])
def test_a_key_that_is_not_a_jax_random_key_is_refused(key):
  """An int seed (or anything else) where a key belongs: a ValueError saying what to
  pass, not a JAX TypeError. Deterministic (failure odds 0)."""
  x = np.zeros(SHAPE, np.float32)
  match = (rf'key={re.escape(repr(key))} .*is not one jax.random key.*'
           rf'jax.random.key\({int(key)}\)'
           if isinstance(key, (int, np.integer)) else r'is not one jax.random key')
  with pytest.raises(ValueError, match=match):
    smoothing.certify(key, no_work_apply, None, x, **_GOOD)
  with pytest.raises(ValueError, match=match):
    smoothing.certify_many(key, no_work_apply, None, x[None], **_GOOD)
  with pytest.raises(ValueError, match=match):
    smoothing.predict(key, no_work_apply, None, x, num_classes=2, sigma=0.5, n=100,
                      alpha=0.001, batch_size=64)
  with pytest.raises(ValueError, match='keys'):
    smoothing.count_noisy_predictions(key, no_work_apply, None, x[None], num_classes=2,
                                      sigma=0.5, n=10, batch_size=8)


def test_wrong_number_of_keys_is_refused():
  """Deterministic (failure odds 0)."""
  x = np.zeros((3, *SHAPE), np.float32)
  with pytest.raises(ValueError, match='keys has 2 entries for 3 images'):
    smoothing.count_noisy_predictions(jax.random.split(jax.random.key(0), 2),
                                      no_work_apply, None, x, num_classes=2, sigma=0.5,
                                      n=10, batch_size=8)


@pytest.mark.parametrize('shape', [(5, 5, 1), (4, 4, 3)])
def test_an_image_shape_the_model_cannot_take_is_refused_naming_the_shapes(shape,
                                                                          monkeypatch):
  """The flax model was built for 4x4x1 images (its Dense kernel is [16, 2]); other
  images fail when traced, reported as a ValueError naming the image shape and the
  parameter shapes, before any noise is drawn. Deterministic (failure odds 0)."""
  params = mlp_params()
  x = np.zeros(shape, np.float32)
  got = int(np.prod(shape))
  match = (rf'the model cannot take images of shape \({shape[0]}, {shape[1]}, '
           rf'{shape[2]}\).*ScopeParamShapeError.*\({got}, 2\).*\(16, 2\)')
  _trace_limited_counting(monkeypatch, max_traces=0)  # A trace raises an AssertionError.
  with pytest.raises(ValueError, match=match):
    smoothing.certify(jax.random.key(0), mlp_apply, params, x, **_GOOD)
  with pytest.raises(ValueError, match=match):
    smoothing.certify_many(jax.random.key(0), mlp_apply, params, x[None], **_GOOD)
  with pytest.raises(ValueError, match=match):
    smoothing.predict(jax.random.key(0), mlp_apply, params, x, num_classes=2, sigma=0.5,
                      n=100, alpha=0.001, batch_size=64)
  monkeypatch.undo()  # The counting function never ran; the library's own again.
  # The shape it was built for works.
  result = smoothing.certify(jax.random.key(0), mlp_apply, params,
                             np.zeros(SHAPE, np.float32), **_GOOD)
  assert result.n == _GOOD['n']


def test_nonfinite_logits_and_wrong_num_classes_raise():
  """Deterministic (failure odds 0)."""
  x = np.zeros(SHAPE, np.float32)
  nan_apply = lambda p, xs: jnp.full((xs.shape[0], 2), jnp.nan)
  with pytest.raises(FloatingPointError, match='NaN'):
    smoothing.certify(jax.random.key(0), nan_apply, None, x, **_GOOD)
  with pytest.raises(ValueError, match=r'logits of shape \(1, 3\).*num_classes'):
    smoothing.certify(jax.random.key(0), constant_apply, jnp.ones(3), x, **_GOOD)


def test_batch_plan_fills_batches_and_shards_evenly():
  """Deterministic (failure odds 0)."""
  assert smoothing.batch_plan(500, 100, 1000) == (10, 100, 1)  # 10 images per step.
  assert smoothing.batch_plan(3, 100, 1000) == (4, 100, 1)     # Capped at pow2(3).
  assert smoothing.batch_plan(1, 100, 1000) == (1, 100, 1)
  assert smoothing.batch_plan(1, 100_000, 1000) == (1, 1000, 100)
  assert smoothing.batch_plan(1, 10_000, 3000) == (1, 2500, 4)  # Equal steps, no waste.
  assert smoothing.batch_plan(1, 1001, 10_000, 4) == (1, 1004, 1)
