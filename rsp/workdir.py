"""The run record: how every file of a workdir is written, read and checked on resume.

A workdir is the record of one run (train, certification, attack or protocol). This module
is the only place in rsp that writes a JSON or text file, and it owns the one "same
settings?" check that a resumed run passes before it does any work:

* **Atomic writes.** :func:`atomic_file` writes to a hidden temporary file in the same
  directory and renames it over the target (``os.replace``), so a reader, or a run
  killed mid-write, sees the old file or the new one and never a part; on any failure
  the temporary file is removed. :func:`write_json` and :func:`write_text` use it.
* **Strict JSON** (RFC 8259): numpy and jax values and ConfigDicts are converted, and
  NaN/inf become ``null``, so that tools other than Python's ``json`` read the files.
* **JSON lines** for metrics: :class:`JsonLinesWriter` appends one flushed record per
  call; :func:`trim_json_lines` drops what a killed run logged past its resume point.
* **Settings checks.** :func:`check_settings` compares the settings recorded in a
  workdir with the current ones, field by nested field, and raises
  :class:`SettingsMismatchError` listing every field that differs with its old and new
  value and what to do. Each caller names in one place the fields that may change on
  resume (``resumable``).
* **Fingerprints.** A run records what it was made *from*, not only the names:
  :func:`file_digest`, :func:`directory_digest` and :func:`array_digest` give content
  digests that the settings check compares, so a file changed under the same path is
  refused.

Example (``settings.json`` beside the resolved ``config.json``, which other tools read
as the config alone)::

  settings = {'config': config.to_dict(),
              'inputs': {'poison_file': workdir_lib.file_digest(path)}}
  workdir_lib.check_settings(os.path.join(workdir, 'settings.json'), settings,
                             resumable=('config.num_epochs',), what='training run')
  workdir_lib.write_json(os.path.join(workdir, 'settings.json'), settings)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np


class WorkdirError(ValueError):
  """A workdir, or a file in it, cannot be used as it is (the message says why)."""


class SettingsMismatchError(WorkdirError):
  """A workdir holds a run made with other settings or from other inputs."""


# ------------------------------------------------------------------------------------
# Directories.


def ensure_directory(path: str, *, name: str = 'directory') -> str:
  """Creates ``path`` (and its parents) unless it exists; returns it.

  Raises:
    WorkdirError: a file (not a directory) is where the directory belongs, or the
      directory cannot be created or written (for example a read-only workdir).
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f'{name}={path!r} is a file, but a directory belongs there; '
                       'move the file away or use another workdir.')
  try:
    os.makedirs(path, exist_ok=True)
  except (FileExistsError, NotADirectoryError) as e:
    raise WorkdirError(f'{name}={path!r} cannot be created: a file is where one of its '
                       f'parent directories belongs ({e}).') from None
  except PermissionError:
    raise WorkdirError(f'{name}={path!r} cannot be created: permission denied (is the '
                       'workdir read-only?).') from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise WorkdirError(f'{name}={path!r} is not writable (read-only workdir?); make it '
                       'writable or use another workdir.')
  return path


# ------------------------------------------------------------------------------------
# Atomic writes.


@contextlib.contextmanager
def atomic_file(path: str, mode: str = 'w') -> Iterator[Any]:
  """Opens a temporary file that replaces ``path`` when the ``with`` block succeeds.

  The temporary file lies in ``path``'s directory (so the rename is atomic on POSIX),
  is flushed and fsync'ed before the rename, and is removed if the block raises.

  Args:
    path: the file to write.
    mode: ``'w'`` (text) or ``'wb'`` (binary).

  Yields:
    The open temporary file.
  """
  if mode not in ('w', 'wb'):
    raise ValueError(f"mode={mode!r}; accepted: 'w' or 'wb'.")
  directory = os.path.dirname(os.path.abspath(path))
  ensure_directory(directory, name='directory of ' + os.path.basename(path))
  if os.path.isdir(path):
    raise WorkdirError(f'{path!r} is a directory, but a file belongs there; move it '
                       'away or use another workdir.')
  try:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.',
                               suffix='.tmp')
  except PermissionError:
    raise WorkdirError(f'cannot write {path!r}: permission denied (is the workdir '
                       'read-only?).') from None
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def to_json(obj: Any) -> Any:
  """``obj`` as plain JSON types: numpy/jax values, ConfigDicts, tuples and sets
  converted, and every non-finite float replaced by ``None``."""
  if isinstance(obj, Mapping) or hasattr(obj, 'to_dict'):
    items = obj.to_dict().items() if hasattr(obj, 'to_dict') else obj.items()
    return {str(k): to_json(v) for k, v in items}
  if isinstance(obj, (list, tuple)):
    return [to_json(v) for v in obj]
  if isinstance(obj, (set, frozenset)):
    return [to_json(v) for v in sorted(obj)]
  if isinstance(obj, (bool, str)) or obj is None:
    return obj
  if isinstance(obj, int):
    return int(obj)
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, np.generic) or hasattr(obj, '__array__'):
    value = np.asarray(obj)
    return to_json(value.item() if value.ndim == 0 else value.tolist())
  raise TypeError(f'{type(obj).__name__} is not JSON serialisable.')


def dumps(obj: Any, *, indent: int | None = 2) -> str:
  """Strict JSON text of :func:`to_json` ``(obj)``, keys sorted."""
  return json.dumps(to_json(obj), indent=indent, sort_keys=True, allow_nan=False)


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as strict JSON to ``path``, atomically (see :func:`atomic_file`).

  NaN and +-inf are written as ``null`` (read back as None;
  ``np.asarray(..., float)`` turns None into NaN again).
  """
  text = dumps(obj) + '\n'
  with atomic_file(path) as f:
    f.write(text)


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  with atomic_file(path) as f:
    f.write(text)


def read_json(path: str) -> Any:
  """Reads a JSON file.

  Raises:
    WorkdirError: the file is not valid JSON (for example truncated); the message
      names the file.
  """
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise WorkdirError(f'{path!r} is not valid JSON ({e}); the file is truncated or '
                       'corrupt. Delete it (or the workdir) to start again.') from None
  except UnicodeDecodeError:
    raise WorkdirError(f'{path!r} is not a UTF-8 JSON file.') from None


# ------------------------------------------------------------------------------------
# JSON lines.


class JsonLinesWriter:
  """Appends one JSON object per :meth:`write_scalars` call to a JSON-lines file.

  Each line is ``{"step": step, name: value, ...}``, flushed at once so that a killed
  run loses nothing written. Opening appends, so a resumed run continues the file;
  call :func:`trim_json_lines` first so that no step repeats.

  Example::

    with JsonLinesWriter(os.path.join(workdir, 'metrics.jsonl')) as w:
      w.write_scalars(100, {'loss': 0.3, 'accuracy': 0.91})
  """

  def __init__(self, path: str):
    self.path = path
    ensure_directory(os.path.dirname(os.path.abspath(path)), name='metrics directory')
    try:
      self._file = open(path, 'a')
    except PermissionError:
      raise WorkdirError(f'cannot write {path!r}: permission denied (is the workdir '
                         'read-only?).') from None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes ``scalars`` (numbers, numpy/jax scalars, or short strings) at ``step``."""
    if 'step' in scalars:
      raise ValueError('scalars must not contain the key "step"; it is the first '
                       'argument.')
    record = {'step': int(step)}
    for name, value in scalars.items():
      if isinstance(value, str):
        record[name] = value
        continue
      value = np.asarray(value)
      if value.size != 1:
        raise ValueError(f'scalars[{name!r}] has shape {value.shape}; expected a scalar.')
      record[name] = value.item()
    self._file.write(dumps(record, indent=None) + '\n')
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()

  def __enter__(self) -> JsonLinesWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_json_lines(path: str) -> list[dict[str, Any]]:
  """The records of a JSON-lines file, skipping blank lines and a partial last line.

  Raises:
    WorkdirError: a line other than the last is not valid JSON.
  """
  records = []
  with open(path) as f:
    lines = f.read().split('\n')
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:  # Killed while writing the last line.
        break
      raise WorkdirError(f'{path!r} line {i + 1} is not valid JSON; the file is '
                         'corrupt.') from None
  return records


def trim_json_lines(path: str, last_step: int) -> None:
  """Drops the records of ``path`` logged after ``last_step`` (and a line cut short by
  a kill), so that a run resumed from ``last_step`` logs every step exactly once."""
  if not os.path.exists(path):
    return
  records = read_json_lines(path)
  keep = [r for r in records if r.get('step', 0) <= last_step]
  with open(path) as f:
    intact = f.read().endswith('\n')
  if len(keep) == len(records) and (intact or os.path.getsize(path) == 0):
    return
  write_text(path, ''.join(dumps(r, indent=None) + '\n' for r in keep))


# ------------------------------------------------------------------------------------
# Fingerprints.


def _hash_file(h, path: str) -> None:
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)


def file_digest(path: str) -> str:
  """The SHA-256 of a file's bytes, as hex."""
  h = hashlib.sha256()
  _hash_file(h, path)
  return h.hexdigest()


def directory_digest(path: str) -> str:
  """The SHA-256 of a directory's files: their relative paths and bytes, in order.

  Hidden temporary files (names starting with ``.`` and ending with ``.tmp``) are
  left out, since they are not part of what was written.
  """
  h = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      if name.startswith('.') and name.endswith('.tmp'):
        continue
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode() + b'\0')
      _hash_file(h, full)
      h.update(b'\0')
  return h.hexdigest()


def array_digest(*arrays: Any) -> str:
  """The SHA-256 of arrays' dtypes, shapes and bytes (C order), as hex."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def file_fingerprint(path: str | None) -> dict[str, Any] | None:
  """``{'path', 'sha256'}`` of a file, or None for no file."""
  if not path:
    return None
  return {'path': os.path.abspath(path), 'sha256': file_digest(path)}


# ------------------------------------------------------------------------------------
# The settings check.


def _short(value: Any, width: int = 70) -> str:
  text = repr(value)
  return text if len(text) <= width else text[:width - 3] + '...'


def _matches(field: str, patterns: Iterable[str]) -> bool:
  """``field`` ('a.b.c') is ``pattern`` or lies under it; a pattern without dots also
  matches that last name at any depth ('num_epochs' matches 'victims.x.num_epochs')."""
  for p in patterns:
    if field == p or field.startswith(p + '.'):
      return True
    if '.' not in p and (field.endswith('.' + p) or f'.{p}.' in f'.{field}.'):
      return True
  return False


# Config fields added after runs were recorded, with the value that does what those runs
# did: a record without the field matches a current value equal to it (a bare name
# matches at any depth, as in ``resumable``), so older workdirs stay usable.
ADDED_FIELDS: Mapping[str, Any] = {'num_surrogates': 1, 'inner_method': '',
                                   'pretrain_epochs': 0}


def differences(recorded: Any, current: Any, *, resumable: Sequence[str] = (),
                prefix: str = '',
                added: Mapping[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
  """The nested fields where two settings differ, as ``(field, recorded, current)``.

  Both sides are compared as strict JSON (tuples and lists alike, NaN as None), so a
  setting read back from a file equals the one it was written from. Fields named in
  ``resumable`` (see :func:`check_settings`) are skipped; a field of ``added`` (default
  ``ADDED_FIELDS``) missing from ``recorded`` matches a current value equal to its entry.
  """
  added = ADDED_FIELDS if added is None else added
  recorded, current = to_json(recorded), to_json(current)
  if isinstance(recorded, dict) and isinstance(current, dict):
    out = []
    for k in sorted(set(recorded) | set(current)):
      field = f'{prefix}{k}'
      if _matches(field, resumable):
        continue
      if k not in recorded and any(_matches(field, (name,)) and to_json(value) ==
                                   current[k] for name, value in added.items()):
        continue
      out += differences(recorded.get(k), current.get(k), resumable=resumable,
                         prefix=field + '.', added=added)
    return out
  if recorded != current:
    return [(prefix[:-1] or '(all)', recorded, current)]
  return []


def _flag(field: str, prefix: str) -> str:
  """The flag that sets ``field``: settings recorded as ``{'config': ..., 'inputs': ...}``
  name ``config.seed``, which is the flag ``--config.seed`` itself."""
  return field if field.startswith(prefix + '.') else f'{prefix}.{field}'


def check_settings(path: str, current: Any, *, resumable: Sequence[str] = (),
                   what: str = 'run', override_prefix: str = 'config') -> bool:
  """Refuses to resume a run whose recorded settings differ from ``current``.

  Args:
    path: the JSON file in which the run recorded its settings. Nothing is checked if
      it does not exist yet.
    current: the settings of this run (a nested mapping or ConfigDict); fingerprints of
      its inputs belong in it, so that a changed input is refused too.
    resumable: fields that a resumed run may change because they do not change its
      result (dotted paths, or bare names matching at any depth).
    what: what the workdir holds, for the message ("training run", "attack", ...).
    override_prefix: how a flag names a field, for the suggested overrides (a field
      already under it, ``config.seed`` in ``{'config': ..., 'inputs': ...}``, is not
      prefixed twice). Fields under ``inputs`` get no suggestion: a file's content is
      not a flag.

  Returns:
    True if a record existed (and matched), False if there was none.

  Raises:
    SettingsMismatchError: listing every differing field with its recorded and current
      value, and what to do.
  """
  if not os.path.exists(path):
    return False
  if os.path.isdir(path):
    raise WorkdirError(f'{path!r} is a directory, but the {what}\'s settings file '
                       'belongs there.')
  recorded = read_json(path)
  diff = differences(recorded, current, resumable=resumable)
  if not diff:
    return True
  lines = '\n'.join(f'  {field}: {_short(old)} there, {_short(new)} now'
                    for field, old, new in diff)
  overrides = ' '.join(f'--{_flag(field, override_prefix)}={json.dumps(old)}'
                       for field, old, _ in diff
                       if not isinstance(old, (dict, list)) and old is not None
                       and not field.startswith('inputs'))
  todo = 'Use a new workdir'
  if overrides:
    todo += f', or restore the recorded settings ({overrides})'
  count = f'{len(diff)} fields differ' if len(diff) > 1 else '1 field differs'
  raise SettingsMismatchError(
      f'{os.path.dirname(os.path.abspath(path))} holds a {what} made with other '
      f'settings or inputs ({count}, recorded in {path}):\n{lines}\n'
      f'Resuming would mix two runs. {todo}.')
