"""Pure numbers of an evaluation: certification metrics, their uncertainty, and the
arithmetic on the evaluation protocol's rows.

Certification metrics (Cohen et al. 2019; Zhai et al. 2020 for the ACR), computed from
per-point rows ``(idx, label, predict, radius, correct, time)`` where ``predict`` is
``-1`` (abstain) or a class and ``radius`` is 0 when abstaining:

* ACR, the average certified radius: ``(1/m) * sum_i R_i * 1[correct_i]`` over ALL ``m``
  points; abstentions and wrong predictions count as 0 (as in Mehra et al. 2021).
* Certified accuracy at radius r: ``(1/m) * #{i : correct_i and R_i >= r}``. At r = 0 it
  is the accuracy of the smoothed classifier (the paper's "approximate certified
  accuracy").
* Abstain rate, per-class ACR, and the ACR drop of a poisoned model against a clean one.

Uncertainty (float64 on the host, scipy):

* ``t_interval``: a mean over victim seeds with its Student-t confidence interval.
* ``paired_difference``: two models certified on the same points with the same noise,
  compared point by point (mean difference, its standard error, points fallen / risen).
* ``paired_t_test``: two conditions measured on the same victim seeds.

Rows of the evaluation protocol (``rsp.protocol``; one dict per certified victim):
``add_acr_drops``, ``add_paired_comparisons``, ``aggregate_rows`` (over seeds),
``transfer_matrix`` and ``sweep_series`` (the curves along a sweep axis: eps, poisoned
fraction, victim sigma, target class); ``subset_acr`` and ``subset_acr_drop`` say how
much the numbers depend on how many points were certified; ``perturbation_statistics``
says how visible a poison set is (norms, PSNR, SSIM).

Certification logs are the Cohen-compatible TSV ``idx label predict radius correct time``
(a header line, then one row per point; ``time`` in seconds; Cohen's ``H:MM:SS.ffffff``
times are read too). Every other file is written through ``rsp.workdir``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import scipy.stats
from skimage import metrics as skimage_metrics

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
  """Reads a certification log written by ``rsp.certification.certify_dataset`` or Cohen's
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


def effective_radius(radius: Any, correct: Any) -> np.ndarray:
  """Each point's term of the ACR: ``R_i * 1[correct_i]`` (0 when wrong or abstained).

  The mean of the effective radii is the ACR, so the mean of their paired differences
  between two models is the difference of the two ACRs.
  """
  radius, correct = _radius_correct(radius, correct)
  return np.where(correct, radius, 0.0)


def accuracy_without_class(per_class_accuracy: Sequence[float | None],
                           class_counts: Sequence[int], excluded: int) -> float:
  """Accuracy on the points of every class but ``excluded``.

  The mean of the per-class accuracies weighted by the number of points of each class
  (classes without points, accuracy None, weigh 0): exactly the accuracy over the
  points of the other classes.

  Args:
    per_class_accuracy: ``[K]`` accuracy of each class (None: no point).
    class_counts: ``[K]`` number of points of each class.
    excluded: the class left out (the target class).

  Returns:
    The accuracy, NaN if the other classes have no point.
  """
  if len(per_class_accuracy) != len(class_counts):
    raise ValueError(f'per_class_accuracy has {len(per_class_accuracy)} classes but '
                     f'class_counts has {len(class_counts)}.')
  accuracy = np.asarray([np.nan if a is None else a for a in per_class_accuracy],
                        np.float64)
  weight = np.asarray(class_counts, np.float64)
  keep = (np.arange(len(weight)) != excluded) & (weight > 0)
  if not keep.any():
    return float('nan')
  return float(np.sum(accuracy[keep] * weight[keep]) / np.sum(weight[keep]))


def victim_summary(rows: Sequence[CertificationRow],
                   all_classes_rows: Sequence[CertificationRow] | None = None, *,
                   per_class_accuracy: Sequence[float | None],
                   class_counts: Sequence[int], target_class: int,
                   num_classes: int | None = None) -> dict[str, Any]:
  """The numbers of one certified victim, with the keys of a protocol row.

  Args:
    rows: the certification of the target-class points.
    all_classes_rows: the certification of points of all classes, or None.
    per_class_accuracy: ``[K]`` the base classifier's clean test accuracy per class.
    class_counts: ``[K]`` test points per class.
    target_class: the attacked class.
    num_classes: K, for ``per_class_acr``.

  Returns:
    From ``rows`` (``summarize_certification``): ``acr``, ``acr_correct_only``,
    ``certified_accuracy`` (r = 0), ``abstain_rate``, ``certified_accuracy_curve``,
    ``num_certified``, ``num_certified_correct``; the base classifier's
    ``target_accuracy`` and ``clean_accuracy_non_target`` (``accuracy_without_class``);
    with ``all_classes_rows`` also ``acr_all_classes``,
    ``certified_accuracy_all_classes``, ``per_class_acr``, and ``acr_non_target`` and
    ``certified_accuracy_non_target`` over its points of the other classes.
  """
  s = summarize_certification(rows, num_classes=num_classes)
  out = {'acr': s['acr'], 'acr_correct_only': s['acr_correct_only'],
         'certified_accuracy': s['certified_accuracy'], 'abstain_rate': s['abstain_rate'],
         'certified_accuracy_curve': s['certified_accuracy_curve'],
         'num_certified': s['num_points'],
         'num_certified_correct': int(sum(r.correct for r in rows)),
         'target_accuracy': per_class_accuracy[target_class],
         'clean_accuracy_non_target': accuracy_without_class(
             per_class_accuracy, class_counts, target_class)}
  if all_classes_rows is not None:
    every = summarize_certification(all_classes_rows, num_classes=num_classes)
    others = summarize_certification([r for r in all_classes_rows
                                      if r.label != target_class])
    out.update(acr_all_classes=every['acr'],
               certified_accuracy_all_classes=every['certified_accuracy'],
               per_class_acr=every['per_class_acr'], acr_non_target=others['acr'],
               certified_accuracy_non_target=others['certified_accuracy'])
  return out


# ------------------------------------------------------------------------------------
# Uncertainty.


def _floats(values: Any) -> np.ndarray:
  """``values`` as a float64 vector; None becomes NaN (how JSON stores NaN)."""
  values = np.asarray(values, dtype=object).reshape(-1)
  return np.asarray([np.nan if v is None else float(v) for v in values], np.float64)


def t_interval(values: Any, *, confidence: float = 0.95) -> dict[str, Any]:
  """The mean of ``values`` with its Student-t confidence interval.

  For n values with sample mean m and sample standard deviation s (ddof 1)::

      m +- t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)

  (``scipy.stats.t.ppf``), which covers the true mean with probability ``confidence``
  when the values are independent normal draws (e.g. victims trained with n seeds).
  At 95%: t = 12.706 for n = 2, 4.303 for n = 3, 2.776 for n = 5.

  Args:
    values: n numbers (None is read as NaN).
    confidence: the coverage, in (0, 1).

  Returns:
    ``{'n', 'mean', 'std', 'ci': [low, high], 'confidence'}``; ``std`` and ``ci`` are
    None for n < 2, and all but ``n`` are NaN / None if a value is not finite.
  """
  if not 0 < confidence < 1:
    raise ValueError(f'confidence={confidence} must be in (0, 1).')
  v = _floats(values)
  n = int(v.size)
  out = {'n': n, 'mean': float('nan'), 'std': None, 'ci': None, 'confidence': confidence}
  if n == 0 or not np.all(np.isfinite(v)):
    return out
  out['mean'] = float(v.mean())
  if n >= 2:
    std = float(v.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    out['std'] = std
    out['ci'] = [out['mean'] - half, out['mean'] + half]
  return out


def paired_difference(reference: Any, values: Any) -> dict[str, Any]:
  """Point-by-point comparison of two measurements of the same m points.

  With ``d_i = values_i - reference_i``: the mean difference, its standard error
  ``s_d / sqrt(m)`` (s_d the sample standard deviation, ddof 1) and how many points
  fell (``d_i < 0``), rose (``d_i > 0``) or stayed. Pairing takes the spread between
  points out of the comparison; the protocol also certifies point i of every victim
  with the same noise (common random numbers), so d_i is not blurred by Monte Carlo
  noise either.

  Args:
    reference, values: ``[m]`` numbers, point i in both (e.g. ``effective_radius`` of a
      clean and of a poisoned victim).

  Returns:
    ``{'num_points', 'mean', 'standard_error' (None for m < 2), 'num_fell', 'num_rose',
    'num_unchanged'}``.
  """
  reference, values = _floats(reference), _floats(values)
  if reference.shape != values.shape:
    raise ValueError(f'reference has {reference.size} points but values has '
                     f'{values.size}; a paired comparison needs the same points.')
  d = values - reference
  m = int(d.size)
  return {'num_points': m,
          'mean': float(d.mean()) if m else float('nan'),
          'standard_error': float(d.std(ddof=1) / math.sqrt(m)) if m >= 2 else None,
          'num_fell': int(np.sum(d < 0)), 'num_rose': int(np.sum(d > 0)),
          'num_unchanged': int(np.sum(d == 0))}


def paired_t_test(reference: Any, values: Any, *,
                  confidence: float = 0.95) -> dict[str, Any]:
  """Paired t test of two conditions measured on the same n units (victim seeds).

  ``d_s = values_s - reference_s``; ``t = mean(d) / (s_d / sqrt(n))`` with n - 1 degrees
  of freedom, two-sided p-value of the null hypothesis E[d] = 0
  (``scipy.stats.ttest_rel``).

  Returns:
    ``t_interval(d)`` (``n``, ``mean``, ``std``, ``ci``, ``confidence``) and ``p_value``,
    None for n < 2 or when every d_s is the same up to float rounding (no spread to
    test against).
  """
  reference, values = _floats(reference), _floats(values)
  if reference.shape != values.shape:
    raise ValueError(f'reference has {reference.size} values but values has '
                     f'{values.size}; a paired test needs the same units.')
  d = values - reference
  out = t_interval(d, confidence=confidence)
  out['p_value'] = None
  # A spread within the rounding of the subtraction is none (and scipy warns on it).
  rounding = 8 * np.finfo(np.float64).eps * float(np.max(np.abs(np.concatenate(
      [values, reference])), initial=0.0))
  if out['std'] is not None and np.ptp(d) > rounding:
    out['p_value'] = float(scipy.stats.ttest_rel(values, reference).pvalue)
  return out


# ------------------------------------------------------------------------------------
# Rows of the evaluation protocol.


# Row fields that tell apart victims of one training method, architecture and seed
# (where a protocol's sweep put them: the certified class, the victim's training sigma
# and its number of training epochs), and poison sets of one kind (their budget: eps and
# the poisoned fraction; None in clean rows). Rows without these fields (a grid without
# sweeps, or results written before the field existed) read None.
VICTIM_FIELDS = ('target_class', 'victim_sigma', 'victim_epochs')
BUDGET_FIELDS = ('eps', 'poison_fraction')
# The sweep axes of the protocol: each is a row field.
SWEEP_AXES = ('eps', 'poison_fraction', 'victim_sigma', 'target_class', 'victim_epochs')


def _victim(row: Mapping[str, Any]) -> tuple[Any, ...]:
  """What two rows of one victim training run share: method, architecture, seed,
  certified class, training sigma and epochs (``VICTIM_FIELDS``)."""
  return (row['train_method'], row['arch'], row['seed'],
          *(row.get(k) for k in VICTIM_FIELDS))


def victim_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
  """What the rows of one victim's training runs share (the clean row of a poisoned
  one has the same key): method, architecture, seed and ``VICTIM_FIELDS``."""
  return _victim(row)


def _budget(row: Mapping[str, Any]) -> tuple[Any, ...]:
  return tuple(row.get(k) for k in BUDGET_FIELDS)


def defense_of(row: Mapping[str, Any]) -> str:
  """A row's defense ('none' for rows made before defenses existed)."""
  return row.get('defense', 'none')


def _undefended(row: Mapping[str, Any]) -> bool:
  return defense_of(row) == 'none'


def recovered_fraction(acr_clean: float, acr_undefended: float,
                       acr_defended: float) -> float:
  """The fraction of the ACR that the poisons took which a defense gives back:
  ``(defended - undefended) / (clean - undefended)`` (1: all of it, 0: none, < 0: the
  defense cost more than it gave back); NaN when the poisons took nothing."""
  lost = acr_clean - acr_undefended
  if not np.isfinite(lost) or lost <= 0 or not np.isfinite(acr_defended):
    return float('nan')
  return float((acr_defended - acr_undefended) / lost)


def add_acr_drops(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Each row with ``acr_clean``, ``acr_drop`` (clean - poisoned) and
  ``acr_drop_relative`` ((clean - poisoned) / clean) against the undefended clean row
  (``poison == 'none'``, ``defense == 'none'``) of the same training method,
  architecture, seed, target class and victim sigma (NaN when there is none): one clean
  victim serves every budget; a defended row's drop is that of the defended victim
  against the undefended clean one (on the clean training set: the defense's cost).
  Also ``acr_undefended`` (the ACR of the undefended row of the same training set) and
  ``acr_recovered_fraction`` (``recovered_fraction``; NaN for undefended rows and for
  clean training sets)."""
  clean = {_victim(r): r['acr'] for r in rows if r['poison'] == 'none' and _undefended(r)}
  plain = {(r['poison_set'], *_victim(r)): r['acr'] for r in rows if _undefended(r)}
  out = []
  for r in rows:
    d = compare_acr(clean.get(_victim(r), float('nan')), r['acr'])
    undefended = plain.get((r['poison_set'], *_victim(r)), float('nan'))
    recovered = float('nan')
    if not _undefended(r) and r['poison'] != 'none':
      recovered = recovered_fraction(d['acr_clean'], undefended, r['acr'])
    out.append(dict(r, acr_clean=d['acr_clean'], acr_drop=d['acr_drop'],
                    acr_drop_relative=d['acr_drop_relative'], acr_undefended=undefended,
                    acr_recovered_fraction=recovered))
  return out


def add_paired_comparisons(rows: Sequence[Mapping[str, Any]],
                           radii: Mapping[str, Any], *,
                           baseline: str = 'random') -> list[dict[str, Any]]:
  """Each row with ``vs_clean`` and ``vs_random``, paired over the certified points.

  ``vs_clean`` (every row but the undefended clean one): ``paired_difference`` of the
  row's effective radii against those of the undefended clean victim of the same
  training method, architecture, seed, target class and victim sigma; its mean is
  ``acr - acr_clean``. ``vs_random`` (PACD rows): against the victim trained on the
  ``baseline`` poisons of the same budget (eps, poisoned fraction) with the same
  method, architecture, seed, target class, victim sigma and defense; a negative mean
  is a larger drop than the baseline's. None where there is no such row.

  Args:
    rows: protocol rows (``cell``, ``poison``, ``train_method``, ``arch``, ``seed``, and
      ``VICTIM_FIELDS`` and ``BUDGET_FIELDS`` where a sweep set them).
    radii: ``{cell: [m] effective radii}`` (``effective_radius``), the same m points in
      the same order for every pair of compared cells.
    baseline: the poison kind PACD is compared with.
  """
  by_kind = {(r['poison'], defense_of(r), *_victim(r), *_budget(r)): r['cell'] for r in rows}
  unpoisoned = (None,) * len(BUDGET_FIELDS)

  def compare(row, kind, defense, budget):
    other = by_kind.get((kind, defense, *_victim(row), *budget))
    return None if other is None else paired_difference(radii[other], radii[row['cell']])

  return [dict(r, vs_clean=(None if r['poison'] == 'none' and _undefended(r) else
                            compare(r, 'none', 'none', unpoisoned)),
               vs_random=(compare(r, baseline, defense_of(r), _budget(r))
                          if r['poison'] == 'pacd'
                          else None))
          for r in rows]


# The row fields that ``aggregate_rows`` averages over seeds (those every member has).
AGGREGATED = ('acr', 'acr_drop', 'acr_drop_relative', 'certified_accuracy',
              'abstain_rate', 'clean_accuracy', 'target_accuracy', 'acr_all_classes',
              'acr_non_target', 'certified_accuracy_non_target',
              'clean_accuracy_non_target', 'acr_recovered_fraction')
# The detection fields (a detector row's ``detection``) aggregated as
# ``detection_<field>_mean`` and ``_ci``.
DETECTION_AGGREGATED = ('precision', 'recall', 'auroc', 'removed',
                        'target_removed_fraction')


def _curve_interval(members: Sequence[Mapping[str, Any]],
                    confidence: float) -> dict[str, Any] | None:
  curves = [m.get('certified_accuracy_curve') for m in members]
  if any(c is None for c in curves) or any(c['radius'] != curves[0]['radius']
                                           for c in curves):
    return None
  per_radius = [t_interval(v, confidence=confidence)
                for v in zip(*(c['accuracy'] for c in curves))]
  return {'radius': list(curves[0]['radius']), 'mean': [s['mean'] for s in per_radius],
          'ci': [s['ci'] for s in per_radius]}


def aggregate_rows(rows: Sequence[Mapping[str, Any]], *, confidence: float = 0.95,
                   baseline: str = 'random') -> list[dict[str, Any]]:
  """Rows grouped over victim seeds, with means and Student-t intervals.

  One entry per training method x architecture x training set x setting (the rows'
  ``VICTIM_FIELDS`` and ``BUDGET_FIELDS``) x defense, in first-appearance order, with
  ``train_method``, ``arch``, ``poison``, ``crafted_against``, ``poison_set``, those
  setting fields, ``sweep_axis`` (None where the rows have none), ``defense``,
  ``seeds``, ``num_certified``, ``time`` (summed) and:

  * for each field m of ``AGGREGATED`` that every member has: ``m_mean``, ``m_std`` and
    ``m_ci`` (``t_interval``; std and ci None for one seed);
  * ``certified_accuracy_curve``: ``{'radius', 'mean', 'ci'}``, the interval per radius;
  * ``acr_vs_random`` (PACD entries): ``paired_t_test`` over the seeds of the members'
    ACR against the ``baseline`` victims' of the same seeds, setting and defense (None
    without them);
  * detectors: ``detection_<f>_mean``, ``_std``, ``_ci`` for each f of
    ``DETECTION_AGGREGATED`` (None values, e.g. the recall on a clean set, give NaN).

  Args:
    rows: protocol rows with drops (``add_acr_drops``).
    confidence: the intervals' coverage.
    baseline: the poison kind PACD is compared with.
  """
  setting = VICTIM_FIELDS + BUDGET_FIELDS
  groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r['train_method'], r['arch'], r['poison'], r['crafted_against'],
                       *(r.get(k) for k in setting), defense_of(r)), []).append(r)
  acr = {(r['poison'], defense_of(r), *_victim(r), *_budget(r)): r['acr'] for r in rows}
  out = []
  for (method, arch, poison, crafted_against, *values, defense), members in groups.items():
    entry = {'train_method': method, 'arch': arch, 'poison': poison,
             'crafted_against': crafted_against, 'poison_set': members[0]['poison_set'],
             **dict(zip(setting, values)),
             'sweep_axis': members[0].get('sweep_axis'), 'defense': defense,
             'seeds': [int(m['seed']) for m in members],
             'num_certified': int(members[0]['num_certified']),
             'time': float(sum(m['time'] for m in members))}
    for name in AGGREGATED:
      if all(name in m for m in members):
        s = t_interval([m[name] for m in members], confidence=confidence)
        entry.update({f'{name}_mean': s['mean'], f'{name}_std': s['std'],
                      f'{name}_ci': s['ci']})
    if all(m.get('detection') for m in members):
      for name in DETECTION_AGGREGATED:
        s = t_interval([m['detection'].get(name) for m in members], confidence=confidence)
        entry.update({f'detection_{name}_mean': s['mean'],
                      f'detection_{name}_std': s['std'], f'detection_{name}_ci': s['ci']})
    entry['certified_accuracy_curve'] = _curve_interval(members, confidence)
    if poison == 'pacd':
      pairs = [(acr[(baseline, defense, *_victim(m), *_budget(m))], m['acr'])
               for m in members if (baseline, defense, *_victim(m), *_budget(m)) in acr]
      entry['acr_vs_random'] = (paired_t_test(*zip(*pairs), confidence=confidence)
                                if pairs else None)
    out.append(entry)
  return out


def transfer_matrix(aggregates: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
  """The relative ACR drop of PACD victims as a matrix, with its intervals.

  Rows: the training method the poisons were crafted against; columns: the victim
  (``method/arch``); undefended victims only. None unless there are several of either.

  Returns:
    ``{'crafted_against': [...], 'victims': [...], 'acr_drop_relative': [[mean]],
    'acr_drop_relative_ci': [[[low, high] or None]]}`` (None where no victim is).
  """
  pacd = [a for a in aggregates if a['poison'] == 'pacd' and _undefended(a)]
  rows = list(dict.fromkeys(a['crafted_against'] for a in pacd))
  victims = list(dict.fromkeys(f'{a["train_method"]}/{a["arch"]}' for a in pacd))
  if len(rows) < 2 and len(victims) < 2:
    return None
  mean = [[None] * len(victims) for _ in rows]
  ci = [[None] * len(victims) for _ in rows]
  for a in pacd:
    i = rows.index(a['crafted_against'])
    j = victims.index(f'{a["train_method"]}/{a["arch"]}')
    mean[i][j] = a.get('acr_drop_relative_mean')
    ci[i][j] = a.get('acr_drop_relative_ci')
  return {'crafted_against': rows, 'victims': victims, 'acr_drop_relative': mean,
          'acr_drop_relative_ci': ci}


def sweep_series(aggregates: Sequence[Mapping[str, Any]], axis: str, *,
                 field: str = 'acr_drop_relative') -> list[dict[str, Any]]:
  """The aggregates along one sweep axis, as curves of ``field`` with their intervals.

  An aggregate lies on ``axis`` if its ``sweep_axis`` is ``axis`` or None (the base
  point, which lies on every axis) and it has a value of ``axis`` (the clean victims
  have no eps or poisoned fraction). One curve per poisoned training set (``poison``
  and ``crafted_against``: PACD against each method, each random baseline) and victim
  (``train_method``, ``arch``), in first-appearance order; clean entries are left out.

  Args:
    aggregates: ``aggregate_rows`` output of rows with the sweep fields.
    axis: one of ``SWEEP_AXES``.
    field: the aggregated field (its ``_mean`` and ``_ci``).

  Returns:
    ``[{'train_method', 'arch', 'poison', 'crafted_against', 'axis', 'values' (sorted
    ascending), 'mean', 'ci' (None per value for one seed), 'seeds'}]``.
  """
  if axis not in SWEEP_AXES:
    raise ValueError(f'axis={axis!r} is not known; accepted: {", ".join(SWEEP_AXES)}.')
  curves: dict[tuple[Any, ...], dict[Any, Mapping[str, Any]]] = {}
  for a in aggregates:
    if a['poison'] == 'none' or a.get(axis) is None or \
        a.get('sweep_axis') not in (None, axis):
      continue
    key = (a['train_method'], a['arch'], a['poison'], a['crafted_against'])
    curves.setdefault(key, {})[a[axis]] = a
  out = []
  for (method, arch, poison, crafted_against), by_value in curves.items():
    values = sorted(by_value)
    out.append({'train_method': method, 'arch': arch, 'poison': poison,
                'crafted_against': crafted_against, 'axis': axis, 'values': values,
                'mean': [by_value[v].get(f'{field}_mean') for v in values],
                'ci': [by_value[v].get(f'{field}_ci') for v in values],
                'seeds': [list(by_value[v]['seeds']) for v in values]})
  return out


# ------------------------------------------------------------------------------------
# How the number of certified points changes the numbers.


def _subsets(n: int, m: int, num_seeds: int, first_seed: int) -> list[np.ndarray]:
  """Seeded subsets of m of n points (``rsp.data.seeded_subset_indices``' draw), or
  all n points once if m is 0 or at least n."""
  if m <= 0 or m >= n:
    return [np.arange(n)]
  return [np.sort(np.random.default_rng(s).choice(n, size=m, replace=False))
          for s in range(first_seed, first_seed + num_seeds)]


def _check_subset_args(sizes: Sequence[int], num_seeds: int) -> None:
  if not sizes or any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0
                      for m in sizes):
    raise ValueError(f'sizes={tuple(sizes)!r} must be integers >= 0 (0: all points), at '
                     'least one.')
  if isinstance(num_seeds, bool) or not isinstance(num_seeds, (int, np.integer)) or \
      num_seeds < 2:
    raise ValueError(f'num_seeds={num_seeds!r} must be an integer >= 2 (subsets per '
                     'size, for a spread).')


def _spread(values: Sequence[float], reference: float, m: int, n: int) -> dict[str, Any]:
  v = np.asarray(values, np.float64)
  return {'m': int(n if m <= 0 or m >= n else m), 'all_points': bool(m <= 0 or m >= n),
          'num_subsets': int(v.size), 'all': float(reference), 'mean': float(v.mean()),
          'std': float(v.std(ddof=1)) if v.size >= 2 else 0.0,
          'min': float(v.min()), 'max': float(v.max()),
          'max_abs_deviation': float(np.max(np.abs(v - reference)))}


def subset_acr(effective_radii: Any, sizes: Sequence[int] = (50, 100, 0), *,
               num_seeds: int = 20, first_seed: int = 0) -> list[dict[str, Any]]:
  """The ACR of seeded subsets of m of the certified points against that of all.

  For each m of ``sizes``, the ACR (mean effective radius) of the subsets drawn with
  the subset seeds ``first_seed, ..., first_seed + num_seeds - 1`` (as the protocol
  draws its certified points: ``np.random.default_rng(seed).choice`` without
  replacement), and its spread over the seeds: how far a certification of m points
  could have landed from that of all of them.

  Args:
    effective_radii: ``[n]`` ``effective_radius`` of each certified point.
    sizes: subset sizes; 0 (or >= n) is all n points (one "subset", no spread).
    num_seeds: subsets per size.
    first_seed: the first subset seed.

  Returns:
    Per size: ``{'m', 'all_points', 'num_subsets', 'all' (the ACR of all points),
    'mean', 'std' (ddof 1), 'min', 'max', 'max_abs_deviation' (from 'all')}``.
  """
  _check_subset_args(sizes, num_seeds)
  r = _floats(effective_radii)
  if r.size == 0:
    raise ValueError('effective_radii is empty; certify some points first.')
  return [_spread([r[i].mean() for i in _subsets(r.size, int(m), num_seeds, first_seed)],
                  r.mean(), int(m), r.size) for m in sizes]


def subset_acr_drop(clean_radii: Any, poisoned_radii: Any,
                    sizes: Sequence[int] = (50, 100, 0), *, num_seeds: int = 20,
                    first_seed: int = 0) -> list[dict[str, Any]]:
  """The relative ACR drop of a victim pair on seeded subsets of their points.

  As ``subset_acr``, for ``(ACR clean - ACR poisoned) / ACR clean`` computed on the same
  subset of both victims' points (paired, as the protocol certifies both on the same
  points with the same noise).

  Args:
    clean_radii, poisoned_radii: ``[n]`` effective radii, point i in both.
    sizes, num_seeds, first_seed: as ``subset_acr``.
  """
  _check_subset_args(sizes, num_seeds)
  c, p = _floats(clean_radii), _floats(poisoned_radii)
  if c.shape != p.shape or c.size == 0:
    raise ValueError(f'clean_radii has {c.size} points and poisoned_radii {p.size}; a '
                     'paired comparison needs the same points, at least one.')

  def drop(i):
    return compare_acr(c[i].mean(), p[i].mean())['acr_drop_relative']

  everything = drop(np.arange(c.size))
  return [_spread([drop(i) for i in _subsets(c.size, int(m), num_seeds, first_seed)],
                  everything, int(m), c.size) for m in sizes]


# ------------------------------------------------------------------------------------
# How visible a poison set is.


def perturbation_statistics(clean: Any, poisoned: Any, *,
                            data_range: float = 1.0) -> dict[str, Any]:
  """Norms, PSNR and SSIM of ``poisoned`` against ``clean``.

  Per image i with ``delta_i = poisoned_i - clean_i`` over its d pixels:
  ``PSNR_i = 10 log10(data_range^2 / (||delta_i||_2^2 / d))`` (skimage's
  ``peak_signal_noise_ratio``) and SSIM (Wang et al. 2004; skimage's
  ``structural_similarity``, 7x7 windows, per channel).

  Args:
    clean, poisoned: ``[N, H, W, C]`` images in [0, data_range].
    data_range: the pixel range (1 in rsp).

  Returns:
    ``num_images``; ``linf`` (max over all pixels); ``linf_mean``, ``l2_mean``, ``l2_max``
    (per-image norms); ``psnr_mean`` (dB, over the images that changed; inf if none
    did); ``ssim_mean``; ``mean_delta`` (signed mean pixel change: > 0 brightens);
    ``fraction_changed`` (of pixels); ``num_unchanged`` (images).
  """
  clean = np.asarray(clean, np.float64)
  poisoned = np.asarray(poisoned, np.float64)
  if clean.shape != poisoned.shape or clean.ndim != 4 or clean.shape[0] == 0:
    raise ValueError(f'clean {clean.shape} and poisoned {poisoned.shape} must be the same '
                     'non-empty [N, H, W, C] shape.')
  n = clean.shape[0]
  delta = (poisoned - clean).reshape(n, -1)
  linf = np.abs(delta).max(axis=1)
  l2 = np.sqrt((delta ** 2).sum(axis=1))
  changed = linf > 0
  psnr = [skimage_metrics.peak_signal_noise_ratio(clean[i], poisoned[i],
                                                  data_range=data_range)
          for i in np.flatnonzero(changed)]
  ssim = [skimage_metrics.structural_similarity(clean[i], poisoned[i],
                                                data_range=data_range, channel_axis=-1)
          for i in range(n)]
  return {
      'num_images': int(n),
      'linf': float(linf.max()),
      'linf_mean': float(linf.mean()),
      'l2_mean': float(l2.mean()),
      'l2_max': float(l2.max()),
      'psnr_mean': float(np.mean(psnr)) if psnr else float('inf'),
      'ssim_mean': float(np.mean(ssim)),
      'mean_delta': float(delta.mean()),
      'fraction_changed': float((delta != 0).mean()),
      'num_unchanged': int(n - changed.sum()),
  }
