"""Tests of rsp.attack (PACD): objectives against closed forms, constraints, resume, NaN.

All tests are deterministic (fixed keys and seeds): none can fail spuriously. Tolerances
come from the float32 numerics (eps = 2^-23 per operation, times what it is applied to).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rsp import attack
from rsp import data
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
    (dict(lr_u=0.0), 'lr_u'), (dict(inner_steps=0), 'inner_steps'),
    (dict(poison_optimizer='rmsprop'), 'poison_optimizer'),
])
def test_validate_config_rejects_bad_attack_fields(bad, match, tmp_path):
  c = _tiny(**bad)
  with pytest.raises(ValueError, match=match):
    attack.run_attack(c, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')  # raised before any file was written


def test_random_poisons_respect_budget(splits):
  idx, p = attack.random_poisons(jax.random.key(0), splits['train'], target_class=8,
                                 eps=0.1)
  clean = splits['train']['image'][idx]
  assert np.all(splits['train']['label'][idx] == 8)
  assert np.abs(p - clean).max() <= 0.1 + 1e-6 and p.min() >= 0 and p.max() <= 1
  _, u = attack.random_poisons(jax.random.key(0), splits['train'], target_class=8,
                               eps=0.1, kind='uniform')
  interior = (clean >= 0.1) & (clean <= 0.9)  # where clipping cannot act
  # 350*784 draws of U[-0.1, 0.1]: interior mean within 0.005 has probability > 1 - 1e-9.
  assert abs(float((u - clean)[interior].mean())) < 0.005
  assert float((u - clean)[clean == 0].min()) >= 0  # clipped: one-sided on black pixels


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


@pytest.mark.parametrize('method,mode', [('gaussian', 'implicit'), ('gaussian', 'unrolled'),
                                         ('macer', 'implicit'), ('smoothadv', 'implicit')])
def test_pacd_tiny_run_keeps_the_threat_model(method, mode, splits, tmp_path):
  c = _tiny(method, mode=mode)
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


def test_pacd_resumes_to_the_same_poisons(splits, tmp_path):
  """A run stopped after epoch 1 and restarted ends with the uninterrupted run's poisons."""
  full = attack.pacd(_tiny(), splits, str(tmp_path / 'full'))
  part = _tiny()
  part.attack.num_epochs = 1
  attack.pacd(part, splits, str(tmp_path / 'resumed'))
  resumed = attack.pacd(_tiny(), splits, str(tmp_path / 'resumed'))
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

