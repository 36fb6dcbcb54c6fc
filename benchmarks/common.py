"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

import time

import jax
import jax.numpy as jnp

from rsp import runtime

ALLOCATORS = ('default', 'keep_freed')


def set_allocator(name: str) -> None:
  """Switches to allocator setting ``name`` for what is timed next: 'default' (glibc as
  it comes: the scripts set ``RSP_KEEP_FREED_MEMORY=0`` before importing rsp) or
  'keep_freed' (``rsp.runtime.keep_freed_memory()``, which cannot be undone, so it
  comes last)."""
  if name not in ALLOCATORS:
    raise ValueError(f'--allocator has {name!r}; accepted: {", ".join(ALLOCATORS)}.')
  if name == 'default' and runtime.keeps_freed_memory():
    raise ValueError("--allocator: 'default' cannot follow 'keep_freed' (or run the "
                     'script with RSP_KEEP_FREED_MEMORY=0).')
  if name == 'keep_freed' and not runtime.keep_freed_memory():
    print('(keep_freed_memory is not available here: not glibc)')


def peak_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
  """Best float32 rate of one jitted ``size`` x ``size`` matmul through JAX, in FLOP/s.

  The reference a benchmark's "fraction of peak" is measured against.
  """
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * size**3 / best
