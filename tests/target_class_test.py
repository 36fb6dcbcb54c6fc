"""Tests of the target_class sweep axis: a clean victim is trained once per (method,
arch, victim sigma, seed), whatever the target class (rsp.protocol.warm_start).

On the tiny sweep config (clean victims only, target classes 3 and 8, base 8): the clean
victim of class 3 takes the training run of the class-8 clean victim and is only
certified on class-3 points. Its weights and certificates must equal those of a clean
victim trained from scratch in another workdir with target class 3: the training set does
not depend on the target class, and both runs are the same program on this machine, so
the comparison is exact (deterministic: failure odds 0). About a minute on 2 CPU cores.
"""

import os

import jax
import numpy as np
import pytest

from rsp import metrics
from rsp import protocol
from rsp import train as train_lib
from rsp import workdir as workdir_lib
from rsp.configs import protocol_sweep

BASE = 'gaussian-lenet-none-seed0'
CLASS3 = 'gaussian-lenet-none-class3-seed0'


def _config(axes=('target_class',), target_class=8):
  config = protocol_sweep.get_config('tiny')
  config.poison_kinds = ('none',)
  config.sweep.axes = axes
  config.target_class = target_class
  config.figures = False
  return config


def _flat(workdir, cell):
  trained = train_lib.load_trained(os.path.join(workdir, 'cells', cell, 'train'))
  return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(trained.variables)])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  shared = str(tmp_path_factory.mktemp('shared'))
  donors = []
  original = protocol.warm_start

  def recording(*args, **kwargs):
    donors.append((args[2].name, original(*args, **kwargs)))
    return donors[-1][1]

  protocol.warm_start = recording
  try:
    results = protocol.run_protocol(_config(), shared)
  finally:
    protocol.warm_start = original
  scratch = str(tmp_path_factory.mktemp('scratch'))
  protocol.run_protocol(_config(axes=(), target_class=3), scratch)
  return shared, results, dict(donors), scratch


def test_the_clean_victim_of_another_class_reuses_the_base_one(runs):
  _, _, donors, _ = runs
  assert donors == {BASE: None, CLASS3: BASE}


def test_shared_victim_equals_one_trained_from_scratch_for_its_class(runs):
  shared, results, _, scratch = runs
  np.testing.assert_array_equal(_flat(shared, CLASS3), _flat(scratch, BASE))
  np.testing.assert_array_equal(_flat(shared, CLASS3), _flat(shared, BASE))
  ours = metrics.read_certification_tsv(os.path.join(shared, 'cells', CLASS3, 'certify.tsv'))
  theirs = metrics.read_certification_tsv(os.path.join(scratch, 'cells', BASE, 'certify.tsv'))
  assert [(r.idx, r.label, r.predict, r.radius) for r in ours] == [
      (r.idx, r.label, r.predict, r.radius) for r in theirs]
  assert {r.label for r in ours} == {3}
  summary = workdir_lib.read_json(os.path.join(shared, 'cells', CLASS3, 'train',
                                               'summary.json'))
  assert summary['target_class'] == 3
  row = {r['cell']: r for r in results['rows']}[CLASS3]
  assert row['target_class'] == 3
  steps = [r['step'] for r in workdir_lib.read_json_lines(os.path.join(
      shared, 'cells', CLASS3, 'train', 'metrics.jsonl'))]
  assert steps == sorted(set(steps))  # Each step logged once, the copied ones included.


def test_no_finished_donor_means_training_from_scratch(tmp_path):
  """Deterministic: nothing is copied while the base class's clean victim is unfinished,
  nor for a poisoned victim of another class."""
  config = _config()
  config.poison_kinds = ('none', 'random')
  cells = {c.name: c for c in protocol.resolve_cells(config)}
  train_dir = str(tmp_path / 'train')
  assert protocol.warm_start(config, str(tmp_path), cells[CLASS3], train_dir) is None
  os.makedirs(os.path.join(tmp_path, 'cells', BASE, 'train'))
  with open(os.path.join(tmp_path, 'cells', BASE, 'train', 'summary.json'), 'w') as f:
    f.write('{}')
  assert protocol.warm_start(config, str(tmp_path),
                             cells['gaussian-lenet-random-class3-seed0'], train_dir) is None
  assert not os.path.exists(train_dir)
