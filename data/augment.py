"""Augmentation and normalisation in jnp, meant to run inside the jitted train/eval step.

Keeping this on the accelerator means the host only gathers uint8 batches (4x fewer bytes than f32
to transfer) and the per-example randomness comes from the step's JAX RNG, so a resumed run
reproduces it from the checkpointed key. All shapes are static; nothing loops over the batch in
Python.

Conventions (the standard CIFAR recipe, as in torchvision's RandomCrop(32, padding=4) +
RandomHorizontalFlip + Normalize): the crop pads the *raw* uint8 image with zeros (black), so padded
pixels normalise to -mean/std, not to 0; mean/std are per channel in 0..255 units.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models.layers import traced_platform


def _size2(out_size):
  """None | int | (h, w) -> None | (h, w)."""
  if out_size is None:
    return None
  if isinstance(out_size, int):
    return (out_size, out_size)
  h, w = out_size
  return (int(h), int(w))


def _check_images(images):
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")


def _normalize_float(x, mean, std):
  """(x - mean) / std per channel; x f32[..., 3], mean/std in 0..255 units."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std


def _resize(x, out_size):
  """Bilinear resize of f32[B, H, W, 3] to f32[B, h, w, 3] (no-op when out_size is None/equal)."""
  size = _size2(out_size)
  if size is None or size == tuple(x.shape[1:3]):
    return x
  # antialias only matters when shrinking; for the 32 -> 224 ViT upsampling it is plain bilinear.
  return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method="bilinear")


def normalize(images, mean, std, out_size=None):
  """Evaluation preprocessing: normalise (and optionally resize), no randomness.

  Args:
    images: u8[B, H, W, 3] (or any real dtype in 0..255 units).
    mean, std: f[3], per-channel, 0..255 units (Dataset.mean / Dataset.std).
    out_size: None, int or (h, w): bilinear resize target (e.g. 224 for ViT-B/16).
  Returns:
    f32[B, H', W', 3] with (H', W') = out_size or (H, W).
  """
  _check_images(images)
  x = jnp.asarray(images).astype(jnp.float32)
  # Resize and per-channel normalisation commute (bilinear weights sum to one); resizing last
  # keeps the cheap elementwise work on the small image.
  return _resize(_normalize_float(x, mean, std), out_size)


def random_crop(rng, images, padding):
  """Per-example random crop of the zero-padded images back to their size.

  Args:
    rng: PRNG key.
    images: [B, H, W, C], any dtype.
    padding: p >= 0 pixels of zeros on every side; offsets are uniform in [0, 2p] per axis.
  Returns:
    [B, H, W, C], same dtype: out[b] = pad(images[b])[dy_b:dy_b + H, dx_b:dx_b + W].
  """
  if padding == 0:
    return images
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * padding + 1)
  if traced_platform() == "tpu":
    # vmap(dynamic_slice) is a gather, which the TPU compiler runs as a loop over the batch:
    # 1.60 M estimated cycles for 128 CIFAR images on a v5e, against 0.06 M for one select
    # per shift (benchmarks/bench_step_input.py; benchmarks/README.md, "The step's input on
    # TPU"). XLA:CPU runs the selects about 30x slower than the gather, so other backends
    # keep the gather. Both take the same windows.
    rows = _shift_window(padded, offsets[:, 0], axis=1, size=h)
    return _shift_window(rows, offsets[:, 1], axis=2, size=w)
  crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def _shift_window(x, shifts, axis: int, size: int):
  """out[b] = x[b] sliced [shifts[b], shifts[b] + size) along `axis`: one select per static
  shift, so only elementwise work.

  Args:
    x: [B, ...]; shifts: int[B] in [0, x.shape[axis] - size].
  Returns:
    [B, ...] with x.shape[axis] replaced by size.
  """
  mask_shape = (-1,) + (1,) * (x.ndim - 1)
  out = jax.lax.slice_in_dim(x, 0, size, axis=axis)
  for shift in range(1, x.shape[axis] - size + 1):
    window = jax.lax.slice_in_dim(x, shift, shift + size, axis=axis)
    out = jnp.where((shifts == shift).reshape(mask_shape), window, out)
  return out


def random_flip(rng, images):
  """Flips each example left-right with probability 1/2. images: [B, H, W, C] -> same."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def augment(rng, images, mean, std, crop_padding=4, flip=True, out_size=None):
  """Training preprocessing: random crop + flip + normalise (+ resize), per example.

  Args:
    rng: PRNG key (jax.random.key or PRNGKey); split internally into crop and flip keys.
    images: u8[B, H, W, 3].
    mean, std: f[3], per-channel, 0..255 units (Dataset.mean / Dataset.std).
    crop_padding: p; random crop of the image zero-padded by p (0 disables the crop).
    flip: random horizontal flip with probability 1/2 per example.
    out_size: None, int or (h, w): bilinear resize target (e.g. 224 for ViT-B/16).
  Returns:
    f32[B, H', W', 3] with (H', W') = out_size or (H, W).
  """
  _check_images(images)
  if crop_padding < 0:
    raise ValueError(f"crop_padding={crop_padding} must be >= 0.")
  crop_rng, flip_rng = jax.random.split(rng)
  x = jnp.asarray(images)
  # Crop and flip on uint8: they only move pixels, and moving 1-byte values is 4x cheaper.
  x = random_crop(crop_rng, x, crop_padding)
  if flip:
    x = random_flip(flip_rng, x)
  return _resize(_normalize_float(x.astype(jnp.float32), mean, std), out_size)
