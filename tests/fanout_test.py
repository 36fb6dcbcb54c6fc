"""Tests of rsp.fanout: the protocol fanned out over workers that share a workdir (rsp.fanout.run_worker,
report_protocol, launch; experiments/run.py --report), and the certification-settings
analysis of a finished workdir.

A tiny grid of 2 poison sets (the random baseline at eps 0.1 and 0.05) and 3 cells
(clean, random, random at eps 0.05) is run twice: by one process (``run_protocol``) and
by two submitit workers at once (``launch``, local executor). The same programs on the
same machine give the same numbers, so the two reports' rows must be equal (up to the
wall-clock times). Claims are judged stale only where a test makes them so (an hour old
against a ten-minute lease), never by waiting: no test fails by chance."""

import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rsp import certification
from rsp import data
from rsp import fanout
from rsp import grid
from rsp import metrics
from rsp import protocol
from rsp import report
from rsp import train
from rsp import workdir as workdir_lib
from rsp.configs import certify as certify_config
from rsp.configs import protocol_sweep

jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELLS = ['gaussian-lenet-none-seed0', 'gaussian-lenet-random-seed0',
         'gaussian-lenet-random-eps0.05-seed0']
POISON_ITEMS = ['poisons-random', 'poisons-random-eps0.05']
TIMES = ('train_seconds', 'certify_seconds', 'time')
LEASE = 600.0


def tiny_grid():
  config = protocol_sweep.get_config('tiny')
  config.poison_kinds = ('none', 'random')
  config.sweep.axes = ('eps',)
  config.sweep.eps = (0.05,)
  config.figures = False
  return config


def _without_times(rows):
  return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def _same(a, b):
  return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.fixture(scope='module')
def one_worker(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('one_worker'))
  return workdir, protocol.run_protocol(tiny_grid(), workdir)


@pytest.fixture(scope='module')
def two_workers(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('two_workers'))
  patch = pytest.MonkeyPatch()
  # The workers run this checkout's rsp, with this process's JAX settings.
  patch.setenv('PYTHONPATH', os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  patch.setenv('JAX_PLATFORMS', 'cpu')
  patch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
  try:
    results = fanout.launch(tiny_grid(), workdir, workers=2, executor='local',
                              lease_seconds=LEASE, poll_seconds=0.2, gpus_per_worker=0,
                              timeout_min=20)
  finally:
    patch.undo()
  return workdir, results


def _copy(workdir, tmp_path, name='copy'):
  copy = str(tmp_path / name)
  shutil.copytree(workdir, copy)
  return copy


def test_two_workers_compute_every_item_once_and_report_as_one(one_worker, two_workers):
  workdir, results = two_workers
  records = protocol.compute_records(workdir)
  assert sorted(records) == sorted(CELLS + POISON_ITEMS)
  assert {item: len(r) for item, r in records.items()} == {
      item: 1 for item in CELLS + POISON_ITEMS}
  assert len({r[0]['pid'] for r in records.values()}) <= 2
  assert results['missing'] == {'poison_sets': [], 'cells': []}
  assert os.listdir(os.path.join(workdir, 'claims')) == []  # Every claim released.
  single_dir, single = one_worker
  assert [r['cell'] for r in results['rows']] == CELLS
  assert _same(_without_times(results['rows']), _without_times(single['rows']))
  assert _same(results['sweeps'], single['sweeps'])
  for name in ('random', 'random-eps0.05'):
    a, b = (data.load_poisons(os.path.join(w, 'poisons', f'{name}.npz'))
            for w in (workdir, single_dir))
    np.testing.assert_array_equal(a['poisons'], b['poisons'])
    np.testing.assert_array_equal(a['indices'], b['indices'])
  on_disk = workdir_lib.read_json(os.path.join(workdir, 'results.json'))
  assert _same(on_disk['rows'], results['rows'])
  # The one-worker run recorded its computations the same way.
  assert {k: len(v) for k, v in protocol.compute_records(single_dir).items()} == {
      item: 1 for item in CELLS + POISON_ITEMS}


def test_report_computes_nothing_and_lists_what_is_missing(two_workers, tmp_path,
                                                           monkeypatch):
  workdir, results = two_workers
  copy = _copy(workdir, tmp_path)
  os.remove(os.path.join(copy, 'cells', CELLS[2], 'result.json'))
  os.remove(os.path.join(copy, 'results.json'))
  for module, name in ((train, 'train'), (certification, 'certify_dataset'),
                       (protocol, 'make_poison_set')):
    monkeypatch.setattr(module, name, None)
  reported = fanout.report_protocol(tiny_grid(), copy)
  assert reported['missing'] == {'poison_sets': [], 'cells': [CELLS[2]]}
  assert _same(_without_times(reported['rows']), _without_times(results['rows'][:2]))
  with open(os.path.join(copy, 'results.md')) as f:
    markdown = f.read()
  assert '**Incomplete:**' in markdown and f'`{CELLS[2]}`' in markdown
  status = fanout.grid_status(tiny_grid(), copy, lease_seconds=LEASE)
  assert status.splitlines()[0] == '5 items: 4 done, 0 running, 0 abandoned, 1 todo'
  assert f'todo      {CELLS[2]}' in status
  with pytest.raises(ValueError, match='holds no protocol run'):
    fanout.report_protocol(tiny_grid(), str(tmp_path / 'empty'))
  assert not os.path.exists(tmp_path / 'empty')


def _unfinished_copy(workdir, tmp_path, name):
  """A copy whose cells have trained and certified but not written their rows: each
  one a worker finishes again in a moment (it resumes: nothing is trained)."""
  copy = _copy(workdir, tmp_path, name)
  for cell in CELLS:
    os.remove(os.path.join(copy, 'cells', cell, 'result.json'))
  shutil.rmtree(os.path.join(copy, protocol.COMPUTE_LOG))
  return copy


def test_shards_split_the_cells(one_worker, tmp_path, monkeypatch):
  workdir, results = one_worker
  copy = _unfinished_copy(workdir, tmp_path, 'shards')
  monkeypatch.setattr(train, 'train', None)  # Resumes: nothing is trained again.
  first = fanout.run_worker(tiny_grid(), copy, shard='1/2', lease_seconds=LEASE)
  assert first == {'poison_sets': [], 'cells': [CELLS[1]]}
  second = fanout.run_worker(tiny_grid(), copy, shard='0/2', lease_seconds=LEASE)
  assert second == {'poison_sets': [], 'cells': [CELLS[0], CELLS[2]]}
  assert sorted(protocol.compute_records(copy)) == sorted(CELLS)
  reported = fanout.report_protocol(tiny_grid(), copy)
  assert _same(_without_times(reported['rows']), _without_times(results['rows']))
  with pytest.raises(ValueError, match=r"--shard='2/2' is not a shard"):
    fanout.run_worker(tiny_grid(), copy, shard='2/2')


def test_a_dead_workers_cell_is_taken_over_and_a_live_ones_left(one_worker, tmp_path,
                                                                 monkeypatch):
  workdir, _ = one_worker
  copy = _unfinished_copy(workdir, tmp_path, 'claims')
  monkeypatch.setattr(train, 'train', None)
  dead, live = grid.claim(copy, CELLS[0], lease_seconds=LEASE), grid.claim(
      copy, CELLS[1], lease_seconds=LEASE)
  old = time.time() - 3600  # The first claim's worker died an hour ago.
  os.utime(dead.path, (old, old))
  done = fanout.run_worker(tiny_grid(), copy, lease_seconds=LEASE)
  assert done['cells'] == [CELLS[0], CELLS[2]]  # The live worker's cell is left to it.
  status = fanout.grid_status(tiny_grid(), copy, lease_seconds=LEASE)
  assert f'running   {CELLS[1]}' in status
  live.release()
  assert fanout.run_worker(tiny_grid(), copy, lease_seconds=LEASE)['cells'] == [
      CELLS[1]]
  assert {k: len(v) for k, v in protocol.compute_records(copy).items()} == {
      c: 1 for c in CELLS}


@pytest.mark.parametrize('kwargs,match', [
    (dict(report_only=True, shard='0/2'), '--report computes nothing'),
    (dict(report_only=True, workers=2), '--report computes nothing'),
    (dict(shard='0/2', workers=2), r"--shard='0/2' runs this process as one worker"),
    (dict(workers=-1), r'--workers=-1 must be an integer >= 0'),
    (dict(executor='slurm'), r"--executor='slurm' launches workers: give --workers"),
    (dict(executor='pbs', workers=2), r"--executor='pbs' is not known; accepted: local, "
                                      'slurm'),
    (dict(workers=2, slurm_kwargs={'partition': 'gpu'}),
     r"--partition .* is for --executor=slurm, not --executor='local'"),
    (dict(shard='1-of-2'), r"--shard='1-of-2' is not a shard"),
])
def test_flags_that_do_not_go_together_are_refused(tmp_path, kwargs, match, monkeypatch):
  monkeypatch.setattr(data, 'load', None)  # Refused before any work.
  with pytest.raises(ValueError, match=match):
    fanout.run_command(tiny_grid(), str(tmp_path / 'never'), **kwargs)
  assert not os.path.exists(tmp_path / 'never')


def test_run_script_reports(two_workers, tmp_path):
  workdir, _ = two_workers
  copy = _copy(workdir, tmp_path)
  os.remove(os.path.join(copy, 'cells', CELLS[1], 'result.json'))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'run.py'),
       f'--config={os.path.join(ROOT, "rsp", "configs", "protocol_sweep.py")}:tiny',
       '--config.poison_kinds=none,random', '--config.sweep.axes=eps',
       '--config.sweep.eps=0.05', '--config.figures=False', f'--workdir={copy}',
       '--report'], env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f'`{CELLS[1]}`' in proc.stdout and f'todo      {CELLS[1]}' in proc.stdout
  assert '2 victims; wrote' in proc.stdout
  assert not os.path.exists(os.path.join(copy, 'cells', CELLS[1], 'result.json'))


def test_certification_settings_of_a_finished_workdir(one_worker, tmp_path):
  """experiments/certify.py on a cell's checkpoint, with the protocol's certification
  settings, reproduces the cell's certificates; the analysis tabulates the subsets and
  the runs per N."""
  workdir, results = one_worker
  copy = _copy(workdir, tmp_path)
  config = certify_config.get_config('tiny')
  for cell in CELLS[:2]:
    config.checkpoint_dir = os.path.join(copy, 'cells', cell, 'train')
    certification.certify_split(config, os.path.join(copy, 'certify_n64', cell))
    again = metrics.read_certification_tsv(os.path.join(copy, 'certify_n64', cell,
                                                        'certify.tsv'))
    cell_rows = metrics.read_certification_tsv(os.path.join(copy, 'cells', cell,
                                                            'certify.tsv'))
    assert [r[:5] for r in again] == [r[:5] for r in cell_rows]  # All but the time.
  analysis = report.certification_settings(copy, sizes=(2, 4, 0), num_seeds=3)
  rows = {r['cell']: r for r in results['rows']}
  for cell in CELLS:
    sub = analysis['subsets'][cell]['acr']
    assert [s['m'] for s in sub] == [2, 4, 4] and sub[2]['all'] == pytest.approx(
        rows[cell]['acr'])
  assert analysis['subsets'][CELLS[0]]['acr_drop'] is None  # The clean victim.
  assert analysis['subsets'][CELLS[2]]['acr_drop'] is not None
  n64 = analysis['noise_samples']['64']
  assert n64[CELLS[0]]['acr'] == pytest.approx(rows[CELLS[0]]['acr'])
  assert n64[CELLS[1]]['acr'] == pytest.approx(rows[CELLS[1]]['acr'])
  drop, expected = n64[CELLS[1]]['acr_drop_relative'], rows[CELLS[1]]['acr_drop_relative']
  if expected is None:  # The clean victim certified nothing: no relative drop.
    assert np.isnan(drop)
  else:
    assert drop == pytest.approx(expected)
  with open(os.path.join(copy, 'certification_settings.md')) as f:
    markdown = f.read()
  # m = 4 and m = 0 both mean all 4 points: one column.
  assert '| cell | m = 2 ACR | all (m = 4) ACR |' in markdown
  assert '| cell | N = 64 |' in markdown
