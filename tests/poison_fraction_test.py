"""Poisoning a fraction of the target class: rsp.data.poison_indices, the random
baselines, PACD and the protocol's training sets and checks.

Deterministic (fixed seeds and keys): no test can fail by chance."""

import os

import jax
import numpy as np
import pytest

from rsp import attack
from rsp import baselines
from rsp import cells as cells_lib
from rsp import data
from rsp import protocol
from rsp.configs import poison_mnist
from rsp.configs import protocol as protocol_config

jax.config.update('jax_disable_most_optimizations', True)


@pytest.fixture(scope='module')
def splits():
  return data.load('mnist_embedded', seed=0)


@pytest.mark.parametrize('fraction,count', [
    (1.0, 350), (0.5, 175), (0.25, 88),  # 87.5 rounds half to even.
    (0.1, 35), (0.0015, 1), (1 / 350, 1)])
def test_poison_indices_are_round_f_n_of_the_class(splits, fraction, count):
  train = splits['train']
  idx = data.poison_indices(train, 8, fraction, seed=3)
  assert len(idx) == count == round(fraction * 350)
  assert np.all(train['label'][idx] == 8) and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(idx, data.poison_indices(train, 8, fraction, seed=3))


def test_poison_indices_depend_on_the_seed_and_nest(splits):
  train = splits['train']
  a, b = (data.poison_indices(train, 8, 0.25, seed=s) for s in (0, 1))
  assert not np.array_equal(a, b)
  half = data.poison_indices(train, 8, 0.5, seed=0)
  assert set(a) <= set(half)  # One seed: the smaller fraction's points lie in the larger.
  np.testing.assert_array_equal(data.poison_indices(train, 8, 1.0, seed=5),
                                data.class_indices(train, 8))


@pytest.mark.parametrize('fraction', [0.0, -0.5, 1.01, float('nan'), '0.5', None, True])
def test_fractions_outside_zero_one_are_refused(splits, fraction):
  with pytest.raises(ValueError, match=r'poison_fraction=.* must be a number in \(0, 1\]'):
    data.poison_indices(splits['train'], 8, fraction)
  with pytest.raises(ValueError, match=r'^poison_fraction='):
    baselines.random_poisons(jax.random.key(0), splits['train'], target_class=8,
                             eps=0.1, poison_fraction=fraction)
  config = poison_mnist.get_config('gaussian,tiny')
  config.poison_fraction = fraction if isinstance(fraction, float) else 0.0
  with pytest.raises(ValueError, match=r'^config\.poison_fraction='):
    attack.validate_config(config)


def test_a_fraction_that_rounds_to_no_image_is_refused(splits):
  with pytest.raises(ValueError, match=r'config\.poison_fraction=0\.001 poisons '
                     r'round\(0\.001 \* 350\) = 0 .*accepted: a fraction above 0\.00143'):
    data.poison_indices(splits['train'], 8, 0.001, name='config.poison_fraction')


@pytest.mark.parametrize('name', sorted(baselines.RANDOM_KINDS))
def test_random_baseline_file_holds_the_fraction(splits, tmp_path, name):
  train = splits['train']
  path = str(tmp_path / f'{name}.npz')
  baselines.save_random_baseline(path, jax.random.key(0), train, name=name,
                                 target_class=3, eps=0.1, metadata={},
                                 poison_fraction=0.5, subset_seed=7)
  f = data.load_poisons(path, train=train)
  np.testing.assert_array_equal(f['indices'], data.poison_indices(train, 3, 0.5, 7))
  assert len(f['indices']) == 175 and np.all(f['labels'] == 3)
  assert (f['metadata']['poison_fraction'], f['metadata']['poison_subset_seed'],
          f['metadata']['num_class_images']) == (0.5, 7, 350)
  again = str(tmp_path / 'again.npz')
  baselines.save_random_baseline(again, jax.random.key(0), train, name=name,
                                 target_class=3, eps=0.1, metadata={},
                                 poison_fraction=0.5, subset_seed=7)
  np.testing.assert_array_equal(data.load_poisons(again)['poisons'], f['poisons'])


def test_pacd_optimises_only_the_drawn_fraction(splits, tmp_path):
  config = poison_mnist.get_config('gaussian,tiny')
  config.poison_fraction = 0.25
  config.poison_subset_seed = 4
  result = attack.pacd(config, splits, str(tmp_path))
  f = data.load_poisons(result.path, train=splits['train'])
  expected = data.poison_indices(splits['train'], 8, 0.25, 4)
  np.testing.assert_array_equal(f['indices'], expected)
  assert len(expected) == 88 and np.all(f['labels'] == 8)
  meta = f['metadata']
  assert (meta['poison_fraction'], meta['poison_subset_seed'],
          meta['num_class_images']) == (0.25, 4, 350)
  moved = np.abs(f['poisons'] - f['clean_images']).reshape(88, -1).max(1)
  assert np.sum(moved > 0) >= config.attack.poison_batch_size  # It optimised them.
  # The victim's training set: those 88 replaced, the other 262 images of class 8 clean.
  poison_set = protocol.PoisonSet(
      name='pacd_gaussian', poison='pacd', crafted_against='gaussian',
      indices=f['indices'], poisons=f['poisons'], clean_images=f['clean_images'],
      metadata=meta, path=result.path)
  cell = cells_lib.Cell('gaussian', 'lenet', 'pacd', 'gaussian', 0)
  victim = cells_lib.victim_config(protocol_config.get_config('tiny'), cell)
  victim.train_subset = 0
  train = protocol.training_set(cell, splits['train'], {'pacd_gaussian': poison_set},
                                victim)
  rest = np.setdiff1d(data.class_indices(splits['train'], 8), expected)
  np.testing.assert_array_equal(train['image'][rest], splits['train']['image'][rest])
  np.testing.assert_array_equal(train['image'][expected], f['poisons'])
  assert os.path.isfile(tmp_path / 'poisons.npz')


@pytest.mark.parametrize('path,value,match', [
    ('poison_fraction', 0.0, r'^config\.poison_fraction=0\.0 must be a number in \(0, 1\]'),
    ('poison_fraction', 2.0, r'^config\.poison_fraction=2\.0 must be'),
    ('poison_subset_seed', -1, r'^config\.poison_subset_seed=-1 must be an integer >= 0'),
])
def test_protocol_refuses_a_bad_fraction(path, value, match):
  config = protocol_config.get_config('tiny')
  config[path] = value
  with pytest.raises(ValueError, match=match):
    protocol.validate_config(config)


def test_protocol_fraction_reaches_the_attack_and_the_spec():
  config = protocol_config.get_config('tiny')
  config.poison_fraction = 0.5
  config.poison_subset_seed = 2
  protocol.validate_config(config)
  key = cells_lib.PoisonKey('pacd', 'gaussian')
  a = cells_lib.attack_config(config, 'gaussian', key)
  assert (a.poison_fraction, a.poison_subset_seed, a.eps, a.target_class) == (0.5, 2,
                                                                              0.1, 8)
  spec = cells_lib.poison_spec(config, key)
  assert (spec['poison_fraction'], spec['poison_subset_seed']) == (0.5, 2)
  # At fraction 1 neither is recorded: a workdir made before fractions existed matches.
  config.poison_fraction = 1.0
  assert 'poison_fraction' not in cells_lib.poison_spec(config, key)
  assert 'poison_subset_seed' not in cells_lib.poison_spec(config, key)
