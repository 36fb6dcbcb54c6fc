"""Tests of rsp.workdir: atomic writes, strict JSON, JSON lines, settings checks.

Everything here is deterministic file handling: no test can fail by chance.
"""

import json
import os

import ml_collections
import numpy as np
import pytest

from rsp import workdir as workdir_lib


def _files(directory):
  return sorted(os.listdir(directory))


def test_write_json_is_strict_and_round_trips(tmp_path):
  path = str(tmp_path / 'a' / 'x.json')
  obj = {'a': np.float32(0.5), 'b': np.arange(3), 'c': (1, 2), 'nan': float('nan'),
         'inf': np.float64(np.inf), 'cfg': ml_collections.ConfigDict({'k': 1}),
         's': {3, 1}, 'flag': True}
  workdir_lib.write_json(path, obj)
  with open(path) as f:
    text = f.read()
  assert 'NaN' not in text and 'Infinity' not in text
  back = json.loads(text)
  assert back == {'a': 0.5, 'b': [0, 1, 2], 'c': [1, 2], 'nan': None, 'inf': None,
                  'cfg': {'k': 1}, 's': [1, 3], 'flag': True}
  assert _files(tmp_path / 'a') == ['x.json']


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / 'x.json')
  workdir_lib.write_json(path, {'v': 1})
  with pytest.raises(TypeError):
    workdir_lib.write_json(path, {'v': object()})
  with pytest.raises(RuntimeError):
    with workdir_lib.atomic_file(path) as f:
      f.write('partial')
      raise RuntimeError('killed')
  assert workdir_lib.read_json(path) == {'v': 1}
  assert _files(tmp_path) == ['x.json']


def test_truncated_json_names_the_file(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text('{"seed": 0, "eps"')
  with pytest.raises(workdir_lib.WorkdirError, match='config.json.*truncated'):
    workdir_lib.read_json(str(path))


def test_file_where_directory_belongs(tmp_path):
  (tmp_path / 'checkpoints').write_text('')
  with pytest.raises(workdir_lib.WorkdirError, match='checkpoints.*is a file'):
    workdir_lib.ensure_directory(str(tmp_path / 'checkpoints'), name='checkpoint_dir')
  with pytest.raises(workdir_lib.WorkdirError, match='parent'):
    workdir_lib.ensure_directory(str(tmp_path / 'checkpoints' / 'x'))


def test_read_only_directory_is_reported(tmp_path, monkeypatch):
  """Permission bits do not stop root (CI runs as root), so the refusal is simulated."""
  def refuse(*args, **kwargs):
    raise PermissionError(13, 'Permission denied')
  monkeypatch.setattr(workdir_lib.tempfile, 'mkstemp', refuse)
  with pytest.raises(workdir_lib.WorkdirError, match='read-only'):
    workdir_lib.write_json(str(tmp_path / 'x.json'), {})
  assert _files(tmp_path) == []


def test_json_lines_trim_drops_steps_past_resume_and_partial_line(tmp_path):
  path = str(tmp_path / 'm.jsonl')
  with workdir_lib.JsonLinesWriter(path) as w:
    for step in (1, 2, 3, 4):
      w.write_scalars(step, {'loss': np.float32(step / 2), 'phase': 'train'})
  with open(path, 'a') as f:
    f.write('{"step": 5, "lo')  # Killed mid-line.
  assert [r['step'] for r in workdir_lib.read_json_lines(path)] == [1, 2, 3, 4]
  workdir_lib.trim_json_lines(path, 2)
  assert workdir_lib.read_json_lines(path) == [
      {'step': 1, 'loss': 0.5, 'phase': 'train'},
      {'step': 2, 'loss': 1.0, 'phase': 'train'}]
  with open(path) as f:
    assert f.read().endswith('\n')
  with pytest.raises(ValueError, match='step'):
    workdir_lib.JsonLinesWriter(path).write_scalars(3, {'step': 1})


def test_check_settings_lists_every_difference_and_the_overrides(tmp_path):
  path = str(tmp_path / 'config.json')
  assert not workdir_lib.check_settings(path, {'seed': 0})
  workdir_lib.write_json(path, {'seed': 0, 'eps': 0.1, 'num_epochs': 2,
                                'victims': {'g': {'num_epochs': 3, 'sigma': 0.5}}})
  same = {'seed': 0, 'eps': 0.1, 'num_epochs': 9,
          'victims': {'g': {'num_epochs': 5, 'sigma': 0.5}}}
  assert workdir_lib.check_settings(path, same, resumable=('num_epochs',))
  with pytest.raises(workdir_lib.SettingsMismatchError) as e:
    workdir_lib.check_settings(
        path, {'seed': 1, 'eps': 0.05, 'num_epochs': 2,
               'victims': {'g': {'num_epochs': 3, 'sigma': 1.0}}}, what='attack')
  message = str(e.value)
  assert 'attack' in message
  assert 'seed: 0 there, 1 now' in message
  assert 'eps: 0.1 there, 0.05 now' in message
  assert 'victims.g.sigma: 0.5 there, 1.0 now' in message
  assert '--config.seed=0' in message and 'new workdir' in message


def test_a_field_added_later_matches_its_old_behaviour_only(tmp_path):
  """A record made before ``num_surrogates`` existed (``ADDED_FIELDS``) matches a config
  holding its default at any depth, and is refused, naming the field, for another
  value; a field not in ``ADDED_FIELDS`` is never filled in."""
  path = str(tmp_path / 'settings.json')
  workdir_lib.write_json(path, {'config': {'attack': {'sigma': 0.5}}})
  assert workdir_lib.check_settings(
      path, {'config': {'attack': {'sigma': 0.5, 'num_surrogates': 1}}})
  with pytest.raises(workdir_lib.SettingsMismatchError,
                     match='config.attack.num_surrogates: None there, 2 now'):
    workdir_lib.check_settings(path, {'config': {'attack': {'sigma': 0.5,
                                                            'num_surrogates': 2}}})
  with pytest.raises(workdir_lib.SettingsMismatchError, match='attack.lbd'):
    workdir_lib.check_settings(path, {'config': {'attack': {'sigma': 0.5, 'lbd': 1}}})
  assert not workdir_lib.differences({'a': 1}, {'a': 1, 'k': 3}, added={'k': 3})


def test_tuples_and_lists_compare_equal_after_a_round_trip(tmp_path):
  path = str(tmp_path / 'config.json')
  settings = ml_collections.ConfigDict({'seeds': (0, 1), 'x': float('nan')})
  workdir_lib.write_json(path, settings)
  assert workdir_lib.check_settings(path, settings)


def test_digests_change_with_content_not_with_path(tmp_path):
  a, b = tmp_path / 'a.bin', tmp_path / 'b.bin'
  a.write_bytes(b'poisons')
  b.write_bytes(b'poisons')
  assert workdir_lib.file_digest(str(a)) == workdir_lib.file_digest(str(b))
  b.write_bytes(b'poisonz')
  assert workdir_lib.file_digest(str(a)) != workdir_lib.file_digest(str(b))
  d = tmp_path / 'ckpt'
  (d / 'sub').mkdir(parents=True)
  (d / 'sub' / 'w').write_bytes(b'1')
  before = workdir_lib.directory_digest(str(d))
  (d / '.w.tmp').write_bytes(b'junk')  # Temporaries are not part of the record.
  assert workdir_lib.directory_digest(str(d)) == before
  (d / 'sub' / 'w').write_bytes(b'2')
  assert workdir_lib.directory_digest(str(d)) != before
  x = np.arange(6, dtype=np.float32)
  assert workdir_lib.array_digest(x) == workdir_lib.array_digest(x.copy())
  assert workdir_lib.array_digest(x) != workdir_lib.array_digest(x.reshape(2, 3))
  assert workdir_lib.array_digest(x) != workdir_lib.array_digest(x.astype(np.float64))


def test_nested_config_fields_suggest_their_own_flags(tmp_path):
  path = str(tmp_path / 'settings.json')
  workdir_lib.write_json(path, {'config': {'seed': 0}, 'inputs': {'data': 'aa'}})
  with pytest.raises(workdir_lib.SettingsMismatchError) as e:
    workdir_lib.check_settings(path, {'config': {'seed': 1}, 'inputs': {'data': 'bb'}})
  message = str(e.value)
  assert 'config.seed: 0 there, 1 now' in message
  assert "inputs.data: 'aa' there, 'bb' now" in message
  assert '--config.seed=0' in message and '--config.config' not in message
  assert '--config.inputs' not in message
