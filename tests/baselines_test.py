"""Tests of rsp.baselines: every random baseline stays within its eps budget, and the
zero-mean one has mean zero.

The random draws use fixed keys, so the tests are deterministic; the mean bounds say
how likely a failure would be for another key."""

import jax
import numpy as np
import pytest

from rsp import baselines
from rsp import data


@pytest.fixture(scope='module')
def train_split():
  return data.load('mnist_embedded', seed=0)['train']


def test_sign_and_uniform_poisons_respect_the_budget(train_split):
  idx, p = baselines.random_poisons(jax.random.key(0), train_split, target_class=8,
                                    eps=0.1)
  clean = train_split['image'][idx]
  assert np.array_equal(idx, data.class_indices(train_split, 8))
  assert np.abs(p - clean).max() <= 0.1 + 1e-6 and p.min() >= 0 and p.max() <= 1
  _, u = baselines.random_poisons(jax.random.key(0), train_split, target_class=8,
                                  eps=0.1, kind='uniform')
  interior = (clean >= 0.1) & (clean <= 0.9)  # Where clipping cannot act.
  # 350*784 draws of U[-0.1, 0.1]: the interior mean within 0.005 fails with
  # probability below 1e-9.
  assert abs(float((u - clean)[interior].mean())) < 0.005
  assert float((u - clean)[clean == 0].min()) >= 0  # Clipped: one-sided on black.
  with pytest.raises(ValueError, match='kind'):
    baselines.random_poisons(jax.random.key(0), train_split, target_class=8, eps=0.1,
                             kind='gaussian')


def test_zero_mean_random_poisons_leave_the_bounds_alone(train_split):
  eps = 0.1
  idx, poisons = baselines.random_poisons(jax.random.key(0), train_split,
                                          target_class=8, eps=eps, kind='zero_mean')
  clean = train_split['image'][idx]
  assert np.array_equal(idx, data.class_indices(train_split, 8))
  delta = poisons - clean
  interior = (clean >= eps) & (clean <= 1 - eps)
  assert np.all(delta[~interior] == 0)
  assert np.allclose(np.abs(delta[interior]), eps, atol=1e-6)  # Never clipped.
  # Rademacher signs: the mean of m of them has std eps / sqrt(m); a 5-sigma bound
  # fails with probability below 1e-6.
  m = int(interior.sum())
  assert abs(delta[interior].mean()) < 5 * eps / np.sqrt(m)


def test_saved_baseline_is_a_valid_poison_file(train_split, tmp_path):
  path = str(tmp_path / 'random.npz')
  baselines.save_random_baseline(path, jax.random.key(3), train_split, name='random',
                                 target_class=8, eps=0.1,
                                 metadata={'dataset': 'mnist_embedded', 'seed': 3})
  loaded = data.load_poisons(path, train=train_split)  # Validates shape, range, eps.
  _, expected = baselines.random_poisons(jax.random.key(3), train_split, target_class=8,
                                         eps=0.1)
  np.testing.assert_array_equal(loaded['poisons'], expected)
  assert loaded['metadata']['kind'] == 'random' and loaded['metadata']['noise'] == 'sign'
  with pytest.raises(ValueError, match='not a random baseline'):
    baselines.save_random_baseline(path, jax.random.key(0), train_split,
                                   name='no_target', target_class=8, eps=0.1,
                                   metadata={})


def test_without_target_class(train_split):
  out = baselines.without_target_class(train_split, 8)
  assert 8 not in set(out['label'].tolist())
  assert len(out['label']) == len(train_split['label']) - int(
      np.sum(train_split['label'] == 8))
