"""Input pipeline: in-memory uint8 datasets, seeded epoch order, in-step augmentation.

The train loop uses exactly this surface:

    cfg = data.default_config()            # the `config.data` ConfigDict
    ds = data.load(cfg)                    # -> data.Dataset (numpy, uint8 images)
    batches = data.TrainBatches(ds.train_images, ds.train_labels, seed, global_batch,
                                process_index, process_count)
    images, labels = batches.batch(step)   # u8[b, H, W, 3], int32[b]
    x = data.augment.augment(rng, images, ds.mean, ds.std, out_size=...)   # inside jit
    for images, labels, mask in data.eval_batches(ds.test_images, ds.test_labels, ...): ...

Sources (`config.data.source`):
  'synthetic'     seeded, learnable, any number of classes (no files needed; the default).
  'tfds'          `tfds.load(config.data.name)` from a prepared TFDS data dir (never downloads).
  'image_folder'  a directory or .tar.gz laid out as `<split>/<class>/<image>`, e.g. the offline
                  copies in ../shared/data/ (decoded once, then cached as .npz).

`config.data.streaming=True` (image_folder or tfds) reads neither split into memory: each
step's share is decoded on the host by data/streaming.py (ImageNet-sized data, configs/imagenet.py).

Why the whole dataset lives in host memory as uint8 otherwise: CIFAR is 184 MB that way,
every epoch's order is then a pure function of (seed, epoch) (so a resumed run sees the same
batches), and all float work (crop, flip, normalise, resize) happens on the accelerator
inside the jitted step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

# `data.augment` stays the module (augment.augment / augment.normalize): re-exporting the function
# under the same name would shadow the module and break `from data import augment`.
from data import augment, batching, image_folder, synthetic
from data.batching import (
    TrainBatches,
    epoch_permutation,
    eval_batches,
    steps_per_epoch,
    train_batch_indices,
)

__all__ = [
    "Dataset",
    "load",
    "default_config",
    "class_balanced_subset",
    "channel_stats",
    "augment",
    "batching",
    "TrainBatches",
    "epoch_permutation",
    "eval_batches",
    "steps_per_epoch",
    "train_batch_indices",
    "SOURCES",
    "DEFAULT_CACHE_DIR",
]

SOURCES = ("synthetic", "tfds", "image_folder")
DEFAULT_CACHE_DIR = "~/.cache/dynamics_data"

# Stream tag for the subset draw, so that `seed` feeds the synthetic generator and the subset
# choice with independent random streams.
_SUBSET_STREAM = 1001


_DEFAULTS = dict(
    source="synthetic",
    name="cifar10",
    path="",
    tfds_data_dir="",
    cache_dir="",
    train_subset=0,
    test_subset=0,
    seed=0,
    num_classes=10,
    train_size=2048,
    test_size=512,
    image_size=32,
    streaming=False,
    loader="threads",
    workers=0,
)


def default_config():
  """The `config.data` block with every field `load` reads, and its defaults.

  Fields:
    source: 'synthetic' | 'tfds' | 'image_folder'.
    name: TFDS dataset name for source='tfds' ('cifar10' | 'cifar100'; any TFDS image
      classification dataset with 'train'/'test' splits and (image, label) supervised keys works).
    path: directory or .tar.gz for source='image_folder', e.g. '../shared/data/cifar10.tar.gz'.
    tfds_data_dir: TFDS data dir; '' = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    cache_dir: where decoded image-folder arrays are cached; '' = ~/.cache/dynamics_data.
    train_subset: 0 = the whole training split; k > 0 = a class-balanced subset of k examples
      drawn with `seed`.
    test_subset: the same for the test split (0 = all of it), for quicker CPU-scale runs.
    seed: seeds the synthetic generator and the subset draw (not the epoch order: that is the
      train loop's seed, passed to TrainBatches).
    num_classes, train_size, test_size, image_size: the synthetic source's shape; image_size
      is also the crop side of a streamed split.
    streaming: source='image_folder' or 'tfds': False holds the decoded splits in memory
      (every image the same size; CIFAR); True decodes each step's share per process with
      ImageNet preprocessing (any image sizes; an image folder, or a TFDS dataset prepared as
      ArrayRecord; data/streaming.py, configs/imagenet.py).
    loader: streaming only: 'threads' decodes each step's share in a thread pool in the
      training process; 'grain' gives the same batches from a grain pipeline
      (data/grain_batches.py), decoded in `workers` processes when workers > 0.
    workers: loader='grain' only: worker processes (0: in the training process).
  """
  import ml_collections  # Imported here so that numpy-only users of `data` need not have it.

  return ml_collections.ConfigDict(dict(_DEFAULTS))


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous.
class Dataset:
  """A whole image classification dataset in host memory.

  Attributes:
    name: e.g. 'cifar10', 'synthetic'.
    train_images: u8[N, H, W, 3] (read-only).
    train_labels: int32[N], in [0, num_classes).
    test_images: u8[M, H, W, 3] (read-only).
    test_labels: int32[M].
    num_classes: number of classes C.
    class_names: tuple of C strings; label i is class_names[i].
    mean, std: f64[3], per-channel mean and (population) standard deviation of `train_images`
      in 0..255 units, for `augment` / `normalize`.
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  class_names: tuple
  mean: np.ndarray
  std: np.ndarray

  def __post_init__(self):
    for split in ("train", "test"):
      images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
      if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"Dataset {self.name!r}: {split}_images must be u8[N, H, W, 3], got "
            f"{images.dtype}{list(images.shape)}"
        )
      if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"Dataset {self.name!r}: {split}_labels must be int32[{images.shape[0]}],"
            f" got {labels.dtype}{list(labels.shape)}"
        )
      if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
        raise ValueError(f"Dataset {self.name!r}: {split}_labels outside [0, {self.num_classes}).")
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(
          f"Dataset {self.name!r}: train images are {self.train_images.shape[1:]} but "
          f"test images are {self.test_images.shape[1:]}."
      )
    if len(self.class_names) != self.num_classes:
      raise ValueError(
          f"Dataset {self.name!r}: {len(self.class_names)} class names for "
          f"{self.num_classes} classes."
      )
    # Read-only views, so that nothing can silently write into the dataset shared by the whole
    # run (the caller's own arrays keep their flags).
    for field in ("train_images", "train_labels", "test_images", "test_labels", "mean", "std"):
      view = np.asarray(getattr(self, field)).view()
      view.flags.writeable = False
      object.__setattr__(self, field, view)  # The dataclass is frozen.

  @classmethod
  def from_arrays(cls, name, train_images, train_labels, test_images, test_labels, class_names):
    """Builds a Dataset, computing mean/std from `train_images` (u8[N, H, W, 3])."""
    mean, std = channel_stats(train_images)

    def int32_labels(labels):
      labels = np.asarray(labels)
      if labels.dtype.kind not in "iu":
        raise ValueError(f"Dataset {name!r}: labels must be integers, got {labels.dtype}.")
      return labels.astype(np.int32, copy=False)

    # Images are not cast: a float image cast to uint8 would be silently wrong; __post_init__
    # rejects anything but uint8.
    return cls(
        name=name,
        train_images=np.asarray(train_images),
        train_labels=int32_labels(train_labels),
        test_images=np.asarray(test_images),
        test_labels=int32_labels(test_labels),
        num_classes=len(class_names),
        class_names=tuple(str(c) for c in class_names),
        mean=mean,
        std=std,
    )

  @property
  def image_shape(self):
    """(H, W, 3)."""
    return tuple(self.train_images.shape[1:])

  @property
  def num_train(self):
    return int(self.train_images.shape[0])

  @property
  def num_test(self):
    return int(self.test_images.shape[0])


def channel_stats(images, chunk=4096):
  """Per-channel mean and population std of u8[N, H, W, C] images, exactly, in float64.

  Counts pixel values with a 256-bin histogram per channel (chunked), so a 50,000-image dataset
  costs no float64 copy of the whole array (that would be 1.2 GB for CIFAR).

  Returns:
    (mean f64[C], std f64[C]) in 0..255 units.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(
        f"channel_stats expects u8[N, H, W, C], got {images.dtype}{list(images.shape)}"
    )
  if images.shape[0] == 0:
    raise ValueError("channel_stats: no training images; mean/std are undefined.")
  c = images.shape[-1]
  hist = np.zeros((c, 256), np.int64)
  for start in range(0, images.shape[0], chunk):
    block = images[start : start + chunk].reshape(-1, c)
    for ch in range(c):
      hist[ch] += np.bincount(block[:, ch], minlength=256)
  values = np.arange(256, dtype=np.float64)
  count = hist.sum(axis=1).astype(np.float64)
  mean = (hist * values).sum(axis=1) / count
  var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / count
  return mean, np.sqrt(var)


def class_balanced_subset(labels, size, seed, num_classes):
  """Indices of a seeded, class-balanced subset of `size` examples.

  Classes are visited round-robin (in a seeded random class order), each contributing its next
  example in a seeded random within-class order, so class counts differ by at most one (unless a
  class runs out of examples, then the others fill in).

  Args:
    labels: int[N].
    size: 0 < size <= N.
    seed: int >= 0.
    num_classes: C.
  Returns:
    int64[size], sorted ascending (the dataset's own order is kept; epochs permute anyway).
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  if not 0 < size <= n:
    raise ValueError(
        f"data.train_subset={size} must be between 1 and the training split size "
        f"{n} (or 0 for the whole split)."
    )
  rng = np.random.default_rng([seed, _SUBSET_STREAM])
  perm = rng.permutation(n)
  class_rank = rng.permutation(num_classes)  # Who goes first within each round-robin round.
  shuffled = labels[perm]
  # Rank of each shuffled example within its class = its round.
  order = np.argsort(shuffled, kind="stable")
  starts = np.searchsorted(shuffled[order], np.arange(num_classes))
  within = np.empty(n, np.int64)
  within[order] = np.arange(n) - starts[shuffled[order]]
  key = within * num_classes + class_rank[shuffled]
  chosen = perm[np.argsort(key, kind="stable")[:size]]
  return np.sort(chosen).astype(np.int64)


def _check_streaming_subsets(cfg):
  if int(_get(cfg, "train_subset")) or int(_get(cfg, "test_subset")):
    raise ValueError(
        "data.streaming=True reads whole splits; data.train_subset and data.test_subset "
        "must be 0 (make a smaller folder or dataset instead)."
    )


def _get(cfg, field):
  """cfg.<field>, falling back to default_config()'s value when the config lacks it."""
  if hasattr(cfg, "get"):  # ConfigDict or dict.
    return cfg.get(field, _DEFAULTS[field])
  return getattr(cfg, field, _DEFAULTS[field])


def resolve_cache_dir(cache_dir):
  """'' -> ~/.cache/dynamics_data; '~' expanded; made absolute."""
  return os.path.abspath(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR))


def _subset(images, labels, cfg, split: str, seed: int, num_classes: int):
  """The class-balanced, seeded subset that `data.<split>_subset` asks for (0 = all)."""
  size = int(_get(cfg, f"{split}_subset"))
  if size < 0:
    raise ValueError(f"data.{split}_subset={size} must be >= 0 (0 = the whole {split} split).")
  if not size:
    return images, labels
  idx = class_balanced_subset(labels, size, seed, num_classes)
  return images[idx], labels[idx]


def load(cfg: Any) -> Dataset:
  """Loads the dataset that `cfg` (a `config.data` ConfigDict, see default_config) names.

  Returns:
    Dataset with u8[N, H, W, 3] images, int32 labels, class names and train mean/std
    (of the training images actually returned, i.e. after `train_subset`).
  Raises:
    ValueError: unknown `data.source`, bad sizes, bad image-folder contents.
    FileNotFoundError: missing image folder/archive or split, or a TFDS dataset not prepared
      locally (the message says how to use the offline image-folder copies instead).
  """
  source = _get(cfg, "source")
  seed = int(_get(cfg, "seed"))
  if seed < 0:
    raise ValueError(f"data.seed={seed} must be >= 0.")
  if source == "synthetic":
    if _get(cfg, "streaming"):
      raise ValueError(
          "data.streaming=True needs data.source='image_folder' or 'tfds'; the synthetic "
          "source is generated in memory (set data.streaming=False)."
      )
    name = "synthetic"
    arrays = synthetic.make_synthetic(
        num_classes=int(_get(cfg, "num_classes")),
        train_size=int(_get(cfg, "train_size")),
        test_size=int(_get(cfg, "test_size")),
        image_size=int(_get(cfg, "image_size")),
        seed=seed,
    )
  elif source == "image_folder":
    path = _get(cfg, "path")
    if not path:
      raise ValueError(
          "data.source='image_folder' needs data.path: a directory or .tar.gz laid "
          "out as <split>/<class>/<image>, e.g. "
          "--config.data.path=../shared/data/cifar10.tar.gz"
      )
    if _get(cfg, "streaming"):
      # Decoded per step, never held (data/streaming.py): ImageNet-sized and variable-size images.
      from data import streaming  # pylint: disable=import-outside-toplevel

      _check_streaming_subsets(cfg)
      return streaming.load(path, int(_get(cfg, "image_size")))
    name = image_folder.dataset_name(path)
    cache_dir = resolve_cache_dir(_get(cfg, "cache_dir"))
    arrays = image_folder.load_image_folder(path, cache_dir=cache_dir)
  elif source == "tfds":
    from data import tfds_source  # Lazy: importing TensorFlow costs seconds and is rarely needed.

    name = _get(cfg, "name")
    if _get(cfg, "streaming"):
      # Records read by index (ArrayRecord), each label with its image (data/streaming.py).
      from data import streaming  # pylint: disable=import-outside-toplevel

      _check_streaming_subsets(cfg)
      data_dir = _get(cfg, "tfds_data_dir") or None
      return streaming.load_tfds(name, data_dir, int(_get(cfg, "image_size")))
    arrays = tfds_source.load_tfds(name, data_dir=_get(cfg, "tfds_data_dir") or None)
  else:
    raise ValueError(f"Unknown data.source={source!r}; allowed values: {', '.join(SOURCES)}.")

  train_images, train_labels, test_images, test_labels, class_names = arrays
  train_images, train_labels = _subset(
      train_images, train_labels, cfg, "train", seed, len(class_names)
  )
  test_images, test_labels = _subset(test_images, test_labels, cfg, "test", seed, len(class_names))
  return Dataset.from_arrays(
      name, train_images, train_labels, test_images, test_labels, class_names
  )
