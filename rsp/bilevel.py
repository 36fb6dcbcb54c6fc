r"""Hypergradients of an outer objective through an inner training problem.

The bilevel problem of a data poisoning attack (Mehra et al., 2021) is

    min_u  F(u) = outer(w*(u), u),    w*(u) = argmin_w inner(w, u),

where ``u`` are the poisons (or any hyperparameters), ``w`` the model parameters, ``inner``
the victim's training loss and ``outer`` the attacker's objective. This module computes the
hypergradient dF/du in two ways, both over arbitrary pytrees ``w`` and ``u``:

* :func:`implicit_hypergrad`, by the implicit function theorem at an (approximate) inner
  minimiser ``w``:

      dF/du = f_u - g_uw p,    (g_ww + damping I) p = f_w,

  with f = outer, g = inner, subscripts partial derivatives, g_ww the Hessian of the inner
  loss and g_uw p = d/du <grad_w g(w, u), p>. Hessian-vector products are forward-over-reverse
  (``jax.linearize`` of ``jax.grad``); no Hessian is ever materialised. The linear system is
  solved by conjugate gradients ('cg', Pedregosa 2016), by Adam on the squared residual
  ('approxgrad', the solver of the paper), by a truncated Neumann series ('neumann', Lorraine
  et al. 2020) or not at all ('identity': p = f_w, i.e. g_ww replaced by I, Luketina et al.
  2016; this aligns the inner gradient with the outer one and did about as well as
  ApproxGrad in a PACD attack on embedded MNIST at a fraction of the cost,
  docs/measured_facts.md#the-approxgrad-system-is-barely-solved).
* :func:`unrolled_hypergrad`, by reverse-mode differentiation through ``num_steps`` inner
  optimiser steps from ``params0`` (Maclaurin et al. 2015; Franceschi et al. 2017), run in
  ``lax.scan`` with optional rematerialisation.

Calling conventions (shared by both functions):

* ``inner_fn(params, u) -> scalar`` and ``outer_fn(params, u) -> scalar``. Data, batches
  and fixed noise are closed over (``functools.partial`` or a closure).
* Model state (e.g. BatchNorm statistics): with ``has_aux=True`` and ``state=...`` both
  functions take the state as a third argument, ``inner_fn(params, u, state) ->
  (loss, new_state)`` and ``outer_fn(params, u, state) -> scalar``. The unrolled hypergradient
  threads the state through the inner steps (and differentiates through it); the implicit one
  holds it fixed and discards ``new_state``.
* Per-step randomness (unrolled only): with ``pass_step=True`` the inner function also gets
  the inner step index as a keyword argument, ``inner_fn(..., step=i)`` with ``i`` an int32
  scalar running from ``first_step`` to ``first_step + num_steps - 1``, so a closure can draw
  ``jax.random.fold_in(key, step)`` noise or slice the ``step``-th batch.

Every function is pure and jittable; the solver choice, iteration counts and the flags are
Python values (static), so close over them when jitting, e.g.
``jax.jit(functools.partial(implicit_hypergrad, outer_fn, inner_fn, method='cg'))``.
Both functions take ``unroll``: on XLA CPU, rolled loops (``fori_loop``/``lax.scan``) of
convolutional second-order work run several times slower than the same work unrolled
(docs/measured_facts.md#rolled-loops-of-convolutional-work-are-slow-on-xla-cpu), so pass
``unroll=True`` there for the few (<= 20) solver iterations or inner steps an attack
uses; compile time then grows with the count.
Hypergradients are returned as computed: a NaN (e.g. from an ill-posed solve) is not
sanitised here; check ``jnp.isfinite`` before using them to update poisons.

References:
  Pedregosa, F. (2016). Hyperparameter optimization with approximate gradient. ICML.
  Mehra, A. and Hamm, J. (2021). Penalty method for inversion-free deep bilevel
    optimization. ACML (arXiv:1911.03432); ApproxGrad is its baseline solver.
  Mehra, A., Kailkhura, B., Chen, P.-Y. and Hamm, J. (2021). How robust are randomized
    smoothing based defenses to data poisoning? CVPR.
  Maclaurin, D., Duvenaud, D. and Adams, R. (2015). Gradient-based hyperparameter
    optimization through reversible learning. ICML.
  Franceschi, L., Donini, M., Frasconi, P. and Pontil, M. (2017). Forward and reverse
    gradient-based hyperparameter optimization. ICML.
  Luketina, J., Berglund, M., Greff, K. and Raiko, T. (2016). Scalable gradient-based tuning
    of continuous regularization hyperparameters. ICML.
  Lorraine, J., Vicol, P. and Duvenaud, D. (2020). Optimizing millions of hyperparameters by
    implicit differentiation. AISTATS.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any

METHODS = ('cg', 'approxgrad', 'neumann', 'identity')


class ImplicitAux(NamedTuple):
  """What :func:`implicit_hypergrad` returns beside the hypergradient.

  Attributes:
    solution: p, the (approximate) solution of (g_ww + damping I) p = f_w; same structure
      as ``params``. Pass it back as ``init`` to warm-start the next solve.
    residual: ||(g_ww + damping I) p - f_w|| / ||f_w||, a float scalar (0 when f_w = 0).
    value: outer(params, u), the outer objective at the given inner parameters.
    solver_state: the Adam state of the 'approxgrad' solver (pass it back as
      ``solver_state`` to keep its moments across solves, as the paper does); None for the
      other methods.
  """
  solution: PyTree
  residual: jax.Array
  value: jax.Array
  solver_state: PyTree


class UnrolledAux(NamedTuple):
  """What :func:`unrolled_hypergrad` returns beside the hypergradient.

  Attributes:
    params: the inner parameters after ``num_steps`` steps (warm start for the next call).
    opt_state: the inner optimiser state after the steps (pass it back as ``opt_state``).
    state: the model state after the steps (``None`` unless ``has_aux=True``).
    value: outer(params_T, u), the outer objective after the steps.
    inner_losses: [num_steps] the inner loss at each step, before that step's update.
  """
  params: PyTree
  opt_state: PyTree
  state: PyTree
  value: jax.Array
  inner_losses: jax.Array


# ----------------------------------------------------------------------------------------
# Argument checks: raise before any tracing or work, naming the argument and what is
# accepted. Values that are tracers (e.g. a jitted damping) cannot be checked and pass.


def _concrete_float(value: Any) -> float | None:
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def _check_method(method: Any) -> None:
  if not isinstance(method, str) or method not in METHODS:
    accepted = ', '.join(repr(m) for m in METHODS)
    raise ValueError(f'method={method!r} is not known; accepted: {accepted}.')


def _check_nonnegative(name: str, value: Any) -> None:
  v = _concrete_float(value)
  if isinstance(value, bool) or (v is not None and not v >= 0.0):
    raise ValueError(f'{name}={value!r} must be a finite number >= 0.')
  if v is not None and v == float('inf'):
    raise ValueError(f'{name}={value!r} must be a finite number >= 0.')


def _check_positive(name: str, value: Any) -> None:
  v = _concrete_float(value)
  if isinstance(value, bool) or (v is not None and not 0.0 < v < float('inf')):
    raise ValueError(f'{name}={value!r} must be a finite number > 0.')


def _check_count(name: str, value: Any) -> None:
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < 1):
    raise ValueError(f'{name}={value!r} must be a Python integer >= 1.')


def _check_unroll(unroll: Any) -> None:
  if not isinstance(unroll, bool):
    _check_count('unroll', unroll)


def _check_state(has_aux: bool, state: PyTree) -> None:
  if not isinstance(has_aux, bool):
    raise ValueError(f'has_aux={has_aux!r} must be True or False.')
  if not has_aux and state is not None:
    raise ValueError(
        'state is only used with has_aux=True (inner_fn(params, u, state) -> '
        f'(loss, new_state)); got has_aux=False and state of type {type(state).__name__}.')


# ----------------------------------------------------------------------------------------
# Pytree linear algebra.


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  products = [jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  return sum(products, jnp.zeros((), jnp.float32))


def _tree_norm(a: PyTree) -> jax.Array:
  return jnp.sqrt(_tree_vdot(a, a).real)


def _tree_axpy(alpha: Any, x: PyTree, y: PyTree) -> PyTree:
  """alpha * x + y, leaf by leaf, keeping each leaf's dtype."""
  return jax.tree.map(lambda xi, yi: (alpha * xi + yi).astype(yi.dtype), x, y)


def _tree_sub(x: PyTree, y: PyTree) -> PyTree:
  return jax.tree.map(lambda xi, yi: xi - yi, x, y)


def _fori_loop(num: int, body: Callable[[Any, Any], Any], init: Any,
               unroll: int | bool) -> Any:
  """``lax.fori_loop(0, num, body, init, unroll=unroll)``; ``unroll=True`` traces a Python
  loop instead: on XLA CPU even a fully unrolled one-iteration ``fori_loop`` of a LeNet
  Hessian-vector product is much slower than the same product traced without a loop
  (docs/measured_facts.md#rolled-loops-of-convolutional-work-are-slow-on-xla-cpu)."""
  if unroll is True:
    carry = init
    for i in range(num):
      carry = body(i, carry)
    return carry
  return jax.lax.fori_loop(0, num, body, init, unroll=unroll)


def _scan(step_fn, init, xs, unroll: int | bool):
  """``lax.scan(step_fn, init, xs, unroll=unroll)``; ``unroll=True`` traces a Python loop
  (same reason as :func:`_fori_loop`)."""
  if unroll is True:
    carry, ys = init, []
    for i in range(xs.shape[0]):
      carry, y = step_fn(carry, xs[i])
      ys.append(y)
    return carry, jax.tree.map(lambda *leaves: jnp.stack(leaves), *ys)
  return jax.lax.scan(step_fn, init, xs, unroll=unroll)


# ----------------------------------------------------------------------------------------
# Linear solvers for A p = b with A = g_ww + damping I symmetric (positive definite near a
# strict local minimum of the inner loss). Each takes the matvec, b, an initial guess and
# returns (p, solver_state).


def _solve_cg(matvec, b, x0, *, maxiter, tol, learning_rate, solver_state, unroll):
  """Conjugate gradients (Hestenes-Stiefel) for ``maxiter`` iterations.

  A fixed number of iterations in ``fori_loop`` (rather than ``jax.scipy.sparse.linalg.cg``,
  a ``while_loop``) so that the loop can be unrolled: convolutional Hessian-vector products
  inside an XLA CPU loop run several times slower than unrolled
  (docs/measured_facts.md#rolled-loops-of-convolutional-work-are-slow-on-xla-cpu). Once
  ||r|| <= tol ||b|| the iterate is frozen (the remaining iterations still cost a product).
  """
  del learning_rate, solver_state  # unused by CG
  x = jax.tree.map(jnp.zeros_like, b) if x0 is None else x0
  r = _tree_sub(b, matvec(x)) if x0 is not None else b
  rs = _tree_vdot(r, r).real
  threshold = jnp.square(tol) * _tree_vdot(b, b).real

  def body(_, carry):
    x, r, d, rs = carry
    active = rs > threshold
    ad = matvec(d)
    curvature = _tree_vdot(d, ad).real
    alpha = jnp.where(active & (curvature != 0), rs / jnp.where(curvature != 0, curvature, 1),
                      0.0)
    x = _tree_axpy(alpha, d, x)
    r = _tree_axpy(-alpha, ad, r)
    rs_new = _tree_vdot(r, r).real
    beta = jnp.where(active & (rs > 0), rs_new / jnp.where(rs > 0, rs, 1), 0.0)
    d = _tree_axpy(beta, d, r)
    return x, r, d, jnp.where(active, rs_new, rs)

  x, _, _, _ = _fori_loop(maxiter, body, (x, r, r, rs), unroll)
  return x, None


def _solve_approxgrad(matvec, b, x0, *, maxiter, tol, learning_rate, solver_state, unroll):
  """``maxiter`` Adam steps on h(p) = ||A p - b||^2 (ApproxGrad, Mehra & Hamm).

  The paper obtains grad h by double backprop through the Hessian-vector product; since A
  is symmetric that gradient is 2 A (A p - b), two Hessian-vector products per step, which
  is what is computed here (the same quantity, without a third-order pass).
  """
  del tol  # a fixed number of steps, as in the paper
  optimizer = optax.adam(learning_rate)
  p0 = jax.tree.map(jnp.zeros_like, b) if x0 is None else x0
  s0 = optimizer.init(p0) if solver_state is None else solver_state

  def body(_, carry):
    p, s = carry
    residual = _tree_sub(matvec(p), b)
    grad = jax.tree.map(lambda x: 2 * x, matvec(residual))
    updates, s = optimizer.update(grad, s, p)
    return optax.apply_updates(p, updates), s

  return _fori_loop(maxiter, body, (p0, s0), unroll)


def _solve_neumann(matvec, b, x0, *, maxiter, tol, learning_rate, solver_state, unroll):
  """Richardson iteration p <- p + alpha (b - A p) for ``maxiter`` steps.

  From p = 0 this is the truncated Neumann series
  p_K = alpha sum_{k=0}^{K-1} (I - alpha A)^k b  (Lorraine et al. 2020), which converges to
  A^-1 b when 0 < alpha < 2 / lambda_max(A); from ``x0`` it is the same iteration
  warm-started.
  """
  del tol, solver_state
  p0 = jax.tree.map(jnp.zeros_like, b) if x0 is None else x0

  def body(_, p):
    return _tree_axpy(learning_rate, _tree_sub(b, matvec(p)), p)

  return _fori_loop(maxiter, body, p0, unroll), None


def _solve_identity(matvec, b, x0, *, maxiter, tol, learning_rate, solver_state, unroll):
  del matvec, x0, maxiter, tol, learning_rate, solver_state, unroll
  return b, None


_SOLVERS = {
    'cg': _solve_cg,
    'approxgrad': _solve_approxgrad,
    'neumann': _solve_neumann,
    'identity': _solve_identity,
}


# ----------------------------------------------------------------------------------------


def implicit_hypergrad(
    outer_fn: Callable[..., jax.Array],
    inner_fn: Callable[..., Any],
    params: PyTree,
    u: PyTree,
    *,
    method: str = 'cg',
    damping: float = 1e-3,
    maxiter: int = 20,
    tol: float = 1e-5,
    learning_rate: float = 1e-2,
    init: PyTree | None = None,
    solver_state: PyTree | None = None,
    has_aux: bool = False,
    state: PyTree | None = None,
    unroll: int | bool = 1,
    return_aux: bool = False,
) -> PyTree | tuple[PyTree, ImplicitAux]:
  r"""Hypergradient d outer(w*(u), u) / du by the implicit function theorem.

  At a minimiser w* of g(., u) = inner_fn(., u), grad_w g(w*(u), u) = 0 for all u, so
  dw*/du = -g_ww^-1 g_wu and, with f = outer_fn,

      dF/du = f_u - g_uw p,    (g_ww + damping I) p = f_w,    (*)

  all evaluated at ``params``. ``damping`` (the paper's sig) regularises a Hessian that is
  singular or indefinite at an inexact minimiser. The mixed term g_uw p =
  d/du <grad_w g(w, u), p> is one reverse-over-forward pass with p held constant.

  Solvers of (*) (``method``):

  * 'cg': conjugate gradients, ``maxiter`` iterations, the iterate frozen once the
    relative residual is below ``tol`` (Pedregosa 2016). Needs g_ww + damping I positive
    definite. One Hessian-vector product per iteration.
  * 'approxgrad': ``maxiter`` Adam(``learning_rate``) steps on ||(g_ww + damping I) p -
    f_w||^2 from ``init`` (zeros by default), the paper's solver (Mehra & Hamm 2021; PACD
    uses 10 steps, lr 1e-2 to 1e-4, sig 1e-3). Two products per step.
  * 'neumann': ``maxiter`` terms of the Neumann series learning_rate * sum_k (I -
    learning_rate (g_ww + damping I))^k f_w (Lorraine et al. 2020); converges for
    0 < learning_rate < 2 / lambda_max. One product per term.
  * 'identity': p = f_w, no solve (g_ww replaced by I; Luketina et al. 2016). The
    hypergradient is then -d/du <grad_w g, grad_w f> (+ f_u): gradient alignment, equal to
    1/lr times the one-step unrolled hypergradient. No Hessian-vector product.

  Args:
    outer_fn: ``outer_fn(params, u) -> scalar`` (``outer_fn(params, u, state)`` when
      ``has_aux``).
    inner_fn: ``inner_fn(params, u) -> scalar`` (``inner_fn(params, u, state) ->
      (loss, new_state)`` when ``has_aux``; ``new_state`` is ignored).
    params: the (approximate) inner minimiser, any pytree of float arrays.
    u: the outer variables, any pytree of float arrays.
    method: 'cg', 'approxgrad', 'neumann' or 'identity' (static).
    damping: ridge added to the Hessian, >= 0.
    maxiter: iterations of the solver, >= 1 (ignored by 'identity').
    tol: relative residual at which 'cg' stops updating, >= 0 (every solver runs
      ``maxiter`` iterations: fixed shapes, unrollable loops).
    learning_rate: Adam step size for 'approxgrad', series step size for 'neumann', > 0.
    init: initial guess for p (warm start, e.g. the previous ``aux.solution``); zeros by
      default. Ignored by 'identity'.
    solver_state: the 'approxgrad' Adam state to continue from (``aux.solver_state``).
    has_aux: whether both functions take and inner_fn returns a model state (above).
    state: the model state (e.g. ``{'batch_stats': ...}``), held fixed. Only with
      ``has_aux=True``.
    unroll: unroll factor of the solver's ``fori_loop``; ``True`` traces the iterations
      without a loop. On XLA CPU convolutional Hessian-vector products inside a rolled
      loop run several times slower
      (docs/measured_facts.md#rolled-loops-of-convolutional-work-are-slow-on-xla-cpu), so
      pass ``unroll=True`` there (compile time then grows with ``maxiter``); on a GPU the
      rolled loop has not been measured.
    return_aux: also return an :class:`ImplicitAux` (solution, relative residual, outer
      value, solver state). Computing the residual costs one more product.

  Returns:
    The hypergradient, a pytree like ``u``; or ``(hypergradient, aux)`` if ``return_aux``.

  Raises:
    ValueError: for an unknown method, damping < 0, maxiter < 1, tol < 0,
      learning_rate <= 0, a bad ``unroll``, or a state without ``has_aux=True``.

  Example:
    >>> inner = lambda w, u: 0.5 * jnp.sum((X @ w - u) ** 2) + 0.5 * jnp.sum(w ** 2)
    >>> outer = lambda w, u: 0.5 * jnp.sum((X_val @ w - y_val) ** 2)
    >>> grad_u = implicit_hypergrad(outer, inner, w_star, u, method='cg', damping=0.0)
  """
  _check_method(method)
  _check_nonnegative('damping', damping)
  _check_count('maxiter', maxiter)
  _check_nonnegative('tol', tol)
  _check_positive('learning_rate', learning_rate)
  _check_state(has_aux, state)
  _check_unroll(unroll)

  if has_aux:
    fixed_state = jax.tree.map(jax.lax.stop_gradient, state)
    inner = lambda w, v: inner_fn(w, v, fixed_state)[0]
    outer = lambda w, v: outer_fn(w, v, fixed_state)
  else:
    inner, outer = inner_fn, outer_fn

  value, (f_w, f_u) = jax.value_and_grad(outer, argnums=(0, 1))(params, u)

  if method == 'identity':
    matvec = None
  else:
    # Linearise grad_w g once at params; each application is then only the tangent pass.
    _, hvp = jax.linearize(lambda w: jax.grad(inner)(w, u), params)

    def matvec(v):
      return _tree_axpy(damping, v, hvp(v))

  p, new_solver_state = _SOLVERS[method](
      matvec, f_w, init, maxiter=maxiter, tol=tol, learning_rate=learning_rate,
      solver_state=solver_state, unroll=unroll)
  p = jax.lax.stop_gradient(p)

  def directional_inner_grad(v):  # <grad_w g(params, v), p>
    return jax.jvp(lambda w: inner(w, v), (params,), (p,))[1]

  mixed = jax.grad(directional_inner_grad)(u)  # g_uw p
  hypergrad = _tree_sub(f_u, mixed)
  if not return_aux:
    return hypergrad

  if matvec is None:
    _, hvp = jax.linearize(lambda w: jax.grad(inner)(w, u), params)
    matvec = lambda v: _tree_axpy(damping, v, hvp(v))
  f_norm = _tree_norm(f_w)
  residual = _tree_norm(_tree_sub(matvec(p), f_w)) / jnp.where(f_norm > 0, f_norm, 1.0)
  return hypergrad, ImplicitAux(solution=p, residual=residual, value=value,
                                solver_state=new_solver_state)


def unrolled_hypergrad(
    outer_fn: Callable[..., jax.Array],
    inner_fn: Callable[..., Any],
    params0: PyTree,
    u: PyTree,
    *,
    num_steps: int,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    opt_state: PyTree | None = None,
    has_aux: bool = False,
    state: PyTree | None = None,
    pass_step: bool = False,
    first_step: int | jax.Array = 0,
    remat: bool = False,
    unroll: int | bool = 1,
    return_aux: bool = False,
) -> PyTree | tuple[PyTree, UnrolledAux]:
  r"""Hypergradient by reverse-mode differentiation through unrolled inner steps.

  With w_0 = ``params0`` (a constant: it does not depend on u) and the inner optimiser
  (plain gradient descent by default)

      w_{t+1} = w_t - learning_rate * grad_w g(w_t, u),    t = 0, ..., num_steps - 1,

  this returns the exact gradient of F_T(u) = outer(w_T(u), u), computed by ``jax.grad``
  through a ``lax.scan`` over the steps (reverse-mode hypergradient, Maclaurin et al.
  2015; Franceschi et al. 2017). Memory grows with ``num_steps``: the scan saves each step's
  residuals; ``remat=True`` wraps the step in ``jax.checkpoint`` so that only the carried
  (params, optimiser state, model state) are saved per step and the step's activations are
  recomputed in the backward pass (about one extra forward-backward of the inner loss per
  step).

  Args:
    outer_fn: ``outer_fn(params, u) -> scalar`` (``outer_fn(params, u, state)`` when
      ``has_aux``, called with the final state).
    inner_fn: ``inner_fn(params, u) -> scalar`` (``inner_fn(params, u, state) ->
      (loss, new_state)`` when ``has_aux``); with ``pass_step=True`` also the keyword
      argument ``step`` (int32 scalar), e.g. to use ``jax.random.fold_in(key, step)`` noise.
    params0: the starting inner parameters (pytree), treated as constant.
    u: the outer variables (pytree of float arrays).
    num_steps: number of inner steps, >= 1 (static).
    learning_rate: step size of plain gradient descent. Give either this or ``optimizer``.
    optimizer: an optax ``GradientTransformation`` for the inner steps instead of gradient
      descent. ``optax.adam`` must be built with ``eps_root > 0`` (e.g. 1e-8): the
      derivative of sqrt(v) at v = 0 is infinite and otherwise gives NaN hypergradients for
      parameters with zero gradient.
    opt_state: the optimiser state to start from (e.g. the previous ``aux.opt_state`` when
      the inner model is warm-started); ``optimizer.init(params0)`` by default. Constant.
    has_aux: whether the functions take and inner_fn returns a model state that is threaded
      through the steps (e.g. BatchNorm running statistics). Gradients flow through it.
    state: the initial model state; only with ``has_aux=True``.
    pass_step: pass ``step=first_step + t`` to ``inner_fn`` at step t.
    first_step: offset of the step index (e.g. the global inner step count, so that a
      warm-started attack keeps drawing fresh ``fold_in`` noise).
    remat: rematerialise each step in the backward pass (``jax.checkpoint``). On XLA CPU
      it cuts a rolled scan's scratch memory severalfold but hardly the fully unrolled
      one's (``unroll=True``: XLA schedules the recomputation early;
      benchmarks/README.md#hypergradient-cost), so use it with a rolled scan when memory
      binds.
    unroll: ``lax.scan``'s unroll factor; ``True`` traces the steps without a loop, which
      on XLA CPU is several times faster than a rolled scan for convolutional steps
      (docs/measured_facts.md#rolled-loops-of-convolutional-work-are-slow-on-xla-cpu);
      compile time then grows with ``num_steps``.
    return_aux: also return an :class:`UnrolledAux` (final params, optimiser state, model
      state, outer value, inner losses) for warm starts and logging.

  Returns:
    The hypergradient dF_T/du (a pytree like ``u``), or ``(hypergradient, aux)``.

  Raises:
    ValueError: for num_steps < 1, both or neither of learning_rate/optimizer,
      learning_rate <= 0, a bad ``unroll``, or a state without ``has_aux=True``.
  """
  _check_count('num_steps', num_steps)
  _check_state(has_aux, state)
  if (learning_rate is None) == (optimizer is None):
    raise ValueError(
        f'give exactly one of learning_rate (plain gradient descent) and optimizer; got '
        f'learning_rate={learning_rate!r} and optimizer={optimizer!r}.')
  if optimizer is None:
    _check_positive('learning_rate', learning_rate)
    optimizer = optax.sgd(learning_rate)
  _check_unroll(unroll)
  if opt_state is None:
    opt_state = optimizer.init(params0)
  params0, opt_state, state = jax.lax.stop_gradient((params0, opt_state, state))
  steps = first_step + jnp.arange(num_steps, dtype=jnp.int32)

  def inner_loss(params, v, model_state, step):
    kwargs = {'step': step} if pass_step else {}
    if has_aux:
      return inner_fn(params, v, model_state, **kwargs)
    return inner_fn(params, v, **kwargs), model_state

  def unrolled_outer(v):
    def step_fn(carry, step):
      params, opt_st, model_state = carry
      (loss, model_state), grads = jax.value_and_grad(inner_loss, has_aux=True)(
          params, v, model_state, step)
      updates, opt_st = optimizer.update(grads, opt_st, params)
      return (optax.apply_updates(params, updates), opt_st, model_state), loss

    if remat:
      step_fn = jax.checkpoint(step_fn)
    (params, opt_st, model_state), losses = _scan(
        step_fn, (params0, opt_state, state), steps, unroll)
    value = outer_fn(params, v, model_state) if has_aux else outer_fn(params, v)
    return value, UnrolledAux(params=params, opt_state=opt_st, state=model_state,
                              value=value, inner_losses=losses)

  (_, aux), hypergrad = jax.value_and_grad(unrolled_outer, has_aux=True)(u)
  if return_aux:
    return hypergrad, aux
  return hypergrad
