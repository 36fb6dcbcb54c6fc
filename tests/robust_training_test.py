"""Tests of rsp.robust_training: each loss against its closed form on a tiny linear
model, the SmoothAdv attack's constraints and effect, finiteness on the paper's models,
one compilation per shape, and the hyperparameter checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from rsp import models
from rsp import robust_training as rt

# Compiling dominates these tests; XLA's optimisations buy nothing at these sizes.
jax.config.update('jax_disable_most_optimizations', True)

SHAPE = (4, 4, 1)
D = 16
K = 3
F32_EPS = float(np.finfo(np.float32).eps)  # 2^-23: relative spacing of float32 numbers.


def linear_apply(params, state, images, train=True):
  """A linear classifier: logits = x W + b; no state."""
  del train
  return images.reshape(images.shape[0], -1) @ params['w'] + params['b'], state


def linear_problem(b=8, seed=0):
  rng = np.random.default_rng(seed)
  params = {'w': jnp.asarray(rng.normal(size=(D, K)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(K,)) * 0.1, jnp.float32)}
  batch = {'image': jnp.asarray(rng.uniform(0.2, 0.8, (b, *SHAPE)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, K, b), jnp.int32)}
  return params, batch


def jit_loss(loss_fn, **hparams):
  """``loss_fn`` on the linear model, compiled once: ``f(params, batch, key)``."""
  fn = functools.partial(loss_fn, apply_fn=linear_apply, **hparams)
  return jax.jit(lambda params, batch, key: fn(params, {}, batch, key))


_noise = jax.jit(rt.add_gaussian_noise, static_argnums=(2, 3))


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _np_logits(params, images):
  return (np.asarray(images, np.float64).reshape(images.shape[0], -1)
          @ np.asarray(params['w'], np.float64) + np.asarray(params['b'], np.float64))


def _cross_entropy_rounding(params, images):
  """Bounds on the float32 rounding of the linear model's mean cross-entropy and of its
  gradient, whatever the summation order (so: whatever XLA program computes them).

  First-order worst cases, eps = 2^-23 per operation: a logit sums D + 1 terms and errs
  by at most (D + 1) eps m, m the largest sum of their absolute values; the
  cross-entropy (max shift, K exps and their sum, a log, a subtraction) by twice that
  plus (K + 4) eps (m + log K); a mean of n of them adds n eps (2 m + log K). A
  probability errs by at most 2 (D + 1) eps m + (K + 3) eps, so a gradient entry, a mean
  of n products with the inputs, by max(1, max |x|) times that plus (n + 2) eps.

  Returns:
    ``(loss_bound, grad_bound)``, absolute bounds for one float32 evaluation.
  """
  x = np.asarray(images, np.float64).reshape(images.shape[0], -1)
  n = x.shape[0]
  w, b = (np.abs(np.asarray(params[k], np.float64)) for k in ('w', 'b'))
  m = float(np.max(np.abs(x) @ w + b))
  logit = (D + 1) * F32_EPS * m
  loss_bound = 2 * logit + F32_EPS * ((K + 4) * (m + np.log(K)) + n * (2 * m + np.log(K)))
  prob = 2 * logit + (K + 3) * F32_EPS
  grad_bound = max(1.0, float(np.abs(x).max())) * (prob + (n + 2) * F32_EPS)
  return loss_bound, grad_bound


# ------------------------------------------------------------------------------------
# Shared pieces.


def test_add_gaussian_noise_groups_copies_by_image():
  images = jnp.arange(2 * D, dtype=jnp.float32).reshape(2, *SHAPE)
  noisy = _noise(jax.random.key(0), images, 0.5, 3)
  assert noisy.shape == (6, *SHAPE)
  noise = (noisy - jnp.repeat(images, 3, axis=0)) / 0.5
  assert np.all(np.abs(noise) < 6)  # Copy i*3 + j is image i plus noise.
  assert abs(float(jnp.std(noise)) - 1) < 0.3
  np.testing.assert_array_equal(_noise(jax.random.key(0), images, 0.0, 2),
                                jnp.repeat(images, 2, axis=0))


def test_certified_radius_surrogate_matches_scipy():
  rng = np.random.default_rng(0)
  probs = _np_softmax(rng.normal(size=(50, 5)) * 3)
  labels = rng.integers(0, 5, 50)
  sigma, alpha = 0.5, 1e-3
  surrogate = jax.jit(rt.certified_radius_surrogate, static_argnames=('sigma', 'alpha'))
  radius, correct = surrogate(jnp.asarray(probs, jnp.float32), jnp.asarray(labels),
                              sigma=sigma, alpha=alpha)
  top = np.sort(probs, axis=1)[:, ::-1]
  squash = (1 - 2 * alpha) * top[:, :2] + alpha
  expected = 0.5 * sigma * (scipy.stats.norm.ppf(squash[:, 0]) -
                            scipy.stats.norm.ppf(squash[:, 1]))
  np.testing.assert_allclose(radius, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(correct, probs.argmax(1) == labels)
  # Two classes, no squash: Cohen's radius sigma * Phi^-1(pA).
  p = np.array([[0.9, 0.1], [0.6, 0.4]])
  radius, _ = surrogate(jnp.asarray(p, jnp.float32), jnp.array([0, 0]), sigma=0.25,
                        alpha=0.0)
  np.testing.assert_allclose(radius, 0.25 * scipy.stats.norm.ppf(p[:, 0]), rtol=1e-5)


def test_soft_smoothed_probs_and_project_l2():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)), jnp.float32)
  np.testing.assert_allclose(rt.soft_smoothed_probs(logits, 2.0),
                             _np_softmax(2.0 * np.asarray(logits)).mean(1), rtol=1e-5)
  delta = jnp.stack([jnp.full(SHAPE, 0.5), jnp.full(SHAPE, 0.01)])  # norms 2 and 0.04
  projected = rt.project_l2(delta, 1.0)
  norms = jnp.sqrt(jnp.sum(projected.reshape(2, -1) ** 2, 1))
  np.testing.assert_allclose(norms, [1.0, 0.04], rtol=1e-5)
  np.testing.assert_allclose(projected[0], delta[0] / 2, rtol=1e-5)


# ------------------------------------------------------------------------------------
# Losses against closed forms.


def test_standard_is_cross_entropy():
  params, batch = linear_problem()
  loss, (state, metrics) = jit_loss(rt.standard_loss)(params, batch, jax.random.key(0))
  p = _np_softmax(_np_logits(params, batch['image']))
  expected = -np.mean(np.log(p[np.arange(8), np.asarray(batch['label'])]))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert state == {} and set(metrics) >= {'loss', 'accuracy'}


def test_gaussian_reduces_to_cross_entropy_as_sigma_goes_to_zero():
  """At sigma = 0 the noisy copies equal the images exactly (x + 0 * noise = x), but the
  two losses are different XLA programs (a mean over 24 rows, not 8), so they agree to
  float32 rounding: within twice :func:`_cross_entropy_rounding`, a worst-case bound that
  no summation order can exceed, so rounding cannot fail the test (2.1e-4 here, the size
  of the gap at sigma = 1e-3; noise left in at sigma = 0.1 gives 0.03). The gradients
  likewise."""
  params, batch = linear_problem()
  key = jax.random.key(1)
  ce, _ = jit_loss(rt.standard_loss)(params, batch, key)
  at_zero, _ = jit_loss(rt.gaussian_loss, sigma=0.0, num_noise=3)(params, batch, key)
  loss_bound, grad_bound = _cross_entropy_rounding(
      params, jnp.repeat(batch['image'], 3, axis=0))
  assert abs(float(at_zero) - float(ce)) <= 2 * loss_bound
  loss_at = jax.jit(lambda sigma: rt.gaussian_loss(params, {}, batch, key,
                                                    apply_fn=linear_apply, sigma=sigma)[0])
  gaps = [abs(float(loss_at(sigma)) - float(ce)) for sigma in (1e-1, 1e-2, 1e-3)]
  # Continuous: the gap shrinks in proportion to sigma (the loss is smooth in x).
  assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 2e-3
  grad_zero = jax.jit(jax.grad(lambda p: rt.gaussian_loss(
      p, {}, batch, key, apply_fn=linear_apply, sigma=0.0)[0]))(params)
  grad_ce = jax.jit(jax.grad(lambda p: rt.standard_loss(
      p, {}, batch, key, apply_fn=linear_apply)[0]))(params)
  for g_zero, g_ce in zip(jax.tree.leaves(grad_zero), jax.tree.leaves(grad_ce)):
    np.testing.assert_allclose(g_zero, g_ce, rtol=0, atol=2 * grad_bound)


def test_gaussian_averages_noisy_copies():
  params, batch = linear_problem()
  key = jax.random.key(2)
  loss, _ = jit_loss(rt.gaussian_loss, sigma=0.3, num_noise=4)(params, batch, key)
  noisy = _noise(key, batch['image'], 0.3, 4)
  p = _np_softmax(_np_logits(params, noisy))
  labels = np.repeat(np.asarray(batch['label']), 4)
  np.testing.assert_allclose(loss, -np.mean(np.log(p[np.arange(32), labels])), rtol=1e-5)


def test_soft_labels_are_the_cross_entropy_targets():
  """With ``batch['soft_label']`` (mixup) the standard and Gaussian losses are the
  cross-entropy against those soft targets, repeated per noisy copy; one-hot soft labels
  give the integer-label loss; MACER and SmoothAdv refuse them."""
  params, batch = linear_problem()
  key = jax.random.key(2)
  rng = np.random.default_rng(5)
  soft = rng.dirichlet(np.ones(K), size=8).astype(np.float32)
  with_soft = dict(batch, soft_label=jnp.asarray(soft))
  loss, _ = jit_loss(rt.gaussian_loss, sigma=0.3, num_noise=4)(params, with_soft, key)
  p = _np_softmax(_np_logits(params, _noise(key, batch['image'], 0.3, 4)))
  expected = -np.mean(np.sum(np.repeat(soft, 4, axis=0) * np.log(p), axis=1))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  loss, _ = jit_loss(rt.standard_loss)(params, with_soft, key)
  p = _np_softmax(_np_logits(params, batch['image']))
  np.testing.assert_allclose(loss, -np.mean(np.sum(soft * np.log(p), axis=1)), rtol=1e-5)
  one_hot = dict(batch, soft_label=jax.nn.one_hot(batch['label'], K))
  for fn in (rt.standard_loss, rt.gaussian_loss):
    np.testing.assert_allclose(jit_loss(fn)(params, one_hot, key)[0],
                               jit_loss(fn)(params, batch, key)[0], rtol=1e-6)
  for fn, name in ((rt.macer_loss, 'macer'), (rt.smoothadv_loss, 'smoothadv')):
    with pytest.raises(ValueError, match=f"the {name} loss takes integer labels only"):
      fn(params, {}, one_hot, key, apply_fn=linear_apply)


def _macer_by_hand(params, batch, key, *, sigma, k, lbd, gamma, beta, alpha):
  """MACER (Zhai et al. 2020, Alg. 1) in float64 numpy and scipy."""
  noisy = _noise(key, batch['image'], sigma, k)
  logits = _np_logits(params, noisy).reshape(-1, k, K)
  labels = np.asarray(batch['label'])
  n = len(labels)
  pbar = _np_softmax(logits).mean(1)
  ce = -np.log(pbar[np.arange(n), labels] + 1e-10)
  pbeta = _np_softmax(beta * logits).mean(1)
  order = np.argsort(-pbeta, axis=1)
  p1 = pbeta[np.arange(n), order[:, 0]]
  p2 = pbeta[np.arange(n), order[:, 1]]
  ppf = lambda p: scipy.stats.norm.ppf((1 - 2 * alpha) * p + alpha)
  xi = ppf(p1) - ppf(p2)
  active = (order[:, 0] == labels) & (xi <= gamma)
  hinge = np.where(active, sigma / 2 * (gamma - xi), 0.0)
  return np.mean(ce + lbd * hinge), np.mean(ce), active


def test_macer_with_zero_lambda_is_the_soft_smoothed_cross_entropy():
  params, batch = linear_problem()
  key = jax.random.key(3)
  hp = dict(sigma=0.5, num_noise=6, gamma=8.0, beta=16.0, alpha=1e-3)
  loss, (_, metrics) = jit_loss(rt.macer_loss, lbd=0.0, **hp)(params, batch, key)
  _, ce_smooth, _ = _macer_by_hand(params, batch, key, sigma=0.5, k=6, lbd=0.0,
                                   gamma=8.0, beta=16.0, alpha=1e-3)
  np.testing.assert_allclose(loss, ce_smooth, rtol=1e-5)
  np.testing.assert_allclose(metrics['ce_smooth'], ce_smooth, rtol=1e-5)


def test_macer_hinge_matches_a_hand_computation():
  params, batch = linear_problem(b=32, seed=4)
  params = jax.tree.map(lambda p: 0.3 * p, params)  # Moderate margins: a mix of cases.
  key = jax.random.key(5)
  hp = dict(sigma=0.5, k=8, lbd=3.0, gamma=1.5, beta=4.0, alpha=1e-3)
  expected, _, active = _macer_by_hand(params, batch, key, **hp)
  # The test needs points in the hinge and points outside it (wrong or xi > gamma).
  assert 0 < active.sum() < len(active)
  f = jax.jit(lambda p: rt.macer_loss(p, {}, batch, key, apply_fn=linear_apply,
                                      sigma=0.5, num_noise=8, lbd=3.0, gamma=1.5,
                                      beta=4.0, alpha=1e-3)[0])
  np.testing.assert_allclose(f(params), expected, rtol=1e-5)
  # The gradient of the hinge flows only through the active points, and agrees with
  # central finite differences in float32 along a random direction.
  grad = jax.jit(jax.grad(f))(params)
  direction = jax.tree.map(lambda p: jax.random.normal(jax.random.key(6), p.shape), params)
  h = 1e-3
  shift = lambda s: jax.tree.map(lambda p, d: p + s * d, params, direction)
  numeric = (float(f(shift(h))) - float(f(shift(-h)))) / (2 * h)
  analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grad),
                                                        jax.tree.leaves(direction)))
  np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-3)


def test_smoothadv_with_zero_epsilon_is_gaussian_augmentation():
  """epsilon = 0: the perturbation is exactly 0 and the noise the same draws, so the
  losses agree to the float32 rounding of two programs (:func:`_cross_entropy_rounding`,
  a worst case); delta_l2 is sqrt(0 + 1e-20) = 1e-10."""
  params, batch = linear_problem()
  key = jax.random.key(7)
  ga, _ = jax.jit(functools.partial(rt.gaussian_loss, apply_fn=linear_apply, sigma=0.25,
                                     num_noise=2))(params, {}, batch, key)
  loss_bound, _ = _cross_entropy_rounding(params, _noise(key, batch['image'], 0.25, 2))
  for pgd in ('salman', 'adam'):
    loss, (_, metrics) = jax.jit(functools.partial(
        rt.smoothadv_loss, apply_fn=linear_apply, sigma=0.25, num_noise=2, epsilon=0.0,
        pgd=pgd))(params, {}, batch, key)
    assert abs(float(loss) - float(ga)) <= 2 * loss_bound
    assert float(metrics['delta_l2']) < 1e-6


@pytest.mark.parametrize('pgd,clip', [('salman', True), ('adam', True), ('salman', False)])
def test_smoothadv_perturbation_stays_in_its_ball_and_raises_the_loss(pgd, clip):
  params, batch = linear_problem(b=16, seed=8)
  images, labels = batch['image'], batch['label']
  eps, m = 0.5, 4
  noise = 0.25 * jax.random.normal(jax.random.key(9), (16, m, *SHAPE))
  attack = functools.partial(rt.smoothadv_perturbation, apply_fn=linear_apply,
                             epsilon=eps, num_steps=3, pgd=pgd, clip=clip)
  delta = jax.jit(attack)(params, {}, images, labels, noise)
  norms = jnp.sqrt(jnp.sum(delta.reshape(16, -1) ** 2, axis=1))
  assert np.all(norms <= eps * (1 + 1e-5))
  assert np.all(norms > 0.5 * eps)  # The attack uses its budget.
  if clip:
    assert np.all(images + delta >= 0) and np.all(images + delta <= 1)

  def smoothed_loss(d):  # -log of the soft smoothed probability of the label, [B]
    logits, _ = linear_apply(params, {}, ((images + d)[:, None] + noise).reshape(
        -1, *SHAPE))
    pbar = rt.soft_smoothed_probs(logits.reshape(16, m, K))
    return -jnp.log(pbar[jnp.arange(16), labels])

  before, after = smoothed_loss(jnp.zeros_like(delta)), smoothed_loss(delta)
  assert np.all(after > before)
  # The perturbation is a constant for the weight update.
  g = jax.jit(jax.grad(lambda p: jnp.sum(attack(p, {}, images, labels, noise))))(params)
  assert all(np.all(x == 0) for x in jax.tree.leaves(g))


def test_smoothadv_loss_is_the_loss_on_the_attacked_images():
  params, batch = linear_problem(seed=10)
  key = jax.random.key(11)
  hp = dict(sigma=0.25, num_noise=2, num_steps=2, pgd='adam')
  loss_fn = jax.jit(lambda epsilon: rt.smoothadv_loss(
      params, {}, batch, key, apply_fn=linear_apply, epsilon=epsilon, **hp)[0])
  loss, clean = loss_fn(0.5), loss_fn(0.0)
  assert float(loss) > float(clean)


# ------------------------------------------------------------------------------------
# The paper's models: finite, compiled once per shape.

_HPARAMS = {
    'standard': {},
    'gaussian': dict(sigma=0.5, num_noise=2),
    'macer': dict(sigma=0.5, num_noise=2, lbd=16.0, gamma=8.0, beta=16.0),
    'smoothadv': dict(sigma=0.5, num_noise=1, epsilon=1.0, num_steps=2, pgd='adam'),
}


def test_losses_and_gradients_are_finite_on_lenet():
  """Every method on the paper's MNIST model. (ResNet-20 under every method, with its
  BatchNorm state, is trained by tests/train_test.py's paper-config runs, which assert
  finite losses, gradient norms and weights.)"""
  model = models.get_model('lenet', 10)
  shape = models.input_shape('lenet')
  apply_fn = models.make_train_apply_fn(model)
  params, state = models.split_variables(jax.jit(
      lambda k: models.init_model(k, model, shape))(jax.random.key(0)))
  batch = {'image': jax.random.uniform(jax.random.key(1), (2, *shape)),
           'label': jnp.array([3, 8], jnp.int32)}

  @jax.jit
  def all_methods(params, state, batch, key):
    out = {}
    for method in rt.METHODS:
      loss_fn = rt.get_loss(method, **_HPARAMS[method])
      (loss, (new_state, metrics)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(params, state, batch, key, apply_fn=apply_fn)
      out[method] = (loss, new_state, metrics, grads)
    return out

  for method, (loss, new_state, metrics, grads) in all_methods(
      params, state, batch, jax.random.key(2)).items():
    assert np.isfinite(float(loss)), method
    assert all(np.all(np.isfinite(m)) for m in metrics.values()), method
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), method
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads)), method
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize('method', rt.METHODS)
def test_compiled_once_per_shape(method):
  params, _ = linear_problem()
  hparams = {k: v for k, v in _HPARAMS[method].items() if k != 'epsilon'}
  loss_fn = rt.get_loss(method, **hparams)
  traces = []

  @jax.jit
  def value_and_grad(params, batch, key, epsilon):
    traces.append(1)
    kwargs = {'epsilon': epsilon} if method == 'smoothadv' else {}
    return jax.value_and_grad(loss_fn, has_aux=True)(params, {}, batch, key,
                                                     apply_fn=linear_apply, **kwargs)

  for i in range(3):  # New keys, batches and (SmoothAdv warm-up) epsilons: no retrace.
    _, batch = linear_problem(seed=i)
    value_and_grad(params, batch, jax.random.key(i), jnp.float32(0.25 * i))
  assert len(traces) == 1
  assert value_and_grad._cache_size() == 1  # pylint: disable=protected-access
  if method in ('gaussian', 'smoothadv'):  # A new shape compiles once more.
    _, batch = linear_problem(b=5)
    for i in range(2):
      value_and_grad(params, batch, jax.random.key(i), jnp.float32(0.5))
    assert len(traces) == 2
    assert value_and_grad._cache_size() == 2  # pylint: disable=protected-access


# ------------------------------------------------------------------------------------
# Argument checks.


def test_get_loss_registry():
  assert rt.METHODS == ('standard', 'gaussian', 'macer', 'smoothadv')
  assert rt.get_loss('macer') is rt.macer_loss
  bound = rt.get_loss('gaussian', sigma=0.25)
  assert isinstance(bound, functools.partial) and bound.keywords == {'sigma': 0.25}


def test_loss_defaults():
  # Zhai et al.'s CIFAR-10 MACER settings, which the reference PACD code uses too.
  assert rt.loss_defaults('macer') == dict(sigma=0.25, num_noise=16, lbd=12.0, gamma=8.0,
                                           beta=16.0, alpha=1e-3)
  assert rt.loss_defaults('macer', 'beta', 'gamma') == dict(beta=16.0, gamma=8.0)
  assert rt.loss_defaults('standard') == {}
  assert list(rt.loss_defaults('smoothadv')) == ['sigma', 'num_noise', 'epsilon',
                                                 'num_steps', 'pgd', 'clip']
  for method in rt.METHODS:  # Every default passes the loss's own checks.
    rt.get_loss(method, **rt.loss_defaults(method))
  with pytest.raises(ValueError, match=r"macer loss has no hyperparameter\(s\) \['train'\]"):
    rt.loss_defaults('macer', 'train')
  with pytest.raises(ValueError, match="method='trades' is not known"):
    rt.loss_defaults('trades')


@pytest.mark.parametrize('method,hparams,match', [
    ('gaussian', dict(sigma=-0.1), "sigma=-0.1 is invalid for method 'gaussian'; "
     'accepted: sigma > 0'),
    ('gaussian', dict(sigma=0.0), 'sigma=0.0 is invalid.*sigma > 0'),
    ('smoothadv', dict(sigma=-1.0), 'sigma'),
    ('smoothadv', dict(sigma=0.0), 'sigma=0.0 is invalid.*sigma > 0'),
    ('macer', dict(sigma=0.0), 'sigma > 0'),
    ('gaussian', dict(sigma=jnp.float32(0.0)), 'sigma=0.0 is invalid'),
    ('gaussian', dict(sigma=np.ones(2)), 'sigma'),
    ('gaussian', dict(num_noise=True), 'num_noise'),
    ('gaussian', dict(num_noise=0), 'num_noise'),
    ('gaussian', dict(num_noise=2.0), 'num_noise'),
    ('gaussian', dict(sigma='big'), 'sigma'),
    ('macer', dict(lbd=-1.0), 'lbd'),
    ('macer', dict(gamma=0.0), 'gamma'),
    ('macer', dict(beta=-1.0), 'beta'),
    ('macer', dict(alpha=0.5), 'alpha'),
    ('smoothadv', dict(epsilon=-0.5), 'epsilon'),
    ('smoothadv', dict(num_steps=0), 'num_steps'),
    ('smoothadv', dict(pgd='fgsm'), 'pgd'),
    ('gaussian', dict(lbd=1.0), r"takes no hyperparameter\(s\) \['lbd'\]"),
    ('standard', dict(sigma=0.5), 'takes no hyperparameter'),
])
def test_bad_hparams_raise(method, hparams, match):
  with pytest.raises(ValueError, match=match):
    rt.get_loss(method, **hparams)


def test_numpy_and_jax_scalars_are_accepted_as_the_numbers_they_hold():
  """``jnp.float32(0.5)`` and ``np.int64(2)`` work wherever ``0.5`` and ``2`` do."""
  bound = rt.get_loss('macer', sigma=jnp.float32(0.5), num_noise=np.int64(2),
                      lbd=np.float32(1.0))
  assert bound.keywords == {'sigma': 0.5, 'num_noise': 2, 'lbd': 1.0}
  assert type(bound.keywords['sigma']) is float and type(bound.keywords['num_noise']) is int
  rt.validate_hparams('smoothadv', sigma=np.float64(0.25), epsilon=jnp.asarray(1.0),
                      num_steps=np.int32(2))
  params, batch = linear_problem()
  loss, _ = bound(params, {}, batch, jax.random.key(0), apply_fn=linear_apply)
  assert np.isfinite(float(loss))


def test_validate_hparams_names_the_config_path():
  with pytest.raises(ValueError, match=r"^config.loss.sigma=0.0 is invalid for method "
                                       r"'gaussian'; accepted: sigma > 0.$"):
    rt.validate_hparams('gaussian', prefix='config.loss.', sigma=0.0)


def test_bad_method_and_direct_calls_raise():
  with pytest.raises(ValueError, match="method='trades' is not known; accepted: standard"):
    rt.get_loss('trades')
  params, batch = linear_problem()
  with pytest.raises(ValueError, match='sigma'):
    rt.gaussian_loss(params, {}, batch, jax.random.key(0), apply_fn=linear_apply,
                     sigma=-1.0)
  with pytest.raises(ValueError, match='pgd'):
    rt.smoothadv_perturbation(params, {}, batch['image'], batch['label'],
                              jnp.zeros((8, 1, *SHAPE)), apply_fn=linear_apply,
                              epsilon=0.5, pgd='fgsm')


# ------------------------------------------------------------------------------------
# SmoothAdv's radius schedules.


def test_smoothadv_warmup_epsilon_is_linear_then_flat():
  assert [rt.smoothadv_warmup_epsilon(e, 1.0, 10) for e in (0, 1, 5, 10, 50)] == \
      [0.0, 0.1, 0.5, 1.0, 1.0]
  assert rt.smoothadv_warmup_epsilon(0, 0.5, 0) == 0.5  # No warm-up.
  assert rt.smoothadv_warmup_epsilon(3, 2.0, 4) == 1.5


def test_smoothadv_cycle_epsilon_follows_the_reference_attack():
  eps = [rt.smoothadv_cycle_epsilon(e, 1.0) for e in range(1, 42)]
  for start in (0, 20):  # Two cycles: epochs 1-20 and 21-40.
    cycle = eps[start:start + 20]
    assert cycle[0] == 0.0 and cycle[19] == 0.0   # epochs 1 and 20 (mod 20)
    np.testing.assert_allclose(cycle[1:4], [0.4, 0.6, 0.8])  # epochs 2-4
    assert all(e == 1.0 for e in cycle[4:19])
  assert rt.smoothadv_cycle_epsilon(3, 0.5, cycle=10) == pytest.approx(0.3)
