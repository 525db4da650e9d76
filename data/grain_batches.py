"""grain as the streaming loader (`data.loader='grain'`, data/streaming.py).

Element s of the pipeline's `grain.MapDataset` is this process's batch of global step s: the
same indices as every other path (data.batching), the same records, the same crops (drawn from
(seed, epoch, index)), so the batches equal StreamingTrainBatches' bit for bit
(tests/test_streaming.py). A run at step k iterates `dataset[k:]`, which is why the checkpoint's
step is the whole iterator state and a resumed run reads exactly the batches of an
uninterrupted one.

What grain adds over the thread loader: with `data.workers > 0` the batches are decoded in
that many worker processes (`IterDataset.mp_prefetch`), out of the training process's GIL, which
is what a pod host decoding thousands of JPEGs a second needs; with `workers=0` they are read in
the training process with grain's thread prefetch, like the thread loader.
"""

from __future__ import annotations

import threading

import grain
from absl import flags

from data import batching, streaming

# Steps the pipeline may reach: grain's MapDataset is lazy, so the bound costs nothing.
_MAX_STEPS = 2**40


class _StepBatch:
  """step -> this process's batch (picklable, for grain's worker processes)."""

  def __init__(self, order: batching.BatchOrder, images: streaming.LazyImages):
    self.order = order
    self.images = images
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    del state['_lock']
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __call__(self, step: int):
    with self._lock:  # BatchOrder.indices caches one epoch's permutation; grain reads in threads
      idx = self.order.indices(int(step))
    return streaming.read_step(self.order, idx, int(step), self.images)


class GrainTrainBatches:
  """data.TrainBatches' `batch(step)` over a grain pipeline of streamed records.

  Args:
    images: the split's streaming.LazyImages (its records and crop side).
    seed, global_batch, process_index, process_count: BatchOrder's.
    workers: grain worker processes decoding batches (0: in this process, in threads).
    prefetch: batches read ahead.
  """

  def __init__(
      self,
      images: streaming.LazyImages,
      seed: int,
      global_batch: int,
      process_index: int = 0,
      process_count: int = 1,
      workers: int = 0,
      prefetch: int = 2,
  ):
    order = batching.BatchOrder(len(images), seed, global_batch, process_index, process_count)
    self.dataset = grain.MapDataset.range(0, _MAX_STEPS).map(_StepBatch(order, images))
    self.workers = int(workers)
    self.prefetch = int(prefetch)
    self._iterator = None
    self._next = None

  def _start(self, step: int):
    threads = 1 if self.workers else max(1, self.prefetch)
    ds = self.dataset[step:].to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=self.prefetch)
    )
    if self.workers:
      # grain's worker start reads its absl flags; outside an absl app (a notebook, a test)
      # they are unparsed and it would raise, so their defaults are taken as given.
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
    self._iterator = iter(ds)
    self._next = step

  def batch(self, step):
    """(u8[b, S, S, 3], int32[b]) for global step `step`, b = global_batch // process_count."""
    if step < 0:
      raise ValueError(f'step={step} must be >= 0.')
    if step != self._next:  # the first step, a resume or a jump: iterate from `step`
      self._start(step)
    self._next = step + 1
    return next(self._iterator)
