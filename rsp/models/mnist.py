"""MNIST architectures: the paper's LeNet-style CNN and two transfer architectures."""

from __future__ import annotations

import flax.linen as nn
import jax


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, for even H and W.

  A reshape and a max: its gradient is much cheaper on XLA CPU than the
  select-and-scatter of ``nn.max_pool``
  (docs/measured_facts.md#max-pooling-by-reshape-has-a-cheaper-gradient), and identical in
  value.
  """
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class LeNet(nn.Module):
  """The MNIST CNN of Mehra et al.'s code (Keras ``conv_model``), 431,080 parameters.

  Conv 20@5x5 (valid) - ReLU - MaxPool 2 - Conv 50@5x5 (valid) - ReLU - MaxPool 2 -
  Flatten (800) - Dense 500 - ReLU - Dense ``num_classes`` (logits). Keras defaults:
  Glorot-uniform kernels, zero biases.
  """
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or normalisation.
    init = nn.initializers.glorot_uniform()
    x = nn.relu(nn.Conv(20, (5, 5), padding='VALID', kernel_init=init)(x))
    x = max_pool_2x2(x)  # [B, 12, 12, 20]
    x = nn.relu(nn.Conv(50, (5, 5), padding='VALID', kernel_init=init)(x))
    x = max_pool_2x2(x)  # [B, 4, 4, 50]
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(500, kernel_init=init)(x))
    return nn.Dense(self.num_classes, kernel_init=init)(x)


class WideCNN(nn.Module):
  """A wider, deeper MNIST CNN for architecture transfer (870,634 parameters).

  Two 3x3 conv blocks of 32 and 64 channels (two convs each, 'SAME' padding, max-pool),
  then Dense 256 and the classifier.
  """
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    for width in (32, 64):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(256)(x))
    return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
  """A fully connected network (784-512-512-K) for architecture transfer."""
  num_classes: int = 10
  hidden: tuple[int, ...] = (512, 512)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)
