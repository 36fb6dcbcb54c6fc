"""Tests of rsp.checkpointing: save/restore round trips, restore_or_init, retention, logs,
odd directories and the fallback from a damaged newest checkpoint.

All deterministic (no random failures): the arrays are fixed and compared bit for bit.
"""

import logging
import os

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsp import checkpointing
from rsp import workdir as workdir_lib


def _state(offset: float = 0.0):
  return {'params': {'w': jnp.arange(6, dtype=jnp.float32).reshape(2, 3) + offset,
                     'b': jnp.full((3,), 0.5 + offset, jnp.float32)},
          'count': jnp.asarray(7, jnp.int32),
          'key': jax.random.key_data(jax.random.key(3))}


def _assert_same(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_restore_or_init_returns_init_then_the_latest_save(tmp_path):
  init = _state()
  with checkpointing.Checkpointer(str(tmp_path / 'ckpt')) as ckpt:
    assert ckpt.latest_step() is None
    state, meta = ckpt.restore_or_init(init, {'epoch': 0})
    _assert_same(state, init)
    assert meta == {'epoch': 0}
    ckpt.save(1, _state(1.0), {'epoch': 1, 'note': 'first'})
    ckpt.save(5, _state(5.0), {'epoch': 5, 'history': [1.5, 2.5]})
  # A new Checkpointer on the same directory (a restarted run) sees step 5.
  with checkpointing.Checkpointer(str(tmp_path / 'ckpt')) as ckpt:
    assert ckpt.latest_step() == 5
    state, meta = ckpt.restore_or_init(init, {'epoch': 0})
    _assert_same(state, _state(5.0))
    assert meta == {'epoch': 5, 'history': [1.5, 2.5]}
    state1, meta1 = ckpt.restore(1, init)
    _assert_same(state1, _state(1.0))
    assert meta1 == {'epoch': 1, 'note': 'first'}


def test_max_to_keep_drops_old_steps_and_a_saved_step_is_never_overwritten(tmp_path):
  directory = str(tmp_path / 'ckpt')
  with checkpointing.Checkpointer(directory, max_to_keep=2) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _state(float(step)), {'step': step})
    with pytest.raises(Exception, match='already exists'):
      ckpt.save(3, _state(30.0), {'again': True})
    state, meta = ckpt.restore(3, _state())
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  assert steps == [2, 3]
  _assert_same(state, _state(3.0))  # The refused save left step 3 as it was.
  assert meta == {'step': 3}


def test_bad_max_to_keep_is_refused_before_any_directory_is_made(tmp_path):
  with pytest.raises(ValueError, match='max_to_keep=0'):
    checkpointing.Checkpointer(str(tmp_path / 'never'), max_to_keep=0)
  assert not os.path.exists(tmp_path / 'never')


def test_quiet_orbax_logging_filters_orbax_info_only():
  checkpointing.quiet_orbax_logging()
  checkpointing.quiet_orbax_logging()  # Idempotent: one filter.
  handler = absl_logging.get_absl_handler()
  assert handler.filters.count(checkpointing._not_orbax_info) == 1

  def record(level, path):
    return logging.LogRecord('x', level, path, 1, 'message', None, None)

  orbax_file = os.path.join(os.sep, 'site-packages', 'orbax', 'checkpoint', 'x.py')
  assert not checkpointing._not_orbax_info(record(logging.INFO, orbax_file))
  assert checkpointing._not_orbax_info(record(logging.WARNING, orbax_file))
  assert checkpointing._not_orbax_info(record(logging.INFO, '/work/rsp/train.py'))


def test_a_file_where_the_directory_belongs_is_refused_at_once(tmp_path):
  (tmp_path / 'ckpt').write_text('')
  with pytest.raises(workdir_lib.WorkdirError, match='ckpt.*is a file'):
    checkpointing.Checkpointer(str(tmp_path / 'ckpt'))


def test_a_damaged_newest_step_falls_back_and_is_set_aside_when_saved_again(tmp_path,
                                                                            caplog):
  directory = str(tmp_path / 'ckpt')
  with checkpointing.Checkpointer(directory) as ckpt:
    ckpt.save(1, _state(1.0), {'step': 1})
    ckpt.save(2, _state(2.0), {'step': 2})
  meta_file = os.path.join(directory, '2', 'meta', 'metadata')
  with open(meta_file, 'r+b') as f:
    f.truncate(os.path.getsize(meta_file) // 2)
  with checkpointing.Checkpointer(directory) as ckpt:
    with caplog.at_level('WARNING'):
      state, meta = ckpt.restore_or_init(_state(), {'step': 0})
    _assert_same(state, _state(1.0))
    assert meta == {'step': 1}
    assert 'step 2' in caplog.text and 'falling back' in caplog.text
    assert sorted(os.listdir(directory)) == ['1', '2']  # Nothing moved yet.
    ckpt.save(2, _state(22.0), {'step': 2})
    _assert_same(ckpt.restore(2, _state())[0], _state(22.0))
  assert sorted(os.listdir(directory)) == ['1', '2', '2.corrupt']
  with checkpointing.Checkpointer(directory) as ckpt:
    assert ckpt.latest_step() == 2


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  directory = str(tmp_path / 'ckpt')
  with checkpointing.Checkpointer(directory) as ckpt:
    ckpt.save(1, _state(1.0))
  with checkpointing.Checkpointer(directory) as ckpt:
    with pytest.raises(workdir_lib.WorkdirError, match='no checkpoint .* can be restored'):
      ckpt.restore_or_init({'other': jnp.zeros(3)})
  assert sorted(os.listdir(directory)) == ['1']  # Left as it was.
