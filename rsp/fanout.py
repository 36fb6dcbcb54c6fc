r"""The protocol over many workers: shards, claims, a report of a partial workdir, a launcher.

Many workers may share one workdir (``run_worker``, on top of ``rsp.grid``'s claims):
each first takes part in making the poison sets, one claimed item each, and waits until
all exist; then it computes the cells (all of them, work stealing, or its shard
``i/N``), each under its claim, so that no item is computed twice and a dead worker's
item is taken over after the claim's lease. ``report_protocol`` aggregates the finished
cells without computing anything and names the missing ones; ``launch`` checks
everything once, starts K workers through ``rsp.grid.submit`` (submitit: local
processes or a SLURM job array), waits and reports; ``run_command`` is what
``experiments/run.py`` does with its flags. docs/cluster.md shows the commands.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from typing import Any

from absl import logging
import ml_collections

from rsp import cells as cells_lib
from rsp import checkpointing
from rsp import grid as grid_lib
from rsp import protocol
from rsp import validation


def run_worker(config: ml_collections.ConfigDict, workdir: str, *,
               shard: str | tuple[int, int] | None = None, lease_seconds: float = 600.0,
               poll_seconds: float | None = None) -> dict[str, list[str]]:
  """One of many workers on a shared workdir (``rsp.grid``); writes no results.

  Two claimed phases (``rsp.grid.run_claimed``; a claim's heartbeat keeps it, and a
  dead worker's item is taken over once ``lease_seconds`` have passed):

  1. the poison sets, shared out among all the workers, who then wait until every set
     exists (``wait_for_others``: the last worker standing makes what a dead one
     left), since any cell may need any set;
  2. the cells: all of them (work stealing), or shard i of N (``shard='i/N'``: cells i,
     i + N, ... of ``resolve_cells``' order), each under its claim, so that no cell is
     computed twice; the worker returns after one pass, leaving cells that other
     workers hold to them (a cell left by a dead worker is taken by the next worker
     started once its lease has passed; ``report_protocol`` lists it).

  Then ``report_protocol`` aggregates the finished cells.

  Args:
    config, workdir: the protocol; every worker must be given the same.
    shard: None, ``'i/N'`` or ``(i, N)``.
    lease_seconds: how long a claim lives without a heartbeat (every worker of a grid
      uses the same value): minutes on a network filesystem.
    poll_seconds: how often a worker waiting for others' poison sets looks again;
      default ``rsp.grid.run_claimed``'s (a quarter of the lease, at most 60 s).

  Returns:
    ``{'poison_sets': [...], 'cells': [...]}``: the names of what this worker computed.
  """
  if shard is not None:
    grid_lib.shard_items([], *(grid_lib.parse_shard(shard) if isinstance(shard, str)
                               else shard))  # Refuses a bad shard before any work.
  plan = protocol.prepare(config, workdir)
  keys = {protocol.poison_item(k): k for k in plan.poison_keys}
  made = grid_lib.run_claimed(
      workdir, list(keys),
      lambda item: protocol.record_computation(workdir, item, functools.partial(
          protocol.make_poison_set, config, keys[item], plan.splits, workdir)),
      is_done=lambda item: plan.poison_done(keys[item]), lease_seconds=lease_seconds,
      wait_for_others=True, poll_seconds=poll_seconds)
  poison_sets = protocol.load_poison_sets(config, plan.splits, workdir, plan.poison_keys)
  cells = {c.name: c for c in plan.cells}
  ran = grid_lib.run_claimed(
      workdir, list(cells),
      lambda name: protocol.record_computation(workdir, name, functools.partial(
          protocol.compute_cell, plan, cells[name], poison_sets)),
      is_done=lambda name: plan.cell_done(cells[name]), lease_seconds=lease_seconds,
      shard=shard, poll_seconds=poll_seconds)
  logging.info('Worker %s:%d computed %d poison sets and %d cells.',
               socket.gethostname(), os.getpid(), len(made), len(ran))
  return {'poison_sets': [keys[i].name for i in made], 'cells': ran}


def grid_status(config: ml_collections.ConfigDict, workdir: str, *,
                lease_seconds: float = 600.0) -> str:
  """``rsp.grid.report`` of the protocol's work items (``poison_item`` names, then the
  cells): counts of done, running, abandoned and to-do items, then one line per
  unfinished item with its claim's holder. Reads the workdir only (no data)."""
  cells = cells_lib.resolve_cells(config)
  done = {protocol.poison_item(k): functools.partial(os.path.isfile,
                                                   protocol.poison_path(workdir, k))
          for k in cells_lib.poison_keys(config, cells)}
  done.update({c.name: functools.partial(
      os.path.isfile, os.path.join(workdir, 'cells', c.name, 'result.json'))
               for c in cells})
  return grid_lib.report(workdir, list(done), is_done=lambda item: done[item](),
                         lease_seconds=lease_seconds)


def report_protocol(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Aggregates the finished cells of a workdir without computing anything.

  Writes ``results.json`` and ``results.md`` (and the figures) from the cells whose
  ``result.json`` exists and the poison sets that are made; ``results['missing']``
  names the poison sets and cells not finished (``results.md`` lists them first).

  Raises:
    ValueError: a bad config, a workdir without a protocol run, or one made with other
      settings; before anything is written.
  """
  t_start = time.time()
  plan = protocol.prepare(config, workdir, for_report=True)
  poison_sets = protocol.load_poison_sets(config, plan.splits, workdir, plan.poison_keys,
                                 missing_ok=True)
  rows = [protocol.read_row(config, workdir, c) for c in plan.cells if plan.cell_done(c)]
  missing = {'poison_sets': [k.name for k in plan.poison_keys if not plan.poison_done(k)],
             'cells': [c.name for c in plan.cells if not plan.cell_done(c)]}
  return protocol.write_results(plan, poison_sets, rows, t_start, missing=missing)


def _launched_worker(config: dict[str, Any], workdir: str, lease_seconds: float,
                     poll_seconds: float | None) -> dict[str, list[str]]:
  """What each launched worker runs (picklable by reference)."""
  checkpointing.quiet_orbax_logging()
  logging.set_verbosity(logging.INFO)
  return run_worker(ml_collections.ConfigDict(config), workdir,
                    lease_seconds=lease_seconds, poll_seconds=poll_seconds)


def launch(config: ml_collections.ConfigDict, workdir: str, *, workers: int,
           executor: str = 'local', lease_seconds: float = 600.0,
           poll_seconds: float | None = None, **submit_kwargs: Any) -> dict[str, Any]:
  """Launches ``workers`` work-stealing workers (``run_worker``) through
  ``rsp.grid.submit``, waits for them, then reports (``report_protocol``).

  The config and the workdir are checked once here, and ``config.json`` written,
  before any worker starts; each worker checks them again (cheaply) when it starts.
  The workers make the poison sets first (a claimed phase) and then the cells.

  Args:
    config, workdir: the protocol; on SLURM the workdir (and the code) must be on a
      filesystem every node sees.
    workers: how many workers, >= 1.
    executor: 'local' (processes on this machine) or 'slurm' (one job array).
    lease_seconds, poll_seconds: see ``run_worker``.
    **submit_kwargs: ``rsp.grid.submit``'s ``timeout_min``, ``gpus_per_worker``,
      ``cpus_per_worker``, ``mem_gb``, ``slurm_kwargs`` (``partition``, ...),
      ``local_gpus``; the worker logs go to ``WORKDIR/grid_logs``.

  Returns:
    ``report_protocol``'s results.

  Raises:
    ValueError: a bad argument, config or workdir, before any worker starts.
    rsp.grid.GridJobError: a worker failed (the others ran to their end).
  """
  validation.check_int('--workers', workers, 1)
  validation.check_choice('--executor', executor, grid_lib.EXECUTORS)
  protocol.prepare(config, workdir)
  jobs = grid_lib.submit(
      _launched_worker,
      [(config.to_dict(), workdir, lease_seconds, poll_seconds)] * workers,
      executor=executor, folder=os.path.join(workdir, 'grid_logs'),
      job_name=f'rsp-{config.name}', **submit_kwargs)
  grid_lib.wait(jobs)
  return report_protocol(config, workdir)


def run_command(config: ml_collections.ConfigDict, workdir: str, *,
                shard: str | None = None, report_only: bool = False, workers: int = 0,
                executor: str = 'local', lease_seconds: float = 600.0,
                **submit_kwargs: Any) -> str:
  """What ``experiments/run.py`` does with its flags; returns the text it prints.

  * no flag: the whole protocol in this process (``run_protocol``);
  * ``shard``: one worker on shard i of N (``run_worker``);
  * ``report_only`` (``--report``): ``report_protocol``, computing nothing;
  * ``workers`` K >= 1: ``launch`` K workers with ``executor`` and ``submit_kwargs``
    (``rsp.grid.submit``'s; unused otherwise).

  Raises:
    ValueError: flags that do not go together or a bad value (named as the flag),
      before any work.
  """
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
    raise ValueError(f'--workers={workers!r} must be an integer >= 0 (0: no launcher).')
  validation.check_choice('--executor', executor, grid_lib.EXECUTORS)
  if report_only and (shard or workers):
    raise ValueError(f'--report computes nothing, so it takes no --shard or --workers '
                     f'(got --shard={shard!r}, --workers={workers}).')
  if shard and workers:
    raise ValueError(f'--shard={shard!r} runs this process as one worker and '
                     f'--workers={workers} launches workers; accepted: one of them (for '
                     'a job array of --shard workers, see docs/cluster.md).')
  if executor != 'local' and not workers:
    raise ValueError(f'--executor={executor!r} launches workers: give --workers=K.')
  if submit_kwargs.get('slurm_kwargs') and executor != 'slurm':
    raise ValueError(f'--partition (SLURM options {submit_kwargs["slurm_kwargs"]}) is '
                     f'for --executor=slurm, not --executor={executor!r}.')
  if shard:
    grid_lib.parse_shard(shard)  # Refused before any work.
    done = run_worker(config, workdir, shard=shard, lease_seconds=lease_seconds)
    return (f'Shard {shard}: computed {len(done["poison_sets"])} poison sets and '
            f'{len(done["cells"])} cells ({", ".join(done["cells"]) or "none"}).\n'
            + grid_status(config, workdir, lease_seconds=lease_seconds)
            + '\nRun with --report to aggregate the finished cells.')
  if report_only:
    results = report_protocol(config, workdir)
  elif workers:
    results = launch(config, workdir, workers=workers, executor=executor,
                     lease_seconds=lease_seconds, **submit_kwargs)
  else:
    results = protocol.run_protocol(config, workdir)
  with open(os.path.join(workdir, 'results.md')) as f:
    text = f.read()
  text += (f'\n{len(results["rows"])} victims; wrote {workdir}/results.json, '
           'results.md' + (' and figures/' if results['figures'] else '') + '.')
  if report_only or workers:  # What the workers have done, and hold.
    text += '\n' + grid_status(config, workdir, lease_seconds=lease_seconds)
  return text
