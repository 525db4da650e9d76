"""Streaming image-folder input: ImageNet-sized data without holding a split in memory.

`config.data.source='image_folder'` with `config.data.streaming=True` (configs/imagenet.py).
The folder is laid out as the in-memory source's (`<path>/<split>/<class>/<image>`, splits
'train' and 'test', data/image_folder.py), but the images may be any size and only their paths
are held: each step's images are decoded when the step needs them.

- Per-process sharding: the global batch of step s is the same as the in-memory path's
  (data.batching: the epoch permutation of (seed, epoch), remainder dropped) and process i
  decodes only its contiguous slice of it; the evaluation batches likewise (eval_batches).
- Train preprocessing on the host: random-resized crop (torchvision's RandomResizedCrop: area
  8% to 100%, aspect ratio 3/4 to 4/3, ten tries then a centre crop) resampled to
  `data.image_size` (bilinear). The flip and the normalisation stay in the jitted step.
  Each image's crop is drawn from default_rng([seed, epoch, index]): an image appears once per
  epoch, so the crop is a pure function of the step.
- Eval preprocessing: resize the shorter side to image_size / 0.875 and take the centre
  image_size crop (224 from 256), done as one resample of the matching box.
- Resume: the iterator's whole state is the global step (every batch is a pure function of
  (seed, step)), which every checkpoint holds, so a resumed run decodes exactly the batches of
  an uninterrupted one; nothing else needs saving.
- Prefetch: while step s is consumed, the next `prefetch` steps decode in a thread pool
  (Pillow releases the GIL while decoding and resampling).

`load(cfg)` returns a StreamingDataset, which the train loop uses like data.Dataset: its
`train_images` / `test_images` are read-only u8[N, S, S, 3] array views that decode on
indexing (evaluation preprocessing), and `train_batches(...)` replaces data.TrainBatches.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from data import batching, image_folder

# torchvision's ImageNet channel statistics in 0..255 units: a streamed split is never
# decoded as a whole, so its own statistics are not computed.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
EVAL_CROP_FRACTION = 0.875  # 224 of 256
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


def _workers():
  return min(16, os.cpu_count() or 1)


def list_split(root: str, split: str):
  """(paths, labels int32[N], class_names) of one split of an image-folder directory."""
  if not os.path.isdir(root):
    raise ValueError(
        f'data.streaming=True needs data.path to be a directory ({image_folder.LAYOUT}); '
        f'{root!r} is not one (archives are read only by the in-memory source).'
    )
  files, dirs, _ = image_folder._scan_directory(root)  # pylint: disable=protected-access
  parts = [p for p, _ in files]
  class_names, classes = image_folder._resolve_layout(  # pylint: disable=protected-access
      parts, dirs, root
  )
  paths, labels = [], []
  for label, name in enumerate(class_names):
    for i in classes[split].get(name, []):
      paths.append(files[i][1])
      labels.append(label)
  return paths, np.asarray(labels, np.int32), class_names


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int):
  """torchvision's RandomResizedCrop box (left, top, w, h) in the image's pixels."""
  area = width * height
  log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
  for _ in range(10):
    target = area * rng.uniform(*RRC_SCALE)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  # Fallback: the centre crop at the nearest allowed aspect ratio.
  in_ratio = width / height
  if in_ratio < RRC_RATIO[0]:
    w, h = width, int(round(width / RRC_RATIO[0]))
  elif in_ratio > RRC_RATIO[1]:
    h, w = height, int(round(height * RRC_RATIO[1]))
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int):
  """The centre square that resize-shorter-side-then-centre-crop keeps, (left, top, w, h)."""
  side = EVAL_CROP_FRACTION * min(width, height)
  return (width - side) / 2, (height - side) / 2, side, side


def _resample(pixels: np.ndarray, box, size: int) -> np.ndarray:
  left, top, w, h = box
  im = Image.fromarray(pixels)
  out = im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
  return np.asarray(out, np.uint8)


def decode(path: str, size: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
  """u8[size, size, 3]: a random-resized crop with `rng`, the evaluation crop without."""
  pixels = image_folder._decode(path, os.path.dirname(path), (os.path.basename(path),))  # pylint: disable=protected-access
  height, width = pixels.shape[:2]
  box = (
      center_crop_box(width, height) if rng is None else random_resized_crop_box(rng, width, height)
  )
  return _resample(pixels, box, size)


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      _POOL = concurrent.futures.ThreadPoolExecutor(_workers(), thread_name_prefix='decode')
    return _POOL


def decode_many(paths: Sequence[str], size: int, rngs=None) -> np.ndarray:
  """u8[len(paths), size, size, 3], decoded in the thread pool."""
  rngs = rngs if rngs is not None else [None] * len(paths)
  out = np.zeros((len(paths), size, size, 3), np.uint8)
  for k, image in enumerate(_pool().map(lambda a: decode(a[0], size, a[1]), zip(paths, rngs))):
    out[k] = image
  return out


class LazyImages:
  """A read-only u8[N, size, size, 3] view of image files, decoded (evaluation
  preprocessing) when indexed with an int, a slice or an int array."""

  dtype = np.dtype(np.uint8)
  ndim = 4

  def __init__(self, paths: Sequence[str], size: int):
    self.paths = list(paths)
    self.size = int(size)
    self.shape = (len(self.paths), self.size, self.size, 3)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, index):
    if isinstance(index, (int, np.integer)):
      return decode(self.paths[index], self.size)
    if isinstance(index, slice):
      picked = self.paths[index]
    else:
      picked = [self.paths[i] for i in np.asarray(index).reshape(-1)]
    return decode_many(picked, self.size)

  def __array__(self, dtype=None, copy=None):
    raise TypeError(
        'A streamed image folder is never held in memory as one array; this code path needs '
        'the in-memory source (data.streaming=False). Multi-seed replicas (replicas > 1) keep '
        'the training set on the devices and cannot stream.'
    )


class StreamingTrainBatches(batching.TrainBatches):
  """data.TrainBatches for a streamed folder: the same indices per step and process; the
  images of this process's slice decoded with a random-resized crop, the next `prefetch`
  steps decoding in the background."""

  def __init__(
      self,
      images: LazyImages,
      labels,
      seed: int,
      global_batch: int,
      process_index: int = 0,
      process_count: int = 1,
      prefetch: int = 2,
  ):
    super().__init__(images, labels, seed, global_batch, process_index, process_count)
    self.prefetch = int(prefetch)
    self._pending = {}
    self._lock = threading.Lock()
    self._background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='prefetch')

  def _decode_step(self, step: int):
    with self._lock:  # indices() caches one epoch's permutation
      idx = self.indices(step)
    epoch = step // self.steps_per_epoch
    rngs = [np.random.default_rng([self.seed, epoch, int(i)]) for i in idx]
    images = decode_many([self.images.paths[i] for i in idx], self.images.size, rngs)
    return images, self.labels[idx]

  def batch(self, step):
    """(u8[b, S, S, 3], int32[b]) for global step `step`, b = global_batch // process_count."""
    future = self._pending.pop(step, None)
    for old in [s for s in self._pending if s < step]:  # a jump (resume): drop stale work
      self._pending.pop(old).cancel()
    for ahead in range(step + 1, step + 1 + self.prefetch):
      if ahead not in self._pending:
        self._pending[ahead] = self._background.submit(self._decode_step, ahead)
    return future.result() if future is not None else self._decode_step(step)


class StreamingDataset:
  """data.Dataset's surface over a streamed folder (see the module docstring)."""

  def __init__(self, name, train_paths, train_labels, test_paths, test_labels, class_names, size):
    self.name = name
    self.train_images = LazyImages(train_paths, size)
    self.train_labels = train_labels
    self.test_images = LazyImages(test_paths, size)
    self.test_labels = test_labels
    self.class_names = tuple(class_names)
    self.num_classes = len(class_names)
    self.mean = IMAGENET_MEAN
    self.std = IMAGENET_STD

  def train_batches(self, seed, global_batch, process_index=0, process_count=1):
    return StreamingTrainBatches(
        self.train_images, self.train_labels, seed, global_batch, process_index, process_count
    )


def load(path: str, size: int) -> StreamingDataset:
  """The folder's train and test splits as a StreamingDataset cropping to `size`."""
  if size < 1:
    raise ValueError(f'data.image_size={size}: the streamed crop side must be >= 1.')
  train_paths, train_labels, class_names = list_split(path, 'train')
  test_paths, test_labels, _ = list_split(path, 'test')
  return StreamingDataset(
      image_folder.dataset_name(path),
      train_paths,
      train_labels,
      test_paths,
      test_labels,
      class_names,
      size,
  )
