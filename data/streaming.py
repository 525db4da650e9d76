"""Streaming input: ImageNet-sized data without holding a split in memory.

`config.data.streaming=True` (configs/imagenet.py) with either source:
- `data.source='image_folder'`: a folder laid out as the in-memory source's
  (`<path>/<split>/<class>/<image>`, splits 'train' and 'test', data/image_folder.py) whose
  images may be any size. Only the paths are held (the labels come from the listing).
- `data.source='tfds'`: a TFDS dataset prepared as ArrayRecord files (`tfds build <name>
  --file_format=array_record`), read by index through `builder.as_data_source(split)`. Each
  record holds its image and its label, so nothing of a split is read at start: a label is
  read with its image, when the step needs it.
Both are `Records` (one split, read by index: (pixels u8[H, W, 3] of any size, label)), and
each step's images are decoded when the step needs them.

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

`load` / `load_tfds` return a StreamingDataset, which the train loop uses like data.Dataset:
its `train_images` / `test_images` are read-only u8[N, S, S, 3] array views that decode on
indexing (evaluation preprocessing), `train_batches(...)` replaces data.TrainBatches and
`eval_batches(...)` data.eval_batches (labels taken from the records they decode).
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


NOT_IN_MEMORY = (
    'A streamed split is never held in memory as one array; this code path needs the '
    'in-memory source (data.streaming=False). Multi-seed replicas (replicas > 1) keep '
    'the training set on the devices and cannot stream.'
)


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


class FolderRecords:
  """One split of an image folder as records: read(i) -> (u8[H, W, 3], label)."""

  def __init__(self, paths: Sequence[str], labels):
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int32)

  def __len__(self):
    return len(self.paths)

  def read(self, index: int):
    return _decode_file(self.paths[index]), int(self.labels[index])


def _decode_file(path: str) -> np.ndarray:
  """u8[H, W, 3] of one image file; errors name the file."""
  return image_folder._decode(path, os.path.dirname(path), (os.path.basename(path),))  # pylint: disable=protected-access


class TfdsRecords:
  """One split of a TFDS dataset prepared as ArrayRecord files: read(i) -> (u8[H, W, 3], label).

  source: `builder.as_data_source(split)` (random access; each record decodes to
  {'image': u8[H, W, C], 'label': int}).
  """

  def __init__(self, source, where: str):
    self.source = source
    self.where = where

  def __len__(self):
    return len(self.source)

  def read(self, index: int):
    try:
      record = self.source[int(index)]
    except Exception as e:  # pylint: disable=broad-except  (array_record, PIL, TF: any of them)
      raise ValueError(
          f'{self.where} record {index} cannot be read ({type(e).__name__}: {e}): its '
          'ArrayRecord files are damaged or incomplete; prepare the dataset again.'
      ) from e
    pixels = np.asarray(record['image'])
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
      pixels = np.repeat(pixels, 3, axis=-1)  # greyscale: models expect 3 channels
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
      raise ValueError(
          f'{self.where} record {index} has an image {pixels.dtype}{list(pixels.shape)}; '
          'streaming expects uint8 [H, W, 3] (or [H, W, 1]).'
      )
    return pixels, int(record['label'])


def preprocess(pixels: np.ndarray, size: int, rng: Optional[np.random.Generator] = None):
  """u8[size, size, 3] of u8[H, W, 3]: a random-resized crop with `rng`, the evaluation crop
  without."""
  height, width = pixels.shape[:2]
  box = (
      center_crop_box(width, height) if rng is None else random_resized_crop_box(rng, width, height)
  )
  return _resample(pixels, box, size)


def decode(path: str, size: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
  """u8[size, size, 3] of one image file: a random-resized crop with `rng`, the evaluation crop
  without."""
  return preprocess(_decode_file(path), size, rng)


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      _POOL = concurrent.futures.ThreadPoolExecutor(_workers(), thread_name_prefix='decode')
    return _POOL


def read_many(records, indices: Sequence[int], size: int, rngs=None):
  """(u8[len(indices), size, size, 3], int32[len(indices)]), read and preprocessed in the
  thread pool."""
  rngs = rngs if rngs is not None else [None] * len(indices)
  images = np.zeros((len(indices), size, size, 3), np.uint8)
  labels = np.zeros((len(indices),), np.int32)

  def one(args):
    pixels, label = records.read(int(args[0]))
    return preprocess(pixels, size, args[1]), label

  for k, (image, label) in enumerate(_pool().map(one, zip(indices, rngs))):
    images[k], labels[k] = image, label
  return images, labels


class LazyImages:
  """A read-only u8[N, size, size, 3] view of a split's records, decoded (evaluation
  preprocessing) when indexed with an int, a slice or an int array."""

  dtype = np.dtype(np.uint8)
  ndim = 4

  def __init__(self, records, size: int):
    self.records = records
    self.size = int(size)
    self.shape = (len(records), self.size, self.size, 3)

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    if isinstance(index, (int, np.integer)):
      return preprocess(self.records.read(int(index))[0], self.size)
    if isinstance(index, slice):
      picked = range(len(self.records))[index]
    else:
      picked = np.asarray(index).reshape(-1)
    return read_many(self.records, picked, self.size)[0]

  def __array__(self, dtype=None, copy=None):
    raise TypeError(NOT_IN_MEMORY)


class RecordLabels:
  """int32[N] labels kept in the records (TFDS): their number, and reading on indexing (each
  read decodes its record; the streaming batches take labels with their images instead)."""

  dtype = np.dtype(np.int32)

  def __init__(self, records):
    self.records = records
    self.shape = (len(records),)

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    if isinstance(index, (int, np.integer)):
      return self.records.read(int(index))[1]
    picked = range(len(self.records))[index] if isinstance(index, slice) else np.ravel(index)
    return np.asarray([self.records.read(int(i))[1] for i in picked], np.int32)

  def __array__(self, dtype=None, copy=None):
    raise TypeError(NOT_IN_MEMORY)


def read_step(order: batching.BatchOrder, idx, step: int, images: LazyImages):
  """(u8[b, S, S, 3], int32[b]): the records `idx` of global step `step`, each cropped at random
  by default_rng([seed, epoch, index]), so that the batch is a pure function of the step."""
  epoch = step // order.steps_per_epoch
  rngs = [np.random.default_rng([order.seed, epoch, int(i)]) for i in idx]
  return read_many(images.records, idx, images.size, rngs)


class StreamingTrainBatches(batching.BatchOrder):
  """data.TrainBatches for streamed records: the same indices per step and process; the images
  of this process's slice read with their labels and random-resized-cropped, the next `prefetch`
  steps decoding in the background."""

  def __init__(
      self,
      images: LazyImages,
      seed: int,
      global_batch: int,
      process_index: int = 0,
      process_count: int = 1,
      prefetch: int = 2,
  ):
    super().__init__(len(images), seed, global_batch, process_index, process_count)
    self.images = images
    self.prefetch = int(prefetch)
    self._pending = {}
    self._lock = threading.Lock()
    self._background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='prefetch')

  def _decode_step(self, step: int):
    with self._lock:  # indices() caches one epoch's permutation
      idx = self.indices(step)
    return read_step(self, idx, step, self.images)

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
  """data.Dataset's surface over streamed records (see the module docstring)."""

  def __init__(self, name, train_records, test_records, class_names, size):
    self.name = name
    self.train_images = LazyImages(train_records, size)
    self.test_images = LazyImages(test_records, size)
    self.train_labels = _labels(train_records)
    self.test_labels = _labels(test_records)
    self.class_names = tuple(class_names)
    self.num_classes = len(class_names)
    self.mean = IMAGENET_MEAN
    self.std = IMAGENET_STD

  def train_batches(
      self, seed, global_batch, process_index=0, process_count=1, loader='threads', workers=0
  ):
    """This process's training batches: `batch(step)` -> (u8[b, S, S, 3], int32[b]).

    loader: 'threads' (StreamingTrainBatches) or 'grain' (data/grain_batches.py: the same
      batches from a grain pipeline, in `workers` processes when workers > 0).
    """
    if loader == 'grain':
      from data import grain_batches  # pylint: disable=import-outside-toplevel

      return grain_batches.GrainTrainBatches(
          self.train_images, seed, global_batch, process_index, process_count, workers
      )
    if loader != 'threads':
      raise ValueError(f"data.loader={loader!r}: one of 'threads', 'grain'.")
    return StreamingTrainBatches(
        self.train_images, seed, global_batch, process_index, process_count
    )

  def eval_batches(self, batch_size, process_index=0, process_count=1):
    """data.eval_batches over the test records, each label read with its image."""
    test = self.test_images
    for lo, hi, local in batching.eval_slices(len(test), batch_size, process_index, process_count):
      x = np.zeros((local, test.size, test.size, 3), np.uint8)
      y = np.zeros((local,), np.int32)
      mask = np.zeros((local,), np.float32)
      x[: hi - lo], y[: hi - lo] = read_many(test.records, range(lo, hi), test.size)
      mask[: hi - lo] = 1.0
      yield x, y, mask


def _labels(records):
  return records.labels if isinstance(records, FolderRecords) else RecordLabels(records)


def _check_size(size: int):
  if size < 1:
    raise ValueError(f'data.image_size={size}: the streamed crop side must be >= 1.')


def load(path: str, size: int) -> StreamingDataset:
  """The folder's train and test splits as a StreamingDataset cropping to `size`."""
  _check_size(size)
  train_paths, train_labels, class_names = list_split(path, 'train')
  test_paths, test_labels, _ = list_split(path, 'test')
  return StreamingDataset(
      image_folder.dataset_name(path),
      FolderRecords(train_paths, train_labels),
      FolderRecords(test_paths, test_labels),
      class_names,
      size,
  )


def load_tfds(name: str, data_dir: Optional[str], size: int) -> StreamingDataset:
  """A TFDS dataset's train and test splits, prepared as ArrayRecord, as a StreamingDataset
  cropping to `size` (data/tfds_source.py opens them)."""
  from data import tfds_source  # pylint: disable=import-outside-toplevel

  _check_size(size)
  (train, test), class_names = tfds_source.data_sources(name, data_dir)
  return StreamingDataset(
      name,
      TfdsRecords(train, f'TFDS {name!r} train'),
      TfdsRecords(test, f'TFDS {name!r} test'),
      class_names,
      size,
  )
