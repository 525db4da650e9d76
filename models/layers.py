"""Layer factories shared by the convolutional families, and the convolution they run.

On the CPU backend two kinds of convolution are rewritten, because XLA:CPU's convolution is
pathologically slow for them (benchmarks/bench_train.py and the README, "Performance"):

- a kernel larger than the feature map (VGG-16's 3x3 convs on its 2x2 maps): patches and one
  dot instead, 50x faster at batch 128 (1.7 s -> 35 ms forward and backward);
- depthwise convs (MobileNetV2): the sum of kh*kw shifted, scaled copies of the input, which
  XLA fuses into one loop, 3-15x faster forward and backward.

Both compute the same sums as the convolution (tests/test_layers.py checks values and
gradients against lax.conv_general_dilated in float64); the parameters are unchanged. Other
backends (GPU, TPU) always get lax.conv_general_dilated.
"""

import contextlib
import functools
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# The platform the convolutions are traced for; None: jax.default_backend(). Compiling ahead of
# time for a TPU topology on a CPU host (benchmarks/pod_compile.py) sets 'tpu', so that the
# CPU rewrites stay out of the TPU program.
_target_platform: Optional[str] = None


@contextlib.contextmanager
def target_platform(platform: str):
  """Traces the convolutions (and data/augment.py's crop) inside the block as for `platform`
  ('cpu', 'gpu', 'tpu')."""
  global _target_platform
  previous, _target_platform = _target_platform, platform
  try:
    yield
  finally:
    _target_platform = previous


def traced_platform() -> str:
  """The platform programs traced now are for: `target_platform`'s, else the default backend."""
  return _target_platform or jax.default_backend()


def _explicit_padding(padding, in_spatial, kernel, strides):
  if isinstance(padding, str):
    return lax.padtype_to_pads(in_spatial, kernel, strides, padding)
  return [tuple(p) for p in padding]


def _shifted_windows(x, kernel, strides, pads):
  """The kh*kw strided views x_pad[:, i::sh, j::sw, :] of the output's size, (i, j) order."""
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  (kh, kw), (sh, sw) = kernel, strides
  ho = (x.shape[1] - kh) // sh + 1
  wo = (x.shape[2] - kw) // sw + 1
  return [
      lax.slice(
          x,
          (0, i, j, 0),
          (x.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, x.shape[3]),
          (1, sh, sw, 1),
      )
      for i in range(kh)
      for j in range(kw)
  ]


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    rewrite=None,
):
  """lax.conv_general_dilated (NHWC inputs, HWIO kernels), with the CPU rewrites above.

  rewrite: None picks them on the CPU backend only (or the `target_platform` in force);
    True/False forces (for tests).
  dimension_numbers: None means NHWC/HWIO/NHWC here (flax passes its own, equivalent).
  lhs: f[B, H, W, C]; rhs: f[kh, kw, C / groups, K] -> f[B, H', W', K].
  """
  if dimension_numbers is None:  # this function's convention, not lax's NCHW default
    dimension_numbers = _NHWC
  native = functools.partial(
      lax.conv_general_dilated,
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
  )
  if rewrite is None:
    rewrite = traced_platform() == 'cpu'
  plain = (
      lhs.ndim == 4
      and all(d in (None, 1, (1, 1)) or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
      and (
          tuple(dimension_numbers) == _NHWC
          or dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
      )
  )
  if not (rewrite and plain):
    return native()
  kernel, strides = rhs.shape[:2], tuple(window_strides)
  channels = lhs.shape[3]
  depthwise = feature_group_count == channels and rhs.shape[2] == 1 and rhs.shape[3] == channels
  small_map = feature_group_count == 1 and (lhs.shape[1] < kernel[0] or lhs.shape[2] < kernel[1])
  if not (depthwise or small_map):
    return native()
  pads = _explicit_padding(padding, lhs.shape[1:3], kernel, strides)
  windows = _shifted_windows(lhs, kernel, strides, pads)
  if depthwise:
    taps = rhs.reshape(-1, channels)
    return sum(window * taps[k] for k, window in enumerate(windows))
  patches = jnp.concatenate(windows, axis=-1)  # [B, H', W', kh*kw*C], (i, j, c) = HWIO order
  return jnp.dot(patches, rhs.reshape(-1, rhs.shape[-1]), precision=precision)


def conv_and_norm(dtype: Any, train: bool) -> Tuple[Callable, Callable]:
  """Bias-free 'SAME' convolutions (BatchNorm follows each) and BatchNorm with the usual
  CIFAR settings (momentum 0.9, eps 1e-5; batch statistics while training)."""
  conv = functools.partial(
      nn.Conv,
      use_bias=False,
      padding='SAME',
      dtype=dtype,
      conv_general_dilated=conv_general_dilated,
  )
  norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype
  )
  return conv, norm


def max_pool_2x2(x):
  """2x2 max-pool, stride 2: f[B, H, W, C] -> f[B, H/2, W/2, C]. As a reshape and a max when H
  and W are even, whose gradient XLA:CPU runs 2x faster than reduce_window's
  select-and-scatter (ties share the gradient instead of one taking it all)."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    return nn.max_pool(x, (2, 2), strides=(2, 2))
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


# Stems and heads (config field `model_args.stem`): 'cifar' keeps the 32x32 networks of the
# design document, 'imagenet' gives the published ImageNet ones (7x7 stride-2 conv and 3x3
# max-pool for ResNet and DenseNet, stride-2 stem and second stage for MobileNetV2, the
# 4096-wide classifier for VGG-16), and 'auto' picks by the input's side when the model is
# traced: IMAGENET_MIN_SIDE pixels or more is ImageNet-sized.
STEMS = ('auto', 'cifar', 'imagenet')
IMAGENET_MIN_SIDE = 128


def resolve_stem(stem: str, x) -> str:
  """'cifar' or 'imagenet' for input x: f[B, H, W, C]; 'auto' decides by min(H, W)."""
  if stem not in STEMS:
    raise ValueError(
        f'Unknown stem {stem!r} (config field `model_args.stem`); allowed: '
        f"{', '.join(STEMS)} ('' in the config means auto)."
    )
  if stem == 'auto':
    return 'imagenet' if min(x.shape[1:3]) >= IMAGENET_MIN_SIDE else 'cifar'
  return stem


def imagenet_stem(x, features: int, conv: Callable, norm: Callable):
  """The ResNet/DenseNet ImageNet stem: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool,
  padded as in torchvision (3 and 1 pixels), so 224x224 becomes 56x56.

  Returns (activation f[B, H/2, W/2, C], pooled f[B, H/4, W/4, C]). The models tap the
  activation, before the pool: it is the same conv-BN-ReLU output that the CIFAR stem taps,
  and the TPU compiler fuses its mean into the fusion that writes it, where the pooled
  tensor's mean was the one tap reduction left on its own (benchmarks/README.md, "Where the
  tracker's bytes go on TPU").
  """
  x = conv(features, (7, 7), (2, 2), padding=((3, 3), (3, 3)))(x)
  activation = nn.relu(norm()(x))
  pooled = nn.max_pool(activation, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  return activation, pooled


def adaptive_avg_pool(x, size: int):
  """Average-pools f[B, H, W, C] to f[B, size, size, C] with torchvision's bins (bin i spans
  floor(i * H / size) .. ceil((i + 1) * H / size)); the identity when H = W = size."""
  if x.shape[1] == x.shape[2] == size:
    return x

  def pool(x, axis):
    n = x.shape[axis]
    bins = [
        jnp.mean(
            lax.slice_in_dim(x, i * n // size, -(-(i + 1) * n // size), axis=axis),
            axis=axis,
            keepdims=True,
        )
        for i in range(size)
    ]
    return jnp.concatenate(bins, axis=axis)

  return pool(pool(x, 1), 2)
