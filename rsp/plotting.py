"""Figures: certified accuracy against radius, grids of (poisoned) images, ACR drops (per
cell, and along a sweep axis with confidence bands).

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through
``pyplot``: nothing here changes the global backend or leaks open figures, so the
functions are safe in scripts, tests and notebooks alike (a returned ``Figure`` displays
inline in Jupyter). Each function saves a PNG when given a path (atomically, through
``rsp.workdir``: a killed run leaves no half-written figure) and returns the figure.
"""

from __future__ import annotations

import textwrap

from typing import Any, Callable, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from rsp import metrics
from rsp import workdir as workdir_lib

# A curve: per-point certified radii and whether each prediction was correct.
Curve = tuple[Any, Any]



def _wrapped(title: str, width: int = 60) -> str:
  """``title`` broken into lines of at most ``width`` characters (long titles would be
  cut at the figure's edge)."""
  return textwrap.fill(title, width=width, break_long_words=False)

def _save(fig: Figure, path: str | None, dpi: int = 120) -> None:
  """Writes ``fig`` as a PNG to ``path`` atomically (``rsp.workdir.atomic_file``)."""
  if path is None:
    return
  FigureCanvasAgg(fig)  # Attaches an Agg canvas to the figure.
  with workdir_lib.atomic_file(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=dpi)


def certified_accuracy_curve(radius: Any, correct: Any, *, max_radius: float | None = None,
                             num_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
  """``(r, certified accuracy at r)`` on an even grid from 0 to ``max_radius``.

  ``max_radius`` defaults to 5% beyond the largest radius (so the curve reaches 0).
  """
  radius = np.asarray(radius, np.float64)
  if max_radius is None:
    max_radius = 1.05 * float(radius.max(initial=0.0)) or 1.0
  grid = np.linspace(0.0, max_radius, num_points)
  return grid, metrics.certified_accuracy(radius, correct, grid)


def plot_certified_accuracy_panels(panels: Mapping[str, Mapping[str, Curve]],
                                   path: str | None = None, *,
                                   max_radius: float | None = None,
                                   title: str | None = None,
                                   panel_width: float = 4.5) -> Figure:
  """Certified accuracy against radius, one panel per entry, several curves per panel.

  Args:
    panels: ``{panel title: {curve label: (radius [m], correct [m])}}``, per-point radii
      (0 for abstentions) and correctness, e.g. from ``metrics.rows_to_arrays``.
    path: PNG to write (directories are created); None to only return the figure.
    max_radius: right end of the x axis, shared by all panels (default: fitted to the
      data).
    title: figure title.
    panel_width: inches per panel.

  Returns:
    The figure.
  """
  if not panels:
    raise ValueError('panels is empty; give at least one panel with one curve.')
  if max_radius is None:
    largest = [float(np.max(np.asarray(r), initial=0.0))
               for curves in panels.values() for r, _ in curves.values()]
    max_radius = 1.05 * max(largest, default=0.0) or 1.0
  fig = Figure(figsize=(panel_width * len(panels), 3.6), layout='constrained')
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (panel_title, curves) in zip(axes, panels.items()):
    for label, (radius, correct) in curves.items():
      grid, accuracy = certified_accuracy_curve(radius, correct, max_radius=max_radius)
      ax.plot(grid, accuracy, label=label)
    ax.set_xlim(0.0, max_radius)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel('radius (L2)')
    ax.set_ylabel('certified accuracy')
    ax.grid(alpha=0.3)
    if panel_title:
      ax.set_title(panel_title)
    if curves:
      ax.legend(fontsize='small')
  if title:
    fig.suptitle(_wrapped(title))
  _save(fig, path)
  return fig


def plot_certified_accuracy(curves: Mapping[str, Curve], path: str | None = None, *,
                            max_radius: float | None = None,
                            title: str | None = None) -> Figure:
  """Certified accuracy against radius, several labelled curves on one plot.

  Args:
    curves: ``{label: (radius [m], correct [m])}`` per-point radii and correctness.
    path: PNG to write; None to only return the figure.
    max_radius: right end of the x axis (default: fitted to the data).
    title: plot title.

  Example::

    a = metrics.rows_to_arrays(metrics.read_certification_tsv('clean/certify.tsv'))
    b = metrics.rows_to_arrays(metrics.read_certification_tsv('pacd/certify.tsv'))
    plot_certified_accuracy({'clean': (a['radius'], a['correct']),
                             'PACD': (b['radius'], b['correct'])}, 'curves.png')
  """
  return plot_certified_accuracy_panels({title or '': curves}, path, max_radius=max_radius)


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
  image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  if image.ndim == 3 and image.shape[-1] == 1:
    return image[..., 0], 'gray'
  return image, None


def plot_image_grid(rows: Mapping[str, Any], path: str | None = None, *,
                    max_columns: int = 8, column_titles: Sequence[str] | None = None,
                    title: str | None = None, cell_size: float = 1.2) -> Figure:
  """A grid of images: one labelled row per entry, images in [0, 1] (clipped).

  Args:
    rows: ``{row label: images [N, H, W, C]}`` (C = 1 shown in grey, C = 3 in colour).
    path: PNG to write; None to only return the figure.
    max_columns: at most this many images per row.
    column_titles: optional titles above the columns.
    title: figure title.
    cell_size: inches per image.
  """
  if not rows:
    raise ValueError('rows is empty; give at least one row of images.')
  arrays = {label: np.asarray(images) for label, images in rows.items()}
  for label, images in arrays.items():
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f'rows[{label!r}] has shape {images.shape}; expected [N, H, W, C] '
                       'with C in (1, 3).')
  columns = min(max_columns, max(len(images) for images in arrays.values()))
  columns = max(columns, 1)
  fig = Figure(figsize=(cell_size * columns + 1.0, cell_size * len(arrays) + 0.4),
               layout='constrained')
  axes = fig.subplots(len(arrays), columns, squeeze=False)
  for r, (label, images) in enumerate(arrays.items()):
    for c in range(columns):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if c < len(images):
        shown, cmap = _display(images[c])
        ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation='nearest')
      if c == 0:
        ax.set_ylabel(label, fontsize='small')
      if r == 0 and column_titles is not None and c < len(column_titles):
        ax.set_title(column_titles[c], fontsize='small')
  if title:
    fig.suptitle(_wrapped(title))
  _save(fig, path)
  return fig


def plot_poison_examples(clean: Any, poisoned: Any, path: str | None = None, *,
                         num_images: int = 8, amplification: float | None = None,
                         title: str | None = None) -> Figure:
  """Clean images, their poisoned versions and the amplified perturbation.

  The third row shows ``0.5 + amplification * (poisoned - clean)`` (grey is no change);
  ``amplification`` defaults to ``0.5 / max |poisoned - clean|`` so the largest change
  reaches black or white.

  Args:
    clean, poisoned: ``[N, H, W, C]`` images in [0, 1], the same shape.
    path: PNG to write; None to only return the figure.
    num_images: how many of the N to show (the first ones).
    amplification: perturbation gain for display.
    title: figure title.
  """
  clean = np.asarray(clean, np.float32)[:num_images]
  poisoned = np.asarray(poisoned, np.float32)[:num_images]
  if clean.shape != poisoned.shape:
    raise ValueError(f'clean has shape {clean.shape} but poisoned has {poisoned.shape}; '
                     'they must match.')
  delta = poisoned - clean
  largest = float(np.abs(delta).max(initial=0.0))
  if amplification is None:
    amplification = 0.5 / largest if largest > 0 else 1.0
  rows = {'clean': clean, 'poisoned': poisoned,
          f'perturbation x{amplification:.3g}': 0.5 + amplification * delta}
  full_title = f'max |delta| = {largest:.3g}' if title is None else title
  return plot_image_grid(rows, path, max_columns=num_images, title=full_title)


def plot_acr_drop(aggregates: Sequence[Mapping[str, Any]], path: str | None = None, *,
                  label: Callable[[Mapping[str, Any]], str] | None = None,
                  title: str | None = None) -> Figure:
  """Bar chart of the relative target-class ACR drop per poisoned cell, with its interval.

  Args:
    aggregates: ``rsp.metrics.aggregate_rows`` output (keys ``poison``, ``poison_set``,
      ``train_method``, ``arch``, ``acr_drop_relative_mean`` and ``_ci``, the
      confidence interval over seeds, None for one seed: no error bar); clean cells
      (``poison == 'none'``) are left out.
    path: PNG to write; None to only return the figure.
    label: legend entry of a bar's cell (default: its ``poison_set``); bars of one
      poison set share a colour.
    title: figure title.

  Returns:
    A ``matplotlib.figure.Figure`` (Agg canvas; no pyplot state).
  """
  bars = [a for a in aggregates if a['poison'] != 'none']
  if not bars:
    raise ValueError('aggregates holds no poisoned cell; nothing to plot.')
  label = label or (lambda a: a['poison_set'])
  kinds = list(dict.fromkeys(a['poison_set'] for a in bars))
  colors = {k: f'C{i % 10}' for i, k in enumerate(kinds)}
  fig = Figure(figsize=(max(4.5, 0.8 * len(bars) + 2.0), 4.2), layout='constrained')
  ax = fig.subplots()
  x = np.arange(len(bars))
  seen = set()
  for i, a in enumerate(bars):
    name = label(a)
    mean = a['acr_drop_relative_mean']
    mean = float('nan') if mean is None else mean  # No clean ACR to compare with.
    ci = a.get('acr_drop_relative_ci')
    yerr = (None if ci is None or not np.isfinite(mean) else
            [[100 * (mean - ci[0])], [100 * (ci[1] - mean)]])
    ax.bar(x[i], 100 * mean, yerr=yerr, capsize=3, color=colors[a['poison_set']],
           label=None if name in seen else name)
    seen.add(name)
  ax.axhline(0.0, color='black', linewidth=0.8)
  ax.axhline(30.0, color='gray', linestyle='--', linewidth=0.8, label='30% (paper)')
  ax.set_xticks(x, [f'{a["train_method"]}\n{a["arch"]}' for a in bars], fontsize='small')
  ax.set_ylabel('target-class ACR drop (%)')
  ax.grid(axis='y', alpha=0.3)
  ax.legend(fontsize='small')
  if title:
    ax.set_title(_wrapped(title))
  _save(fig, path)
  return fig


def plot_sweep(series: Sequence[Mapping[str, Any]], path: str | None = None, *,
               xlabel: str, ylabel: str = 'target-class ACR drop (%)',
               categorical: bool = False, log_x: bool = False,
               title: str | None = None) -> Figure:
  """A relative ACR drop against a sweep axis, with its confidence band, per curve.

  Args:
    series: curves ``{'label', 'values' [k], 'mean' [k], 'ci' [k] ([low, high] or None:
      one seed, no band)}`` (``rsp.metrics.sweep_series`` with a label), drops as
      fractions (drawn in %); a None or NaN mean leaves a gap.
    path: PNG to write; None to only return the figure.
    xlabel: the axis.
    ylabel: the quantity.
    categorical: the values are categories (target classes): evenly spaced, each
      curve's points side by side with error bars instead of lines and bands.
    log_x: a logarithmic value axis (eps doubling from value to value).
    title: plot title.

  Returns:
    A ``matplotlib.figure.Figure`` (Agg canvas; no pyplot state).
  """
  if not series:
    raise ValueError('series is empty; give at least one curve.')
  as_float = lambda v: float('nan') if v is None else 100.0 * float(v)
  fig = Figure(figsize=(6.0, 4.2), layout='constrained')
  ax = fig.subplots()
  categories = sorted({v for s in series for v in s['values']})
  width = 0.8 / len(series)
  for i, s in enumerate(series):
    mean = np.asarray([as_float(m) for m in s['mean']])
    low = np.asarray([as_float(c[0]) if c else np.nan for c in s['ci']])
    high = np.asarray([as_float(c[1]) if c else np.nan for c in s['ci']])
    color = f'C{i % 10}'
    if categorical:
      x = np.asarray([categories.index(v) for v in s['values']]) + (i + 0.5) * width - 0.4
      yerr = np.vstack([np.where(np.isfinite(low), mean - low, 0.0),
                        np.where(np.isfinite(high), high - mean, 0.0)])
      ax.errorbar(x, mean, yerr=yerr, fmt='o', capsize=4, color=color, label=s['label'])
    else:
      x = np.asarray(s['values'], np.float64)
      ax.plot(x, mean, marker='o', color=color, label=s['label'])
      if np.any(np.isfinite(low)):
        ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
  if categorical:
    ax.set_xticks(np.arange(len(categories)), [f'{v:g}' for v in categories])
  elif log_x:
    ax.set_xscale('log', base=2)
    ax.set_xticks(categories, [f'{v:g}' for v in categories])
  ax.axhline(0.0, color='black', linewidth=0.8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  if title:
    ax.set_title(_wrapped(title), fontsize='medium')
  _save(fig, path)
  return fig


def plot_acr_by_defense(aggregates: Sequence[Mapping[str, Any]], path: str | None = None,
                        *, label: Callable[[Mapping[str, Any]], str] | None = None,
                        title: str | None = None) -> Figure:
  """Grouped bars of the target-class ACR: one group per defense (and victim), one bar
  per training set (clean beside poisoned), with the interval over seeds.

  Args:
    aggregates: ``rsp.metrics.aggregate_rows`` output (keys ``defense``, ``poison_set``,
      ``train_method``, ``arch``, ``acr_mean``, ``acr_ci``: None for one seed, no error
      bar); entries without ``defense`` are undefended ('none').
    path: PNG to write; None to only return the figure.
    label: legend entry of a training set's bars (default: its ``poison_set``).
    title: figure title.

  Returns:
    A ``matplotlib.figure.Figure`` (Agg canvas; no pyplot state).
  """
  if not aggregates:
    raise ValueError('aggregates is empty; nothing to plot.')
  label = label or (lambda a: a['poison_set'])
  groups = list(dict.fromkeys((a.get('defense', 'none'), a['train_method'], a['arch'])
                              for a in aggregates))
  sets = list(dict.fromkeys(a['poison_set'] for a in aggregates))
  several_victims = len({g[1:] for g in groups}) > 1
  width = 0.8 / len(sets)
  fig = Figure(figsize=(max(4.5, 0.35 * len(groups) * len(sets) + 2.5), 4.2),
               layout='constrained')
  ax = fig.subplots()
  seen = set()
  for a in aggregates:
    g = groups.index((a.get('defense', 'none'), a['train_method'], a['arch']))
    j = sets.index(a['poison_set'])
    mean = a['acr_mean']
    mean = float('nan') if mean is None else mean
    ci = a.get('acr_ci')
    yerr = (None if ci is None or not np.isfinite(mean) else
            [[mean - ci[0]], [ci[1] - mean]])
    name = label(a)
    ax.bar(g - 0.4 + width * (j + 0.5), mean, width=width, yerr=yerr, capsize=2,
           color=f'C{j % 10}', label=None if name in seen else name)
    seen.add(name)
  ax.set_xticks(np.arange(len(groups)),
                [f'{d}\n{m}/{arch}' if several_victims else d for d, m, arch in groups],
                fontsize='small', rotation=30 if len(groups) > 6 else 0)
  ax.set_ylabel('target-class ACR')
  ax.grid(axis='y', alpha=0.3)
  ax.legend(fontsize='small')
  if title:
    ax.set_title(_wrapped(title))
  _save(fig, path)
  return fig
