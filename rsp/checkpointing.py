"""Orbax checkpoints behind one small class: restore-or-initialise, save, close.

A run keeps its checkpoints in ``WORKDIR/<name>/<step>/``; each holds a pytree of arrays
(``state``) and a JSON dict (``meta``: counters, numpy-side facts). Orbax writes each step
into a temporary folder and renames it when complete, so a run killed while saving
leaves the previous checkpoint intact.

Odd directories fail at once with a clear ``rsp.workdir.WorkdirError`` (a file where the
checkpoint directory belongs, a read-only workdir), and ``restore_or_init`` survives a
damaged newest checkpoint (a truncated or deleted file in it): it warns, sets the step
aside as ``<step>.corrupt`` and restores the newest intact one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from absl import logging as absl_logging
import jax
import orbax.checkpoint as ocp

from rsp import workdir as workdir_lib


def _not_orbax_info(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or \
      f'{os.sep}orbax{os.sep}' not in record.pathname


def quiet_orbax_logging() -> None:
  """Hides orbax's INFO lines (about 15 per checkpoint) from absl's log handler, so that
  a script's own progress lines stay readable; orbax's warnings and errors still show.
  For scripts (``app.run``); idempotent."""
  handler = absl_logging.get_absl_handler()
  if _not_orbax_info not in handler.filters:
    handler.addFilter(_not_orbax_info)


class Checkpointer:
  """Saves and restores ``(state pytree, meta dict)`` pairs by step.

  Example::

      ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
      state, meta = ckpt.restore_or_init(init_state, {'epoch': 0})
      ...
      ckpt.save(step, state, {'epoch': epoch})
      ckpt.close()
  """

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    if max_to_keep < 1:
      raise ValueError(f'max_to_keep={max_to_keep} must be >= 1.')
    self.directory = os.path.abspath(directory)
    if not os.path.isdir(self.directory):
      # Orbax itself retries for minutes on a file where its directory belongs. (An
      # existing directory may be read-only: restoring from it works.)
      workdir_lib.ensure_directory(self.directory, name='checkpoint directory')
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))
    self._damaged: set[int] = set()  # Steps that failed to restore.

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
    """Saves ``state`` (a pytree of arrays) and ``meta`` (JSON) at ``step``; blocks.

    A step already saved is never overwritten: orbax raises ``StepAlreadyExistsError``
    and the checkpoint on disk stays as it was.
    """
    if int(step) in self._damaged:
      self._set_aside(int(step))
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(dict(meta or {}))), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the checkpoint at ``step`` into the structure (and shardings) of ``like``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out['state'], dict(out['meta'] or {})

  def restore_or_init(self, init_state: Any, init_meta: dict[str, Any] | None = None
                      ) -> tuple[Any, dict[str, Any]]:
    """The newest intact checkpoint if there is one, else ``(init_state, init_meta)``.

    A checkpoint that fails to restore (a file in it truncated or missing) is skipped
    with a warning and the next older one is tried. The damaged step stays on disk
    until this run saves that step again: ``save`` then sets it aside as
    ``<step>.corrupt`` (which orbax ignores).

    Raises:
      rsp.workdir.WorkdirError: no checkpoint there restores (the last error chained).
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return init_state, dict(init_meta or {})
    error = None
    for step in steps:
      try:
        out = self.restore(step, init_state)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises assorted errors (JSON, tensorstore, ValueError) for a damaged step.
        error = e
        self._damaged.add(int(step))
        absl_logging.warning(
            'Checkpoint step %d in %s cannot be restored (%s: %s); falling back to the '
            'newest intact checkpoint.', step, self.directory, type(e).__name__,
            (str(e).splitlines() or [''])[0][:200])
        continue
      if self._damaged:
        absl_logging.warning('Resuming from checkpoint step %d in %s instead of the '
                             'damaged step(s) %s.', step, self.directory,
                             sorted(self._damaged))
      return out
    raise workdir_lib.WorkdirError(
        f'no checkpoint in {self.directory} can be restored (steps {sorted(steps)}: '
        'damaged, or saved from another model or optimiser); delete the directory or '
        'use another workdir.') from error

  def _set_aside(self, step: int) -> None:
    """Renames the damaged step ``step`` to ``<step>.corrupt`` (``.corrupt.1`` ... if
    taken), so that it can be saved again."""
    source = os.path.join(self.directory, str(step))
    if os.path.isdir(source):
      target, n = f'{source}.corrupt', 0
      while os.path.exists(target):
        n += 1
        target = f'{source}.corrupt.{n}'
      os.replace(source, target)
      absl_logging.warning('Moved the damaged checkpoint %s to %s.', source, target)
    self._damaged.discard(step)
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
