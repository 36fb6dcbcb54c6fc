"""Tests of rsp.metrics against hand computations and closed forms: ACR and certified
accuracy, the TSV round trip (and Cohen's format), Student-t intervals, paired
comparisons, the protocol's row arithmetic (drops, aggregation over seeds, transfer
matrix) and the perturbation statistics (PSNR, SSIM).

Every test is deterministic (fixed inputs, fixed seeds); the one simulation says how
likely a failure would be with another seed. Tolerances are relative 1e-9 for float64
arithmetic of a few operations."""

import json
import math

import numpy as np
import pytest
import scipy.stats

from rsp import metrics

Row = metrics.CertificationRow

# Five points: correct with radius 1.0 and 0.5, wrong with radius 2.0, an abstention,
# and correct with radius 0.0 (pA_lower exactly 1/2).
ROWS = [Row(0, 8, 8, 1.0, 1, 0.5), Row(1, 8, 8, 0.5, 1, 0.5), Row(2, 8, 3, 2.0, 0, 0.5),
        Row(3, 3, -1, 0.0, 0, 0.5), Row(4, 3, 3, 0.0, 1, 0.5)]


def test_acr_averages_over_all_points_counting_wrong_and_abstained_as_zero():
  a = metrics.rows_to_arrays(ROWS)
  assert metrics.average_certified_radius(a['radius'], a['correct']) == pytest.approx(0.3)
  assert np.isnan(metrics.average_certified_radius([], []))


def test_certified_accuracy_at_radii():
  a = metrics.rows_to_arrays(ROWS)
  np.testing.assert_allclose(
      metrics.certified_accuracy(a['radius'], a['correct'], [0.0, 0.5, 0.75, 1.0, 1.5]),
      [0.6, 0.4, 0.2, 0.2, 0.0])


def test_abstain_rate_and_per_class_acr():
  a = metrics.rows_to_arrays(ROWS)
  assert metrics.abstain_rate(a['predict']) == pytest.approx(0.2)
  per_class = metrics.per_class_acr(a['label'], a['radius'], a['correct'])
  assert per_class == {3: 0.0, 8: pytest.approx(0.5)}
  with_all = metrics.per_class_acr(a['label'], a['radius'], a['correct'], num_classes=10)
  assert len(with_all) == 10 and np.isnan(with_all[0])


def test_summary_and_comparison():
  summary = metrics.summarize_certification(ROWS, radii=[0.0, 1.0])
  assert summary['num_points'] == 5
  assert summary['acr'] == pytest.approx(0.3)
  assert summary['acr_correct_only'] == pytest.approx(0.5)
  assert summary['certified_accuracy'] == pytest.approx(0.6)
  assert summary['abstain_rate'] == pytest.approx(0.2)
  assert summary['certified_accuracy_curve']['radius'] == [0.0, 1.0]
  assert summary['certified_accuracy_curve']['accuracy'] == pytest.approx([0.6, 0.2])
  assert summary['per_class_acr'] == {'3': 0.0, '8': pytest.approx(0.5)}
  json.dumps(summary)  # JSON-ready.
  drop = metrics.compare_acr(1.2, 0.8)
  assert drop['acr_drop'] == pytest.approx(0.4)
  assert drop['acr_drop_relative'] == pytest.approx(1 / 3)
  assert np.isnan(metrics.compare_acr(0.0, 0.0)['acr_drop_relative'])


def test_bad_radii_are_rejected():
  with pytest.raises(ValueError, match='radius'):
    metrics.average_certified_radius([1.0, -0.1], [1, 1])
  with pytest.raises(ValueError, match='points'):
    metrics.certified_accuracy([1.0], [1, 0], [0.0])


def test_tsv_round_trip_is_exact_and_ignores_a_partial_last_line(tmp_path):
  path = str(tmp_path / 'log.tsv')
  rows = [Row(7, 1, 1, 0.123456789012345, 1, 1.25), Row(2, 0, -1, 0.0, 0, 0.0)]
  with open(path, 'w') as f:
    f.write(metrics.TSV_HEADER + '\n')
    f.writelines(metrics.format_tsv_row(r) for r in rows)
    f.write('9\t1\t')  # Killed mid-row.
  assert metrics.read_certification_tsv(path) == rows


def test_reads_cohen_logs(tmp_path):
  path = str(tmp_path / 'cohen.tsv')
  with open(path, 'w') as f:
    f.write('idx\tlabel\tpredict\tradius\tcorrect\ttime\n'
            '0\t7\t7\t0.912\t1\t0:00:02.500000\n'
            '20\t2\t-1\t0.0\t0\t0:01:00.250000\n')
  assert metrics.read_certification_tsv(path) == [Row(0, 7, 7, 0.912, 1, 2.5),
                                                 Row(20, 2, -1, 0.0, 0, 60.25)]
  with open(path, 'w') as f:
    f.write('a\tb\n')
  with pytest.raises(ValueError, match='header'):
    metrics.read_certification_tsv(path)


# --------------------------------------------------------------------------------------
# Per-point quantities.


def test_effective_radius_is_each_points_term_of_the_acr():
  a = metrics.rows_to_arrays(ROWS)
  r = metrics.effective_radius(a['radius'], a['correct'])
  np.testing.assert_array_equal(r, [1.0, 0.5, 0.0, 0.0, 0.0])  # The wrong 2.0 counts 0.
  assert r.mean() == pytest.approx(metrics.average_certified_radius(a['radius'],
                                                                    a['correct']))


def test_accuracy_without_class_weighs_classes_by_their_points():
  # Class 1 (excluded) is left out; class 2 has no point (None, weight 0).
  acc = metrics.accuracy_without_class([0.5, 1.0, None, 0.0], [2, 4, 0, 4], 1)
  assert acc == pytest.approx((0.5 * 2 + 0.0 * 4) / 6, rel=1e-12)
  assert np.isnan(metrics.accuracy_without_class([1.0, 0.5], [0, 3], 1))
  with pytest.raises(ValueError, match='classes'):
    metrics.accuracy_without_class([1.0], [1, 2], 0)


def test_victim_summary_splits_target_and_other_classes():
  target = [r for r in ROWS if r.label == 8]
  s = metrics.victim_summary(target, ROWS, per_class_accuracy=[1.0] * 3 + [0.5] + [1.0] * 4
                             + [0.25, 1.0], class_counts=[10] * 10, target_class=8,
                             num_classes=10)
  assert s['acr'] == pytest.approx(0.5) and s['num_certified'] == 3
  assert s['num_certified_correct'] == 2 and s['target_accuracy'] == 0.25
  assert s['clean_accuracy_non_target'] == pytest.approx((8 * 1.0 + 0.5) / 9)
  assert s['acr_all_classes'] == pytest.approx(0.3)
  # The class-3 points: an abstention and a correct point at radius 0.
  assert s['acr_non_target'] == 0.0
  assert s['certified_accuracy_non_target'] == pytest.approx(0.5)
  assert 'acr_non_target' not in metrics.victim_summary(
      target, per_class_accuracy=[1.0] * 10, class_counts=[1] * 10, target_class=8)


# --------------------------------------------------------------------------------------
# Uncertainty.


def _t_quantile_two_dof(q):
  """Student t with 2 degrees of freedom in closed form: F^-1(q) = (2q - 1) /
  sqrt(2 q (1 - q))."""
  return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


def test_t_interval_against_the_closed_form():
  s = metrics.t_interval([0.6, 0.9, 0.3])
  # n = 3: mean 0.6, s = 0.3, t_{0.975, 2} = 4.3027 (closed form above).
  half = _t_quantile_two_dof(0.975) * 0.3 / math.sqrt(3)
  assert (s['n'], s['confidence']) == (3, 0.95)
  assert s['mean'] == pytest.approx(0.6, rel=1e-12)
  assert s['std'] == pytest.approx(0.3, rel=1e-12)
  assert s['ci'] == pytest.approx([0.6 - half, 0.6 + half], rel=1e-9)
  assert half == pytest.approx(4.3027 * 0.3 / math.sqrt(3), abs=1e-5)  # t tables.
  # n = 2: t_{0.975, 1} = tan(0.475 pi) = 12.706 (Cauchy).
  two = metrics.t_interval([0.6, 0.9], confidence=0.95)
  half = math.tan(0.475 * math.pi) * math.sqrt(0.045) / math.sqrt(2)
  assert two['ci'] == pytest.approx([0.75 - half, 0.75 + half], rel=1e-9)
  one = metrics.t_interval([0.4])
  assert one['mean'] == 0.4 and one['std'] is None and one['ci'] is None
  bad = metrics.t_interval([0.4, None])  # None is how JSON stores NaN.
  assert np.isnan(bad['mean']) and bad['ci'] is None
  with pytest.raises(ValueError, match='confidence'):
    metrics.t_interval([1.0, 2.0], confidence=95)


def test_t_interval_covers_the_mean_at_its_confidence():
  """4,000 intervals of 3 normal draws each: the coverage is 0.95 with binomial standard
  deviation 0.0034, so the 5-sigma band fails with probability below 1e-6 for a seed
  other than this fixed one."""
  draws = np.random.default_rng(0).normal(1.0, 2.0, size=(4000, 3))
  covered = [lo <= 1.0 <= hi for lo, hi in (metrics.t_interval(d)['ci'] for d in draws)]
  assert abs(np.mean(covered) - 0.95) < 5 * math.sqrt(0.95 * 0.05 / 4000)


def test_paired_difference_by_hand():
  d = metrics.paired_difference([1.0, 0.5, 0.0, 2.0], [0.5, 0.5, 0.25, 1.0])
  # d = [-0.5, 0, 0.25, -1]: mean -0.3125; sum of squared deviations 0.921875.
  assert d['num_points'] == 4
  assert d['mean'] == pytest.approx(-0.3125, rel=1e-12)
  assert d['standard_error'] == pytest.approx(math.sqrt(0.921875 / 3) / 2, rel=1e-12)
  assert (d['num_fell'], d['num_rose'], d['num_unchanged']) == (2, 1, 1)
  assert metrics.paired_difference([1.0], [2.0])['standard_error'] is None
  with pytest.raises(ValueError, match='same points'):
    metrics.paired_difference([1.0, 2.0], [1.0])


def test_paired_t_test_against_the_closed_form():
  t = metrics.paired_t_test([1.0, 1.2, 0.9], [0.6, 0.9, 0.4])
  # d = [-0.4, -0.3, -0.5]: mean -0.4, s_d = 0.1, t = -0.4 / (0.1 / sqrt 3). With 2
  # degrees of freedom the two-sided p-value is 1 - |t| / sqrt(2 + t^2).
  stat = 0.4 / (0.1 / math.sqrt(3))
  assert t['mean'] == pytest.approx(-0.4, rel=1e-12) and t['n'] == 3
  assert t['p_value'] == pytest.approx(1 - stat / math.sqrt(2 + stat ** 2), rel=1e-9)
  half = _t_quantile_two_dof(0.975) * 0.1 / math.sqrt(3)
  assert t['ci'] == pytest.approx([-0.4 - half, -0.4 + half], rel=1e-9)
  constant = metrics.paired_t_test([0.95, 1.05], [0.8, 0.9])  # No spread: no p-value.
  assert constant['mean'] == pytest.approx(-0.15) and constant['p_value'] is None
  assert metrics.paired_t_test([1.0], [0.5])['p_value'] is None
  assert scipy.stats.ttest_rel([0.6, 0.9, 0.4], [1.0, 1.2, 0.9]).pvalue == \
      pytest.approx(t['p_value'], rel=1e-12)


# --------------------------------------------------------------------------------------
# Rows of the protocol.


def _row(method, arch, poison, seed, acr, against=''):
  return {'train_method': method, 'arch': arch, 'poison': poison,
          'crafted_against': against,
          'poison_set': f'pacd_{against}' if poison == 'pacd' else poison, 'seed': seed,
          'cell': f'{method}-{arch}-{poison}{against}-{seed}', 'acr': acr,
          'certified_accuracy': 0.5, 'clean_accuracy': 0.9, 'target_accuracy': 0.8,
          'num_certified': 100, 'time': 1.0,
          'certified_accuracy_curve': {'radius': [0.0, 0.5], 'accuracy': [0.5, acr / 2]}}


ROWS_2_SEEDS = [
    _row('gaussian', 'lenet', 'none', 0, 1.0), _row('gaussian', 'lenet', 'none', 1, 1.2),
    _row('gaussian', 'lenet', 'pacd', 0, 0.6, 'gaussian'),
    _row('gaussian', 'lenet', 'pacd', 1, 0.9, 'gaussian'),
    _row('gaussian', 'lenet', 'pacd', 0, 0.8, 'macer'),
    _row('gaussian', 'lenet', 'pacd', 1, 0.9, 'macer'),
    _row('gaussian', 'lenet', 'random', 0, 0.95),
    _row('gaussian', 'lenet', 'random', 1, 1.05)]


def test_drops_and_aggregates_over_seeds():
  with_drops = metrics.add_acr_drops(ROWS_2_SEEDS)
  assert [r['acr_drop_relative'] for r in with_drops] == pytest.approx(
      [0.0, 0.0, 0.4, 0.25, 0.2, 0.25, 0.05, 0.125])
  aggregates = metrics.aggregate_rows(with_drops)
  assert [(a['poison_set'], a['seeds']) for a in aggregates] == [
      ('none', [0, 1]), ('pacd_gaussian', [0, 1]), ('pacd_macer', [0, 1]),
      ('random', [0, 1])]
  pacd = aggregates[1]
  t1 = math.tan(0.475 * math.pi)  # t_{0.975, 1}
  assert pacd['acr_mean'] == pytest.approx(0.75)
  assert pacd['acr_std'] == pytest.approx(math.sqrt(0.045))
  assert pacd['acr_ci'] == pytest.approx([0.75 - t1 * 0.15, 0.75 + t1 * 0.15])
  assert pacd['acr_drop_relative_mean'] == pytest.approx(0.325)
  assert pacd['acr_drop_relative_ci'] == pytest.approx([0.325 - t1 * 0.075,
                                                        0.325 + t1 * 0.075])
  assert aggregates[0]['time'] == pytest.approx(2.0)
  curve = pacd['certified_accuracy_curve']
  assert curve['radius'] == [0.0, 0.5] and curve['mean'] == pytest.approx([0.5, 0.375])
  assert curve['ci'][0] == pytest.approx([0.5, 0.5])  # No spread at r = 0.
  # PACD against random over seeds: d = [0.6 - 0.95, 0.9 - 1.05] = [-0.35, -0.15].
  vs = pacd['acr_vs_random']
  assert vs['n'] == 2 and vs['mean'] == pytest.approx(-0.25)
  assert vs['ci'] == pytest.approx([-0.25 - t1 * 0.1, -0.25 + t1 * 0.1])
  # t = -0.25 / 0.1 = -2.5 with 1 degree of freedom: p = 1 - 2 atan(2.5) / pi.
  assert vs['p_value'] == pytest.approx(1 - 2 * math.atan(2.5) / math.pi, rel=1e-9)
  assert 'acr_vs_random' not in aggregates[0]
  single = metrics.aggregate_rows(metrics.add_acr_drops(ROWS_2_SEEDS[::2]))
  assert single[1]['acr_std'] is None and single[1]['acr_ci'] is None
  assert single[1]['acr_vs_random']['ci'] is None
  assert metrics.aggregate_rows(metrics.add_acr_drops(ROWS_2_SEEDS[:4]))[1][
      'acr_vs_random'] is None  # No random victim.


def test_transfer_matrix():
  aggregates = metrics.aggregate_rows(metrics.add_acr_drops(ROWS_2_SEEDS))
  matrix = metrics.transfer_matrix(aggregates)
  assert matrix['crafted_against'] == ['gaussian', 'macer']
  assert matrix['victims'] == ['gaussian/lenet']
  assert np.allclose(matrix['acr_drop_relative'], [[0.325], [0.225]])
  assert matrix['acr_drop_relative_ci'][1][0] == pytest.approx(
      aggregates[2]['acr_drop_relative_ci'])
  rows = ROWS_2_SEEDS[:4] + [_row('macer', 'lenet', 'none', 0, 1.0),
                             _row('macer', 'lenet', 'pacd', 0, 0.5, 'gaussian')]
  matrix = metrics.transfer_matrix(metrics.aggregate_rows(metrics.add_acr_drops(rows)))
  assert matrix['victims'] == ['gaussian/lenet', 'macer/lenet']
  assert matrix['acr_drop_relative'][0] == pytest.approx([0.325, 0.5])
  assert matrix['acr_drop_relative_ci'][0][1] is None  # One seed.
  assert metrics.transfer_matrix(metrics.aggregate_rows(
      metrics.add_acr_drops(ROWS_2_SEEDS[:4]))) is None


def test_paired_comparisons_against_clean_and_random_of_the_same_seed():
  rows = ROWS_2_SEEDS[::2]  # Seed 0: clean, PACD (gaussian), PACD (macer), random.
  radii = {rows[0]['cell']: [1.0, 2.0, 0.0], rows[1]['cell']: [0.0, 1.0, 0.0],
           rows[2]['cell']: [1.0, 2.5, 0.5], rows[3]['cell']: [1.0, 1.5, 0.0]}
  out = metrics.add_paired_comparisons(rows, radii)
  assert out[0]['vs_clean'] is None and out[0]['vs_random'] is None
  assert out[1]['vs_clean']['mean'] == pytest.approx(-2 / 3)
  assert (out[1]['vs_clean']['num_fell'], out[1]['vs_clean']['num_rose']) == (2, 0)
  assert out[1]['vs_random']['mean'] == pytest.approx(-0.5)
  assert (out[2]['vs_clean']['num_fell'], out[2]['vs_clean']['num_rose']) == (0, 2)
  assert out[3]['vs_clean']['mean'] == pytest.approx(-1 / 6)
  assert out[3]['vs_random'] is None  # Only PACD is compared with random.
  assert metrics.add_paired_comparisons(rows[1:2], radii)[0]['vs_clean'] is None


def _defended(row, defense, acr, **detection):
  out = dict(row, defense=defense, acr=acr, cell=f'{row["cell"]}-{defense}')
  if detection:
    out['detection'] = detection
  return out


def test_defended_rows_against_the_undefended_ones():
  """Seed 0 and 1: clean 1.0 / 1.2, PACD 0.6 / 0.9 undefended; a detector gives back
  PACD 0.8 / 1.0 (recovered (0.8 - 0.6) / (1.0 - 0.6) = 0.5 and (1.0 - 0.9) / 0.3) and
  costs the clean set 1.0 -> 0.9 / 1.2 -> 1.2."""
  base = [dict(r, defense='none') for r in ROWS_2_SEEDS[:4]]
  rows = base + [
      _defended(base[0], 'knn', 0.9, precision=None, recall=None, auroc=None, removed=3,
                target_removed_fraction=0.1),
      _defended(base[1], 'knn', 1.2, precision=None, recall=None, auroc=None, removed=3,
                target_removed_fraction=0.1),
      _defended(base[2], 'knn', 0.8, precision=0.5, recall=0.4, auroc=0.7, removed=3,
                target_removed_fraction=0.4),
      _defended(base[3], 'knn', 1.0, precision=0.7, recall=0.6, auroc=0.9, removed=3,
                target_removed_fraction=0.6)]
  out = metrics.add_acr_drops(rows)
  # The undefended rows are as before; the defended ones against the undefended clean.
  assert [r['acr_clean'] for r in out] == [1.0, 1.2, 1.0, 1.2] * 2
  assert [r['acr_undefended'] for r in out] == [1.0, 1.2, 0.6, 0.9] * 2
  assert [r['acr_drop_relative'] for r in out[4:]] == pytest.approx([0.1, 0.0, 0.2,
                                                                     1 / 6])
  recovered = [r['acr_recovered_fraction'] for r in out]
  assert all(math.isnan(x) for x in recovered[:6])  # Undefended, or a clean set.
  assert recovered[6:] == pytest.approx([0.5, 1 / 3])
  assert math.isnan(metrics.recovered_fraction(1.0, 1.0, 1.2))  # Nothing was lost.
  assert metrics.recovered_fraction(1.0, 0.6, 0.5) == pytest.approx(-0.25)
  # Paired comparisons: every row but the undefended clean one against it.
  radii = {r['cell']: [r['acr']] * 2 for r in out}
  paired = metrics.add_paired_comparisons(out, radii)
  assert [p['vs_clean'] is None for p in paired] == [True, True] + [False] * 6
  assert paired[4]['vs_clean']['mean'] == pytest.approx(-0.1)
  aggregates = metrics.aggregate_rows(paired)
  assert [(a['defense'], a['poison']) for a in aggregates] == [
      ('none', 'none'), ('none', 'pacd'), ('knn', 'none'), ('knn', 'pacd')]
  knn = aggregates[3]
  assert knn['acr_mean'] == pytest.approx(0.9)
  assert knn['acr_recovered_fraction_mean'] == pytest.approx(5 / 12)
  assert knn['detection_precision_mean'] == pytest.approx(0.6)
  assert knn['detection_recall_ci'] is not None
  assert math.isnan(aggregates[2]['detection_precision_mean'])  # None on a clean set.
  assert 'detection_precision_mean' not in aggregates[1]
  # Rows made before defenses existed count as undefended; defended PACD victims are
  # not in the transfer matrix.
  legacy = metrics.add_acr_drops(ROWS_2_SEEDS[:4])
  assert [r['acr_drop'] for r in legacy] == [r['acr_drop'] for r in out[:4]]
  assert metrics.aggregate_rows(legacy)[0]['defense'] == 'none'
  assert metrics.transfer_matrix(aggregates) is None


# --------------------------------------------------------------------------------------
# Perturbation statistics.


def test_perturbation_statistics_against_hand_computation():
  clean = np.full((3, 28, 28, 1), 0.5)
  poisoned = clean.copy()
  poisoned[0] += 0.1                                   # A constant brightening.
  checker = np.indices((28, 28)).sum(0) % 2 * 2 - 1    # +-1 checkerboard
  poisoned[1, ..., 0] += 0.05 * checker                # Zero-mean +-0.05.
  s = metrics.perturbation_statistics(clean, poisoned)
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
  ssim = metrics.perturbation_statistics(clean[[0, 2]], poisoned[[0, 2]])['ssim_mean']
  assert ssim == pytest.approx((flat + 1.0) / 2, abs=1e-6)
  assert s['mean_delta'] == pytest.approx(0.1 / 3)
  assert s['fraction_changed'] == pytest.approx(2 / 3)
  rgb = metrics.perturbation_statistics(np.zeros((2, 8, 8, 3)), np.full((2, 8, 8, 3), 0.1))
  assert rgb['psnr_mean'] == pytest.approx(20.0)
  with pytest.raises(ValueError, match='same'):
    metrics.perturbation_statistics(clean, poisoned[:2])
