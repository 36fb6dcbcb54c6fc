"""Tests of rsp.defenses against planted structure and closed forms.

Every random input is drawn from a fixed seed, so each test is deterministic: it passes
or fails the same way on every run. Where a test relies on a random draw, its
docstring says how likely a failure would be for a fresh draw (how robust the chosen
seed is, not a flakiness rate).
"""

import functools
import itertools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from rsp import defenses as d
from rsp import models

# Compiling dominates the model tests; XLA's optimisations buy nothing at these sizes.
jax.config.update('jax_disable_most_optimizations', True)


def _planted_shift(n_clean=200, n_planted=20, dim=20, shift=6.0, seed=0):
  """Clean N(0, I) points then ``n_planted`` points shifted by ``shift`` along e_0."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n_clean + n_planted, dim))
  x[n_clean:, 0] += shift
  is_planted = np.arange(n_clean + n_planted) >= n_clean
  return x, is_planted


# ------------------------------------------------------------------------------------
# Spectral signatures.


def test_spectral_scores_flag_a_planted_shift():
  """The 20 of 220 points shifted by 6 along e_0 take (>= 90% of) the top 20 scores.

  The planted mean shift gives the centred data a direction of variance
  1 + 36 p (1 - p) ~ 3.98 (p = 1/11) against a top noise eigenvalue of about
  (1 + sqrt(20/220))^2 ~ 1.7, so v ~ e_0; a planted point projects to about
  6 (1 - p) ~ 5.5 +- 1 and a clean point to N(-0.55, 1). A clean point outranks the
  planted ones with probability about 1e-4 each, so recall < 0.9 (3 of them) has
  probability < 1e-6 for a fresh draw.
  """
  x, planted = _planted_shift()
  scores = d.spectral_scores(x)
  keep = d.remove_top(scores, int(planted.sum()))
  metrics = d.detection_metrics(scores, planted, ~keep)
  assert metrics['recall'] >= 0.9
  assert metrics['auroc'] > 0.99


def test_spectral_scores_closed_form_rank_one():
  """Features c + t_i u (u a unit vector) score exactly (t_i - mean t)^2 (no randomness
  beyond a fixed draw of t, c and u)."""
  rng = np.random.default_rng(1)
  t = rng.normal(size=12)
  u = rng.normal(size=5)
  u /= np.linalg.norm(u)
  c = rng.normal(size=5)
  x = c + t[:, None] * u
  np.testing.assert_allclose(d.spectral_scores(x), (t - t.mean()) ** 2, rtol=1e-10,
                             atol=1e-12)
  # The iterative top singular vector agrees with the full SVD on generic data.
  g = rng.normal(size=(40, 7)) * np.arange(1, 8)
  gc = g - g.mean(0)
  v = np.linalg.svd(gc)[2][0]
  np.testing.assert_allclose(d.spectral_scores(g), (gc @ v) ** 2, rtol=1e-8)
  # A single point, and the sign of the singular vector, cannot matter.
  np.testing.assert_array_equal(d.spectral_scores(x[:1]), [0.0])
  np.testing.assert_allclose(d.spectral_scores(-x), d.spectral_scores(x), atol=1e-12)


def test_per_class_applies_the_detector_within_each_class():
  """per_class equals the detector run on each class's rows (deterministic)."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(30, 4))
  y = np.repeat([2, 0, 5], 10)[rng.permutation(30)]
  out = d.per_class(d.spectral_scores, x, y)
  for c in (0, 2, 5):
    np.testing.assert_allclose(out[y == c], d.spectral_scores(x[y == c]))
  with pytest.raises(ValueError, match=r'class 7 \(2 points\).*features.shape'):
    d.per_class(d.activation_clustering_scores, x[:12], np.r_[np.zeros(10, int), 7, 7],
                seed=0)


# ------------------------------------------------------------------------------------
# Activation clustering.


def _two_clusters(seed=3, n_big=80, n_small=20, dim=16, shift=8.0):
  rng = np.random.default_rng(seed)
  x = np.concatenate([rng.normal(size=(n_big, dim)), rng.normal(size=(n_small, dim))])
  x[n_big:, 0] += shift
  return x, np.arange(n_big + n_small) >= n_big


def test_activation_clustering_flags_the_smaller_cluster():
  """80 + 20 Gaussian points 8 standard deviations apart: 2-means after PCA splits them
  exactly, the 20 take the top 20 scores, all in [1, 2], and the diagnostics agree.

  A point falls past the midpoint between the clusters with probability
  Phi(-4) ~ 3e-5, so a fresh draw fails with probability ~ 3e-3 (and then by one point).
  """
  x, planted = _two_clusters()
  out = d.activation_clustering(x, seed=0)
  np.testing.assert_array_equal(out['cluster'].astype(bool), planted)
  assert out['relative_size'] == pytest.approx(0.2)
  # About 1 - sqrt(2 * 10) / sqrt(64 + 2 * 10) ~ 0.5 in the 10 PCA dimensions.
  assert out['mean_silhouette'] > 0.3
  s = out['silhouette']
  np.testing.assert_allclose(out['scores'],
                             np.where(planted, (3 + s) / 2, (1 - s) / 2))
  assert np.all(out['scores'][planted] >= 1) and np.all(out['scores'][~planted] <= 1)
  scores = d.activation_clustering_scores(x, seed=0)
  np.testing.assert_array_equal(scores, out['scores'])
  assert d.detection_metrics(scores, planted, ~d.remove_top(scores, 20))['recall'] == 1


def test_activation_clustering_is_seeded_and_ica_runs():
  """Equal seeds give equal scores for both reductions (deterministic); ICA on data with
  as many dimensions as components also finds the cluster here (see the module's note
  on why PCA is the default)."""
  x, planted = _two_clusters(dim=10)
  for reduction in ('pca', 'ica'):
    a = d.activation_clustering_scores(x, seed=4, reduction=reduction)
    b = d.activation_clustering_scores(x, seed=4, reduction=reduction)
    np.testing.assert_array_equal(a, b)
  ica = d.activation_clustering(x, seed=4, reduction='ica')
  np.testing.assert_array_equal(ica['cluster'].astype(bool), planted)
  # All points equal: one distinct cluster, zero scores.
  np.testing.assert_array_equal(
      d.activation_clustering_scores(np.ones((5, 3)), seed=0), np.zeros(5))


# ------------------------------------------------------------------------------------
# Deep k-NN.


def test_knn_scores_flag_mislabelled_points_inside_another_cluster():
  """Five points labelled 1 inside class 0's cluster (50 points at 0; class 1's 50 at
  10 e_0) get the top 5 scores with k = 10.

  A planted point's 10 nearest others are drawn from the 54 points around 0, so its
  score is about 1 - 10*4/54/10 ~ 0.93; a clean class-0 point scores the fraction of
  planted points among its neighbours, ~ 0.09. A clean point reaching the planted
  points' scores (>= 5 planted neighbours) has probability < 1e-3, so a fresh draw
  fails with probability < 0.05.
  """
  rng = np.random.default_rng(5)
  x0 = rng.normal(size=(50, 8))
  x1 = rng.normal(size=(50, 8))
  x1[:, 0] += 10
  planted = rng.normal(size=(5, 8))
  x = np.concatenate([x0, x1, planted])
  y = np.r_[np.zeros(50), np.ones(55)].astype(int)
  is_planted = np.arange(105) >= 100
  scores = d.knn_scores(x, y, k=10)
  assert set(np.argsort(-scores, kind='stable')[:5]) == set(range(100, 105))
  assert np.all(scores[is_planted] >= 0.5)  # Peri et al.'s plurality rule flags them.
  np.testing.assert_array_equal(scores[50:100], 0)  # Class 1's cluster is pure.


def test_knn_scores_exact_small_example():
  """1-D points 0, 1, 3, 10, 12 labelled 0, 0, 1, 1, 1 with k = 2 (no ties):
  nearest others 0:{1, 3} 1:{0, 3} 3:{1, 0} 10:{12, 3} 12:{10, 3}, so the scores are
  1/2, 1/2, 1, 0, 0. Exact duplicates: the self index is excluded, not the first hit."""
  x = np.array([[0.0], [1.0], [3.0], [10.0], [12.0]])
  y = np.array([0, 0, 1, 1, 1])
  np.testing.assert_array_equal(d.knn_scores(x, y, k=2), [0.5, 0.5, 1.0, 0.0, 0.0])
  dup = d.knn_scores(np.array([[0.0], [0.0], [5.0], [6.0]]), np.array([0, 1, 1, 1]), k=1)
  np.testing.assert_array_equal(dup, [1.0, 1.0, 0.0, 0.0])


def test_random_and_oracle_scores():
  """Seeded random scores are reproducible; the oracle's top scores are the poisons."""
  np.testing.assert_array_equal(d.random_scores(7, seed=3), d.random_scores(7, seed=3))
  assert not np.array_equal(d.random_scores(7, seed=3), d.random_scores(7, seed=4))
  is_poison = np.array([0, 1, 0, 1, 1], bool)
  np.testing.assert_array_equal(d.oracle_scores(is_poison), [0, 1, 0, 1, 1])
  np.testing.assert_array_equal(d.remove_top(d.oracle_scores(is_poison), 3), ~is_poison)


# ------------------------------------------------------------------------------------
# Removal and detection metrics.


def test_remove_top_counts_fractions_and_ties():
  """Counts and fractions (floored, with slack for float rounding); equal scores are
  removed lowest index first (deterministic)."""
  s = np.array([1.0, 2.0, 2.0, 2.0, 0.0])
  np.testing.assert_array_equal(d.remove_top(s, 2), [True, False, False, True, True])
  np.testing.assert_array_equal(d.remove_top(s, np.int64(4)), [False] * 4 + [True])
  np.testing.assert_array_equal(d.remove_top(s, 0), [True] * 5)
  np.testing.assert_array_equal(d.remove_top(s, 5), [False] * 5)
  np.testing.assert_array_equal(d.remove_top(s, 0.4), d.remove_top(s, 2))
  np.testing.assert_array_equal(d.remove_top(s, 1.0), [False] * 5)
  assert d.budget_count(100, 0.29) == 29 and d.budget_count(10, 0.7) == 7
  assert d.budget_count(10, 0.35) == 3
  assert (~d.remove_top(np.zeros(100), 0.29)).sum() == 29
  np.testing.assert_array_equal(np.flatnonzero(~d.remove_top(np.zeros(10), 3)), [0, 1, 2])


def test_remove_top_per_class():
  """The budget is taken from each class: 1 of each (count) or 50% of each (fraction)."""
  s = np.array([5.0, 1.0, 0.5, 0.4, 0.3, 9.0])
  y = np.array([0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(d.remove_top_per_class(s, y, 1),
                                [False, True, True, True, True, False])
  np.testing.assert_array_equal(d.remove_top_per_class(s, y, 0.5),
                                [False, True, False, True, True, False])
  with pytest.raises(ValueError, match=r'budget=3 .*\[0, 2\]'):
    d.remove_top_per_class(s, y, 3)


def test_filter_dataset():
  """Every array is filtered by the same mask, in order."""
  ds = {'image': np.arange(5 * 4, dtype=np.float32).reshape(5, 2, 2, 1),
        'label': np.array([0, 1, 2, 3, 4]), 'is_poison': np.array([1, 0, 1, 0, 0], bool)}
  keep = np.array([True, False, True, True, False])
  out = d.filter_dataset(ds, keep)
  np.testing.assert_array_equal(out['label'], [0, 2, 3])
  np.testing.assert_array_equal(out['image'], ds['image'][[0, 2, 3]])
  np.testing.assert_array_equal(out['is_poison'], [True, True, False])
  with pytest.raises(ValueError, match='keep_mask.shape'):
    d.filter_dataset(ds, keep[:4])
  with pytest.raises(ValueError, match='share their leading axis'):
    d.filter_dataset({'image': ds['image'], 'label': np.arange(4)}, keep)


def test_detection_metrics_hand_computed():
  """scores .9 .8 .7 .1 .05 .6, poisons at 0, 2, 5, removed the top 3 (0, 1, 2):
  TP = 2, precision = recall = 2/3; AUROC: poisons .9, .7, .6 beat 3, 2, 2 of the clean
  .8, .1, .05, i.e. 7/9; target class 3 holds 0, 1, 2, 5, of which 3 were removed."""
  scores = np.array([0.9, 0.8, 0.7, 0.1, 0.05, 0.6])
  poison = np.array([1, 0, 1, 0, 0, 1], bool)
  removed = ~d.remove_top(scores, 3)
  np.testing.assert_array_equal(removed, [1, 1, 1, 0, 0, 0])
  m = d.detection_metrics(scores, poison, removed, labels=np.array([3, 3, 3, 1, 1, 3]),
                          target_class=3)
  assert m['precision'] == pytest.approx(2 / 3)
  assert m['recall'] == pytest.approx(2 / 3)
  assert m['auroc'] == pytest.approx(7 / 9)
  assert m['removed'] == 3 and m['true_positives'] == 2 and m['num_poison'] == 3
  assert m['target_removed_fraction'] == pytest.approx(3 / 4)
  # Ties count 1/2; undefined cases are None.
  assert d.detection_metrics(np.zeros(4), [1, 0, 1, 0], np.zeros(4, bool))['auroc'] == 0.5
  none = d.detection_metrics(scores, np.ones(6, bool), np.zeros(6, bool))
  assert none['auroc'] is None and none['precision'] is None and none['recall'] == 0
  assert none['target_removed_fraction'] is None
  clean = d.detection_metrics(scores, np.zeros(6, bool), removed)
  assert clean['auroc'] is None and clean['recall'] is None and clean['precision'] == 0
  with pytest.raises(ValueError, match='together'):
    d.detection_metrics(scores, poison, removed, labels=np.zeros(6))


# ------------------------------------------------------------------------------------
# apply_data_defense: one detector from features to the filtered set.


def _planted_set():
  """220 points of 2 classes: class 1 holds the 20 planted (shifted) points and 100
  clean ones; the features are the points themselves (a flat 'image')."""
  x, planted = _planted_shift()
  labels = np.zeros(len(x), np.int64)
  labels[100:] = 1
  ds = {'image': x.reshape(len(x), 20, 1, 1).astype(np.float32), 'label': labels,
        'index': np.arange(len(x))}
  return ds, planted


def _as_features(images):
  return np.asarray(images).reshape(len(images), -1)


@pytest.mark.parametrize('name', d.DETECTORS)
def test_apply_data_defense_removes_the_budget_and_measures_it(name):
  """Every detector removes the budget (the oracle: the poisons within it), filters
  every array alike, and its detection record is detection_metrics of its own scores
  and removals."""
  ds, planted = _planted_set()
  filtered, det = d.apply_data_defense(name, ds, is_poison=planted, budget=20,
                                       features_fn=_as_features, seed=0, target_class=1,
                                       knn_k=5)
  assert det['detector'] == name and det['budget'] == 20 and det['num_before'] == 220
  assert det['removed'] == 20 and len(det['removed_indices']) == 20
  kept = np.setdiff1d(np.arange(220), det['removed_indices'])
  np.testing.assert_array_equal(filtered['index'], kept)
  np.testing.assert_array_equal(filtered['label'], ds['label'][kept])
  removed = np.zeros(220, bool)
  removed[det['removed_indices']] = True
  scores = d.detector_scores(name, labels=ds['label'], is_poison=planted,
                             features=_as_features(ds['image']), seed=0, knn_k=5)
  expected = d.detection_metrics(scores, planted, removed, labels=ds['label'],
                                 target_class=1)
  assert {k: det[k] for k in expected} == expected
  if name in ('spectral', 'oracle'):
    # The shift is class 1's top direction: the planted points project to about
    # 6 * 5/6 = 5 (score 25), its clean points to about -1 and class 0's to N(0, 1).
    assert det['precision'] >= 0.9 and det['auroc'] > 0.99
  if name == 'oracle':
    assert det['precision'] == det['recall'] == 1.0


def test_apply_data_defense_budgets_and_arguments():
  ds, planted = _planted_set()
  # A fraction of N; the oracle never removes more than the poisons.
  _, det = d.apply_data_defense('random_removal', ds, is_poison=planted, budget=0.1)
  assert det['removed'] == 22 and det['target_removed_fraction'] is None
  _, det = d.apply_data_defense('oracle', ds, is_poison=planted, budget=50)
  assert det['removed'] == 20 and det['budget'] == 20
  _, det = d.apply_data_defense('oracle', ds, is_poison=np.zeros(220, bool), budget=50)
  assert det['removed'] == 0 and det['precision'] is None
  # Seeded: the same seed removes the same points, another seed others.
  runs = [d.apply_data_defense('random_removal', ds, is_poison=planted, budget=20,
                               seed=s)[1]['removed_indices'] for s in (0, 0, 1)]
  assert runs[0] == runs[1] != runs[2]
  with pytest.raises(ValueError, match=r"features_fn=None is invalid; accepted: a "
                                       r"function .* for detector 'knn'"):
    d.apply_data_defense('knn', ds, is_poison=planted, budget=20)
  with pytest.raises(ValueError, match=r"name='strip' is invalid; accepted: spectral"):
    d.apply_data_defense('strip', ds, is_poison=planted, budget=20)
  with pytest.raises(ValueError, match=r'budget=221'):
    d.apply_data_defense('random_removal', ds, is_poison=planted, budget=221)
  with pytest.raises(ValueError, match=r'features_fn\(images\).shape=\(3, 20\)'):
    d.apply_data_defense('spectral', ds, is_poison=planted, budget=20,
                         features_fn=lambda images: _as_features(images)[:3])


# ------------------------------------------------------------------------------------
# Features.


class _ReluHead(nn.Module):
  """A model whose output is not its last Dense layer's."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.relu(nn.Dense(3)(x.reshape(x.shape[0], -1)))


@pytest.mark.parametrize('name,dim,head', [('lenet', 500, 'Dense_1'),
                                           ('mlp', 512, 'Dense_2')])
def test_penultimate_features_shapes_and_head(name, dim, head):
  """[N, D] features whose affine map by the head's kernel is the logits; the padded
  last batch changes nothing (deterministic: a fixed init key and images)."""
  model = models.get_model(name, 10)
  variables = jax.jit(models.init_model, static_argnums=(1, 2))(
      jax.random.key(0), model, (28, 28, 1))
  images = np.random.default_rng(11).uniform(size=(5, 28, 28, 1)).astype(np.float32)
  fn = d.make_features_fn(model)
  assert d.make_features_fn(model) is fn  # cached per architecture
  feats = d.penultimate_features(fn, variables, images, batch_size=2)
  assert feats.shape == (5, dim) and feats.dtype == np.float32
  assert np.all(feats >= 0)  # post-ReLU
  p = variables['params'][head]
  logits = jax.jit(models.make_apply_fn(model))(variables, images)
  np.testing.assert_allclose(feats @ np.asarray(p['kernel']) + np.asarray(p['bias']),
                             logits, rtol=1e-4, atol=1e-4)
  whole = d.penultimate_features(fn, variables, images, batch_size=8)
  np.testing.assert_allclose(whole, feats, rtol=1e-5, atol=1e-6)


def test_features_fn_covers_the_registry_and_rejects_other_heads():
  """Shapes for every registered model by abstract evaluation (no compilation)."""
  dims = {'lenet': 500, 'wide_cnn': 256, 'mlp': 512, 'resnet20': 64,
          'preact_resnet29': 256}
  assert set(dims) == set(models.MODELS)
  for name, dim in dims.items():
    model = models.get_model(name, 10)
    shape = models.input_shape(name)
    variables = jax.eval_shape(lambda k: models.init_model(k, model, shape),
                               jax.random.key(0))
    out = jax.eval_shape(d.make_features_fn(model), variables,
                         jax.ShapeDtypeStruct((2, *shape), jnp.float32))
    assert out.shape == (2, dim), name
  bad = _ReluHead()
  variables = bad.init(jax.random.key(0), jnp.zeros((1, 4)))
  with pytest.raises(ValueError, match='last Dense'):
    d.make_features_fn(bad)(variables, jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r'images.shape=\(28, 28, 1\)'):
    d.penultimate_features(d.make_features_fn(bad), variables, np.zeros((28, 28, 1)),
                           batch_size=2)


# ------------------------------------------------------------------------------------
# mixup.


def test_mixup_is_a_convex_combination_of_two_examples():
  """With labels = I, the soft labels are the mixing weights: image i is
  sum_j y~_ij x_j, each row holds lam on i and 1 - lam on pi(i), one lam for the batch
  (deterministic: fixed keys)."""
  b = 8
  images = np.random.default_rng(10).uniform(size=(b, 4, 4, 1)).astype(np.float32)
  mix = jax.jit(functools.partial(d.mixup, alpha=0.4))
  for seed in range(3):
    mixed, soft = mix(jax.random.key(10 + seed), images, np.eye(b, dtype=np.float32))
    mixed, soft = np.asarray(mixed), np.asarray(soft)
    np.testing.assert_allclose(soft.sum(1), 1, atol=1e-6)
    assert np.all(soft >= 0) and np.all((soft > 0).sum(1) <= 2)
    np.testing.assert_allclose(mixed.reshape(b, -1),
                               soft @ np.asarray(images).reshape(b, -1), atol=1e-5)
    diag = np.diag(soft)
    moved = diag < 1 - 1e-6  # rows whose partner is another example
    assert moved.any()
    np.testing.assert_allclose(diag[moved], diag[moved][0], atol=1e-6)
    assert mixed.min() >= 0 and mixed.max() <= 1
  onehot = np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 0, 0, 2, 1]]
  _, soft = mix(jax.random.key(0), images, onehot)
  np.testing.assert_allclose(np.asarray(soft).sum(1), 1, atol=1e-6)


@pytest.mark.parametrize('alpha', [0.0, -1.0, True, 'a'])
def test_mixup_rejects_bad_alpha(alpha):
  with pytest.raises(ValueError, match=f'alpha={alpha!r}.*accepted: a float > 0'):
    d.mixup(jax.random.key(0), jnp.zeros((2, 1)), jnp.eye(2), alpha=alpha)


def test_mixup_rejects_mismatched_labels():
  with pytest.raises(ValueError, match='labels_onehot.shape'):
    d.mixup(jax.random.key(0), jnp.zeros((3, 1)), jnp.eye(2), alpha=1.0)


# ------------------------------------------------------------------------------------
# Purifications.


def test_bit_depth_reduce_levels():
  """A 256-level ramp keeps exactly 2^bits levels, the multiples of 1/(2^bits - 1)."""
  ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(1, 16, 16, 1)
  for bits in range(1, 9):
    out = d.bit_depth_reduce(ramp, bits)
    assert out.dtype == np.float32 and out.shape == ramp.shape
    levels = np.unique(out)
    assert levels.size == 2 ** bits
    np.testing.assert_allclose(levels, np.arange(2 ** bits) / (2 ** bits - 1), atol=1e-6)
  np.testing.assert_allclose(d.bit_depth_reduce(ramp, 8), ramp, atol=1e-6)


def test_gaussian_blur():
  """A constant image is a fixed point; sigma = 0 is the identity; blurring noise lowers
  its variance; each image and channel is blurred separately (deterministic)."""
  const = np.full((2, 9, 9, 3), 0.3, np.float32)
  np.testing.assert_allclose(d.gaussian_blur(const, 1.5), const, atol=1e-6)
  rng = np.random.default_rng(6)
  noise = rng.uniform(size=(2, 16, 16, 1)).astype(np.float32)
  np.testing.assert_array_equal(d.gaussian_blur(noise, 0.0), noise)
  out = d.gaussian_blur(noise, 1.0)
  assert out.dtype == np.float32 and out.shape == noise.shape
  assert out.min() >= 0 and out.max() <= 1 and out.var() < noise.var() / 4
  two = np.concatenate([const[:1, ..., :1], noise[:1, :9, :9]], 0)
  np.testing.assert_allclose(d.gaussian_blur(two, 1.0)[0], const[0, ..., :1], atol=1e-6)


def _smooth_images(n, size, channels):
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
  planes = [0.5 + 0.3 * np.sin(np.pi * (xx + c * 0.3)) * np.cos(np.pi * yy)
            for c in range(channels)]
  img = np.stack(planes, -1)
  return np.stack([img if i % 2 == 0 else img[::-1] for i in range(n)]).astype(np.float32)


@pytest.mark.parametrize('channels,size,tol', [(1, 28, 0.01), (3, 32, 0.05)])
def test_jpeg_round_trip_of_a_smooth_image(channels, size, tol):
  """At quality 95 a smooth image comes back within ``tol`` everywhere (measured: 0.006
  grayscale, 0.033 RGB with 4:2:0 chroma subsampling); at quality 10 it is further from
  the input. Shape, dtype and range are kept (deterministic)."""
  images = _smooth_images(2, size, channels)
  out = d.jpeg_compress(images, 95)
  assert out.shape == images.shape and out.dtype == np.float32
  assert out.min() >= 0 and out.max() <= 1
  assert np.abs(out - images).max() < tol
  assert np.abs(d.jpeg_compress(images, 10) - images).mean() > np.abs(out - images).mean()
  with pytest.raises(ValueError, match=r'images.shape\[-1\]=2'):
    d.jpeg_compress(np.zeros((1, 4, 4, 2), np.float32), 50)


# ------------------------------------------------------------------------------------
# DP-SGD.

_D, _K = 16, 3


def _linear_loss(params, batch, key):
  del key
  logits = batch['x'] @ params['w'] + params['b']
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch['y']).mean()


def _dp_problem(b=6, dim=_D, k=_K, seed=7):
  rng = np.random.default_rng(seed)
  params = {'w': jnp.asarray(rng.normal(size=(dim, k)), jnp.float32),
            'b': jnp.zeros((k,), jnp.float32)}
  batch = {'x': jnp.asarray(rng.normal(size=(b, dim)), jnp.float32),
           'y': jnp.asarray(rng.integers(0, k, b), jnp.int32)}
  return params, batch


_grad = jax.jit(jax.grad(_linear_loss))
_per_example = jax.jit(functools.partial(d.per_example_grads, _linear_loss))


@functools.partial(jax.jit, static_argnums=0)
def _update(opt, grads, params):
  """One optimizer update from a fresh state, compiled once per optimizer."""
  return opt.update(grads, opt.init(params), params)[0]


def _flat(tree, batched):
  leaves = jax.tree_util.tree_leaves(tree)
  if batched:
    return np.concatenate([np.asarray(l).reshape(l.shape[0], -1) for l in leaves], 1)
  return np.concatenate([np.asarray(l).ravel() for l in leaves])


def test_per_example_grads_match_single_example_gradients():
  """Row i is the gradient on example i alone; their mean is the batch gradient
  (float32 tolerance)."""
  params, batch = _dp_problem()
  grads = _per_example(params, batch, jax.random.key(0))
  assert grads['w'].shape == (6, _D, _K) and grads['b'].shape == (6, _K)
  for i in (0, 5):
    single = _grad(params, jax.tree_util.tree_map(lambda v: v[i:i + 1], batch), None)
    np.testing.assert_allclose(grads['w'][i], single['w'], rtol=1e-5, atol=1e-6)
  mean = _grad(params, batch, None)
  np.testing.assert_allclose(grads['w'].mean(0), mean['w'], rtol=1e-5, atol=1e-6)


def test_dp_sgd_without_noise_or_clipping_is_sgd():
  """noise_multiplier = 0 and clip 1e6: the update is -lr times the mean gradient
  (float32 tolerance)."""
  params, batch = _dp_problem()
  grads = _per_example(params, batch, jax.random.key(0))
  opt = d.dp_sgd_optimizer(learning_rate=0.1, l2_norm_clip=1e6, noise_multiplier=0.0,
                           seed=0)
  updates = _update(opt, grads, params)
  mean = _grad(params, batch, None)
  for name in ('w', 'b'):
    np.testing.assert_allclose(updates[name], -0.1 * mean[name], rtol=1e-5, atol=1e-7)


def test_dp_sgd_clips_per_example_norms():
  """With a clip C far below the gradient norms and no noise, the update is
  -lr/B sum_i g_i C/||g_i|| (global norm over the pytree), so ||u|| <= lr C; the
  noise's standard deviation is lr sigma C / B (520 coordinates: its estimate is within
  10% but for a ~1e-3 chance for a fresh seed)."""
  params, batch = _dp_problem()
  grads = _per_example(params, batch, jax.random.key(0))
  flat = _flat(grads, batched=True)
  norms = np.linalg.norm(flat, axis=1)
  clip = 0.1 * norms.min()
  opt = d.dp_sgd_optimizer(learning_rate=0.5, l2_norm_clip=float(clip),
                           noise_multiplier=0.0, seed=0)
  updates = _update(opt, grads, params)
  expected = -0.5 * np.mean(flat * (clip / norms)[:, None], axis=0)
  np.testing.assert_allclose(_flat(updates, batched=False), expected, rtol=1e-5,
                             atol=1e-8)
  assert np.linalg.norm(_flat(updates, batched=False)) <= 0.5 * clip * (1 + 1e-5)

  params, batch = _dp_problem(b=4, dim=64, k=8)
  grads = _per_example(params, batch, jax.random.key(0))
  sigma, clip, lr = 2.0, 1.0, 0.1
  quiet = d.dp_sgd_optimizer(learning_rate=lr, l2_norm_clip=clip, noise_multiplier=0.0,
                             seed=3)
  noisy = d.dp_sgd_optimizer(learning_rate=lr, l2_norm_clip=clip,
                             noise_multiplier=sigma, seed=3)
  u0, u1 = _update(quiet, grads, params), _update(noisy, grads, params)
  diff = _flat(u1, False) - _flat(u0, False)
  assert diff.size == 520
  assert np.std(diff) == pytest.approx(lr * sigma * clip / 4, rel=0.1)


def test_dp_sgd_optimizer_emits_no_warning():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    d.dp_sgd_optimizer(learning_rate=0.1, l2_norm_clip=1.0, noise_multiplier=1.0, seed=0)


# ------------------------------------------------------------------------------------
# Deep Partition Aggregation.


def test_dpa_certify_hand_made_counts():
  """Gap minus the tie indicator, halved and floored; ties go to the smaller class."""
  counts = np.array([
      [5, 2, 0],   # top 0, second 1:           (5 - 2 - 0) // 2 = 1
      [2, 5, 0],   # top 1, second 0 < 1:        (5 - 2 - 1) // 2 = 1
      [3, 3, 0],   # tie -> class 0, second 1:   0
      [0, 3, 3],   # tie -> class 1, second 2:   0
      [2, 8, 2],   # second is class 0 (tie):    (8 - 2 - 1) // 2 = 2 (not 3)
      [10, 0, 0],  # unanimous for class 0:      10 // 2 = 5
      [0, 0, 10],  # unanimous for class 2:      (10 - 0 - 1) // 2 = 4
  ])
  pred, r = d.dpa_certify(counts)
  np.testing.assert_array_equal(pred, [0, 1, 0, 1, 1, 0, 2])
  np.testing.assert_array_equal(r, [1, 1, 0, 0, 2, 5, 4])


def test_dpa_certificate_is_exact_by_brute_force():
  """For every vote vector of k = 6 votes over 3 classes: no vector within r changed
  votes (half the L1 distance) changes the prediction, and one within r + 1 does."""
  k, c = 6, 3
  vectors = [np.array(v) for v in itertools.product(range(k + 1), repeat=c)
             if sum(v) == k]
  pred, r = d.dpa_certify(np.stack(vectors))
  for n, p, radius in zip(vectors, pred, r):
    changed = [np.abs(v - n).sum() // 2 for v in vectors
               if np.argmax(v) != p]
    assert min(changed) == radius + 1


def test_dpa_votes():
  predictions = np.array([[0, 1], [0, 2], [1, 2]])  # 3 classifiers, 2 test points
  np.testing.assert_array_equal(d.dpa_votes(predictions), [[2, 1, 0], [0, 1, 2]])
  np.testing.assert_array_equal(d.dpa_votes(predictions, num_classes=4),
                                [[2, 1, 0, 0], [0, 1, 2, 0]])
  with pytest.raises(ValueError, match='predictions'):
    d.dpa_votes(predictions, num_classes=2)


def test_dpa_partition_is_deterministic_content_keyed_and_balanced():
  """SHA-256 keyed partitions: repeatable, seed-dependent, equal images together, and
  balanced: 2,000 random images into 10 partitions give a chi-square statistic below
  its 1 - 1e-6 quantile (a fresh seed fails with probability 1e-6 if SHA-256 behaves as
  a uniform hash)."""
  rng = np.random.default_rng(8)
  images = rng.uniform(size=(2000, 4, 4, 1)).astype(np.float32)
  ids = d.dpa_partition(2000, 10, images=images, seed=0)
  np.testing.assert_array_equal(ids, d.dpa_partition(2000, 10, images=images, seed=0))
  assert not np.array_equal(ids, d.dpa_partition(2000, 10, images=images, seed=1))
  assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 10
  counts = np.bincount(ids, minlength=10)
  chi2 = np.sum((counts - 200) ** 2 / 200)
  assert chi2 < scipy.stats.chi2.ppf(1 - 1e-6, df=9)
  # Content, not position, decides: a permutation permutes the ids.
  perm = rng.permutation(2000)
  np.testing.assert_array_equal(d.dpa_partition(2000, 10, images=images[perm]), ids[perm])
  # A modified image moves (here: to another partition for most of 20 modifications).
  moved = images.copy()
  moved[:20] += 1e-3
  new = d.dpa_partition(2000, 10, images=moved)
  assert np.sum(new[:20] != ids[:20]) >= 10 and np.array_equal(new[20:], ids[20:])
  by_index = d.dpa_partition(2000, 10)
  np.testing.assert_array_equal(by_index, d.dpa_partition(2000, 10, seed=0))
  assert np.bincount(by_index, minlength=10).min() > 0


def test_partitions_touched_and_certified_accuracy():
  """Old and new partitions of the modified images, deduplicated; accuracy counts the
  correct points whose certificate reaches the budget."""
  old = np.array([0, 1, 2, 1, 0])
  new = np.array([0, 2, 2, 1, 0])
  np.testing.assert_array_equal(d.partitions_touched(old, [1, 3]), [1])
  np.testing.assert_array_equal(d.partitions_touched(old, [1, 3], new), [1, 2])
  np.testing.assert_array_equal(d.partitions_touched(old, []), [])
  certified = np.array([0, 1, 3, 5])
  correct = np.array([True, True, False, True])
  assert d.dpa_certified_accuracy(certified, correct, 0) == 0.75
  assert d.dpa_certified_accuracy(certified, correct, 1) == 0.5
  assert d.dpa_certified_accuracy(certified, correct, 3) == 0.25
  np.testing.assert_array_equal(
      d.dpa_certified_accuracy(certified, correct, np.array([0, 1, 3, 6])),
      [0.75, 0.5, 0.25, 0.0])


# ------------------------------------------------------------------------------------
# Bad inputs.

_S = np.arange(10, dtype=float)
_F = np.random.default_rng(9).normal(size=(10, 3))
_IMG = np.full((1, 8, 8, 1), 0.5, np.float32)


@pytest.mark.parametrize('call,pattern', [
    (lambda: d.knn_scores(_F, np.zeros(10), k=0), r'k=0 .*accepted: an integer in \[1'),
    (lambda: d.knn_scores(_F, np.zeros(10), k=10), r'k=10 .*\[1, 9\]'),
    (lambda: d.remove_top(_S, 11), r'budget=11 .*\[0, 10\]'),
    (lambda: d.remove_top(_S, -1), r'budget=-1 .*accepted'),
    (lambda: d.remove_top(_S, 1.5), r'budget=1.5 .*fraction in \[0, 1\]'),
    (lambda: d.remove_top(_S, True), r'budget=True .*accepted'),
    (lambda: d.remove_top(np.r_[_S, np.nan], 1), r'scores=.*accepted: finite'),
    (lambda: d.bit_depth_reduce(_IMG, 0), r'bits=0 .*accepted: an integer in 1..8'),
    (lambda: d.bit_depth_reduce(_IMG, 9), r'bits=9 .*1..8'),
    (lambda: d.jpeg_compress(_IMG, 0), r'quality=0 .*accepted: an integer in 1..100'),
    (lambda: d.jpeg_compress(_IMG, 101), r'quality=101 .*1..100'),
    (lambda: d.gaussian_blur(_IMG, -1.0), r'sigma=-1.0 .*>= 0'),
    (lambda: d.gaussian_blur(_IMG[0], 1.0), r'images.shape=\(8, 8, 1\) .*4-D'),
    (lambda: d.bit_depth_reduce(_IMG + 1, 2), r'images=.*\[0, 1\]'),
    (lambda: d.spectral_scores(_S), r'features.shape=\(10,\) .*2-D'),
    (lambda: d.activation_clustering_scores(_F, seed=0, num_components=0),
     r'num_components=0 .*>= 1'),
    (lambda: d.activation_clustering_scores(_F, seed=0, reduction='tsne'),
     r"reduction='tsne' .*pca, ica"),
    (lambda: d.penultimate_features(None, {}, _IMG, batch_size=0), r'batch_size=0'),
    (lambda: d.dpa_partition(5, 0), r'k=0 .*accepted: an integer >= 1'),
    (lambda: d.dpa_partition(5, 2, images=_IMG), r'images.shape=\(1, 8, 8, 1\)'),
    (lambda: d.dpa_certify(np.array([1, 2])), r'counts.shape=\(2,\) .*\[M, C\]'),
    (lambda: d.dpa_certify(np.array([[1, -2]])), r'counts=.*nonnegative'),
    (lambda: d.dpa_certified_accuracy([1], [True], -1), r'budget=-1 .*>= 0'),
    (lambda: d.partitions_touched([0, 1], [2]), r'modified_indices=.*\[0, 2\)'),
    (lambda: d.dp_sgd_optimizer(learning_rate=0.1, l2_norm_clip=0.0,
                                noise_multiplier=1.0, seed=0), r'l2_norm_clip=0.0'),
    (lambda: d.dp_sgd_optimizer(learning_rate=0.1, l2_norm_clip=1.0,
                                noise_multiplier=-1.0, seed=0), r'noise_multiplier=-1.0'),
    (lambda: d.random_scores(-1, seed=0), r'n=-1'),
    (lambda: d.oracle_scores([0, 2]), r'is_poison.dtype'),
])
def test_bad_inputs_raise_naming_the_argument(call, pattern):
  with pytest.raises(ValueError, match=pattern):
    call()
