r"""The convolutions that models/layers.py rewrites on the CPU, native against rewritten:
forward plus both gradients, batch 128, jitted, same process (prints a table).

  python benchmarks/bench_conv.py

The shapes are those of the CIFAR models: VGG-16's 3x3 convs on 2x2 maps (kernel larger
than the map), MobileNetV2's depthwise convs, and, as a control, a 3x3 conv on a 4x4 map,
which is not rewritten because XLA:CPU's own convolution is fast there.
"""

import functools
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import runtime  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from models import layers  # noqa: E402
from timing import time_calls  # noqa: E402

# (label, input [B, H, W, C], kernel [kh, kw, C / groups, K], stride, groups)
SHAPES = [
    ('vgg16 block5 3x3 on 2x2', (128, 2, 2, 512), (3, 3, 512, 512), 1, 1),
    ('control: 3x3 on 4x4', (128, 4, 4, 512), (3, 3, 512, 512), 1, 1),
    ('mobilenetv2 dw 32x32x96', (128, 32, 32, 96), (3, 3, 1, 96), 1, 96),
    ('mobilenetv2 dw 32x32x144 s2', (128, 32, 32, 144), (3, 3, 1, 144), 2, 144),
    ('mobilenetv2 dw 8x8x384', (128, 8, 8, 384), (3, 3, 1, 384), 1, 384),
    ('mobilenetv2 dw 4x4x960', (128, 4, 4, 960), (3, 3, 1, 960), 1, 960),
]


def forward_backward(conv, x, w, g):
  y, vjp = jax.vjp(conv, x, w)
  return y, vjp(g)  # y too: unused, XLA would drop the forward convolution as dead code


def main():
  runtime.configure_xla_cpu()  # before the first computation (bench_layers imports this file)
  print(f'jax {jax.__version__} ({jax.default_backend()}); forward + input and kernel gradients')
  print(f"{'shape':30s} {'native ms':>10s} {'rewrite ms':>10s} {'speed-up':>8s}")
  rng = np.random.default_rng(0)
  for label, x_shape, w_shape, stride, groups in SHAPES:
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape) * 0.05, jnp.float32)
    ms = {}
    for rewrite in (False, True):
      conv = lambda x, w, rewrite=rewrite: layers.conv_general_dilated(
          x, w, (stride, stride), 'SAME', feature_group_count=groups, rewrite=rewrite
      )
      g = jnp.ones(jax.eval_shape(conv, x, w).shape, jnp.float32)
      step = jax.jit(functools.partial(forward_backward, conv))
      ms[rewrite] = 1e3 * statistics.median(
          time_calls(lambda: jax.block_until_ready(step(x, w, g)))
      )
    print(f'{label:30s} {ms[False]:10.1f} {ms[True]:10.1f} {ms[False] / ms[True]:7.1f}x')


if __name__ == '__main__':
  main()
