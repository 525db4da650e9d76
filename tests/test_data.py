"""Tests for the input pipeline (data/). Offline and small: image folders are written here."""

import os
import struct
import tarfile
import zlib

import jax
import numpy as np
import pytest
from PIL import Image

import data
from data import augment as aug, batching, image_folder, synthetic
from models import layers

# ----------------------------------------------------------------------------------------------
# Synthetic source, Dataset, subsets


def _synthetic_cfg(**overrides):
  cfg = data.default_config()
  cfg.update(dict(num_classes=7, train_size=140, test_size=35, image_size=16, seed=3))
  cfg.update(overrides)
  return cfg


def test_synthetic_deterministic_by_seed():
  a, b = data.load(_synthetic_cfg()), data.load(_synthetic_cfg())
  c = data.load(_synthetic_cfg(seed=4))
  for field in ("train_images", "train_labels", "test_images", "test_labels"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert not np.array_equal(a.train_images, c.train_images)
  assert not np.array_equal(a.test_images, c.test_images)


def test_synthetic_sizes_and_classes():
  ds = data.load(_synthetic_cfg())
  assert ds.train_images.shape == (140, 16, 16, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (35, 16, 16, 3) and ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  assert ds.num_classes == 7 and len(ds.class_names) == 7
  # Every class present (balanced), in both splits.
  np.testing.assert_array_equal(np.bincount(ds.train_labels, minlength=7), [20] * 7)
  np.testing.assert_array_equal(np.bincount(ds.test_labels, minlength=7), [5] * 7)
  # Images actually use the dynamic range, not a constant.
  assert ds.train_images.std() > 20


def test_default_config_synthetic_shape():
  cfg = data.default_config()
  assert (cfg.source, cfg.num_classes, cfg.train_size, cfg.test_size, cfg.image_size, cfg.seed) == (
      "synthetic",
      10,
      2048,
      512,
      32,
      0,
  )
  ds = data.load(cfg)
  assert ds.train_images.shape == (2048, 32, 32, 3) and ds.test_images.shape == (512, 32, 32, 3)


def _ridge_accuracy(x, xt, y, yt, num_classes, lam=10.0):
  """Test accuracy of one-hot ridge regression x -> y (numpy float64 reference classifier)."""
  mu = x.mean(0)
  w = np.linalg.solve(
      (x - mu).T @ (x - mu) + lam * np.eye(x.shape[1]), (x - mu).T @ np.eye(num_classes)[y]
  )
  return ((xt - mu) @ w).argmax(1).__eq__(yt).mean()


def test_synthetic_is_learnable_but_not_trivially():
  # Shift-invariant features (log FFT magnitude) separate the classes well, raw pixels do not:
  # the label lives in texture, not in position. (data/synthetic.py reports CNN training curves.)
  x, y, xt, yt, _ = synthetic.make_synthetic(
      num_classes=10, train_size=1000, test_size=500, image_size=16, seed=0
  )
  spectrum = lambda im: np.log1p(np.abs(np.fft.fft2(im / 255.0, axes=(1, 2)))).reshape(len(im), -1)
  pixels = lambda im: im.reshape(len(im), -1) / 255.0
  assert _ridge_accuracy(spectrum(x), spectrum(xt), y, yt, 10) > 0.6  # chance: 0.1
  assert _ridge_accuracy(pixels(x), pixels(xt), y, yt, 10) < 0.3


def test_mean_std_match_float64_reference():
  ds = data.load(_synthetic_cfg())
  x = ds.train_images.astype(np.float64).reshape(-1, 3)
  np.testing.assert_allclose(ds.mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(ds.std, x.std(0), rtol=1e-12)
  assert ds.mean.dtype == np.float64 and ds.mean.shape == (3,)


def test_dataset_arrays_are_read_only():
  ds = data.load(_synthetic_cfg())
  with pytest.raises(ValueError):
    ds.train_images[0, 0, 0, 0] = 1


def test_train_subset_is_class_balanced_and_seeded():
  full = data.load(_synthetic_cfg())
  sub = data.load(_synthetic_cfg(train_subset=30))
  assert sub.num_train == 30
  counts = np.bincount(sub.train_labels, minlength=7)
  assert counts.max() - counts.min() <= 1 and counts.sum() == 30
  # The subset is made of real training examples, and the test split is untouched.
  idx = data.class_balanced_subset(full.train_labels, 30, 3, 7)
  np.testing.assert_array_equal(sub.train_images, full.train_images[idx])
  np.testing.assert_array_equal(sub.test_images, full.test_images)
  # Deterministic by seed; another seed draws another subset.
  np.testing.assert_array_equal(idx, data.class_balanced_subset(full.train_labels, 30, 3, 7))
  assert not np.array_equal(idx, data.class_balanced_subset(full.train_labels, 30, 4, 7))
  # Mean/std describe the images actually returned.
  np.testing.assert_allclose(sub.mean, sub.train_images.reshape(-1, 3).mean(0), rtol=1e-12)


def test_class_balanced_subset_with_unbalanced_labels():
  labels = np.array([0] * 50 + [1] * 3 + [2] * 20)
  idx = data.class_balanced_subset(labels, 30, 0, 3)
  counts = np.bincount(labels[idx], minlength=3)
  # Class 1 runs out at 3; the other two share the rest evenly.
  assert counts[1] == 3 and abs(counts[0] - counts[2]) <= 1 and len(set(idx.tolist())) == 30


def test_bad_config_values():
  with pytest.raises(ValueError, match=r"data\.source.*synthetic.*tfds.*image_folder"):
    data.load(_synthetic_cfg(source="imagenet"))
  with pytest.raises(ValueError, match=r"data\.train_subset"):
    data.load(_synthetic_cfg(train_subset=10_000))
  with pytest.raises(ValueError, match=r"data\.train_size"):
    data.load(_synthetic_cfg(train_size=3))
  with pytest.raises(ValueError, match=r"data\.path"):
    data.load(_synthetic_cfg(source="image_folder", path=""))


# ----------------------------------------------------------------------------------------------
# Batching


def test_epoch_permutation_is_pure_and_a_permutation():
  p = batching.epoch_permutation(5, 2, 100)
  assert p.dtype == np.int64
  np.testing.assert_array_equal(p, batching.epoch_permutation(5, 2, 100))
  np.testing.assert_array_equal(np.sort(p), np.arange(100))
  assert not np.array_equal(p, batching.epoch_permutation(5, 3, 100))
  assert not np.array_equal(p, batching.epoch_permutation(6, 2, 100))


def test_steps_per_epoch():
  assert batching.steps_per_epoch(100, 32) == 3
  with pytest.raises(ValueError, match="batch_size"):
    batching.steps_per_epoch(10, 32)


def test_train_batch_indices_process_slices_concatenate():
  n, gb, seed = 103, 24, 7
  spe = batching.steps_per_epoch(n, gb)
  for step in (0, 1, spe - 1, spe, 3 * spe + 2):
    full = batching.train_batch_indices(seed, step, n, gb)
    epoch, j = divmod(step, spe)
    np.testing.assert_array_equal(
        full, batching.epoch_permutation(seed, epoch, n)[j * gb : (j + 1) * gb]
    )
    parts = [batching.train_batch_indices(seed, step, n, gb, i, 4) for i in range(4)]
    assert all(len(p) == 6 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), full)


def test_train_batch_indices_epoch_covers_each_example_at_most_once():
  n, gb = 50, 8
  spe = batching.steps_per_epoch(n, gb)
  seen = np.concatenate([batching.train_batch_indices(1, s, n, gb) for s in range(spe)])
  assert len(seen) == spe * gb == len(set(seen.tolist()))


def test_resume_gives_the_same_batches():
  images = np.arange(60, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  labels = np.arange(60) % 5
  straight = batching.TrainBatches(images, labels, seed=11, global_batch=16)
  history = [straight.batch(s) for s in range(20)]
  resumed = batching.TrainBatches(images, labels, seed=11, global_batch=16)
  for s in range(9, 20):  # A fresh object started at step 9, as after a restart.
    x, y = resumed.batch(s)
    np.testing.assert_array_equal(x, history[s][0])
    np.testing.assert_array_equal(y, history[s][1])
    idx = batching.train_batch_indices(11, s, 60, 16)
    np.testing.assert_array_equal(y, labels[idx])
    assert x.dtype == np.uint8 and y.dtype == np.int32 and x.shape == (16, 2, 2, 3)


def test_train_batches_per_process():
  images = np.zeros((40, 2, 2, 3), np.uint8)
  labels = np.arange(40)
  parts = [batching.TrainBatches(images, labels, 0, 12, i, 3).batch(5)[1] for i in range(3)]
  np.testing.assert_array_equal(
      np.concatenate(parts), labels[batching.train_batch_indices(0, 5, 40, 12)]
  )


def test_batch_not_divisible_by_processes():
  with pytest.raises(ValueError, match="batch_size"):
    batching.train_batch_indices(0, 0, 100, 10, 0, 4)
  with pytest.raises(ValueError, match="batch_size"):
    batching.TrainBatches(np.zeros((100, 2, 2, 3), np.uint8), np.zeros(100), 0, 10, 0, 4)
  with pytest.raises(ValueError, match="batch_size"):
    next(batching.eval_batches(np.zeros((10, 2, 2, 3)), np.zeros(10), 10, 0, 3))


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_batches_cover_every_example_once(process_count):
  n, bs = 37, 8
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  labels = np.arange(n) + 100
  seen, mask_sum, padded, num_batches = [], 0.0, 0, set()
  for p in range(process_count):
    batches = list(batching.eval_batches(images, labels, bs, p, process_count))
    num_batches.add(len(batches))
    for x, y, m in batches:
      assert x.shape == (bs // process_count, 2, 2, 3) and x.dtype == np.uint8
      assert y.dtype == np.int32 and m.dtype == np.float32
      assert set(np.unique(m).tolist()) <= {0.0, 1.0}
      valid = m == 1
      seen += y[valid].tolist()
      np.testing.assert_array_equal(x[valid][:, 0, 0, 0], y[valid] - 100)
      assert np.all(x[~valid] == 0) and np.all(y[~valid] == 0)
      mask_sum += m.sum()
      padded += len(m)
  assert num_batches == {-(-n // bs)}  # Every process yields the same number of batches.
  assert padded == -(-n // bs) * bs
  assert mask_sum == n
  assert sorted(seen) == labels.tolist()


# ----------------------------------------------------------------------------------------------
# Image folder


def _rand_image(rng, size=8, mode="RGB"):
  if mode == "L":
    return rng.integers(0, 256, (size, size), dtype=np.uint8)
  return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _write_folder(root, spec, seed=0, size=8):
  """Writes root/<split>/<class>/<name>.png from spec {split: {class: [names]}}.

  Returns {(split, class, name): u8[size, size, 3]} of the expected decoded pixels.
  """
  rng = np.random.default_rng(seed)
  expected = {}
  for split, classes in spec.items():
    for cls, names in classes.items():
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for name in names:
        grey = name.startswith("g")
        arr = _rand_image(rng, size, "L" if grey else "RGB")
        Image.fromarray(arr).save(os.path.join(root, split, cls, name + ".png"))
        expected[(split, cls, name)] = np.repeat(arr[..., None], 3, -1) if grey else arr
  return expected


# Class folders created out of order; file names that sort differently as text and as numbers.
_SPEC = {
    "train": {"dog": ["1", "2", "10"], "airplane": ["3", "1"], "cat": ["5"]},
    "test": {"cat": ["1", "g2"], "airplane": ["7"], "dog": ["2"]},
}


def _check_mini(ds_arrays, expected):
  train_x, train_y, test_x, test_y, names = ds_arrays
  assert names == ("airplane", "cat", "dog")  # Sorted class folder names -> labels 0, 1, 2.
  assert train_x.shape == (6, 8, 8, 3) and train_x.dtype == np.uint8
  assert test_x.shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(train_y, [0, 0, 1, 2, 2, 2])
  np.testing.assert_array_equal(test_y, [0, 1, 1, 2])
  # Natural order within a class: 1, 3 / 1, 2, 10.
  order = [
      ("airplane", "1"),
      ("airplane", "3"),
      ("cat", "5"),
      ("dog", "1"),
      ("dog", "2"),
      ("dog", "10"),
  ]
  for k, (cls, name) in enumerate(order):
    np.testing.assert_array_equal(train_x[k], expected[("train", cls, name)])
  np.testing.assert_array_equal(test_x[2], expected[("test", "cat", "g2")])  # Greyscale -> RGB.


def test_image_folder_directory(tmp_path):
  root = tmp_path / "mini"
  expected = _write_folder(str(root), _SPEC)
  (root / "README.txt").write_text("not data")  # Loose files next to the splits are ignored.
  (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")  # Hidden files too.
  _check_mini(image_folder.load_image_folder(str(root), cache_dir=None), expected)


@pytest.mark.parametrize("junk", ["Thumbs.db", "ehthumbs.db", "desktop.ini", ".DS_Store"])
def test_image_folder_skips_system_files_in_class_folders(tmp_path, junk):
  root = tmp_path / "mini"
  expected = _write_folder(str(root), _SPEC)
  (root / "train" / "dog" / junk).write_bytes(b"\0\1 not an image")  # Not decodable.
  _check_mini(image_folder.load_image_folder(str(root), cache_dir=None), expected)


def _png16(path, pixels):
  """Writes u16[H, W] (greyscale) or u16[H, W, 3] (RGB) as a 16-bit PNG, written by hand (Pillow
  cannot write 16-bit RGB), so the test does not depend on the reader it checks."""
  h, w = pixels.shape[:2]
  raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))  # filter 0 rows
  chunk = lambda kind, body: (
      struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  )
  header = struct.pack(">IIBBBBB", w, h, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
  with open(path, "wb") as f:
    f.write(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_16_bit_png_keeps_the_high_byte(tmp_path, channels):
  rng = np.random.default_rng(0)
  shape = (8, 8) if channels == 1 else (8, 8, 3)
  wide = rng.integers(0, 2**16, (2,) + shape, dtype=np.uint16)
  wide[0].flat[:3] = (0, 255 * 257, 65535)  # the ends of the range, and 8-bit 255 widened
  for split in ("train", "test"):
    for k, cls in enumerate(("a", "b")):
      os.makedirs(tmp_path / "d" / split / cls)
      _png16(str(tmp_path / "d" / split / cls / "0.png"), wide[k])
  train_x, *_ = image_folder.load_image_folder(str(tmp_path / "d"), cache_dir=None)
  expected = (wide >> 8).astype(np.uint8)  # the high byte ...
  if channels == 1:
    expected = np.repeat(expected[..., None], 3, -1)
  np.testing.assert_array_equal(train_x, expected)  # ... not min(v, 255), which was 255 here
  assert train_x.min() == 0 and train_x.max() == 255 and np.mean(train_x == 255) < 0.05


def test_image_folder_refuses_32_bit_images(tmp_path):
  root = tmp_path / "mini"
  _write_folder(str(root), _SPEC)
  Image.fromarray(np.full((8, 8), 1e6, np.float32)).save(root / "train" / "dog" / "f.tiff")
  with pytest.raises(ValueError, match=r"f\.tiff.*'F' pixels.*8- or 16-bit"):
    image_folder.load_image_folder(str(root), cache_dir=None)


def _make_tar(tmp_path, root, name="mini.tar.gz", arcname="mini"):
  archive = tmp_path / name
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(str(root), arcname=arcname)
  return str(archive)


def test_image_folder_tar_with_top_level_folder_and_cache(tmp_path, monkeypatch):
  src = tmp_path / "src"
  expected = _write_folder(str(src), _SPEC)
  archive = _make_tar(tmp_path, src, arcname="mini")
  cache = tmp_path / "cache"
  cfg = data.default_config()
  cfg.update(dict(source="image_folder", path=archive, cache_dir=str(cache)))

  ds = data.load(cfg)
  _check_mini(
      (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels, ds.class_names), expected
  )
  assert ds.name == "mini" and ds.num_classes == 3
  assert len(list(cache.glob("*.npz"))) == 1

  # Second load: served from the cache, no decoding at all.
  def no_decode(*args):
    raise AssertionError("decoded although a valid cache exists")

  monkeypatch.setattr(image_folder, "_decode", no_decode)
  again = data.load(cfg)
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  np.testing.assert_array_equal(again.test_labels, ds.test_labels)
  assert again.class_names == ds.class_names

  # A changed archive (new mtime) is a cache miss: it is decoded again.
  st = os.stat(archive)
  os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  with pytest.raises(AssertionError, match="decoded"):
    data.load(cfg)


def test_image_folder_tar_without_top_level_folder(tmp_path):
  src = tmp_path / "src"
  expected = _write_folder(str(src), _SPEC)
  archive = tmp_path / "flat.tar"
  with tarfile.open(archive, "w") as tar:
    for split in ("train", "test"):
      tar.add(str(src / split), arcname=split)
  _check_mini(image_folder.load_image_folder(str(archive), cache_dir=None), expected)


def test_image_folder_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    image_folder.load_image_folder(str(tmp_path / "nowhere"))


def test_image_folder_missing_split(tmp_path):
  root = tmp_path / "d"
  _write_folder(str(root), {"train": {"a": ["1"]}})
  with pytest.raises(FileNotFoundError, match=r"test"):
    image_folder.load_image_folder(str(root))


def test_image_folder_empty_class(tmp_path):
  root = tmp_path / "d"
  _write_folder(str(root), {"train": {"a": ["1"]}, "test": {"a": ["1"]}})
  os.makedirs(root / "train" / "empty_cls")
  with pytest.raises(ValueError, match="empty_cls"):
    image_folder.load_image_folder(str(root))
  # Same inside an archive (directory members are all that mark an empty class there).
  with pytest.raises(ValueError, match="empty_cls"):
    image_folder.load_image_folder(_make_tar(tmp_path, root))


def test_image_folder_unreadable_image(tmp_path):
  root = tmp_path / "d"
  _write_folder(str(root), {"train": {"a": ["1"], "b": ["1"]}, "test": {"a": ["1"]}})
  (root / "train" / "b" / "broken.png").write_bytes(b"this is not a png")
  with pytest.raises(ValueError, match="broken.png"):
    image_folder.load_image_folder(str(root))
  with pytest.raises(ValueError, match=r"mini\.tar\.gz.*broken\.png"):
    image_folder.load_image_folder(_make_tar(tmp_path, root))


def test_image_folder_wrong_layout(tmp_path):
  flat = tmp_path / "flat"  # No split folders at all.
  _write_folder(str(flat), {"a": {"x": ["1"]}, "b": {"y": ["1"]}})
  with pytest.raises(ValueError, match=r"flat.*train"):
    image_folder.load_image_folder(str(flat))
  loose = tmp_path / "loose"  # Images directly in the split folder, no class folder.
  _write_folder(str(loose), {"train": {"a": ["1"]}, "test": {"a": ["1"]}})
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(loose / "train" / "stray.png")
  with pytest.raises(ValueError, match="stray.png"):
    image_folder.load_image_folder(str(loose))
  not_archive = tmp_path / "data.bin"
  not_archive.write_bytes(b"\x00" * 100)
  with pytest.raises(ValueError, match="data.bin"):
    image_folder.load_image_folder(str(not_archive))


def test_image_folder_wrong_image_size(tmp_path):
  root = tmp_path / "d"
  _write_folder(str(root), {"train": {"a": ["1", "2"]}, "test": {"a": ["1"]}})
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train" / "a" / "3.png")
  with pytest.raises(ValueError, match=r"3\.png.*16x16"):
    image_folder.load_image_folder(str(root))
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "a" / "3.png")
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "test" / "a" / "9.png")
  with pytest.raises(ValueError, match=r"9\.png"):
    image_folder.load_image_folder(str(root))


# ----------------------------------------------------------------------------------------------
# TFDS


def test_tfds_cifar10_under_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = data.default_config()
  cfg.update(dict(source="tfds", name="cifar10", tfds_data_dir=str(tmp_path)))
  with tfds.testing.mock_data(num_examples=6):
    ds = data.load(cfg)
  assert ds.train_images.shape == (6, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (6, 32, 32, 3) and ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.train_labels.shape == (6,)
  assert ds.num_classes == 10 and len(ds.class_names) == 10 and ds.name == "cifar10"


def test_tfds_offline_message_points_to_image_folder(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  cfg = data.default_config()
  cfg.update(dict(source="tfds", name="cifar10", tfds_data_dir=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match=r"source=image_folder.*data\.path="):
    data.load(cfg)


def test_tfds_unknown_name(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  cfg = data.default_config()
  cfg.update(dict(source="tfds", name="cifar1000", tfds_data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match=r"data\.name"):
    data.load(cfg)


# ----------------------------------------------------------------------------------------------
# Augmentation


def _images(b=6, h=8, w=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8)


MEAN = np.array([120.0, 115.0, 100.0])
STD = np.array([60.0, 62.0, 65.0])


def test_augment_shape_dtype_and_determinism():
  x = _images()
  key = jax.random.key(0)
  out = aug.augment(key, x, MEAN, STD)
  assert out.shape == x.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, aug.augment(key, x, MEAN, STD))
  assert not np.array_equal(out, aug.augment(jax.random.key(1), x, MEAN, STD))
  # Works under jit with the configuration static, and with old-style uint32 keys.
  jitted = jax.jit(aug.augment, static_argnames=("crop_padding", "flip", "out_size"))
  np.testing.assert_allclose(jitted(key, x, MEAN, STD), out, rtol=1e-6, atol=1e-6)
  assert aug.augment(jax.random.PRNGKey(0), x, MEAN, STD).shape == x.shape


def test_normalize_matches_numpy():
  x = _images()
  ref = (x.astype(np.float64) - MEAN) / STD
  np.testing.assert_allclose(aug.normalize(x, MEAN, STD), ref, rtol=1e-5, atol=1e-5)


def test_augment_without_crop_and_flip_is_normalize():
  x = _images()
  np.testing.assert_array_equal(
      aug.augment(jax.random.key(3), x, MEAN, STD, crop_padding=0, flip=False),
      aug.normalize(x, MEAN, STD),
  )


def _windows(img, pad):
  """All (dy, dx) -> crop of the zero-padded image, numpy reference."""
  h, w, _ = img.shape
  padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
  return {
      (dy, dx): padded[dy : dy + h, dx : dx + w]
      for dy in range(2 * pad + 1)
      for dx in range(2 * pad + 1)
  }


def test_crop_is_a_shifted_window_of_the_padded_image():
  x = _images(b=16)
  # mean 0 / std 1 so the output is the raw cropped pixels, comparable exactly.
  out = np.asarray(
      aug.augment(jax.random.key(42), x, np.zeros(3), np.ones(3), crop_padding=4, flip=False)
  )
  offsets = []
  for i in range(len(x)):
    matches = [off for off, win in _windows(x[i], 4).items() if np.array_equal(win, out[i])]
    assert len(matches) == 1, f"example {i}: crop matches no/several windows: {matches}"
    offsets.append(matches[0])
  assert len(set(offsets)) > 1  # Per-example offsets, not one for the batch.
  assert any(off != (4, 4) for off in offsets)


def test_crop_equals_the_windows_at_its_drawn_offsets():
  # The crop draws its offsets as randint(rng, (B, 2), 0, 2p + 1) and takes that window: a
  # resumed or re-run study sees the same crops whatever implements the window.
  x, key, pad = _images(b=64), jax.random.key(11), 3
  offsets = np.asarray(jax.random.randint(key, (64, 2), 0, 2 * pad + 1))
  assert len({tuple(o) for o in offsets}) > 20
  for platform in ("cpu", "tpu"):  # a gather, or the TPU's selects (traced here for the CPU)
    with layers.target_platform(platform):  # a new function each time: traced afresh
      out = np.asarray(jax.jit(lambda k, x: aug.random_crop(k, x, pad))(key, x))
    for i in range(len(x)):
      np.testing.assert_array_equal(out[i], _windows(x[i], pad)[tuple(offsets[i])])


def test_flip_some_not_all():
  x = _images(b=32)
  out = np.asarray(
      aug.augment(jax.random.key(7), x, np.zeros(3), np.ones(3), crop_padding=0, flip=True)
  )
  flipped = []
  for i in range(len(x)):
    same, mirrored = np.array_equal(out[i], x[i]), np.array_equal(out[i], x[i, :, ::-1])
    assert same != mirrored
    flipped.append(mirrored)
  assert 0 < sum(flipped) < len(x)


def test_crop_and_flip_together():
  x = _images(b=16)
  out = np.asarray(aug.augment(jax.random.key(5), x, np.zeros(3), np.ones(3)))
  for i in range(len(x)):
    wins = _windows(x[i], 4).values()
    assert any(np.array_equal(out[i], win) or np.array_equal(out[i], win[:, ::-1]) for win in wins)


def test_resize():
  x = _images(b=2)
  out = aug.augment(jax.random.key(0), x, MEAN, STD, out_size=224)
  assert out.shape == (2, 224, 224, 3) and out.dtype == np.float32
  assert aug.normalize(x, MEAN, STD, out_size=(12, 20)).shape == (2, 12, 20, 3)
  # A constant image stays constant (bilinear weights sum to one), normalised.
  const = np.full((1, 8, 8, 3), 200, np.uint8)
  np.testing.assert_allclose(
      aug.normalize(const, MEAN, STD, out_size=32),
      np.broadcast_to((200 - MEAN) / STD, (1, 32, 32, 3)),
      rtol=1e-5,
  )
