"""Argument checks shared by the library's entry points.

Every check raises a ``ValueError`` that names the argument, its value and what is
accepted, so that bad input fails before any work with a message a user can act on.
``name`` is the argument as the user wrote it: ``'n'``, ``'config.batch_size'``,
``'config.attack.solver'``; a config nested in another is checked inside ``nested``, so
that its fields are named by their full path.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterable, Iterator

import numpy as np


def check_choice(name: str, value: Any, accepted: Iterable[str]) -> None:
  """``value`` must be one of ``accepted``."""
  accepted = tuple(accepted)
  if value not in accepted:
    raise ValueError(f'{name}={value!r} is not known; accepted: {", ".join(accepted)}.')


def check_choices(name: str, values: Iterable[str], accepted: Iterable[str]) -> None:
  """Every entry of ``values`` must be one of ``accepted``."""
  accepted = tuple(accepted)
  unknown = [v for v in values if v not in accepted]
  if unknown:
    raise ValueError(f'{name}={tuple(values)!r} has unknown {unknown}; accepted: '
                     f'{", ".join(accepted)}.')


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


def names(name: str, value: Any) -> tuple[str, ...]:
  """Distinct names from a tuple, a list or a comma-separated string (a command line's
  ``--config.archs=lenet,mlp``), as a tuple; raises if one repeats."""
  if isinstance(value, str):
    value = (value,)
  if not isinstance(value, (tuple, list)):
    raise ValueError(f'{name}={value!r} must be a tuple of names.')
  out = []
  for item in value:
    if not isinstance(item, str):
      raise ValueError(f'{name}={value!r} must hold names (strings).')
    out.extend(p.strip() for p in item.split(',') if p.strip())
  if len(set(out)) != len(out):
    raise ValueError(f'{name}={value!r} repeats a name.')
  return tuple(out)


def distinct_ints(name: str, value: Any, minimum: int = 0) -> tuple[int, ...]:
  """At least one distinct integer >= ``minimum`` from an integer, a sequence or a
  comma-separated string, as a tuple."""
  if is_int(value):
    value = (value,)
  if isinstance(value, str):
    value = tuple(p for p in value.split(',') if p.strip())
  try:
    out = tuple(int(s) for s in value)
  except (TypeError, ValueError):
    raise ValueError(f'{name}={value!r} must be a tuple of integers.') from None
  if not out or len(set(out)) != len(out) or min(out) < minimum:
    raise ValueError(f'{name}={value!r} must be distinct integers >= {minimum}, at least '
                     'one.')
  return out

@contextlib.contextmanager
def nested(prefix: str) -> Iterator[None]:
  """Names the fields of a nested config's checks by their full path.

  A ValueError raised inside the block is raised again with every ``config.`` field
  name in its message prefixed: inside ``nested('config.victims.gaussian')``, a check
  naming ``config.num_epochs`` raises naming ``config.victims.gaussian.num_epochs``. A
  message naming no field gets ``prefix`` in front.

  Example::

    with validation.nested(f'config.attacks.{method}'):
      attack.validate_config(attack_config)
  """
  try:
    yield
  except ValueError as e:
    message = str(e)
    renamed = re.sub(r'\bconfig\.(?=[A-Za-z_])', prefix + '.', message)
    if renamed == message:
      renamed = f'{prefix}: {message}'
    raise ValueError(renamed) from e


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
