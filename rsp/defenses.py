"""Defenses against training-set poisoning, as pure functions a protocol can call.

The threat is PACD (Mehra et al., CVPR 2021): every training image of one target class
is perturbed within an L-inf ball of radius eps, labels unchanged (clean-label), so that
the smoothed classifier trained on the set certifies small radii on that class. This
module holds the defenses as pure functions on numpy/JAX arrays; nothing here trains a
model or reads files, and nothing keeps state between calls.

Conventions: a higher suspicion score means more suspicious; images are
``[N, H, W, C]`` float32 in [0, 1] (``rsp.data``); a data set is a dict of arrays with a
shared leading axis (``{'image', 'label', ...}``); bad arguments raise ``ValueError``
naming the argument, its value and what is accepted.

Groups (and what a protocol integration calls):

* Detection on features (a model's penultimate activations, ``penultimate_features``):
  ``spectral_scores`` (Tran, Li & Madry 2018), ``activation_clustering_scores`` (Chen et
  al. 2018), ``knn_scores`` (Peri et al. 2020), the baselines ``random_scores`` and
  ``oracle_scores``, ``per_class`` to apply a within-class detector class by class, the
  removal rules ``remove_top`` and ``remove_top_per_class``, ``filter_dataset``, and
  ``detection_metrics`` against the known poison indices. The pipeline: train on the
  poisoned set, take features of the training images, score,
  ``keep = remove_top(scores, budget)``, retrain on ``filter_dataset(train, keep)``,
  certify as usual.
* Training-time defenses: ``mixup`` (Zhang et al. 2018) on each batch; the
  purifications ``bit_depth_reduce``, ``gaussian_blur`` and ``jpeg_compress``, applied
  once to the training images before training; DP-SGD (Abadi et al. 2016) through
  ``dp_sgd_optimizer`` and ``per_example_grads``.
* Deep Partition Aggregation (Levine & Feizi, ICLR 2021): ``dpa_partition``,
  ``dpa_votes``, ``dpa_certify``, ``partitions_touched``, ``dpa_certified_accuracy``.
* ``apply_data_defense``: one detector of ``DETECTORS`` from features to the filtered
  training set and its ``detection_metrics`` (what ``rsp.defense_cells`` calls).

A caveat that applies to every within-class detector here: PACD perturbs *every*
training image of the target class, so inside that class there is no clean
sub-population for a spectral direction or a 2-means split to separate from; these
detectors were designed for attacks that poison a small fraction of a class. Deep k-NN
compares each point with the other classes instead; whether PACD's poisons stand out
that way is an empirical question. The oracle baseline removes the poisons themselves,
which under PACD is the whole target class (so its budget should be the poison count,
and the retrained model then cannot predict that class at all): detection metrics under
PACD measure how much of the target class a detector removes, not a clean separation.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import numbers
import warnings
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np
import optax
import optax.contrib
import scipy.ndimage
import scipy.sparse.linalg
from PIL import Image
from sklearn import cluster as sk_cluster
from sklearn import decomposition as sk_decomposition
from sklearn import metrics as sk_metrics
from sklearn import neighbors as sk_neighbors

# ------------------------------------------------------------------------------------
# Argument checks.


def _check(name: str, value: Any, ok: bool, accepted: str) -> None:
  if not ok:
    raise ValueError(f'{name}={value!r} is invalid; accepted: {accepted}.')


def _is_int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _features(features: Any, name: str = 'features', min_rows: int = 1) -> np.ndarray:
  x = np.asarray(features, np.float64)
  _check(f'{name}.shape', x.shape, x.ndim == 2, 'a 2-D array [N, D]')
  _check(f'{name}.shape', x.shape, x.shape[0] >= min_rows and x.shape[1] >= 1,
         f'[N, D] with N >= {min_rows} and D >= 1')
  _check(name, '<array with non-finite values>', bool(np.all(np.isfinite(x))),
         'finite values')
  return x


def _vector(x: Any, name: str, n: int | None = None, dtype=None) -> np.ndarray:
  v = np.asarray(x) if dtype is None else np.asarray(x, dtype)
  _check(f'{name}.shape', v.shape, v.ndim == 1, 'a 1-D array')
  if n is not None:
    _check(f'{name}.shape', v.shape, v.shape[0] == n, f'({n},), one entry per point')
  return v


def _bool_vector(x: Any, name: str, n: int | None = None) -> np.ndarray:
  v = _vector(x, name, n)
  ok = v.dtype == bool or (np.issubdtype(v.dtype, np.integer) and
                           bool(np.all((v == 0) | (v == 1))))
  _check(f'{name}.dtype', v.dtype, ok, 'bool (or 0/1 integers)')
  return v.astype(bool)


def _images(images: Any, name: str = 'images') -> np.ndarray:
  x = np.asarray(images, np.float32)
  _check(f'{name}.shape', x.shape, x.ndim == 4, 'a 4-D array [N, H, W, C]')
  ok = bool(np.all(np.isfinite(x))) and (x.size == 0 or (x.min() >= 0 and x.max() <= 1))
  _check(name, '<array outside [0, 1]>', ok, 'finite values in [0, 1]')
  return x


# ------------------------------------------------------------------------------------
# Detectors on features.


def spectral_scores(features: Any) -> np.ndarray:
  """Spectral-signature outlier scores of one class's features (Tran et al. 2018).

  ``score_i = <r_i - mean_j r_j, v>^2`` where ``v`` is the top right singular vector of
  the centred feature matrix ``R - 1 mean(R)^T`` (``scipy.sparse.linalg.svds`` with
  ARPACK to machine precision and a fixed start, ``numpy.linalg.svd`` when
  ``min(N, D) < 2``; if the top singular value is repeated, ``v`` is any vector of its
  subspace). Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks",
  NeurIPS 2018, Algorithm 1: compute it within each label class and remove the
  ``1.5 * eps * n`` highest-scoring points of every class, where eps bounds the poisoned
  fraction. Call it on one class's features, or through ``per_class``.

  The sign of ``v`` does not matter (the projection is squared). A class with one point
  scores 0.

  Args:
    features: ``[N, D]`` penultimate activations of the points of ONE class.

  Returns:
    ``[N]`` float64 scores >= 0.
  """
  x = _features(features)
  centred = x - x.mean(axis=0, keepdims=True)
  if min(centred.shape) >= 2 and np.any(centred):
    _, _, vt = scipy.sparse.linalg.svds(centred, k=1, random_state=0)
  else:
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return (centred @ vt[0]) ** 2


AC_REDUCTIONS = ('pca', 'ica')


def activation_clustering(features: Any, *, seed: int, num_components: int = 10,
                          reduction: str = 'pca') -> dict[str, Any]:
  """Activation clustering of one class's features, with its diagnostics (Chen 2018).

  Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by Activation
  Clustering", 2018 (arXiv:1811.03728): reduce each class's activations to 10
  independent components (FastICA), split them by 2-means, and judge the class
  poisoned by the smaller cluster's relative size or the split's silhouette score.

  Steps here: (1) ``reduction='pca'`` (default): ``sklearn PCA`` (ARPACK, or the full
  SVD when ``c = D``); ``'ica'`` (the
  paper's): ``sklearn FastICA`` (``whiten='unit-variance'``, ``max_iter=1000``,
  ``random_state=seed``). Both keep ``c = min(num_components, D, N - 1)`` components and
  are seeded. PCA is the default because it keeps each component's variance: FastICA's
  sources all have unit variance, so a direction that separates a planted cluster
  weighs no more in 2-means than each noise component. On planted clusters (80 + 20
  or 160 + 40 Gaussian points, D = 16 to 64, shift 8 to 20 standard deviations, 20
  draws) ICA's recall at the budget was below 0.8 in 8 draws; PCA's was 1 in all.
  (2) ``sklearn KMeans`` with 2 clusters, ``n_init=10``, ``random_state=seed``, on the
  reduced features. (3) ``s_i = silhouette_samples`` (Euclidean, reduced space) and
  ``m_i = 1`` if point i is in the smaller cluster (KMeans's cluster 1 when the two are
  of equal size). The score is

      score_i = m_i + (1 + (2 m_i - 1) s_i) / 2,

  i.e. ``(3 + s_i) / 2`` in [1, 2] in the smaller cluster (well-clustered members rank
  first) and ``(1 - s_i) / 2`` in [0, 1] in the larger one (points closest to the
  smaller cluster rank next). Every point of the smaller cluster outranks every point of
  the larger one, except at the silhouette extremes, where the two meet at 1.

  Args:
    features: ``[N, D]`` activations of ONE class, N >= 3.
    seed: seeds FastICA/PCA and KMeans; equal seeds give equal results.
    num_components: reduced dimension, >= 1 (10 in the paper).
    reduction: ``'pca'`` or ``'ica'``.

  Returns:
    ``dict(scores [N], cluster [N] int (1 = smaller), silhouette [N],
    relative_size`` (fraction of points in the smaller cluster)``, mean_silhouette)``.
    If KMeans finds a single distinct cluster (all points equal), all scores, the
    silhouettes and ``relative_size`` are 0.
  """
  x = _features(features, min_rows=3)
  _check('seed', seed, _is_int(seed) and seed >= 0, 'an integer >= 0')
  _check('num_components', num_components,
         _is_int(num_components) and num_components >= 1, 'an integer >= 1')
  _check('reduction', reduction, reduction in AC_REDUCTIONS, ', '.join(AC_REDUCTIONS))
  n, d = x.shape
  c = int(min(num_components, d, n - 1))
  if reduction == 'ica':
    reducer = sk_decomposition.FastICA(n_components=c, whiten='unit-variance',
                                       max_iter=1000, random_state=seed)
  else:
    solver = 'arpack' if c < min(n, d) else 'full'  # ARPACK needs c < min(N, D).
    reducer = sk_decomposition.PCA(n_components=c, svd_solver=solver, random_state=seed)
  with warnings.catch_warnings():
    # FastICA warns when it does not converge (e.g. on Gaussian data, which has no
    # independent components); its output is still a whitened linear projection.
    warnings.simplefilter('ignore')
    reduced = reducer.fit_transform(x)
  km = sk_cluster.KMeans(n_clusters=2, n_init=10, random_state=seed)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # "fewer distinct points than clusters"
    assignment = km.fit_predict(reduced)
  sizes = np.bincount(assignment, minlength=2)
  if sizes.min() == 0:
    zeros = np.zeros(n)
    return dict(scores=zeros, cluster=np.zeros(n, np.int64), silhouette=zeros,
                relative_size=0.0, mean_silhouette=0.0)
  smaller = 0 if sizes[0] < sizes[1] else 1
  member = (assignment == smaller).astype(np.int64)
  sil = sk_metrics.silhouette_samples(reduced, assignment)
  scores = member + (1.0 + (2 * member - 1) * sil) / 2.0
  return dict(scores=scores, cluster=member, silhouette=sil,
              relative_size=float(member.mean()), mean_silhouette=float(sil.mean()))


def activation_clustering_scores(features: Any, *, seed: int, num_components: int = 10,
                                 reduction: str = 'pca') -> np.ndarray:
  """The ``scores`` of ``activation_clustering`` (see there for the formula).

  ``score_i = m_i + (1 + (2 m_i - 1) s_i) / 2`` with ``m_i`` membership of the smaller
  2-means cluster and ``s_i`` the silhouette, after PCA (default) or FastICA to
  ``num_components`` dimensions (Chen et al. 2018).
  """
  return activation_clustering(features, seed=seed, num_components=num_components,
                               reduction=reduction)['scores']


def knn_scores(features: Any, labels: Any, *, k: int) -> np.ndarray:
  """Deep k-NN label-disagreement scores (Peri et al. 2020).

  ``score_i = |{j in N_k(i) : y_j != y_i}| / k`` where ``N_k(i)`` are the ``k`` nearest
  OTHER points of point i in Euclidean feature space (``sklearn NearestNeighbors``,
  exact search). Point i itself is excluded by index, so exact duplicates of it count as
  neighbours; among equidistant neighbours the search's order decides. Peri et al.,
  "Deep k-NN Defense against Clean-label Data Poisoning Attacks", ECCV workshops 2020,
  remove a point when its label is not the plurality label of its k neighbours, which
  implies ``score_i >= 1/2``. Unlike the within-class detectors, it uses every class's
  features at once.

  Args:
    features: ``[N, D]`` features of all points.
    labels: ``[N]`` integer labels.
    k: number of neighbours, ``1 <= k <= N - 1``.

  Returns:
    ``[N]`` float64 scores in [0, 1].
  """
  x = _features(features, min_rows=2)
  y = _vector(labels, 'labels', x.shape[0])
  n = x.shape[0]
  _check('k', k, _is_int(k) and 1 <= k <= n - 1,
         f'an integer in [1, N - 1] = [1, {n - 1}]')
  nn_index = sk_neighbors.NearestNeighbors(n_neighbors=k + 1).fit(x)
  _, idx = nn_index.kneighbors(x)  # [N, k+1], usually self first.
  # Move self to the end of its row (a stable sort keeps the others' order) and keep k:
  # drops self, or the (k+1)-th neighbour where a duplicate displaced self.
  is_self = idx == np.arange(n)[:, None]
  order = np.argsort(is_self, axis=1, kind='stable')
  others = np.take_along_axis(idx, order, axis=1)[:, :k]
  return np.mean(y[others] != y[:, None], axis=1)


def random_scores(n: int, *, seed: int) -> np.ndarray:
  """Uniform random scores: ``remove_top`` on them removes a random subset.

  The baseline that removes the same budget without looking at the data;
  ``numpy.random.default_rng(seed).random(n)``.
  """
  _check('n', n, _is_int(n) and n >= 0, 'an integer >= 0')
  _check('seed', seed, _is_int(seed) and seed >= 0, 'an integer >= 0')
  return np.random.default_rng(seed).random(n)


def oracle_scores(is_poison: Any) -> np.ndarray:
  """1.0 for the poisons and 0.0 for the rest: the detector that knows the truth."""
  return _bool_vector(is_poison, 'is_poison').astype(np.float64)


def per_class(scores_fn: Callable[..., np.ndarray], features: Any, labels: Any,
              **kw: Any) -> np.ndarray:
  """Applies a within-class detector to each class's features separately.

  ``out[labels == c] = scores_fn(features[labels == c], **kw)`` for every class c
  present. Scores of different classes are not necessarily on one scale (e.g. spectral
  scores scale with the class's feature variance), so removing the global top scores
  may take unevenly from the classes; Tran et al. remove a budget per class
  (``remove_top_per_class``).

  Args:
    scores_fn: e.g. ``spectral_scores`` or ``activation_clustering_scores``.
    features: ``[N, D]``.
    labels: ``[N]`` integer labels.
    **kw: passed to ``scores_fn`` (e.g. ``seed=0``).

  Returns:
    ``[N]`` float64 scores. A ValueError from ``scores_fn`` is re-raised naming the class.
  """
  x = _features(features)
  y = _vector(labels, 'labels', x.shape[0])
  out = np.zeros(x.shape[0], np.float64)
  for c in np.unique(y):
    rows = np.flatnonzero(y == c)
    try:
      out[rows] = scores_fn(x[rows], **kw)
    except ValueError as e:
      raise ValueError(f'class {c.item()!r} ({rows.size} points): {e}') from e
  return out


# ------------------------------------------------------------------------------------
# Removal and detection metrics.


def budget_count(n: int, budget: int | float) -> int:
  """The number of points a budget removes from ``n``.

  An integer budget (Python or numpy, not bool) is a count in ``[0, n]``; a float is a
  fraction in ``[0, 1]`` and removes ``floor(budget * n + 1e-9)`` points (never more than
  the fraction, up to float rounding: 0.29 * 100 removes 29).
  """
  if _is_int(budget):
    _check('budget', budget, 0 <= budget <= n, f'an integer count in [0, N] = [0, {n}] '
           'or a float fraction in [0, 1]')
    return int(budget)
  _check('budget', budget, _is_real(budget) and 0.0 <= budget <= 1.0,
         f'an integer count in [0, N] = [0, {n}] or a float fraction in [0, 1]')
  return int(math.floor(float(budget) * n + 1e-9))


def remove_top(scores: Any, budget: int | float) -> np.ndarray:
  """The keep mask that removes the ``budget`` highest-scoring points.

  Points are ranked by descending score; equal scores are removed in ascending index
  order (a stable sort), so the result is deterministic. ``budget``: an integer count in
  [0, N] or a float fraction in [0, 1] (see ``budget_count``).

  Args:
    scores: ``[N]`` finite suspicion scores (higher = more suspicious).
    budget: how many to remove.

  Returns:
    ``[N]`` bool, True for the points kept.
  """
  s = _vector(scores, 'scores', dtype=np.float64)
  _check('scores', '<array with non-finite values>', bool(np.all(np.isfinite(s))),
         'finite values')
  m = budget_count(s.shape[0], budget)
  order = np.argsort(-s, kind='stable')
  keep = np.ones(s.shape[0], bool)
  keep[order[:m]] = False
  return keep


def remove_top_per_class(scores: Any, labels: Any, budget: int | float) -> np.ndarray:
  """``remove_top`` within each class: the same budget taken from every class.

  Tran et al. (2018) remove the ``1.5 eps n_c`` top spectral scores of each class c,
  i.e. ``budget=1.5 * eps`` here (a fraction of each class). An integer budget removes
  that many from every class and must not exceed the smallest class. Ties as in
  ``remove_top``, within a class.

  Args:
    scores: ``[N]`` finite scores.
    labels: ``[N]`` labels.
    budget: an integer count per class or a float fraction of each class.

  Returns:
    ``[N]`` bool keep mask.
  """
  s = _vector(scores, 'scores', dtype=np.float64)
  y = _vector(labels, 'labels', s.shape[0])
  keep = np.ones(s.shape[0], bool)
  classes, sizes = np.unique(y, return_counts=True)
  if _is_int(budget) and sizes.size:
    _check('budget', budget, 0 <= budget <= sizes.min(),
           f'an integer count in [0, smallest class size] = [0, {sizes.min()}] or a '
           'float fraction in [0, 1]')
  for c in classes:
    rows = np.flatnonzero(y == c)
    keep[rows] = remove_top(s[rows], budget)
  return keep


def filter_dataset(ds: Mapping[str, Any], keep_mask: Any) -> dict[str, np.ndarray]:
  """The points of ``ds`` where ``keep_mask`` is True, every array filtered alike.

  Args:
    ds: a dict of arrays sharing their leading axis N (``{'image', 'label', ...}``).
    keep_mask: ``[N]`` bool (e.g. from ``remove_top``).

  Returns:
    A new dict of numpy arrays, order preserved (the kept indices are
    ``np.flatnonzero(keep_mask)``).
  """
  _check('ds', type(ds).__name__, isinstance(ds, Mapping) and len(ds) > 0,
         'a non-empty dict of arrays')
  arrays = {key: np.asarray(v) for key, v in ds.items()}
  lengths = {key: (v.shape[0] if v.ndim else None) for key, v in arrays.items()}
  n = next(iter(lengths.values()))
  _check('ds leading sizes', lengths, n is not None and
         all(m == n for m in lengths.values()), 'arrays that share their leading axis')
  keep = _bool_vector(keep_mask, 'keep_mask', n)
  return {key: v[keep] for key, v in arrays.items()}


def detection_metrics(scores: Any, is_poison: Any, removed_mask: Any,
                      labels: Any = None, target_class: int | None = None
                      ) -> dict[str, Any]:
  """How well a detector's scores and removals match the known poisons.

  With ``TP = |removed & poison|``:

  * ``precision = TP / |removed|`` (None when nothing was removed);
  * ``recall = TP / |poison|`` (None when there are no poisons);
  * ``auroc``: ``sklearn.metrics.roc_auc_score(is_poison, scores)``, the probability
    that a random poison outscores a random clean point (ties count 1/2); None when
    all or none of the points are poisons, where it is undefined;
  * ``removed = |removed|``; ``true_positives = TP``; ``num_poison = |poison|``;
  * ``target_removed_fraction``: the fraction of the points of ``target_class`` that
    were removed (None unless ``labels`` and ``target_class`` are given, or when the
    class has no points). Under PACD every target-class training image is a poison, so
    it equals ``recall`` there.

  Args:
    scores: ``[N]`` suspicion scores.
    is_poison: ``[N]`` bool truth.
    removed_mask: ``[N]`` bool, True for removed points (``~keep_mask``).
    labels: optional ``[N]`` labels.
    target_class: optional target class.

  Returns:
    The dict above (Python floats and ints, or None).
  """
  s = _vector(scores, 'scores', dtype=np.float64)
  n = s.shape[0]
  poison = _bool_vector(is_poison, 'is_poison', n)
  removed = _bool_vector(removed_mask, 'removed_mask', n)
  tp = int(np.sum(poison & removed))
  num_removed, num_poison = int(removed.sum()), int(poison.sum())
  auroc = None
  if 0 < num_poison < n:
    auroc = float(sk_metrics.roc_auc_score(poison, s))
  target_fraction = None
  if (labels is None) != (target_class is None):
    raise ValueError(f'labels and target_class={target_class!r} must be given together.')
  if labels is not None:
    y = _vector(labels, 'labels', n)
    in_target = y == target_class
    if in_target.any():
      target_fraction = float(np.mean(removed[in_target]))
  return dict(
      precision=tp / num_removed if num_removed else None,
      recall=tp / num_poison if num_poison else None,
      auroc=auroc,
      removed=num_removed,
      true_positives=tp,
      num_poison=num_poison,
      target_removed_fraction=target_fraction,
  )


# ------------------------------------------------------------------------------------
# One detector, from scores to the filtered training set.

# The data-filtering defenses ``apply_data_defense`` runs; the first three look at a
# model's features.
DETECTORS = ('spectral', 'activation_clustering', 'knn', 'random_removal', 'oracle')
FEATURE_DETECTORS = ('spectral', 'activation_clustering', 'knn')


def detector_scores(name: str, *, labels: Any, is_poison: Any, features: Any = None,
                    seed: int = 0, knn_k: int = 50, ac_num_components: int = 10,
                    ac_reduction: str = 'pca') -> np.ndarray:
  """The suspicion scores of detector ``name`` (one of ``DETECTORS``).

  ``'spectral'`` and ``'activation_clustering'`` score each class's features apart
  (``per_class``), ``'knn'`` all of them at once with ``k = knn_k``,
  ``'random_removal'`` draws ``random_scores(N, seed=seed)`` and ``'oracle'`` is
  ``oracle_scores(is_poison)``.

  Args:
    name: the detector.
    labels: ``[N]`` labels.
    is_poison: ``[N]`` bool truth (only the oracle reads it).
    features: ``[N, D]`` features, for the feature detectors.
    seed: seeds activation clustering and the random scores.
    knn_k: the k of deep k-NN.
    ac_num_components, ac_reduction: as ``activation_clustering``.

  Returns:
    ``[N]`` float64 scores.
  """
  _check('name', name, name in DETECTORS, ', '.join(DETECTORS))
  y = _vector(labels, 'labels')
  if name in FEATURE_DETECTORS:
    _check('features', None if features is None else '<array>', features is not None,
           f'an [N, D] array for detector {name!r}')
  if name == 'spectral':
    return per_class(spectral_scores, features, y)
  if name == 'activation_clustering':
    return per_class(activation_clustering_scores, features, y, seed=seed,
                     num_components=ac_num_components, reduction=ac_reduction)
  if name == 'knn':
    return knn_scores(features, y, k=knn_k)
  if name == 'random_removal':
    return random_scores(y.shape[0], seed=seed)
  return oracle_scores(_bool_vector(is_poison, 'is_poison', y.shape[0]))


def apply_data_defense(name: str, train_set: Mapping[str, Any], *, is_poison: Any,
                       budget: int | float,
                       features_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                       seed: int = 0, target_class: int | None = None,
                       knn_k: int = 50, ac_num_components: int = 10,
                       ac_reduction: str = 'pca'
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Scores a training set with detector ``name``, removes the budget, measures it.

  The pipeline of the module docstring: ``features = features_fn(train_set['image'])``
  (feature detectors only), ``scores = detector_scores(...)``,
  ``keep = remove_top(scores, m)`` with ``m = budget_count(N, budget)`` (the top scores
  of all classes ranked together; per-class scores may be on different scales, see
  ``per_class``), ``filter_dataset(train_set, keep)``. The oracle removes the poisons
  only: ``m = min(m, number of poisons)``, so on a clean set it removes nothing.

  Args:
    name: one of ``DETECTORS``.
    train_set: ``{'image' [N, H, W, C], 'label' [N], ...}``; every array is filtered.
    is_poison: ``[N]`` bool, the truth the metrics compare with.
    budget: an integer count in [0, N] or a float fraction in [0, 1] (``budget_count``).
    features_fn: ``images [N, H, W, C] -> [N, D]`` (e.g. ``penultimate_features`` of a
      model trained on ``train_set``); required by the feature detectors.
    seed: as ``detector_scores``.
    target_class: for ``target_removed_fraction`` (None: not computed).
    knn_k, ac_num_components, ac_reduction: as ``detector_scores``.

  Returns:
    ``(filtered_set, detection)``: ``detection`` is ``detection_metrics`` (precision,
    recall, auroc, removed, true_positives, num_poison, target_removed_fraction) plus
    ``detector``, ``budget`` (the count m), ``num_before`` (N) and ``removed_indices``
    (sorted indices into ``train_set``).
  """
  _check('name', name, name in DETECTORS, ', '.join(DETECTORS))
  _check('train_set', type(train_set).__name__,
         isinstance(train_set, Mapping) and 'image' in train_set and 'label' in train_set,
         "a dict with 'image' and 'label'")
  labels = _vector(train_set['label'], "train_set['label']")
  n = labels.shape[0]
  poison = _bool_vector(is_poison, 'is_poison', n)
  m = budget_count(n, budget)
  if name == 'oracle':
    m = min(m, int(poison.sum()))
  features = None
  if name in FEATURE_DETECTORS:
    _check('features_fn', features_fn, callable(features_fn),
           f'a function images -> [N, D] features for detector {name!r}')
    features = np.asarray(features_fn(np.asarray(train_set['image'])))
    _check('features_fn(images).shape', features.shape,
           features.ndim == 2 and features.shape[0] == n, f'[N, D] with N = {n}')
  scores = detector_scores(name, labels=labels, is_poison=poison, features=features,
                           seed=seed, knn_k=knn_k, ac_num_components=ac_num_components,
                           ac_reduction=ac_reduction)
  keep = remove_top(scores, m)
  detection = detection_metrics(
      scores, poison, ~keep, labels=None if target_class is None else labels,
      target_class=target_class)
  detection.update(detector=name, budget=m, num_before=n,
                   removed_indices=[int(i) for i in np.flatnonzero(~keep)])
  return filter_dataset(train_set, keep), detection


# ------------------------------------------------------------------------------------
# Feature extraction.


@functools.lru_cache(maxsize=64)
def make_features_fn(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
  """``features_fn(variables, images) -> [B, D]``: the input of the model's last Dense.

  The penultimate activations are taken as the input of the classifier head, the last
  ``flax.linen.Dense`` called in the forward pass, recorded with
  ``flax.linen.intercept_methods`` in evaluation mode (``train=False``; BatchNorm uses
  its running statistics). No model needs a special method: for every model of
  ``rsp.models`` this is the post-ReLU hidden layer (lenet 500, wide_cnn 256, mlp 512)
  or the globally pooled features (resnet20 64, preact_resnet29 256). The function
  checks, while tracing, that the model's output IS that Dense layer's output (so that
  ``logits = features @ kernel + bias``) and raises ValueError otherwise.

  Cached per model (flax modules compare by their fields) so that jitting compiles once
  per architecture.
  """

  def features_fn(variables, images):
    records = []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, nn.Dense) and context.method_name == '__call__':
        records.append((args[0], out))
      return out

    with nn.intercept_methods(interceptor):
      logits = model.apply(variables, images, train=False)
    if not records or records[-1][1] is not logits:
      raise ValueError(f'model={type(model).__name__}: its output is not the output of '
                       'its last Dense layer; accepted: models ending in a Dense head.')
    feats = records[-1][0]
    return feats.reshape(feats.shape[0], -1)

  return features_fn


@functools.partial(jax.jit, static_argnums=0)
def _jit_features(features_fn, variables, images):
  return features_fn(variables, images)


def penultimate_features(apply_fn_features: Callable[[Any, jax.Array], jax.Array],
                         variables: Any, images: Any, *, batch_size: int = 256
                         ) -> np.ndarray:
  """Features of all ``images`` by a jitted map over fixed-size batches.

  ``out[i] = apply_fn_features(variables, images[i:i+1])[0]``, computed in batches of
  ``batch_size``; the last batch is padded with zeros (and the padding dropped), so one
  compilation serves any N. Images stay on the host until each batch is sent.

  Args:
    apply_fn_features: ``f(variables, images [B, H, W, C]) -> [B, D]``, pure and
      hashable (it is a static jit argument), e.g. ``make_features_fn(model)``.
    variables: the model's variables.
    images: ``[N, H, W, C]`` float32, N >= 1.
    batch_size: >= 1.

  Returns:
    ``[N, D]`` float32 numpy array.
  """
  x = np.asarray(images, np.float32)
  _check('images.shape', x.shape, x.ndim == 4 and x.shape[0] >= 1,
         'a 4-D array [N, H, W, C] with N >= 1')
  _check('batch_size', batch_size, _is_int(batch_size) and batch_size >= 1,
         'an integer >= 1')
  n = x.shape[0]
  b = int(min(batch_size, n))
  out = []
  for start in range(0, n, b):
    chunk = x[start:start + b]
    m = chunk.shape[0]
    if m < b:
      chunk = np.concatenate([chunk, np.zeros((b - m, *x.shape[1:]), np.float32)])
    out.append(np.asarray(_jit_features(apply_fn_features, variables, chunk))[:m])
  return np.concatenate(out).astype(np.float32)


# ------------------------------------------------------------------------------------
# Training-time defenses.


def mixup(key: jax.Array, images: jax.Array, labels_onehot: jax.Array, *,
          alpha: float) -> tuple[jax.Array, jax.Array]:
  """mixup of one batch (Zhang, Cisse, Dauphin & Lopez-Paz, ICLR 2018).

  ``x~_i = lam x_i + (1 - lam) x_{pi(i)}``, ``y~_i = lam y_i + (1 - lam) y_{pi(i)}``
  with one ``lam ~ Beta(alpha, alpha)`` per batch (as in the paper's code) and ``pi`` a
  uniform random permutation of the batch, both drawn from ``key``. Pure and jittable
  (``alpha`` is a Python float). Train on the soft labels with
  ``optax.softmax_cross_entropy(logits, y~).mean()``; e.g.
  ``jax.nn.one_hot(batch['label'], num_classes)`` makes ``labels_onehot``.

  Args:
    key: ``jax.random`` key.
    images: ``[B, ...]`` float images.
    labels_onehot: ``[B, K]`` one-hot (or soft) labels.
    alpha: Beta concentration, > 0 (the paper uses 0.1 to 0.4 on ImageNet, 1 on CIFAR).

  Returns:
    ``(mixed_images [B, ...], soft_labels [B, K])``; rows of ``soft_labels`` sum to 1
    when those of ``labels_onehot`` do.
  """
  _check('alpha', alpha, _is_real(alpha) and alpha > 0, 'a float > 0')
  _check('labels_onehot.shape', tuple(labels_onehot.shape),
         labels_onehot.ndim == 2 and labels_onehot.shape[0] == images.shape[0],
         f'[B, K] with B = images.shape[0] = {images.shape[0]}')
  lam_key, perm_key = jax.random.split(key)
  lam = jax.random.beta(lam_key, alpha, alpha).astype(images.dtype)
  perm = jax.random.permutation(perm_key, images.shape[0])
  mixed = lam * images + (1.0 - lam) * images[perm]
  lam_y = lam.astype(labels_onehot.dtype)
  soft = lam_y * labels_onehot + (1.0 - lam_y) * labels_onehot[perm]
  return mixed, soft


def bit_depth_reduce(images: Any, bits: int) -> np.ndarray:
  """Squeezes each pixel to ``bits`` bits (feature squeezing, Xu et al., NDSS 2018).

  ``q(x) = round(x (2^b - 1)) / (2^b - 1)``: ``2^b`` evenly spaced levels in [0, 1]
  including 0 and 1; ``bits = 8`` is the 8-bit quantisation of stored images. PACD's
  perturbations (eps = 0.1 in rsp's MNIST configs) exceed one level for b >= 4
  (1/15 < 0.1 < 1/7), so only coarse depths can erase them, at a cost to clean accuracy.

  Args:
    images: ``[N, H, W, C]`` in [0, 1].
    bits: an integer in 1..8.

  Returns:
    ``[N, H, W, C]`` float32 in [0, 1].
  """
  x = _images(images)
  _check('bits', bits, _is_int(bits) and 1 <= bits <= 8, 'an integer in 1..8')
  levels = float(2 ** bits - 1)
  return (np.round(x * levels) / levels).astype(np.float32)


def gaussian_blur(images: Any, sigma: float) -> np.ndarray:
  """Blurs each channel of each image with a Gaussian of standard deviation ``sigma``.

  ``scipy.ndimage.gaussian_filter`` with ``sigma = (0, sigma, sigma, 0)`` over
  ``[N, H, W, C]`` (no mixing across images or channels), reflecting borders
  (``mode='reflect'``), truncated at 4 sigma; so a constant image is unchanged.
  ``sigma = 0`` returns the input.

  Args:
    images: ``[N, H, W, C]`` in [0, 1].
    sigma: in pixels, >= 0.

  Returns:
    ``[N, H, W, C]`` float32 in [0, 1].
  """
  x = _images(images)
  _check('sigma', sigma, _is_real(sigma) and sigma >= 0 and math.isfinite(sigma),
         'a finite float >= 0')
  out = scipy.ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode='reflect')
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def jpeg_compress(images: Any, quality: int) -> np.ndarray:
  """JPEG-encodes and decodes each image with Pillow.

  JPEG compression as an input purification (Dziugaite et al. 2016; Das et al. 2017).
  Each image is quantised to uint8 (``round(255 x)``), saved as JPEG at ``quality``
  (Pillow's defaults otherwise, so RGB uses 4:2:0 chroma subsampling) in mode ``'L'``
  (C = 1) or ``'RGB'`` (C = 3), decoded, and divided by 255.

  Args:
    images: ``[N, H, W, C]`` in [0, 1], C in {1, 3}.
    quality: an integer in 1..100 (Pillow's scale; 75 is its default).

  Returns:
    ``[N, H, W, C]`` float32 in [0, 1].
  """
  x = _images(images)
  _check('quality', quality, _is_int(quality) and 1 <= quality <= 100,
         'an integer in 1..100')
  _check('images.shape[-1]', x.shape[-1], x.shape[-1] in (1, 3),
         '1 (grayscale) or 3 (RGB) channels')
  as_uint8 = np.round(x * 255.0).astype(np.uint8)
  out = np.empty(x.shape, np.float32)
  for i, img in enumerate(as_uint8):
    pil = Image.fromarray(img[..., 0] if x.shape[-1] == 1 else img)  # 'L' or 'RGB'.
    buf = io.BytesIO()
    pil.save(buf, format='JPEG', quality=int(quality))
    buf.seek(0)
    decoded = np.asarray(Image.open(buf).convert(pil.mode), np.float32) / 255.0
    out[i] = decoded.reshape(x.shape[1:])
  return out


def dp_sgd_optimizer(*, learning_rate: float, l2_norm_clip: float,
                     noise_multiplier: float, seed: int,
                     momentum: float | None = None,
                     nesterov: bool = False) -> optax.GradientTransformation:
  """DP-SGD (Abadi et al., CCS 2016) as ``optax.contrib.dpsgd``.

  For per-example gradients ``g_1..g_B`` of one batch the update is

      u = -lr / B * ( sum_i g_i * min(1, C / ||g_i||_2) + N(0, (sigma C)^2 I) ),

  with ``C = l2_norm_clip`` (``||g_i||`` the global norm over the whole pytree),
  ``sigma = noise_multiplier`` and ``lr = learning_rate`` (and optional momentum). The
  optimizer's ``update`` MUST receive per-example gradients, every leaf with the batch
  on axis 0 (``per_example_grads``), not the mean gradient: given the mean gradient it
  would treat axis 0 of each parameter as examples. ``optax.MultiSteps`` and gradient
  accumulation do not compose with it. Models must not mix examples in a batch:
  BatchNorm in training mode does, so use lenet, wide_cnn, mlp or the ResNets with
  ``norm='frozen'``.

  Privacy accounting ((eps, delta) from sigma, the sampling rate and the number of
  steps) is not done here. As a poisoning defense (Ma, Zhu & Hsu, IJCAI 2019), an
  (eps, delta)-DP learner bounds the effect of a group of m changed points only through
  group privacy, ``e^{m eps}``, which for PACD's hundreds of modified images is vacuous;
  its practical effect (clipping bounds each poison's pull on the weights) is empirical.

  Args:
    learning_rate: the step size (or an optax schedule).
    l2_norm_clip: C > 0.
    noise_multiplier: sigma >= 0 (0: clipping only, no noise).
    seed: seeds the noise.
    momentum, nesterov: as ``optax.contrib.dpsgd``.

  Returns:
    An ``optax.GradientTransformation``.
  """
  _check('l2_norm_clip', l2_norm_clip, _is_real(l2_norm_clip) and l2_norm_clip > 0,
         'a float > 0')
  _check('noise_multiplier', noise_multiplier,
         _is_real(noise_multiplier) and noise_multiplier >= 0, 'a float >= 0')
  _check('seed', seed, _is_int(seed) and seed >= 0, 'an integer >= 0')
  with warnings.catch_warnings():
    # optax.contrib.dpsgd passes its own ``seed`` on to a deprecated argument.
    warnings.filterwarnings('ignore', message='.*seed.*deprecated.*')
    return optax.contrib.dpsgd(learning_rate=learning_rate, l2_norm_clip=l2_norm_clip,
                               noise_multiplier=noise_multiplier, seed=int(seed),
                               momentum=momentum, nesterov=nesterov)


def per_example_grads(loss_fn: Callable[..., Any], params: Any, batch: Any,
                      key: jax.Array, *, has_aux: bool = False) -> Any:
  """Per-example gradients ``[B, ...]`` by ``jax.vmap(jax.grad(loss_fn))``.

  ``grads[i] = d/dparams loss_fn(params, batch_i, key_i)`` where ``batch_i`` is example
  i as a batch of one (every leaf of ``batch`` sliced to ``[1, ...]``) and
  ``key_i = jax.random.split(key, B)[i]``, so a loss written for batches applies
  unchanged; e.g. for ``rsp.robust_training``,
  ``loss_fn = lambda p, b, k: rt.gaussian_loss(p, {}, b, k, apply_fn=...)`` with
  ``has_aux=True``. Feed the result to ``dp_sgd_optimizer(...).update``. Jittable.

  Under ``jit`` with the batch sharded across devices, jax 0.10.2's SPMD partitioning
  of the vmapped convolution-kernel gradients was wrong on CPU for the examples off the
  first device (dense layers were right); ``rsp.train`` therefore calls this inside
  ``jax.shard_map``, each device on its own examples.

  Args:
    loss_fn: ``loss_fn(params, batch, key) -> scalar`` (or ``(scalar, aux)`` with
      ``has_aux``).
    params: the differentiated parameters.
    batch: a pytree of arrays with the batch on axis 0 (e.g. ``{'image', 'label'}``).
    key: a ``jax.random`` key.
    has_aux: whether ``loss_fn`` also returns auxiliary data.

  Returns:
    The gradient pytree, each leaf ``[B, *param.shape]`` (and the per-example aux, each
    leaf with a leading B, if ``has_aux``).
  """
  leaves = jax.tree_util.tree_leaves(batch)
  _check('batch', type(batch).__name__, bool(leaves) and all(
      getattr(l, 'ndim', 0) >= 1 for l in leaves), 'a pytree of arrays [B, ...]')
  b = leaves[0].shape[0]

  def single(p, example, k):
    return loss_fn(p, jax.tree_util.tree_map(lambda v: v[None], example), k)

  keys = jax.random.split(key, b)
  return jax.vmap(jax.grad(single, has_aux=has_aux), in_axes=(None, 0, 0))(
      params, batch, keys)


# ------------------------------------------------------------------------------------
# Deep Partition Aggregation.


def dpa_partition(num_items: int, k: int, *, images: Any = None,
                  seed: int = 0) -> np.ndarray:
  """Partition ids of DPA's ``k`` base classifiers (Levine & Feizi, ICLR 2021).

  ``id_i = int(SHA-256(seed || bytes(x_i))[:8]) mod k`` (big-endian; ``seed`` as 8
  little-endian bytes; ``x_i`` as C-ordered float32), so the partition of a training
  point is a deterministic function of its content alone, as DPA's certificate needs:
  equal images share a partition whatever their position. Without ``images`` the item's
  index i (8 little-endian bytes) is hashed instead, which is deterministic but only
  valid against attacks that cannot choose positions.

  What the certificate counts: DPA certifies against ``r`` insertions or removals of
  training points, each of which changes the training set of at most one partition. A
  *modified* image is one removal and one insertion: with content hashing it may move
  to another partition and so change two partitions' training sets (with index hashing,
  only its own). Count a modification as 2 when comparing ``r`` with a budget, or count
  the partitions actually touched (``partitions_touched``).

  Args:
    num_items: N >= 1.
    k: number of partitions, >= 1.
    images: optional ``[N, ...]`` training images (labels are not hashed: PACD is
      clean-label).
    seed: an integer >= 0 mixed into the hash (a different seed, a different partition).

  Returns:
    ``[N]`` int64 partition ids in [0, k).
  """
  _check('num_items', num_items, _is_int(num_items) and num_items >= 1, 'an integer >= 1')
  _check('k', k, _is_int(k) and k >= 1, 'an integer >= 1')
  _check('seed', seed, _is_int(seed) and 0 <= seed < 2 ** 64, 'an integer in [0, 2^64)')
  prefix = int(seed).to_bytes(8, 'little')
  if images is not None:
    x = np.ascontiguousarray(np.asarray(images, np.float32))
    _check('images.shape', x.shape, x.ndim >= 2 and x.shape[0] == num_items,
           f'[N, ...] with N = num_items = {num_items}')
    items = (x[i].tobytes() for i in range(num_items))
  else:
    items = (int(i).to_bytes(8, 'little') for i in range(num_items))
  ids = np.empty(num_items, np.int64)
  for i, data in enumerate(items):
    digest = hashlib.sha256(prefix + data).digest()
    ids[i] = int.from_bytes(digest[:8], 'big') % k
  return ids


def dpa_votes(predictions: Any, num_classes: int | None = None) -> np.ndarray:
  """Vote counts of DPA's base classifiers: ``counts[m, c] = |{i : pred[i, m] = c}|``.

  Args:
    predictions: ``[k, M]`` integer class predictions of k base classifiers on M
      test points.
    num_classes: C >= 2; if None, ``max(predictions) + 1`` (at least 2).

  Returns:
    ``[M, C]`` int64 counts; each row sums to k.
  """
  p = np.asarray(predictions)
  _check('predictions.shape', p.shape, p.ndim == 2, 'a 2-D array [k, M]')
  _check('predictions.dtype', p.dtype, np.issubdtype(p.dtype, np.integer),
         'integer class indices')
  c = max(int(p.max(initial=0)) + 1, 2) if num_classes is None else num_classes
  _check('num_classes', num_classes, _is_int(c) and c >= 2, 'an integer >= 2 or None')
  _check('predictions', f'<values in [{p.min(initial=0)}, {p.max(initial=0)}]>',
         p.size == 0 or (p.min() >= 0 and p.max() < c), f'values in [0, {c})')
  m = p.shape[1]
  flat = (np.arange(m)[None, :] * c + p).ravel()
  return np.bincount(flat, minlength=m * c).reshape(m, c).astype(np.int64)


def dpa_certify(counts: Any) -> tuple[np.ndarray, np.ndarray]:
  """DPA's prediction and certified poisoning size (Levine & Feizi 2021, Theorem 1).

  ``g(x) = argmax_c n_c`` with ties toward the smaller class index, and

      r = floor( (n_g - max_{c != g} (n_c + 1[c < g])) / 2 )
        = floor( (n_top - n_second - 1[second < top]) / 2 ),

  with ``second`` the runner-up (ties to the smaller index): the prediction cannot
  change under any r insertions/removals of training points, since each changes one
  partition's training set and so one vote, and ``r`` changed votes close the gap by at
  most ``2r``. ``r >= 0`` always; it is at most ``floor(k / 2)``.

  When it is vacuous: a modified image counts 2 (see ``dpa_partition``), so a budget of
  m modified images needs ``r >= 2m`` (or ``r >=`` the partitions actually touched),
  which needs ``k >= 4m`` partitions at the very least. PACD modifies all 350 target
  training images of ``mnist_embedded`` (about 5,500 on MNIST), so no point is
  certified against it with fewer than 1,400 (about 22,000) partitions, i.e. 2.5
  images per partition of ``mnist_embedded``'s 3,500 (and of MNIST's 55,000): base
  classifiers that cannot learn. The per-attack check (``r >=`` the touched count) does
  no better: the ``2m`` partitions a modification can touch cover nearly all ``k``
  when ``k`` is below ``2m``, and ``r <= k / 2``.

  Args:
    counts: ``[M, C]`` nonnegative integer vote counts (``dpa_votes``), C >= 2.

  Returns:
    ``(prediction [M] int64, certified_poison_count [M] int64)``.
  """
  n = np.asarray(counts)
  _check('counts.shape', n.shape, n.ndim == 2 and n.shape[1] >= 2,
         'a 2-D array [M, C] with C >= 2')
  _check('counts', '<non-integer or negative values>',
         np.issubdtype(n.dtype, np.integer) and (n.size == 0 or n.min() >= 0),
         'nonnegative integers')
  n = n.astype(np.int64)
  m, c = n.shape
  top = np.argmax(n, axis=1)  # First maximum: ties to the smaller index.
  rows = np.arange(m)
  adjusted = n + (np.arange(c)[None, :] < top[:, None])
  adjusted[rows, top] = np.iinfo(np.int64).min
  gap = n[rows, top] - adjusted.max(axis=1)
  return top.astype(np.int64), (gap // 2).astype(np.int64)


def partitions_touched(partition_ids: Any, modified_indices: Any,
                       new_partition_ids: Any = None) -> np.ndarray:
  """The distinct partitions whose training set the modified images change.

  A modified image i changes the partition it leaves, ``partition_ids[i]``, and the one
  it joins, ``new_partition_ids[i]`` (the ids recomputed on the poisoned images, which
  differ under content hashing); give only ``partition_ids`` when the assignment does not
  depend on content. A test point whose DPA certificate ``r`` is at least the number of
  touched partitions keeps its prediction under THIS poison set (a per-attack check,
  tighter than the worst-case budget ``2m``).

  Args:
    partition_ids: ``[N]`` ids of the clean training set.
    modified_indices: indices of the modified training points.
    new_partition_ids: optional ``[N]`` ids of the poisoned training set.

  Returns:
    Sorted unique int64 partition ids; its length is the count to compare with ``r``.
  """
  ids = _vector(partition_ids, 'partition_ids')
  idx = np.asarray(modified_indices).reshape(-1)
  _check('modified_indices', '<array>', idx.size == 0 or (
      np.issubdtype(idx.dtype, np.integer) and idx.min() >= 0 and idx.max() < ids.size),
         f'integer indices in [0, {ids.size})')
  idx = idx.astype(np.int64)
  touched = ids[idx]
  if new_partition_ids is not None:
    new = _vector(new_partition_ids, 'new_partition_ids', ids.size)
    touched = np.concatenate([touched, new[idx]])
  return np.unique(touched).astype(np.int64)


def dpa_certified_accuracy(certified: Any, correct: Any,
                           budget: Any) -> float | np.ndarray:
  """Fraction of test points predicted correctly AND certified for ``budget``.

  ``acc(b) = 1/M sum_m 1[correct_m] 1[r_m >= b]``, with ``r`` from ``dpa_certify`` and
  ``b`` in DPA's unit, insertions/removals (2 per modified image under content hashing,
  or the touched-partition count).

  Args:
    certified: ``[M]`` certified counts r.
    correct: ``[M]`` bool, DPA's prediction equals the label.
    budget: an integer >= 0, or an array of them (one accuracy each).

  Returns:
    A float, or a float64 array shaped like ``budget``.
  """
  r = _vector(certified, 'certified')
  ok = _bool_vector(correct, 'correct', r.size)
  b = np.asarray(budget)
  _check('budget', budget, np.issubdtype(b.dtype, np.integer) and bool(np.all(b >= 0)),
         'an integer >= 0 or an array of them')
  _check('certified', '<empty>', r.size >= 1, 'at least one test point')
  acc = np.mean(ok[None, :] & (r[None, :] >= b.reshape(-1, 1)), axis=1).reshape(b.shape)
  return float(acc) if acc.ndim == 0 else acc
