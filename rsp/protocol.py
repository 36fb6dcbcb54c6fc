r"""The evaluation protocol: poison, train victims from scratch, certify, report.

``run_protocol(config, workdir)`` (``experiments/run.py``), for a protocol config
(``rsp/configs/protocol*.py``):

1. checks every setting, nested configs included, and the workdir's record before any
   work (``prepare``: ``validate_config``, ``check_workdir``);
2. makes the poison sets (``make_poison_set`` per ``poison_keys``): PACD (Mehra et al.
   2021) crafted against each method of ``config.crafted_against`` (or
   ``config.poison_file``), and the baselines of ``rsp.baselines`` on the same images
   within the same eps, each on ``config.poison_fraction`` of the target class;
3. trains a victim from scratch for every cell of the grid training method x
   architecture x training set x seed (``resolve_cells``, ``run_cell``) and certifies
   it (Cohen et al. 2019) on the same seeded test points with one key for all victims:
   point ``idx`` sees the same noise in every cell, so that paired differences between
   victims carry no Monte Carlo noise of the certification;
4. computes drops, paired comparisons and intervals (``rsp.metrics``), writes
   ``results.json`` and ``results.md``, then the figures (``rsp.report``).

Defenses (``config.defenses``, ``rsp.defense_cells``): every defense but 'none' adds a
cell per victim of the grid (detectors and training-time defenses, certified like the
others) or per training set and seed ('dpa', Deep Partition Aggregation, whose rows go
to ``results['dpa']``).

The grid (cells, poison sets, sweeps, checks) is resolved by ``rsp.cells``; many workers
sharing one workdir, reports of a partial workdir and a launcher are in ``rsp.fanout``.

Workdir layout (the workdir is the record; every stage resumes)::

    WORKDIR/config.json                 the protocol config
    WORKDIR/poisons/<set>.json          what a poison set is made from (checked on restart)
    WORKDIR/poisons/pacd_<method>[-<departures>]/  PACD's workdir (poisons.npz, ...)
    WORKDIR/poisons/<baseline>[-<departures>].npz  random baselines
    WORKDIR/cells/<cell>/spec.json      what a cell is made from (checked on restart)
    WORKDIR/cells/<cell>/train/         the victim's training run
    WORKDIR/cells/<cell>/certify.tsv    Cohen's per-point log (certify_all_classes.tsv)
    WORKDIR/cells/<cell>/result.json    the cell's row, written when the cell is done
    WORKDIR/compute_log/<item>@<host>-<pid>-<token>.json   one file per computation
    WORKDIR/claims/, grid_logs/         workers' claims (rsp.grid) and submitit logs
    WORKDIR/results.json, results.md, figures/*.png

A restarted run redoes nothing finished, resumes what was interrupted and ends with the
same rows as an uninterrupted run; a workdir made with other settings is refused.
"""


from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import shutil
import socket
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from rsp import attack as attack_lib
from rsp import baselines
from rsp import cells as cells_lib
from rsp import certification
from rsp import data as data_lib
from rsp import defense_cells
from rsp import metrics
from rsp import report
from rsp import train as train_lib
from rsp import workdir as workdir_lib

# The protocol's entry points for a config (resolved in rsp.cells).
validate_config = cells_lib.validate_config
resolve_cells = cells_lib.resolve_cells
# Where workers record each computation: one file per computation (``compute_records``).
COMPUTE_LOG = 'compute_log'


# ------------------------------------------------------------------------------------
# Poison sets and training sets.
@dataclasses.dataclass
class PoisonSet:
  """Perturbed target-class training images replacing the clean ones."""
  name: str                 # PoisonKey.name: 'pacd_<method>' or a random baseline's.
  poison: str               # 'pacd' or a random baseline's name.
  crafted_against: str      # PACD's training method ('' for baselines).
  indices: np.ndarray       # [P] indices into the training split.
  poisons: np.ndarray       # [P, H, W, C]
  clean_images: np.ndarray  # [P, H, W, C]
  metadata: dict[str, Any]
  path: str
  setting: dict[str, Any] = dataclasses.field(default_factory=dict)  # Departures.


def poison_path(workdir: str, key: cells_lib.PoisonKey) -> str:
  """The poison file of ``key`` in the workdir (written last: its presence means done)."""
  if key.poison == 'pacd':
    return os.path.join(workdir, 'poisons', key.name, 'poisons.npz')
  return os.path.join(workdir, 'poisons', f'{key.name}.npz')


def _load_poison_set(name: str, poison: str, crafted_against: str, path: str,
                     train: Mapping[str, np.ndarray],
                     setting: Mapping[str, Any] | None = None) -> PoisonSet:
  f = data_lib.load_poisons(path, train=train)
  return PoisonSet(name=name, poison=poison, crafted_against=crafted_against,
                   indices=f['indices'], poisons=f['poisons'],
                   clean_images=f['clean_images'], metadata=f['metadata'], path=path,
                   setting=dict(setting or {}))


def make_poison_set(config: ml_collections.ConfigDict, key: cells_lib.PoisonKey,
                    splits: Mapping[str, Mapping[str, np.ndarray]], workdir: str) -> None:
  """Makes poison set ``key`` in the workdir unless its file is there: PACD (resumable,
  ``rsp.attack.pacd``) or a random baseline. Every budget and class of one baseline is
  drawn from the same key (the noise of eps 0.05 is that of eps 0.1, halved)."""
  workdir_lib.write_json(os.path.join(workdir, 'poisons', f'{key.name}.json'),
                         cells_lib.poison_spec(config, key))
  path = poison_path(workdir, key)
  if os.path.isfile(path):
    return
  if key.poison == 'pacd':
    logging.info('Protocol: PACD against %s into %s.', key.crafted_against,
                 os.path.dirname(path))
    attack_lib.pacd(cells_lib.attack_config(config, key.crafted_against, key), splits,
                    os.path.dirname(path))
    return
  setting = cells_lib.poison_setting(config, key)
  base_key = jax.random.fold_in(jax.random.key(config.seed),
                                cells_lib.POISON_KINDS.index(key.poison))
  baselines.save_random_baseline(
      path, base_key, splits['train'], name=key.poison,
      target_class=setting['target_class'], eps=setting['eps'],
      poison_fraction=setting['poison_fraction'],
      subset_seed=int(config.get('poison_subset_seed', 0)),
      metadata={'dataset': config.dataset, 'seed': config.seed,
                'data_seed': config.data_seed})


def load_poison_sets(config: ml_collections.ConfigDict,
                     splits: Mapping[str, Mapping[str, np.ndarray]], workdir: str,
                     keys: Sequence[cells_lib.PoisonKey], *, missing_ok: bool = False
                     ) -> dict[str, PoisonSet]:
  """The poison sets ``keys`` from the workdir (and PACD's ``config.poison_file``).

  Args:
    missing_ok: leave out the sets not made yet (for a report) instead of raising.

  Returns:
    ``{name: PoisonSet}``.
  """
  train = splits['train']
  out = {}
  if 'pacd' in cells_lib.field_names(config, 'poison_kinds') and config.get('poison_file'):
    method = cells_lib.poison_file_method(config)
    out[f'pacd_{method}'] = _load_poison_set(f'pacd_{method}', 'pacd', method,
                                             config.poison_file, train)
  for key in keys:
    path = poison_path(workdir, key)
    if missing_ok and not os.path.isfile(path):
      continue
    setting = {a: getattr(key, a) for a in cells_lib.POISON_AXES if getattr(key, a) is not None}
    out[key.name] = _load_poison_set(key.name, key.poison, key.crafted_against, path,
                                     train, setting)
  return out


def make_poison_sets(config: ml_collections.ConfigDict,
                     splits: Mapping[str, Mapping[str, np.ndarray]], workdir: str
                     ) -> dict[str, PoisonSet]:
  """PACD poisons per training method and budget and the random baselines; loaded if
  already made.

  Returns:
    ``{name: PoisonSet}`` with names ``PoisonKey.name``: ``pacd_<method>``, the
    baselines' names, with their departures from the base budget.
  """
  keys = cells_lib.poison_keys(config, cells_lib.resolve_cells(config))
  for key in keys:
    make_poison_set(config, key, splits, workdir)
  return load_poison_sets(config, splits, workdir, keys)


def training_set(cell: cells_lib.Cell, train: Mapping[str, np.ndarray],
                 poison_sets: Mapping[str, PoisonSet], victim: ml_collections.ConfigDict
                 ) -> dict[str, np.ndarray]:
  """The victim's training split for ``cell``: clean, poisoned or without the target
  class, then ``victim.train_subset`` points of it if > 0 (as ``rsp.data.load_splits``
  does: drawn by the data seed, after poisoning)."""
  if cell.poison == 'none':
    out = dict(train)
  elif cell.poison == 'no_target':
    out = baselines.without_target_class(train, victim.target_class)
  else:
    p = poison_sets[cell.poison_set]
    out = data_lib.apply_poison(train, p.indices, p.poisons)
  if victim.get('train_subset', 0):
    idx = data_lib.seeded_subset_indices(len(out['label']), victim.train_subset,
                                         victim.get('data_seed', 0))
    out = data_lib.subset(out, idx)
  return out


# ------------------------------------------------------------------------------------
# One cell.


def run_cell(config: ml_collections.ConfigDict, cell: cells_lib.Cell, *,
             splits: Mapping[str, Mapping[str, np.ndarray]],
             poison_sets: Mapping[str, PoisonSet], target_indices: np.ndarray,
             all_indices: np.ndarray | None, workdir: str) -> dict[str, Any]:
  """Trains and certifies one victim, resumably; returns its row of ``results.json``.

  ``target_indices`` and ``all_indices`` are the cell's certified points
  (``certification_points`` of its target class).

  The row (also ``cells/<cell>/result.json``, written last) holds the cell's fields
  (``train_method``, ``arch``, ``poison``, ``crafted_against``, ``seed``, ``cell``,
  ``poison_set``), its concrete point (``cell_setting``: ``target_class``,
  ``victim_sigma``, ``eps``, ``poison_fraction``) and ``sweep_axis`` (None on the base
  point), ``sigma`` (of the certification), ``clean_accuracy`` (the base classifier, all
  classes),
  ``num_train_examples``, the certification summary (``rsp.metrics.victim_summary``:
  ``acr``, ``certified_accuracy``, ``target_accuracy``, ...), ``train_seconds``,
  ``certify_seconds`` and ``time``; a detector's row also ``detection``
  (``rsp.defense_cells``). A 'dpa' cell returns ``rsp.defense_cells.run_dpa_cell``'s
  row instead.
  """
  cell_dir = os.path.join(workdir, 'cells', cell.name)
  result_path = os.path.join(cell_dir, 'result.json')
  if os.path.isfile(result_path):
    return read_row(config, workdir, cell)
  workdir_lib.write_json(os.path.join(cell_dir, 'spec.json'),
                         cells_lib.cell_spec(config, cell, target_indices, all_indices))
  victim = cells_lib.victim_config(config, cell)
  target_class = cells_lib.cell_class(config, cell)
  if cell.defense in (defense_cells.DPA, *defense_cells.DETECTORS):
    masked = training_set(cell, defense_cells.with_masks(
        splits['train'], poison_sets, cell.poison_set, target_class), poison_sets, victim)
  if cell.defense == defense_cells.DPA:
    return defense_cells.run_dpa_cell(
        config,
        dict(dataclasses.asdict(cell), cell=cell.name, poison_set=cell.poison_set),
        train_set=masked, test=splits['test'], target_indices=target_indices,
        victim=victim, seed=cell.seed, cell_dir=cell_dir,
        num_classes=data_lib.info(config.dataset)['num_classes'])
  train_dir = os.path.join(cell_dir, 'train')
  detection = None
  if cell.defense in defense_cells.DETECTORS:
    train_set, detection = defense_cells.filter_training_set(
        config, cell.defense, masked, seed=cell.seed, target_class=target_class,
        feature_dir=os.path.join(workdir, 'cells',
                                 dataclasses.replace(cell, defense='none').name, 'train'),
        path=os.path.join(cell_dir, 'detection.json'))
    victim = defense_cells.retraining_config(victim)
  if os.path.isfile(os.path.join(train_dir, 'summary.json')):
    trained = train_lib.load_trained(train_dir)
  else:
    if detection is None:
      warm_start(config, workdir, cell, train_dir)
      train_set = training_set(cell, splits['train'], poison_sets, victim)
    trained = train_lib.train(victim, {'train': train_set, 'test': splits['test']},
                              train_dir)
  sigma = cells_lib.certification_sigma(config, victim)
  c = config.certify
  test = splits['test']

  def certify(indices, tsv_name):
    return certification.certify_dataset(
        jax.random.key(c.seed), trained.apply_fn, trained.variables, test['image'],
        test['label'], indices=indices, tsv_path=os.path.join(cell_dir, tsv_name),
        num_classes=trained.num_classes, sigma=sigma, n0=c.n0, n=c.n, alpha=c.alpha,
        batch_size=c.batch_size)

  rows = certify(target_indices, 'certify.tsv')
  rows_all = None if all_indices is None else certify(all_indices,
                                                      'certify_all_classes.tsv')
  per_class = trained.summary['per_class_test_accuracy']
  train_seconds = float(trained.summary.get('train_seconds', 0.0))
  certify_seconds = float(sum(r.time for r in rows + (rows_all or [])))
  setting = cells_lib.cell_setting(config, cell)
  row = dict(
      dataclasses.asdict(cell), cell=cell.name, poison_set=cell.poison_set, sigma=sigma,
      **setting, sweep_axis=cell.sweep_axis,
      clean_accuracy=float(trained.summary['test_accuracy']),
      num_train_examples=int(trained.summary.get('num_train_examples', 0)),
      **metrics.victim_summary(
          rows, rows_all, per_class_accuracy=per_class,
          target_class=setting['target_class'],
          class_counts=np.bincount(test['label'], minlength=len(per_class)),
          num_classes=trained.num_classes),
      **defense_cells.detection_row(detection),
      train_seconds=train_seconds, certify_seconds=certify_seconds,
      time=train_seconds + certify_seconds)
  workdir_lib.write_json(result_path, row)
  return read_row(config, workdir, cell)  # As a resumed run sees it (NaN -> None).


def read_row(config: ml_collections.ConfigDict, workdir: str,
             cell: cells_lib.Cell) -> dict[str, Any]:
  """A finished cell's row (``cells/<cell>/result.json``), with any setting field that
  rows written by an earlier version lack (``victim_epochs``) filled in from the config."""
  row = workdir_lib.read_json(os.path.join(workdir, 'cells', cell.name, 'result.json'))
  for field, value in cells_lib.cell_setting(config, cell).items():
    row.setdefault(field, value)
  return row


def warm_start(config: ml_collections.ConfigDict, workdir: str, cell: cells_lib.Cell,
               train_dir: str) -> str | None:
  """Starts a victim from another finished cell's training run; returns that cell's name.

  Two kinds of cell share training with another one, at no change to their numbers:

  * a clean victim of another target class (``cell.poison == 'none'``,
    ``cell.target_class`` set): its training set, and so its training, does not depend
    on the target class (only its certified points do), so it takes the training run of
    the same victim at the base point's class, with the same number of epochs or fewer;
  * a cell of the ``victim_epochs`` sweep (``cell.victim_epochs`` set) takes the run of
    the longest finished cell that differs from it in the number of epochs alone, and
    is shorter (the base point's victim or another value of the axis).

  The run is copied without its ``summary.json`` and ``rsp.train`` then resumes it up to
  the cell's own epochs (for a full-length copy it only evaluates and writes the
  summary, with the cell's target class). Training depends on the epoch and step numbers
  only (constant learning rate, batches and noise drawn by ``fold_in`` of them), so the
  result is the victim trained from scratch, for the cost of the missing epochs; its
  ``train_seconds`` are those of all its epochs. The copy is made beside ``train_dir``
  and renamed into place, so a killed copy never leaves a partial run where
  ``rsp.train`` would resume it. Cells with a defense never share. Returns None (and
  copies nothing) where no donor has finished, e.g. while another worker still trains
  it: the cell then trains from scratch.
  """
  if cell.defense != 'none' or os.path.exists(train_dir):
    return None
  base = cells_lib.own_epochs(config, cell.train_method)
  own = cell.victim_epochs if cell.victim_epochs is not None else base
  shorter = sorted({e for e in (base, *cells_lib.sweep_values(config, 'victim_epochs'))
                    if e is not None and own is not None and e < own}, reverse=True)
  donors = []
  if cell.poison == 'none' and cell.target_class is not None:
    donors += [dataclasses.replace(cell, target_class=None,
                                   victim_epochs=None if e == base else e)
               for e in (own, *shorter)]
  if cell.victim_epochs is not None:
    donors += [dataclasses.replace(cell, victim_epochs=None if e == base else e)
               for e in shorter]
  for donor in donors:
    source = os.path.join(workdir, 'cells', donor.name, 'train')
    if not os.path.isfile(os.path.join(source, 'summary.json')):
      continue
    partial = f'{train_dir}.copy-{os.getpid()}'
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns('summary.json'))
    os.replace(partial, train_dir)
    logging.info('Cell %s starts from the training run of %s.', cell.name, donor.name)
    return donor.name
  return None


def _certified_points(workdir: str, cell: str, indices: np.ndarray) -> dict[str, Any]:
  """The cell's certificates of the target-class points, as arrays in their order."""
  path = os.path.join(workdir, 'cells', cell, 'certify.tsv')
  points = metrics.rows_to_arrays(metrics.read_certification_tsv(path))
  if not np.array_equal(points['idx'], indices):  # Paired comparisons need the order.
    raise ValueError(f'{path} does not hold the certified points in their order.')
  return points


# ------------------------------------------------------------------------------------
# The protocol.


@dataclasses.dataclass
class Plan:
  """A protocol resolved and checked against its workdir (``prepare``): what every
  stage (a whole run, a worker, a report) starts from."""
  config: ml_collections.ConfigDict
  workdir: str
  splits: dict[str, dict[str, np.ndarray]]
  cells: list[cells_lib.Cell]
  poison_keys: list[cells_lib.PoisonKey]
  points: dict[int, tuple[np.ndarray, np.ndarray | None]]  # cells.certification_points

  def indices(self, cell: cells_lib.Cell) -> tuple[np.ndarray, np.ndarray | None]:
    return self.points[cells_lib.cell_class(self.config, cell)]

  def cell_done(self, cell: cells_lib.Cell) -> bool:
    return os.path.isfile(os.path.join(self.workdir, 'cells', cell.name, 'result.json'))

  def poison_done(self, key: cells_lib.PoisonKey) -> bool:
    return os.path.isfile(poison_path(self.workdir, key))


def poison_item(key: cells_lib.PoisonKey) -> str:
  """The work item (claim name) of a poison set: 'poisons-<name>'."""
  return f'poisons-{key.name}'


def prepare(config: ml_collections.ConfigDict, workdir: str, *,
            for_report: bool = False) -> Plan:
  """Checks everything, before any work, and resolves the grid.

  Validates the config (``validate_config``), loads the clean splits, checks that every
  poisoned fraction poisons at least one image, and refuses a workdir made with other
  settings (``check_workdir``); then, unless ``for_report``, creates the workdir and
  writes ``config.json``.

  Args:
    for_report: for ``report_protocol``: write nothing, and refuse a workdir that holds
      no protocol run.

  Raises:
    ValueError: a bad config, a fraction that poisons nothing, or a workdir made with
      other settings (``rsp.workdir.SettingsMismatchError``); nothing is written.
  """
  cells_lib.validate_config(config)
  if for_report and not os.path.isfile(os.path.join(workdir, 'config.json')):
    raise ValueError(f'workdir={workdir!r} holds no protocol run (no config.json); '
                     'start one with experiments/run.py first.')
  splits = data_lib.load_splits(ml_collections.ConfigDict(  # The clean, whole data.
      {'dataset': config.dataset, 'data_dir': config.get('data_dir', ''),
       'data_seed': config.data_seed}))
  cells = cells_lib.resolve_cells(config)
  keys = cells_lib.poison_keys(config, cells)
  for key in keys:  # A fraction of a small class may round to no image at all.
    setting = cells_lib.poison_setting(config, key)
    field = ('config.sweep.poison_fraction' if key.poison_fraction is not None
             else 'config.poison_fraction')
    data_lib.poison_indices(splits['train'], setting['target_class'],
                            setting['poison_fraction'],
                            int(config.get('poison_subset_seed', 0)), name=field)
  points = cells_lib.certification_points(config, splits['test'], cells)
  cells_lib.check_workdir(config, workdir, cells, points)
  if not for_report:
    workdir_lib.ensure_directory(workdir, name='workdir')
    workdir_lib.write_json(os.path.join(workdir, 'config.json'), config)
  return Plan(config=config, workdir=workdir, splits=splits, cells=cells,
              poison_keys=keys, points=points)


def record_computation(workdir: str, item: str, fn: Callable[[], Any]) -> Any:
  """Runs ``fn`` and records that this process computed ``item``: one file
  ``WORKDIR/compute_log/<item>@<host>-<pid>-<token>.json`` per computation (a file, not
  a shared log, so that no filesystem needs atomic appends)."""
  start = time.time()
  out = fn()
  record = {'item': item, 'host': socket.gethostname(), 'pid': os.getpid(),
            'start': start, 'seconds': time.time() - start,
            'slurm_job_id': os.environ.get('SLURM_JOB_ID')}
  workdir_lib.write_json(os.path.join(
      workdir, COMPUTE_LOG,
      f'{item}@{record["host"]}-{record["pid"]}-{secrets.token_hex(4)}.json'), record)
  return out


def compute_records(workdir: str) -> dict[str, list[dict[str, Any]]]:
  """Who computed what: ``{item: [record, ...]}`` from ``WORKDIR/compute_log`` (items
  are cell names and ``poison_item`` names; two records of one item mean it was
  computed twice)."""
  directory = os.path.join(workdir, COMPUTE_LOG)
  out: dict[str, list[dict[str, Any]]] = {}
  if not os.path.isdir(directory):
    return out
  for name in sorted(os.listdir(directory)):
    if name.endswith('.json') and not name.startswith('.'):
      record = workdir_lib.read_json(os.path.join(directory, name))
      out.setdefault(record['item'], []).append(record)
  return out


def compute_cell(plan: Plan, cell: cells_lib.Cell,
                  poison_sets: Mapping[str, PoisonSet]) -> dict[str, Any]:
  target_indices, all_indices = plan.indices(cell)
  return run_cell(plan.config, cell, splits=plan.splits, poison_sets=poison_sets,
                  target_indices=target_indices, all_indices=all_indices,
                  workdir=plan.workdir)


def write_results(plan: Plan, poison_sets: Mapping[str, PoisonSet],
             rows: Sequence[Mapping[str, Any]], t_start: float,
             missing: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
  """Computes drops, comparisons, aggregates and sweep curves of the finished ``rows``;
  writes results.json and results.md, then the figures."""
  config, workdir = plan.config, plan.workdir
  dpa_rows = [r for r in rows if r.get('defense') == defense_cells.DPA]
  rows = [r for r in rows if r.get('defense') != defense_cells.DPA]
  cells = {c.name: c for c in plan.cells}
  points = {r['cell']: _certified_points(workdir, r['cell'],
                                         plan.indices(cells[r['cell']])[0])
            for r in rows}
  rows = metrics.add_paired_comparisons(metrics.add_acr_drops(rows), {
      cell: metrics.effective_radius(p['radius'], p['correct'])
      for cell, p in points.items()})
  aggregates = metrics.aggregate_rows(rows)
  poisons = {name: {'poison': p.poison, 'crafted_against': p.crafted_against,
                    'setting': p.setting, 'path': p.path, 'metadata': p.metadata,
                    'seconds': float(p.metadata.get('attack_seconds', 0.0)),
                    'statistics': metrics.perturbation_statistics(p.clean_images,
                                                                  p.poisons)}
             for name, p in poison_sets.items()}
  axes = cells_lib.sweep_axes(config)
  base_indices = plan.points[int(config.target_class)][0]
  results = {
      'config': config.to_dict(), 'rows': rows, 'aggregates': aggregates,
      # Along the base point only: a sweep's other points would overwrite its cells.
      'transfer_matrix': metrics.transfer_matrix(
          [a for a in aggregates if a.get('sweep_axis') is None]),
      'sweeps': {axis: metrics.sweep_series(aggregates, axis) for axis in axes},
      'poisons': poisons,
      'dpa': dpa_rows,
      'certified_points': [int(i) for i in base_indices],
      'certified_points_by_class': {str(k): [int(i) for i in v[0]]
                                    for k, v in plan.points.items()},
      'missing': {k: list(v) for k, v in (missing or {}).items()},
      'machine': report.machine_info(),
      'total_seconds': (sum(p['seconds'] for p in poisons.values()) +
                        sum(r['time'] for r in rows + dpa_rows)),
      'figures': [],
  }
  # The results first: a figure that fails loses no number.
  results = report.write_results(workdir,
                                 dict(results, wall_seconds=time.time() - t_start))
  if config.figures:
    try:
      results['figures'] = report.make_figures(results, points, poison_sets, workdir)
    except Exception as e:  # pylint: disable=broad-except
      raise report.FigureError(
          f'{workdir}: results.json and results.md are written, but the figures '
          f'failed: {type(e).__name__}: {e}') from e
    results = report.write_results(workdir,
                                   dict(results, wall_seconds=time.time() - t_start))
  logging.info('Protocol %s: wrote %s.', config.name, os.path.join(workdir, 'results.md'))
  return results


def run_protocol(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole protocol in this process; writes and returns the
  results.

  Args:
    config: a protocol config (``rsp/configs/protocol*.py``).
    workdir: where everything goes (module docstring); the same workdir resumes.

  Returns:
    The content of ``results.json`` (described in ``rsp.report``).

  Raises:
    ValueError: a bad config, or a workdir made with other settings; raised before any
      work and before anything is written.
    rsp.report.FigureError: the figures failed; ``results.json`` and ``results.md`` are
      written and complete.
  """
  t_start = time.time()
  plan = prepare(config, workdir)
  logging.info('Protocol %s: %d poison sets, %d cells in %s.', config.name,
               len(plan.poison_keys), len(plan.cells), workdir)
  for key in plan.poison_keys:
    if not plan.poison_done(key):
      record_computation(workdir, poison_item(key), functools.partial(
          make_poison_set, config, key, plan.splits, workdir))
  poison_sets = load_poison_sets(config, plan.splits, workdir, plan.poison_keys)
  rows = []
  for i, cell in enumerate(plan.cells):
    compute = functools.partial(compute_cell, plan, cell, poison_sets)
    rows.append(compute() if plan.cell_done(cell) else
                record_computation(workdir, cell.name, compute))
    logging.info('Protocol cell %d/%d %s: ACR %s, clean accuracy %.4f.', i + 1,
                 len(plan.cells), cell.name, rows[-1].get('acr'),
                 rows[-1]['clean_accuracy'])
  return write_results(plan, poison_sets, rows, t_start)
