"""Tests of rsp.metrics: ACR and certified accuracy on hand-computed examples, the TSV
round trip (and Cohen's format), and the JSON writers."""

import json
import os

import numpy as np
import pytest

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
  assert summary['certified_accuracy_curve'] == {'radius': [0.0, 1.0],
                                                 'accuracy': [0.6, 0.2]}
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


def test_metric_writer_appends_json_lines(tmp_path):
  path = str(tmp_path / 'sub' / 'metrics.jsonl')
  with metrics.MetricWriter(path) as writer:
    writer.write_scalars(1, {'loss': np.float32(0.5), 'accuracy': 1, 'phase': 'train'})
  with metrics.MetricWriter(path) as writer:  # A resumed run appends.
    writer.write_scalars(2, {'loss': np.array(0.25)})
    with pytest.raises(ValueError, match='scalar'):
      writer.write_scalars(3, {'loss': np.zeros(2)})
  with open(path, 'a') as f:
    f.write('{"step": 3, "lo')  # Killed mid-line.
  assert metrics.read_json_lines(path) == [
      {'step': 1, 'loss': 0.5, 'accuracy': 1, 'phase': 'train'},
      {'step': 2, 'loss': 0.25}]


def test_write_json_atomic_converts_numpy_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'out' / 'summary.json')
  metrics.write_json_atomic(path, {'acr': np.float64(0.5), 'idx': np.arange(3),
                                   'n': np.int64(4)})
  metrics.write_json_atomic(path, {'acr': 0.75})
  assert metrics.read_json(path) == {'acr': 0.75}
  assert os.listdir(os.path.dirname(path)) == ['summary.json']


def test_write_json_atomic_writes_strict_json_with_null_for_non_finite(tmp_path):
  path = str(tmp_path / 'summary.json')
  metrics.write_json_atomic(path, {'drop': float('nan'), 'r': [1.0, np.float32(np.inf)],
                                   'nested': {'x': np.array([np.nan, 2.0])}, 'ok': 3})
  with open(path) as f:
    text = f.read()
  assert 'NaN' not in text and 'Infinity' not in text
  assert metrics.read_json(path) == {'drop': None, 'r': [1.0, None],
                                     'nested': {'x': [None, 2.0]}, 'ok': 3}
  assert np.isnan(np.asarray(metrics.read_json(path)['nested']['x'], np.float64)[0])
