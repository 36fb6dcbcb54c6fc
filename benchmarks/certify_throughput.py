r"""Throughput of certification: noisy forward samples per second, and share of peak.

For each model (LeNet on MNIST-shaped input, ResNet-20 on CIFAR-10-shaped input, random
weights: speed does not depend on them) and each batch size, times
``rsp.smoothing.count_noisy_predictions`` (noise, forward pass, argmax and counting in
one jitted ``lax.scan``) on n noisy samples of ``--images`` test images (the best of
``--repeats`` calls after a first call that also compiles), and prints samples/s and
that rate as a fraction of the rate the machine's peak float32 matmul throughput would
allow (FLOPs per sample from XLA's cost analysis of the forward pass; the peak is
measured here with a large jitted matmul). Memory is bounded by the batch size: the
scan carries only the [images, K] counts, whatever n is.

    python benchmarks/certify_throughput.py                  # n = 100,000 (minutes)
    python benchmarks/certify_throughput.py --n=10000 --models=lenet   # quick

Beside each rsp row it times the plain loop a user would write (a jitted ``fori_loop``
of ``normal(fold_in(key, t), [batch, ...])`` noise, the forward pass and a one-hot count,
the same batch size and n) in the same process, and prints rsp's rate over it. Both are
timed twice: with glibc's allocator as it comes (``RSP_KEEP_FREED_MEMORY=0`` is set
before rsp is imported), then after ``rsp.runtime.keep_freed_memory()``, which ``import
rsp`` applies by default. The last column compares rsp as it runs by default with the
plain loop under the allocator as it comes.

Run it when the machine is otherwise idle; the load average is printed with the table.
"""

import os
import time

os.environ.setdefault('RSP_KEEP_FREED_MEMORY', '0')  # Timed both ways, below.

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

import common  # benchmarks/common.py (the script's own directory is on sys.path)
from rsp import models
from rsp import smoothing

_MODELS = flags.DEFINE_list('models', ['lenet', 'resnet20'], 'Models to time.')
_N = flags.DEFINE_integer('n', 100_000, 'Noisy samples per image (Cohen: 100,000).')
_IMAGES = flags.DEFINE_integer('images', 1, 'Images certified per timed call.')
_BATCH_SIZES = flags.DEFINE_string(
    'batch_sizes', 'lenet=250,500,1000;resnet20=128,256,500',
    'Batch sizes per model, "model=b1,b2;model=b1".')
_SIGMA = flags.DEFINE_float('sigma', 0.5, 'Noise level.')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Timed calls per setting (best is kept).')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 2048, 'Side of the peak-rate matmul.')
_ALLOCATOR = flags.DEFINE_list('allocator', ['default', 'keep_freed'],
                               "Allocator settings timed, in order ('keep_freed': "
                               'rsp.runtime.keep_freed_memory(), which cannot be undone).')


def flops_per_sample(apply_fn, variables, shape) -> float:
  """Forward-pass FLOPs per image from XLA's cost analysis (batch of 16)."""
  batch = 16
  compiled = jax.jit(apply_fn).lower(variables, jnp.zeros((batch, *shape))).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis['flops']) / batch


def parse_batch_sizes(text: str) -> dict[str, list[int]]:
  out = {}
  for part in text.split(';'):
    if part.strip():
      name, sizes = part.split('=')
      out[name.strip()] = [int(s) for s in sizes.split(',')]
  return out


def plain_loop(apply_fn, num_classes, sigma, batch_size, steps):
  """The certification loop a user would write: one noise draw per batch."""

  @jax.jit
  def run(key, variables, image):
    def body(t, counts):
      noise = jax.random.normal(jax.random.fold_in(key, t), (batch_size, *image.shape))
      predictions = jnp.argmax(apply_fn(variables, image + sigma * noise), axis=-1)
      return counts + jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32).sum(0)
    return lax.fori_loop(0, steps, body, jnp.zeros(num_classes, jnp.int32))

  return run


def best_time(fn, repeats):
  """(compile-inclusive first call, best of ``repeats`` later calls) in seconds."""
  times = []
  for r in range(1 + repeats):
    t0 = time.perf_counter()
    fn(r)
    times.append(time.perf_counter() - t0)
  return times[0], min(times[1:])


def main(argv):
  del argv
  batch_sizes = parse_batch_sizes(_BATCH_SIZES.value)
  load_before = os.getloadavg()[0]
  peak = common.peak_matmul_flops(_MATMUL_SIZE.value)
  print(f'devices: {jax.devices()}; peak float32 matmul: {peak / 1e9:.0f} GFLOP/s; '
        f'n = {_N.value}, images per call = {_IMAGES.value}, sigma = {_SIGMA.value}')
  header = ('| model | MFLOP/sample | batch | allocator | compile s | plain loop samples/s '
            '| rsp samples/s | rsp / plain | rsp / plain (default allocator) | '
            'rsp fraction of peak |')
  print(header)
  print('|' + '---|' * (header.count('|') - 1))
  plain_default = {}
  for allocator in _ALLOCATOR.value:
    common.set_allocator(allocator)
    for name in _MODELS.value:
      shape = models.input_shape(name)
      model = models.get_model(name, 10)
      variables = models.init_model(jax.random.key(0), model, shape)
      apply_fn = models.make_apply_fn(model)
      flops = flops_per_sample(apply_fn, variables, shape)
      bound = peak / flops
      images = np.asarray(jax.random.uniform(jax.random.key(2), (_IMAGES.value, *shape)))
      for batch_size in batch_sizes.get(name, [1000]):
        kw = dict(num_classes=10, sigma=_SIGMA.value, n=_N.value, batch_size=batch_size)

        def rsp_call(r):
          keys = jax.random.split(jax.random.key(10 + r), _IMAGES.value)
          counts = smoothing.count_noisy_predictions(keys, apply_fn, variables, images,
                                                     **kw)
          assert np.all(counts.sum(axis=1) == _N.value)

        steps = -(-_N.value // batch_size)
        plain = plain_loop(apply_fn, 10, np.float32(_SIGMA.value), batch_size, steps)
        image0 = jnp.asarray(images[0])

        def plain_call(r):
          for i in range(_IMAGES.value):
            jax.block_until_ready(plain(jax.random.key(100 * r + i), variables,
                                        image0))

        first, best = best_time(rsp_call, _REPEATS.value)
        _, plain_best = best_time(plain_call, _REPEATS.value)
        rate = _N.value * _IMAGES.value / best
        plain_rate = steps * batch_size * _IMAGES.value / plain_best
        plain_default.setdefault((name, batch_size), plain_rate)
        print(f'| {name} | {flops / 1e6:.2f} | {batch_size} | {allocator} | '
              f'{first - best:.1f} | {plain_rate:,.0f} | {rate:,.0f} | '
              f'{rate / plain_rate:.2f} | {rate / plain_default[name, batch_size]:.2f} | '
              f'{rate / bound:.0%} |', flush=True)
  print(f'load average (1 min) before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  app.run(main)
