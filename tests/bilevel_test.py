"""Tests of rsp.bilevel: hypergradients against closed forms and finite differences.

Every test is deterministic (fixed data, no sampling that could fail by chance): a failure
means a bug or a numerical regression, never bad luck. The reference numbers are
  * ridge regression, where w*(u) has a closed form and its gradient is exact;
  * central finite differences in float64 (``jax.enable_x64``) of the true bilevel map
    u -> outer(w*(u)) for a small tanh MLP, w* found by damped Newton steps;
  * central finite differences and an explicit Python loop for the unrolled map.
Tolerances come from the numerics: float32 comparisons of different XLA programs allow
the rounding of the operations involved (eps = 2^-23 per operation, times the magnitude
of what is summed); the finite-difference checks allow their error budget (truncation,
float64 rounding, inexact inner minima), computed from the numbers of each run.
The problems are tiny; compiling dominates (about 45 s of CPU time in all).
"""

import functools

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsp import bilevel

# Compiling dominates these tests; XLA's optimisations buy nothing at these sizes.
jax.config.update('jax_disable_most_optimizations', True)

F32_EPS = float(np.finfo(np.float32).eps)  # 2^-23: relative spacing of float32 numbers.
F64_EPS = float(np.finfo(np.float64).eps)  # 2^-52.


def flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def jitted(hypergrad_fn, outer, inner, params, u, **kwargs):
  """hypergrad_fn(outer, inner, params, u, **kwargs) under jit (pytree options traced)."""
  dynamic = {k: kwargs.pop(k) for k in ('init', 'solver_state', 'state') if k in kwargs}
  fn = jax.jit(functools.partial(hypergrad_fn, outer, inner, **kwargs))
  return fn(params, u, **dynamic)


def rel_err(a, b):
  a, b = flat(a), flat(b)
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def central_difference(value, h):
  """The central difference of ``s -> value(s)[0]`` at 0 and a bound on its error.

  ``value(s)`` returns ``(f(s), err(s))``, ``err(s)`` a bound on the absolute error of the
  computed ``f(s)`` (rounding, an inexact inner minimum). The bound on the error of
  ``fd(h) = (f(h) - f(-h)) / 2h`` is the propagated value error ``(err(h) + err(-h)) / 2h``
  plus the truncation error: ``fd(h) = f'(0) + c h^2 + O(h^4)``, so
  ``c h^2 = (fd(2h) - fd(h)) / 3 + O(h^4)`` (Richardson), counted twice to cover the
  O(h^4) rest and the value errors that the estimate itself carries.
  """
  (f_plus, err_plus), (f_minus, err_minus) = value(h), value(-h)
  (f_plus2, _), (f_minus2, _) = value(2 * h), value(-2 * h)
  fd = (f_plus - f_minus) / (2 * h)
  fd2 = (f_plus2 - f_minus2) / (4 * h)
  truncation = 2 * abs(fd2 - fd) / 3
  return fd, truncation + (err_plus + err_minus) / (2 * h)


# ----------------------------------------------------------------------------------------
# Ridge regression: inner 0.5 ||X w - y||^2 + 0.5 lam ||w||^2, outer 0.5 ||Xv w - yv||^2,
# u = {'X': X, 'y': y} (the training set is the poison), w*(u) = (X'X + lam I)^-1 X'y.

LAM = 1.0


def ridge_data(dtype=jnp.float32):
  """Training inputs and targets, validation inputs and targets of the ridge problem."""
  rng = np.random.default_rng(0)
  return tuple(jnp.asarray(rng.normal(size=shape), dtype)
               for shape in ((40, 5), (40,), (20, 5), (20,)))


def ridge_problem(dtype=jnp.float32):
  x, y, x_val, y_val = ridge_data(dtype)

  def inner(w, u):
    return 0.5 * jnp.sum((u['X'] @ w - u['y']) ** 2) + 0.5 * LAM * jnp.sum(w ** 2)

  def outer(w, u):
    del u
    return 0.5 * jnp.sum((x_val @ w - y_val) ** 2)

  def w_star(u):
    a = u['X'].T @ u['X'] + LAM * jnp.eye(5, dtype=dtype)
    return jnp.linalg.solve(a, u['X'].T @ u['y'])

  u = {'X': x, 'y': y}
  exact = jax.grad(lambda v: outer(w_star(v), v))(u)
  return inner, outer, w_star(u), u, exact


def test_cg_matches_closed_form_ridge():
  """Deterministic. CG converges in 5 iterations on this 5-d problem (damping 0).

  ``aux.value`` (inside the jitted hypergradient) and ``outer(w, u)`` (eager) are the same
  sum of squares computed by two XLA programs: each residual r_i = x_i.w - y_i rounds up
  to (d + 1) times relative to s_i = sum_j |x_ij w_j| + |y_i|, and the sum of n squares n
  times more, so each differs from the exact value by at most
  eps ((d + 2) sum_i |r_i| s_i + (n + 2) F) (first order in eps; a worst case, so a
  spurious failure is impossible).
  """
  inner, outer, w, u, exact = ridge_problem()
  grad, aux = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, method='cg',
                     damping=0.0, maxiter=20, tol=1e-7, return_aux=True)
  assert jax.tree.structure(grad) == jax.tree.structure(u)
  assert rel_err(grad, exact) < 1e-4
  assert float(aux.residual) < 1e-4
  _, _, x_val, y_val = (np.asarray(a, np.float64) for a in ridge_data())
  w64 = np.asarray(w, np.float64)
  residuals = x_val @ w64 - y_val
  scale = np.abs(x_val) @ np.abs(w64) + np.abs(y_val)
  n, d = x_val.shape
  bound = F32_EPS * ((d + 2) * np.sum(np.abs(residuals) * scale)
                     + (n + 2) * 0.5 * np.sum(residuals ** 2))
  assert abs(float(aux.value) - float(outer(w, u))) <= 2 * bound


def test_cg_damping_is_exact_ridge():
  """Deterministic. With u = y the hypergradient is X (H + d I)^-1 f_w exactly."""
  inner, outer, w, u, _ = ridge_problem()
  x = u['X']
  inner_y = lambda w_, y: inner(w_, {'X': x, 'y': y})
  outer_y = lambda w_, y: outer(w_, {'X': x, 'y': y})
  damping = 0.5
  hessian = x.T @ x + (LAM + damping) * jnp.eye(5)
  expected = x @ jnp.linalg.solve(hessian, jax.grad(outer_y)(w, u['y']))
  grad = jitted(bilevel.implicit_hypergrad, outer_y, inner_y, w, u['y'], method='cg',
                damping=damping, maxiter=20, tol=1e-7)
  assert rel_err(grad, expected) < 1e-4


@pytest.mark.parametrize('method,kwargs', [
    ('approxgrad', dict(maxiter=1500, learning_rate=1e-2)),
    # lambda_max(H) is about 55, so the series step must stay below 2/55.
    ('neumann', dict(maxiter=300, learning_rate=1e-2)),
])
def test_iterative_solvers_match_closed_form_ridge(method, kwargs):
  """Deterministic. Enough iterations to converge well below the 1e-2 tolerance."""
  inner, outer, w, u, exact = ridge_problem()
  grad, aux = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, method=method,
                     damping=0.0, return_aux=True, **kwargs)
  assert rel_err(grad, exact) < 1e-2
  assert float(aux.residual) < 1e-2


def test_unrolled_matches_closed_form_ridge():
  """Deterministic. Gradient descent contracts at rate 1 - lr * lambda_min = 0.8."""
  inner, outer, _, u, exact = ridge_problem()
  grad, aux = jitted(bilevel.unrolled_hypergrad, outer, inner, jnp.zeros(5), u,
                     num_steps=200, learning_rate=1e-2, return_aux=True)
  assert rel_err(grad, exact) < 1e-2
  assert aux.inner_losses.shape == (200,)
  assert aux.state is None


def test_identity_is_small_step_unrolled():
  """Deterministic (float64). p = f_w equals 1/lr times the one-step unrolled gradient
  as lr -> 0 (outer independent of u), the gradient-alignment reading of 'identity'."""
  with jax.enable_x64(True):
    inner, outer, w, u, _ = ridge_problem(jnp.float64)
    grad = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, method='identity')
    lr = 1e-7
    one_step = jitted(bilevel.unrolled_hypergrad, outer, inner, w, u, num_steps=1,
                      learning_rate=lr)
    expected = jax.tree.map(lambda g: g / lr, one_step)
    assert rel_err(grad, expected) < 1e-5


@pytest.mark.parametrize('method', ['neumann', 'approxgrad'])
def test_warm_start_continues_the_iteration(method):
  """Deterministic. 2K steps from zero == K steps, then K more from (solution, state)."""
  inner, outer, w, u, _ = ridge_problem()
  kw = dict(method=method, damping=1e-3, learning_rate=1e-2, return_aux=True)
  full, full_aux = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, maxiter=20, **kw)
  _, half = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, maxiter=10, **kw)
  resumed, resumed_aux = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, maxiter=10,
                                init=half.solution, solver_state=half.solver_state, **kw)
  assert rel_err(resumed_aux.solution, full_aux.solution) < 1e-5
  assert rel_err(resumed, full) < 1e-5
  if method == 'approxgrad':
    assert int(resumed_aux.solver_state[0].count) == 20


def test_cg_warm_start_at_solution_needs_one_iteration():
  """Deterministic. Started at the exact p, one CG iteration keeps it."""
  inner, outer, w, u, exact = ridge_problem()
  kw = dict(method='cg', damping=0.0, tol=1e-7, return_aux=True)
  _, aux = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, maxiter=20, **kw)
  grad, aux1 = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, maxiter=1,
                      init=aux.solution, **kw)
  assert rel_err(grad, exact) < 1e-4
  assert float(aux1.residual) < 1e-4


def test_cg_iterates_match_jax_scipy_cg():
  """Deterministic. Three (unconverged) iterations equal jax.scipy's CG on the dense
  damped Hessian, so the fixed-count, unrollable CG is the textbook algorithm."""
  inner, outer, w, u, _ = ridge_problem()
  damping = 0.3
  hessian = jax.hessian(inner)(w, u) + damping * jnp.eye(5)
  f_w = jax.grad(outer)(w, u)
  expected, _ = jax.scipy.sparse.linalg.cg(lambda v: hessian @ v, f_w, tol=0.0, maxiter=3)
  for unroll in (1, True):
    _, aux = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, method='cg',
                    damping=damping, maxiter=3, tol=0.0, unroll=unroll, return_aux=True)
    assert rel_err(aux.solution, expected) < 1e-5
  assert float(aux.residual) > 1e-3  # really unconverged: the test compares iterates


# ----------------------------------------------------------------------------------------
# A small tanh MLP (2 -> 8 -> 3): u are 4 poison input points with label 2.


def mlp_apply(params, x):
  h = jnp.tanh(x @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2']


def cross_entropy(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def mlp_problem(dtype):
  rng = np.random.default_rng(1)
  x_clean = jnp.asarray(rng.normal(size=(16, 2)), dtype)
  x_val = jnp.asarray(rng.normal(size=(8, 2)), dtype)
  # Labels from a linear teacher, so the inner problem has a well-conditioned minimum.
  teacher = rng.normal(size=(2, 3))
  y_clean = jnp.asarray(np.argmax(np.asarray(x_clean) @ teacher, axis=1), jnp.int32)
  y_val = jnp.asarray(np.argmax(np.asarray(x_val) @ teacher, axis=1), jnp.int32)
  u = {'poison': jnp.asarray(rng.normal(size=(4, 2)), dtype)}
  y_poison = jnp.full((4,), 2, jnp.int32)
  params = {
      'w1': jnp.asarray(rng.normal(size=(2, 8)) * 0.5, dtype),
      'b1': jnp.zeros(8, dtype),
      'w2': jnp.asarray(rng.normal(size=(8, 3)) * 0.5, dtype),
      'b2': jnp.zeros(3, dtype),
  }

  def inner(w, v):
    x = jnp.concatenate([x_clean, v['poison']])
    y = jnp.concatenate([y_clean, y_poison])
    l2 = sum(jnp.sum(p ** 2) for p in jax.tree.leaves(w))
    return cross_entropy(mlp_apply(w, x), y) + 0.5 * 0.1 * l2

  def outer(w, v):
    del v
    return cross_entropy(mlp_apply(w, x_val), y_val)

  return inner, outer, params, u


def make_newton_minimise(inner, params):
  """A minimiser of inner(., u) by Levenberg-Marquardt-damped Newton steps (float64).

  A step (H + mu I)^-1 g is taken if it lowers the loss, or if it lowers the gradient norm
  without raising the loss beyond its rounding (4 eps |loss|): near the minimum a step
  lowers the loss by about g' H^-1 g / 2, below the loss's float64 rounding once |g| is
  about 1e-9 here, and a comparison of rounded losses would reject good steps at random.
  mu shrinks after a step and grows after a refusal, so far from the minimum this is
  gradient descent and near it Newton's method, which converges quadratically down to the
  rounding floor of the gradient. The model is tiny: the Hessian is dense.

  ``minimise(start, u, num_steps)`` returns ``(w, grad_norm, eigenvalues, floor)``: the
  minimiser, the norm of the gradient there, the Hessian's eigenvalues and
  ``floor = eps ||H||_2 ||w||``, the change of the gradient when w moves by its own
  rounding: no float64 iterate can be trusted to a smaller gradient norm.
  """
  _, unravel = ravel_pytree(params)
  flat_loss = lambda z, u: inner(unravel(z), u)
  loss, grad, hess = (jax.jit(f) for f in
                      (flat_loss, jax.grad(flat_loss), jax.hessian(flat_loss)))

  def minimise(start, u, num_steps):
    vec = ravel_pytree(start)[0]
    mu, current, grad_norm = 1e-3, loss(vec, u), jnp.linalg.norm(grad(vec, u))
    for _ in range(num_steps):
      candidate = vec - jnp.linalg.solve(hess(vec, u) + mu * jnp.eye(vec.size), grad(vec, u))
      value, candidate_norm = loss(candidate, u), jnp.linalg.norm(grad(candidate, u))
      if value < current or (value <= current + 4 * F64_EPS * abs(current)
                             and candidate_norm < grad_norm):
        vec, current, grad_norm, mu = candidate, value, candidate_norm, mu / 10
      else:
        mu *= 10
    hessian = hess(vec, u)
    floor = F64_EPS * float(jnp.linalg.norm(hessian, 2) * jnp.linalg.norm(vec))
    return unravel(vec), float(grad_norm), jnp.linalg.eigvalsh(hessian), floor

  return minimise


# Newton's gradient norm at the minimum: the rounding floor times an operation count. The
# computed gradient sums 20 per-example terms through a 2-layer network (a few tens of
# roundings of terms of the size of ||H|| ||w|| here); 64 covers that.
NEWTON_FLOOR_FACTOR = 64


def test_implicit_matches_finite_differences_mlp():
  """Deterministic (float64). The directional derivative of u -> outer(w*(u)) by central
  differences (h = 1e-4; w* re-solved by damped Newton to its float64 rounding floor)
  against 'cg'.

  The tolerance is the error budget of both sides, computed from this run's numbers:
  the finite difference's truncation (Richardson estimate, about 7e-8 relative, most of
  the budget), the inexact inner minima (a gradient r at w moves F by at most
  |f_w| r / lambda_min), the float64 rounding of F (allowed 16 eps |F|, under 1% of the
  budget), and the implicit side's inexact solve (about cond(H) times the CG residual,
  negligible). The truncation is a smooth h^2 term, not rounding, and its estimate is
  doubled: no rounding can fail the test.
  """
  with jax.enable_x64(True):
    inner, outer, params, u = mlp_problem(jnp.float64)
    # Gradient descent to the basin, then Newton to machine precision.
    opt = optax.sgd(0.5)
    state = opt.init(params)
    step = jax.jit(lambda p, s: opt.update(jax.grad(inner)(p, u), s, p))
    for _ in range(300):
      updates, state = step(params, state)
      params = optax.apply_updates(params, updates)
    newton_minimise = make_newton_minimise(inner, params)
    w, grad_norm, eigs, floor = newton_minimise(params, u, num_steps=20)
    assert grad_norm < NEWTON_FLOOR_FACTOR * floor
    assert float(eigs[0]) > 1e-3  # a strict minimum: the implicit function theorem holds

    grad, aux = jitted(bilevel.implicit_hypergrad, outer, inner, w, u, method='cg',
                       damping=0.0, maxiter=200, tol=1e-12, return_aux=True)
    direction = jax.tree.map(
        lambda x: jnp.asarray(np.random.default_rng(2).normal(size=x.shape)), u)
    outer_grad = jax.jit(jax.grad(outer))

    def bilevel_value(s):
      v = jax.tree.map(lambda x, d: x + s * d, u, direction)
      w_v, grad_norm_v, eigs_v, floor_v = newton_minimise(w, v, num_steps=10)
      assert grad_norm_v < NEWTON_FLOOR_FACTOR * floor_v
      value = float(outer(w_v, v))
      f_w = float(jnp.linalg.norm(flat(outer_grad(w_v, v))))
      return value, f_w * grad_norm_v / float(eigs_v[0]) + 16 * F64_EPS * abs(value)

    fd, fd_error = central_difference(bilevel_value, 1e-4)
    analytic = float(jnp.vdot(flat(grad), flat(direction)))
    solve_error = float(eigs[-1] / eigs[0]) * float(aux.residual) * abs(analytic)
    assert abs(fd - analytic) <= fd_error + solve_error
    assert fd_error + solve_error < 1e-6 * abs(fd)  # the check is sharp


# ----------------------------------------------------------------------------------------
# Unrolled: state threading, per-step noise, Adam.

KEY = jax.random.key(0)


def stateful_problem(dtype):
  """Inner loss with fold_in(KEY, step) noise on the poisons and a state holding a step
  counter and a running mean of the hidden activations, which the outer loss uses."""
  inner_plain, outer_plain, params, u = mlp_problem(dtype)

  def inner(w, v, state, *, step):
    noise = 0.1 * jax.random.normal(jax.random.fold_in(KEY, step), v['poison'].shape, dtype)
    noisy = {'poison': v['poison'] + noise}
    hidden = jnp.tanh(noisy['poison'] @ w['w1'] + w['b1'])
    new_state = {'count': state['count'] + 1,
                 'mean': 0.9 * state['mean'] + 0.1 * jnp.mean(hidden, axis=0)}
    return inner_plain(w, noisy), new_state

  def outer(w, v, state):
    return outer_plain(w, v) + jnp.sum(state['mean'] ** 2)

  state = {'count': jnp.zeros((), jnp.int32), 'mean': jnp.zeros(8, dtype)}
  return inner, outer, params, u, state


def python_loop_value(inner, outer, params, u, state, optimizer, num_steps, first_step):
  """The unrolled map written as a plain Python loop (the reference)."""
  opt_state = optimizer.init(params)
  for t in range(num_steps):
    (_, state), grads = jax.value_and_grad(inner, has_aux=True)(
        params, u, state, step=first_step + t)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  return outer(params, u, state), (params, state)


def test_unrolled_matches_python_loop_with_state_and_steps():
  """Deterministic. Same map, same noise (fold_in by step), same state updates."""
  inner, outer, params, u, state = stateful_problem(jnp.float32)
  optimizer = optax.adam(1e-2, eps_root=1e-8)
  kw = dict(num_steps=3, optimizer=optimizer, has_aux=True, state=state, pass_step=True,
            first_step=3)
  grad, aux = jax.jit(functools.partial(
      bilevel.unrolled_hypergrad, outer, inner, return_aux=True, **kw))(params, u)
  loop = functools.partial(python_loop_value, inner, outer, params, state=state,
                           optimizer=optimizer, num_steps=3, first_step=3)
  (value, (final_params, final_state)), expected = jax.jit(jax.value_and_grad(
      loop, has_aux=True))(u)
  assert rel_err(grad, expected) < 1e-5
  np.testing.assert_allclose(aux.value, value, rtol=1e-5)
  assert rel_err(aux.params, final_params) < 1e-5
  assert int(aux.state['count']) == 3
  np.testing.assert_allclose(aux.state['mean'], final_state['mean'], rtol=1e-5, atol=1e-7)
  assert int(aux.opt_state[0].count) == 3


def test_unrolled_matches_finite_differences():
  """Deterministic (float64). Central differences (h = 1e-5) of the unrolled map itself,
  Adam with eps_root, noise by step and a state the outer loss reads.

  The tolerance is the finite difference's error budget: its truncation (Richardson
  estimate; about 9e-7 relative, Adam's normalisation curves the map) and the float64
  rounding of each value, allowed 64 eps |F| (5 unrolled Adam steps of a tiny MLP; about
  1 eps |F| was seen). No rounding can fail the test.
  """
  with jax.enable_x64(True):
    inner, outer, params, u, state = stateful_problem(jnp.float64)
    optimizer = optax.adam(5e-2, eps_root=1e-8)
    kw = dict(num_steps=5, optimizer=optimizer, has_aux=True, state=state, pass_step=True)
    hypergrad = jax.jit(functools.partial(
        bilevel.unrolled_hypergrad, outer, inner, return_aux=True, **kw))
    grad, _ = hypergrad(params, u)
    direction = jax.tree.map(
        lambda x: jnp.asarray(np.random.default_rng(3).normal(size=x.shape)), u)

    def unrolled_value(s):
      value = float(hypergrad(params, jax.tree.map(lambda x, d: x + s * d, u,
                                                   direction))[1].value)
      return value, 64 * F64_EPS * abs(value)

    fd, fd_error = central_difference(unrolled_value, 1e-5)
    analytic = float(jnp.vdot(flat(grad), flat(direction)))
    assert abs(fd - analytic) <= fd_error
    assert fd_error < 1e-5 * abs(fd)  # the check is sharp


def test_adam_without_eps_root_gives_nan():
  """Deterministic. The pitfall the optimizer docstring warns about: a dead ReLU unit (in
  both losses) has input weights whose gradient is exactly zero but depends on u, so
  d sqrt(v)/dv is infinite at v = 0 and 0 * inf = NaN reaches u; eps_root > 0 fixes it."""
  inner_plain, outer_plain, params, u = mlp_problem(jnp.float32)
  params = dict(params, dead_in=jnp.ones((2, 1)), dead_out=jnp.ones(1))
  plain = lambda w: {k: w[k] for k in ('w1', 'b1', 'w2', 'b2')}
  dead_unit = lambda w, x: jnp.sum(jax.nn.relu(x @ w['dead_in'] - 100.0) @ w['dead_out'])

  def inner(w, v):
    return inner_plain(plain(w), v) + dead_unit(w, v['poison'])

  def outer(w, v):
    return outer_plain(plain(w), v) + dead_unit(w, v['poison'] + 1.0)

  run = lambda opt: jax.jit(functools.partial(
      bilevel.unrolled_hypergrad, outer, inner, num_steps=1, optimizer=opt))(params, u)
  assert not np.all(np.isfinite(flat(run(optax.adam(1e-2)))))
  assert np.all(np.isfinite(flat(run(optax.adam(1e-2, eps_root=1e-8)))))


def test_remat_and_unroll_do_not_change_the_result():
  """Deterministic. jax.checkpoint and the scan unroll factor are exact rewrites."""
  inner, outer, params, u, state = stateful_problem(jnp.float32)
  kw = dict(num_steps=3, learning_rate=0.1, has_aux=True, pass_step=True)
  hypergrad = lambda **extra: jax.jit(functools.partial(
      bilevel.unrolled_hypergrad, outer, inner, **kw, **extra))(params, u, state=state)
  base = hypergrad()
  assert rel_err(hypergrad(remat=True), base) < 1e-5
  assert rel_err(hypergrad(unroll=True), base) < 1e-5


def test_implicit_jit_equals_eager_and_compiles_once():
  """Deterministic. Jitted with the method closed over; a new u reuses the compilation.
  Eager runs 'identity' (eager solver loops compile op by op: seconds). Jit and eager
  differ by float32 rounding (fusion reorders sums), hence 1e-4."""
  inner, outer, params, u = mlp_problem(jnp.float32)
  eager = bilevel.implicit_hypergrad(outer, inner, params, u, method='identity')
  assert rel_err(jitted(bilevel.implicit_hypergrad, outer, inner, params, u,
                        method='identity'), eager) < 1e-4
  compiled = jax.jit(functools.partial(bilevel.implicit_hypergrad, outer, inner,
                                       method='cg', damping=1e-2, maxiter=5))
  compiled(params, u)
  compiled(params, jax.tree.map(lambda x: x + 1.0, u))
  assert compiled._cache_size() == 1


def test_unrolled_jit_equals_eager():
  """Deterministic."""
  inner, outer, params, u, state = stateful_problem(jnp.float32)
  kw = dict(num_steps=3, learning_rate=0.1, has_aux=True, pass_step=True)
  eager = bilevel.unrolled_hypergrad(outer, inner, params, u, state=state, **kw)
  compiled = jax.jit(
      lambda p, v, s: bilevel.unrolled_hypergrad(outer, inner, p, v, state=s, **kw))
  assert rel_err(compiled(params, u, state), eager) < 1e-5


def test_implicit_state_is_held_fixed():
  """Deterministic. has_aux=True with a state equals closing over that state."""
  inner, outer, params, u, state = stateful_problem(jnp.float32)
  state = dict(state, mean=jnp.linspace(-1.0, 1.0, 8))
  inner_at = functools.partial(inner, step=0)
  with_state = jitted(bilevel.implicit_hypergrad, outer, inner_at, params, u, method='cg',
                      damping=1e-2, has_aux=True, state=state)
  closed = jitted(bilevel.implicit_hypergrad, lambda w, v: outer(w, v, state),
                  lambda w, v: inner_at(w, v, state)[0], params, u, method='cg',
                  damping=1e-2)
  assert rel_err(with_state, closed) < 1e-6


# ----------------------------------------------------------------------------------------
# Argument checks.


@pytest.mark.parametrize('kwargs,match', [
    (dict(method='lbfgs'), r"method='lbfgs'.*'cg', 'approxgrad', 'neumann', 'identity'"),
    (dict(damping=-1e-3), r'damping=-0.001.*>= 0'),
    (dict(maxiter=0), r'maxiter=0.*>= 1'),
    (dict(maxiter=2.5), r'maxiter=2.5.*integer'),
    (dict(tol=-1.0), r'tol=-1.0'),
    (dict(learning_rate=0.0), r'learning_rate=0.0.*> 0'),
    (dict(state={'a': 1}), r'state.*has_aux=True'),
    (dict(unroll=-1), r'unroll=-1.*>= 1'),
])
def test_implicit_argument_errors(kwargs, match):
  """Deterministic."""
  inner, outer, params, u = mlp_problem(jnp.float32)
  with pytest.raises(ValueError, match=match):
    bilevel.implicit_hypergrad(outer, inner, params, u, **kwargs)


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_steps=0, learning_rate=0.1), r'num_steps=0.*>= 1'),
    (dict(num_steps=2), r'exactly one of learning_rate.*optimizer'),
    (dict(num_steps=2, learning_rate=0.1, optimizer=optax.sgd(0.1)), r'exactly one'),
    (dict(num_steps=2, learning_rate=-0.1), r'learning_rate=-0.1.*> 0'),
    (dict(num_steps=2, learning_rate=0.1, unroll=0), r'unroll=0.*>= 1'),
    (dict(num_steps=2, learning_rate=0.1, state={'a': 1}), r'state.*has_aux=True'),
])
def test_unrolled_argument_errors(kwargs, match):
  """Deterministic."""
  inner, outer, params, u = mlp_problem(jnp.float32)
  with pytest.raises(ValueError, match=match):
    bilevel.unrolled_hypergrad(outer, inner, params, u, **kwargs)
