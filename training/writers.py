"""Metric writers: TensorBoard event files and metrics.jsonl, without TensorFlow.

clu.metric_writers is not used: importing any part of it imports its SummaryWriter and with it
TensorFlow (seconds of start-up and two console banners, even on synthetic data). The event
files here are written with the `tensorboard` package's TF-free record framing, as `simple_value`
scalar summaries (what `EventAccumulator.Scalars()` and TensorBoard's scalar dashboard read)
and histogram summaries. The writers keep clu's MetricWriter method names (write_scalars,
write_histograms, write_hparams, flush, close), so the loop reads as it would with clu.

Nothing here prints: the console gets the loop's progress lines only. With --verbose (absl
verbosity >= 1) every write is also logged, as clu's LoggingWriter would.
"""

import contextlib
import errno
import json
import os
import shutil
import time
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
from absl import logging


def no_space_error(path: str, e: OSError) -> OSError:
  """A full disk while writing `path`: one message with the path and the bytes free."""
  try:
    free = f'{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:.1f} MiB'
  except OSError:
    free = 'unknown'
  return OSError(
      errno.ENOSPC,
      f'No space left on the disk of {path} while writing it ({free} free). Free some space '
      '(or use a --workdir on a disk with room) and run the same command again: the run '
      'resumes from its last checkpoint.',
      None,
  ).with_traceback(e.__traceback__)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = 'w') -> Iterator[Any]:
  """A file object whose contents replace `path` only once complete: written to
  `<path>.tmp`, flushed and fsynced, then renamed over `path` (atomic on POSIX). A write that
  fails, or a process killed while writing, leaves `path` as it was (absent or the old one);
  a failed write removes its temporary file."""
  tmp = path + '.tmp'
  try:
    with open(tmp, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      raise no_space_error(path, e) from e
    raise
  os.replace(tmp, path)


def write_json(path: str, obj: Any, **kwargs):
  """json.dump(obj, indent=...) to `path`, atomically (atomic_file)."""
  text = json.dumps(obj, **kwargs)
  with atomic_file(path) as f:
    f.write(text)


class JsonlWriter:
  """metrics.jsonl: one JSON object per step, {"step": s, name: value, ...}, with every value
  written for that step merged (so `pd.read_json(path, lines=True)` has one row per step).

  A step's record is held until a write for another step, `flush()` or `close()`; the loop
  flushes before every checkpoint, so a checkpointed step's record is always in the file.
  Histograms (per-tap alphas) are stored as lists. `truncate_after(step)` drops records past a
  restored checkpoint so that a resumed run's file equals an uninterrupted run's.
  """

  def __init__(self, path: str):
    self._path = path
    self._step: Optional[int] = None
    self._record: Dict[str, Any] = {}

  def truncate_after(self, step: int):
    self.flush()
    if not os.path.exists(self._path):
      return
    with open(self._path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
    with open(self._path, 'w') as f:
      f.writelines(kept)

  def _add(self, step: int, values: Mapping[str, Any]):
    if self._step is not None and int(step) != self._step:
      self.flush()
    self._step = int(step)
    for key, value in values.items():
      value = np.asarray(value)
      self._record[key] = value.tolist() if value.ndim else value.item()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._add(step, scalars)

  def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None):
    del num_buckets
    self._add(step, arrays)

  def write_hparams(self, hparams: Mapping[str, Any]):
    del hparams  # in config.json

  def flush(self):
    if self._step is None:
      return
    try:
      with open(self._path, 'a') as f:
        f.write(json.dumps({'step': self._step, **self._record}) + '\n')
    except OSError as e:
      if e.errno == errno.ENOSPC:
        raise no_space_error(self._path, e) from e
      raise
    self._step, self._record = None, {}

  def close(self):
    self.flush()


def _histogram_proto(values: np.ndarray, num_buckets: int):
  from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top

  values = np.asarray(values, np.float64).ravel()
  values = values[np.isfinite(values)]
  lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 0.0)
  if hi == lo:
    hi = lo + 1e-12
  counts, edges = np.histogram(values, bins=num_buckets, range=(lo, hi))
  return summary_pb2.HistogramProto(
      min=lo,
      max=hi,
      num=len(values),
      sum=float(values.sum()),
      sum_squares=float((values**2).sum()),
      bucket_limit=edges[1:].tolist(),
      bucket=counts.astype(np.float64).tolist(),
  )


class TensorBoardWriter:
  """A TensorBoard event file in `logdir`, written without TensorFlow.

  The records are the TFRecord framing of `tensorboard`'s own RecordWriter (its CRC is the
  TF-free stub's); tensorboard's EventFileWriter is not used because it opens the file through
  tensorboard.compat.tf, which imports TensorFlow whenever it is installed. Plain file I/O:
  a local or mounted filesystem. Scalars are `simple_value` summaries:
  `EventAccumulator(logdir).Reload().Scalars(tag)` returns them as (step, wall_time, value).
  """

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    import socket

    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    os.makedirs(logdir, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}'
    self._file = open(os.path.join(logdir, name), 'wb')
    self._records = RecordWriter(self._file)
    self._records.write(
        event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2').SerializeToString()
    )
    self._file.flush()

  def _write(self, step: int, summary):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top

    self._records.write(
        event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary).SerializeToString()
    )

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top

    self._write(
        step,
        summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()
            ]
        ),
    )

  def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets: int = 30):
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top

    self._write(
        step,
        summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=k, histo=_histogram_proto(v, num_buckets))
                for k, v in arrays.items()
            ]
        ),
    )

  def write_hparams(self, hparams: Mapping[str, Any]):
    """The run's top-level config fields, for TensorBoard's HParams dashboard."""
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top

    kept = {k: v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}
    self._write(0, summary_v2.hparams_pb(kept))

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class LoggingEcho:
  """Logs every write (scalars as name=value, histograms as count/min/mean/max): the detail
  that --verbose brings back to the console."""

  def write_scalars(self, step, scalars):
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in scalars.items()))

  def write_histograms(self, step, arrays, num_buckets=None):
    del num_buckets
    for key, value in arrays.items():
      value = np.asarray(value, np.float64)
      logging.info(
          '[%d] %s: %d values, min %.4g, mean %.4g, max %.4g',
          step,
          key,
          value.size,
          np.nanmin(value),
          np.nanmean(value),
          np.nanmax(value),
      )

  def write_hparams(self, hparams):
    logging.info('[hparams] %s', hparams)

  def flush(self):
    pass

  def close(self):
    pass


class MultiWriter:
  """Forwards every write to each writer."""

  def __init__(self, writers: Sequence[Any]):
    self._writers = list(writers)

  def __getattr__(self, name):
    if name not in ('write_scalars', 'write_histograms', 'write_hparams', 'flush', 'close'):
      raise AttributeError(name)

    def forward(*args, **kwargs):
      for w in self._writers:
        getattr(w, name)(*args, **kwargs)

    return forward


def create_writers(workdir: str, verbose: Optional[bool] = None):
  """TensorBoard events and metrics.jsonl on process 0 (nothing elsewhere); with `verbose`
  (default: absl verbosity >= 1, i.e. --verbose or -v 1) every write is also logged.

  Returns (writer, jsonl writer or None).
  """
  if verbose is None:
    verbose = logging.get_verbosity() >= logging.DEBUG
  is_main = jax.process_index() == 0
  jsonl = JsonlWriter(os.path.join(workdir, 'metrics.jsonl')) if is_main else None
  writers = ([TensorBoardWriter(workdir), jsonl] if is_main else []) + (
      [LoggingEcho()] if verbose else []
  )
  return MultiWriter(writers), jsonl


def create_replica_writers(folder: str):
  """One replica's writers (config.replicas > 1): TensorBoard events and metrics.jsonl in its
  replica_<k>/ folder, on process 0, and no logging echo (the loop logs one line for all
  replicas)."""
  if jax.process_index() != 0:
    return MultiWriter([]), None
  os.makedirs(folder, exist_ok=True)
  jsonl = JsonlWriter(os.path.join(folder, 'metrics.jsonl'))
  return MultiWriter([TensorBoardWriter(folder), jsonl]), jsonl
