"""ResNet-18/34/50 with a CIFAR stem (3x3 stride 1, no max-pool) or the ImageNet one.

`stem` (config field `model_args.stem`): 'cifar' for 32x32 inputs; 'imagenet' for the
published network (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool; the bottleneck's
stride on its 3x3 conv, i.e. ResNet v1.5 as in torchvision and the Flax ImageNet example);
'auto' (default) picks by the input's side (models/layers.py, IMAGENET_MIN_SIDE).

Taps: the stem's conv-BN-ReLU output (for ImageNet before the max-pool, so that the TPU
compiler fuses its mean: models/layers.py) and the output of every residual block, in
forward order. Parameter counts for 10 classes (CIFAR stem): ResNet-18 11,173,962;
ResNet-34 21,282,122; ResNet-50 23,520,842. ImageNet stem, 1000 classes: ResNet-18
11,689,512; ResNet-34 21,797,672; ResNet-50 25,557,032 (tests/test_models.py checks them).
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from models.layers import conv_and_norm, imagenet_stem, resolve_stem


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or 1x1-projection shortcut."""

  filters: int
  strides: int
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm()(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides))(residual)
      residual = self.norm()(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (x4), with a projection shortcut when shapes change."""

  filters: int
  strides: int
  conv: Callable
  norm: Callable
  expansion: int = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(self.conv(self.filters * self.expansion, (1, 1))(y))
    if residual.shape != y.shape:
      residual = self.conv(self.filters * self.expansion, (1, 1), (self.strides, self.strides))(
          residual
      )
      residual = self.norm()(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet. ``__call__(x: f[B, H, W, 3], train) -> logits f[B, classes]``."""

  stage_sizes: Sequence[int]
  block_cls: Any
  num_classes: int
  width: int = 64
  stem: str = 'auto'  # 'auto' | 'cifar' | 'imagenet' (module docstring)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, norm = conv_and_norm(self.dtype, train)
    if resolve_stem(self.stem, x) == 'imagenet':
      stem, x = imagenet_stem(x, self.width, conv, norm)  # tap before the max-pool
    else:
      x = stem = nn.relu(norm()(conv(self.width, (3, 3))(x)))
    self.sow('intermediates', 'stem', stem)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(self.width * 2**stage, strides, conv=conv, norm=norm)(x)
        self.sow('intermediates', f'stage{stage + 1}_block{block + 1}', x)
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)

# Registry entries: name -> constructor(num_classes, **variant). The tiny variant keeps the
# ResNet-18 topology (9 taps) at width 8 for tests.
VARIANTS = {
    'resnet18': ResNet18,
    'resnet34': ResNet34,
    'resnet50': ResNet50,
    'resnet18_tiny': functools.partial(ResNet18, width=8),
}
