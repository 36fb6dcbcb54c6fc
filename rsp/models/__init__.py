"""flax.linen classifiers and their registry.

Every model maps images ``[B, H, W, C]`` float32 in [0, 1] to logits ``[B, K]`` and is
called as ``model.apply(variables, images, train=...)``. Models with BatchNorm
(``norm='batch'``) keep running statistics in the ``batch_stats`` collection.

Two pure views of a model are used throughout rsp:

* ``make_apply_fn(model)`` -> ``apply_fn(variables, images) -> logits`` (evaluation mode),
  the classifier that is smoothed and certified.
* ``make_train_apply_fn(model)`` -> ``apply_fn(params, state, images, train) ->
  (logits, new_state)``, used by the training losses, where ``params`` are the trainable
  parameters and ``state`` the rest (``{}`` for models without BatchNorm).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsp.models.cifar import NORMS, PreActResNet, ResNetV1
from rsp.models.mnist import LeNet, MLP, WideCNN

# name -> (constructor, input shape it is meant for)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[int, int, int]]] = {
    'lenet': (LeNet, (28, 28, 1)),
    'wide_cnn': (WideCNN, (28, 28, 1)),
    'mlp': (MLP, (28, 28, 1)),
    'resnet20': (lambda num_classes, **kw: ResNetV1(num_classes, depth=20, **kw),
                 (32, 32, 3)),
    'preact_resnet29': (lambda num_classes, **kw: PreActResNet(num_classes, depth=29, **kw),
                        (32, 32, 3)),
}

MODELS = tuple(_REGISTRY)


def get_model(name: str, num_classes: int, **kw: Any) -> nn.Module:
  """The model called ``name`` with ``num_classes`` outputs.

  Args:
    name: one of ``MODELS``: 'lenet' (the paper's MNIST CNN), 'wide_cnn', 'mlp'
      (MNIST transfer architectures), 'resnet20' (the paper's CIFAR-10 ResNet-20 v1),
      'preact_resnet29' (CIFAR-10 transfer architecture).
    num_classes: number of classes, >= 2.
    **kw: constructor options, e.g. ``norm='frozen'`` for the ResNets.
  """
  if name not in _REGISTRY:
    raise ValueError(f'model={name!r} is not known; accepted: {", ".join(MODELS)}.')
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f'num_classes={num_classes!r} must be an integer >= 2.')
  if 'norm' in kw and kw['norm'] not in NORMS:
    raise ValueError(f'norm={kw["norm"]!r} is not known; accepted: {", ".join(NORMS)}.')
  return _REGISTRY[name][0](num_classes=num_classes, **kw)


def input_shape(name: str) -> tuple[int, int, int]:
  """The image shape ``(H, W, C)`` model ``name`` is designed for."""
  if name not in _REGISTRY:
    raise ValueError(f'model={name!r} is not known; accepted: {", ".join(MODELS)}.')
  return _REGISTRY[name][1]


def init_model(key: jax.Array, model: nn.Module,
               image_shape: tuple[int, ...]) -> dict[str, Any]:
  """Initial variables of ``model`` for images of shape ``image_shape`` (H, W, C)."""
  if len(image_shape) != 3:
    raise ValueError(f'image_shape={tuple(image_shape)} must be (H, W, C).')
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return dict(variables)


def split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  """``(params, state)``: trainable parameters and the other collections."""
  variables = dict(variables)
  params = variables.pop('params')
  return params, variables


def merge_variables(params: Any, state: dict[str, Any]) -> dict[str, Any]:
  return {'params': params, **state}


@functools.lru_cache(maxsize=64)
def make_apply_fn(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
  """``apply_fn(variables, images) -> logits`` in evaluation mode (pure).

  Cached per model (flax modules compare by their fields), so that jitted functions
  taking ``apply_fn`` as a static argument compile once per architecture.
  """

  def apply_fn(variables, images):
    return model.apply(variables, images, train=False)

  return apply_fn


@functools.lru_cache(maxsize=64)
def make_train_apply_fn(model: nn.Module):
  """``apply_fn(params, state, images, train) -> (logits, new_state)`` (pure).

  In training mode BatchNorm normalises by batch statistics and the returned state holds
  the updated running averages; in evaluation mode the state is returned unchanged.
  """

  def apply_fn(params, state, images, train: bool = True):
    variables = merge_variables(params, state)
    if train and state:
      logits, updates = model.apply(variables, images, train=True,
                                    mutable=list(state.keys()))
      return logits, dict(updates)
    return model.apply(variables, images, train=train), state

  return apply_fn


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
