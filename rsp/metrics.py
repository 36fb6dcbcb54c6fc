"""Certification metrics and the writers that make a workdir the record of a run.

Certification metrics (Cohen et al. 2019; Zhai et al. 2020 for the ACR), computed from
per-point rows ``(idx, label, predict, radius, correct, time)`` where ``predict`` is
``-1`` (abstain) or a class and ``radius`` is 0 when abstaining:

* ACR, the average certified radius: ``(1/m) * sum_i R_i * 1[correct_i]`` over ALL ``m``
  points; abstentions and wrong predictions count as 0 (as in Mehra et al. 2021).
* Certified accuracy at radius r: ``(1/m) * #{i : correct_i and R_i >= r}``. At r = 0 it
  is the accuracy of the smoothed classifier (the paper's "approximate certified
  accuracy").
* Abstain rate, per-class ACR, and the ACR drop of a poisoned model against a clean one.

Files:

* Certification logs: the Cohen-compatible TSV ``idx label predict radius correct time``
  (a header line, then one row per point; ``time`` in seconds; Cohen's ``H:MM:SS.ffffff``
  times are read too).
* ``MetricWriter(path).write_scalars(step, scalars)``: one JSON object per line.
* ``write_json_atomic(path, obj)``: summaries written to a temporary file then renamed, so
  a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

# The value of ``predict`` for a point the smoothed classifier abstains on. Equal to
# ``rsp.smoothing.ABSTAIN`` (metrics sits below smoothing in the import order).
ABSTAIN = -1

TSV_COLUMNS = ('idx', 'label', 'predict', 'radius', 'correct', 'time')
TSV_HEADER = '\t'.join(TSV_COLUMNS)

# Radii at which the summary reports certified accuracy. The largest radius CERTIFY can
# give is sigma * Phi^-1(alpha^(1/n)), 3.81 sigma at n = 100,000 and alpha = 0.001.
DEFAULT_RADII = tuple(np.round(np.arange(0.0, 4.0 + 1e-9, 0.25), 2).tolist())


# ------------------------------------------------------------------------------------
# Per-point rows and the certification TSV.


class CertificationRow(NamedTuple):
  """One certified point, as in a line of Cohen's certification log."""
  idx: int        # Index of the point in its split.
  label: int      # True class.
  predict: int    # Smoothed prediction, ``ABSTAIN`` (-1) if abstained.
  radius: float   # Certified L2 radius; 0.0 when abstaining.
  correct: int    # 1 if ``predict == label``, else 0.
  time: float     # Seconds spent on this point.


def format_tsv_row(row: CertificationRow) -> str:
  """The TSV line (with newline) for ``row``; the radius round-trips exactly."""
  return (f'{int(row.idx)}\t{int(row.label)}\t{int(row.predict)}\t{float(row.radius)!r}\t'
          f'{int(row.correct)}\t{float(row.time):.4f}\n')


def _parse_time(text: str) -> float:
  if ':' in text:  # Cohen's str(datetime.timedelta), e.g. 0:00:02.345678.
    hours, minutes, seconds = text.split(':')
    return 3600.0 * int(hours) + 60.0 * int(minutes) + float(seconds)
  return float(text)


def parse_tsv_row(line: str) -> CertificationRow:
  """Inverse of ``format_tsv_row``; raises ValueError on a malformed line."""
  fields = line.rstrip('\n').split('\t')
  if len(fields) != len(TSV_COLUMNS):
    raise ValueError(f'certification row {line!r} has {len(fields)} fields; expected '
                     f'{len(TSV_COLUMNS)} ({TSV_HEADER!r}).')
  idx, label, predict, radius, correct, time = fields
  return CertificationRow(int(idx), int(label), int(predict), float(radius),
                          int(correct == 'True' or correct == '1'), _parse_time(time))


def read_certification_tsv(path: str) -> list[CertificationRow]:
  """Reads a certification log written by ``rsp.smoothing.certify_dataset`` or Cohen's
  ``certify.py``.

  A last line without a newline (a run killed while writing) is ignored.

  Raises:
    ValueError: if the header or a complete row is malformed.
  """
  with open(path) as f:
    text = f.read()
  lines = text.split('\n')
  lines = lines[:-1]  # The text after the last newline: '' or a partial row.
  if not lines:
    return []
  if lines[0].split('\t') != list(TSV_COLUMNS):
    raise ValueError(f'{path} starts with {lines[0]!r}; expected the header '
                     f'{TSV_HEADER!r}.')
  return [parse_tsv_row(line) for line in lines[1:] if line]


def rows_to_arrays(rows: Sequence[CertificationRow]) -> dict[str, np.ndarray]:
  """Rows as columns: ``{'idx', 'label', 'predict', 'radius', 'correct', 'time'}``."""
  dtypes = dict(idx=np.int64, label=np.int64, predict=np.int64, radius=np.float64,
                correct=bool, time=np.float64)
  return {name: np.asarray([getattr(r, name) for r in rows], dtype=dtypes[name])
          for name in TSV_COLUMNS}


# ------------------------------------------------------------------------------------
# Certification metrics.


def _radius_correct(radius: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
  radius = np.asarray(radius, np.float64).reshape(-1)
  correct = np.asarray(correct).astype(bool).reshape(-1)
  if radius.shape != correct.shape:
    raise ValueError(f'radius has {radius.size} points but correct has {correct.size}.')
  if np.any(radius < 0) or not np.all(np.isfinite(radius)):
    raise ValueError('radius must be finite and >= 0 (0 for abstentions).')
  return radius, correct


def average_certified_radius(radius: Any, correct: Any) -> float:
  """ACR = (1/m) * sum_i R_i * 1[correct_i], over all m points (NaN if m = 0).

  Args:
    radius: ``[m]`` certified radii, 0 for abstentions.
    correct: ``[m]`` whether the smoothed prediction equals the label.
  """
  radius, correct = _radius_correct(radius, correct)
  if radius.size == 0:
    return float('nan')
  return float(np.mean(np.where(correct, radius, 0.0)))


def certified_accuracy(radius: Any, correct: Any, radii: Iterable[float]) -> np.ndarray:
  """Fraction of points that are correct with certified radius ``>= r``, for each r.

  Args:
    radius: ``[m]`` certified radii, 0 for abstentions.
    correct: ``[m]`` whether the smoothed prediction equals the label.
    radii: the radii r at which to evaluate.

  Returns:
    ``[len(radii)]`` float64 in [0, 1] (NaN if m = 0).
  """
  radius, correct = _radius_correct(radius, correct)
  radii = np.asarray(list(radii), np.float64)
  if radius.size == 0:
    return np.full(radii.shape, np.nan)
  ok = correct[None, :] & (radius[None, :] >= radii[:, None])  # [R, m]
  return ok.mean(axis=1)


def abstain_rate(predict: Any) -> float:
  """Fraction of points on which the smoothed classifier abstained (NaN if none)."""
  predict = np.asarray(predict).reshape(-1)
  return float(np.mean(predict == ABSTAIN)) if predict.size else float('nan')


def per_class_acr(label: Any, radius: Any, correct: Any,
                  num_classes: int | None = None) -> dict[int, float]:
  """ACR of the points of each class: ``{class: acr}`` (classes with no point omitted,
  unless ``num_classes`` is given, in which case they map to NaN)."""
  label = np.asarray(label).reshape(-1)
  radius, correct = _radius_correct(radius, correct)
  classes = range(num_classes) if num_classes is not None else sorted(set(label.tolist()))
  return {int(c): average_certified_radius(radius[label == c], correct[label == c])
          for c in classes}


def summarize_certification(rows: Sequence[CertificationRow], *,
                            radii: Iterable[float] = DEFAULT_RADII,
                            num_classes: int | None = None) -> dict[str, Any]:
  """The numbers a person reads about one certified model, as a JSON-ready dict.

  Keys: ``num_points``, ``acr``, ``acr_correct_only`` (mean radius of the correct points,
  which the reference's CIFAR scripts also print), ``certified_accuracy`` (at r = 0),
  ``abstain_rate``, ``certified_accuracy_curve`` (``{'radius': [...], 'accuracy': [...]}``
  on ``radii``), ``per_class_acr`` (string keys), ``seconds_per_point``.
  """
  a = rows_to_arrays(rows)
  radii = list(radii)
  n_correct = int(a['correct'].sum())
  curve = certified_accuracy(a['radius'], a['correct'], radii)
  per_class = per_class_acr(a['label'], a['radius'], a['correct'], num_classes)
  return {
      'num_points': int(len(rows)),
      'acr': average_certified_radius(a['radius'], a['correct']),
      'acr_correct_only': (float(a['radius'][a['correct']].mean()) if n_correct
                           else float('nan')),
      'certified_accuracy': float(certified_accuracy(a['radius'], a['correct'], [0.0])[0]),
      'abstain_rate': abstain_rate(a['predict']),
      'certified_accuracy_curve': {'radius': [float(r) for r in radii],
                                   'accuracy': [float(v) for v in curve]},
      'per_class_acr': {str(c): v for c, v in per_class.items()},
      'seconds_per_point': float(a['time'].mean()) if len(rows) else float('nan'),
  }


def compare_acr(clean_acr: float, poisoned_acr: float) -> dict[str, float]:
  """The ACR drop of a poisoned model against a clean one.

  Returns:
    ``{'acr_clean', 'acr_poisoned', 'acr_drop' (clean - poisoned), 'acr_drop_relative'
    ((clean - poisoned) / clean, NaN if clean is 0)}``; a positive drop means the poison
    lowered the certified radius.
  """
  clean_acr, poisoned_acr = float(clean_acr), float(poisoned_acr)
  drop = clean_acr - poisoned_acr
  return {'acr_clean': clean_acr, 'acr_poisoned': poisoned_acr, 'acr_drop': drop,
          'acr_drop_relative': drop / clean_acr if clean_acr != 0 else float('nan')}


# ------------------------------------------------------------------------------------
# Writers.


def _jsonable(obj: Any) -> Any:
  """``json.dump``'s fallback for numpy and jax values and config dicts."""
  if isinstance(obj, np.generic):
    return obj.item()
  if hasattr(obj, 'to_dict'):  # ml_collections.ConfigDict
    return obj.to_dict()
  if hasattr(obj, '__array__'):  # numpy and jax arrays
    return np.asarray(obj).tolist()
  if isinstance(obj, (set, frozenset)):
    return sorted(obj)
  raise TypeError(f'{type(obj).__name__} is not JSON serialisable.')


def _finite_or_none(obj: Any) -> Any:
  """``obj`` (plain JSON types) with every non-finite float replaced by None."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite_or_none(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_finite_or_none(v) for v in obj]
  return obj


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` by way of a temporary file and ``os.replace``.

  A reader (or a run killed mid-write) sees the old file or the new one, never a part.
  numpy/jax values and ConfigDicts are converted. The file is strict JSON (RFC 8259), so
  that tools other than Python's ``json`` read it: NaN and +-inf are written as
  ``null`` (read back as None; ``np.asarray(..., float)`` turns None into NaN again).
  """
  text = json.dumps(_finite_or_none(json.loads(json.dumps(obj, default=_jsonable))),
                    indent=2, sort_keys=True, allow_nan=False)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
    f.write('\n')
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


class MetricWriter:
  """Appends one JSON object per ``write_scalars`` call to a JSON-lines file.

  Each line is ``{"step": step, name: value, ...}``, flushed at once so that a killed
  run loses nothing written. Opening appends, so a resumed run continues the file (trim
  lines past the restored step first if the steps must not repeat).

  Example::

    with MetricWriter(os.path.join(workdir, 'metrics.jsonl')) as w:
      w.write_scalars(100, {'loss': 0.3, 'accuracy': 0.91})
  """

  def __init__(self, path: str):
    self.path = path
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    self._file = open(path, 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes ``scalars`` (numbers, numpy/jax scalars, or short strings) at ``step``."""
    if 'step' in scalars:
      raise ValueError('scalars must not contain the key "step"; it is the first '
                       'argument.')
    record = {'step': int(step)}
    for name, value in scalars.items():
      if isinstance(value, str):
        record[name] = value
        continue
      value = np.asarray(value)
      if value.size != 1:
        raise ValueError(f'scalars[{name!r}] has shape {value.shape}; expected a scalar.')
      record[name] = value.item()
    self._file.write(json.dumps(record, sort_keys=True) + '\n')
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_json_lines(path: str) -> list[dict[str, Any]]:
  """The records of a JSON-lines file, skipping blank lines and a partial last line."""
  records = []
  with open(path) as f:
    lines = f.read().split('\n')
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:  # Killed while writing the last line.
        break
      raise
  return records
