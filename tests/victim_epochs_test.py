"""The victim_epochs sweep axis end to end: longer victims start from the shorter ones.

On the tiny sweep config (1-epoch victims): a run of the base point, then the same workdir
with the victim_epochs axis (1, 2 epochs) added. The 2-epoch cells start from the 1-epoch
cells' checkpoints (``rsp.protocol.warm_start``) and end with exactly the weights of
2-epoch victims trained from scratch in another workdir: training depends on the epoch
and step numbers only, and both runs are on this machine with the same program, so the
comparison is exact (deterministic: failure odds 0). About 2 minutes on 2 CPU cores.
"""

import os
import shutil

import jax
import numpy as np
import pytest

from rsp import metrics
from rsp import protocol
from rsp import train as train_lib
from rsp import workdir as workdir_lib
from rsp.configs import protocol_sweep


def _config(axes, epochs=None):
  config = protocol_sweep.get_config('tiny')
  config.sweep.axes = axes
  if epochs is not None:
    config.victims.gaussian.num_epochs = epochs
  return config


def _params(workdir, cell):
  trained = train_lib.load_trained(os.path.join(workdir, 'cells', cell, 'train'))
  return trained.variables


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  extended = str(tmp_path_factory.mktemp('extended'))
  protocol.run_protocol(_config(()), extended)
  donors = []
  original = protocol.warm_start

  def recording(*args, **kwargs):
    donors.append(original(*args, **kwargs))
    return donors[-1]

  protocol.warm_start = recording
  try:
    results = protocol.run_protocol(_config(('victim_epochs',)), extended)
  finally:
    protocol.warm_start = original
  scratch = str(tmp_path_factory.mktemp('scratch'))
  protocol.run_protocol(_config((), epochs=2), scratch)
  return extended, results, donors, scratch


def test_longer_victims_start_from_the_shorter_ones(runs):
  _, _, donors, _ = runs
  assert sorted(donors) == ['gaussian-lenet-none-seed0', 'gaussian-lenet-pacd_gaussian-seed0',
                            'gaussian-lenet-random-seed0']


@pytest.mark.parametrize('poison_set', ['none', 'pacd_gaussian', 'random'])
def test_warm_started_victim_equals_one_trained_from_scratch(runs, poison_set):
  extended, _, _, scratch = runs
  warm = _params(extended, f'gaussian-lenet-{poison_set}-ep2-seed0')
  cold = _params(scratch, f'gaussian-lenet-{poison_set}-seed0')
  np.testing.assert_array_equal(np.concatenate([np.ravel(x) for x in _leaves(warm)]),
                                np.concatenate([np.ravel(x) for x in _leaves(cold)]))
  steps = [r['step'] for r in workdir_lib.read_json_lines(os.path.join(
      extended, 'cells', f'gaussian-lenet-{poison_set}-ep2-seed0', 'train',
      'metrics.jsonl'))]
  assert steps == sorted(set(steps))  # Each step logged once, the copied ones included.


def _leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def test_rows_and_curve_along_the_epochs(runs):
  _, results, _, _ = runs
  by_cell = {r['cell']: r for r in results['rows']}
  assert by_cell['gaussian-lenet-none-seed0']['victim_epochs'] == 1
  assert by_cell['gaussian-lenet-pacd_gaussian-ep2-seed0']['victim_epochs'] == 2
  assert by_cell['gaussian-lenet-pacd_gaussian-ep2-seed0']['sweep_axis'] == 'victim_epochs'
  aggregates = metrics.aggregate_rows(results['rows'])
  curves = metrics.sweep_series(aggregates, 'victim_epochs')
  pacd = [c for c in curves if c['poison'] == 'pacd']
  assert len(pacd) == 1 and pacd[0]['values'] == [1, 2]
  # The drop at 2 epochs is against the clean victim of 2 epochs.
  ep2 = by_cell['gaussian-lenet-pacd_gaussian-ep2-seed0']
  clean2 = by_cell['gaussian-lenet-none-ep2-seed0']
  (row,) = [r for r in metrics.add_acr_drops(results['rows']) if r['cell'] == ep2['cell']]
  assert row['acr_clean'] == clean2['acr']
  # The curve's figure is drawn and listed (results.md links what is listed).
  extended = runs[0]
  assert 'figures/sweep_victim_epochs.png' in results['figures']
  with open(os.path.join(extended, 'figures', 'sweep_victim_epochs.png'), 'rb') as f:
    assert f.read(4) == b'\x89PNG'
  with open(os.path.join(extended, 'results.md')) as f:
    assert '![sweep_victim_epochs.png](figures/sweep_victim_epochs.png)' in f.read()


def test_rows_written_before_the_field_existed_get_it_from_the_config(runs, tmp_path):
  """Deterministic: a base cell's result.json without victim_epochs (as an earlier
  version wrote it) reads back with the configured epochs; the others are untouched."""
  extended = runs[0]
  copy = str(tmp_path / 'old')
  shutil.copytree(os.path.join(extended, 'cells'), os.path.join(copy, 'cells'))
  path = os.path.join(copy, 'cells', 'gaussian-lenet-none-seed0', 'result.json')
  row = workdir_lib.read_json(path)
  del row['victim_epochs']
  workdir_lib.write_json(path, row)
  config = _config(('victim_epochs',))
  (cell,) = [c for c in protocol.resolve_cells(config) if c.name == 'gaussian-lenet-none-seed0']
  read = protocol.read_row(config, copy, cell)
  assert read['victim_epochs'] == 1
  assert {k: v for k, v in read.items() if k != 'victim_epochs'} == row


def test_no_shorter_finished_victim_means_no_warm_start(tmp_path):
  """Deterministic: nothing is copied where no shorter cell has finished, nor for a base
  cell or a defended one."""
  config = _config(('victim_epochs',))
  cells = {c.name: c for c in protocol.resolve_cells(config)}
  train_dir = str(tmp_path / 'train')
  assert protocol.warm_start(config, str(tmp_path), cells['gaussian-lenet-none-ep2-seed0'],
                             train_dir) is None
  assert protocol.warm_start(config, str(tmp_path), cells['gaussian-lenet-none-seed0'],
                             train_dir) is None
  assert not os.path.exists(train_dir)
