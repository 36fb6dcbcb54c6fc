"""The report of an evaluation protocol: results.json, results.md, figures, machine.

``write_results(workdir, results)`` writes what ``rsp.protocol.run_protocol`` returns as
``results.json`` and renders it as ``results.md`` (``results_markdown``, the tables a
person reads, a table per sweep axis among them); ``make_figures`` draws the figures
with ``rsp.plotting``; ``machine_info`` records what the numbers were measured on;
``certification_settings`` tabulates how the number of certified points and of noise
samples change a finished workdir's numbers. Nothing here computes a statistic: the
numbers come from ``rsp.metrics``.

``results.json`` holds ``config`` (the protocol config), ``rows`` (one per certified
victim: ``rsp.protocol.run_cell``'s, plus ``acr_clean``, ``acr_drop``,
``acr_drop_relative`` from ``rsp.metrics.add_acr_drops`` and ``vs_clean``,
``vs_random`` from ``rsp.metrics.add_paired_comparisons``), ``aggregates`` (over seeds,
``rsp.metrics.aggregate_rows``), ``transfer_matrix`` (of the base point, or None),
``sweeps`` (per sweep axis: ``rsp.metrics.sweep_series``, the curves of the relative
ACR drop), ``poisons`` (per poison set: ``poison``, ``crafted_against``, ``setting``
(its departures from the base budget), ``path``, ``metadata``, attack ``seconds``,
``statistics`` from ``rsp.metrics.perturbation_statistics``), ``certified_points``
(test indices of the base target class) and ``certified_points_by_class``,
``missing`` (``poison_sets`` and ``cells`` not finished: a report of a grid still
running), ``machine``, ``total_seconds`` (recorded compute of attacks and cells),
``wall_seconds`` (the invocation), ``figures`` (paths relative to the workdir) and
``dpa`` (the rows of Deep Partition Aggregation, ``rsp.defense_cells.run_dpa_cell``;
empty without a 'dpa' defense).

Rows of defended victims (``defense`` other than 'none'; ``rsp.defense_cells``) are
left out of the undefended tables and figures and shown in a defenses table of their
own (with the undefended rows as the reference), with a figure of the ACR per defense;
DPA, which has no ACR, has its own table.

Every aggregated cell shows the mean over victim seeds and, with two seeds or more, its
95% confidence interval (Student t over the seeds) in one cell, e.g. an ACR drop of
``61.6% [55.1, 68.0]``; with one seed it shows the mean alone.
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from rsp import metrics
from rsp import plotting
from rsp import version
from rsp import workdir as workdir_lib

POISON_LABELS = {
    'none': 'clean',
    'pacd': 'PACD',
    'random': 'random ±eps',
    'random_uniform': 'random U[-eps, eps]',
    'random_zero_mean': 'random ±eps, zero-mean',
    'no_target': 'target class removed',
}
# The radii of the certified-accuracy table (those the rows' curves hold).
TABLE_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
# The sweep axes: a short name (in labels) and an axis title (in tables and figures).
AXIS_NAMES = {'eps': 'eps', 'poison_fraction': 'fraction', 'victim_sigma': 'sigma',
              'target_class': 'class', 'victim_epochs': 'epochs'}
AXIS_TITLES = {'eps': 'eps (L-inf budget)',
               'poison_fraction': 'poisoned fraction of the class',
               'victim_sigma': "victims' sigma (training and certification)",
               'target_class': 'target class',
               'victim_epochs': "victims' training epochs"}


class FigureError(RuntimeError):
  """The figures could not be drawn or written (the results are complete without)."""


def poison_label(poison: str, crafted_against: str = '') -> str:
  """A readable name of a training set: 'PACD (vs macer)', 'random ±eps', ..."""
  if poison == 'pacd':
    return f'PACD (vs {crafted_against})' if crafted_against else 'PACD'
  return POISON_LABELS.get(poison, poison)


def machine_info() -> dict[str, Any]:
  """What the numbers were measured on: platform, CPU model, cores, devices, versions."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return {'platform': platform.platform(), 'cpu': cpu, 'cpu_count': os.cpu_count(),
          'devices': [f'{d.platform}:{d.device_kind}' for d in jax.devices()],
          'jax': jax.__version__, 'rsp': version.__version__}


# ------------------------------------------------------------------------------------
# Cells.


def _finite(x: Any) -> bool:
  return x is not None and bool(np.isfinite(x))


def format_interval(mean: float | None, ci: Sequence[float] | None = None, *,
                    percent: bool = False, digits: int = 3) -> str:
  """A mean and its interval in one cell: ``'61.6% [55.1, 68.0]'``, ``'0.498'``.

  Args:
    mean: the value; None or NaN gives ``'-'``.
    ci: ``[low, high]`` or None (no interval: one seed).
    percent: show ``100 * x`` with one decimal and a % sign.
    digits: decimals otherwise.
  """
  if not _finite(mean):
    return '-'
  scale, d = (100.0, 1) if percent else (1.0, digits)
  text = f'{scale * mean:.{d}f}' + ('%' if percent else '')
  if ci is not None and all(_finite(c) for c in ci):
    text += f' [{scale * ci[0]:.{d}f}, {scale * ci[1]:.{d}f}]'
  return text


def format_paired(comparison: Mapping[str, Any] | None, *, digits: int = 3) -> str:
  """A paired per-point comparison: ``'-0.801 ± 0.093 (87 fell, 3 rose)'``."""
  if not comparison or not _finite(comparison.get('mean')):
    return '-'
  text = f'{comparison["mean"]:+.{digits}f}'
  if _finite(comparison.get('standard_error')):
    text += f' ± {comparison["standard_error"]:.{digits}f}'
  return text + f' ({comparison["num_fell"]} fell, {comparison["num_rose"]} rose)'


def format_paired_t(test: Mapping[str, Any] | None, *, digits: int = 3) -> str:
  """A paired comparison over seeds: ``'-0.305 [-0.41, -0.20], p = 0.012'``."""
  if not test or not _finite(test.get('mean')):
    return '-'
  text = format_interval(test['mean'], test.get('ci'), digits=digits)
  if test['mean'] > 0:
    text = '+' + text
  if _finite(test.get('p_value')):
    text += f', p = {test["p_value"]:.2g}'
  return text


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h} h {m:02d} min' if h else (f'{m} min {s:02d} s' if m else f'{s} s')


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return (['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)] +
          ['| ' + ' | '.join(r) + ' |' for r in rows])


def _cell(a: Mapping[str, Any], name: str, *, percent: bool = False) -> str:
  return format_interval(a.get(f'{name}_mean'), a.get(f'{name}_ci'), percent=percent)


def setting_label(entry: Mapping[str, Any]) -> str:
  """Where a row, aggregate or poison set departs from the base point: ``'eps 0.05'``,
  ``'class 3'``; '' on the base point."""
  axis = entry.get('sweep_axis')
  if axis is None and entry.get('setting'):  # A poison set's departures.
    return ', '.join(f'{AXIS_NAMES[a]} {v:g}' for a, v in entry['setting'].items())
  if axis not in AXIS_NAMES or entry.get(axis) is None:
    return ''
  return f'{AXIS_NAMES[axis]} {entry[axis]:g}'


def _who(a: Mapping[str, Any]) -> list[str]:
  label = poison_label(a['poison'], a['crafted_against'])
  where = setting_label(a)
  return [a['train_method'], a['arch'], f'{label}, {where}' if where else label]


# ------------------------------------------------------------------------------------
# results.md.


def _main_table(aggregates: Sequence[Mapping[str, Any]], interval: str) -> list[str]:
  rows = []
  for a in aggregates:
    drop = '-' if a['poison'] == 'none' else _cell(a, 'acr_drop_relative', percent=True)
    rows.append(_who(a) + [
        str(len(a['seeds'])), _cell(a, 'acr'), drop,
        format_paired_t(a.get('acr_vs_random')), _cell(a, 'certified_accuracy'),
        _cell(a, 'abstain_rate'), _cell(a, 'clean_accuracy'),
        _cell(a, 'target_accuracy')])
  return _table(['training method', 'arch', 'training set', 'seeds', f'ACR{interval}',
                 f'ACR drop{interval}', f'ACR PACD - random (paired t over seeds){interval}',
                 f'certified acc. (r=0){interval}', f'abstain rate{interval}',
                 f'clean acc.{interval}', f'target acc.{interval}'], rows)


def _paired_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  body = [_who(r) + [str(r['seed']), format_interval(r['acr']),
                     format_paired(r.get('vs_clean')), format_paired(r.get('vs_random'))]
          for r in rows if r['poison'] != 'none']
  return _table(['training method', 'arch', 'training set', 'seed', 'ACR',
                 'radius - clean victim', 'radius - random victim (PACD)'], body)


def _radius_table(aggregates: Sequence[Mapping[str, Any]]) -> list[str]:
  curves = [a.get('certified_accuracy_curve') for a in aggregates]
  if not any(curves):
    return []
  radii = [r for r in TABLE_RADII if all(c is None or r in c['radius'] for c in curves)]
  body = []
  for a, c in zip(aggregates, curves):
    cells = ['-'] * len(radii)
    if c is not None:
      cells = [format_interval(c['mean'][c['radius'].index(r)],
                               c['ci'][c['radius'].index(r)]) for r in radii]
    body.append(_who(a) + cells)
  return _table(['training method', 'arch', 'training set'] +
                [f'r = {r:g}' for r in radii], body)


def _other_classes_table(aggregates: Sequence[Mapping[str, Any]],
                         certified: bool) -> list[str]:
  header = ['training method', 'arch', 'training set', 'clean acc. (other classes)']
  fields = ['clean_accuracy_non_target']
  if certified:
    header += ['ACR (all classes)', 'ACR (other classes)',
               'certified acc. r=0 (other classes)']
    fields += ['acr_all_classes', 'acr_non_target', 'certified_accuracy_non_target']
  body = [_who(a) + [_cell(a, name) for name in fields] for a in aggregates]
  return _table(header, body)


def _transfer_table(matrix: Mapping[str, Any]) -> list[str]:
  body = [[against] + [format_interval(m, ci, percent=True) for m, ci in zip(means, cis)]
          for against, means, cis in zip(matrix['crafted_against'],
                                         matrix['acr_drop_relative'],
                                         matrix['acr_drop_relative_ci'])]
  return _table(['poisons crafted against \\ victim'] + list(matrix['victims']), body)


def _poison_table(poisons: Mapping[str, Mapping[str, Any]]) -> list[str]:
  body = []
  for p in poisons.values():
    s = p['statistics']
    psnr = f'{s["psnr_mean"]:.1f}' if _finite(s['psnr_mean']) else 'inf'
    label = poison_label(p['poison'], p['crafted_against'])
    where = setting_label(p)
    body.append([f'{label}, {where}' if where else label, str(s['num_images']),
                 f'{s["linf"]:.4f}', f'{s["l2_mean"]:.3f}', psnr, f'{s["ssim_mean"]:.3f}',
                 f'{s["mean_delta"]:+.4f}'])
  return _table(['poison set', 'images', 'L-inf', 'mean L2', 'PSNR (dB)', 'SSIM',
                 'mean change'], body)


def _series_label(series: Mapping[str, Any], several_victims: bool) -> str:
  label = poison_label(series['poison'], series['crafted_against'])
  return f'{label}, {series["train_method"]}/{series["arch"]}' if several_victims \
      else label


def _sweep_table(axis: str, curves: Sequence[Mapping[str, Any]]) -> list[str]:
  """One row per value of the axis; one column per curve (PACD, random, ...)."""
  several = len({(c['train_method'], c['arch']) for c in curves}) > 1
  values = sorted({v for c in curves for v in c['values']})
  body = []
  for v in values:
    cells = []
    for c in curves:
      i = c['values'].index(v) if v in c['values'] else None
      cells.append('-' if i is None else
                   format_interval(c['mean'][i], c['ci'][i], percent=True))
    body.append([f'{v:g}'] + cells)
  return _table([AXIS_TITLES[axis]] + [f'{_series_label(c, several)}: ACR drop'
                                       for c in curves], body)


def _sweep_section(results: Mapping[str, Any]) -> list[str]:
  sweeps = {axis: curves for axis, curves in (results.get('sweeps') or {}).items()
            if curves}
  if not sweeps:
    return []
  lines = ['', '## Sweeps', '',
           'The relative target-class ACR drop along each sweep axis, the others at the '
           'base point (its value is on every axis); every drop against the clean victim '
           'of the same seed, target class and victim sigma; the random baseline of the '
           'same budget (eps, poisoned fraction) beside PACD.']
  for axis, curves in sweeps.items():
    lines += ['', f'### {AXIS_TITLES[axis]}', ''] + _sweep_table(axis, curves)
  return lines


def _missing_section(missing: Mapping[str, Sequence[str]] | None) -> list[str]:
  missing = {k: v for k, v in (missing or {}).items() if v}
  if not missing:
    return []
  lines = ['**Incomplete:** the numbers below are those of the finished cells only; '
           'not finished yet:', '']
  for what, names in missing.items():
    lines.append(f'* {what.replace("_", " ")} ({len(names)}): '
                 + ', '.join(f'`{n}`' for n in names))
  return lines + ['']


def _defended(entries: Sequence[Mapping[str, Any]]) -> bool:
  return any(metrics.defense_of(e) != 'none' for e in entries)


def _undefended(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
  return [e for e in entries if metrics.defense_of(e) == 'none']


def _detection_cell(a: Mapping[str, Any], name: str) -> str:
  if f'detection_{name}_mean' not in a:
    return '-'
  digits = 0 if name == 'removed' else 3
  return format_interval(a[f'detection_{name}_mean'], a.get(f'detection_{name}_ci'),
                         digits=digits)


def _defense_table(aggregates: Sequence[Mapping[str, Any]], interval: str) -> list[str]:
  order = list(dict.fromkeys(metrics.defense_of(a) for a in aggregates))
  body = []
  for a in sorted(aggregates, key=lambda a: order.index(metrics.defense_of(a))):
    undefended = metrics.defense_of(a) == 'none'
    drop = ('-' if undefended and a['poison'] == 'none' else
            _cell(a, 'acr_drop_relative', percent=True))
    recovered = ('-' if undefended or a['poison'] == 'none' else
                 _cell(a, 'acr_recovered_fraction', percent=True))
    body.append([metrics.defense_of(a)] + _who(a) + [
        str(len(a['seeds'])), _cell(a, 'acr'), drop, recovered] +
        [_detection_cell(a, n) for n in ('precision', 'recall', 'auroc', 'removed')] +
        [_cell(a, 'clean_accuracy'), _cell(a, 'target_accuracy')])
  return _table(['defense', 'training method', 'arch', 'training set', 'seeds',
                 f'ACR{interval}', f'ACR drop vs undefended clean{interval}',
                 f'recovered of the ACR lost{interval}', f'precision{interval}',
                 f'recall{interval}', f'AUROC{interval}', f'removed{interval}',
                 f'clean acc.{interval}', f'target acc.{interval}'], body)


def _fraction(x: Any) -> str:
  return '-' if not _finite(x) else f'{x:.3f}'


def _dpa_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  body = []
  for r in rows:
    sizes = r['partition_sizes']
    touched = r['partitions_touched']
    body.append([
        poison_label(r['poison'], r['crafted_against']), str(r['seed']),
        str(r['dpa_partitions']), f'{sizes[0]} / {sizes[1]:g} / {sizes[2]}',
        _fraction(r['clean_accuracy']), _fraction(r['target_accuracy']),
        _fraction(r['certified_accuracy']), str(r['modified_images']),
        str(r['dpa_budget']), str(r['max_certifiable']),
        _fraction(r['certified_accuracy_at_budget']),
        '-' if touched is None else str(touched),
        _fraction(r['certified_accuracy_at_touched'])])
  return _table(['training set', 'seed', 'k', 'partition sizes (min / median / max)',
                 'clean acc.', 'target acc.', 'certified acc. r >= 1 (target)',
                 'modified images m', 'budget 2m', 'largest r (k/2)',
                 'certified acc. r >= 2m (target)', 'partitions touched',
                 'certified acc. r >= touched (target)'], body)


def results_markdown(results: Mapping[str, Any], *, include_figures: bool = True) -> str:
  """The person-readable report of ``results`` (what ``results.md`` holds).

  Args:
    results: from ``rsp.protocol.run_protocol`` or ``load_results``.
    include_figures: end with links to the figures (relative to the workdir).
  """
  cfg = results['config']
  c = cfg['certify']
  machine = results['machine']
  all_aggregates = results['aggregates']
  aggregates = _undefended(all_aggregates)
  most_seeds = max((len(a['seeds']) for a in all_aggregates), default=1)
  spread = ('Each cell: the mean over the victim seeds [95% confidence interval, '
            'Student t with n - 1 degrees of freedom over the n seeds].'
            if most_seeds >= 2 else
            'One victim seed: each cell is that victim\'s value (no interval over seeds; '
            'see the paired per-point comparisons below).')
  fraction = cfg.get('poison_fraction', 1.0)
  budget = f'L-inf budget eps = {cfg["eps"]}' + (
      f', a fraction {fraction:g} of the class poisoned' if fraction != 1.0 else '')
  axes = [AXIS_TITLES[a] for a, curves in (results.get('sweeps') or {}).items()]
  if axes:
    budget = (f'base point: {budget}, victims at their configured sigma; swept one at a '
              f'time: {"; ".join(axes)}')
  lines = [
      f'# PACD evaluation protocol: {cfg["name"]}', '',
      f'Data `{cfg["dataset"]}` (data seed {cfg["data_seed"]}), target class '
      f'{cfg["target_class"]}, {budget}. Every victim is trained '
      f'from scratch and certified (Cohen et al. CERTIFY, N0 = {c["n0"]}, N = {c["n"]}, '
      f'alpha = {c["alpha"]}, at its training sigma) on the same '
      f'{len(results["certified_points"])} target-class test points (subset seed '
      f'{c["subset_seed"]}) with the same noise per point. ACR drop: (ACR clean - ACR '
      'poisoned) / ACR clean against the clean victim of the same training method, '
      'architecture and seed' + (', target class and victim sigma' if axes else '')
      + f'. {spread}', '']
  lines += _missing_section(results.get('missing'))
  lines += ['## Target-class certification', '']
  lines += _main_table(aggregates, ' [95% CI]' if most_seeds >= 2 else '')
  lines += ['', '## Per victim, paired over the certified points', '',
            'Effective radius R 1[correct] of each point (its term of the ACR) minus that '
            'of the same point for the clean victim (and, for PACD, the random ±eps '
            'victim) of the same seed: mean ± standard error over the points, and how '
            'many points fell or rose.', '']
  lines += _paired_table(_undefended(results['rows']))
  radius_table = _radius_table(aggregates)
  if radius_table:
    lines += ['', '## Certified accuracy at radius r (target class)', ''] + radius_table
  certified = any('acr_non_target_mean' in a for a in aggregates)
  lines += ['', '## Other classes', '',
            'Clean accuracy of the base classifier on the test points of the other '
            'classes' + (f'; certification of the {c["all_classes_points"]} seeded '
                         'test points of all classes.' if certified else '.'), '']
  lines += _other_classes_table(aggregates, certified)
  matrix = results.get('transfer_matrix')
  if matrix:
    lines += ['', '## Transfer: target-class ACR drop of PACD victims', '',
              'Rows: the training method the poisons were crafted against; columns: the '
              'victim (training method / architecture).', '']
    lines += _transfer_table(matrix)
  lines += _sweep_section(results)
  if _defended(all_aggregates):
    budget = cfg.get('defense_budget', -1)
    lines += ['', '## Defenses', '',
              'Each defended victim is trained from scratch like the undefended one of '
              'its row: with a training-time defense (the fields of '
              '`config.training_defenses`), or, for a detector, on the training set '
              'without the points it flags on the undefended victim\'s penultimate '
              'features (' + ('as many as the poison sets modify' if budget == -1 else
                              f'budget {budget:g}') + '; removed: how many). ACR drop: '
              'against the undefended victim of the clean training set (on the clean '
              'set: what the defense costs). Recovered: (ACR defended - ACR undefended) '
              '/ (ACR undefended clean - ACR undefended), on the same poisoned training '
              'set. Precision, recall and AUROC of the detector\'s scores against the '
              'known poisons (under PACD every target-class training image is a poison, '
              'so recall is the fraction of the target class removed).', '']
    lines += _defense_table(all_aggregates, ' [95% CI]' if most_seeds >= 2 else '')
  dpa = results.get('dpa') or []
  if dpa:
    lines += ['', '## Deep Partition Aggregation (not a smoothing certificate)', '',
              f'Levine & Feizi (2021): {dpa[0]["dpa_partitions"]} base classifiers '
              f'(`{dpa[0]["train_method"]}` {dpa[0]["arch"]}) on content-hash partitions '
              'of the training set; a test point\'s certificate r is the number of '
              'training-set insertions or removals that cannot change the plurality vote '
              '(at most k/2). A modified image is one removal and one insertion, so the '
              'm modified images of a poison set count twice: a budget of 2m. Partitions '
              'touched: those whose training set the poisons actually change (the check '
              'against this poison set). No ACR: these rows are not in the tables '
              'above.', '']
    lines += _dpa_table(dpa)
    lines += [''] + [f'- {label}: {statement}' for label, statement in dict.fromkeys(
        (poison_label(r['poison'], r['crafted_against']), r['statement'])
        for r in dpa)]
  if results['poisons']:
    lines += ['', '## Poisons: perturbation statistics', ''] + _poison_table(
        results['poisons'])
  times = [f'{poison_label(p["poison"], p["crafted_against"])}'
           + (f' ({setting_label(p)})' if setting_label(p) else '')
           + f' {_duration(p["seconds"])}'
           for p in results['poisons'].values() if p.get('seconds')]
  lines += ['', '## Machine and time', '',
            f'{machine["cpu"]} ({machine["cpu_count"]} cores), devices '
            f'{", ".join(machine["devices"])}; jax {machine["jax"]}, rsp {machine["rsp"]}.',
            '',
            f'Recorded compute: {_duration(results["total_seconds"])} in all'
            + (f' (attacks: {", ".join(times)}; ' if times else ' (')
            + f'victims: {_duration(sum(r["time"] for r in results["rows"] + dpa))} '
            f'for {len(results["rows"]) + len(dpa)} trainings and certifications). This '
            f'invocation: {_duration(results["wall_seconds"])} of wall time.']
  if include_figures and results.get('figures'):
    lines += ['', '## Figures', '']
    lines += [f'![{os.path.basename(f)}]({f})' for f in results['figures']]
  return '\n'.join(lines) + '\n'


def write_results(workdir: str, results: Mapping[str, Any]) -> dict[str, Any]:
  """Writes ``results.json`` and then ``results.md``; returns the results as read back
  (the same values as a later ``load_results``: NaN is None)."""
  workdir_lib.write_json(os.path.join(workdir, 'results.json'), results)
  results = load_results(workdir)
  workdir_lib.write_text(os.path.join(workdir, 'results.md'), results_markdown(results))
  return results


def load_results(workdir: str) -> dict[str, Any]:
  """The ``results.json`` a finished ``rsp.protocol.run_protocol`` left in ``workdir``."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.isfile(path):
    raise ValueError(f'workdir={workdir!r} holds no results.json: run '
                     'rsp.protocol.run_protocol first.')
  return workdir_lib.read_json(path)


# ------------------------------------------------------------------------------------
# Figures.


def make_figures(results: Mapping[str, Any], points: Mapping[str, Mapping[str, Any]],
                 poison_sets: Mapping[str, Any], workdir: str) -> list[str]:
  """Writes the figures into ``workdir/figures``; returns their paths relative to it.

  * ``certified_accuracy_<arch>.png``: certified accuracy against radius, one panel
    per training method, one curve per training set (the points of all seeds pooled,
    which is the mean curve over seeds);
  * ``poisons_<set>.png``: clean images, poisoned images and the amplified perturbation
    (the first ``config.num_figure_images`` images that the poisons changed);
  * ``acr_drop.png``: the relative ACR drop per poisoned cell, with its interval;
  * ``sweep_<axis>.png`` for each sweep axis: the relative ACR drop against the axis,
    with its 95% confidence band over the seeds, one curve per poisoned training set
    (PACD beside the random baseline of the same budget);
  * ``acr_defenses.png`` (with defended rows): the ACR per defense, one bar per
    training set, with its interval.

  The certified-accuracy and ACR-drop figures show the undefended victims at the base
  point of a sweep (its other points are in the sweep figures).

  Args:
    results: the protocol's results (``config``, ``rows``, ``aggregates``).
    points: ``{cell: {'radius': [m], 'correct': [m]}}`` of every row's certified points.
    poison_sets: ``{name: poison set}`` with attributes ``poison``,
      ``crafted_against``, ``clean_images`` and ``poisons``.
    workdir: the protocol's workdir.

  Raises:
    rsp.workdir.WorkdirError: ``figures`` cannot be a directory (e.g. it is a file).
  """
  cfg = results['config']
  workdir_lib.ensure_directory(os.path.join(workdir, 'figures'), name='figures directory')
  out = []
  rows = _undefended([r for r in results['rows'] if r.get('sweep_axis') is None])
  aggregates = _undefended([a for a in results['aggregates']
                            if a.get('sweep_axis') is None])
  for arch in dict.fromkeys(r['arch'] for r in rows):
    panels: dict[str, dict[str, Any]] = {}
    for a in aggregates:
      if a['arch'] != arch:
        continue
      members = [points[r['cell']] for r in rows if
                 (r['train_method'], r['arch'], r['poison_set']) ==
                 (a['train_method'], arch, a['poison_set'])]
      label = (f'{poison_label(a["poison"], a["crafted_against"])} '
               f'(ACR {format_interval(a["acr_mean"])})')
      panels.setdefault(f'{a["train_method"]}, {arch}', {})[label] = (
          np.concatenate([p['radius'] for p in members]),
          np.concatenate([p['correct'] for p in members]))
    rel = os.path.join('figures', f'certified_accuracy_{arch}.png')
    plotting.plot_certified_accuracy_panels(
        panels, os.path.join(workdir, rel),
        title=f'{cfg["dataset"]}, class {cfg["target_class"]}, eps {cfg["eps"]}')
    out.append(rel)
  for name, p in poison_sets.items():
    rel = os.path.join('figures', f'poisons_{name}.png')
    # The first images the attack changed (a short attack leaves some untouched).
    changed = np.flatnonzero(np.any(p.poisons != p.clean_images, axis=(1, 2, 3)))
    shown = (changed if changed.size else np.arange(len(p.poisons)))
    shown = shown[:cfg['num_figure_images']]
    plotting.plot_poison_examples(
        p.clean_images[shown], p.poisons[shown], os.path.join(workdir, rel),
        num_images=cfg['num_figure_images'],
        title=f'{poison_label(p.poison, p.crafted_against)}'
              + (f' ({setting_label({"setting": p.setting})})' if p.setting else '')
              + ': max |delta| = '
              f'{float(np.abs(p.poisons - p.clean_images).max()):.3g}')
    out.append(rel)
  if any(a['poison'] != 'none' for a in aggregates):
    rel = os.path.join('figures', 'acr_drop.png')
    plotting.plot_acr_drop(
        aggregates, os.path.join(workdir, rel),
        label=lambda a: poison_label(a['poison'], a['crafted_against']),
        title=f'{cfg["name"]}: target-class ACR drop')
    out.append(rel)
  for axis, curves in (results.get('sweeps') or {}).items():
    if not curves:
      continue
    several = len({(c['train_method'], c['arch']) for c in curves}) > 1
    rel = os.path.join('figures', f'sweep_{axis}.png')
    plotting.plot_sweep(
        [dict(c, label=_series_label(c, several)) for c in curves],
        os.path.join(workdir, rel), xlabel=AXIS_TITLES[axis],
        categorical=axis == 'target_class', log_x=axis == 'eps',
        title=f'{cfg["name"]}: target-class ACR drop against the '
              f'{AXIS_NAMES[axis]} (95% CI over seeds)')
    out.append(rel)
  if _defended(results['aggregates']):
    rel = os.path.join('figures', 'acr_defenses.png')
    plotting.plot_acr_by_defense(
        results['aggregates'], os.path.join(workdir, rel),
        label=lambda a: poison_label(a['poison'], a['crafted_against']),
        title=f'{cfg["name"]}: target-class ACR per defense')
    out.append(rel)
  return out


# ------------------------------------------------------------------------------------
# Certification settings that change the numbers.

CERTIFICATION_SETTINGS = 'certification_settings'
# experiments/certify.py runs on the cells' checkpoints at N noise samples:
# WORKDIR/certify_n<N>/<cell>/summary.json.
_CERTIFY_N_DIR = re.compile(r'certify_n(\d+)')


def _spread_text(s: Mapping[str, Any], *, percent: bool = False) -> str:
  if not _finite(s.get('mean')):
    return '-'
  scale, d = (100.0, 1) if percent else (1.0, 3)
  unit = '%' if percent else ''
  if s['all_points']:
    return f'{scale * s["all"]:.{d}f}{unit}'
  return (f'{scale * s["mean"]:.{d}f}{unit} ± {scale * s["std"]:.{d}f} '
          f'[{scale * s["min"]:.{d}f}, {scale * s["max"]:.{d}f}]')


def _noise_sample_runs(workdir: str) -> dict[int, dict[str, dict[str, Any]]]:
  """``{N: {cell: summary}}`` of the ``certify_n<N>/<cell>/summary.json`` found."""
  out: dict[int, dict[str, dict[str, Any]]] = {}
  for name in sorted(os.listdir(workdir)):
    match = _CERTIFY_N_DIR.fullmatch(name)
    if not match or not os.path.isdir(os.path.join(workdir, name)):
      continue
    for cell in sorted(os.listdir(os.path.join(workdir, name))):
      path = os.path.join(workdir, name, cell, 'summary.json')
      if os.path.isfile(path):
        out.setdefault(int(match.group(1)), {})[cell] = workdir_lib.read_json(path)
  return dict(sorted(out.items()))


def certification_settings(workdir: str, *, sizes: Sequence[int] = (50, 100, 0),
                           num_seeds: int = 20) -> dict[str, Any]:
  """How the certification settings change a finished protocol's numbers.

  Reads the workdir only (``results.json``, the cells' ``certify.tsv``), computes with
  ``rsp.metrics.subset_acr`` / ``subset_acr_drop``, and writes
  ``certification_settings.json`` and ``certification_settings.md``:

  * ``subsets``: per cell, the ACR of seeded subsets of m of its certified points
    (``sizes``; 0: all) with its spread over ``num_seeds`` subset seeds; per poisoned
    cell with a clean victim (same method, architecture, seed, class, sigma), the
    relative ACR drop on the same subsets of both;
  * ``noise_samples``: per N of the ``certify_n<N>/<cell>/`` runs found (made with
    ``experiments/certify.py --config.n=N`` on ``cells/<cell>/train``), each cell's
    ACR, and each poisoned cell's drop against its clean victim at the same N.

  Args:
    workdir: a protocol workdir holding ``results.json``.
    sizes: subset sizes m (0: all points).
    num_seeds: subsets per size (>= 2).

  Returns:
    ``{'sizes', 'num_seeds', 'subsets': {cell: {'acr': [...], 'acr_drop': [...] or
    None}}, 'noise_samples': {N: {cell: {'acr', 'num_points', 'acr_drop_relative'}}}}``.
  """
  results = load_results(workdir)
  rows = results['rows']
  clean = {metrics.victim_key(r): r['cell'] for r in rows if r['poison'] == 'none'}
  partner = {r['cell']: clean.get(metrics.victim_key(r)) for r in rows
             if r['poison'] != 'none'}
  radii = {}
  for r in rows:
    a = metrics.rows_to_arrays(metrics.read_certification_tsv(
        os.path.join(workdir, 'cells', r['cell'], 'certify.tsv')))
    radii[r['cell']] = metrics.effective_radius(a['radius'], a['correct'])
  subsets = {cell: {'acr': metrics.subset_acr(values, sizes, num_seeds=num_seeds),
                    'acr_drop': (None if partner.get(cell) is None else
                                 metrics.subset_acr_drop(radii[partner[cell]], values,
                                                         sizes, num_seeds=num_seeds))}
             for cell, values in radii.items()}
  noise = {}
  for n, runs in _noise_sample_runs(workdir).items():
    noise[str(n)] = {}
    for cell, summary in runs.items():
      reference = runs.get(partner.get(cell) or '')
      drop = (metrics.compare_acr(reference['acr'], summary['acr'])['acr_drop_relative']
              if reference else None)
      noise[str(n)][cell] = {'acr': summary['acr'], 'num_points': summary['num_points'],
                             'acr_drop_relative': drop}
  out = {'sizes': [int(m) for m in sizes], 'num_seeds': int(num_seeds),
         'subsets': subsets, 'noise_samples': noise}
  workdir_lib.write_json(os.path.join(workdir, f'{CERTIFICATION_SETTINGS}.json'), out)
  workdir_lib.write_text(os.path.join(workdir, f'{CERTIFICATION_SETTINGS}.md'),
                         certification_settings_markdown(out, results['config']['name']))
  return out


def certification_settings_markdown(analysis: Mapping[str, Any], name: str = '') -> str:
  """``certification_settings``'s result as the tables of its ``.md`` file."""
  lines = [f'# Certification settings that change the numbers: {name}', '',
           '## How many points are certified', '',
           f'ACR of seeded subsets of m of each cell\'s certified points '
           f'({analysis["num_seeds"]} subset seeds): mean ± standard deviation [min, max] '
           'over the seeds; "all": the ACR of every certified point.', '']
  subsets = analysis['subsets']
  if subsets:
    first = next(iter(subsets.values()))['acr']
    # Sizes of m >= the number of points all mean "every point": one column for them.
    keep = [i for i, s in enumerate(first)
            if not s['all_points'] or not any(t['all_points'] for t in first[:i])]
    header = ['cell'] + [(f'all (m = {first[i]["m"]})' if first[i]['all_points'] else
                          f'm = {first[i]["m"]}') + ' ACR' for i in keep]
    lines += _table(header, [[f'`{c}`'] + [_spread_text(v['acr'][i]) for i in keep]
                             for c, v in subsets.items()])
    drops = {c: v['acr_drop'] for c, v in subsets.items() if v['acr_drop']}
    if drops:
      lines += ['', 'Relative ACR drop against the clean victim, on the same subset of '
                'both victims\' points:', '']
      lines += _table(['poisoned cell'] + [h.replace('ACR', 'drop') for h in header[1:]],
                      [[f'`{c}`'] + [_spread_text(v[i], percent=True) for i in keep]
                       for c, v in drops.items()])
  noise = analysis['noise_samples']
  lines += ['', '## How many noise samples', '']
  if not noise:
    lines += ['No `certify_n<N>/<cell>/` runs in the workdir (see the commands in '
              'rsp/configs/protocol_sweep.py).']
  else:
    ns = list(noise)
    cells = list(dict.fromkeys(c for runs in noise.values() for c in runs))
    body = []
    for cell in cells:
      entries = [noise[n].get(cell) for n in ns]
      body.append([f'`{cell}`'] + [
          '-' if e is None else format_interval(e['acr']) + (
              '' if e['acr_drop_relative'] is None else
              f' (drop {format_interval(e["acr_drop_relative"], percent=True)})')
          for e in entries])
    lines += ['ACR of each cell certified again at N noise samples (same points, same '
              'noise key), and the relative drop against its clean victim at the same N:',
              '']
    lines += _table(['cell'] + [f'N = {int(n):,}' for n in ns], body)
  return '\n'.join(lines) + '\n'
