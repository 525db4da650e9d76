"""VGG-16 with batch norm, with the CIFAR head (512 -> classes) or the ImageNet one.

The 13 convolutions follow the original configuration D; each is conv3x3 -> BN -> ReLU.
`stem` (config field `model_args.stem`; for VGG it chooses the head):
  'cifar': convs without bias; the five max-pools bring 32x32 down to 1x1, so the classifier
    is a single Dense layer on the 512 features instead of the ImageNet 4096-wide FC stack.
  'imagenet': the published vgg16_bn (torchvision): convs with a bias, the 7x7x512 features
    (adaptive average pool to 7x7, the identity at 224x224) flattened into Dense 4096, ReLU,
    dropout 0.5, Dense 4096, ReLU, dropout 0.5, Dense classes. Dropout needs a 'dropout' rng
    when training, as MobileNetV2's does.
  'auto' (default): by the input's side (models/layers.py, IMAGENET_MIN_SIDE).

Taps: every conv layer (after BN + ReLU), in forward order: 13 taps.
Parameter counts: 14,724,042 (10 classes), 14,770,212 (100 classes); ImageNet head, 1000
classes: 138,365,992, the published vgg16_bn count.
"""

import functools
from typing import Any, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from models.layers import adaptive_avg_pool, conv_and_norm, max_pool_2x2, resolve_stem

# Configuration D in units of the base width: an int is a conv of width * k channels, 'M' a
# 2x2 max-pool.
VGG16_LAYOUT = (1, 1, 'M', 2, 2, 'M', 4, 4, 4, 'M', 8, 8, 8, 'M', 8, 8, 8, 'M')


class VGG(nn.Module):
  """VGG. ``__call__(x: f[B, H, W, 3], train) -> logits f[B, classes]``."""

  num_classes: int
  layout: Sequence[Union[int, str]] = VGG16_LAYOUT
  width: int = 64
  stem: str = 'auto'  # 'auto' | 'cifar' | 'imagenet' (module docstring)
  hidden: int = 4096  # the ImageNet head's two hidden layers
  dropout_rate: float = 0.5  # the ImageNet head's
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, norm = conv_and_norm(self.dtype, train)
    imagenet = resolve_stem(self.stem, x) == 'imagenet'
    if imagenet:  # torchvision's vgg16_bn keeps the conv bias in front of BN
      conv = functools.partial(conv, use_bias=True)
    block, layer = 1, 1
    for item in self.layout:
      if item == 'M':
        x = max_pool_2x2(x)
        block, layer = block + 1, 1
        continue
      x = nn.relu(norm()(conv(self.width * item, (3, 3))(x)))
      self.sow('intermediates', f'block{block}_conv{layer}', x)
      layer += 1
    if imagenet:
      x = adaptive_avg_pool(x, 7).reshape(x.shape[0], -1)
      for _ in range(2):
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    else:
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
