r"""A grid of independent, resumable work items spread over many workers and machines.

A protocol is a list of cells (``rsp.protocol.resolve_cells``) that each train and
certify one victim and record the result in the workdir. At paper scale one GPU needs
days, so the cells are spread over workers that share the workdir (a network
filesystem in practice). This module gives the three ways to do it, all on top of the
same per-item claims:

* **Static shards**: ``--shard=i/N`` on N machines started by hand. Each worker takes
  the items ``i, i + N, i + 2N, ...`` of the resolved order (:func:`shard_items`), so
  the workers agree without talking.
* **Work stealing**: every worker walks the whole list and computes every item that is
  neither done nor claimed (:func:`run_claimed` with ``shard=None``). N workers started
  together compute distinct items, each exactly once, and a fast worker takes more.
* **An engine**: :func:`submit` launches N such workers through submitit, as processes
  on this machine (``executor='local'``) or as a SLURM job array with one accelerator
  per task (``executor='slurm'``); :func:`wait` collects them.

And one that computes nothing: :func:`missing` / :func:`status` / :func:`report` say
which items are done, running, abandoned or still to do (a ``--report`` mode).

**Claims.** A worker computes an item only while it holds the item's claim, the file
``WORKDIR/claims/<name>.claim`` created with ``O_CREAT | O_EXCL`` (exactly one creator
succeeds) and holding its owner: host, pid, a random token, time, SLURM job id. The
claim is *live* while its heartbeat, the file's modification time, is younger than
``lease_seconds``; the holder refreshes it (:meth:`Claim.heartbeat`, or a background
thread: :meth:`Claim.keep_alive`). A worker that dies stops beating, and once the lease
has passed its item is taken over: among the contenders for one stale claim file
exactly one wins, by creating with ``O_EXCL`` a takeover marker named after that file's
identity (inode and modification time); the winner checks that the claim is still that
same stale file and replaces it by its own (write and ``os.replace``). A claim that
beat since it was judged stale has another identity, so a worker whose heartbeat comes
late, but before the takeover, keeps its claim; and a contender that looked at an older
version of the file cannot replace a newer claim. (A winner killed between winning and
installing its claim leaves a marker that blocks the item for one more lease, after
which the next contender escalates past it.) An item is *done* when ``is_done(name)`` says so: the caller's own record (the
protocol's ``cells/<cell>/result.json``), or this module's markers (:func:`mark_done`,
``WORKDIR/done/<name>.json``) when ``is_done`` is None.

**Exactly once.** An item is computed only by the holder of its claim, who checks
``is_done`` again after claiming (another worker may have finished it in between) and
whose work must leave the item done before the claim is released. Two workers can
therefore compute the same item only if a live worker misses its heartbeats for longer
than the lease (suspended, or cut off from the filesystem); the results are written
atomically, so even then the record is whole, only the compute is spent twice (the
robbed worker's :attr:`Claim.lost` turns True at its next heartbeat and is logged).

**Filesystem assumptions.** ``open(O_CREAT | O_EXCL)`` fails for all but one creator,
and ``rename``/``os.replace`` within a directory is atomic: true on POSIX local
filesystems and on NFSv3 and later (NFSv2 has no exclusive create; some FUSE and object
store mounts have neither guarantee: do not share a workdir through those). Liveness
compares a file's modification time with this host's clock; over NFS the time is set by
the server and attributes may be cached for up to ``acregmax`` (60 s by default), so the
hosts' clocks must agree (NTP) to well within the lease, and ``lease_seconds`` should
be minutes (600 s is a good value for cells that take hours), with heartbeats every
quarter lease. The heartbeat thread needs the GIL now and then (JAX releases it while
it computes). A worker killed at its time limit simply stops beating: its item is
taken over one lease later. To reset every claim, stop all workers and delete ``WORKDIR/claims/``.

Example (work stealing in one process; run it on many machines at once)::

  ran = grid.run_claimed(workdir, [c.name for c in cells], compute, is_done=done,
                         lease_seconds=600)

Example (the engine)::

  jobs = grid.submit(worker, [(workdir,)] * 8, executor='slurm',
                     folder=os.path.join(workdir, 'grid_logs'), timeout_min=24 * 60,
                     slurm_kwargs={'partition': 'gpu'})
  per_worker = grid.wait(jobs)  # worker's return values, in order
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import secrets
import socket
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging

from rsp import workdir as workdir_lib

CLAIMS_DIR = 'claims'
DONE_DIR = 'done'
EXECUTORS = ('local', 'slurm')

# Stale takeover markers are escalated at most this many times (a winner that dies in
# the microseconds between winning and installing its claim leaves a stale marker).
_MAX_TAKEOVER_LEVELS = 8
# The environment variables that name a SLURM job, recorded in each claim.
_SLURM_VARIABLES = ('SLURM_JOB_ID', 'SLURM_ARRAY_JOB_ID', 'SLURM_ARRAY_TASK_ID')


# ------------------------------------------------------------------------------------
# Names and shards.


def check_name(name: Any) -> str:
  """Returns ``name`` if it can name a claim file; raises ValueError otherwise."""
  if not isinstance(name, str) or not name or len(name) > 200:
    raise ValueError(f'work item name {name!r} must be a non-empty string of at most '
                     '200 characters.')
  if '/' in name or '\0' in name or os.sep in name or name.startswith('.'):
    raise ValueError(f'work item name {name!r} must not contain "/" or NUL nor start '
                     'with "." (it names a file).')
  return name


def _check_names(names: Sequence[str]) -> list[str]:
  names = [check_name(n) for n in names]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f'work item names repeat: {repeated}; every item needs its own '
                     'name.')
  return names


def _check_shard(index: Any, count: Any, text: str | None = None) -> tuple[int, int]:
  shown = text if text is not None else f'{index}/{count}'
  ok = (isinstance(index, int) and isinstance(count, int) and
        not isinstance(index, bool) and not isinstance(count, bool) and
        count >= 1 and 0 <= index < count)
  if not ok:
    raise ValueError(f'--shard={shown!r} is not a shard: expected i/N with integers '
                     '0 <= i < N (for example --shard=0/4 ... --shard=3/4).')
  return index, count


def parse_shard(value: str) -> tuple[int, int]:
  """Parses ``--shard``'s ``'i/N'`` (worker i of N, 0 <= i < N) into ``(i, N)``.

  Raises:
    ValueError: ``value`` is not of that form; the message names ``--shard``, the value
      and the accepted form.
  """
  match = (re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', value, re.ASCII)
           if isinstance(value, str) else None)
  if match:
    return _check_shard(int(match.group(1)), int(match.group(2)), value)
  return _check_shard(None, None, value if isinstance(value, str) else repr(value))


def shard_items(items: Sequence[Any], index: int, count: int) -> list[Any]:
  """Shard ``index`` of ``count``: the items at positions ``index, index + count, ...``.

  Round robin by position in ``items`` (the resolved cell order), so every worker
  computes the same partition from the same list without talking to the others, and
  consecutive items (often the seeds of one setting) land on different workers.
  """
  index, count = _check_shard(index, count)
  return list(items)[index::count]


def _resolve_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
  if isinstance(shard, str):
    return parse_shard(shard)
  if isinstance(shard, (tuple, list)) and len(shard) == 2:
    return _check_shard(*shard)
  raise ValueError(f'shard={shard!r} must be None, "i/N" or a pair (i, N).')


# ------------------------------------------------------------------------------------
# Claims.


def claim_path(workdir: str, name: str) -> str:
  """``WORKDIR/claims/<name>.claim``."""
  return os.path.join(workdir, CLAIMS_DIR, check_name(name) + '.claim')


def _owner(name: str, token: str, lease_seconds: float) -> dict[str, Any]:
  now = time.time()
  owner = {'name': name, 'host': socket.gethostname(), 'pid': os.getpid(),
           'token': token, 'claimed_at': now,
           'claimed_at_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now)),
           'lease_seconds': lease_seconds}
  owner.update({k.lower(): os.environ[k] for k in _SLURM_VARIABLES if k in os.environ})
  return owner


def _read_owner(path: str) -> dict[str, Any] | None:
  """The owner recorded in a claim file; {} if it is empty or being written (a claim
  is created empty and filled at once); None if there is no such file."""
  try:
    owner = workdir_lib.read_json(path)
  except FileNotFoundError:
    return None
  except (workdir_lib.WorkdirError, OSError):
    return {}
  return owner if isinstance(owner, dict) else {}


def _identity(st: os.stat_result) -> str:
  """One version of a claim file: its inode and its last heartbeat."""
  return f'{st.st_ino}-{st.st_mtime_ns}'


def _age(st: os.stat_result) -> float:
  return time.time() - st.st_mtime


def _check_lease(lease_seconds: Any) -> float:
  if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or \
      not lease_seconds > 0:
    raise ValueError(f'lease_seconds={lease_seconds!r} must be a number > 0 (minutes '
                     'on a network filesystem, for example 600).')
  return float(lease_seconds)


@dataclasses.dataclass
class Claim:
  """A held claim on one work item; see the module docstring.

  Attributes:
    name: the item.
    path: the claim file.
    token: the random token that tells this claim from any other on the same item.
    lease_seconds: how long the claim stays live without a heartbeat.
    owner: what the claim file records (host, pid, token, time, SLURM job).
    lost: True once a heartbeat or the release found the claim file gone or holding
      another owner's token (this worker missed its heartbeats for longer than the
      lease and was taken over).
    released: True once :meth:`release` ran (heartbeats then do nothing).
  """
  name: str
  path: str
  token: str
  lease_seconds: float
  owner: dict[str, Any]
  lost: bool = False
  released: bool = False

  def _is_mine(self) -> bool:
    owner = _read_owner(self.path)
    return bool(owner) and owner.get('token') == self.token

  def heartbeat(self) -> bool:
    """Renews the lease (sets the claim file's modification time to now).

    Returns:
      True if the claim is still this worker's; False (and :attr:`lost` set) if it was
      taken over or removed, in which case nothing is touched.
    """
    if self.released:
      return False
    if not self._is_mine():
      if not self.lost:
        logging.warning('Claim on %s lost: %s holds %s now (this worker missed its '
                        'heartbeats for longer than %s s).', self.name,
                        _read_owner(self.path), self.path, self.lease_seconds)
      self.lost = True
      return False
    os.utime(self.path)
    return True

  def release(self) -> None:
    """Gives the item up: removes the claim file if it is still this worker's."""
    if self.released:
      return
    self.released = True
    if self._is_mine():
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)
    else:
      self.lost = True

  @contextlib.contextmanager
  def keep_alive(self, interval: float | None = None) -> Iterator[Claim]:
    """Heartbeats from a background thread while the ``with`` block runs.

    Args:
      interval: seconds between heartbeats; default a quarter of the lease. A failed
        heartbeat (a filesystem hiccup) is logged and retried at the next interval.

    Yields:
      This claim.
    """
    interval = self.lease_seconds / 4 if interval is None else float(interval)
    if not 0 < interval < self.lease_seconds:
      raise ValueError(f'interval={interval} must be in (0, lease_seconds='
                       f'{self.lease_seconds}).')
    stop = threading.Event()

    def beat():
      while not stop.wait(interval):
        try:
          self.heartbeat()
        except OSError as e:
          logging.warning('Heartbeat of the claim on %s failed (%s); retrying in %s s.',
                          self.name, e, interval)

    thread = threading.Thread(target=beat, name=f'heartbeat-{self.name}', daemon=True)
    thread.start()
    try:
      yield self
    finally:
      stop.set()
      thread.join()

  def __enter__(self) -> Claim:
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _create_exclusive(path: str, text: str) -> bool:
  """Creates ``path`` holding ``text`` if no file is there; False if one is."""
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  try:
    os.write(fd, text.encode())
    os.fsync(fd)
  except BaseException:
    os.close(fd)
    with contextlib.suppress(OSError):
      os.remove(path)
    raise
  os.close(fd)
  return True


def _win_takeover(marker: str, lease_seconds: float, level: int = 0) -> list[str] | None:
  """Arbitrates among the contenders for one stale claim file: the one whose
  ``O_EXCL`` create of ``marker`` succeeds wins. A marker older than the lease (its
  winner died before installing its claim) is escalated to a next-level marker.

  Returns:
    The markers to remove after the takeover (the winner's and the stale ones below
    it), or None for a contender that lost.
  """
  name = f'{marker}.{level}'
  if _create_exclusive(name, f'{os.getpid()}@{socket.gethostname()}\n'):
    return [name]
  try:
    st = os.stat(name)
  except FileNotFoundError:  # Removed by a winner that has finished: nothing to win.
    return None
  if _age(st) <= lease_seconds or level + 1 >= _MAX_TAKEOVER_LEVELS:
    return None
  won = _win_takeover(marker, lease_seconds, level + 1)
  return None if won is None else won + [name]


def _take_over(path: str, name: str, stale: os.stat_result, lease_seconds: float
               ) -> Claim | None:
  """Replaces the stale claim file ``stale`` by a claim of this worker, if this worker
  wins the takeover and the file is still that same stale version."""
  directory, base = os.path.split(path)
  identity = _identity(stale)
  markers = _win_takeover(os.path.join(directory, f'.{base}.takeover.{identity}'),
                          lease_seconds)
  if markers is None:
    return None
  try:
    # Opened before the stat: over NFS an open revalidates the cached attributes.
    previous = _read_owner(path)
    try:
      now = os.stat(path)
    except FileNotFoundError:
      return None  # Released meanwhile; the caller tries a plain claim again.
    if previous is None or _identity(now) != identity or _age(now) <= lease_seconds:
      return None  # Its owner beat again, or it is another claim by now.
    token = secrets.token_hex(16)
    owner = _owner(name, token, lease_seconds)
    owner['took_over'] = {'identity': identity, 'age_seconds': _age(now),
                          'host': previous.get('host'), 'pid': previous.get('pid')}
    with workdir_lib.atomic_file(path) as f:
      f.write(workdir_lib.dumps(owner) + '\n')
    logging.info('Took over the stale claim on %s (held by %s:%s, no heartbeat for '
                 '%.0f s > lease %s s).', name, previous.get('host'),
                 previous.get('pid'), _age(now), lease_seconds)
    return Claim(name=name, path=path, token=token, lease_seconds=lease_seconds,
                 owner=owner)
  finally:
    for marker in markers:
      with contextlib.suppress(FileNotFoundError):
        os.remove(marker)


def claim(workdir: str, name: str, *, lease_seconds: float) -> Claim | None:
  """Claims item ``name`` for this worker, or returns None if a live worker holds it.

  Creates ``WORKDIR/claims/<name>.claim`` exclusively; a claim whose heartbeat is
  older than ``lease_seconds`` is taken over (exactly one of the workers that try at
  once succeeds). Whether the item is already done is the caller's business (see
  :func:`run_claimed`).

  Args:
    workdir: the shared workdir.
    name: the item (a file name: no "/", not starting with ".").
    lease_seconds: how long a claim stays live without a heartbeat; every worker on a
      grid must use the same value.

  Returns:
    The held :class:`Claim` (release it, or use it as a context manager), or None.
  """
  lease_seconds = _check_lease(lease_seconds)
  path = claim_path(workdir, name)
  workdir_lib.ensure_directory(os.path.dirname(path), name='claims directory')
  for _ in range(3):  # Retried only when the file vanished between two looks.
    token = secrets.token_hex(16)
    owner = _owner(name, token, lease_seconds)
    if _create_exclusive(path, workdir_lib.dumps(owner) + '\n'):
      return Claim(name=name, path=path, token=token, lease_seconds=lease_seconds,
                   owner=owner)
    try:
      st = os.stat(path)
    except FileNotFoundError:
      continue  # Released just now: try to create it again.
    if _age(st) <= lease_seconds:
      return None
    taken = _take_over(path, name, st, lease_seconds)
    if taken is not None:
      return taken
    if os.path.exists(path):
      return None  # Another worker won, or the owner is alive after all.
  return None


def claim_info(workdir: str, name: str, *, lease_seconds: float
               ) -> dict[str, Any] | None:
  """The claim on ``name`` as recorded: None if unclaimed, else its owner's fields
  (``host``, ``pid``, ``token``, ``claimed_at``, ...) with ``heartbeat_age_seconds``
  and ``live`` (heartbeat younger than ``lease_seconds``)."""
  lease_seconds = _check_lease(lease_seconds)
  path = claim_path(workdir, name)
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return None
  info = dict(_read_owner(path) or {})
  info.update(heartbeat_age_seconds=_age(st), live=_age(st) <= lease_seconds)
  return info


# ------------------------------------------------------------------------------------
# Done markers.


def done_path(workdir: str, name: str) -> str:
  """``WORKDIR/done/<name>.json``."""
  return os.path.join(workdir, DONE_DIR, check_name(name) + '.json')


def mark_done(workdir: str, name: str, info: Mapping[str, Any] | None = None) -> None:
  """Records item ``name`` as done (atomically), with ``info`` and who did it."""
  record = {'name': name, 'host': socket.gethostname(), 'pid': os.getpid(),
            'time': time.time(), **(info or {})}
  workdir_lib.write_json(done_path(workdir, name), record)


def is_marked_done(workdir: str, name: str) -> bool:
  """Whether :func:`mark_done` recorded ``name``."""
  return os.path.isfile(done_path(workdir, name))


def _done_fn(workdir: str, is_done: Callable[[str], bool] | None
             ) -> Callable[[str], bool]:
  return functools.partial(is_marked_done, workdir) if is_done is None else is_done


# ------------------------------------------------------------------------------------
# Workers.


def run_claimed(workdir: str, names: Sequence[str], work_fn: Callable[[str], Any], *,
                is_done: Callable[[str], bool] | None, lease_seconds: float,
                shard: str | tuple[int, int] | None = None,
                heartbeat_seconds: float | None = None, wait_for_others: bool = False,
                poll_seconds: float | None = None) -> list[str]:
  """Computes the items that are not done and that no live worker holds, each under
  its claim; returns the names this worker computed, in order.

  For each name of ``names`` (or of its shard): skip it if ``is_done(name)``; claim it
  (skip it if a live worker holds it); check ``is_done`` again; run ``work_fn(name)``
  while a background thread heartbeats the claim; release the claim.

  Args:
    workdir: the shared workdir (claims go to ``WORKDIR/claims/``).
    names: the items, in the resolved order; every worker must pass the same list.
    work_fn: computes one item and records it so that ``is_done(name)`` becomes True
      (its return value is ignored).
    is_done: whether an item is finished, from the caller's own record (for the
      protocol: the cell's ``result.json`` exists). None: this function records done
      items itself with :func:`mark_done` after ``work_fn`` returns.
    lease_seconds: see :func:`claim`.
    shard: None for work stealing (take any unclaimed item), or ``'i/N'`` / ``(i, N)``
      for the items of shard i of N (:func:`shard_items`), still under claims so that
      two workers started on the same shard do not compute an item twice.
    heartbeat_seconds: seconds between heartbeats; default a quarter of the lease.
    wait_for_others: after the pass over the items, keep polling the items that other
      workers held until each is done, taking over those whose worker died; so the
      last worker standing finishes the grid. False: return after one pass (a rerun or
      another worker picks up what a dead worker left).
    poll_seconds: the polling interval of ``wait_for_others``; default a quarter of
      the lease, at most 60 s.

  Returns:
    The names this worker computed.

  Raises:
    Exception: whatever ``work_fn`` raised (the claim is released first, so the item
      can be computed again at once).
    RuntimeError: ``work_fn`` returned but ``is_done(name)`` is still False (it would
      be computed again by every later worker).
  """
  lease_seconds = _check_lease(lease_seconds)
  names = _check_names(names)
  if shard is not None:
    names = shard_items(names, *_resolve_shard(shard))
  done = _done_fn(workdir, is_done)
  poll = min(60.0, lease_seconds / 4) if poll_seconds is None else float(poll_seconds)
  ran = []
  pending = names
  while True:
    held = []
    for name in pending:
      if done(name):
        continue
      held_claim = claim(workdir, name, lease_seconds=lease_seconds)
      if held_claim is None:
        held.append(name)
        continue
      with held_claim:
        if done(name):  # Finished by another worker between the two looks.
          continue
        logging.info('Worker %s:%d computes %s.', socket.gethostname(), os.getpid(),
                     name)
        with held_claim.keep_alive(heartbeat_seconds):
          work_fn(name)
        if is_done is None:
          mark_done(workdir, name)
        elif not done(name):
          raise RuntimeError(f'work_fn({name!r}) returned, but is_done({name!r}) is '
                             'False: the work must record its result before the claim '
                             'is released, or every later worker computes it again.')
        if held_claim.lost:
          logging.warning('%s was computed, but its claim was taken over meanwhile: '
                          'another worker may have computed it too.', name)
        ran.append(name)
    if not held or not wait_for_others:
      if held:
        logging.info('Worker %s:%d leaves %d item(s) held by other workers: %s.',
                     socket.gethostname(), os.getpid(), len(held), held)
      return ran
    pending = held
    time.sleep(poll)


def missing(workdir: str, names: Sequence[str],
            is_done: Callable[[str], bool] | None = None) -> list[str]:
  """The names that are not done, in order (for a ``--report`` mode that aggregates
  the finished items without computing any). ``is_done`` None: :func:`mark_done`'s
  markers."""
  done = _done_fn(workdir, is_done)
  return [n for n in _check_names(names) if not done(n)]


def status(workdir: str, names: Sequence[str], *, is_done: Callable[[str], bool] | None,
           lease_seconds: float) -> dict[str, dict[str, Any]]:
  """Per name: ``{'state': ...}`` with state 'done', 'running' (a live claim; its
  owner's fields are added), 'abandoned' (a stale claim: its worker died; the next
  worker takes it over) or 'todo'."""
  done = _done_fn(workdir, is_done)
  out = {}
  for name in _check_names(names):
    if done(name):
      out[name] = {'state': 'done'}
      continue
    info = claim_info(workdir, name, lease_seconds=lease_seconds)
    if info is None:
      out[name] = {'state': 'todo'}
    else:
      out[name] = {'state': 'running' if info['live'] else 'abandoned', **info}
  return out


def report(workdir: str, names: Sequence[str], *, is_done: Callable[[str], bool] | None,
           lease_seconds: float) -> str:
  """:func:`status` as text: a count per state, then one line per unfinished item."""
  states = status(workdir, names, is_done=is_done, lease_seconds=lease_seconds)
  counts = {s: sum(v['state'] == s for v in states.values())
            for s in ('done', 'running', 'abandoned', 'todo')}
  lines = [f'{len(states)} items: ' + ', '.join(f'{n} {s}' for s, n in counts.items())]
  for name, v in states.items():
    if v['state'] == 'done':
      continue
    line = f'  {v["state"]:9s} {name}'
    if v['state'] != 'todo':
      line += (f' (claimed by {v.get("host", "?")}:{v.get("pid", "?")}'
               + (f', SLURM job {v["slurm_job_id"]}' if 'slurm_job_id' in v else '')
               + f', last heartbeat {v["heartbeat_age_seconds"]:.0f} s ago)')
    lines.append(line)
  return '\n'.join(lines)


# ------------------------------------------------------------------------------------
# The engine: workers launched through submitit.


class GridJobError(RuntimeError):
  """One or more workers launched by :func:`submit` failed (the message holds each
  failed worker's error and the end of its stderr)."""


def _submitit():
  """The submitit module, or an ImportError that says how to install it."""
  # The one function-level import in rsp, on purpose: submitit is the optional 'grid'
  # extra, needed only to launch workers; shards, claims and reports work without it.
  try:
    import submitit  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("rsp.grid.submit launches workers through submitit, which is not "
                      "installed: pip install -e '.[grid]' (or pip install "
                      "'submitit>=1.5').") from e
  return submitit


def submit(fn: Callable[..., Any], args_list: Sequence[Sequence[Any]], *,
           executor: str = 'local', folder: str, timeout_min: int = 24 * 60,
           gpus_per_worker: int = 1, cpus_per_worker: int | None = None,
           mem_gb: float | None = None, job_name: str = 'rsp-grid',
           slurm_kwargs: Mapping[str, Any] | None = None,
           local_gpus: Sequence[int] | None = None) -> list[Any]:
  """Launches one worker ``fn(*args)`` per entry of ``args_list`` through submitit.

  ``fn`` and its arguments are pickled (cloudpickle), so a closure works; a worker
  typically loads what it needs once and calls :func:`run_claimed`. Nothing here
  waits: call :func:`wait`.

  Args:
    fn: the worker function.
    args_list: the positional arguments of each worker; ``len(args_list)`` workers are
      launched (``[(workdir,)] * 8`` for eight identical work-stealing workers).
    executor: ``'local'``: each worker a process on this machine (submitit's local
      executor; for tests and one multi-GPU machine); ``'slurm'``: one SLURM job array
      (``executor.submit_array``) with one task per worker.
    folder: where submitit writes the pickles and each worker's stdout/stderr
      (``%j`` becomes the job id); for SLURM it must be on the shared filesystem.
    timeout_min: each worker's time limit in minutes (SLURM ``--time``; the local
      executor's default would kill workers after 2 minutes). A worker killed at the
      limit leaves its claim to go stale; its item is taken over later.
    gpus_per_worker: accelerators per worker (SLURM ``--gpus-per-node``; unused when
      ``slurm_kwargs`` gives ``gres``). In local mode submitit sets
      ``CUDA_VISIBLE_DEVICES`` to the first ``gpus_per_worker`` devices for every
      worker (0: no GPU visible), unless ``local_gpus`` spreads them.
    cpus_per_worker: CPU cores per worker (SLURM ``--cpus-per-task``); default the
      cluster's.
    mem_gb: host memory per worker; default the cluster's.
    job_name: the job's name (SLURM ``--job-name``).
    slurm_kwargs: further SLURM parameters without the ``slurm_`` prefix, as
      submitit's SlurmExecutor names them: ``partition``, ``account``, ``qos``,
      ``constraint``, ``gres`` (e.g. ``'gpu:a100:1'``), ``array_parallelism``,
      ``exclude``, ``setup`` (shell lines run first), ``additional_parameters``, ...
    local_gpus: local mode only: the GPU indices to spread the workers over, worker k
      seeing ``local_gpus[k % len(local_gpus)]`` alone (one accelerator per worker).

  Returns:
    The submitit jobs, one per worker, in order.

  Raises:
    ImportError: submitit is not installed (the 'grid' extra).
    ValueError: a bad executor, count or limit.
  """
  if executor not in EXECUTORS:
    raise ValueError(f'executor={executor!r}; accepted: {", ".join(EXECUTORS)}.')
  args_list = [tuple(a) for a in args_list]
  if not args_list:
    raise ValueError('args_list is empty: pass one tuple of arguments per worker.')
  if isinstance(timeout_min, bool) or not isinstance(timeout_min, int) or \
      timeout_min < 1:
    raise ValueError(f'timeout_min={timeout_min!r} must be an integer >= 1 (minutes).')
  if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, int) or \
      gpus_per_worker < 0:
    raise ValueError(f'gpus_per_worker={gpus_per_worker!r} must be an integer >= 0.')
  if local_gpus is not None and (executor != 'local' or not local_gpus):
    raise ValueError('local_gpus is for executor="local" only, and must name at least '
                     'one GPU index.')
  if slurm_kwargs and executor != 'slurm':
    raise ValueError(f'slurm_kwargs are for executor="slurm", not {executor!r}.')
  submitit = _submitit()
  slurm_kwargs = dict(slurm_kwargs or {})
  parameters = {'timeout_min': timeout_min, 'name': job_name, 'nodes': 1,
                'tasks_per_node': 1, 'cpus_per_task': cpus_per_worker,
                'mem_gb': mem_gb}
  if executor == 'slurm' and 'gres' in slurm_kwargs:
    parameters['gpus_per_node'] = None  # The gres names the accelerators.
  else:
    parameters['gpus_per_node'] = gpus_per_worker
  parameters.update({f'slurm_{k}': v for k, v in slurm_kwargs.items()})

  def make_executor(**extra):
    ex = submitit.AutoExecutor(folder=folder, cluster=executor)
    ex.update_parameters(**parameters, **extra)
    return ex

  jobs = []
  if local_gpus is not None:
    # One executor per worker: the setup line picks its GPU before Python starts.
    for k, args in enumerate(args_list):
      gpu = int(local_gpus[k % len(local_gpus)])
      ex = make_executor(local_setup=[f'export CUDA_VISIBLE_DEVICES={gpu}'])
      jobs.append(ex.submit(fn, *args))
  else:
    ex = make_executor()
    jobs = ex.submit_array([functools.partial(fn, *args) for args in args_list])
  logging.info('Launched %d %s worker(s) (job %s); logs in %s.', len(jobs), executor,
               jobs[0].job_id.split('_')[0], folder)
  return list(jobs)


def _tail(text: str | None, lines: int = 40) -> str:
  if not text:
    return '(no stderr)'
  return '\n'.join(text.rstrip('\n').split('\n')[-lines:])


def wait(jobs: Sequence[Any]) -> list[Any]:
  """Waits for every job of :func:`submit`; returns their results, in order.

  Raises:
    GridJobError: a worker failed (raised, was killed or timed out). Every job is
      waited for first; the message names each failed worker with its error, the last
      40 lines of its stderr and its log files.
  """
  results, failures = [], []
  for k, job in enumerate(jobs):
    error = job.exception()  # Waits for the job.
    if error is None:
      results.append(job.result())
      continue
    try:
      stderr = job.stderr()
    except Exception as e:  # pylint: disable=broad-except
      stderr = f'(stderr unreadable: {e})'
    failures.append(f'worker {k} (job {job.job_id}) failed: {error}\n'
                    f'--- end of its stderr ---\n{_tail(stderr)}')
  if failures:
    raise GridJobError(f'{len(failures)} of {len(jobs)} worker(s) failed:\n\n' +
                       '\n\n'.join(failures))
  return results
