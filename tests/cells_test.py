"""Tests of rsp.cells, the protocol's grid resolved without work: the grid each sweep
axis resolves to, what its cells share, their names and specs, the checks of
config.sweep and config.pacd_victims, and the rows' arithmetic along an axis (drops,
aggregates, curves, tables, figures, subsets of certified points).

Nothing is trained: configs are resolved and synthetic rows are aggregated. Every
assertion holds exactly: no test can fail by chance."""


import ml_collections
import numpy as np
import pytest

from rsp import cells as cells_lib
from rsp import data
from rsp import metrics
from rsp import plotting
from rsp import protocol
from rsp import report
from rsp.configs import protocol as protocol_config
from rsp.configs import protocol_methods
from rsp.configs import protocol_sweep


def _sweep(axes=None, mode='small'):
  config = protocol_sweep.get_config(mode)
  if axes is not None:
    config.sweep.axes = axes
  return config


@pytest.mark.parametrize('axes,attacks,victims', [
    ((), 1, 6), (('eps',), 4, 18), (('poison_fraction',), 3, 14),
    (('victim_sigma',), 1, 18), (('target_class',), 3, 18), (('victim_epochs',), 1, 18),
    (None, 8, 62)])
def test_each_axis_resolves_to_the_documented_grid(axes, attacks, victims):
  """The counts of the small mode's docstring table."""
  config = _sweep(axes)
  protocol.validate_config(config)
  cells = protocol.resolve_cells(config)
  keys = cells_lib.poison_keys(config, cells)
  assert len([k for k in keys if k.poison == 'pacd']) == attacks
  assert len(cells) == victims == len({c.name for c in cells})
  assert protocol_sweep.__doc__.count(f'| {attacks} | {victims} |') >= 1


def test_victims_and_attacks_are_shared_where_their_numbers_are():
  config = _sweep()
  cells = protocol.resolve_cells(config)
  settings = {c: cells_lib.cell_setting(config, c) for c in cells}
  # One clean victim per (method, arch, victim sigma, target class, epochs, seed),
  # whatever the eps or fraction ...
  clean = [(c.train_method, c.arch, s['victim_sigma'], s['target_class'],
            s['victim_epochs'], c.seed)
           for c, s in settings.items() if c.poison == 'none']
  assert len(clean) == len(set(clean)) == (1 + 2 + 2 + 2) * 2
  assert all(s['eps'] is None and s['poison_fraction'] is None
             for c, s in settings.items() if c.poison == 'none')
  # ... one attack per (method, eps, fraction, target class), the victims' sigma aside.
  keys = cells_lib.poison_keys(config, cells)
  budgets = [(k.crafted_against, *cells_lib.poison_setting(config, k).values())
             for k in keys if k.poison == 'pacd']
  assert len(budgets) == len(set(budgets)) == 8
  sigma_cells = [c for c in cells if c.victim_sigma is not None and c.poison == 'pacd']
  assert {c.poison_set for c in sigma_cells} == {'pacd_gaussian'}
  # Every PACD cell has the random baseline of the same budget and victim beside it,
  # and a clean victim to measure its drop against.
  by_key = {(c.poison, c.seed, *settings[c].values()): c for c in cells}
  for c in cells:
    if c.poison == 'pacd':
      s = settings[c]
      assert ('random', c.seed, *s.values()) in by_key
      assert ('none', c.seed, s['target_class'], s['victim_sigma'], s['victim_epochs'],
              None, None) in by_key


def test_names_and_specs_carry_the_setting():
  config = _sweep()
  cells = {c.name: c for c in protocol.resolve_cells(config)}
  assert {'gaussian-lenet-pacd_gaussian-seed0', 'gaussian-lenet-none-seed1',
          'gaussian-lenet-pacd_gaussian-eps0.025-seed0',
          'gaussian-lenet-random-frac0.25-seed1', 'gaussian-lenet-none-sigma1-seed0',
          'gaussian-lenet-random-sigma0.25-seed0', 'gaussian-lenet-none-class3-seed0',
          'gaussian-lenet-pacd_gaussian-class0-seed1'} <= set(cells)
  assert cells['gaussian-lenet-pacd_gaussian-seed0'].sweep_axis is None
  assert cells['gaussian-lenet-random-frac0.25-seed1'].sweep_axis == 'poison_fraction'
  test = data.load('mnist_embedded', seed=0)['test']
  points = cells_lib.certification_points(config, test, list(cells.values()))
  assert sorted(points) == [0, 3, 8]
  assert all(np.all(test['label'][p[0]] == cls) for cls, p in points.items())

  def spec(name):
    cell = cells[name]
    return cells_lib.cell_spec(config, cell, *points[cells_lib.cell_setting(
        config, cell)['target_class']])

  base = spec('gaussian-lenet-pacd_gaussian-seed0')
  assert (base['eps'], base['target_class'], 'poison_fraction' in base) == (0.1, 8, False)
  assert spec('gaussian-lenet-pacd_gaussian-eps0.025-seed0')['eps'] == 0.025
  frac = spec('gaussian-lenet-random-frac0.25-seed1')
  assert (frac['poison_fraction'], frac['poison_subset_seed']) == (0.25, 0)
  sigma = spec('gaussian-lenet-none-sigma1-seed0')
  assert sigma['victims']['gaussian']['loss']['sigma'] == 1.0
  assert sigma['certify']['sigma'] == 1.0
  cls = spec('gaussian-lenet-pacd_gaussian-class3-seed0')
  assert cls['target_class'] == 3 and cls['inputs']['certified_points'] == [
      int(i) for i in points[3][0]]
  # The victim of a sigma cell trains at that sigma; its poisons are the base attack's.
  sigma_cell = cells['gaussian-lenet-pacd_gaussian-sigma1-seed0']
  victim = cells_lib.victim_config(config, sigma_cell)
  assert victim.loss.sigma == 1.0 and victim.target_class == 8
  attack = cells_lib.attack_config(config, 'gaussian', sigma_cell.poison_key)
  assert attack.attack.sigma == 0.5 and attack.eps == 0.1
  class_cell = cells['gaussian-lenet-pacd_gaussian-class3-seed0']
  attack = cells_lib.attack_config(config, 'gaussian', class_cell.poison_key)
  assert (attack.target_class, attack.eps, attack.poison_fraction) == (3, 0.1, 1.0)


def test_a_grid_without_sweeps_is_the_grid_of_before():
  config = protocol_config.get_config('small')
  assert cells_lib.sweep_axes(config) == ()
  assert [c.name for c in protocol.resolve_cells(config)] == [
      'gaussian-lenet-none-seed0', 'gaussian-lenet-pacd_gaussian-seed0',
      'gaussian-lenet-random-seed0']
  # A swept value equal to the base's is the base cell, not a second one.
  config.sweep.axes = ('eps', 'victim_sigma')
  config.sweep.eps = (0.1,)
  config.sweep.victim_sigma = (0.5,)
  assert len(protocol.resolve_cells(config)) == 3
  # Comma-separated command-line values are read.
  config.sweep.axes = ('eps,target_class',)
  config.sweep.eps = ('0.05, 0.2',)
  config.sweep.target_class = (3,)
  assert cells_lib.sweep_points(config) == [{}, {'eps': 0.05}, {'eps': 0.2},
                                           {'target_class': 3}]


def _set(config, path, value):
  *parents, leaf = path.split('.')
  for p in parents:
    config = config[p]
  config[leaf] = value


@pytest.mark.parametrize('changes,match', [
    ({'sweep.axes': ('epsilon',)}, r"config\.sweep\.axes=\('epsilon',\) has unknown"),
    ({'sweep.axes': ('eps',), 'sweep.eps': ()},
     r"config\.sweep\.axes names 'eps' but config\.sweep\.eps is empty"),
    ({'sweep.eps': (0.05, 1.5)}, r'config\.sweep\.eps=\(0\.05, 1\.5\) has 1\.5: an eps '
                                 r'must be a number in \(0, 1\]'),
    ({'sweep.eps': (0.05, 0.05)}, r'config\.sweep\.eps=\(0\.05, 0\.05\) repeats a value'),
    ({'sweep.poison_fraction': (0.0,)}, r'config\.sweep\.poison_fraction=\(0\.0,\) has '
                                        r'0\.0: a poisoned fraction must be'),
    ({'sweep.victim_sigma': (-0.5,)}, r'config\.sweep\.victim_sigma=\(-0\.5,\) has -0\.5'),
    ({'sweep.target_class': (3, 10)}, r'config\.sweep\.target_class=\(3, 10\) has 10: a '
                                      r'target class must be an integer in \[0, 9\]'),
    ({'certify.sigma': 0.5}, r'config\.certify\.sigma=0\.5 certifies every victim at one '
                             r'sigma; accepted: config\.certify\.sigma <= 0'),
    ({'sweep.axes': ('eps',), 'poison_file': '/some/poisons.npz'},
     r"sweeps 'eps', but config\.poison_file='/some/poisons\.npz' holds PACD poisons of "
     r'one budget'),
])
def test_bad_sweeps_are_refused_naming_the_field(changes, match):
  config = _sweep(mode='tiny')
  for path, value in changes.items():
    _set(config, path, value)
  with pytest.raises(ValueError, match=match):
    protocol.validate_config(config)


def test_a_victim_sigma_sweep_needs_victims_with_a_sigma():
  config = _sweep(('victim_sigma',), mode='tiny')
  standard = ml_collections.ConfigDict(config.victims.gaussian.to_dict())
  standard.method = 'standard'
  standard.loss = ml_collections.ConfigDict()
  config.victims.standard = standard
  config.train_methods = ('gaussian', 'standard')
  with pytest.raises(ValueError, match=r'config\.victims\.standard trains without noise'):
    protocol.validate_config(config)


# ------------------------------------------------------------------------------------
# Rows along an axis.


def _row(poison, seed, acr, **setting):
  setting = dict({'target_class': 8, 'victim_sigma': 0.5}, **setting)
  if poison != 'none':
    setting = dict({'eps': 0.1, 'poison_fraction': 1.0}, **setting)
  else:
    setting.update(eps=None, poison_fraction=None)
  axis = next((a for a, base in (('eps', 0.1), ('poison_fraction', 1.0),
                                 ('victim_sigma', 0.5), ('target_class', 8))
               if setting.get(a) is not None and setting[a] != base), None)
  name = f'{poison}-{seed}-{sorted(setting.items())}'
  return {'train_method': 'gaussian', 'arch': 'lenet', 'poison': poison,
          'crafted_against': 'gaussian' if poison == 'pacd' else '', 'seed': seed,
          'poison_set': poison, 'cell': name, 'acr': acr, 'num_certified': 2,
          'time': 1.0, 'sweep_axis': axis, **setting}


def _rows():
  rows = []
  for seed, noise in ((0, 0.0), (1, 0.02)):
    rows += [_row('none', seed, 1.0 + noise), _row('none', seed, 2.0 + noise,
                                                   victim_sigma=1.0)]
    for eps, drop in ((0.05, 0.2), (0.1, 0.5)):
      rows += [_row('pacd', seed, (1.0 + noise) * (1 - drop), eps=eps),
               _row('random', seed, (1.0 + noise) * (1 - drop / 5), eps=eps)]
    rows += [_row('pacd', seed, (2.0 + noise) * 0.9, victim_sigma=1.0),
             _row('random', seed, (2.0 + noise) * 0.99, victim_sigma=1.0)]
  return rows


def test_drops_and_comparisons_pair_the_right_victims():
  rows = _rows()
  radii = {r['cell']: [r['acr'], r['acr']] for r in rows}
  rows = metrics.add_paired_comparisons(metrics.add_acr_drops(rows), radii)
  by = {(r['poison'], r['seed'], r['eps'], r['victim_sigma']): r for r in rows}
  # The eps 0.05 victim's drop is against the one clean victim of its sigma and seed.
  assert by[('pacd', 1, 0.05, 0.5)]['acr_clean'] == pytest.approx(1.02)
  assert by[('pacd', 1, 0.05, 0.5)]['acr_drop_relative'] == pytest.approx(0.2)
  assert by[('pacd', 0, 0.1, 1.0)]['acr_clean'] == pytest.approx(2.0)
  assert by[('pacd', 0, 0.1, 1.0)]['acr_drop_relative'] == pytest.approx(0.1)
  # PACD against the random baseline of the same budget and victim.
  assert by[('pacd', 0, 0.05, 0.5)]['vs_random']['mean'] == pytest.approx(0.8 - 0.96)
  assert by[('pacd', 0, 0.1, 1.0)]['vs_random']['mean'] == pytest.approx(1.8 - 1.98)
  aggregates = metrics.aggregate_rows(rows)
  assert len(aggregates) == 2 + 2 * 2 + 2  # Clean x 2 sigmas, 2 eps x 2 kinds, sigma 1.
  pacd = next(a for a in aggregates if a['poison'] == 'pacd' and a['eps'] == 0.05)
  assert pacd['seeds'] == [0, 1] and pacd['sweep_axis'] == 'eps'
  assert pacd['acr_drop_relative_mean'] == pytest.approx(0.2)
  assert pacd['acr_vs_random']['n'] == 2


def test_sweep_series_are_the_curves_along_each_axis():
  rows = metrics.add_acr_drops(_rows())
  aggregates = metrics.aggregate_rows(rows)
  eps = metrics.sweep_series(aggregates, 'eps')
  assert [(s['poison'], s['values']) for s in eps] == [('pacd', [0.05, 0.1]),
                                                      ('random', [0.05, 0.1])]
  assert eps[0]['mean'] == pytest.approx([0.2, 0.5])
  assert eps[1]['mean'] == pytest.approx([0.04, 0.1])
  for s in eps:
    for (low, high), m in zip(s['ci'], s['mean']):
      assert low <= m <= high
  sigma = metrics.sweep_series(aggregates, 'victim_sigma')
  assert [(s['poison'], s['values']) for s in sigma] == [('pacd', [0.5, 1.0]),
                                                        ('random', [0.5, 1.0])]
  assert sigma[0]['mean'] == pytest.approx([0.5, 0.1])
  assert metrics.sweep_series(aggregates, 'target_class')[0]['values'] == [8]
  with pytest.raises(ValueError, match="axis='sigma' is not known"):
    metrics.sweep_series(aggregates, 'sigma')


def test_sweep_tables_and_figures(tmp_path):
  aggregates = metrics.aggregate_rows(metrics.add_acr_drops(_rows()))
  curves = metrics.sweep_series(aggregates, 'eps')
  lines = report._sweep_table('eps', curves)
  assert lines[0] == ('| eps (L-inf budget) | PACD (vs gaussian): ACR drop | random ±eps: '
                      'ACR drop |')
  assert lines[2].startswith('| 0.05 | 20.0% [20.0, 20.0] | 4.0% [4.0, 4.0] |')
  labelled = [dict(c, label=report._series_label(c, False)) for c in curves]
  for axis, kwargs in (('eps', dict(log_x=True)), ('class', dict(categorical=True))):
    path = str(tmp_path / f'{axis}.png')
    plotting.plot_sweep(labelled, path, xlabel=axis, **kwargs)
    with open(path, 'rb') as f:
      assert f.read(4) == b'\x89PNG'
  one_seed = [dict(c, ci=[None] * len(c['values'])) for c in labelled]
  plotting.plot_sweep(one_seed, None, xlabel='eps')  # No band: one seed.
  assert report.setting_label(next(a for a in aggregates if a['eps'] == 0.05)) == \
      'eps 0.05'
  assert report.setting_label({'setting': {'eps': 0.05, 'target_class': 3}}) == \
      'eps 0.05, class 3'
  with pytest.raises(ValueError, match='series is empty'):
    plotting.plot_sweep([], None, xlabel='eps')


# ------------------------------------------------------------------------------------
# How many points are certified.


def test_subset_acr_spread_over_subset_seeds():
  values = np.linspace(0.0, 2.0, 100)
  out = metrics.subset_acr(values, (10, 50, 0, 200), num_seeds=30)
  assert [s['m'] for s in out] == [10, 50, 100, 100]
  for s in out[2:]:  # All points: one "subset", the ACR itself.
    assert s['all_points'] and s['num_subsets'] == 1 and s['std'] == 0.0
    assert s['mean'] == s['all'] == pytest.approx(1.0)
  small, half = out[0], out[1]
  assert small['num_subsets'] == 30 and small['min'] <= small['mean'] <= small['max']
  assert small['std'] > half['std'] > 0  # Fewer points, more spread (for this draw).
  # Subset seed s draws as rsp.data.seeded_subset_indices(n, m, s).
  first = values[data.seeded_subset_indices(100, 10, 0)].mean()
  assert metrics.subset_acr(values, (10,), num_seeds=2)[0]['min'] <= first <= \
      metrics.subset_acr(values, (10,), num_seeds=2)[0]['max']
  assert metrics.subset_acr(values, (10,), num_seeds=30) == [small]  # Deterministic.
  for bad, match in (((), 'sizes'), ((-1,), 'sizes'), ((1.5,), 'sizes')):
    with pytest.raises(ValueError, match=match):
      metrics.subset_acr(values, bad)
  with pytest.raises(ValueError, match='num_seeds=1 must be an integer >= 2'):
    metrics.subset_acr(values, (10,), num_seeds=1)


def test_subset_acr_drop_pairs_the_points():
  clean = np.linspace(0.5, 1.5, 60)
  out = metrics.subset_acr_drop(clean, 0.7 * clean, (20, 0), num_seeds=5)
  for s in out:  # A uniform 30% drop is 30% on every subset.
    assert s['mean'] == pytest.approx(0.3) and s['std'] == pytest.approx(0.0, abs=1e-12)
  with pytest.raises(ValueError, match='same points'):
    metrics.subset_acr_drop(clean, clean[:10])


def test_pacd_victims_is_checked():
  """Deterministic: a bad value, and PACD sets no trained method would train on."""
  config = protocol_methods.get_config('tiny')
  config.pacd_victims = 'diagonal'
  with pytest.raises(ValueError, match="config.pacd_victims='diagonal' is not known; "
                     'accepted: all, own'):
    protocol.validate_config(config)
  config = protocol_methods.get_config('tiny')
  config.train_methods = ('gaussian', 'macer')
  with pytest.raises(ValueError, match=r"has \['smoothadv'\], which config.train_methods"):
    protocol.validate_config(config)
