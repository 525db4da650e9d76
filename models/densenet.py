"""DenseNet-121 with a CIFAR stem (3x3 stride 1, no max-pool) or the ImageNet one.

`stem` (config field `model_args.stem`): 'cifar' for 32x32 inputs, 'imagenet' for the
published network (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool, as torchvision's
densenet121), 'auto' (default) by the input's side (models/layers.py, IMAGENET_MIN_SIDE).

CIFAR stem: conv3x3 (2 * growth channels, no bias) -> BN -> ReLU. Dense layer (pre-activation
bottleneck): BN -> ReLU -> conv1x1 (4 * growth) -> BN -> ReLU -> conv3x3 (growth), whose
output is concatenated to the running features. Transition: BN -> ReLU -> conv1x1
(floor(compression * channels)) -> 2x2 average pool. Head: BN -> ReLU -> global mean -> Dense.
The BN after the stem conv is what distinguishes this from the common pytorch-cifar variant
(+128 parameters); with it the counts are those of the design document.

Taps: the stem's conv-BN-ReLU output (for ImageNet before the max-pool, as in
models/resnet.py), every dense layer's new features (the growth-channel conv3x3 output, before
concatenation) and every transition output, in forward order: DenseNet-121 has 1 + 58 + 3 = 62.
Parameter counts (CIFAR stem): 6,956,426 (10 classes), 7,048,676 (100 classes); ImageNet
stem, 1000 classes: 7,978,856, the published count.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from models.layers import conv_and_norm, imagenet_stem, resolve_stem


class DenseLayer(nn.Module):
  """Bottleneck dense layer; returns only its ``growth`` new channels."""

  growth: int
  bottleneck: int
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.bottleneck * self.growth, (1, 1))(nn.relu(self.norm()(x)))
    return self.conv(self.growth, (3, 3))(nn.relu(self.norm()(y)))


class Transition(nn.Module):
  """BN-ReLU-conv1x1 compression followed by 2x2 average pooling."""

  features: int
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, (1, 1))(nn.relu(self.norm()(x)))
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """DenseNet. ``__call__(x: f[B, H, W, 3], train) -> logits f[B, classes]``."""

  num_classes: int
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth: int = 32
  bottleneck: int = 4
  compression: float = 0.5
  stem: str = 'auto'  # 'auto' | 'cifar' | 'imagenet' (module docstring)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, norm = conv_and_norm(self.dtype, train)
    if resolve_stem(self.stem, x) == 'imagenet':
      stem, x = imagenet_stem(x, 2 * self.growth, conv, norm)  # tap before the max-pool
    else:
      x = stem = nn.relu(norm()(conv(2 * self.growth, (3, 3))(x)))
    self.sow('intermediates', 'stem', stem)
    for block, num_layers in enumerate(self.block_sizes):
      for layer in range(num_layers):
        new = DenseLayer(self.growth, self.bottleneck, conv=conv, norm=norm)(x)
        self.sow('intermediates', f'block{block + 1}_layer{layer + 1}', new)
        x = jnp.concatenate([x, new], axis=-1)
      if block + 1 < len(self.block_sizes):
        features = int(x.shape[-1] * self.compression)
        x = Transition(features, conv=conv, norm=norm)(x)
        self.sow('intermediates', f'transition{block + 1}', x)
    x = nn.relu(norm()(x))
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32)


DenseNet121 = functools.partial(DenseNet, block_sizes=(6, 12, 24, 16), growth=32)

# Registry entries: name -> constructor(num_classes, **variant). The tiny variant (growth 8,
# two layers per block) keeps every kind of tap: 1 + 8 + 3 = 12.
VARIANTS = {
    'densenet121': DenseNet121,
    'densenet121_tiny': functools.partial(DenseNet121, block_sizes=(2, 2, 2, 2), growth=8),
}
