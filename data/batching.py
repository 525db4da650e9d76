"""Deterministic batching: which examples make up global step `step`, for each process.

Everything is a pure function of (seed, step): an epoch's order is
`default_rng([seed, epoch]).permutation(n)`, so a run resumed at step k gathers exactly the batches
an uninterrupted run would, on any number of processes, with no iterator state to checkpoint.
Each epoch drops its remainder (n % global_batch examples, different ones every epoch) so every
step has the same static batch shape.

Multi-host: the global batch of a step is split into `process_count` contiguous slices, process i
taking slice i; the train step then assembles the global array from the per-process slices
(e.g. `jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import numpy as np


def _check_split(global_batch, process_count, process_index):
  if global_batch < 1:
    raise ValueError(f"batch_size={global_batch} must be >= 1.")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} must be in [0, process_count={process_count})."
    )
  if global_batch % process_count:
    raise ValueError(
        f"batch_size={global_batch} (the global batch) must be divisible by the "
        f"process count {process_count}; choose a multiple of {process_count}."
    )
  return global_batch // process_count


def epoch_permutation(seed, epoch, n):
  """The order of the n training examples in `epoch`: int64[n], a pure function of (seed, epoch).

  seed, epoch: ints >= 0.
  """
  if seed < 0 or epoch < 0:
    raise ValueError(f"seed={seed} and epoch={epoch} must be >= 0.")
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def steps_per_epoch(n, global_batch):
  """Full global batches in one epoch of n examples (the remainder is dropped)."""
  if global_batch < 1:
    raise ValueError(f"batch_size={global_batch} must be >= 1.")
  steps = n // global_batch
  if steps == 0:
    raise ValueError(
        f"batch_size={global_batch} is larger than the {n} training examples; lower "
        "batch_size (or raise data.train_subset / the dataset size)."
    )
  return steps


def train_batch_indices(seed, step, n, global_batch, process_index=0, process_count=1):
  """Indices of this process's share of the global batch at global step `step`.

  Global batch of step s: epoch_permutation(seed, s // spe)[j*B:(j+1)*B] with j = s % spe,
  B = global_batch, spe = steps_per_epoch(n, B). Process i takes its i-th contiguous slice.

  Returns:
    int64[global_batch // process_count].
  """
  local = _check_split(global_batch, process_count, process_index)
  if step < 0:
    raise ValueError(f"step={step} must be >= 0.")
  epoch, j = divmod(step, steps_per_epoch(n, global_batch))
  start = j * global_batch + process_index * local
  return epoch_permutation(seed, epoch, n)[start : start + local]


class BatchOrder:
  """Which examples make up this process's share of each global step, with the current epoch's
  order cached: the index half of TrainBatches, for loaders that read the examples themselves
  (data/streaming.py).

  Args:
    num_examples: N, the training examples.
    seed: epoch-order seed (the run's seed).
    global_batch: B, divisible by process_count.
    process_index, process_count: this process and how many share the global batch.
  """

  def __init__(self, num_examples, seed, global_batch, process_index=0, process_count=1):
    self.seed = int(seed)
    self.global_batch = int(global_batch)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.local_batch = _check_split(self.global_batch, self.process_count, self.process_index)
    self.num_examples = int(num_examples)
    self.steps_per_epoch = steps_per_epoch(self.num_examples, self.global_batch)
    self._epoch = None
    self._perm = None

  def indices(self, step):
    """int64[local_batch], identical to train_batch_indices(...) for this step."""
    if step < 0:
      raise ValueError(f"step={step} must be >= 0.")
    epoch, j = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:  # One permutation per epoch, not per step (n log n each).
      self._perm = epoch_permutation(self.seed, epoch, self.num_examples)
      self._epoch = epoch
    start = j * self.global_batch + self.process_index * self.local_batch
    return self._perm[start : start + self.local_batch]


class TrainBatches(BatchOrder):
  """This process's training batches by global step, with the current epoch's order cached.

  Args:
    images: u8[N, H, W, 3]; labels: int[N].
    seed, global_batch, process_index, process_count: BatchOrder's.

  `batch(step)` -> (u8[B // process_count, H, W, 3], int32[B // process_count]): the same as
  indexing with train_batch_indices(seed, step, N, B, process_index, process_count).
  """

  def __init__(self, images, labels, seed, global_batch, process_index=0, process_count=1):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    super().__init__(len(labels), seed, global_batch, process_index, process_count)
    self.images = images
    self.labels = np.asarray(labels, np.int32)

  def batch(self, step):
    """(u8[b, H, W, 3], int32[b]) for global step `step`, b = global_batch // process_count."""
    idx = self.indices(step)
    return self.images[idx], self.labels[idx]


def eval_slices(num_examples, batch_size, process_index=0, process_count=1):
  """Yields (lo, hi, local) of every global eval batch: this process's examples [lo, hi) of it,
  `local` = batch_size // process_count the padded size (eval_batches' order)."""
  local = _check_split(batch_size, process_count, process_index)
  for start in range(0, num_examples, batch_size):
    lo = min(start + process_index * local, num_examples)
    hi = min(start + (process_index + 1) * local, num_examples)
    yield lo, hi, local


def eval_batches(images, labels, batch_size, process_index=0, process_count=1):
  """Yields every example once, in order, in fixed-shape batches with a validity mask.

  Global eval batch k holds examples [k*B, (k+1)*B), the last one zero-padded to B; each process
  yields its contiguous slice of every global batch, so all processes yield the same number of
  batches (collectives in the eval step stay in lockstep) and summing `mask`-weighted metrics over
  processes and batches counts every example exactly once.

  Args:
    images: [N, H, W, C]; labels: int[N].
    batch_size: global eval batch B, divisible by process_count.
  Yields:
    (images [B // P, H, W, C] same dtype, labels int32[B // P], mask f32[B // P] of 1/0).
  """
  n = len(labels)
  if len(images) != n:
    raise ValueError(f"{len(images)} images but {n} labels.")
  labels = np.asarray(labels, np.int32)
  for lo, hi, local in eval_slices(n, batch_size, process_index, process_count):
    valid = hi - lo
    x = np.zeros((local, *images.shape[1:]), images.dtype)
    y = np.zeros((local,), np.int32)
    mask = np.zeros((local,), np.float32)
    x[:valid], y[:valid], mask[:valid] = images[lo:hi], labels[lo:hi], 1.0
    yield x, y, mask
