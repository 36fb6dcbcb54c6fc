r"""Training throughput: images per second of ``rsp.train``'s step, per method and model.

For each model and training method, builds the step exactly as ``rsp.train.train`` does
(the method's hyperparameters and batch size from the training config files, data
parallel over the local devices, donated state), then times ``--steps`` steps of the real
loop (host batch gathering by key, ``device_put`` onto the batch sharding, the jitted
step) after one step that also compiles. Prints ms per step and training images per
second (clean images; MACER and SmoothAdv see more noisy copies per image), the compile
time, the step's FLOPs (XLA's cost analysis) and the FLOP rate achieved as a share of the
peak float32 matmul rate measured just before. Timings move with other load on the
machine; the matmul peak measured beside them says how much of it the run had, and the
share of it is the number to compare across runs.

    python benchmarks/train_throughput.py --quick        # about 5 min on 2 CPU cores
    python benchmarks/train_throughput.py                # + the transfer models
    python benchmarks/train_throughput.py --models=lenet --methods=gaussian --steps=50

Beside every Gaussian-augmentation row it times the plain loop a user would write, in the
same process: a jitted step (the same flax model, ``optax.adam`` at the config's learning
rate, one Gaussian noise draw per image, mean cross-entropy) called in a Python loop on
batches indexed from numpy arrays; the column "rsp / plain" is rsp's images/s over it.
Each table is timed with glibc's allocator as it comes (``RSP_KEEP_FREED_MEMORY=0`` is set
before rsp is imported) and then after ``rsp.runtime.keep_freed_memory()``, which ``import
rsp`` applies by default (``--allocator``).

Weights are random: speed does not depend on them.
"""

import os
import time

os.environ.setdefault('RSP_KEEP_FREED_MEMORY', '0')  # Timed both ways, below.

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

import common  # benchmarks/common.py (the script's own directory is on sys.path)
from rsp import data
from rsp import models
from rsp import train
from rsp.configs import train_cifar10
from rsp.configs import train_mnist

_QUICK = flags.DEFINE_bool('quick', False, 'Fewer steps; lenet and resnet20 only.')
_MODELS = flags.DEFINE_list('models', None, 'Models (default: lenet, resnet20 and, '
                            'without --quick, the transfer models).')
_METHODS = flags.DEFINE_list('methods', ['standard', 'gaussian', 'macer', 'smoothadv'],
                             'Training methods.')
_MODE = flags.DEFINE_enum('mode', 'paper', ['paper', 'small'],
                          "The configs' mode whose hyperparameters and batch sizes are "
                          'timed (small: the embedded-MNIST settings, e.g. MACER k=4).')
_STEPS = flags.DEFINE_integer('steps', None, 'Timed steps per setting (default 10, '
                              '--quick 3).')
_MAX_SECONDS = flags.DEFINE_float('max_seconds', None, 'Stop timing a setting after '
                                  'this long (at least one step; default 60, --quick 8).')
_ALLOCATOR = flags.DEFINE_list('allocator', ['default', 'keep_freed'],
                               "Allocator settings timed, in order ('keep_freed': "
                               'rsp.runtime.keep_freed_memory(), which cannot be undone).')
_TRANSFER_METHODS = ('gaussian',)  # The transfer models are timed briefly.


def config_for(model: str, method: str, mode: str):
  """The training config whose settings are timed for ``model``."""
  shape = models.input_shape(model)
  module = train_mnist if shape == (28, 28, 1) else train_cifar10
  config = module.get_config(method if mode == 'paper' else f'{method},{mode}')
  config.model = model
  return config


def time_setting(config, steps: int, max_seconds: float) -> dict:
  """Compile time and ms per step of the real loop for ``config``."""
  info = data.info(config.dataset)
  model = models.get_model(config.model, info['num_classes'],
                           **dict(config.get('model_kwargs', {})))
  dynamic = ('epsilon',) if config.method == 'smoothadv' else ()
  hparams = {k: v for k, v in dict(config.loss).items() if k not in dynamic}
  tx = train._optimizer(train._optimizer_spec(config))  # pylint: disable=protected-access
  step_fn = train._train_step(  # pylint: disable=protected-access
      model, config.method, train._hashable(hparams), tx,  # pylint: disable=protected-access
      bool(config.get('augment', False)), dynamic)
  batch_sharding, replicated = train._data_sharding()  # pylint: disable=protected-access
  state = train._init_state(jax.random.key(0), model, tx, info['shape'], replicated)  # pylint: disable=protected-access
  b = config.batch_size
  rng = np.random.default_rng(0)
  ds = {'image': rng.random((b * (steps + 1), *info['shape']), dtype=np.float32),
        'label': rng.integers(0, info['num_classes'], b * (steps + 1)).astype(np.int32)}
  extra = {'epsilon': jnp.float32(config.loss.epsilon)} if dynamic else {}
  batches = data.epoch_batches(jax.random.key(1), ds, b)
  noise_key = jax.random.key(2)

  first = jax.device_put(next(batches), batch_sharding)
  flops = float(step_fn.lower(state, first, noise_key, extra).cost_analysis()['flops'])
  t0 = time.perf_counter()
  state, m = step_fn(state, first, jax.random.fold_in(noise_key, 0), extra)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  # The machine's current matmul rate, beside the timing.
  peak = common.peak_matmul_flops(1024) / 1e9
  t0, c0 = time.perf_counter(), time.process_time()
  done = 0
  for i, batch in enumerate(batches):
    state, m = step_fn(state, jax.device_put(batch, batch_sharding),
                       jax.random.fold_in(noise_key, i + 1), extra)
    done += 1
    if done == 1:  # Slow settings time fewer steps: as many as fit in max_seconds.
      jax.block_until_ready(m)
      steps = min(steps, max(1, int(max_seconds / (time.perf_counter() - t0))))
    if done == steps:
      break
  jax.block_until_ready((state, m))
  wall = (time.perf_counter() - t0) / done
  cpu = (time.process_time() - c0) / done
  return {'steps': done, 'batch': b, 'compile_s': compile_s, 'ms': 1e3 * wall, 'cpu_ms': 1e3 * cpu,
          'images_per_s': b / wall, 'gflop': flops / 1e9, 'gflops': flops / wall / 1e9,
          'peak': peak}


def time_plain_loop(config, steps: int) -> dict:
  """ms per step of the plain Gaussian-augmentation loop for ``config``'s model."""
  info = data.info(config.dataset)
  model = models.get_model(config.model, info['num_classes'])
  sigma = float(config.loss.sigma)
  tx = optax.adam(float(config.learning_rate))
  variables = models.init_model(jax.random.key(0), model, info['shape'])
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  opt_state = tx.init(params)

  @jax.jit
  def step(params, state, opt_state, images, labels, key):
    def loss(params):
      noisy = images + sigma * jax.random.normal(key, images.shape)
      if state:
        logits, new_state = model.apply({'params': params, **state}, noisy, train=True,
                                        mutable=list(state))
      else:
        logits, new_state = model.apply({'params': params}, noisy, train=True), state
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return ce, new_state
    grads, new_state = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), dict(new_state), opt_state

  b = config.batch_size
  rng = np.random.default_rng(0)
  images = rng.random((b * (steps + 1), *info['shape']), dtype=np.float32)
  labels = rng.integers(0, info['num_classes'], b * (steps + 1)).astype(np.int32)
  order = rng.permutation(len(labels))
  key = jax.random.key(2)
  def batch(i):
    idx = order[i * b:(i + 1) * b]
    return images[idx], labels[idx]
  params, state, opt_state = step(params, state, opt_state, *batch(0), key)
  jax.block_until_ready(params)
  t0 = time.perf_counter()
  for i in range(1, steps + 1):
    params, state, opt_state = step(params, state, opt_state, *batch(i),
                                    jax.random.fold_in(key, i))
  jax.block_until_ready(params)
  wall = (time.perf_counter() - t0) / steps
  return {'ms': 1e3 * wall, 'images_per_s': b / wall}


def describe(config) -> str:
  loss = dict(config.loss)
  keys = [k for k in ('sigma', 'num_noise', 'num_steps', 'pgd') if k in loss]
  return ' '.join(f'{k}={loss[k]}' for k in keys)


def main(argv):
  del argv
  quick = _QUICK.value
  steps = _STEPS.value or (3 if quick else 10)
  max_seconds = _MAX_SECONDS.value or (8.0 if quick else 60.0)
  names = _MODELS.value or (['lenet', 'resnet20'] if quick else list(models.MODELS))
  load_before = os.getloadavg()
  peak = common.peak_matmul_flops(1024) / 1e9
  print(f'devices: {jax.devices()}; jax {jax.__version__}; XLA_FLAGS='
        f'{os.environ.get("XLA_FLAGS", "")!r}')
  print(f'load average before: {load_before[0]:.2f} {load_before[1]:.2f} '
        f'{load_before[2]:.2f}; peak float32 matmul (1024^3): {peak:.0f} GFLOP/s')
  print(f'up to {steps} timed steps (and {max_seconds:.0f} s) per row, {_MODE.value} '
        'configs\n')
  header = ('| allocator | model | method | settings | batch | steps | compile s | ms/step | '
            'CPU ms/step | images/s | plain loop images/s | rsp / plain | GFLOP/step | '
            'GFLOP/s | % of matmul peak |')
  for allocator in _ALLOCATOR.value:
    common.set_allocator(allocator)
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    for name in names:
      transfer = name not in ('lenet', 'resnet20')
      for method in _METHODS.value:
        if transfer and method not in _TRANSFER_METHODS:
          continue
        config = config_for(name, method, _MODE.value)
        r = time_setting(config, steps, max_seconds)
        plain, ratio = '-', '-'
        if method == 'gaussian':
          p = time_plain_loop(config, r['steps'])
          plain, ratio = f'{p["images_per_s"]:,.0f}', f'{r["images_per_s"] / p["images_per_s"]:.2f}'
        print(f'| {allocator} | {name} | {method} | {describe(config)} | {r["batch"]} | '
              f'{r["steps"]} | {r["compile_s"]:.1f} | {r["ms"]:.0f} | {r["cpu_ms"]:.0f} | '
              f'{r["images_per_s"]:,.0f} | {plain} | {ratio} | {r["gflop"]:.2f} | '
              f'{r["gflops"]:.0f} | {100 * r["gflops"] / r["peak"]:.0f}% |', flush=True)
    print()
  load_after = os.getloadavg()
  print(f'\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} '
        f'{load_after[2]:.2f}; peak matmul after: '
        f'{common.peak_matmul_flops(1024) / 1e9:.0f} GFLOP/s')


if __name__ == '__main__':
  app.run(main)
