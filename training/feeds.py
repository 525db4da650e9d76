"""The data a run's programs consume, as device arrays: the train batches of each step, the
fixed probe batch, and the test set's evaluation."""

import math
from typing import Callable, Dict, List

import jax
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

import data as data_lib
from training import replicas as replicas_lib


def device_batch(sharding, local_array, global_batch):
  global_shape = (global_batch,) + local_array.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local_array, global_shape)


def global_array(sharding, host_array: np.ndarray):
  """A global array from the full host array, which every process holds (any topology)."""
  return jax.make_array_from_callback(host_array.shape, sharding, lambda i: host_array[i])


def train_feed(config, dataset, mesh, batch_sharding) -> Callable[[int], tuple]:
  """step -> the train step's data arguments.

  One replica: this process's share of the global batch (u8[B, ...], i32[B]), gathered on the
  host. N replicas: i32[N, B] rows (replica k draws the order of seed + k) and the device
  resident train set, from which the step gathers the batches itself.
  """
  if config.replicas == 1:
    # The epoch order depends on the run seed, so seeds differ in data order as well as init.
    # Streamed records (data/streaming.py) give their own batches: the same indices, decoded.
    if hasattr(dataset, 'train_batches'):
      batches = dataset.train_batches(
          config.seed,
          config.batch_size,
          jax.process_index(),
          jax.process_count(),
          loader=config.data.get('loader', 'threads'),
          workers=config.data.get('workers', 0),
      )
    else:
      batches = data_lib.TrainBatches(
          dataset.train_images,
          dataset.train_labels,
          config.seed,
          config.batch_size,
          jax.process_index(),
          jax.process_count(),
      )

    def feed(step):
      images, labels = batches.batch(step)
      return (
          device_batch(batch_sharding, images, config.batch_size),
          device_batch(batch_sharding, labels, config.batch_size),
      )

    return feed
  batches = [
      data_lib.TrainBatches(
          dataset.train_images, dataset.train_labels, config.seed + k, config.batch_size
      )
      for k in range(config.replicas)
  ]
  replicated = NamedSharding(mesh, P())
  images = global_array(replicated, replicas_lib.resident_images(dataset.train_images))
  labels = global_array(replicated, np.asarray(dataset.train_labels, np.int32))
  index_sharding = NamedSharding(mesh, P(replicas_lib.REPLICA_AXIS, replicas_lib.DATA_AXIS))

  def feed(step):
    return (
        global_array(index_sharding, replicas_lib.train_indices(batches, step)),
        images,
        labels,
    )

  return feed


def _probe_batch(config, dataset, batch_sharding):
  """The fixed probe batch (probe_size images of probe_split, chosen by the seed), sharded."""
  split_images = (
      dataset.test_images if config.dynamics.probe_split == 'test' else dataset.train_images
  )
  pick = np.random.default_rng(config.seed).permutation(len(split_images))
  pick = np.sort(pick[: config.dynamics.probe_size])
  local = np.array_split(split_images[pick], jax.process_count())[jax.process_index()]
  return device_batch(batch_sharding, local, config.dynamics.probe_size)


def probe_images(config, dataset, mesh, batch_sharding):
  """The probe batch; with N replicas u8[N, P, ...], replica k's drawn from seed + k."""
  if config.replicas == 1:
    return _probe_batch(config, dataset, batch_sharding)
  split_images = (
      dataset.test_images if config.dynamics.probe_split == 'test' else dataset.train_images
  )
  picks = [
      np.sort(
          np.random.default_rng(config.seed + k).permutation(len(split_images))[
              : config.dynamics.probe_size
          ]
      )
      for k in range(config.replicas)
  ]
  return global_array(
      NamedSharding(mesh, P(replicas_lib.REPLICA_AXIS, replicas_lib.DATA_AXIS)),
      np.stack([split_images[pick] for pick in picks]),
  )


def evaluate(eval_step, state, dataset, config, batch_sharding) -> List[Dict[str, float]]:
  """Test loss and accuracy of each replica: [{'eval/loss', 'eval/accuracy'}] * N."""
  n = config.replicas
  totals = [{'loss': 0.0, 'correct': 0.0, 'count': 0.0} for _ in range(n)]
  # A bar on a terminal only (disable=None); the epoch line gives the time.
  where = (config.eval_batch_size, jax.process_index(), jax.process_count())
  if hasattr(dataset, 'eval_batches'):  # streamed records (data/streaming.py): labels inside
    batches = dataset.eval_batches(*where)
  else:
    batches = data_lib.eval_batches(dataset.test_images, dataset.test_labels, *where)
  for images, labels, mask in tqdm.tqdm(
      batches,
      desc='evaluating',
      unit='batch',
      total=math.ceil(len(dataset.test_images) / config.eval_batch_size),
      disable=None,
      leave=False,
  ):
    sums = eval_step(
        state,
        device_batch(batch_sharding, images, config.eval_batch_size),
        device_batch(batch_sharding, labels, config.eval_batch_size),
        device_batch(batch_sharding, mask, config.eval_batch_size),
    )
    fetched = jax.device_get(sums)
    parts = [fetched] if n == 1 else [replicas_lib.take(fetched, k) for k in range(n)]
    for total, part in zip(totals, parts):
      for k, v in part.items():
        total[k] += float(v)
  return [
      {'eval/loss': t['loss'] / t['count'], 'eval/accuracy': 100.0 * t['correct'] / t['count']}
      for t in totals
  ]
