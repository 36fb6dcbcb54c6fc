"""Tests of rsp.grid: shards, claims, workers, reports and the submitit engine.

No JAX: the work functions append a name to a file and sleep a little. Liveness never
depends on a test's timing: stale claims are made stale with os.utime (an hour old
against a 10-minute lease), and a test that waits for a worker polls for an outcome
with a generous timeout instead of sleeping a fixed time. Each test's docstring says
how likely it is to fail by chance.
"""

import multiprocessing
import os
import stat
import sys
import threading
import time

import pytest

from rsp import grid
from rsp import workdir as workdir_lib

LEASE = 600.0      # Seconds: no claim in these tests goes stale by waiting.
AN_HOUR_AGO = 3600.0
NAMES = [f'cell{k:02d}' for k in range(12)]
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_TESTS_DIR)


def _make_stale(path, seconds=AN_HOUR_AGO):
  old = time.time() - seconds
  os.utime(path, (old, old))


def _count_lines(path):
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return len(f.read().splitlines())


def _log_path(workdir, name):
  return os.path.join(workdir, 'log', name + '.txt')


def _append_and_sleep(workdir, name, seconds=0.05):
  """The trivial work of one item: append its name to its own file, then sleep."""
  os.makedirs(os.path.join(workdir, 'log'), exist_ok=True)
  with open(_log_path(workdir, name), 'a') as f:
    f.write(name + '\n')
  time.sleep(seconds)
  grid.mark_done(workdir, name)


def _wait_for(condition, timeout=60.0, what='condition'):
  deadline = time.time() + timeout
  while not condition():
    if time.time() > deadline:
      raise AssertionError(f'{what} not reached within {timeout} s')
    time.sleep(0.01)


# ------------------------------------------------------------------------------------
# Shards.


@pytest.mark.parametrize('value,expected', [('0/1', (0, 1)), ('3/4', (3, 4)),
                                            (' 2/5 ', (2, 5)), ('0/12', (0, 12))])
def test_parse_shard_accepts_i_of_n(value, expected):
  """Deterministic: cannot fail by chance."""
  assert grid.parse_shard(value) == expected


@pytest.mark.parametrize('value', ['4/4', '5/4', '-1/4', '1/0', '0/0', 'a/b', '1',
                                   '1/2/3', '', '1.0/2', '1/-2', '/4', '0x1/4'])
def test_parse_shard_refuses_with_the_flag_value_and_form(value):
  """Deterministic: cannot fail by chance."""
  with pytest.raises(ValueError) as e:
    grid.parse_shard(value)
  message = str(e.value)
  assert '--shard' in message and repr(value) in message
  assert '0 <= i < N' in message


@pytest.mark.parametrize('count', [1, 2, 3, 5, 12, 13])
def test_shards_partition_the_items_exactly(count):
  """Deterministic: cannot fail by chance."""
  shards = [grid.shard_items(NAMES, i, count) for i in range(count)]
  flat = [n for s in shards for n in s]
  assert sorted(flat) == sorted(NAMES) and len(flat) == len(NAMES)
  for i, s in enumerate(shards):
    assert s == NAMES[i::count]  # Round robin in the resolved order.
  with pytest.raises(ValueError, match='--shard'):
    grid.shard_items(NAMES, count, count)


def test_run_claimed_on_a_shard_computes_only_its_items(tmp_path):
  """Deterministic: cannot fail by chance."""
  workdir = str(tmp_path)
  ran = grid.run_claimed(workdir, NAMES, lambda n: _append_and_sleep(workdir, n, 0),
                         is_done=None, lease_seconds=LEASE, shard='1/3')
  assert ran == NAMES[1::3]
  assert grid.missing(workdir, NAMES) == [n for n in NAMES if n not in ran]
  ran = grid.run_claimed(workdir, NAMES, lambda n: _append_and_sleep(workdir, n, 0),
                         is_done=None, lease_seconds=LEASE, shard=(0, 3))
  assert ran == NAMES[0::3]


def test_names_are_checked(tmp_path):
  """Deterministic: cannot fail by chance."""
  for bad in ('', 'a/b', '.hidden', 'a\0b', 3):
    with pytest.raises(ValueError, match='name'):
      grid.claim(str(tmp_path), bad, lease_seconds=LEASE)
  with pytest.raises(ValueError, match='repeat'):
    grid.missing(str(tmp_path), ['a', 'b', 'a'])
  with pytest.raises(ValueError, match='lease_seconds'):
    grid.claim(str(tmp_path), 'a', lease_seconds=0)


# ------------------------------------------------------------------------------------
# Claims.


def test_claim_is_exclusive_and_records_its_owner(tmp_path):
  """Deterministic: cannot fail by chance."""
  workdir = str(tmp_path)
  c = grid.claim(workdir, 'a', lease_seconds=LEASE)
  assert c is not None and os.path.isfile(grid.claim_path(workdir, 'a'))
  owner = workdir_lib.read_json(c.path)
  assert owner['pid'] == os.getpid() and owner['token'] == c.token
  assert {'host', 'claimed_at', 'lease_seconds'} <= set(owner)
  assert grid.claim(workdir, 'a', lease_seconds=LEASE) is None  # Live: held.
  info = grid.claim_info(workdir, 'a', lease_seconds=LEASE)
  assert info['live'] and info['token'] == c.token
  c.release()
  assert not os.path.exists(c.path)
  assert grid.claim_info(workdir, 'a', lease_seconds=LEASE) is None
  with grid.claim(workdir, 'a', lease_seconds=LEASE) as again:
    assert again.token != c.token
  assert not os.path.exists(c.path)


def test_dead_workers_claim_is_taken_over_and_a_live_one_is_not(tmp_path):
  """Deterministic (the stale heartbeat is set with os.utime): cannot fail by chance."""
  workdir = str(tmp_path)
  dead = grid.claim(workdir, 'a', lease_seconds=LEASE)
  _make_stale(dead.path, LEASE - 60)  # Old, but within the lease: still live.
  assert grid.claim(workdir, 'a', lease_seconds=LEASE) is None
  assert grid.claim_info(workdir, 'a', lease_seconds=LEASE)['live']
  _make_stale(dead.path)  # No heartbeat for an hour: the worker died.
  assert not grid.claim_info(workdir, 'a', lease_seconds=LEASE)['live']
  new = grid.claim(workdir, 'a', lease_seconds=LEASE)
  assert new is not None and new.token != dead.token
  assert new.owner['took_over']['pid'] == os.getpid()
  assert workdir_lib.read_json(new.path)['token'] == new.token
  assert grid.claim(workdir, 'a', lease_seconds=LEASE) is None  # The new one is live.
  # The robbed worker notices at its next heartbeat and cannot remove the new claim.
  assert not dead.heartbeat() and dead.lost
  dead.release()
  assert workdir_lib.read_json(new.path)['token'] == new.token
  # No takeover markers or temporary files are left behind.
  assert sorted(os.listdir(os.path.dirname(new.path))) == ['a.claim']


def test_an_empty_claim_of_a_worker_that_died_while_creating_it_is_taken_over(tmp_path):
  """A claim file is created empty and filled at once; a worker killed in between
  leaves it empty. Live while fresh, taken over once stale. Deterministic: cannot fail
  by chance."""
  workdir = str(tmp_path)
  path = grid.claim_path(workdir, 'a')
  os.makedirs(os.path.dirname(path))
  open(path, 'w').close()
  assert grid.claim(workdir, 'a', lease_seconds=LEASE) is None
  assert grid.claim_info(workdir, 'a', lease_seconds=LEASE)['live']
  _make_stale(path)
  new = grid.claim(workdir, 'a', lease_seconds=LEASE)
  assert new is not None and workdir_lib.read_json(path)['token'] == new.token


def test_heartbeat_renews_the_lease(tmp_path):
  """The keep_alive part polls for a beat for up to 60 s (beats come every 10 ms):
  fails by chance only if this process is starved for a minute."""
  workdir = str(tmp_path)
  c = grid.claim(workdir, 'a', lease_seconds=LEASE)
  _make_stale(c.path)
  assert c.heartbeat()
  assert grid.claim_info(workdir, 'a', lease_seconds=LEASE)['heartbeat_age_seconds'] < 60
  _make_stale(c.path, LEASE - 1)
  with c.keep_alive(0.01):
    _wait_for(lambda: time.time() - os.stat(c.path).st_mtime < 60, what='a heartbeat')
  assert grid.claim(workdir, 'a', lease_seconds=LEASE) is None
  with pytest.raises(ValueError, match='interval'):
    with c.keep_alive(LEASE):
      pass


def test_takeover_of_a_claim_that_beat_again_or_changed_hands_is_refused(tmp_path):
  """A contender that judged a claim stale loses if the file it judged is not the one
  there now (the owner beat, or another contender took over first). Deterministic:
  cannot fail by chance."""
  workdir = str(tmp_path)
  first = grid.claim(workdir, 'a', lease_seconds=LEASE)
  _make_stale(first.path)
  judged = os.stat(first.path)
  assert first.heartbeat()  # The owner was only slow.
  assert grid._take_over(first.path, 'a', judged, LEASE) is None
  assert workdir_lib.read_json(first.path)['token'] == first.token
  _make_stale(first.path)
  judged = os.stat(first.path)
  second = grid.claim(workdir, 'a', lease_seconds=LEASE)  # Takes over first.
  assert second is not None
  # A late contender with the old judgement must not replace the new, live claim.
  assert grid._take_over(first.path, 'a', judged, LEASE) is None
  assert workdir_lib.read_json(first.path)['token'] == second.token


def test_a_takeover_left_half_done_does_not_block_the_item_forever(tmp_path):
  """A takeover winner that died before installing its claim leaves a marker; a fresh
  marker blocks (someone is taking over right now), a stale one is escalated.
  Deterministic: cannot fail by chance."""
  workdir = str(tmp_path)
  dead = grid.claim(workdir, 'a', lease_seconds=LEASE)
  _make_stale(dead.path)
  identity = grid._identity(os.stat(dead.path))
  marker = os.path.join(os.path.dirname(dead.path), f'.a.claim.takeover.{identity}.0')
  with open(marker, 'w') as f:
    f.write('a winner that died\n')
  assert grid.claim(workdir, 'a', lease_seconds=LEASE) is None
  _make_stale(marker)
  new = grid.claim(workdir, 'a', lease_seconds=LEASE)
  assert new is not None
  assert sorted(os.listdir(os.path.dirname(new.path))) == ['a.claim']


def _contend_in_process(barrier, workdir, name, result_dir, k):
  barrier.wait()
  c = grid.claim(workdir, name, lease_seconds=LEASE)
  workdir_lib.write_text(os.path.join(result_dir, f'{k}.txt'),
                         'won' if c is not None else 'lost')


def test_concurrent_takeover_of_one_stale_claim_has_exactly_one_winner(tmp_path):
  """20 rounds of 16 threads released together by a barrier, then 4 processes, on one
  claim whose heartbeat is an hour old. Whatever the interleaving, exactly one wins:
  a failure would be a real race, not chance."""
  workdir = str(tmp_path)
  for round_ in range(20):
    dead = grid.claim(workdir, 'a', lease_seconds=LEASE)
    _make_stale(dead.path)
    barrier = threading.Barrier(16)
    won = []

    def contend():
      barrier.wait()
      c = grid.claim(workdir, 'a', lease_seconds=LEASE)
      if c is not None:
        won.append(c)

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert len(won) == 1, f'round {round_}: {len(won)} winners'
    assert workdir_lib.read_json(won[0].path)['token'] == won[0].token
    won[0].release()
  assert os.listdir(os.path.join(workdir, 'claims')) == []

  dead = grid.claim(workdir, 'b', lease_seconds=LEASE)
  _make_stale(dead.path)
  ctx = multiprocessing.get_context('spawn')
  barrier = ctx.Barrier(4)
  result_dir = str(tmp_path / 'results')
  os.makedirs(result_dir)
  procs = [ctx.Process(target=_contend_in_process,
                       args=(barrier, workdir, 'b', result_dir, k)) for k in range(4)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(120)
    assert p.exitcode == 0
  outcomes = []
  for k in range(4):
    with open(os.path.join(result_dir, f'{k}.txt')) as f:
      outcomes.append(f.read())
  assert sorted(outcomes) == ['lost'] * 3 + ['won']


# ------------------------------------------------------------------------------------
# Workers.


def _worker_process(barrier, workdir, names, k):
  barrier.wait()  # Both workers start on the grid together.
  ran = grid.run_claimed(workdir, names, lambda n: _append_and_sleep(workdir, n, 0.1),
                         is_done=lambda n: grid.is_marked_done(workdir, n),
                         lease_seconds=LEASE)
  workdir_lib.write_json(os.path.join(workdir, f'ran_{k}.json'), ran)


def test_two_worker_processes_compute_every_name_exactly_once(tmp_path):
  """Two spawned processes steal work from one grid of 12 names (0.1 s each).
  Exactly-once does not depend on timing; how the names split between the two does,
  and is not asserted (it is printed). Cannot fail by chance."""
  workdir = str(tmp_path)
  ctx = multiprocessing.get_context('spawn')
  barrier = ctx.Barrier(2)
  procs = [ctx.Process(target=_worker_process, args=(barrier, workdir, NAMES, k))
           for k in range(2)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(120)
    assert p.exitcode == 0
  ran = [workdir_lib.read_json(os.path.join(workdir, f'ran_{k}.json')) for k in range(2)]
  print(f'worker 0 computed {len(ran[0])}, worker 1 computed {len(ran[1])}')
  assert sorted(ran[0] + ran[1]) == NAMES  # Distinct, and the union is complete.
  assert all(_count_lines(_log_path(workdir, n)) == 1 for n in NAMES)
  assert grid.missing(workdir, NAMES) == []
  assert os.listdir(os.path.join(workdir, 'claims')) == []


def test_run_claimed_skips_done_and_held_items(tmp_path):
  """Deterministic: cannot fail by chance."""
  workdir = str(tmp_path)
  grid.mark_done(workdir, NAMES[0])
  held = grid.claim(workdir, NAMES[1], lease_seconds=LEASE)
  ran = grid.run_claimed(workdir, NAMES, lambda n: _append_and_sleep(workdir, n, 0),
                         is_done=None, lease_seconds=LEASE)
  assert ran == NAMES[2:]
  assert grid.missing(workdir, NAMES) == [NAMES[1]]
  held.release()
  assert grid.run_claimed(workdir, NAMES, lambda n: _append_and_sleep(workdir, n, 0),
                          is_done=None, lease_seconds=LEASE) == [NAMES[1]]
  assert all(_count_lines(_log_path(workdir, n)) == (n != NAMES[0]) for n in NAMES)


def test_run_claimed_rechecks_done_after_claiming(tmp_path):
  """An item finished by another worker between the first look and the claim is not
  computed again. Deterministic: cannot fail by chance."""
  workdir = str(tmp_path)
  looks = []

  def is_done(name):
    looks.append(name)
    if looks.count(name) == 2:  # Another worker finishes it just before our claim.
      grid.mark_done(workdir, name)
    return grid.is_marked_done(workdir, name)

  ran = grid.run_claimed(workdir, ['a'], lambda n: _append_and_sleep(workdir, n, 0),
                         is_done=is_done, lease_seconds=LEASE)
  assert ran == [] and _count_lines(_log_path(workdir, 'a')) == 0


def test_failed_work_releases_its_claim_and_propagates(tmp_path):
  """Deterministic: cannot fail by chance."""
  workdir = str(tmp_path)

  def work(name):
    if name == 'b':
      raise KeyError('b fails')
    _append_and_sleep(workdir, name, 0)

  with pytest.raises(KeyError, match='b fails'):
    grid.run_claimed(workdir, ['a', 'b', 'c'], work, is_done=None, lease_seconds=LEASE)
  assert grid.missing(workdir, ['a', 'b', 'c']) == ['b', 'c']
  assert os.listdir(os.path.join(workdir, 'claims')) == []  # b can be claimed at once.
  ran = grid.run_claimed(workdir, ['a', 'b', 'c'],
                         lambda n: _append_and_sleep(workdir, n, 0), is_done=None,
                         lease_seconds=LEASE)
  assert ran == ['b', 'c']


def test_work_that_leaves_the_item_undone_is_an_error(tmp_path):
  """Deterministic: cannot fail by chance."""
  workdir = str(tmp_path)
  with pytest.raises(RuntimeError, match='is_done'):
    grid.run_claimed(workdir, ['a'], lambda n: None,
                     is_done=lambda n: False, lease_seconds=LEASE)
  assert os.listdir(os.path.join(workdir, 'claims')) == []


def test_waiting_worker_finishes_what_a_dead_worker_left(tmp_path):
  """With wait_for_others, a worker polls the items other workers hold: it takes over
  the one whose worker died and returns once the live worker's item is done. The test
  waits for outcomes (60 s timeouts; the polling is every 10 ms): fails by chance only
  if the machine starves this process for a minute."""
  workdir = str(tmp_path)
  names = ['a', 'b', 'c', 'd']
  live = grid.claim(workdir, 'b', lease_seconds=LEASE)
  dying = grid.claim(workdir, 'd', lease_seconds=LEASE)
  out = {}

  def worker():
    out['ran'] = grid.run_claimed(workdir, names,
                                  lambda n: _append_and_sleep(workdir, n, 0),
                                  is_done=None, lease_seconds=LEASE,
                                  wait_for_others=True, poll_seconds=0.01)

  thread = threading.Thread(target=worker)
  thread.start()
  _wait_for(lambda: grid.missing(workdir, names) == ['b', 'd'], what='a and c done')
  _make_stale(dying.path)  # d's worker dies.
  _wait_for(lambda: grid.missing(workdir, names) == ['b'], what='d taken over')
  assert thread.is_alive()  # Still waiting for b.
  grid.mark_done(workdir, 'b')
  live.release()
  thread.join(60)
  assert not thread.is_alive()
  assert out['ran'] == ['a', 'c', 'd']


def test_missing_status_and_report(tmp_path):
  """Deterministic: cannot fail by chance."""
  workdir = str(tmp_path)
  names = ['a', 'b', 'c', 'd', 'e']
  done = {'a', 'c'}
  is_done = lambda n: n in done
  grid.claim(workdir, 'd', lease_seconds=LEASE)
  stale = grid.claim(workdir, 'e', lease_seconds=LEASE)
  _make_stale(stale.path)
  assert grid.missing(workdir, names, is_done) == ['b', 'd', 'e']
  assert grid.missing(workdir, names, lambda n: True) == []
  assert grid.missing(workdir, names) == names  # No done markers.
  states = grid.status(workdir, names, is_done=is_done, lease_seconds=LEASE)
  assert {n: s['state'] for n, s in states.items()} == {
      'a': 'done', 'b': 'todo', 'c': 'done', 'd': 'running', 'e': 'abandoned'}
  assert states['d']['pid'] == os.getpid()
  text = grid.report(workdir, names, is_done=is_done, lease_seconds=LEASE)
  assert text.splitlines()[0] == '5 items: 2 done, 1 running, 1 abandoned, 1 todo'
  assert 'todo      b' in text and f':{os.getpid()}' in text
  assert 'a' not in text.splitlines()[1:]


# ------------------------------------------------------------------------------------
# The engine.


def _submitted_worker(workdir, names):
  ran = grid.run_claimed(workdir, names, lambda n: _append_and_sleep(workdir, n, 0.1),
                         is_done=None, lease_seconds=LEASE)
  return ran, os.environ.get('CUDA_VISIBLE_DEVICES')


def _failing_worker(message):
  print(message, file=sys.stderr, flush=True)
  raise ValueError('the worker failed on purpose')


@pytest.fixture
def importable_tests(monkeypatch):
  """The workers that submitit starts import this module and this checkout's rsp."""
  path = os.pathsep.join([_ROOT, _TESTS_DIR, os.environ.get('PYTHONPATH', '')])
  monkeypatch.setenv('PYTHONPATH', path.rstrip(os.pathsep))


def test_submitit_local_workers_compute_every_name_once(tmp_path, importable_tests):
  """Two workers through submitit's local executor (each a fresh Python process) on 8
  names, each on its own 'GPU' (local_gpus); then one failing worker. Takes about 6 s
  on a 2-core CPU (submitit polls jobs once a second). No assertion
  depends on timing: cannot fail by chance."""
  submitit = pytest.importorskip('submitit')
  del submitit
  workdir = str(tmp_path / 'work')
  names = NAMES[:8]
  start = time.time()
  jobs = grid.submit(_submitted_worker, [(workdir, names)] * 2, executor='local',
                     folder=str(tmp_path / 'logs' / '%j'), timeout_min=5,
                     local_gpus=(3, 5))
  assert len(jobs) == 2
  results = grid.wait(jobs)
  print(f'2 local submitit workers: {time.time() - start:.1f} s')
  ran = [r[0] for r in results]
  assert sorted(ran[0] + ran[1]) == names
  assert all(_count_lines(_log_path(workdir, n)) == 1 for n in names)
  assert sorted(r[1] for r in results) == ['3', '5']  # One accelerator per worker.

  jobs = grid.submit(_failing_worker, [('marker-in-stderr',)], executor='local',
                     folder=str(tmp_path / 'logs' / '%j'), timeout_min=5,
                     gpus_per_worker=0)
  with pytest.raises(grid.GridJobError) as e:
    grid.wait(jobs)
  message = str(e.value)
  assert '1 of 1 worker(s) failed' in message
  assert 'the worker failed on purpose' in message and 'marker-in-stderr' in message


def test_slurm_submission_is_one_array_with_a_gpu_per_task(tmp_path, monkeypatch):
  """Against stand-in srun/sbatch commands (no cluster here): the sbatch file that
  submitit writes is checked. Deterministic: cannot fail by chance."""
  pytest.importorskip('submitit')
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  record = tmp_path / 'sbatch_files'
  record.mkdir()
  (bin_dir / 'srun').write_text('#!/bin/sh\nexit 0\n')
  (bin_dir / 'sbatch').write_text(
      f'#!/bin/sh\ncp "$1" "{record}/$(ls "{record}" | wc -l).sh"\n'
      'echo "Submitted batch job 4242"\n')
  for f in ('srun', 'sbatch'):
    os.chmod(bin_dir / f, stat.S_IRWXU)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')

  jobs = grid.submit(_failing_worker, [('x',)] * 3, executor='slurm',
                     folder=str(tmp_path / 'logs' / '%j'), timeout_min=90,
                     cpus_per_worker=8, mem_gb=32, job_name='cells',
                     slurm_kwargs={'partition': 'gpu', 'array_parallelism': 2})
  assert [j.job_id for j in jobs] == ['4242_0', '4242_1', '4242_2']
  script = (record / '0.sh').read_text().splitlines()
  for line in ('#SBATCH --array=0-2%2', '#SBATCH --gpus-per-node=1',
               '#SBATCH --time=90', '#SBATCH --partition=gpu', '#SBATCH --nodes=1',
               '#SBATCH --ntasks-per-node=1', '#SBATCH --cpus-per-task=8',
               '#SBATCH --mem=32GB', '#SBATCH --job-name=cells'):
    assert line in script, (line, script)

  grid.submit(_failing_worker, [('x',)] * 2, executor='slurm',
              folder=str(tmp_path / 'logs' / '%j'), slurm_kwargs={'gres': 'gpu:a100:1'})
  script = (record / '1.sh').read_text().splitlines()
  assert '#SBATCH --gres=gpu:a100:1' in script
  assert not any(line.startswith('#SBATCH --gpus-per-node') for line in script)


def test_submit_refuses_bad_arguments_and_explains_a_missing_submitit(tmp_path,
                                                                      monkeypatch):
  """Deterministic: cannot fail by chance."""
  folder = str(tmp_path)
  with pytest.raises(ValueError, match='executor'):
    grid.submit(print, [()], executor='ray', folder=folder)
  with pytest.raises(ValueError, match='args_list'):
    grid.submit(print, [], folder=folder)
  with pytest.raises(ValueError, match='timeout_min'):
    grid.submit(print, [()], folder=folder, timeout_min=0)
  with pytest.raises(ValueError, match='local_gpus'):
    grid.submit(print, [()], executor='slurm', folder=folder, local_gpus=(0,))
  with pytest.raises(ValueError, match='slurm_kwargs'):
    grid.submit(print, [()], folder=folder, slurm_kwargs={'partition': 'gpu'})
  monkeypatch.setitem(sys.modules, 'submitit', None)  # As if not installed.
  with pytest.raises(ImportError, match=r"pip install -e '\.\[grid\]'"):
    grid.submit(print, [()], folder=folder)
