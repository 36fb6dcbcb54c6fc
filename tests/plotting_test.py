"""Tests of rsp.plotting: figures are written as PNGs (atomically) without touching pyplot.

Deterministic (fixed seeds): no test can fail by chance."""

import os

import matplotlib
import numpy as np
import pytest

from rsp import plotting

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _is_png(path):
  with open(path, 'rb') as f:
    return f.read(8) == PNG_MAGIC


def test_certified_accuracy_curves(tmp_path):
  rng = np.random.default_rng(0)
  curves = {'clean': (rng.random(50) * 2, rng.random(50) > 0.2),
            'poisoned': (rng.random(50), rng.random(50) > 0.4)}
  path = str(tmp_path / 'figs' / 'curves.png')
  backend = matplotlib.get_backend()
  fig = plotting.plot_certified_accuracy(curves, path, title='sigma 0.5')
  assert _is_png(path)
  assert matplotlib.get_backend() == backend
  ax = fig.axes[0]
  assert [line.get_label() for line in ax.get_lines()] == ['clean', 'poisoned']
  accuracy = ax.get_lines()[0].get_ydata()
  assert accuracy[0] <= 1 and np.all(np.diff(accuracy) <= 0)  # Non-increasing in r.


def test_certified_accuracy_panels(tmp_path):
  curve = (np.array([0.0, 0.5, 1.0]), np.array([1, 1, 0]))
  path = str(tmp_path / 'panels.png')
  fig = plotting.plot_certified_accuracy_panels(
      {'gaussian': {'clean': curve}, 'macer': {'clean': curve, 'pacd': curve}}, path)
  assert _is_png(path) and len(fig.axes) == 2
  with pytest.raises(ValueError, match='panels'):
    plotting.plot_certified_accuracy_panels({}, None)


def test_certified_accuracy_curve_values():
  grid, accuracy = plotting.certified_accuracy_curve([0.0, 1.0], [1, 1], max_radius=2.0,
                                                     num_points=5)
  np.testing.assert_allclose(grid, [0, 0.5, 1, 1.5, 2])
  np.testing.assert_allclose(accuracy, [1, 0.5, 0.5, 0, 0])


def test_image_grid_and_poison_examples(tmp_path):
  rng = np.random.default_rng(1)
  clean = rng.random((3, 28, 28, 1)).astype(np.float32)
  poisoned = np.clip(clean + rng.uniform(-0.1, 0.1, clean.shape), 0, 1)
  path = str(tmp_path / 'poisons.png')
  fig = plotting.plot_poison_examples(clean, poisoned, path)
  assert _is_png(path) and len(fig.axes) == 9
  colour = rng.random((2, 32, 32, 3))
  path = str(tmp_path / 'grid.png')
  plotting.plot_image_grid({'a': colour, 'b': colour[:1]}, path, column_titles=['x', 'y'])
  assert _is_png(path)
  assert sorted(os.listdir(tmp_path)) == ['grid.png', 'poisons.png']
  with pytest.raises(ValueError, match='shape'):
    plotting.plot_image_grid({'a': colour[0]})
  with pytest.raises(ValueError, match='match'):
    plotting.plot_poison_examples(clean, poisoned[:2])


def test_acr_drop_bars_with_their_intervals(tmp_path):
  aggregates = [
      {'poison': 'none', 'poison_set': 'none', 'train_method': 'gaussian', 'arch': 'lenet',
       'acr_drop_relative_mean': 0.0, 'acr_drop_relative_ci': None},
      {'poison': 'pacd', 'poison_set': 'pacd_gaussian', 'train_method': 'gaussian',
       'arch': 'lenet', 'acr_drop_relative_mean': 0.325,
       'acr_drop_relative_ci': [0.25, 0.4]},
      {'poison': 'random', 'poison_set': 'random', 'train_method': 'gaussian',
       'arch': 'lenet', 'acr_drop_relative_mean': None, 'acr_drop_relative_ci': None}]
  path = str(tmp_path / 'drop.png')
  figure = plotting.plot_acr_drop(aggregates, path)
  assert _is_png(path) and os.listdir(tmp_path) == ['drop.png']
  bars = figure.axes[0].patches
  assert len(bars) == 2 and bars[0].get_height() == pytest.approx(32.5)
  # One error bar (the interval of the PACD cell): its segment spans 25% to 40%.
  segments = [c for c in figure.axes[0].collections if len(c.get_segments())]
  assert len(segments) == 1
  np.testing.assert_allclose(segments[0].get_segments()[0][:, 1], [25.0, 40.0])
  with pytest.raises(ValueError, match='no poisoned cell'):
    plotting.plot_acr_drop(aggregates[:1])


def test_acr_bars_per_defense(tmp_path):
  aggregates = [
      {'defense': d, 'poison_set': p, 'train_method': 'gaussian', 'arch': 'lenet',
       'acr_mean': acr, 'acr_ci': ci}
      for d, p, acr, ci in (('none', 'none', 1.3, [1.2, 1.4]),
                            ('none', 'pacd', 0.5, None), ('knn', 'none', 1.1, None),
                            ('knn', 'pacd', None, None))]
  path = str(tmp_path / 'defenses.png')
  figure = plotting.plot_acr_by_defense(aggregates, path,
                                        label=lambda a: a['poison_set'].upper())
  assert _is_png(path)
  ax = figure.axes[0]
  heights = [b.get_height() for b in ax.patches]
  assert heights[:3] == pytest.approx([1.3, 0.5, 1.1]) and np.isnan(heights[3])
  assert [t.get_text() for t in ax.get_xticklabels()] == ['none', 'knn']
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ['NONE', 'PACD']
  # Clean beside poisoned: the two bars of a defense sit either side of its tick.
  centres = [b.get_x() + b.get_width() / 2 for b in ax.patches]
  assert centres == pytest.approx([-0.2, 0.2, 0.8, 1.2])
  segments = [c for c in ax.collections if len(c.get_segments())]
  assert len(segments) == 1  # The one interval.
  with pytest.raises(ValueError, match='empty'):
    plotting.plot_acr_by_defense([])
