r"""The whole evaluation protocol: ``rsp.fanout.run_command(config, workdir, ...)``.

    python experiments/run.py --config=rsp/configs/protocol.py \
        --workdir=/tmp/rsp/protocol

Makes the PACD poisons and the baselines, trains the victims from scratch, certifies them
on the same target-class test points and writes ``WORKDIR/results.json``,
``WORKDIR/results.md`` and ``WORKDIR/figures/``. Restarting with the same ``--workdir``
resumes: finished poisons, victims and certificates are not redone.

Fan-out over processes or machines that share the workdir (docs/cluster.md):

* ``--workers=K --executor=local|slurm``: launches K work-stealing workers through
  submitit (``rsp.fanout.launch``: the config and workdir are checked once first),
  waits for them and reports; SLURM options ``--partition``, ``--gpus_per_worker``,
  ``--timeout_min``, ``--cpus_per_worker``, ``--mem_gb``.
* ``--shard=i/N``: this process is one worker, on cells i, i + N, ... (a hand-made job
  array); every worker first takes part in making the poison sets.
* ``--report``: aggregates the finished cells into results.json / results.md without
  computing anything, and lists what is missing.

Every cell and poison set is claimed (``rsp.grid``): none is computed twice, and a dead
worker's one is taken over once ``--lease_seconds`` have passed without a heartbeat.
"""

from absl import app
from absl import flags

from rsp import fanout
from rsp import grid
from rsp import scripts

_WORKDIR = scripts.define_flags(
    config_help='Protocol config file.',
    workdir_help='Directory for poisons, victims, results (shared by all workers).')
_SHARD = flags.DEFINE_string('shard', None, 'i/N: run as worker i of N (cells i, i + N, '
                             '...) on a shared workdir.')
_REPORT = flags.DEFINE_bool('report', False, 'Aggregate the finished cells, computing '
                            'nothing; list the missing ones.')
_WORKERS = flags.DEFINE_integer('workers', 0, 'Launch this many workers through '
                                'submitit (0: run in this process).')
_EXECUTOR = flags.DEFINE_enum('executor', 'local', grid.EXECUTORS, 'Where --workers '
                              'run: processes on this machine, or a SLURM job array.')
_PARTITION = flags.DEFINE_string('partition', None, 'SLURM partition of the workers.')
_GPUS = flags.DEFINE_integer('gpus_per_worker', 1, 'Accelerators per worker (local: '
                             'the first ones visible; 0 for none).')
_TIMEOUT = flags.DEFINE_integer('timeout_min', 24 * 60, "Each worker's time limit in "
                                'minutes (SLURM --time).')
_CPUS = flags.DEFINE_integer('cpus_per_worker', None, 'CPU cores per worker (SLURM).')
_MEM = flags.DEFINE_float('mem_gb', None, 'Host memory per worker in GB (SLURM).')
_LEASE = flags.DEFINE_float('lease_seconds', 600.0, 'A claim without a heartbeat for '
                            'this long is taken over (same value for every worker).')


def main(argv):
  scripts.start(argv)
  submit = dict(timeout_min=_TIMEOUT.value, gpus_per_worker=_GPUS.value,
                cpus_per_worker=_CPUS.value, mem_gb=_MEM.value)
  if _PARTITION.value:
    submit['slurm_kwargs'] = {'partition': _PARTITION.value}
  print(fanout.run_command(
      flags.FLAGS.config, _WORKDIR.value, shard=_SHARD.value, report_only=_REPORT.value,
      workers=_WORKERS.value, executor=_EXECUTOR.value, lease_seconds=_LEASE.value,
      **submit))


if __name__ == '__main__':
  app.run(main)
