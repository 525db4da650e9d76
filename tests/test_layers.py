"""models/layers.py: the CPU rewrites of convolution and max-pool equal the lax ops (float64)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from models import layers


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _conv_and_grads(conv, x, w):
  y, vjp = jax.vjp(conv, x, w)
  g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape))
  return (y,) + vjp(g)


CASES = [
    # (input shape, kernel shape, strides, padding, groups)
    ((3, 2, 2, 5), (3, 3, 5, 4), (1, 1), 'SAME', 1),  # kernel larger than the map
    ((3, 1, 1, 6), (3, 3, 6, 2), (1, 1), 'SAME', 1),
    ((2, 2, 3, 4), (3, 3, 4, 3), (2, 2), 'SAME', 1),
    ((2, 2, 2, 4), (3, 3, 4, 3), (1, 1), [(2, 0), (1, 1)], 1),
    ((2, 8, 8, 6), (3, 3, 1, 6), (1, 1), 'SAME', 6),  # depthwise
    ((2, 9, 8, 6), (3, 3, 1, 6), (2, 2), 'SAME', 6),
    ((2, 7, 7, 4), (5, 5, 1, 4), (2, 1), 'VALID', 4),
]


@pytest.mark.parametrize('shape,kernel,strides,padding,groups', CASES)
def test_rewrites_equal_lax_conv_with_gradients(shape, kernel, strides, padding, groups):
  rng = np.random.default_rng(0)
  x, w = jnp.asarray(rng.standard_normal(shape)), jnp.asarray(rng.standard_normal(kernel))
  want = _conv_and_grads(
      lambda x, w: lax.conv_general_dilated(
          x,
          w,
          strides,
          padding,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          feature_group_count=groups,
      ),
      x,
      w,
  )
  got = _conv_and_grads(
      lambda x, w: layers.conv_general_dilated(
          x, w, strides, padding, feature_group_count=groups, rewrite=True
      ),
      x,
      w,
  )
  for g, v in zip(got, want):
    assert g.shape == v.shape
    np.testing.assert_allclose(g, v, rtol=1e-12, atol=1e-12)


def test_unrewritten_shapes_take_the_native_nhwc_conv():
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 6, 6, 3)))
  w = jnp.asarray(np.random.default_rng(5).standard_normal((3, 3, 3, 4)))
  want = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  for rewrite in (True, False, None):
    got = layers.conv_general_dilated(x, w, (1, 1), 'SAME', rewrite=rewrite)
    np.testing.assert_allclose(got, want, rtol=1e-12)
  # A 1-D convolution (not NHWC) passes through untouched.
  x1, w1 = x[:, 0], w[0]
  dims = ('NWC', 'WIO', 'NWC')
  np.testing.assert_allclose(
      layers.conv_general_dilated(x1, w1, (1,), 'SAME', dimension_numbers=dims, rewrite=True),
      lax.conv_general_dilated(x1, w1, (1,), 'SAME', dimension_numbers=dims),
      rtol=1e-12,
  )


def test_flax_conv_takes_the_rewrite_and_keeps_its_parameters():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 2, 2, 8)))
  plain = nn.Conv(16, (3, 3), use_bias=False, padding='SAME')
  fast = nn.Conv(
      16,
      (3, 3),
      use_bias=False,
      padding='SAME',
      conv_general_dilated=lambda *a, **k: layers.conv_general_dilated(*a, **k, rewrite=True),
  )
  variables = plain.init(jax.random.key(0), x)
  np.testing.assert_allclose(fast.apply(variables, x), plain.apply(variables, x), rtol=1e-12)


def test_max_pool_2x2_equals_reduce_window():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6, 4, 3)))
  np.testing.assert_array_equal(layers.max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
  odd = x[:, :5]
  np.testing.assert_array_equal(layers.max_pool_2x2(odd), nn.max_pool(odd, (2, 2), strides=(2, 2)))
  # Without ties the gradients agree too.
  g_reshape = jax.grad(lambda x: jnp.sum(layers.max_pool_2x2(x) ** 2))(x)
  g_window = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) ** 2))(x)
  np.testing.assert_allclose(g_reshape, g_window, rtol=1e-12)
