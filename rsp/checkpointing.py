"""Orbax checkpoints behind one small class: restore-or-initialise, save, close.

A run keeps its checkpoints in ``WORKDIR/<name>/<step>/``; each holds a pytree of arrays
(``state``) and a JSON dict (``meta``: counters, numpy-side facts). Orbax writes each step
into a temporary folder and renames it when complete, so a run killed while saving
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from absl import logging as absl_logging
import jax
import orbax.checkpoint as ocp


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
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any] | None = None) -> None:
    """Saves ``state`` (a pytree of arrays) and ``meta`` (JSON) at ``step``; blocks.

    A step already saved is never overwritten: orbax raises ``StepAlreadyExistsError``
    and the checkpoint on disk stays as it was.
    """
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
    """The latest checkpoint if there is one, else ``(init_state, init_meta)``."""
    step = self.latest_step()
    if step is None:
      return init_state, dict(init_meta or {})
    return self.restore(step, init_state)

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
