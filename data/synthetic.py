"""A seeded synthetic image classification dataset: learnable, not trivial, any number of classes.

Each class owns a smooth colour texture: a sum of a few plane waves with small integer spatial
frequencies, each with its own colour. An example is its class's texture, circularly shifted by a
random offset (so position/phase carries no label information and a pixel-wise linear classifier
does poorly), scaled by a random contrast, plus a random per-channel brightness offset, a weaker
texture of another random class (a distractor) and Gaussian pixel noise. A small CNN reads the
label off local orientation/frequency/colour statistics within a few hundred steps.

Measured with the defaults (10 classes, 2048/512 examples, seed 0) and a 3-layer CNN
(conv 32-64-128 + max-pool, global mean, Adam 1e-3, batch 128, data.augment crop+flip): test
accuracy 33% after 25 steps, 51% after 50, 91% after 100, 97% after 300; ridge regression on
raw pixels reaches 13% (chance 10%).

Integer frequencies make the texture periodic on the image grid, so the shift is exact and is
applied in closed form as a phase change.
"""

from __future__ import annotations

import numpy as np

_NUM_WAVES = 3  # plane waves per class texture
_MAX_FREQ = 3  # |frequency| in cycles per image, per axis
_AMPLITUDE = 45.0  # grey levels of a unit-contrast texture (std over pixels)
_CONTRAST = (0.4, 1.2)
_BRIGHTNESS_STD = 12.0
_DISTRACTOR = (0.0, 0.8)  # weight of another class's texture, relative to the true one
_NOISE_STD = 45.0

# Independent random streams derived from the one seed.
_PATTERN_STREAM, _TRAIN_STREAM, _TEST_STREAM = 0, 1, 2


def _class_waves(rng, num_classes):
  """Per-class plane waves: freqs int[C, K, 2], phases f64[C, K], colours f64[C, K, 3]."""
  span = np.arange(-_MAX_FREQ, _MAX_FREQ + 1)
  grid = np.stack(np.meshgrid(span, span, indexing="ij"), -1).reshape(-1, 2)
  # Keep one of each (f, -f) pair and drop (0, 0): they give the same wave up to phase.
  grid = grid[(grid[:, 0] > 0) | ((grid[:, 0] == 0) & (grid[:, 1] > 0))]
  freqs = np.stack(
      [grid[rng.choice(len(grid), _NUM_WAVES, replace=False)] for _ in range(num_classes)]
  )
  phases = rng.uniform(0, 2 * np.pi, (num_classes, _NUM_WAVES))
  colours = rng.normal(size=(num_classes, _NUM_WAVES, 3))
  colours /= np.linalg.norm(colours, axis=-1, keepdims=True)
  return freqs, phases, colours


def _textures(freqs, phases, colours, classes, shifts, size):
  """Shifted class textures, unit std per texture.

  Args:
    freqs, phases, colours: from _class_waves.
    classes: int[n], which class's texture.
    shifts: int[n, 2], circular (dy, dx) shift in pixels.
    size: image side S.
  Returns:
    f32[n, S, S, 3].
  """
  coords = np.arange(size)
  f = freqs[classes].astype(np.float64)  # [n, K, 2]
  # Shift by (dy, dx) adds 2 pi (fy dy + fx dx) / S to the phase of each wave.
  delta = phases[classes] + 2 * np.pi * (f * shifts[:, None, :]).sum(-1) / size  # [n, K]
  # Separable: cos(ay + ax + d) = Re(e^{i ay} e^{i (ax + d)}), so the sum over waves is one small
  # complex matmul per example instead of n*K*S*S cosines.
  ey = np.exp(2j * np.pi * f[..., 0, None] * coords / size).astype(np.complex64)  # [n, K, S]
  ex = np.exp(1j * (2 * np.pi * f[..., 1, None] * coords / size + delta[..., None]))
  exc = ex.astype(np.complex64)[..., None] * colours[classes][:, :, None, :]  # [n, K, S, 3]
  out = np.matmul(ey.transpose(0, 2, 1), exc.reshape(len(classes), _NUM_WAVES, size * 3)).real
  # Distinct integer frequencies with |f| <= 3 < S/2, one per (f, -f) pair, are orthogonal on the
  # S x S grid and average cos^2 = 1/2, so every texture has mean 0 and variance K / 6 exactly
  # (unit-norm colours, averaged over 3 channels).
  return (out / np.sqrt(_NUM_WAVES / 6)).reshape(len(classes), size, size, 3).astype(np.float32)


def _examples(rng, waves, labels, size, chunk=1024):
  """u8[n, S, S, 3] images of the given labels (int[n]); vectorised in chunks to bound memory."""
  num_classes = waves[0].shape[0]
  n = labels.shape[0]
  images = np.empty((n, size, size, 3), np.uint8)
  for start in range(0, n, chunk):
    lab = labels[start : start + chunk]
    m = lab.shape[0]
    shifts = rng.integers(0, size, (m, 2))
    contrast = rng.uniform(*_CONTRAST, (m, 1, 1, 1))
    brightness = rng.normal(0, _BRIGHTNESS_STD, (m, 1, 1, 3))
    # A distractor from a different class: label + 1..C-1 (mod C); none when C == 1.
    other = (lab + rng.integers(1, max(num_classes, 2), m)) % num_classes
    other_w = rng.uniform(*_DISTRACTOR, (m, 1, 1, 1)) * (num_classes > 1)
    other_shifts = rng.integers(0, size, (m, 2))
    noise = rng.normal(0, _NOISE_STD, (m, size, size, 3))
    x = (
        128.0
        + brightness
        + _AMPLITUDE
        * contrast
        * (
            _textures(*waves, lab, shifts, size)
            + other_w * _textures(*waves, other, other_shifts, size)
        )
        + noise
    )
    images[start : start + m] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
  return images


def _balanced_labels(rng, n, num_classes):
  """int32[n]: every class n // C or n // C + 1 times, in random order."""
  return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def make_synthetic(num_classes=10, train_size=2048, test_size=512, image_size=32, seed=0):
  """Generates the synthetic dataset.

  Same arguments -> bit-identical arrays; a different seed -> different textures and examples.
  Train and test share the class textures (drawn from the seed) but not the examples.

  Args:
    num_classes: C >= 1.
    train_size, test_size: N, M >= C, so that every class appears in both splits.
    image_size: S >= 8.
    seed: int >= 0.
  Returns:
    (train_images u8[N, S, S, 3], train_labels int32[N], test_images u8[M, S, S, 3],
     test_labels int32[M], class_names ('class_0', ..., f'class_{C-1}')).
  """
  if num_classes < 1:
    raise ValueError(f"data.num_classes={num_classes} must be >= 1 for the synthetic source.")
  for field, n in (("train_size", train_size), ("test_size", test_size)):
    if n < num_classes:
      raise ValueError(
          f"data.{field}={n} must be >= data.num_classes={num_classes} so that every "
          "class appears in the synthetic split."
      )
  if image_size < 8:
    raise ValueError(f"data.image_size={image_size} must be >= 8 for the synthetic source.")
  waves = _class_waves(np.random.default_rng([seed, _PATTERN_STREAM]), num_classes)
  out = []
  for stream, n in ((_TRAIN_STREAM, train_size), (_TEST_STREAM, test_size)):
    rng = np.random.default_rng([seed, stream])
    labels = _balanced_labels(rng, n, num_classes)
    out += [_examples(rng, waves, labels, image_size), labels]
  class_names = tuple(f"class_{i}" for i in range(num_classes))
  return out[0], out[1], out[2], out[3], class_names
