"""VGG-16 with batch norm for 32x32 inputs (CIFAR head: global features 512 -> classes).

The 13 convolutions follow the original configuration D; each is conv3x3 (no bias) -> BN ->
ReLU, and the five max-pools bring 32x32 down to 1x1, so the classifier is a single Dense
layer on the 512 features instead of the ImageNet 4096-wide FC stack.

Taps: every conv layer (after BN + ReLU), in forward order: 13 taps.
Parameter counts: 14,724,042 (10 classes), 14,770,212 (100 classes).
"""

import functools
from typing import Any, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from models.layers import conv_and_norm, max_pool_2x2

# Configuration D in units of the base width: an int is a conv of width * k channels, 'M' a
# 2x2 max-pool.
VGG16_LAYOUT = (1, 1, 'M', 2, 2, 'M', 4, 4, 4, 'M', 8, 8, 8, 'M', 8, 8, 8, 'M')


class VGG(nn.Module):
  """CIFAR VGG. ``__call__(x: f[B, H, W, 3], train) -> logits f[B, classes]``."""

  num_classes: int
  layout: Sequence[Union[int, str]] = VGG16_LAYOUT
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, norm = conv_and_norm(self.dtype, train)
    block, layer = 1, 1
    for item in self.layout:
      if item == 'M':
        x = max_pool_2x2(x)
        block, layer = block + 1, 1
        continue
      x = nn.relu(norm()(conv(self.width * item, (3, 3))(x)))
      self.sow('intermediates', f'block{block}_conv{layer}', x)
      layer += 1
    x = jnp.mean(x, axis=(1, 2))  # 1x1 after five pools at 32x32; any size still works.
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32)


VGG16 = functools.partial(VGG, layout=VGG16_LAYOUT)

# Registry entries: name -> constructor(num_classes, **variant). The tiny variant keeps all 13
# conv taps at base width 8 for tests.
VARIANTS = {
    'vgg16': VGG16,
    'vgg16_tiny': functools.partial(VGG16, width=8),
}
