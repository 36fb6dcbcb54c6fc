"""Process-wide settings under JAX that make rsp's CPU runs faster.

* ``keep_freed_memory()``: tells glibc's allocator to serve large blocks from its heap
  and to keep freed memory there, instead of mapping fresh pages from the kernel for
  every block above 128 KiB-32 MiB and unmapping them on free. XLA CPU allocates its
  large temporaries (LeNet's first activation at a certification batch of 1,000 is
  46 MB) anew on every call of a jitted function, and each fresh mapping is zero-filled
  page by page: on a 2-core AMD EPYC a LeNet forward pass at batch 1,000 went from 63
  to 48 ms and a certification from about 18,000 to 23,000 noisy samples/s
  (benchmarks/certify_throughput.py prints both settings side by side in one process).
  The cost: memory freed by one step stays with the process (its peak resident size),
  which is what a training or certification loop reuses at the next step anyway.

  ``import rsp`` calls it once (glibc only: on other C libraries it does nothing);
  set the environment variable ``RSP_KEEP_FREED_MEMORY=0`` before importing rsp to
  leave the allocator alone. Numbers computed do not change: only where memory comes
  from.
* ``enable_compilation_cache(directory)``: JAX's persistent compilation cache, so a
  second run of the same script (or a CI run) loads its compiled steps from disk. The
  ``experiments/`` scripts turn it on (``--compilation_cache_dir``, ``''`` to turn it
  off).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap rather than fresh mappings (1 GiB).
MMAP_THRESHOLD = 1 << 30
#: The heap gives memory back to the kernel only when this much is free at its top.
TRIM_THRESHOLD = (1 << 31) - 1

ENV_VAR = 'RSP_KEEP_FREED_MEMORY'

_state = {'keep_freed_memory': None}


def _mallopt():
  name = ctypes.util.find_library('c')
  if name is None:
    return None
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return None
  # musl and macOS have no mallopt, or one that ignores these parameters.
  gnu = getattr(libc, 'gnu_get_libc_version', None)
  if gnu is None:
    return None
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  return mallopt


def keep_freed_memory() -> bool:
  """Sets glibc's mmap and trim thresholds high (see the module docstring).

  Returns whether the allocator now keeps freed memory: ``False`` where the C library is
  not glibc or refused a setting. Calling it again changes nothing.
  """
  if _state['keep_freed_memory'] is None:
    mallopt = _mallopt()
    ok = False
    if mallopt is not None:
      ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
      ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and ok
    _state['keep_freed_memory'] = ok
  return _state['keep_freed_memory']


def keeps_freed_memory() -> bool:
  """Whether ``keep_freed_memory()`` has been applied in this process."""
  return bool(_state['keep_freed_memory'])


def apply_defaults() -> None:
  """What ``import rsp`` does: ``keep_freed_memory()`` unless ``RSP_KEEP_FREED_MEMORY=0``."""
  value = os.environ.get(ENV_VAR, '1').strip().lower()
  if value not in ('0', '1', 'false', 'true', ''):
    raise ValueError(f'{ENV_VAR}={value!r} is not accepted; use 1 (the default) or 0.')
  if value in ('1', 'true', ''):
    keep_freed_memory()


def enable_compilation_cache(directory: str | os.PathLike[str], *,
                             min_compile_time_secs: float = 1.0) -> str:
  """Turns on JAX's persistent compilation cache in ``directory`` (created if missing).

  Every jitted computation that took at least ``min_compile_time_secs`` to compile is
  stored there and loaded, instead of compiled, by later processes with the same jax
  version, backend and program. The compiled code is specific to the machine's
  instruction set: do not share one directory between CPUs of different kinds. Returns
  the absolute directory.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if not isinstance(directory, (str, os.PathLike)) or not str(directory).strip():
    raise ValueError(f'directory={directory!r} must be a non-empty path.')
  if not isinstance(min_compile_time_secs, (int, float)) or min_compile_time_secs < 0:
    raise ValueError(f'min_compile_time_secs={min_compile_time_secs!r} must be a number '
                     '>= 0.')
  path = os.path.abspath(os.path.expanduser(os.fspath(directory)))
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(min_compile_time_secs))
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return path


def default_cache_dir() -> str:
  """``$RSP_CACHE_DIR/jax``, else ``$XDG_CACHE_HOME/rsp/jax``, else ``~/.cache/rsp/jax``."""
  root = os.environ.get('RSP_CACHE_DIR')
  if root:
    return os.path.join(root, 'jax')
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'rsp', 'jax')
