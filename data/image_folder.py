"""Image-folder source: a directory or a .tar(.gz) laid out as `<split>/<class>/<image>`.

Layout (optionally under ONE top-level folder, as in ../shared/data/cifar10.tar.gz):

    [cifar10/]train/airplane/0001.jpg
    [cifar10/]train/automobile/0001.jpg
    ...
    [cifar10/]test/truck/0999.jpg

- Splits: 'train' and 'test' are required; other top-level folders (e.g. 'val') and loose files
  next to the splits (README, LICENSE) are ignored, as are hidden files/folders ('.DS_Store',
  '._x.jpg', '__MACOSX') and the thumbnail caches Windows leaves in image folders ('Thumbs.db',
  'ehthumbs.db', 'desktop.ini').
- Labels: class index = position of the class folder name in the sorted (Python string order,
  i.e. code-point) list of the train split's class folders. For CIFAR-10 this is the standard
  order (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck is alphabetical) and
  for CIFAR-100 the standard fine-label order (apple, aquarium_fish, baby, ...: alphabetical too).
  The test split may not contain classes the train split lacks.
- Order within a class: file names in natural order ('2.png' before '10.png'); classes in label
  order. (Training order comes from the epoch permutation anyway.)
- Pixels: decoded with Pillow and converted to RGB uint8 (greyscale is replicated, alpha dropped).
  16-bit images keep their high byte (v >> 8, as Pillow does for 16-bit RGB and libpng's
  strip_16), so a 16-bit file gives the pixels of its 8-bit version; 32-bit integer and float
  images are refused (their range is unknown). All images must have the same size.

An archive is read straight from the (gzip) stream, no extraction. The decoded arrays are cached as
an uncompressed .npz in the cache dir, keyed by the archive's absolute path, size and mtime (for a
directory: every file's relative path, size and mtime), so later loads take a fraction of a second.
The cache is written atomically (temp file + rename), so concurrent runs or hosts sharing a cache
dir cannot read a half-written file; an unreadable cache file is ignored and rebuilt. A cache
file that reads but holds a label outside [0, C - 1] is refused with a ValueError naming the file,
the value and the range (delete the file to have the images decoded again).

Decoding is serial on purpose: for 32x32 images the per-file cost is Python/Pillow overhead that
holds the GIL; on the 2-core dev machine a 2-thread pool was slower than serial (6.1 s vs 4.5 s for
CIFAR-10's 60,000 JPEGs), and a process pool would re-import the caller's modules (JAX, TF) in every
worker. It is a one-off cost per archive thanks to the cache.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
import time

import numpy as np
import tqdm
from PIL import Image

SPLITS = ("train", "test")
LAYOUT = (
    "<split>/<class>/<image> with split folders 'train' and 'test' (optionally under one "
    "top-level folder, e.g. cifar10/train/airplane/0001.jpg)"
)
# Bump when the decoded content or the cache file format changes, to invalidate old caches.
_CACHE_VERSION = 2  # 2: 16-bit greyscale no longer saturated, Thumbs.db skipped
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

log = logging.getLogger(__name__)


def dataset_name(path):
  """'../shared/data/cifar10.tar.gz' -> 'cifar10'; a directory -> its base name."""
  base = os.path.basename(os.path.normpath(os.path.expanduser(path)))
  for suffix in _ARCHIVE_SUFFIXES:
    if base.endswith(suffix):
      return base[: -len(suffix)]
  return base


def _natural_key(name):
  """Sort key: digit runs compare as numbers ('2.png' < '10.png')."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


# Not images: thumbnail caches and folder settings that Windows writes next to pictures.
_SYSTEM_FILES = ("thumbs.db", "ehthumbs.db", "desktop.ini")


def _hidden(parts):
  return any(p.startswith(".") or p == "__MACOSX" for p in parts) or (
      bool(parts) and parts[-1].lower() in _SYSTEM_FILES
  )


def _split_path(name):
  """'./a/b/c.jpg' -> ('a', 'b', 'c.jpg')."""
  return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def _scan_directory(root):
  """Lists a directory tree.

  Returns:
    files: list of (parts tuple relative to root, absolute file path);
    dirs: list of parts tuples of every sub-directory;
    fingerprint: str over every file's relative path, size and mtime (the cache key).
  """
  files, dirs, stamp = [], [], []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    rel = _split_path(os.path.relpath(dirpath, root))
    dirs.extend(rel + (d,) for d in dirnames)
    for f in sorted(filenames):
      full = os.path.join(dirpath, f)
      st = os.stat(full)
      files.append((rel + (f,), full))
      stamp.append(f"{'/'.join(rel + (f,))}|{st.st_size}|{st.st_mtime_ns}")
  return files, dirs, "\n".join(stamp)


def _read_archive(path):
  """Reads every member of a tar(.gz) in one streaming pass.

  Returns:
    files: list of (parts tuple, bytes); dirs: list of parts tuples of directory members.
  """
  files, dirs = [], []
  try:
    with tarfile.open(path, "r:*") as tar:
      for member in tar:
        parts = _split_path(member.name)
        if not parts:
          continue
        if member.isdir():
          dirs.append(parts)
        elif member.isfile():
          files.append((parts, tar.extractfile(member).read()))
  except (tarfile.TarError, EOFError, OSError) as e:  # Corrupt/truncated gzip surfaces as these.
    raise ValueError(
        f"data.path={path!r} is not a readable tar/tar.gz archive ({e}); expected "
        f"an archive laid out as {LAYOUT}."
    ) from e
  return files, dirs


def _resolve_layout(file_parts, dir_parts, where):
  """Finds the split/class structure in a list of relative paths.

  Args:
    file_parts: list of path-part tuples of files (index i = file i).
    dir_parts: list of path-part tuples of directories (may be incomplete for archives).
    where: the path to name in errors.
  Returns:
    (class_names tuple sorted, {split: {class: [file indices, natural order]}}).
  """
  visible = [(i, p) for i, p in enumerate(file_parts) if not _hidden(p)]
  dirset = {d for d in dir_parts if not _hidden(d)}
  for _, p in visible:  # Archives need not list directory members: derive them from files.
    dirset.update(p[:k] for k in range(1, len(p)))

  if any((s,) in dirset for s in SPLITS):
    prefix = ()
  else:
    tops = sorted({d[0] for d in dirset})
    if len(tops) == 1 and any((tops[0], s) in dirset for s in SPLITS):
      prefix = (tops[0],)
    else:
      found = sorted({p[0] for _, p in visible} | set(tops))
      raise ValueError(
          f"{where}: no 'train'/'test' split folders found (top-level entries: "
          f"{found[:10]}); expected {LAYOUT}."
      )
  shown = lambda parts: os.path.join(where, *parts)
  for split in SPLITS:
    if prefix + (split,) not in dirset:
      found = sorted(
          d[len(prefix)] for d in dirset if len(d) == len(prefix) + 1 and d[: len(prefix)] == prefix
      )
      raise FileNotFoundError(
          f"{where}: missing split folder {shown(prefix + (split,))!r} "
          f"(found folders: {found[:10]}); expected {LAYOUT}."
      )

  n = len(prefix)
  classes = {split: {} for split in SPLITS}
  for d in sorted(dirset):
    rest = d[n:]
    if d[:n] != prefix or not rest or rest[0] not in SPLITS:
      continue
    if len(rest) == 2:
      classes[rest[0]].setdefault(rest[1], [])
    elif len(rest) > 2:
      raise ValueError(
          f"{where}: folder {shown(d)!r} is nested inside a class folder; expected " f"{LAYOUT}."
      )
  for i, p in visible:
    rest = p[n:]
    if p[:n] != prefix or len(rest) == 1 or rest[0] not in SPLITS:
      continue  # Loose files next to the splits (README) and other folders are not data.
    if len(rest) != 3:
      raise ValueError(
          f"{where}: file {shown(p)!r} is not inside a class folder; expected " f"{LAYOUT}."
      )
    classes[rest[0]][rest[1]].append(i)

  for split in SPLITS:
    if not classes[split]:
      raise ValueError(
          f"{where}: split folder {shown(prefix + (split,))!r} has no class folders; "
          f"expected {LAYOUT}."
      )
    for cls, idx in classes[split].items():
      if not idx:
        raise ValueError(
            f"{where}: class folder {shown(prefix + (split, cls))!r} is empty; every "
            "class folder needs at least one image (remove the folder or add images)."
        )
      idx.sort(key=lambda i: _natural_key(file_parts[i][-1]))
  class_names = tuple(sorted(classes["train"]))
  extra = sorted(set(classes["test"]) - set(class_names))
  if extra:
    raise ValueError(
        f"{where}: test class folders {extra} have no counterpart in "
        f"{shown(prefix + ('train',))!r}; both splits must use the same class names."
    )
  return class_names, classes


class _UnsupportedPixels(ValueError):
  """A readable image whose pixel format has no defined 8-bit conversion."""


# Pillow's modes for 16-bit greyscale; convert("RGB") would saturate every value above 255.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _grey16_to_rgb8(pixels, mode, where, parts):
  """u16[H, W] -> u8[H, W, 3]: the high byte, replicated to three channels."""
  if pixels.ndim != 2:
    raise ValueError(
        f"Image {os.path.join(where, *parts)!r}: {mode!r} pixels of shape "
        f"{pixels.shape}, expected 2-D."
    )
  grey = (pixels.astype(np.uint16) >> 8).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def _decode(source, where, parts):
  """Decodes one image file (path or bytes) to u8[H, W, 3]; errors name the file."""
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
      im.load()
      if im.mode in _SIXTEEN_BIT:
        return _grey16_to_rgb8(np.asarray(im), im.mode, where, parts)
      if im.mode in ("I", "F") or im.mode.startswith("I;"):
        raise _UnsupportedPixels(
            f"Image {os.path.join(where, *parts)!r} has {im.mode!r} pixels (32-bit integer or "
            "float) whose range is unknown; convert it to 8- or 16-bit."
        )
      if im.mode != "RGB":
        im = im.convert("RGB")  # Pillow reads 16-bit RGB(A) PNGs as 8-bit RGB(A) already.
      return np.asarray(im, dtype=np.uint8)
  except _UnsupportedPixels:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(
        f"Cannot decode image {os.path.join(where, *parts)!r} ({type(e).__name__}: "
        f"{e}); remove or replace the file."
    ) from e


def _decode_split(files, indices_by_class, class_names, where, shape=None, split=""):
  """Decodes one split, with a progress bar (counts, images/s, ETA) on a terminal.

  Args:
    files: list of (parts, path-or-bytes).
    indices_by_class: {class name: [file indices]}.
    class_names: label order.
    where: archive/dir path, for error messages.
    shape: required (H, W, 3), or None to take the first image's.
    split: its name, for the progress bar.
  Returns:
    (u8[n, H, W, 3], int32[n]).
  """
  order = [
      (label, i) for label, cls in enumerate(class_names) for i in indices_by_class.get(cls, [])
  ]
  images, labels, first = None, np.empty(len(order), np.int32), None
  # disable=None: a bar on a terminal only, no carriage-return clutter in log files, which
  # get a line per quarter of the split instead.
  bar = tqdm.tqdm(order, desc=f"decoding {split}", unit="img", disable=None, leave=False)
  quarter, start = max(len(order) // 4, 1), time.perf_counter()
  for k, (label, i) in enumerate(bar):
    if bar.disable and k and k % quarter == 0:
      log.info(
          "decoded %d/%d %s images (%.0f s)", k, len(order), split, time.perf_counter() - start
      )
    parts, source = files[i]
    img = _decode(source, where, parts)
    if images is None:
      first = os.path.join(where, *parts)
      if shape is not None and img.shape != shape:
        raise ValueError(
            f"Image {first!r} is {img.shape[1]}x{img.shape[0]} but the train images "
            f"are {shape[1]}x{shape[0]}; all images must have the same size."
        )
      images = np.empty((len(order), *img.shape), np.uint8)
    elif img.shape != images.shape[1:]:
      raise ValueError(
          f"Image {os.path.join(where, *parts)!r} is {img.shape[1]}x{img.shape[0]} "
          f"but {first!r} is {images.shape[2]}x{images.shape[1]}; all images must "
          "have the same size (resize them beforehand)."
      )
    images[k] = img
    labels[k] = label
  return images, labels


def _cache_file(cache_dir, path, key):
  digest = hashlib.sha256(f"v{_CACHE_VERSION}\n{key}".encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f"image_folder-{dataset_name(path)}-{digest}.npz"), digest


def _load_cache(cache_file, digest):
  if not os.path.exists(cache_file):
    return None
  try:
    with np.load(cache_file, allow_pickle=False) as z:
      if str(z["digest"]) != digest:
        return None
      arrays = (
          z["train_images"],
          z["train_labels"],
          z["test_images"],
          z["test_labels"],
          tuple(str(c) for c in z["class_names"]),
      )
  except Exception as e:  # pylint: disable=broad-except  # Any damage: rebuild, don't crash.
    log.warning("Ignoring unreadable cache file %s (%s); decoding again.", cache_file, e)
    return None
  _check_cached_labels(cache_file, arrays)
  return arrays


def _check_cached_labels(cache_file, arrays):
  """Raises ValueError naming `cache_file` if a label of a split is not a class index.

  The file read (its key matched), so only its contents can be wrong: a label outside
  [0, C - 1] would index past the class names, or crash the subset draw, far from the file.
  """
  _, train_labels, _, test_labels, class_names = arrays
  top = len(class_names) - 1
  for split, labels in (("train", train_labels), ("test", test_labels)):
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
      bad = f"holds {labels.dtype} values, not integers"
    elif labels.size == 0 or (labels.min() >= 0 and labels.max() <= top):
      continue
    else:
      wrong = np.flatnonzero((labels < 0) | (labels > top))
      values = ", ".join(str(v) for v in np.unique(labels[wrong])[:5])
      bad = (
          f"holds {len(wrong)} label(s) outside the class range: {values} "
          f"(the first at index {wrong[0]})"
      )
    raise ValueError(
        f"The image-folder cache file {cache_file}: {split}_labels {bad}; expected integers "
        f"in [0, {top}] for its {len(class_names)} classes. The file is damaged or was not "
        "written by this code: delete it, and the images are decoded again at the next load."
    )


def _save_cache(cache_file, digest, arrays):
  tmp = f"{cache_file}.tmp{os.getpid()}"
  try:
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    train_images, train_labels, test_images, test_labels, class_names = arrays
    with open(tmp, "wb") as f:  # A file object, so numpy does not append another '.npz'.
      np.savez(
          f,
          digest=np.array(digest),
          train_images=train_images,
          train_labels=train_labels,
          test_images=test_images,
          test_labels=test_labels,
          class_names=np.array(class_names, dtype=str),
      )
    os.replace(tmp, cache_file)
  except OSError as e:  # A read-only cache dir costs speed, not the run.
    log.warning(
        "Could not write the image-folder cache %s (%s); set data.cache_dir to a writable "
        "folder to make later loads fast.",
        cache_file,
        e,
    )
    if os.path.exists(tmp):
      os.remove(tmp)


def load_image_folder(path, cache_dir=None):
  """Loads an image-folder dataset from a directory or a .tar(.gz) archive (see module doc).

  Args:
    path: directory or archive; relative paths are relative to the working directory.
    cache_dir: folder for the decoded .npz cache, or None for no cache.
  Returns:
    (train_images u8[N, H, W, 3], train_labels int32[N], test_images u8[M, H, W, 3],
     test_labels int32[M], class_names tuple of C str).
  Raises:
    FileNotFoundError: `path` or a split folder is missing.
    ValueError: wrong layout, empty class folder, undecodable image, images of differing sizes,
      unreadable archive.
  """
  where = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(where):
    raise FileNotFoundError(
        f"data.path={path!r} ({where}) does not exist; expected a directory or "
        f".tar.gz laid out as {LAYOUT}, e.g. ../shared/data/cifar10.tar.gz."
    )
  is_dir = os.path.isdir(where)
  if is_dir:
    files, dirs, fingerprint = _scan_directory(where)
    key = f"dir|{where}\n{fingerprint}"
  elif tarfile.is_tarfile(where):
    st = os.stat(where)
    key = f"archive|{where}|{st.st_size}|{st.st_mtime_ns}"
  else:
    raise ValueError(
        f"data.path={path!r} is neither a directory nor a tar/tar.gz archive; "
        f"expected one laid out as {LAYOUT}."
    )

  if cache_dir:
    cache_file, digest = _cache_file(cache_dir, where, key)
    cached = _load_cache(cache_file, digest)
    if cached is not None:
      log.info("Loaded %s from cache %s.", where, cache_file)
      return cached

  start = time.perf_counter()
  log.info(
      "Decoding %s (the first load only; later loads read the cache%s) ...",
      where,
      f" in {cache_dir}" if cache_dir else ", here disabled",
  )
  if not is_dir:
    files, dirs = _read_archive(where)
  class_names, classes = _resolve_layout([p for p, _ in files], dirs, where)
  train_images, train_labels = _decode_split(
      files, classes["train"], class_names, where, split="train"
  )
  test_images, test_labels = _decode_split(
      files, classes["test"], class_names, where, shape=train_images.shape[1:], split="test"
  )
  arrays = (train_images, train_labels, test_images, test_labels, class_names)
  log.info(
      "Decoded %d + %d images in %d classes from %s in %.1f s.",
      len(train_labels),
      len(test_labels),
      len(class_names),
      where,
      time.perf_counter() - start,
  )
  if cache_dir:
    _save_cache(cache_file, digest, arrays)
  return arrays
