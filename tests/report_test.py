"""Tests of rsp.report: the markdown of a synthetic results dict, with the mean and its
interval in one cell, and the cell formats.

Deterministic string rendering: no test can fail by chance."""

import copy

import pytest

from rsp import metrics
from rsp import report


def _row(poison, seed, acr, against=''):
  return {'train_method': 'gaussian', 'arch': 'lenet', 'poison': poison,
          'crafted_against': against, 'seed': seed,
          'poison_set': f'pacd_{against}' if poison == 'pacd' else poison,
          'cell': f'{poison}{against}-{seed}', 'acr': acr, 'certified_accuracy': 0.9,
          'abstain_rate': 0.05, 'clean_accuracy': 0.97, 'target_accuracy': 0.96,
          'clean_accuracy_non_target': 0.971, 'acr_all_classes': acr,
          'acr_non_target': 1.1, 'certified_accuracy_non_target': 0.95,
          'num_certified': 3, 'time': 60.0,
          'certified_accuracy_curve': {'radius': [0.0, 0.25, 0.5],
                                       'accuracy': [0.9, 0.8, acr / 2]}}


def _results(seeds=(0, 1)):
  rows = [_row(kind, s, acr, against) for kind, against, acrs in (
      ('none', '', (1.3, 1.2)), ('pacd', 'gaussian', (0.5, 0.46)),
      ('random', '', (0.98, 0.9))) for s, acr in zip(seeds, acrs)]
  radii = {r['cell']: [r['acr']] * 3 for r in rows}
  radii['pacdgaussian-0'] = [0.0, 0.5, 1.5]  # Against 1.3: two fell, one rose.
  rows = metrics.add_paired_comparisons(metrics.add_acr_drops(rows), radii)
  aggregates = metrics.aggregate_rows(rows)
  return {
      'config': {'name': 'synthetic', 'dataset': 'mnist_embedded', 'data_seed': 0,
                 'target_class': 8, 'eps': 0.1,
                 'certify': {'n0': 100, 'n': 10000, 'alpha': 0.001, 'subset_seed': 0,
                             'all_classes_points': 6}},
      'rows': rows, 'aggregates': aggregates,
      'transfer_matrix': {'crafted_against': ['gaussian', 'macer'],
                          'victims': ['gaussian/lenet'],
                          'acr_drop_relative': [[0.616], [None]],
                          'acr_drop_relative_ci': [[[0.551, 0.680]], [None]]},
      'poisons': {'pacd_gaussian': {
          'poison': 'pacd', 'crafted_against': 'gaussian', 'seconds': 240.0,
          'statistics': {'num_images': 350, 'linf': 0.1, 'l2_mean': 1.5,
                         'psnr_mean': 28.04, 'ssim_mean': 0.81, 'mean_delta': 0.01}}},
      'certified_points': [1, 2, 3], 'total_seconds': 600.0, 'wall_seconds': 5.0,
      'machine': {'cpu': 'Test CPU', 'cpu_count': 2, 'devices': ['cpu:cpu'],
                  'jax': '0.0', 'rsp': '0.0'},
      'figures': ['figures/acr_drop.png']}


def test_cells_hold_the_mean_and_its_interval():
  assert report.format_interval(0.616, [0.551, 0.680], percent=True) == \
      '61.6% [55.1, 68.0]'
  assert report.format_interval(0.498, [0.41, 0.5861]) == '0.498 [0.410, 0.586]'
  assert report.format_interval(0.498) == '0.498'
  assert report.format_interval(0.5, [None, None]) == '0.500'
  for missing in (None, float('nan')):
    assert report.format_interval(missing, [0.1, 0.2]) == '-'
  assert report.format_paired({'mean': -2 / 3, 'standard_error': 0.2, 'num_fell': 2,
                               'num_rose': 0}) == '-0.667 ± 0.200 (2 fell, 0 rose)'
  assert report.format_paired(None) == '-'
  assert report.format_paired_t({'mean': 0.25, 'ci': [0.1, 0.4], 'p_value': 0.0123}) \
      == '+0.250 [0.100, 0.400], p = 0.012'


def test_markdown_of_two_seeds_states_and_shows_the_intervals():
  results = _results()
  pacd = results['aggregates'][1]
  pacd['acr_drop_relative_mean'], pacd['acr_drop_relative_ci'] = 0.616, [0.551, 0.680]
  text = report.results_markdown(results)
  assert '95% confidence interval, Student t with n - 1 degrees of freedom' in text
  assert '| seeds | ACR [95% CI] | ACR drop [95% CI] |' in text  # In the header too.
  lines = text.splitlines()
  main = next(line for line in lines if line.startswith('| gaussian | lenet | PACD'))
  cells = [c.strip() for c in main.split('|')[1:-1]]
  assert cells[:5] == ['gaussian', 'lenet', 'PACD (vs gaussian)', '2',
                       report.format_interval(0.48, pacd['acr_ci'])]
  assert cells[5] == '61.6% [55.1, 68.0]'
  assert cells[6] == report.format_paired_t(pacd['acr_vs_random'])
  assert cells[6].startswith('-0.460 [')
  clean = next(line for line in lines if line.startswith('| gaussian | lenet | clean'))
  assert clean.split('|')[6].strip() == '-'  # No drop of the clean victim.
  # The per-victim paired table: seed 0's PACD victim lost two points' radius.
  paired = next(line for line in lines if line.startswith(
      '| gaussian | lenet | PACD (vs gaussian) | 0 |'))
  assert '(2 fell, 1 rose)' in paired.split('|')[6]
  for text_part in ('| r = 0 | r = 0.25 | r = 0.5 |', 'ACR (other classes)',
                    '| gaussian | 61.6% [55.1, 68.0] |', '| macer | - |',
                    'PSNR (dB)', '| PACD (vs gaussian) | 350 | 0.1000 | 1.500 | 28.0 |',
                    'Test CPU (2 cores)', '![acr_drop.png](figures/acr_drop.png)'):
    assert text_part in text, text_part
  assert '## Figures' not in report.results_markdown(results, include_figures=False)


def test_markdown_of_one_seed_has_no_interval_over_seeds():
  results = _results(seeds=(0,))
  results['transfer_matrix'] = None
  results['aggregates'] = [
      {k: v for k, v in a.items() if 'non_target' not in k and 'all_classes' not in k}
      for a in results['aggregates']]
  text = report.results_markdown(results)
  assert 'One victim seed' in text and 'Student t' not in text and '95% CI' not in text
  main = next(line for line in text.splitlines()
              if line.startswith('| gaussian | lenet | PACD'))
  assert '[' not in main
  assert 'ACR (other classes)' not in text and '## Transfer' not in text
  assert 'clean acc. (other classes)' in text


def test_missing_numbers_render_as_dashes():
  results = _results()
  broken = copy.deepcopy(results)
  for a in broken['aggregates']:
    a['acr_drop_relative_mean'] = None  # JSON's NaN: no clean ACR.
    a['certified_accuracy_curve'] = None
  text = report.results_markdown(broken)
  assert '## Certified accuracy at radius r' not in text
  with pytest.raises(KeyError):
    report.results_markdown({k: v for k, v in results.items() if k != 'machine'})


def _with_defenses(results):
  """``results`` with a knn victim per training set and seed, and DPA rows."""
  out = copy.deepcopy(results)
  base = [r for r in results['rows'] if r['poison'] in ('none', 'pacd')]
  defended = [dict(r, defense='knn', cell=r['cell'] + '-knn', acr=r['acr'] + 0.1,
                   detection={'precision': 0.25, 'recall': 0.5, 'auroc': 0.75,
                              'removed': 350, 'target_removed_fraction': 0.5})
              for r in base]
  rows = [dict(r, defense='none') for r in results['rows']] + defended
  radii = {r['cell']: [r['acr']] * 3 for r in rows}
  radii['pacdgaussian-0'] = [0.0, 0.5, 1.5]  # As in _results.
  rows = metrics.add_paired_comparisons(metrics.add_acr_drops(rows), radii)
  out['rows'], out['aggregates'] = rows, metrics.aggregate_rows(rows)
  out['dpa'] = [{
      'train_method': 'standard', 'arch': 'lenet', 'poison': p, 'crafted_against': a,
      'seed': 0, 'defense': 'dpa', 'dpa_partitions': 20,
      'partition_sizes': [160, 175.5, 190],
      'clean_accuracy': 0.9, 'target_accuracy': 0.85, 'certified_accuracy': 0.6,
      'modified_images': 350, 'dpa_budget': 700, 'max_certifiable': 10,
      'certified_accuracy_at_budget': 0.0, 'partitions_touched': touched,
      'certified_accuracy_at_touched': None if touched is None else 0.0,
      'vacuous': True, 'statement': 'Vacuous: no test point is certified.', 'time': 60.0}
      for p, a, touched in (('none', '', None), ('pacd', 'gaussian', 20))]
  return out


def test_markdown_of_defenses_and_dpa():
  results = _with_defenses(_results())
  text = report.results_markdown(results)
  lines = text.splitlines()
  # The undefended tables are as without defenses.
  plain = report.results_markdown(_results())
  assert text.split('## Defenses')[0] == plain.split('## Poisons')[0]
  header = next(line for line in lines if line.startswith('| defense |'))
  assert 'recovered of the ACR lost [95% CI]' in header and '| AUROC [95% CI] |' in header
  knn = next(line for line in lines if line.startswith('| knn | gaussian | lenet | PACD'))
  cells = [c.strip() for c in knn.split('|')[1:-1]]
  pacd = next(a for a in results['aggregates']
              if (a['defense'], a['poison']) == ('knn', 'pacd'))
  # ACR 0.58 [..], drop (1.25 - 0.58) / 1.25, recovered 0.1 / 0.77 on both seeds.
  assert cells[5] == report.format_interval(pacd['acr_mean'], pacd['acr_ci'])
  assert cells[7].startswith('13.0%')
  assert cells[8:12] == ['0.250 [0.250, 0.250]', '0.500 [0.500, 0.500]',
                         '0.750 [0.750, 0.750]', '350 [350, 350]']
  clean = next(line for line in lines if line.startswith('| none | gaussian | lenet | '
                                                        'clean'))
  assert [c.strip() for c in clean.split('|')[1:-1]][6:12] == ['-'] * 6
  for part in ('## Deep Partition Aggregation (not a smoothing certificate)',
               'count twice: a budget of 2m',
               '| PACD (vs gaussian) | 0 | 20 | 160 / 175.5 / 190 | 0.900 | 0.850 | '
               '0.600 | 350 | 700 | 10 | 0.000 | 20 | 0.000 |',
               '| clean | 0 | 20 | 160 / 175.5 / 190 | 0.900 | 0.850 | 0.600 | 350 | 700 '
               '| 10 | 0.000 | - | - |',
               '- PACD (vs gaussian): Vacuous: no test point is certified.',
               'for 12 trainings and certifications'):
    assert part in text, part
  # Without defended rows or DPA there is no such section.
  assert '## Defenses' not in plain and 'Partition' not in plain
