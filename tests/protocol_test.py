"""The evaluation protocol end to end on the tiny config: results per DESIGN.md, resume,
perturbation statistics against hand computations, config checks before any work.

One tiny protocol run (PACD, 4 victims, certification) is shared by the module."""

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
from rsp import certification
from rsp import data
from rsp import metrics
from rsp import plotting
from rsp import protocol
from rsp import train
from rsp.configs import protocol as protocol_config
from rsp.configs import protocol_cifar10_paper
from rsp.configs import protocol_mnist_paper
from rsp.configs import protocol_transfer

jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KEYS = ('train_method', 'arch', 'poison', 'sigma', 'acr', 'certified_accuracy',
            'clean_accuracy', 'target_accuracy', 'num_certified', 'seed', 'acr_drop',
            'acr_drop_relative', 'time')
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
  on_disk = metrics.read_json(os.path.join(workdir, 'results.json'))
  assert set(on_disk) >= {'config', 'rows'}
  assert on_disk['config'] == json.loads(json.dumps(tiny_config().to_dict()))
  rows = on_disk['rows']
  assert [(r['poison'], r['attack']) for r in rows] == [
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
  assert stats['mean_delta'] > 0  # Clipped sign noise brightens MNIST (FINDINGS.md).
  assert on_disk['poisons']['pacd_gaussian']['statistics']['linf'] <= 0.1 + 1e-6

  with open(os.path.join(workdir, 'results.md')) as f:
    markdown = f.read()
  for text in ('| training method | arch | training set | ACR | ACR drop',
               '| gaussian | lenet | PACD (vs gaussian) |', 'PSNR (dB)', 'SSIM',
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
  assert _same(metrics.read_json(os.path.join(copy, 'results.json'))['rows'],
               results['rows'])


def test_workdir_made_with_other_settings_is_refused(finished):
  workdir, _ = finished
  config = tiny_config()
  config.certify.n = 128
  before = sorted(os.listdir(workdir))
  with pytest.raises(ValueError, match=r'other settings.*certify\.n: 64 -> 128'):
    protocol.run_protocol(config, workdir)
  assert sorted(os.listdir(workdir)) == before


def _set(config, path, value):
  *parents, leaf = path.split('.')
  for p in parents:
    config = config[p]
  config[leaf] = value


@pytest.mark.parametrize('path,value,match', [
    ('poisons', ('pacd', 'random'), "must include 'none'"),
    ('poisons', ('none', 'backdoor'), 'unknown'),
    ('archs', ('resnet20',), 'takes images of shape'),
    ('archs', ('transformer',), 'not known'),
    ('train_methods', ('gaussian', 'macer'), 'config.victims has no such entry'),
    ('attack_methods', ('smoothadv',), 'config.attacks has no such entry'),
    ('other_arch_methods', ('macer',), 'subset of config.train_methods'),
    ('seeds', (0, 0), 'distinct'),
    ('seeds', (), 'at least one'),
    ('eps', 0.0, 'config.eps'),
    ('target_class', 10, 'config.target_class'),
    ('dataset', 'imagenet', 'config.dataset'),
    ('certify.n', 0, 'config.certify.n'),
    ('certify.alpha', 0.7, 'config.certify.alpha'),
    ('certify.all_classes_points', -1, 'all_classes_points'),
    ('victims.gaussian.loss.sigma', 0.0, 'no training sigma'),
    ('attacks.gaussian.attack.solver', 'magic', 'config.attack.solver'),
    ('victims.gaussian.num_epochs', 0, 'num_epochs'),
    ('poison_file', '/nonexistent/poisons.npz', 'does not exist'),
])
def test_bad_config_raises_before_any_work(tmp_path, path, value, match):
  config = tiny_config()
  _set(config, path, value)
  workdir = str(tmp_path / 'never')
  with pytest.raises(ValueError, match=match):
    protocol.run_protocol(config, workdir)
  assert not os.path.exists(workdir)


def test_perturbation_statistics_against_hand_computation():
  clean = np.full((3, 28, 28, 1), 0.5)
  poisoned = clean.copy()
  poisoned[0] += 0.1                                   # A constant brightening.
  checker = np.indices((28, 28)).sum(0) % 2 * 2 - 1    # +-1 checkerboard
  poisoned[1, ..., 0] += 0.05 * checker                # Zero-mean +-0.05.
  s = protocol.perturbation_statistics(clean, poisoned)
  assert s['num_images'] == 3 and s['num_unchanged'] == 1
  assert s['linf'] == pytest.approx(0.1)
  assert s['linf_mean'] == pytest.approx((0.1 + 0.05) / 3)
  # ||delta||_2 = |delta| * sqrt(784) = 28 |delta|.
  assert s['l2_mean'] == pytest.approx((2.8 + 1.4 + 0.0) / 3)
  assert s['l2_max'] == pytest.approx(2.8)
  # PSNR = 10 log10(1 / MSE): 20 dB at MSE 0.01, 26.02 dB at 0.0025; the unchanged
  # image (infinite PSNR) is left out of the mean.
  assert s['psnr_mean'] == pytest.approx((20.0 + 10 * np.log10(1 / 0.0025)) / 2)
  # SSIM of flat images reduces to the luminance term (2 mu_x mu_y + C1) /
  # (mu_x^2 + mu_y^2 + C1), C1 = (0.01 * data_range)^2; identical images give 1.
  c1 = 1e-4
  flat = (2 * 0.5 * 0.6 + c1) / (0.5 ** 2 + 0.6 ** 2 + c1)
  ssim = protocol.perturbation_statistics(clean[[0, 2]], poisoned[[0, 2]])['ssim_mean']
  assert ssim == pytest.approx((flat + 1.0) / 2, abs=1e-6)
  assert s['mean_delta'] == pytest.approx(0.1 / 3)
  assert s['fraction_changed'] == pytest.approx(2 / 3)
  rgb = protocol.perturbation_statistics(np.zeros((2, 8, 8, 3)), np.full((2, 8, 8, 3), 0.1))
  assert rgb['psnr_mean'] == pytest.approx(20.0)
  with pytest.raises(ValueError, match='same'):
    protocol.perturbation_statistics(clean, poisoned[:2])


def test_zero_mean_random_poisons_leave_the_bounds_alone():
  train_split = data.load('mnist_embedded', seed=0)['train']
  eps = 0.1
  idx, poisons = protocol.zero_mean_random_poisons(jax.random.key(0), train_split,
                                                   target_class=8, eps=eps)
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


def _row(method, arch, poison, seed, acr, attack_=''):
  return {'train_method': method, 'arch': arch, 'poison': poison, 'attack': attack_,
          'poison_set': f'pacd_{attack_}' if poison == 'pacd' else poison, 'seed': seed,
          'acr': acr, 'certified_accuracy': 0.5, 'clean_accuracy': 0.9,
          'target_accuracy': 0.8, 'num_certified': 100, 'time': 1.0}


def test_drops_means_and_the_transfer_matrix():
  rows = [_row('gaussian', 'lenet', 'none', 0, 1.0), _row('gaussian', 'lenet', 'none', 1, 1.2),
          _row('gaussian', 'lenet', 'pacd', 0, 0.6, 'gaussian'),
          _row('gaussian', 'lenet', 'pacd', 1, 0.9, 'gaussian'),
          _row('gaussian', 'lenet', 'pacd', 0, 0.8, 'macer'),
          _row('gaussian', 'lenet', 'pacd', 1, 0.9, 'macer')]
  with_drops = protocol.add_acr_drops(rows)
  assert [r['acr_drop_relative'] for r in with_drops] == pytest.approx(
      [0.0, 0.0, 0.4, 0.25, 0.2, 0.25])
  aggregates = protocol.aggregate_rows(with_drops)
  assert [(a['poison_set'], a['seeds']) for a in aggregates] == [
      ('none', [0, 1]), ('pacd_gaussian', [0, 1]), ('pacd_macer', [0, 1])]
  assert aggregates[1]['acr_mean'] == pytest.approx(0.75)
  assert aggregates[1]['acr_std'] == pytest.approx(np.std([0.6, 0.9], ddof=1))
  assert aggregates[1]['acr_drop_relative_mean'] == pytest.approx(0.325)
  assert aggregates[0]['time'] == 2.0
  matrix = protocol.transfer_matrix(aggregates)
  assert matrix['attacks'] == ['gaussian', 'macer'] and matrix['victims'] == ['gaussian/lenet']
  assert np.allclose(matrix['acr_drop_relative'], [[0.325], [0.225]])
  single = protocol.aggregate_rows(protocol.add_acr_drops(rows[:1] + rows[2:3]))
  assert single[1]['acr_std'] is None and protocol.transfer_matrix(single) is None
  figure = plotting.plot_acr_drop(aggregates)
  assert len(figure.axes[0].patches) == 2
  assert figure.axes[0].patches[0].get_height() == pytest.approx(32.5)
  with pytest.raises(ValueError, match='no poisoned cell'):
    plotting.plot_acr_drop(aggregates[:1])


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
    cells = protocol.resolve_cells(config)
    assert len(cells) == num_cells, name
    assert len({c.name for c in cells}) == num_cells
  transfer = protocol.resolve_cells(protocol_transfer.get_config('small'))
  assert {(c.attack, c.train_method) for c in transfer if c.arch == 'lenet' and
          c.poison == 'pacd'} == {(a, m) for a in protocol_transfer.METHODS
                                  for m in protocol_transfer.METHODS}
  assert {c.train_method for c in transfer if c.arch != 'lenet'} == {'gaussian'}
  # Comma-separated command-line values are split.
  config = protocol_config.get_config('tiny')
  config.seeds = (0, 1)
  config.poisons = ('none,random',)
  assert [c.name for c in protocol.resolve_cells(config)] == [
      'gaussian-lenet-none-seed0', 'gaussian-lenet-none-seed1',
      'gaussian-lenet-random-seed0', 'gaussian-lenet-random-seed1']
  with pytest.raises(ValueError, match='mode'):
    protocol_config.get_config('huge')
  assert isinstance(protocol.victim_config(small, protocol.resolve_cells(small)[0]),
                    ml_collections.ConfigDict)
