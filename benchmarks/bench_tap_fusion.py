r"""Why the tracker's share of a step's bytes accessed stays above 0.5% on XLA:CPU.

  python benchmarks/bench_tap_fusion.py

The step-mode signal of a tap is the mean of its activation over everything (DESIGN 3.1). This
compiles a toy block, x = relu(a + b) feeding a 3x3 convolution, with x also an output (a train
step keeps a block's output for the backward pass, so it is written to memory either way), with
and without mean(x) as one more output, and prints XLA's bytes accessed for each: whether the
mean was fused into the loop fusion that produces x (no extra read) or runs as a fusion of its
own (one more read of x). Cost analysis of the compiled program is deterministic: no timing.
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_list('shape', ['128', '32', '32', '64'], 'Activation shape B,H,W,C.')
FLAGS = flags.FLAGS


def _block(a, b, w):
  x = jax.nn.relu(a + b)
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return x, jnp.sum(y)


def without_tap(a, b, w):
  return _block(a, b, w)


def with_tap(a, b, w):
  x, out = _block(a, b, w)
  return x, out, jnp.mean(x)


def _bytes(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['bytes accessed'])


def main(argv):
  del argv
  shape = tuple(int(s) for s in FLAGS.shape)
  a = jax.ShapeDtypeStruct(shape, jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, shape[-1], shape[-1]), jnp.float32)
  base, tapped = _bytes(without_tap, a, a, w), _bytes(with_tap, a, a, w)
  size = 4 * math.prod(shape)
  print(
      f'backend {jax.default_backend()}, jax {jax.__version__}, activation {shape} f32 '
      f'({size / 1e6:.1f} MB)'
  )
  print(f'bytes accessed without the tap mean: {base / 1e6:8.1f} MB')
  print(f'bytes accessed with the tap mean:    {tapped / 1e6:8.1f} MB')
  extra = (tapped - base) / size
  print(
      f'extra: {extra:.2f} x the activation: '
      + ('the mean re-reads it (not fused into its producer)' if extra > 0.5 else 'fused')
  )


if __name__ == '__main__':
  app.run(main)
