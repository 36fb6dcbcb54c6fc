r"""Time and memory of one hypergradient (rsp.bilevel) per method and iteration count.

For each model (LeNet on MNIST-shaped input, ResNet-20 with BatchNorm on CIFAR-shaped
input; random weights and images: the cost does not depend on them) this builds the PACD
problem shape: the inner loss is the mean cross-entropy on Gaussian-noised clean and poison
images (``--clean`` + ``--poison`` per batch, poisons u labelled with the target class),
the outer loss the cross-entropy on ``--val`` noisy validation images (evaluation mode).
It then times one jitted hypergradient d outer / d u for

* ``implicit_hypergrad`` with 'cg', 'approxgrad' and 'neumann' at each solver iteration
  count in ``--iterations``, the solver loop unrolled (``unroll=True``) and/or rolled
  (``--solver_loops``), and 'identity' (no solve);
* ``unrolled_hypergrad`` with the inner Adam (lr 1e-3, eps_root 1e-8) at each step count in
  ``--steps``, as a rolled ``lax.scan`` or fully unrolled (``unroll=True``), each with and
  without ``remat=True``;

and a plain inner gradient as the unit ("x grad" = time / time of one inner gradient).
Time is the best of ``--repeats`` calls after compilation. Memory is XLA's own account of
the compiled program (``compiled.memory_analysis().temp_size_in_bytes``: the scratch the
program needs beyond its arguments and outputs); on GPU the process's
``peak_bytes_in_use`` (monotone over the run) is printed too.

    python benchmarks/hypergrad.py            # full grid (an hour or more on 2 CPU cores)
    python benchmarks/hypergrad.py --quick    # iterations 1,5; steps 1,5; unrolled loops
                                              # only (about 15 min on 2 CPU cores)
    python benchmarks/hypergrad.py --models=lenet --solver_loops=loop \
        --unrolled_variants=scan,remat --iterations=1,5 --steps=1,5   # rolled loops

On XLA CPU, rolled loops (``fori_loop``/``lax.scan``) of convolutional second-order work
ran 4-14x slower than the same work unrolled; on GPU compare both. ``remat`` cut the
rolled scan's scratch memory (LeNet, 5 steps: 228 to 59 MiB) but not the unrolled one's.

ResNet-20 threads its BatchNorm statistics through the inner steps (``has_aux=True``);
the implicit hypergradient holds them fixed. Run it on an otherwise idle machine; the
load average is printed with the table.
"""

import functools
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from rsp import bilevel
from rsp import models

_MODELS = flags.DEFINE_list('models', ['lenet', 'resnet20'], 'Models to time.')
_QUICK = flags.DEFINE_bool('quick', False,
                           'Short run: iterations 1,5 and steps 1,5, static loops only.')
_ITERATIONS = flags.DEFINE_list('iterations', ['1', '5', '10', '20'],
                                'Solver iterations for the implicit methods.')
_STEPS = flags.DEFINE_list('steps', ['1', '5', '10'], 'Inner steps for the unrolled method.')
_SOLVER_LOOPS = flags.DEFINE_list(
    'solver_loops', ['static', 'loop'],
    'Implicit solver loops: loop (rolled fori_loop), static (unroll=True).')
_VARIANTS = flags.DEFINE_list(
    'unrolled_variants', ['scan', 'remat', 'static', 'static+remat'],
    'Unrolled variants: scan (rolled lax.scan), remat (scan + checkpoint), static '
    '(unroll=True), static+remat.')
_BATCH = flags.DEFINE_string(
    'batch', 'lenet=100,20,100;resnet20=32,8,20',
    'Per model "name=clean,poison,val" batch sizes.')
_SIGMA = flags.DEFINE_float('sigma', 0.5, 'Gaussian noise level of the inputs.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per setting (best is kept).')

_TARGET = 8
_NUM_CLASSES = 10


def parse_batch(text: str) -> dict[str, tuple[int, int, int]]:
  out = {}
  for part in text.split(';'):
    if part.strip():
      name, sizes = part.split('=')
      clean, poison, val = (int(s) for s in sizes.split(','))
      out[name.strip()] = (clean, poison, val)
  return out


def make_problem(name: str, clean: int, poison: int, val: int, sigma: float):
  """(outer_fn, inner_fn, params, u, state, has_aux) for model ``name``."""
  model = models.get_model(name, _NUM_CLASSES)
  shape = models.input_shape(name)
  keys = jax.random.split(jax.random.key(0), 8)
  params, state = models.split_variables(models.init_model(keys[0], model, shape))
  apply_fn = models.make_train_apply_fn(model)
  has_aux = bool(state)
  x_clean = jax.random.uniform(keys[1], (clean, *shape))
  y_clean = jax.random.randint(keys[2], (clean,), 0, _NUM_CLASSES)
  u = jax.random.uniform(keys[3], (poison, *shape))  # the poisons
  y = jnp.concatenate([y_clean, jnp.full((poison,), _TARGET)])
  x_val = jax.random.uniform(keys[4], (val, *shape)) + sigma * jax.random.normal(
      keys[5], (val, *shape))
  y_val = jnp.full((val,), _TARGET)
  noise_key = keys[6]

  def inner_with_state(w, v, model_state, *, step=0):
    x = jnp.concatenate([x_clean, v])
    x = x + sigma * jax.random.normal(jax.random.fold_in(noise_key, step), x.shape)
    logits, new_state = apply_fn(w, model_state, x, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, new_state

  def outer_with_state(w, v, model_state):
    del v  # the outer loss reaches the poisons only through w
    logits, _ = apply_fn(w, model_state, x_val, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_val).mean()

  if has_aux:
    return outer_with_state, inner_with_state, params, u, state, True
  inner = lambda w, v, *, step=0: inner_with_state(w, v, {}, step=step)[0]
  outer = lambda w, v: outer_with_state(w, v, {})
  return outer, inner, params, u, None, False


def measure(fn, *args, repeats: int):
  """(compile seconds, best run seconds, temp MiB) of jitted ``fn(*args)``."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  analysis = compiled.memory_analysis()
  temp_mib = (analysis.temp_size_in_bytes / 2**20) if analysis is not None else float('nan')
  jax.block_until_ready(compiled(*args))
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    best = min(best, time.perf_counter() - t0)
  flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(out)])
  if not bool(jnp.all(jnp.isfinite(flat))):
    raise FloatingPointError(f'non-finite hypergradient from {fn}')
  return compile_s, best, temp_mib


def gpu_peak_mib() -> str:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return f'{peak / 2**20:.0f}' if peak is not None else '-'


def main(argv):
  del argv
  iterations = [1, 5] if _QUICK.value else [int(i) for i in _ITERATIONS.value]
  steps = [1, 5] if _QUICK.value else [int(s) for s in _STEPS.value]
  solver_loops = ['static'] if _QUICK.value else _SOLVER_LOOPS.value
  variants = ['static', 'static+remat'] if _QUICK.value else _VARIANTS.value
  batches = parse_batch(_BATCH.value)
  on_gpu = jax.devices()[0].platform == 'gpu'
  load_before = os.getloadavg()[0]
  print(f'devices: {jax.devices()}; sigma = {_SIGMA.value}; best of {_REPEATS.value}')
  header = ('| model | batch c+p/val | method | iters/steps | compile s | run ms | x grad | '
            'temp MiB |' + (' peak MiB (process) |' if on_gpu else ''))
  print(header)
  print('|' + '---|' * (header.count('|') - 1), flush=True)

  for name in _MODELS.value:
    clean, poison, val = batches[name]
    outer, inner, params, u, state, has_aux = make_problem(name, clean, poison, val,
                                                           _SIGMA.value)
    batch = f'{clean}+{poison}/{val}'

    def row(method, count, fn, *args, unit=None):
      compile_s, best, temp = measure(fn, *args, repeats=_REPEATS.value)
      ratio = '1.0' if unit is None else f'{best / unit:.1f}'
      extra = f' {gpu_peak_mib()} |' if on_gpu else ''
      print(f'| {name} | {batch} | {method} | {count} | {compile_s:.1f} | {best * 1e3:.1f} | '
            f'{ratio} | {temp:.1f} |{extra}', flush=True)
      return best

    # The unit: one gradient of the inner loss with respect to the parameters.
    if has_aux:
      grad_fn = lambda w, v, s: jax.grad(lambda p: inner(p, v, s)[0])(w)
      unit = row('inner grad (unit)', '-', grad_fn, params, u, state)
    else:
      unit = row('inner grad (unit)', '-', jax.grad(inner), params, u)

    state_kw = dict(has_aux=True) if has_aux else {}
    state_args = (state,) if has_aux else ()

    def implicit(method, maxiter, loop='static'):
      fn = functools.partial(bilevel.implicit_hypergrad, outer, inner, method=method,
                             damping=1e-3, maxiter=maxiter, tol=0.0, learning_rate=1e-2,
                             unroll=(loop == 'static'), **state_kw)
      if has_aux:
        return lambda w, v, s: fn(w, v, state=s)
      return fn

    row('implicit identity', '-', implicit('identity', 1), params, u, *state_args,
        unit=unit)
    for loop in solver_loops:
      for method in ('cg', 'approxgrad', 'neumann'):
        for maxiter in iterations:
          row(f'implicit {method} ({loop})', maxiter, implicit(method, maxiter, loop),
              params, u, *state_args, unit=unit)

    optimizer = optax.adam(1e-3, eps_root=1e-8)
    options = {'scan': dict(), 'remat': dict(remat=True), 'static': dict(unroll=True),
               'static+remat': dict(unroll=True, remat=True)}
    for variant in variants:
      for num_steps in steps:
        fn = functools.partial(bilevel.unrolled_hypergrad, outer, inner,
                               num_steps=num_steps, optimizer=optimizer, pass_step=True,
                               **state_kw, **options[variant])
        call = (lambda w, v, s, fn=fn: fn(w, v, state=s)) if has_aux else fn
        row(f'unrolled {variant}', num_steps, call, params, u, *state_args, unit=unit)

  print(f'load average (1 min) before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}; '
        f'cores: {os.cpu_count()}')


if __name__ == '__main__':
  app.run(main)
