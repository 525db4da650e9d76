"""TFDS source: a prepared TFDS image classification dataset (cifar10, cifar100, ...) as numpy.

This never downloads. `tfds.load` with download=True would try to fetch CIFAR from the internet
when the data dir lacks it, which on an offline machine (or a pod with no egress) hangs on retries
for minutes, and on a multi-host job would make every host download at once. Instead a missing
dataset fails at once, saying how to prepare it or how to use the offline image-folder copies.

TensorFlow is imported lazily (seconds of import time) and hidden from the GPUs, so it neither
grabs accelerator memory nor competes with JAX for it.
"""

from __future__ import annotations

import numpy as np

# Reading the split in chunks rather than tfds.load(..., batch_size=-1): with batch_size=-1 TFDS
# batches by info.splits.total_num_examples, which is 0 under tfds.testing.mock_data (empty split
# info) and then falls back to sys.maxsize, aborting the process inside tf.data.
_CHUNK = 10_000


def _import_tf():
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised by an earlier call: the setting is already in place.
    pass
  import tensorflow_datasets as tfds

  return tf, tfds


def offline_message(name, data_dir):
  """The instruction raised when a TFDS dataset is not available locally."""
  where = data_dir or "the default TFDS data dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  # The offline copies exist for CIFAR-10/100 only; for other names show the generic form.
  path = f"../shared/data/{name}.tar.gz" if name in ("cifar10", "cifar100") else "<dir or .tar.gz>"
  return (
      f"TFDS dataset {name!r} is not prepared in {where}, and this loader does not download. "
      f"Either read an image-folder copy:\n"
      f"  --config.data.source=image_folder --config.data.path={path}\n"
      f"(see ../shared/data/README.md; any directory or .tar.gz laid out as "
      f"<split>/<class>/<image> works), or prepare it where the internet is reachable with\n"
      f"  tfds build {name} --data_dir=<dir>\n"
      f"and pass --config.data.tfds_data_dir=<dir>."
  )


def load_tfds(name, data_dir=None):
  """Loads the 'train' and 'test' splits of a TFDS (image, label) dataset into memory.

  Args:
    name: TFDS name, e.g. 'cifar10' or 'cifar100' (config field data.name).
    data_dir: TFDS data dir (data.tfds_data_dir), or None for TFDS's default.
  Returns:
    (train_images u8[N, H, W, 3], train_labels int32[N], test_images u8[M, H, W, 3],
     test_labels int32[M], class_names tuple of C str); greyscale datasets are replicated to RGB.
  Raises:
    ValueError: unknown TFDS name (naming data.name).
    FileNotFoundError: the dataset is not prepared in data_dir (message: how to use image_folder).
  """
  tf, tfds = _import_tf()
  del tf
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"Unknown TFDS dataset data.name={name!r}; use 'cifar10' or 'cifar100' (or "
        "another TFDS image classification dataset)."
    ) from e
  info = builder.info
  # num_classes and names from the features, not info.splits (empty under mock_data).
  label = info.features["label"]
  out = []
  for split in ("train", "test"):
    try:
      ds = tfds.load(
          name,
          split=split,
          data_dir=data_dir,
          batch_size=_CHUNK,
          as_supervised=True,
          download=False,
          shuffle_files=False,
      )
    except AssertionError as e:  # TFDS's "could not find data in <data_dir>".
      raise FileNotFoundError(offline_message(name, data_dir)) from e
    chunks = list(tfds.as_numpy(ds))
    images = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros((0, 0, 0, 3), np.uint8)
    labels = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0,), np.int64)
    if images.ndim == 4 and images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)  # Greyscale (e.g. mnist): models expect 3 channels.
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(
          f"TFDS dataset data.name={name!r} split {split!r} has images "
          f"{images.dtype}{list(images.shape[1:])}; expected uint8 [H, W, 3]."
      )
    out += [images, labels.astype(np.int32)]
  return out[0], out[1], out[2], out[3], _class_names(label)


def _class_names(label):
  """The names of a ClassLabel feature, or '0'..'C-1' where it has none."""
  class_names = tuple(str(n) for n in label.names)
  if len(class_names) != label.num_classes:
    class_names = tuple(str(i) for i in range(label.num_classes))
  return class_names


def data_sources(name, data_dir=None):
  """The 'train' and 'test' splits of a TFDS dataset prepared as ArrayRecord, read by index.

  Nothing of a split is read here: `builder.as_data_source` opens the ArrayRecord files, and a
  record (its image and label) is decoded when it is indexed (data/streaming.py).

  Returns:
    ((train source, test source), class_names tuple of C str).
  Raises:
    ValueError: unknown TFDS name, or a dataset prepared in a format without random access.
    FileNotFoundError: the dataset is not prepared in data_dir.
  """
  _, tfds = _import_tf()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(offline_message(name, data_dir)) from e
  except ValueError as e:  # a malformed name
    raise ValueError(
        f"data.name={name!r} is not a TFDS dataset name ('imagenet2012', 'cifar10', ...): "
        f"{str(e).splitlines()[0]}"
    ) from e
  if not builder.is_prepared():
    raise FileNotFoundError(offline_message(name, data_dir))
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise ValueError(
        f"TFDS {name!r} has the features {sorted(features.keys())}; streaming reads an "
        "image classification dataset with 'image' and 'label'."
    )
  sources = []
  for split in ("train", "test"):
    try:
      sources.append(builder.as_data_source(split))
    except AssertionError as e:  # TFDS's "could not find data in <data_dir>".
      raise FileNotFoundError(offline_message(name, data_dir)) from e
    except (NotImplementedError, ValueError) as e:
      raise ValueError(
          f"data.streaming=True reads TFDS {name!r} by index, which needs it prepared as "
          f"ArrayRecord files (tfds build {name} --file_format=array_record "
          f"--data_dir=<dir>); TFDS says: {str(e).splitlines()[0]}"
      ) from e
  return tuple(sources), _class_names(features["label"])
