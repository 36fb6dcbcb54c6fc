"""Argument checks shared by the library's entry points.

Every check raises a ``ValueError`` that names the argument, its value and what is
accepted, so that bad input fails before any work with a message a user can act on.
``name`` is the argument as the user wrote it: ``'n'``, ``'config.batch_size'``,
``'config.attack.solver'``.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def check_choice(name: str, value: Any, accepted: Iterable[str]) -> None:
  """``value`` must be one of ``accepted``."""
  accepted = tuple(accepted)
  if value not in accepted:
    raise ValueError(f'{name}={value!r} is not known; accepted: {", ".join(accepted)}.')


def is_int(value: Any) -> bool:
  """A Python or NumPy integer, not a bool."""
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None,
              meaning: str = '') -> None:
  """``value`` must be an integer in ``[minimum, maximum]`` (no upper bound if None).

  ``meaning`` (e.g. ``'0: the whole split'``) is appended to the message in brackets.
  """
  suffix = f' ({meaning})' if meaning else ''
  if not is_int(value) or value < minimum:
    raise ValueError(f'{name}={value!r} must be an integer >= {minimum}{suffix}.')
  if maximum is not None and value > maximum:
    raise ValueError(f'{name}={value!r} must be at most {maximum}{suffix}.')


def check_ints(prefix: str, config: Any, names: Iterable[str], minimum: int = 1) -> None:
  """``check_int`` on several fields of a config: ``f'{prefix}{field}'`` names each."""
  for field in names:
    check_int(f'{prefix}{field}', config.get(field), minimum)


def real_number(value: Any) -> float | None:
  """``value`` as a float if it is a real number, else None.

  Real numbers are Python, NumPy and 0-d array (NumPy or JAX, e.g. ``jnp.float32(0.5)``)
  ints and floats; bools, strings, None and arrays with elements are not.
  """
  if isinstance(value, (bool, np.bool_)):
    return None
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  dtype = getattr(value, 'dtype', None)
  if getattr(value, 'ndim', None) == 0 and dtype is not None and (
      np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
    try:
      return float(value)
    except TypeError:  # A traced JAX value: not a number yet.
      return None
  return None
