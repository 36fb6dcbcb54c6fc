"""CIFAR-10 architectures: ResNet-20 v1 (the paper's) and a pre-activation ResNet-29.

BatchNorm (docs/reference_implementation.md#q1-batchnorm-runs-in-inference-mode). The
reference code never sets Keras's learning phase, so its BatchNorm layers always use their
moving statistics, which are never updated (mean 0, variance 1): BN is a fixed affine map
gamma * x / sqrt(1 + 1e-3) + beta and the ResNet is effectively trained without
normalisation. rsp offers both:

* ``norm='batch'`` (default): standard BatchNorm, batch statistics in training
  (``train=True``, running averages in the ``batch_stats`` collection) and running
  statistics at evaluation, as in PyTorch and in the robust-training papers' code.
* ``norm='frozen'``: the reference's behaviour, trainable scale and bias over fixed
  statistics (mean 0, variance 1, epsilon 1e-3); the model then has no state.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ('batch', 'frozen')


class FrozenBatchNorm(nn.Module):
  """BatchNorm whose statistics stay at mean 0 and variance 1 (the reference's BN)."""
  epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    return x * (scale / jnp.sqrt(1.0 + self.epsilon)) + bias


def _norm(norm: str, train: bool, name: str | None = None) -> Any:
  if norm == 'batch':
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3,
                        name=name)
  if norm == 'frozen':
    return FrozenBatchNorm(name=name)
  raise ValueError(f'norm={norm!r} is not known; accepted: {", ".join(NORMS)}.')


_he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


class ResNetV1(nn.Module):
  """CIFAR ResNet v1 (He et al. 2016, the Keras example), depth 6n+2; depth 20 = 0.27M.

  Stem conv3x3 16 + BN + ReLU; 3 stages of n basic blocks (conv-BN-ReLU-conv-BN, add,
  ReLU) with 16/32/64 filters; stride 2 and a 1x1 projection shortcut (no BN) at the
  start of stages 2 and 3; global average pool; Dense (logits).
  """
  num_classes: int = 10
  depth: int = 20
  norm: str = 'batch'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 2) % 6:
      raise ValueError(f'depth={self.depth} must be 6n+2 (20, 32, 44, 56, ...).')
    n = (self.depth - 2) // 6
    conv = lambda f, k=3, s=1: nn.Conv(f, (k, k), strides=(s, s), padding='SAME',
                                        kernel_init=_he_normal)
    x = nn.relu(_norm(self.norm, train)(conv(16)(x)))
    for stage, filters in enumerate((16, 32, 64)):
      for block in range(n):
        stride = 2 if stage > 0 and block == 0 else 1
        y = nn.relu(_norm(self.norm, train)(conv(filters, 3, stride)(x)))
        y = _norm(self.norm, train)(conv(filters)(y))
        if stride != 1:
          x = conv(filters, 1, stride)(x)
        x = nn.relu(x + y)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_he_normal)(x)


class PreActResNet(nn.Module):
  """Pre-activation bottleneck ResNet v2 (He et al. 2016b), depth 9n+2 (29: n=3).

  The reference code's transfer architecture (``resnet_v2``): stem conv 16 + BN + ReLU;
  3 stages of n bottleneck blocks (BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1)
  with 16/64, 64/128 and 128/256 (in/out) filters and a 1x1 projection at each stage's
  first block; BN-ReLU, global average pool, Dense.
  """
  num_classes: int = 10
  depth: int = 29
  norm: str = 'batch'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 2) % 9:
      raise ValueError(f'depth={self.depth} must be 9n+2 (29, 56, ...).')
    n = (self.depth - 2) // 9
    conv = lambda f, k=3, s=1: nn.Conv(f, (k, k), strides=(s, s), padding='SAME',
                                        kernel_init=_he_normal)
    x = nn.relu(_norm(self.norm, train)(conv(16)(x)))
    filters_in = 16
    for stage in range(3):
      filters_out = filters_in * (4 if stage == 0 else 2)
      for block in range(n):
        stride = 2 if stage > 0 and block == 0 else 1
        pre = x if (stage == 0 and block == 0) else nn.relu(_norm(self.norm, train)(x))
        y = conv(filters_in, 1, stride)(pre)
        y = conv(filters_in)(nn.relu(_norm(self.norm, train)(y)))
        y = conv(filters_out, 1)(nn.relu(_norm(self.norm, train)(y)))
        if block == 0:
          x = conv(filters_out, 1, stride)(pre)
        x = x + y
      filters_in = filters_out
    x = nn.relu(_norm(self.norm, train)(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_he_normal)(x)
