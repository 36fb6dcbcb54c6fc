"""The evaluation protocol end to end on the tiny config: the results' public contract,
resume, the paired statistics, results written before figures, config checks before any
work.

One tiny protocol run (PACD, 4 victims, certification) is shared by the module. Nothing
here is a statistical test: every assertion holds exactly (up to float rounding) for
any trained victim, so no test fails by chance."""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from rsp import attack
from rsp import cells as cells_lib
from rsp import certification
from rsp import data
from rsp import metrics
from rsp import protocol
from rsp import report
from rsp import train
from rsp import workdir as workdir_lib
from rsp.configs import common
from rsp.configs import protocol as protocol_config
from rsp.configs import protocol_cifar10_paper
from rsp.configs import protocol_mnist_paper
from rsp.configs import protocol_transfer

jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KEYS = ('train_method', 'arch', 'poison', 'sigma', 'acr', 'certified_accuracy',
            'clean_accuracy', 'target_accuracy', 'num_certified', 'seed', 'acr_drop',
            'acr_drop_relative', 'time', 'crafted_against', 'abstain_rate',
            'certified_accuracy_curve', 'clean_accuracy_non_target', 'acr_non_target',
            'certified_accuracy_non_target', 'vs_clean', 'vs_random')
# Wall-clock fields: the only ones a resumed run may change.
TIMES = ('train_seconds', 'certify_seconds', 'time')


def tiny_config():
  return protocol_config.get_config('tiny')


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished tiny protocol: ``(workdir, results)``."""
  workdir = str(tmp_path_factory.mktemp('protocol'))
  return workdir, protocol.run_protocol(tiny_config(), workdir)


def _without_times(rows):
  return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def _same(a, b):
  """Equal as JSON (NaN, e.g. the ACR of correct points when none is, equals NaN)."""
  return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _rows_of(results):
  return {r['cell']: r for r in results['rows']}


def test_results_follow_the_public_contract(finished):
  workdir, results = finished
  on_disk = workdir_lib.read_json(os.path.join(workdir, 'results.json'))
  assert set(on_disk) >= {'config', 'rows'}
  assert on_disk['config'] == json.loads(json.dumps(tiny_config().to_dict()))
  rows = on_disk['rows']
  assert [(r['poison'], r['crafted_against']) for r in rows] == [
      ('none', ''), ('pacd', 'gaussian'), ('random', ''), ('no_target', '')]
  for r in rows:
    assert set(ROW_KEYS) <= set(r), set(ROW_KEYS) - set(r)
    assert (r['train_method'], r['arch'], r['seed'], r['sigma']) == (
        'gaussian', 'lenet', 0, 0.5)
    assert r['num_certified'] == 4 and 0 <= r['certified_accuracy'] <= 1
    assert np.isfinite(r['acr']) and r['acr'] >= 0 and r['time'] > 0
    assert 'acr_all_classes' in r and len(r['per_class_acr']) == 10
  by_poison = {r['poison']: r for r in rows}
  assert by_poison['none']['acr_drop'] == 0.0
  assert by_poison['pacd']['acr_drop'] == pytest.approx(
      by_poison['none']['acr'] - by_poison['pacd']['acr'])
  # A victim that never saw the class cannot predict it.
  assert by_poison['no_target']['target_accuracy'] == 0.0
  assert by_poison['no_target']['acr'] == 0.0
  assert {r['num_train_examples'] for r in rows} == {800}  # config.train_subset

  # Every victim was certified on the same seeded class-8 test points.
  test = data.load('mnist_embedded', seed=0)['test']
  for r in rows:
    tsv = metrics.read_certification_tsv(
        os.path.join(workdir, 'cells', r['cell'], 'certify.tsv'))
    assert [t.idx for t in tsv] == on_disk['certified_points']
    assert all(test['label'][t.idx] == 8 for t in tsv)

  stats = on_disk['poisons']['random']['statistics']
  assert stats['num_images'] == 350 and stats['linf'] == pytest.approx(0.1, abs=1e-6)
  assert stats['mean_delta'] > 0  # Clipped sign noise brightens MNIST's black pixels.
  assert on_disk['poisons']['pacd_gaussian']['statistics']['linf'] <= 0.1 + 1e-6

  with open(os.path.join(workdir, 'results.md')) as f:
    markdown = f.read()
  for text in ('| training method | arch | training set | seeds | ACR | ACR drop |',
               '| gaussian | lenet | PACD (vs gaussian) |', 'PSNR (dB)', 'SSIM',
               '## Per victim, paired over the certified points',
               '## Certified accuracy at radius r', '## Other classes',
               '## Machine and time'):
    assert text in markdown
  assert set(results['figures']) == {
      'figures/certified_accuracy_lenet.png', 'figures/poisons_pacd_gaussian.png',
      'figures/poisons_random.png', 'figures/acr_drop.png'}
  for figure in results['figures']:
    with open(os.path.join(workdir, figure), 'rb') as f:
      assert f.read(4) == b'\x89PNG'


def test_rerun_redoes_nothing_and_gives_the_same_results(finished, monkeypatch):
  workdir, results = finished

  def refuse(*args, **kwargs):
    raise AssertionError('a finished protocol was asked to redo work')

  monkeypatch.setattr(train, 'train', refuse)
  monkeypatch.setattr(attack, 'pacd', refuse)
  monkeypatch.setattr(certification, 'certify_dataset', refuse)
  cell_file = os.path.join(workdir, 'cells', results['rows'][1]['cell'], 'result.json')
  mtime = os.path.getmtime(cell_file)
  again = protocol.run_protocol(tiny_config(), workdir)
  for key in ('rows', 'aggregates', 'poisons', 'transfer_matrix', 'figures'):
    assert _same(again[key], results[key]), key
  assert os.path.getmtime(cell_file) == mtime


def test_interrupted_cell_resumes_to_the_same_result(finished, tmp_path, monkeypatch):
  workdir, results = finished
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  cell = results['rows'][1]['cell']  # The PACD victim.
  cell_dir = os.path.join(copy, 'cells', cell)
  # As if killed while training its second (last) epoch ...
  os.remove(os.path.join(cell_dir, 'result.json'))
  os.remove(os.path.join(cell_dir, 'train', 'summary.json'))
  ckpt_dir = os.path.join(cell_dir, 'train', 'checkpoints')
  last = max(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  shutil.rmtree(os.path.join(ckpt_dir, str(last)))
  # ... after a previous life had certified one point and was cut mid-line.
  tsv = os.path.join(cell_dir, 'certify.tsv')
  with open(tsv) as f:
    lines = f.read().splitlines(keepends=True)
  with open(tsv, 'w') as f:
    f.write(''.join(lines[:2]) + lines[2][:5])
  os.remove(os.path.join(cell_dir, 'certify_all_classes.tsv'))

  calls = []
  real_train = train.train

  def counting_train(config, splits, workdir_):
    calls.append(workdir_)
    return real_train(config, splits, workdir_)

  def refuse(*args, **kwargs):
    raise AssertionError('the finished attack was run again')

  monkeypatch.setattr(train, 'train', counting_train)
  monkeypatch.setattr(attack, 'pacd', refuse)
  resumed = protocol.run_protocol(tiny_config(), copy)
  assert calls == [os.path.join(cell_dir, 'train')]
  assert _same(_without_times(resumed['rows']), _without_times(results['rows']))
  rows = metrics.read_certification_tsv(tsv)
  assert len(rows) == 4 and rows[0] == metrics.parse_tsv_row(lines[1])  # Kept as it was.


def test_experiment_script_resumes_a_finished_workdir(finished, tmp_path):
  workdir, results = finished
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'run.py'),
       f'--config={os.path.join(ROOT, "rsp", "configs", "protocol.py")}:tiny',
       f'--workdir={copy}'],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert '| gaussian | lenet | clean |' in proc.stdout
  assert _same(workdir_lib.read_json(os.path.join(copy, 'results.json'))['rows'],
               results['rows'])


def test_workdir_made_with_other_settings_is_refused(finished):
  workdir, _ = finished
  config = tiny_config()
  config.certify.n = 128
  config.victims.gaussian.learning_rate = 1e-3
  config.victims.gaussian.log_every_steps = 7  # May change: no number depends on it.
  before = sorted(os.listdir(workdir))
  with pytest.raises(workdir_lib.SettingsMismatchError) as e:
    protocol.run_protocol(config, workdir)
  message = str(e.value)
  assert 'gaussian-lenet-none-seed0 holds a victim' in message
  assert '2 fields differ' in message  # Every differing field, and only those.
  assert 'certify.n: 64 there, 128 now' in message
  assert 'victims.gaussian.learning_rate: 0.003 there, 0.001 now' in message
  assert ('--config.certify.n=64' in message and
          '--config.victims.gaussian.learning_rate=0.003' in message)
  assert sorted(os.listdir(workdir)) == before
  config = tiny_config()
  config.attacks.gaussian.attack.num_epochs += 1
  with pytest.raises(workdir_lib.SettingsMismatchError,
                     match=r'poison set \(pacd_gaussian\)(.|\n)*'
                           r'attacks\.gaussian\.attack\.num_epochs: '):
    protocol.run_protocol(config, workdir)
  config = tiny_config()
  config.certify.seed = 1  # Another certification seed: other noise for every point.
  with pytest.raises(workdir_lib.SettingsMismatchError,
                     match=r'certify\.seed: 0 there, 1 now'):
    protocol.run_protocol(config, workdir)
  assert sorted(os.listdir(workdir)) == before


def test_paired_statistics_of_the_run(finished):
  """Identities that hold for any victims: the mean paired radius difference is the ACR
  difference, the counts add up, and the aggregates of one seed are its row."""
  _, results = finished
  by_poison = {r['poison']: r for r in results['rows']}
  assert by_poison['none']['vs_clean'] is None
  for r in results['rows'][1:]:
    d = r['vs_clean']
    assert d['mean'] == pytest.approx(r['acr'] - r['acr_clean'], abs=1e-12)
    assert d['num_fell'] + d['num_rose'] + d['num_unchanged'] == r['num_certified']
  pacd = by_poison['pacd']
  assert pacd['vs_random']['mean'] == pytest.approx(
      pacd['acr'] - by_poison['random']['acr'], abs=1e-12)
  assert by_poison['random']['vs_random'] is None
  for a, r in zip(results['aggregates'], results['rows']):
    assert a['acr_mean'] == r['acr'] and a['acr_ci'] is None and a['seeds'] == [0]
  vs_random = results['aggregates'][1]['acr_vs_random']
  assert vs_random['n'] == 1 and vs_random['ci'] is None
  assert vs_random['mean'] == pytest.approx(pacd['acr'] - by_poison['random']['acr'])
  for r in results['rows']:  # The clean accuracy splits into target and other classes.
    assert 0 <= r['clean_accuracy_non_target'] <= 1
    assert min(r['target_accuracy'], r['clean_accuracy_non_target']) - 1e-12 <= \
        r['clean_accuracy'] <= max(r['target_accuracy'],
                                   r['clean_accuracy_non_target']) + 1e-12


def test_results_are_written_before_the_figures(finished, tmp_path, monkeypatch):
  workdir, results = finished
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, 'results.json'))
  os.remove(os.path.join(copy, 'results.md'))
  shutil.rmtree(os.path.join(copy, 'figures'))
  with open(os.path.join(copy, 'figures'), 'w') as f:
    f.write('not a directory')
  monkeypatch.setattr(train, 'train', None)  # Nothing is trained again.
  with pytest.raises(report.FigureError, match=r'results\.json and results\.md are '
                     r'written(.|\n)*figures.*is a file'):
    protocol.run_protocol(tiny_config(), copy)
  written = workdir_lib.read_json(os.path.join(copy, 'results.json'))
  assert _same(written['rows'], results['rows']) and written['figures'] == []
  assert os.path.isfile(os.path.join(copy, 'results.md'))


def _set(config, path, value):
  *parents, leaf = path.split('.')
  for p in parents:
    config = config[p]
  config[leaf] = value


@pytest.mark.parametrize('path,value,match', [
    ('poison_kinds', ('pacd', 'random'), "must include 'none'"),
    ('poison_kinds', ('none', 'backdoor'), 'unknown'),
    ('archs', ('resnet20',), 'takes images of shape'),
    ('archs', ('transformer',), r"config\.archs=\('transformer',\) has unknown"),
    ('train_methods', ('gaussian', 'macer'), 'config.victims has no such entry'),
    ('crafted_against', ('smoothadv',), 'config.attacks has no such entry'),
    ('other_arch_methods', ('macer',), 'subset of config.train_methods'),
    ('seeds', (0, 0), 'distinct'),
    ('seeds', (), 'at least one'),
    ('eps', 0.0, 'config.eps'),
    ('target_class', 10, 'config.target_class'),
    ('dataset', 'imagenet', 'config.dataset'),
    ('certify.n', 0, 'config.certify.n'),
    ('certify.n', 5, r'config\.certify\.n=5 is too small.*use n >= 10'),
    ('certify.n0', 0, 'config.certify.n0'),
    ('certify.alpha', 0.7, 'config.certify.alpha'),
    ('certify.all_classes_points', -1, 'all_classes_points'),
    ('victims.gaussian.loss.sigma', 0.0, r'^config\.victims\.gaussian\.loss\.sigma=0\.0 is invalid'),
    ('attacks.gaussian.attack.solver', 'magic', r'^config\.attacks\.gaussian\.attack\.solver'),
    ('victims.gaussian.num_epochs', 0, r'^config\.victims\.gaussian\.num_epochs=0'),
    ('victims.gaussian.learning_rate', -1.0, r'^config\.victims\.gaussian\.learning_rate'),
    ('poison_file', '/nonexistent/poisons.npz', 'does not exist'),
])
def test_bad_config_raises_before_any_work(tmp_path, path, value, match, monkeypatch):
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


def test_configs_validate_and_resolve_their_grids():
  small = protocol_config.get_config(None)
  assert (small.dataset, small.target_class, small.eps, small.archs) == (
      'mnist_embedded', 8, 0.1, ('lenet',))
  assert (small.certify.num_points, small.certify.n, small.certify.n0,
          small.certify.alpha) == (100, 10_000, 100, 0.001)
  assert small.victims.gaussian.loss.sigma == 0.5 and small.attacks.gaussian.attack.sigma == 0.5
  grids = {'small': (small, 3),  # none, pacd, random
           'transfer': (protocol_transfer.get_config('small'), 3 * 5 + 5),
           'mnist_paper': (protocol_mnist_paper.get_config(None), 3 * 7 * 3 + 2 * 7 * 3),
           'cifar10_paper': (protocol_cifar10_paper.get_config(None), 3 * 5 + 5)}
  for paper in (grids['mnist_paper'][0], grids['cifar10_paper'][0]):
    assert (paper.certify.num_points, paper.certify.n, paper.certify.n0,
            paper.certify.alpha, paper.certify.batch_size) == (500, 100_000, 100, 0.001,
                                                                10_000)
  for name, (config, num_cells) in grids.items():
    protocol.validate_config(config)
    grid_cells = protocol.resolve_cells(config)
    assert len(grid_cells) == num_cells, name
    assert len({c.name for c in grid_cells}) == num_cells
  transfer = protocol.resolve_cells(protocol_transfer.get_config('small'))
  assert {(c.crafted_against, c.train_method) for c in transfer if c.arch == 'lenet' and
          c.poison == 'pacd'} == {(a, m) for a in common.ATTACK_METHODS
                                  for m in common.ATTACK_METHODS}
  assert {c.train_method for c in transfer if c.arch != 'lenet'} == {'gaussian'}
  # Comma-separated command-line values are split.
  config = protocol_config.get_config('tiny')
  config.seeds = (0, 1)
  config.poison_kinds = ('none,random',)
  assert [c.name for c in protocol.resolve_cells(config)] == [
      'gaussian-lenet-none-seed0', 'gaussian-lenet-none-seed1',
      'gaussian-lenet-random-seed0', 'gaussian-lenet-random-seed1']
  with pytest.raises(ValueError, match='mode'):
    protocol_config.get_config('huge')
  assert isinstance(cells_lib.victim_config(small, protocol.resolve_cells(small)[0]),
                    ml_collections.ConfigDict)
