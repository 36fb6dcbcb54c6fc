"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

import time

import jax
import jax.numpy as jnp


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
