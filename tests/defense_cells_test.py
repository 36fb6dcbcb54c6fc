"""Tests of rsp.defense_cells: the protocol's defense cells end to end on protocol_defenses.py:tiny: rows carrying
``defense`` and the detectors' ``detection``, the reuse of the undefended victims'
checkpoints, DPA's rows and their statement, the report, resume, the script, and the
checks of the new fields before any work.

One tiny run (PACD, 2 training sets x 9 smoothing defenses, DPA with 4 partitions) is
shared by the module. Nothing here is a statistical test: every assertion holds exactly
for any trained victim, so no test fails by chance."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from rsp import attack
from rsp import cells as cells_lib
from rsp import certification
from rsp import data
from rsp import defense_cells
from rsp import defenses
from rsp import protocol
from rsp import train
from rsp import workdir as workdir_lib
from rsp.configs import protocol as protocol_config
from rsp.configs import protocol_defenses

jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES = ('train_seconds', 'certify_seconds', 'time')
DETECTION_KEYS = ('precision', 'recall', 'auroc', 'removed', 'target_removed_fraction')


def tiny_config():
  return protocol_defenses.get_config('tiny')


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished tiny defenses protocol: ``(workdir, results, training workdirs)``."""
  workdir = str(tmp_path_factory.mktemp('defenses'))
  trained = []
  real_train = train.train

  def counting_train(config, splits, workdir_):
    trained.append(workdir_)
    return real_train(config, splits, workdir_)

  train.train = counting_train
  try:
    results = protocol.run_protocol(tiny_config(), workdir)
  finally:
    train.train = real_train
  return workdir, results, trained


def _without_times(rows):
  return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def _same(a, b):
  return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_rows_carry_the_defense_and_the_detection(finished):
  workdir, _, _ = finished
  results = workdir_lib.read_json(os.path.join(workdir, 'results.json'))
  rows = results['rows']
  smoothing = [d for d in protocol_defenses.TINY_DEFENSES if d != 'dpa']
  assert [(r['defense'], r['poison']) for r in rows] == [
      (d, p) for d in smoothing for p in ('none', 'pacd')]
  for r in rows:
    assert np.isfinite(r['acr']) and r['acr'] >= 0 and r['num_certified'] == 4
    if r['defense'] in defenses.DETECTORS:
      assert set(DETECTION_KEYS) <= set(r['detection']), r['cell']
      assert 'removed_indices' not in r['detection']
    else:
      assert 'detection' not in r
  by = {(r['defense'], r['poison']): r for r in rows}
  poisons = by[('oracle', 'pacd')]['detection']['num_poison']
  assert poisons > 0  # PACD's images among the 800 points of the training subset.
  for d in defenses.DETECTORS:
    for kind in ('none', 'pacd'):
      det = by[(d, kind)]['detection']
      # The default budget: as many points as the poison sets modify in the set, for a
      # clean set as for a poisoned one (the oracle removes the poisons only).
      expected = 0 if (d, kind) == ('oracle', 'none') else poisons
      assert det['removed'] == det['budget'] == expected, (d, kind)
      assert by[(d, kind)]['num_train_examples'] == 800 - det['removed']
      if kind == 'pacd':
        assert det['num_poison'] == poisons and det['auroc'] is not None
        # Every target-class training image is a poison: recall is the class removed.
        assert det['recall'] == pytest.approx(det['target_removed_fraction'])
      else:
        assert det['recall'] is None and det['auroc'] is None
  oracle = by[('oracle', 'pacd')]['detection']
  assert oracle['precision'] == oracle['recall'] == oracle['auroc'] == 1.0
  # The oracle removes nothing from the clean set: the undefended victim again.
  assert by[('oracle', 'none')]['acr'] == by[('none', 'none')]['acr']
  # Drops against the undefended clean victim; the recovered fraction of the ACR lost.
  clean, pacd = by[('none', 'none')]['acr'], by[('none', 'pacd')]['acr']
  for (d, kind), r in by.items():
    assert r['acr_clean'] == clean and r['acr_undefended'] == by[('none', kind)]['acr']
    assert r['acr_drop'] == pytest.approx(clean - r['acr'])
    if d != 'none' and kind == 'pacd' and clean > pacd:
      assert r['acr_recovered_fraction'] == pytest.approx((r['acr'] - pacd) /
                                                          (clean - pacd))
    elif d == 'none' or kind == 'none':
      assert r['acr_recovered_fraction'] is None
    assert (r['vs_clean'] is None) == ((d, kind) == ('none', 'none'))
  # The aggregates: one per defense and training set, with the detectors' means.
  aggregates = {(a['defense'], a['poison']): a for a in results['aggregates']}
  assert set(aggregates) == set(by)
  assert aggregates[('knn', 'pacd')]['detection_precision_mean'] == pytest.approx(
      by[('knn', 'pacd')]['detection']['precision'])


def test_detectors_reuse_the_undefended_victims(finished):
  """No feature model is trained: one training run per smoothing cell, plus DPA's base
  classifiers; a detector cell's record names what it removed, and its victim trained
  on the rest."""
  workdir, results, trained = finished
  cells = os.path.join(workdir, 'cells')
  k = tiny_config().dpa_partitions
  assert len(trained) == len(results['rows']) + k * len(results['dpa'])
  assert sorted(set(trained)) == sorted(trained)
  assert all(t.startswith(cells) for t in trained)
  assert sum('partitions' in t for t in trained) == k * len(results['dpa'])
  for r in results['rows']:
    assert os.path.join(cells, r['cell'], 'train') in trained
    record = os.path.join(cells, r['cell'], 'detection.json')
    assert os.path.isfile(record) == (r['defense'] in defenses.DETECTORS)
  # The spectral cell removed exactly the recorded points of the training subset.
  cell = [r for r in results['rows']
          if (r['defense'], r['poison']) == ('spectral', 'pacd')][0]
  removed = workdir_lib.read_json(os.path.join(cells, cell['cell'], 'detection.json'))[
      'removed_indices']
  train_split = data.load('mnist_embedded', seed=0)['train']
  f = data.load_poisons(os.path.join(workdir, 'poisons', 'pacd_gaussian', 'poisons.npz'))
  full = data.subset(data.apply_poison(train_split, f['indices'], f['poisons']),
                     data.seeded_subset_indices(3500, 800, 0))
  keep = np.ones(800, bool)
  keep[removed] = False
  settings = workdir_lib.read_json(os.path.join(cells, cell['cell'], 'train',
                                                'settings.json'))
  assert settings['inputs']['train_data'] == workdir_lib.array_digest(
      full['image'][keep], full['label'][keep])


def test_dpa_rows(finished):
  workdir, results, _ = finished
  rows = results['dpa']
  assert [r['poison'] for r in rows] == ['none', 'pacd']
  k = tiny_config().dpa_partitions
  poisons = [r for r in results['rows'] if r['defense'] == 'oracle'][-1]['detection'][
      'num_poison']
  for r in rows:
    assert r['defense'] == 'dpa' and r['dpa_partitions'] == k and 'acr' not in r
    assert (r['train_method'], r['arch']) == ('standard', 'lenet')
    assert r['num_train_examples'] == 800 and r['max_certifiable'] == k // 2
    # A clean set states the same budget as the poisoned one: 2 per modified image.
    assert r['modified_images'] == poisons and r['dpa_budget'] == 2 * poisons
    assert r['vacuous'] and r['statement'].startswith('Vacuous')
    assert f'{2 * poisons} insertions/removals (each modified image counts twice)' in \
        r['statement']
    assert r['certified_accuracy_at_budget'] == 0.0
    points = r['points']
    assert points['idx'] == results['certified_points']
    assert all(0 <= c <= k // 2 for c in points['certified'])
    assert r['certified_accuracy'] == pytest.approx(np.mean(
        np.asarray(points['correct']) & (np.asarray(points['certified']) >= 1)))
    assert r['certified_accuracy_curve']['radius'] == list(range(k // 2 + 1))
    assert 0 <= r['clean_accuracy'] <= 1 and 0 <= r['target_accuracy'] <= 1
  assert rows[0]['partitions_touched'] is None
  assert 1 <= rows[1]['partitions_touched'] <= k
  # The vote: base classifier j of the PACD cell predicts the test points as recorded.
  test = data.load('mnist_embedded', seed=0)['test']
  cell_dir = os.path.join(workdir, 'cells', rows[1]['cell'])
  images = test['image'][rows[1]['points']['idx']]
  predictions = np.stack([
      train.predict_labels(m.apply_fn, m.variables, images)
      for m in (train.load_trained(os.path.join(cell_dir, 'partitions', f'{j:04d}'))
                for j in range(k))])
  prediction, certified = defenses.dpa_certify(defenses.dpa_votes(predictions, 10))
  assert prediction.tolist() == rows[1]['points']['prediction']
  assert certified.tolist() == rows[1]['points']['certified']


def test_the_report_has_the_defenses(finished):
  workdir, results, _ = finished
  with open(os.path.join(workdir, 'results.md')) as f:
    markdown = f.read()
  for text in ('## Defenses', '| defense | training method | arch | training set |',
               '| knn | gaussian | lenet | PACD (vs gaussian) | 1 |',
               '## Deep Partition Aggregation (not a smoothing certificate)',
               '(each modified image counts twice)', '- PACD (vs gaussian): Vacuous'):
    assert text in markdown, text
  # The undefended tables hold the undefended victims only.
  main = markdown.split('## Per victim')[0]
  assert main.count('| gaussian | lenet |') == 2
  assert 'figures/acr_defenses.png' in results['figures']
  with open(os.path.join(workdir, 'figures', 'acr_defenses.png'), 'rb') as f:
    assert f.read(4) == b'\x89PNG'


def test_rerun_redoes_nothing(finished, monkeypatch):
  workdir, results, _ = finished

  def refuse(*args, **kwargs):
    raise AssertionError('a finished protocol was asked to redo work')

  for module, name in ((train, 'train'), (attack, 'pacd'),
                       (certification, 'certify_dataset'),
                       (defenses, 'apply_data_defense')):
    monkeypatch.setattr(module, name, refuse)
  again = protocol.run_protocol(tiny_config(), workdir)
  for key in ('rows', 'aggregates', 'dpa', 'figures'):
    assert _same(again[key], results[key]), key


def test_interrupted_detector_cell_resumes_from_its_record(finished, tmp_path,
                                                          monkeypatch):
  """Killed after detecting, during the retraining: the resumed cell applies the
  recorded removals (no detection again) and ends with the same row."""
  workdir, results, _ = finished
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  row = [r for r in results['rows'] if (r['defense'], r['poison']) == ('knn', 'pacd')][0]
  cell_dir = os.path.join(copy, 'cells', row['cell'])
  os.remove(os.path.join(cell_dir, 'result.json'))
  os.remove(os.path.join(cell_dir, 'certify.tsv'))
  shutil.rmtree(os.path.join(cell_dir, 'train'))
  monkeypatch.setattr(defenses, 'apply_data_defense', None)
  monkeypatch.setattr(attack, 'pacd', None)
  resumed = protocol.run_protocol(tiny_config(), copy)
  assert _same(_without_times(resumed['rows']), _without_times(results['rows']))


def test_the_script_on_a_finished_workdir(finished, tmp_path):
  workdir, results, _ = finished
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'run.py'),
       f'--config={os.path.join(ROOT, "rsp", "configs", "protocol_defenses.py")}:tiny',
       f'--workdir={copy}'],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert '| spectral | gaussian | lenet | PACD (vs gaussian) |' in proc.stdout
  written = workdir_lib.read_json(os.path.join(copy, 'results.json'))
  assert _same(written['rows'], results['rows']) and _same(written['dpa'], results['dpa'])


def test_undefended_cells_are_recorded_as_before():
  """The undefended cells' names and specs do not depend on the defense fields, so a
  workdir made before defenses existed resumes, and defenses can be added to it."""
  config = protocol_config.get_config('tiny')
  test = data.load('mnist_embedded', seed=0)['test']
  target, every = cells_lib.certification_indices(config, test)
  cells = protocol.resolve_cells(config)
  before = [cells_lib.cell_spec(config, c, target, every) for c in cells]
  config.defenses = ('none', 'mixup', 'spectral', 'dpa')
  grid = protocol.resolve_cells(config)
  assert grid[:len(cells)] == cells
  assert [c.name for c in cells] == [
      'gaussian-lenet-none-seed0', 'gaussian-lenet-pacd_gaussian-seed0',
      'gaussian-lenet-random-seed0', 'gaussian-lenet-no_target-seed0']
  assert _same([cells_lib.cell_spec(config, c, target, every) for c in cells], before)
  for spec in before:
    assert 'defense' not in spec and 'defense' not in spec['inputs']['cell']
    assert not {'mixup_alpha', 'dp_sgd', 'purify'} & set(spec['victims']['gaussian'])
  names = [c.name for c in grid[len(cells):]]
  assert names[:4] == ['gaussian-lenet-none-mixup-seed0',
                       'gaussian-lenet-pacd_gaussian-mixup-seed0',
                       'gaussian-lenet-random-mixup-seed0',
                       'gaussian-lenet-no_target-mixup-seed0']
  assert names[-4:] == ['standard-lenet-none-dpa-seed0',
                        'standard-lenet-pacd_gaussian-dpa-seed0',
                        'standard-lenet-random-dpa-seed0',
                        'standard-lenet-no_target-dpa-seed0']
  mixup = cells_lib.cell_spec(config, grid[len(cells)], target, every)
  assert mixup['defense'] == {'defenses': 'mixup'}
  assert mixup['victims']['gaussian']['mixup_alpha'] == 1.0
  knn = cells_lib.cell_spec(config, cells_lib.Cell('gaussian', 'lenet', 'none', '', 0,
                                                 defense='knn'), target, every)
  assert knn['defense'] == {'defenses': 'knn', 'defense_budget': -1.0,
                            'detectors': {'knn_k': 50}}


def _set(config, path, value):
  *parents, leaf = path.split('.')
  for p in parents:
    config = config[p]
  config[leaf] = value


@pytest.mark.parametrize('path,value,match', [
    ('defenses', ('spectral',), r"config\.defenses=\('spectral',\) must include 'none'"),
    ('defenses', ('none', 'strip'), r"config\.defenses=\('none', 'strip'\) has unknown "
     r"\['strip'\]; accepted: none, spectral"),
    ('defenses', ('none', 'knn', 'knn'), 'repeats a name'),
    ('defense_budget', -2.0, r'config\.defense_budget=-2\.0 is invalid; accepted: -1'),
    ('defense_budget', 2.5, r'config\.defense_budget=2\.5 is invalid'),
    ('detectors.knn_k', 0, r'config\.detectors\.knn_k=0 must be an integer >= 1'),
    ('detectors.ac_reduction', 'svd', r"config\.detectors\.ac_reduction='svd' is not "
     'known; accepted: pca, ica'),
    ('dpa_partitions', 0, r'config\.dpa_partitions=0 must be an integer >= 1'),
    ('dpa_victim.num_epochs', 0, r'^config\.dpa_victim\.num_epochs=0'),
    ('dpa_victim.model', 'resnet20', r"^config\.dpa_victim\.model='resnet20' takes "
     'images of shape'),
    ('training_defenses.mixup.mixup_alpha', -1.0,
     r'^config\.training_defenses\.mixup\.mixup_alpha=-1\.0 must be a finite number'),
    ('training_defenses.dp_sgd.optimizer', 'adam',
     r"config\.training_defenses\.dp_sgd\.optimizer='adam'; set "
     r"config\.training_defenses\.dp_sgd\.optimizer='sgd'"),
    ('training_defenses.purify_bit_depth.purify.bits', 0,
     r'config\.training_defenses\.purify_bit_depth\.purify\.bits=0 must be an integer'),
    ('training_defenses.mixup.learning_rte', 0.1,
     r"config\.training_defenses\.mixup\.learning_rte is not a field of the victim's "
     'training config'),
    ('training_defenses.knn', {'mixup_alpha': 0.5},
     r"config\.training_defenses has entries \['knn'\], names reserved"),
    ('victims.gaussian.learning_rate', -1.0,
     r'^config\.victims\.gaussian\.learning_rate'),
])
def test_bad_defense_fields_raise_before_any_work(tmp_path, path, value, match,
                                                  monkeypatch):
  """Nothing is loaded, attacked, trained or written, and the message names the field
  by its full path."""
  for module, name in ((attack, 'pacd'), (train, 'train'), (data, 'load')):
    monkeypatch.setattr(module, name, None)
  config = tiny_config()
  _set(config, path, value)
  workdir = str(tmp_path / 'never')
  with pytest.raises(ValueError, match=match):
    protocol.run_protocol(config, workdir)
  assert not os.path.exists(workdir)


def test_mixup_is_refused_for_victims_without_soft_labels():
  config = protocol_config.get_config('tiny')
  config.victims.gaussian.method = 'macer'
  config.victims.gaussian.loss = {'sigma': 0.5}
  config.defenses = ('none', 'mixup')
  with pytest.raises(ValueError, match=r"^config\.training_defenses\.mixup\.mixup_alpha"
                                       r"=1\.0 \(mixup\) is accepted with "
                                       r"config\.victims\.gaussian\.method in standard, "
                                       r"gaussian; config\.victims\.gaussian\.method="
                                       r"'macer'"):
    protocol.validate_config(config)
  assert defense_cells.names(config) == ('none', 'mixup')
