"""MobileNetV2 (width 1.0, ReLU6) with CIFAR strides or the ImageNet ones.

`stem` (config field `model_args.stem`): 'cifar' is the ImageNet network with two strides
removed: the stem conv and the second stage (t=6, c=24) run at stride 1, so 32x32 inputs
reach the last conv at 4x4; 'imagenet' keeps both at stride 2 (224x224 reaches 7x7), the
published network; 'auto' (default) picks by the input's side (models/layers.py,
IMAGENET_MIN_SIDE). The strides change no parameter. Every conv is
followed by BN and carries no bias; the last 1x1 conv has 1280 channels, then global mean,
dropout 0.2 and a Dense head.

Dropout: with ``train=True`` the model needs a 'dropout' rng, so the caller applies it as
``model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key})``;
with ``train=False`` dropout is the identity and no rng is needed.

Taps: the stem and every inverted-residual block, in forward order: 1 + 17 = 18.
Parameter counts: 2,236,682 (10 classes), 2,351,972 (100 classes), 3,504,872 (1000 classes,
the published ImageNet count).
"""

import functools
from typing import Any, Callable, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from models.layers import conv_and_norm, resolve_stem

# (expansion t, channels c, repeats n, first stride s) per stage; the ImageNet table with
# the second stage's stride set to 1 for 32x32 inputs.
CIFAR_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds a width to a multiple of ``divisor``, never more than 10% below ``value``."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
  """1x1 expand (skipped for t=1) -> 3x3 depthwise -> 1x1 linear projection (+ identity)."""

  features: int
  strides: int
  expansion: int
  conv: Callable
  norm: Callable

  @nn.compact
  def __call__(self, x):
    hidden = x.shape[-1] * self.expansion
    y = x
    if self.expansion != 1:
      y = nn.relu6(self.norm()(self.conv(hidden, (1, 1))(y)))
    y = self.conv(hidden, (3, 3), (self.strides, self.strides), feature_group_count=hidden)(y)
    y = nn.relu6(self.norm()(y))
    y = self.norm()(self.conv(self.features, (1, 1))(y))
    if self.strides == 1 and x.shape[-1] == self.features:
      y = x + y
    return y


class MobileNetV2(nn.Module):
  """MobileNetV2. ``__call__(x: f[B, H, W, 3], train) -> logits f[B, classes]``.

  ``train=True`` needs ``rngs={'dropout': key}`` (see the module docstring).
  """

  num_classes: int
  stages: Sequence[Tuple[int, int, int, int]] = CIFAR_STAGES
  width_mult: float = 1.0
  stem_features: int = 32
  last_features: int = 1280
  dropout_rate: float = 0.2
  stem: str = 'auto'  # 'auto' | 'cifar' | 'imagenet' (module docstring)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, norm = conv_and_norm(self.dtype, train)
    # ImageNet: the stem and the second stage at stride 2 (the stages table holds the CIFAR 1).
    imagenet = resolve_stem(self.stem, x) == 'imagenet'
    stem_stride = 2 if imagenet else 1
    x = conv(make_divisible(self.stem_features * self.width_mult), (3, 3), (stem_stride,) * 2)(x)
    x = nn.relu6(norm()(x))
    self.sow('intermediates', 'stem', x)
    for stage, (expansion, channels, repeats, stride) in enumerate(self.stages):
      if imagenet and stage == 1:
        stride = 2
      features = make_divisible(channels * self.width_mult)
      for block in range(repeats):
        x = InvertedResidual(
            features, stride if block == 0 else 1, expansion, conv=conv, norm=norm
        )(x)
        self.sow('intermediates', f'stage{stage + 1}_block{block + 1}', x)
    # As in the paper, the last conv is never made narrower than its width-1.0 size.
    last = make_divisible(self.last_features * max(1.0, self.width_mult))
    x = nn.relu6(norm()(conv(last, (1, 1))(x)))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32)


# Registry entries: name -> constructor(num_classes, **variant). The tiny variant (width 0.25,
# one or two blocks per stage, 128-channel last conv) keeps residual blocks and 10 taps.
VARIANTS = {
    'mobilenetv2': MobileNetV2,
    'mobilenetv2_tiny': functools.partial(
        MobileNetV2,
        width_mult=0.25,
        last_features=128,
        stages=(
            (1, 16, 1, 1),
            (6, 24, 2, 1),
            (6, 32, 2, 2),
            (6, 64, 1, 2),
            (6, 96, 1, 1),
            (6, 160, 1, 2),
            (6, 320, 1, 1),
        ),
    ),
}
