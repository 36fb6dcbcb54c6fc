"""Tests of rsp.models: parameter counts (docs/reference_implementation.md#architectures),
shapes, the registry's checks, the two BatchNorm behaviours
(docs/reference_implementation.md#q1-batchnorm-runs-in-inference-mode) and the pure apply
functions."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsp import models
from rsp.models import cifar
from rsp.models import mnist

# Compiling dominates these tests; XLA's optimisations buy nothing at these sizes.
jax.config.update('jax_disable_most_optimizations', True)

F32_EPS = float(np.finfo(np.float32).eps)  # 2^-23: relative spacing of float32 numbers.

# Trainable parameters. lenet and resnet20 are the reference's Keras models: LeNet
# 20*25+20 + 50*20*25+50 + 800*500+500 + 500*10+10 = 431,080; ResNet-20 v1 274,442 in
# Keras of which 1,376 are BatchNorm moving statistics (non-trainable).
PARAM_COUNTS = {
    'lenet': 431_080,
    'wide_cnn': 870_634,
    'mlp': 669_706,
    'resnet20': 273_066,
    'preact_resnet29': 843_786,
}
STATE_COUNTS = {'resnet20': 1_376, 'preact_resnet29': 5_216}


def _abstract_variables(name, num_classes=10, **kw):
  model = models.get_model(name, num_classes, **kw)
  shape = models.input_shape(name)
  return jax.eval_shape(lambda k: models.init_model(k, model, shape), jax.random.key(0))


def test_registry_lists_every_model():
  assert set(models.MODELS) == set(PARAM_COUNTS)
  assert models.input_shape('lenet') == (28, 28, 1)
  assert models.input_shape('resnet20') == (32, 32, 3)


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_param_counts(name):
  params, state = models.split_variables(_abstract_variables(name))
  assert models.count_params(params) == PARAM_COUNTS[name]
  if name in STATE_COUNTS:
    assert list(state) == ['batch_stats']
    assert models.count_params(state) == STATE_COUNTS[name]
  else:
    assert state == {}


def test_frozen_norm_has_no_state_and_same_params():
  frozen = _abstract_variables('resnet20', norm='frozen')
  assert list(frozen) == ['params']
  assert models.count_params(frozen['params']) == PARAM_COUNTS['resnet20']


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_output_shapes(name):
  model = models.get_model(name, 7)
  shape = models.input_shape(name)
  variables = _abstract_variables(name, 7)
  images = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
  logits = jax.eval_shape(models.make_apply_fn(model), variables, images)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  params, state = models.split_variables(variables)
  train_logits, new_state = jax.eval_shape(
      functools.partial(models.make_train_apply_fn(model), train=True), params, state,
      images)
  assert train_logits.shape == (3, 7)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_registry_errors():
  with pytest.raises(ValueError, match="model='vgg16' is not known; accepted: lenet"):
    models.get_model('vgg16', 10)
  with pytest.raises(ValueError, match="model='vgg16' is not known"):
    models.input_shape('vgg16')
  for bad in (1, 0, 2.5, '10'):
    with pytest.raises(ValueError, match='num_classes'):
      models.get_model('lenet', bad)
  with pytest.raises(ValueError, match="norm='layer' is not known; accepted: batch, frozen"):
    models.get_model('resnet20', 10, norm='layer')
  with pytest.raises(ValueError, match='image_shape'):
    models.init_model(jax.random.key(0), models.get_model('lenet', 10), (28, 28))
  with pytest.raises(ValueError, match='depth=21'):
    cifar.ResNetV1(10, depth=21).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_frozen_batchnorm_is_the_affine_map():
  """Against float64: x * (scale / sqrt(1 + 1e-3)) + bias rounds 4 times in float32
  (sqrt, divide, multiply, add), each by at most eps/2 of its magnitude; outputs near 0
  (bias -1 against x * scale near 1) are why the bound is absolute, not relative."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  bn = cifar.FrozenBatchNorm()
  variables = {'params': {'scale': jnp.arange(1.0, 5.0), 'bias': jnp.arange(4.0) - 1.0}}
  out = bn.apply(variables, x)
  x64, scale, bias = (np.asarray(a, np.float64) for a in (x, *variables['params'].values()))
  expected = x64 * scale / np.sqrt(1.0 + 1e-3) + bias
  bound = 4 * F32_EPS * (np.abs(x64 * scale) + np.abs(bias))
  assert np.all(np.abs(np.asarray(out, np.float64) - expected) <= bound)


LOGIT_TOL = dict(rtol=1e-4, atol=1e-4)


def test_batchnorm_modes_and_the_frozen_reference_behaviour():
  """Standard BN: batch statistics and updated running averages in training, running
  statistics in evaluation. The reference's BN
  (docs/reference_implementation.md#q1-batchnorm-runs-in-inference-mode) is standard BN
  evaluated with its initial statistics (mean 0, variance 1), in training too.

  ResNet-8 (n = 1) runs every code path of ResNet-20 (stem, stride-2 stages with
  projections, BatchNorm) at a third of the compile time.

  Logits of one network computed two ways (frozen BN against BN over its initial
  statistics, or through the two apply functions) agree to float32 rounding only: the 7
  normalisations round their scale (gamma / sqrt(1 + 1e-3)) differently, by a few eps
  each, and XLA may fuse the programs differently. Each such relative change moves a
  logit by at most its size times the ratio A of the network's sum of absolute
  contributions to the logit: about 7 * 3 eps * A. 3 eps of the logits (5e-6) was seen;
  ``LOGIT_TOL`` (1e-4 + 1e-4 |logit|, about 800 eps) fails only if A exceeded 40.
  """
  shape = (32, 32, 3)
  batch_model = cifar.ResNetV1(10, depth=8, norm='batch')
  frozen_model = cifar.ResNetV1(10, depth=8, norm='frozen')
  train_apply = models.make_train_apply_fn(batch_model)

  @jax.jit
  def run(key):
    variables = models.init_model(key, batch_model, shape)
    # Non-trivial scales and biases, so that the comparison sees them.
    params = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape),
        variables['params'])
    frozen = {k.replace('BatchNorm_', 'FrozenBatchNorm_'): v for k, v in params.items()}
    images = jax.random.uniform(jax.random.key(1), (2, *shape))
    stats = variables['batch_stats']
    state = {'batch_stats': stats}
    out_batch = models.make_apply_fn(batch_model)({'params': params, **state}, images)
    out_frozen = models.make_apply_fn(frozen_model)({'params': frozen}, images)
    out_frozen_train, _ = models.make_train_apply_fn(frozen_model)(frozen, {}, images,
                                                                   True)
    _, new_state = train_apply(params, state, images, True)
    out_eval, same_state = train_apply(params, state, images, False)
    return (frozen, stats, out_batch, out_frozen, out_frozen_train, new_state, out_eval,
            same_state)

  (frozen, stats, out_batch, out_frozen, out_frozen_train, new_state, out_eval,
   same_state) = run(jax.random.key(0))
  frozen_like = jax.eval_shape(
      lambda k: models.init_model(k, frozen_model, shape), jax.random.key(0))['params']
  assert jax.tree.structure(frozen) == jax.tree.structure(frozen_like)
  for s in stats.values():
    np.testing.assert_array_equal(s['mean'], 0.0)
    np.testing.assert_array_equal(s['var'], 1.0)
  np.testing.assert_allclose(out_frozen, out_batch, **LOGIT_TOL)
  np.testing.assert_allclose(out_frozen_train, out_frozen, **LOGIT_TOL)
  # Training mode moves every running statistic; evaluation mode moves none.
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_state['batch_stats'], stats)
  assert all(jax.tree.leaves(moved))
  jax.tree.map(np.testing.assert_array_equal, same_state['batch_stats'], stats)
  np.testing.assert_allclose(out_eval, out_batch, **LOGIT_TOL)


def test_max_pool_matches_flax():
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
  np.testing.assert_array_equal(mnist.max_pool_2x2(x),
                                nn.max_pool(x, (2, 2), strides=(2, 2)))
  g = jax.grad(lambda x: jnp.sum(mnist.max_pool_2x2(x) ** 2))(x)
  g_ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) ** 2))(x)
  np.testing.assert_allclose(g, g_ref, rtol=1e-6)


def test_apply_fns_are_cached_per_architecture():
  a = models.make_apply_fn(models.get_model('lenet', 10))
  b = models.make_apply_fn(models.get_model('lenet', 10))
  c = models.make_apply_fn(models.get_model('lenet', 5))
  assert a is b and a is not c
  assert models.make_train_apply_fn(models.get_model('resnet20', 10)) is \
      models.make_train_apply_fn(models.get_model('resnet20', 10))
  assert models.make_apply_fn(models.get_model('resnet20', 10, norm='frozen')) is not \
      models.make_apply_fn(models.get_model('resnet20', 10))
  # So a jitted function taking apply_fn as a static argument compiles once.
  traces = []

  def fn(apply_fn, variables, x):
    traces.append(1)
    return apply_fn(variables, x)

  jitted = jax.jit(fn, static_argnums=0)
  model = models.get_model('mlp', 10)
  variables = models.init_model(jax.random.key(0), model, (28, 28, 1))
  x = jnp.zeros((2, 28, 28, 1))
  for _ in range(2):
    jitted(models.make_apply_fn(models.get_model('mlp', 10)), variables, x)
  assert len(traces) == 1


def test_split_and_merge_roundtrip():
  variables = _abstract_variables('resnet20')
  params, state = models.split_variables(variables)
  assert 'params' not in state
  merged = models.merge_variables(params, state)
  assert jax.tree.structure(merged) == jax.tree.structure(dict(variables))
