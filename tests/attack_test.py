"""Tests of rsp.attack (PACD): objectives against closed forms, constraints, resume, NaN,
and the outer step against ground truth: descent, rsp.bilevel's hypergradients, Adam.

All tests are deterministic (fixed keys and seeds). Tolerances come from the float32
numerics; each docstring says what ground truth the test checks and why rounding cannot
(or, where the bound is a margin rather than a worst case, will not) fail it.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from rsp import attack
from rsp import bilevel
from rsp import data
from rsp import models
from rsp.configs import poison_cifar10
from rsp.configs import poison_mnist

jax.config.update('jax_disable_most_optimizations', True)

F32_EPS = float(np.finfo(np.float32).eps)  # 2^-23: relative spacing of float32 numbers.


@pytest.fixture(scope='module')
def splits():
  return data.load('mnist_embedded')


def _tiny(which='gaussian', **attack_overrides):
  c = poison_mnist.get_config(f'{which},tiny')
  for k, v in attack_overrides.items():
    c.attack[k] = v
  return c


def _small_splits(splits, num_other=48, num_target=6, num_val=4):
  train, val = splits['train'], splits['val']
  keep = np.concatenate([np.flatnonzero(train['label'] != 8)[:num_other],
                         np.flatnonzero(train['label'] == 8)[:num_target]])
  return {'train': data.subset(train, keep),
          'val': data.subset(val, np.flatnonzero(val['label'] == 8)[:num_val])}


def test_project_linf_is_a_projection():
  """Deterministic. In float32, ``clean + delta`` and ``out - clean`` each round by at most
  half a unit in the last place of a number below 1 (2^-25) and float32(0.1) exceeds 0.1
  by 1.5e-9, so the budget, idempotence and identity inside the ball hold to eps / 2."""
  key = jax.random.key(0)
  clean = jax.random.uniform(key, (5, 4, 4, 1))
  poisons = clean + 0.5 * jax.random.normal(jax.random.key(1), clean.shape)
  out = attack.project_linf(poisons, clean, 0.1)
  assert float(jnp.max(jnp.abs(out - clean))) <= 0.1 + F32_EPS / 2
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  np.testing.assert_allclose(attack.project_linf(out, clean, 0.1), out, rtol=0,
                             atol=F32_EPS / 2)  # idempotent
  inside = jnp.clip(clean + 0.05, 0, 1)
  np.testing.assert_allclose(attack.project_linf(inside, clean, 0.1), inside, rtol=0,
                             atol=F32_EPS / 2)


def test_outer_objective_matches_closed_form():
  """With a classifier whose logits ignore the noise, p = softmax(beta z) exactly, so F is
  sigma/2 * mean(1[correct] (Phi^-1((1-2a)p1+a) - Phi^-1((1-2a)p2+a))) (scipy).

  Deterministic. Tolerance: float32 computes each squashed probability q with a relative
  error of at most (K + 13) eps (beta z, softmax's shift, exp, sum and divide, the mean over
  the noise copies, the squash), which Phi^-1 multiplies by 1 / phi(Phi^-1(q)) (297 at
  q = 0.999: the steep ends dominate); ndtri itself is allowed 8 eps of its value.
  A worst-case bound (8e-5 relative; 6e-7 was seen): rounding cannot fail the test."""
  logits = np.array([[3.0, 1.0, 0.0], [0.1, 0.3, 0.2], [2.0, 0.0, 1.9], [0.0, 0.0, 5.0]],
                    np.float32)
  labels = np.array([0, 1, 2, 2])
  images = jnp.arange(4, dtype=jnp.float32).reshape(4, 1, 1, 1)

  def apply_fn(params, state, x, train):
    del params, train
    idx = jnp.round(x[:, 0, 0, 0] * 0.0 + jnp.repeat(jnp.arange(4), 3)).astype(int)
    return jnp.asarray(logits)[idx], state

  sigma, beta, alpha = 0.5, 4.0, 1e-3
  f = attack.outer_objective(None, {}, images, jnp.asarray(labels), jax.random.key(0),
                             apply_fn=apply_fn, sigma=sigma, num_noise=3, beta=beta,
                             alpha=alpha)
  p = np.exp(beta * logits) / np.exp(beta * logits).sum(1, keepdims=True)
  top = np.sort(p, 1)[:, ::-1]
  gap = stats.norm.ppf((1 - 2 * alpha) * top[:, 0] + alpha) - \
      stats.norm.ppf((1 - 2 * alpha) * top[:, 1] + alpha)
  correct = p.argmax(1) == labels
  expected = np.sum(np.where(correct, sigma / 2 * gap, 0.0)) / 4
  assert correct.tolist() == [True, True, False, True]
  squashed = (1 - 2 * alpha) * top[:, :2] + alpha
  quantile = stats.norm.ppf(squashed)
  num_classes = logits.shape[1]
  ppf_error = ((num_classes + 13) * F32_EPS * squashed / stats.norm.pdf(quantile)
               + 8 * F32_EPS * np.abs(quantile))
  bound = np.sum(np.where(correct, sigma / 2 * ppf_error.sum(1), 0.0)) / 4
  assert abs(float(f) - expected) <= bound


def test_smoothadv_cycle_epsilon_follows_the_reference():
  eps = [attack.smoothadv_cycle_epsilon(e, 1.0) for e in range(1, 22)]
  assert eps[0] == 0.0 and eps[19] == 0.0 and eps[20] == 0.0  # epochs 1, 20, 21
  np.testing.assert_allclose(eps[1:4], [0.4, 0.6, 0.8])         # epochs 2-4
  assert all(e == 1.0 for e in eps[4:19])


@pytest.mark.parametrize('bad,match', [
    (dict(target_class=10), 'target_class'),
    (dict(eps=0.0), 'eps'),
    (dict(dataset='svhn'), 'dataset'),
    (dict(model='vgg'), 'model'),
])
def test_validate_config_rejects_bad_top_level(bad, match):
  c = _tiny()
  for k, v in bad.items():
    c[k] = v
  with pytest.raises(ValueError, match=match):
    attack.validate_config(c)


@pytest.mark.parametrize('bad,match', [
    (dict(method='trades'), 'method'), (dict(mode='forward'), 'mode'),
    (dict(solver='lu'), 'solver'), (dict(sigma=-1.0), 'sigma'),
    (dict(poison_learning_rate=0.0), 'poison_learning_rate'),
    (dict(inner_steps=0), 'inner_steps'),
    (dict(poison_optimizer='rmsprop'), 'poison_optimizer'),
    (dict(num_surrogates=0), 'num_surrogates'),
    (dict(inner_method='trades'), 'inner_method'),
    (dict(pretrain_epochs=-1), 'pretrain_epochs'),
])
def test_validate_config_rejects_bad_attack_fields(bad, match, tmp_path):
  c = _tiny(**bad)
  with pytest.raises(ValueError, match=match):
    attack.run_attack(c, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')  # raised before any file was written


def _check_poison_file(path, splits, eps):
  loaded = data.load_poisons(path, train=splits['train'])  # validates everything
  p, clean = loaded['poisons'], loaded['clean_images']
  assert np.all(np.isfinite(p))
  assert np.abs(p - clean).max() <= eps + 1e-6
  assert p.min() >= 0 and p.max() <= 1
  assert np.all(loaded['labels'] == 8)
  np.testing.assert_array_equal(np.sort(loaded['indices']),
                                np.flatnonzero(splits['train']['label'] == 8))
  return loaded


@pytest.mark.parametrize('method,mode,pretrain_epochs', [
    ('gaussian', 'implicit', 0), ('gaussian', 'unrolled', 0), ('macer', 'implicit', 0),
    ('smoothadv', 'implicit', 0), ('macer', 'implicit', 1), ('smoothadv', 'implicit', 1)])
def test_pacd_tiny_run_keeps_the_threat_model(method, mode, pretrain_epochs, splits,
                                              tmp_path):
  """Every method's attack (MACER's and SmoothAdv's pre-training steps included) keeps
  the poisons in the eps ball and [0, 1], labels and indices unchanged, and moves them."""
  c = _tiny(method, mode=mode, pretrain_epochs=pretrain_epochs)
  result = attack.pacd(c, splits, str(tmp_path))
  loaded = _check_poison_file(result.path, splits, c.eps)
  assert loaded['metadata']['method'] == method
  moved = np.abs(loaded['poisons'] - loaded['clean_images']).reshape(len(result.indices), -1)
  assert np.sum(moved.max(1) > 0) >= c.attack.poison_batch_size  # some poisons changed
  lines = open(tmp_path / 'attack_metrics.jsonl').read().strip().splitlines()
  assert len(lines) == c.attack.num_epochs * c.attack.steps_per_epoch
  for key in ('outer_objective', 'inner_loss', 'hypergrad_norm', 'perturbation_linf',
              'perturbation_l2'):
    assert key in lines[-1]


def test_a_gaussian_surrogate_against_macer_is_the_gaussian_attack(splits, tmp_path):
  """Ground truth: an attack on MACER victims whose surrogate trains with Gaussian
  augmentation (``inner_method='gaussian'``, the Gaussian attack's constants) takes the
  Gaussian attack's steps: the same poisons.

  Deterministic: the same operations on the same inputs, up to XLA compiling the two
  (equal) programs separately: 1e-6 is 10 float32 roundings of a pixel, while a MACER
  inner loss (what ``method='macer'`` alone would train with) moves poisons by a sizeable
  part of the learning rate. The small MACER and SmoothAdv attacks are the small
  Gaussian one run for twice the steps."""
  gaussian = _tiny('gaussian')
  macer = _tiny('macer', inner_method='gaussian')
  for field in ('sigma', 'alpha', 'solver_learning_rate', 'inner'):
    macer.attack[field] = gaussian.attack[field]
  one = attack.pacd(gaussian, splits, str(tmp_path / 'gaussian'))
  two = attack.pacd(macer, splits, str(tmp_path / 'macer'))
  assert two.metadata['method'] == 'macer' and two.metadata['inner_method'] == 'gaussian'
  assert np.abs(one.poisons - one.clean_images).max() > 0.01
  np.testing.assert_allclose(two.poisons, one.poisons, rtol=0, atol=1e-6)
  small = {m: poison_mnist.get_config(f'{m},small').attack.to_dict()
           for m in ('gaussian', 'macer', 'smoothadv')}
  for m in small:
    assert small[m].pop('method') == m
    assert small[m].pop('inner_method') == ('' if m == 'gaussian' else 'gaussian')
    assert small[m].pop('num_epochs') == (10 if m == 'gaussian' else 20)
  # The Gaussian attack, run twice as long, against MACER and SmoothAdv.
  assert small['macer'] == small['gaussian'] == small['smoothadv']
  assert poison_mnist.get_config('macer,small_matched').attack.inner.lbd == 16.0
  assert poison_mnist.get_config('smoothadv,small_matched').attack.inner_steps == 5


@pytest.mark.parametrize('num_surrogates,pretrain_epochs', [(1, 0), (2, 0), (1, 1), (2, 1)])
def test_pacd_resumes_to_the_same_poisons(num_surrogates, pretrain_epochs, splits,
                                          tmp_path):
  """A run stopped after epoch 1 and restarted ends with the uninterrupted run's poisons
  (an ensemble's stacked surrogates, restarted at epoch 2, included; with pre-training,
  the restarted surrogate trains on the poisons restored from the checkpoint).
  Deterministic: the same program on the same inputs."""
  settings = dict(num_surrogates=num_surrogates, pretrain_epochs=pretrain_epochs)
  full = attack.pacd(_tiny(**settings), splits, str(tmp_path / 'full'))
  part = _tiny(**settings)
  part.attack.num_epochs = 1
  attack.pacd(part, splits, str(tmp_path / 'resumed'))
  resumed = attack.pacd(_tiny(**settings), splits, str(tmp_path / 'resumed'))
  assert resumed.metadata['pretrain_epochs'] == pretrain_epochs
  np.testing.assert_array_equal(full.poisons, resumed.poisons)
  steps = [l for l in open(tmp_path / 'resumed' / 'attack_metrics.jsonl')]
  assert len(steps) == len(set(steps)) == 4


def test_pacd_never_writes_nan(splits, tmp_path, monkeypatch):
  """A NaN objective at every step: each update is skipped and the poisons stay clean."""
  real = attack.outer_objective
  monkeypatch.setattr(attack, 'outer_objective',
                      lambda *a, **k: real(*a, **k) * jnp.nan)
  result = attack.pacd(_tiny(), splits, str(tmp_path))
  loaded = _check_poison_file(result.path, splits, 0.1)
  np.testing.assert_array_equal(loaded['poisons'], loaded['clean_images'])
  assert loaded['metadata']['nonfinite_steps'] == 4


@pytest.mark.parametrize('module', [poison_mnist, poison_cifar10])
@pytest.mark.parametrize('which', ['gaussian', 'macer', 'smoothadv'])
@pytest.mark.parametrize('mode', ['', ',small', ',tiny'])
def test_all_paper_settings_are_valid(module, which, mode):
  c = module.get_config(which + mode)
  attack.validate_config(c)
  assert c.attack.method == which and c.target_class == 8
  assert c.eps == (0.1 if module is poison_mnist else 0.03)


def test_cifar10_paper_config_runs_on_mock_data(tmp_path):
  """The CIFAR-10 GA setting (ResNet-20, crop+flip) for one tiny step on mock data."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  c = poison_cifar10.get_config('gaussian,tiny')
  with tfds.testing.mock_data(num_examples=60):
    splits = data.load('cifar10')
  splits['train']['label'][:6] = 8  # make sure the mock data has target points
  splits['val']['label'][:3] = 8
  result = attack.pacd(c, splits, str(tmp_path))
  loaded = data.load_poisons(result.path, train=splits['train'])
  assert np.abs(loaded['poisons'] - loaded['clean_images']).max() <= 0.03 + 1e-6


# ------------------------------------------------------------------------------------
# The outer step against ground truth: descent, rsp.bilevel's hypergradients, Adam.

_STEPS = {}


def _surrogate(config):
  model = models.get_model(config.model, 10, **dict(config.model_kwargs))
  return model, models.make_train_apply_fn(model)


def _step(mode, lr_u):
  """``(config, (step, inner_tx))``: the tiny config's outer step returning its
  hypergradient, compiled once per ``(mode, lr_u)`` in this module."""
  if (mode, lr_u) not in _STEPS:
    config = _tiny(mode=mode, poison_learning_rate=lr_u)
    _STEPS[mode, lr_u] = config, attack.make_outer_step(
        config, _surrogate(config)[1], return_hypergrad=True)
  return _STEPS[mode, lr_u]


@pytest.fixture(scope='module')
def step_batch(splits):
  """A fresh tiny surrogate (MLP 784-32-10) and one outer step's batch: 16 clean
  non-target points, 4 target-class training images (the poisons, still clean) and 4
  target-class validation points."""
  model, _ = _surrogate(_tiny())
  params, state = models.split_variables(models.init_model(jax.random.key(0), model,
                                                           (28, 28, 1)))
  clean = data.remove_class(splits['train'], 8)
  target = data.select_class(splits['train'], 8)
  val = data.select_class(splits['val'], 8)
  return dict(params=params, state=state, clean_x=clean['image'][:16],
              clean_y=clean['label'][:16], poisons=target['image'][:4],
              val_x=val['image'][:4], val_y=val['label'][:4])


def _run_step(mode, lr_u, b, poisons, key):
  """One outer step from the fresh surrogate (started as ``attack.pacd`` starts it)."""
  config, (step, inner_tx) = _step(mode, lr_u)
  params = b['params']
  carry = (params, b['state'], inner_tx.init(params), jax.tree.map(jnp.zeros_like, params),
           optax.adam(config.attack.solver_learning_rate).init(params))
  moments = (np.zeros_like(poisons), np.zeros_like(poisons),
             np.zeros(len(poisons), np.int32))
  return step(carry, b['clean_x'], b['clean_y'], poisons, b['poisons'], moments,
              b['val_x'], b['val_y'], jnp.float32(0.0), key)


def _rel_err(a, b):
  a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_one_unrolled_step_lowers_the_outer_objective(step_batch):
  """Ground truth: in 'unrolled' mode the hypergradient g is the exact gradient of
  F(u) = outer(w_T(u)) with every key fixed, so a small step lowers F, by about
  <g, u_1 - u_0> (first order). F before and after is reported by the same step with the
  same key and surrogate, so the comparison is deterministic.

  lr_u = 1e-4 (Adam's first step is about lr_u sign(g) per pixel) lowers F by 5e-4 of
  its 0.15, far above F's float32 rounding (about 1e-7); the second-order term is 17% of
  the first. Rounding cannot fail the test.
  """
  b = step_batch
  key = jax.random.key(3)
  _, moved, _, before = _run_step('unrolled', 1e-4, b, b['poisons'], key)
  _, _, _, after = _run_step('unrolled', 1e-4, b, moved, key)
  f0, f1 = float(before['outer_objective']), float(after['outer_objective'])
  predicted = float(jnp.vdot(before['hypergrad'], moved - b['poisons']))
  assert f0 > 0 and predicted < 0  # Not vacuous: some 8s are classified and u moves.
  assert f1 < f0
  assert 0.5 < (f1 - f0) / predicted < 1.5


def _reference_hypergrad(config, apply_fn, inner_tx, b, key, member=None):
  """The hypergradient by ``rsp.bilevel`` called directly, on the batch and the keys of
  one outer step (which splits its key into aug, adv, inner, hyper, outer, val streams)
  from the fresh surrogate, with the step's inner optimiser ``inner_tx``; the solver's
  loops rolled (the step unrolls them). ``member=j``: surrogate j of an ensemble, whose
  streams are ``fold_in(stream, j)``."""
  a = config.attack
  loss = attack.inner_loss_fn(a.method, a.inner)
  _, _, k_inner, _, k_outer, _ = jax.random.split(key, 6)
  if member is not None:
    k_inner, k_outer = (jax.random.fold_in(k, member) for k in (k_inner, k_outer))

  def inner_fn(w, u, state, step=0):
    batch = attack.inner_batch(b['clean_x'], b['clean_y'], u, config.target_class)
    value, (new_state, _) = loss(w, state, batch, jax.random.fold_in(k_inner, step),
                                 apply_fn=apply_fn)
    return value, new_state

  def outer_fn(w, u, state):
    del u
    return attack.outer_objective(w, state, b['val_x'], b['val_y'], k_outer,
                                  apply_fn=apply_fn, sigma=a.sigma,
                                  num_noise=a.outer_num_noise, beta=a.beta, alpha=a.alpha)

  params, state, u = b['params'], b['state'], jnp.asarray(b['poisons'])
  opt_state = inner_tx.init(params)
  if a.mode == 'unrolled':
    return bilevel.unrolled_hypergrad(outer_fn, inner_fn, params, u,
                                      num_steps=a.inner_steps, optimizer=inner_tx,
                                      opt_state=opt_state, has_aux=True, state=state,
                                      pass_step=True)
  for i in range(a.inner_steps):  # Inner Adam steps, then the implicit function theorem.
    grads, new_state = jax.grad(inner_fn, has_aux=True)(params, u, state, i)
    updates, opt_state = inner_tx.update(grads, opt_state, params)
    params, state = optax.apply_updates(params, updates), new_state
  return bilevel.implicit_hypergrad(
      outer_fn, lambda w, v, st: inner_fn(w, v, st, a.inner_steps), params, u,
      method=a.solver, damping=a.damping, maxiter=a.solver_steps, learning_rate=a.solver_learning_rate,
      init=jax.tree.map(jnp.zeros_like, params),
      solver_state=optax.adam(a.solver_learning_rate).init(params), has_aux=True, state=state)


@pytest.mark.parametrize('mode', ['implicit', 'unrolled'])
def test_step_hypergradient_is_rsp_bilevel_on_the_same_batch(mode, step_batch):
  """Ground truth: ``rsp.bilevel.implicit_hypergrad`` (the paper's mode: inner Adam
  steps, then ApproxGrad) or ``unrolled_hypergrad``, called directly on the step's batch,
  keys and surrogate; rsp.bilevel itself is checked against closed forms and finite
  differences in tests/bilevel_test.py.

  Deterministic. Both sides run the same operations as two XLA programs, so they agree
  to float32 rounding, which Adam's division by a gradient's size can amplify where that
  gradient is within rounding of 0: relative errors of 0 to 1e-7 were seen. 1e-4 (800
  eps) leaves a thousand times that, while a wiring error (another key, batch, step
  index, warm start) is of order 1: the reference with another key is off by over 0.1.
  """
  lr_u = 1e-3 if mode == 'implicit' else 1e-4  # Shares the other tests' compiled steps.
  config, (_, inner_tx) = _step(mode, lr_u)
  _, _, _, metrics = _run_step(mode, lr_u, step_batch, step_batch['poisons'],
                               jax.random.key(3))
  reference = jax.jit(functools.partial(_reference_hypergrad, config,
                                        _surrogate(config)[1], inner_tx, step_batch))
  assert float(jnp.max(jnp.abs(metrics['hypergrad']))) > 0
  assert _rel_err(metrics['hypergrad'], reference(jax.random.key(3))) < 1e-4
  assert _rel_err(metrics['hypergrad'], reference(jax.random.key(4))) > 0.1


def test_surrogate_restarts_stagger_the_ensemble():
  """Closed form: one surrogate restarts every period epochs from epoch 1 + period (the
  schedule of the reference); surrogate j of K first at epoch 1 + floor(j period / K),
  then every period epochs; nothing restarts at epoch 1, where all start fresh."""
  def schedule(period, k, epochs=12):
    return {j: [e for e in range(1, epochs + 1)
                if j in attack.surrogate_restarts(e, period, k)] for j in range(k)}
  assert schedule(5, 1) == {0: [6, 11]}
  assert schedule(5, 2) == {0: [6, 11], 1: [3, 8]}
  assert schedule(10, 2) == {0: [11], 1: [6]}
  assert schedule(6, 3) == {0: [7], 1: [3, 9], 2: [5, 11]}
  assert schedule(1, 2) == {0: list(range(2, 13)), 1: list(range(2, 13))}


def test_ensemble_step_follows_the_mean_hypergradient(step_batch):
  """Ground truth: with ``num_surrogates = 2`` the step's hypergradient is the mean of
  the two surrogates' own hypergradients by ``rsp.bilevel`` (each from its own
  initialisation and noise streams, on the same batch), and each surrogate's weights
  move and stay apart from the other's (the stacked carry is not shared).

  Deterministic. The same float32 operations as the single-surrogate test on each side
  (relative errors of 0 to 1e-7 there), averaged: 1e-4 leaves a thousand times that,
  while a wiring error (one surrogate's streams for both, a sum, a swapped member) is of
  order 1: the mean with the members' keys swapped is off by over 0.1.
  """
  config = _tiny(mode='implicit', poison_learning_rate=1e-3, num_surrogates=2)
  model, apply_fn = _surrogate(config)
  step, inner_tx = attack.make_outer_step(config, apply_fn, return_hypergrad=True)
  members = [models.split_variables(models.init_model(jax.random.key(j), model,
                                                      (28, 28, 1))) for j in (0, 7)]

  def carry_of(params, state):
    return (params, state, inner_tx.init(params), jax.tree.map(jnp.zeros_like, params),
            optax.adam(config.attack.solver_learning_rate).init(params))

  carry = jax.tree.map(lambda *xs: jnp.stack(xs), *[carry_of(*m) for m in members])
  b = step_batch
  poisons = b['poisons']
  moments = (np.zeros_like(poisons), np.zeros_like(poisons),
             np.zeros(len(poisons), np.int32))
  key = jax.random.key(3)
  new_carry, _, _, metrics = step(carry, b['clean_x'], b['clean_y'], poisons, poisons,
                                  moments, b['val_x'], b['val_y'], jnp.float32(0.0), key)
  reference = []
  for j, (params, state) in enumerate(members):
    batch = dict(b, params=params, state=state)
    reference.append(jax.jit(functools.partial(
        _reference_hypergrad, config, apply_fn, inner_tx, batch, member=j))(key))
  mean = (reference[0] + reference[1]) / 2
  assert float(jnp.max(jnp.abs(metrics['hypergrad']))) > 0
  assert _rel_err(metrics['hypergrad'], mean) < 1e-4
  swapped = []
  for j, (params, state) in enumerate(members):
    batch = dict(b, params=params, state=state)
    swapped.append(_reference_hypergrad(config, apply_fn, inner_tx, batch, key,
                                        member=1 - j))
  assert _rel_err(metrics['hypergrad'], (swapped[0] + swapped[1]) / 2) > 0.1
  # Each member's weights moved by its own inner steps: they changed and stay apart.
  def kernel(params):  # The largest weight matrix.
    return max(jax.tree.leaves(params), key=lambda x: x.size)
  after = [kernel(jax.tree.map(lambda x: x[j], new_carry[0])) for j in (0, 1)]
  for j, (params, _) in enumerate(members):
    assert float(jnp.max(jnp.abs(after[j] - kernel(params)))) > 0
  assert _rel_err(after[0], after[1]) > 0.1


B1, B2, ADAM_EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults, the attack's constants.


def _adam_rounding(m_abs, v, t, lr):
  """A bound on the float32 rounding of Adam's t-th update, elementwise (first order).

  ``m_abs`` is the first moment of |g| and ``v`` the second (float64). Relative to
  lr (m_abs / c1) / (sqrt(v / c2) + eps_adam), c = 1 - beta^t: the moments round 2 t
  times (a product and a sum per step), sqrt halves the second's t; beta^t rounds by up
  to 2 eps, which 1 - beta^t magnifies by beta^t / c (999 for beta2 at t = 1: the bias
  corrections dominate); the divisions, sqrt, the sum with eps_adam and the product with
  lr add about 3 eps.
  """
  c1, c2 = 1 - B1 ** t, 1 - B2 ** t
  ratio = (m_abs / c1) / (np.sqrt(v / c2) + ADAM_EPS)
  ops = 3 * t + 3 + 2 * B1 ** t / c1 + B2 ** t / c2
  return lr * F32_EPS * ops * ratio


def test_per_poison_adam_is_optax_adam_on_each_poison_alone(splits, tmp_path,
                                                           monkeypatch):
  """Ground truth: ``optax.adam(lr_u)`` run on each poison alone, fed the hypergradients
  that poison received, then projected. ``attack.pacd`` draws 4 of 6 poisons per step
  for 9 steps (every poison skips some steps and takes several), and re-initialises every
  moment before step 6 (every 2 epochs of 3 steps); each poison's trajectory, step by
  step, and the poison file must follow its own optax Adam.

  Deterministic. Both sides are float32: each differs from exact Adam by at most the
  accumulated :func:`_adam_rounding` of its updates plus eps per update for the poison's
  sum and projection (three roundings of numbers below 1), so they differ by at most
  twice that, a worst case that rounding cannot exceed: about 2e-7 per update, while
  moments shared between poisons or a wrong count change an update by a sizeable part
  of lr_u = 1e-3.
  """
  lr_u, eps = 1e-3, 0.1
  step, inner_tx = _step('implicit', lr_u)[1]
  config = _tiny(mode='implicit', poison_learning_rate=lr_u)  # The step's setting; a shorter loop.
  config.attack.num_epochs, config.attack.steps_per_epoch = 3, 3
  config.attack.reinit_every_epochs = 2
  small = _small_splits(splits)
  calls = []

  def recording_step(carry, clean_x, clean_y, poisons, clean_of_poisons, *rest):
    carry, new_poisons, moments, metrics = step(carry, clean_x, clean_y, poisons,
                                                clean_of_poisons, *rest)
    metrics = dict(metrics)
    calls.append([np.asarray(x) for x in (clean_of_poisons, poisons,
                                          metrics.pop('hypergrad'), new_poisons)])
    assert bool(metrics['finite'])
    return carry, new_poisons, moments, metrics

  monkeypatch.setattr(attack, '_cached_outer_step', lambda *_: (recording_step, inner_tx))
  result = attack.pacd(config, small, str(tmp_path))
  assert len(calls) == 9

  clean = result.clean_images
  row_of = {x.tobytes(): j for j, x in enumerate(clean)}
  tx = optax.adam(lr_u)
  latest = clean.copy()     # Each poison as the attack last returned it.
  reference = clean.copy()  # Each poison under its own optax Adam.
  error = np.zeros(clean.shape)  # A bound on either side's rounding.
  times = np.zeros(len(clean), int)
  for k, (clean_rows, poisons_in, grads, poisons_out) in enumerate(calls):
    if k % 6 == 0:  # Every moment re-initialised: a fresh optimiser for every poison.
      states = [tx.init(jnp.asarray(x)) for x in clean]
      m_abs, v = np.zeros(clean.shape), np.zeros(clean.shape)
      counts = np.zeros(len(clean), int)
    for r, j in enumerate(row_of[x.tobytes()] for x in clean_rows):
      np.testing.assert_array_equal(poisons_in[r], latest[j])  # A copy, no arithmetic.
      updates, states[j] = tx.update(jnp.asarray(grads[r]), states[j])
      moved = reference[j] + np.asarray(updates)
      reference[j] = np.clip(clean[j] + np.clip(moved - clean[j], -eps, eps), 0, 1)
      g = grads[r].astype(np.float64)
      m_abs[j] = B1 * m_abs[j] + (1 - B1) * np.abs(g)
      v[j] = B2 * v[j] + (1 - B2) * g ** 2
      counts[j] += 1
      times[j] += 1
      error[j] += _adam_rounding(m_abs[j], v[j], counts[j], lr_u) + F32_EPS
      assert np.all(np.abs(poisons_out[r] - reference[j]) <= 2 * error[j])
      latest[j] = poisons_out[r]
  np.testing.assert_array_equal(result.poisons, latest)  # Saved and loaded exactly.
  assert np.all(times >= 2) and np.all(times < 9)
  # Not vacuous: every poison took real steps, far above the rounding allowed.
  assert np.all(np.abs(result.poisons - clean).max(axis=(1, 2, 3)) > 0.5 * lr_u)
  assert 2 * error.max() < 0.01 * lr_u


@pytest.mark.parametrize('solver', ['approxgrad', 'identity'])
def test_outer_step_compiles_once_per_setting(solver, splits, tmp_path):
  """Attacks with one setting (here another seed and length) share one compiled step,
  counted by the jitted step's own cache (a carry whose structure changed after the
  first step, as a solver without state once made it, would compile twice); another
  setting gets its own step."""
  # pylint: disable=protected-access
  config = _tiny(solver=solver)
  model, apply_fn = _surrogate(config)
  step, _ = attack._cached_outer_step(config, model, apply_fn)
  attack.pacd(config, splits, str(tmp_path / 'first'))
  other = _tiny(solver=solver)
  other.seed, other.attack.num_epochs = 1, 1
  attack.pacd(other, splits, str(tmp_path / 'second'))
  assert attack._cached_outer_step(other, model, apply_fn)[0] is step
  assert step._cache_size() == 1
  assert attack._cached_outer_step(_tiny(solver=solver, poison_learning_rate=0.05), model,
                                   apply_fn)[0] is not step



def test_pretraining_sees_the_training_set_as_it_is_and_hands_on_its_surrogate(
    splits, tmp_path, monkeypatch):
  """Planted bookkeeping, checked exactly: with ``pretrain_epochs=2`` every fresh
  surrogate (at step 0 and at the restart of epoch 2) first takes 2 epochs of
  ``floor(54 / 20) = 2`` steps; each epoch's batches are distinct rows of the training
  set as it is at that moment (the 48 clean points with their labels and the 6 poisons
  labelled 8: clean images at step 0, the poisons after epoch 1 at the restart); and the
  next outer step starts from the surrogate the last pre-training step returned (the
  same arrays). Deterministic: no tolerance."""
  # pylint: disable=protected-access
  config = _tiny(pretrain_epochs=2)
  config.attack.num_epochs, config.attack.steps_per_epoch = 2, 2  # restart at epoch 2
  small = _small_splits(splits)
  model, apply_fn = _surrogate(config)
  real_outer, inner_tx = attack._cached_outer_step(config, model, apply_fn)
  real_pretrain = attack.make_pretrain_step(config, apply_fn, inner_tx)
  events = []

  def pretrain_step(params, state, opt_state, images, labels, *rest):
    out = real_pretrain(params, state, opt_state, images, labels, *rest)
    events.append(('pretrain', np.asarray(images), np.asarray(labels), out[0]))
    return out

  def outer_step(carry, clean_x, clean_y, poisons, clean_of_poisons, *rest):
    out = real_outer(carry, clean_x, clean_y, poisons, clean_of_poisons, *rest)
    events.append(('outer', carry[0], np.asarray(clean_of_poisons), np.asarray(out[1])))
    return out

  monkeypatch.setattr(attack, '_cached_pretrain_step', lambda *_: pretrain_step)
  monkeypatch.setattr(attack, '_cached_outer_step', lambda *_: (outer_step, inner_tx))
  result = attack.pacd(config, small, str(tmp_path))
  kinds = [e[0] for e in events]
  assert kinds == ['pretrain'] * 4 + ['outer'] * 2 + ['pretrain'] * 4 + ['outer'] * 2
  assert result.metadata['pretrain_epochs'] == 2

  train = small['train']
  is_target = train['label'] == 8
  clean_rows = {x.tobytes(): int(y) for x, y in zip(train['image'][~is_target],
                                                     train['label'][~is_target])}
  # The poisons at the restart: the last value an outer step of epoch 1 returned for
  # each poison (found by its clean image), the clean image where none moved it.
  row_of = {x.tobytes(): j for j, x in enumerate(result.clean_images)}
  moved = result.clean_images.copy()
  for _, _, clean_in, poisons_out in events[4:6]:
    for x, p_out in zip(clean_in, poisons_out):
      moved[row_of[x.tobytes()]] = p_out
  assert np.abs(moved - result.clean_images).max() > 0  # the restart sees moved poisons
  poisons_then = (result.clean_images, moved)
  for life, start in enumerate((0, 6)):
    allowed = dict(clean_rows)
    allowed.update({x.tobytes(): 8 for x in poisons_then[life]})
    for epoch in range(2):
      seen = []
      for _, images, labels, _ in events[start + 2 * epoch:start + 2 * epoch + 2]:
        assert len(labels) == 20
        for x, y in zip(images, labels):
          assert allowed[x.tobytes()] == int(y)  # a row of the set, with its label
          seen.append(x.tobytes())
      assert len(set(seen)) == len(seen) == 40  # no row twice within an epoch
    handed = events[start + 3][3]
    first_outer = events[start + 4][1]
    for a, b in zip(jax.tree.leaves(handed), jax.tree.leaves(first_outer)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_pretrained_surrogate_fits_the_training_set(splits, tmp_path, monkeypatch):
  """Planted structure: the tiny MLP surrogate pre-trained 2 epochs (350 Adam steps at
  lr 1e-2 on the 3,500 embedded images under sigma 0.5 noise) classifies the clean
  training set far better than the untrained one the attack starts from without
  pre-training (chance: about 10%). The margin (above 80% against below 30%) is wide:
  such an MLP reaches about 95% in one epoch, so a failure means the surrogate did not
  train, not bad luck."""
  # pylint: disable=protected-access
  accuracy = {}
  for epochs in (0, 2):
    config = _tiny(pretrain_epochs=epochs)
    config.attack.num_epochs = 1
    model, apply_fn = _surrogate(config)
    real_outer, inner_tx = attack._cached_outer_step(config, model, apply_fn)
    first = []

    def outer_step(carry, *rest, real_outer=real_outer, first=first):
      if not first:
        first.append(carry)
      return real_outer(carry, *rest)

    monkeypatch.setattr(attack, '_cached_outer_step',
                        lambda *_, s=outer_step, tx=inner_tx: (s, tx))
    attack.pacd(config, splits, str(tmp_path / str(epochs)))
    params, state = first[0][0], first[0][1]
    logits, _ = apply_fn(params, state, jnp.asarray(splits['train']['image'][:1000]),
                         train=False)
    accuracy[epochs] = float(np.mean(np.argmax(logits, -1) ==
                                     splits['train']['label'][:1000]))
  assert accuracy[0] < 0.3 < 0.8 < accuracy[2], accuracy
