"""Tests of rsp.validation: the messages name the argument, its value and what is accepted.

Deterministic: no randomness.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rsp import validation


def test_check_choice():
  validation.check_choice('config.model', 'lenet', ('lenet', 'mlp'))
  with pytest.raises(ValueError, match=r"config.model='resnet' is not known; accepted: "
                     r'lenet, mlp\.'):
    validation.check_choice('config.model', 'resnet', ('lenet', 'mlp'))


@pytest.mark.parametrize('value', [3, np.int64(3), np.int32(1)])
def test_check_int_accepts_python_and_numpy_integers(value):
  validation.check_int('n', value, 1, 5)


@pytest.mark.parametrize('value,message', [
    (0, r'n=0 must be an integer >= 1\.'),
    (2.0, r'n=2.0 must be an integer >= 1\.'),
    (True, r'n=True must be an integer >= 1\.'),
    ('3', r"n='3' must be an integer >= 1\."),
    (None, r'n=None must be an integer >= 1\.'),
    (6, r'n=6 must be at most 5\.'),
])
def test_check_int_refuses(value, message):
  with pytest.raises(ValueError, match=message):
    validation.check_int('n', value, 1, 5)


def test_check_int_minimum_and_meaning():
  validation.check_int('config.train_subset', 0, 0)
  with pytest.raises(ValueError, match=r'config.train_subset=-1 must be an integer >= 0 '
                     r'\(0: all\)\.'):
    validation.check_int('config.train_subset', -1, 0, meaning='0: all')


def test_check_ints_names_the_field():
  c = ml_collections.ConfigDict({'a': 1, 'b': 0})
  validation.check_ints('config.', c, ('a',))
  with pytest.raises(ValueError, match=r'config.b=0 must be an integer >= 1\.'):
    validation.check_ints('config.', c, ('a', 'b'))
  with pytest.raises(ValueError, match=r'config.missing=None'):
    validation.check_ints('config.', c, ('missing',))


def test_nested_names_fields_by_their_full_path():
  with pytest.raises(ValueError) as e:
    with validation.nested('config.victims.gaussian'):
      validation.check_int('config.num_epochs', 0)
  assert str(e.value) == ('config.victims.gaussian.num_epochs=0 must be an integer '
                          '>= 1.')
  with pytest.raises(ValueError, match=r'^config\.certify: n=5 is too small$'):
    with validation.nested('config.certify'):
      raise ValueError('n=5 is too small')
  with pytest.raises(ValueError, match=r'in the config\.$'):  # Not a field name.
    with validation.nested('config.attacks.x'):
      raise ValueError('config.attack.sigma must be set in the config.')
  with validation.nested('config.x'):
    pass  # Nothing raised, nothing changed.


def test_names_choices_and_distinct_ints():
  assert validation.names('config.archs', ('lenet, mlp', 'wide_cnn')) == (
      'lenet', 'mlp', 'wide_cnn')  # Command lines give comma-separated strings.
  assert validation.names('config.archs', 'lenet') == ('lenet',)
  with pytest.raises(ValueError, match=r"config\.archs=.* repeats a name"):
    validation.names('config.archs', ('lenet', 'lenet'))
  with pytest.raises(ValueError, match='must hold names'):
    validation.names('config.archs', ('lenet', 3))
  validation.check_choices('config.archs', ('lenet',), ('lenet', 'mlp'))
  with pytest.raises(ValueError, match=r"config\.archs=\('vit',\) has unknown \['vit'\]; "
                     r'accepted: lenet, mlp\.'):
    validation.check_choices('config.archs', ('vit',), ('lenet', 'mlp'))
  assert validation.distinct_ints('config.seeds', '0,1, 2') == (0, 1, 2)
  assert validation.distinct_ints('config.seeds', np.int64(3)) == (3,)
  for bad in ((0, 0), (), (-1,), ('a',)):
    with pytest.raises(ValueError, match='config.seeds'):
      validation.distinct_ints('config.seeds', bad)


@pytest.mark.parametrize('value,expected', [
    (0.5, 0.5), (3, 3.0), (np.float32(0.25), 0.25), (np.int64(2), 2.0),
    (np.asarray(0.5), 0.5), (jnp.float32(0.5), 0.5), (jnp.asarray(7), 7.0),
])
def test_real_number_accepts_numbers_and_0d_arrays(value, expected):
  result = validation.real_number(value)
  assert isinstance(result, float) and result == expected


@pytest.mark.parametrize('value', [True, np.bool_(False), '0.5', None, [0.5],
                                   np.zeros(2), jnp.zeros(1), jnp.asarray(True)])
def test_real_number_refuses_the_rest(value):
  assert validation.real_number(value) is None


def test_real_number_of_a_traced_value_is_none():
  seen = []
  jax.jit(lambda x: seen.append(validation.real_number(x)) or x)(1.0)
  assert seen == [None]
