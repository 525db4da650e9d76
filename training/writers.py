"""Metric writers: clu's TensorBoard + logging writers, plus a JSON-lines file for pandas."""

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per write: {"step": s, name: value, ...}.

  Histograms (per-tap alphas) are written as lists. `truncate_after(step)` drops records past
  a restored checkpoint so a resumed run's file equals an uninterrupted run's.
  """

  def __init__(self, path: str):
    self._path = path

  def truncate_after(self, step: int):
    if not os.path.exists(self._path):
      return
    with open(self._path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
    with open(self._path, 'w') as f:
      f.writelines(kept)

  def _append(self, step: int, values: Mapping[str, Any]):
    record = {'step': int(step)}
    for key, value in values.items():
      value = np.asarray(value)
      record[key] = value.tolist() if value.ndim else value.item()
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def write_scalars(self, step, scalars):
    self._append(step, scalars)

  def write_histograms(self, step, arrays, num_buckets=None):
    self._append(step, arrays)

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def create_writers(workdir: str):
  """TensorBoard events and logs on process 0 (logs only elsewhere), plus metrics.jsonl."""
  is_main = jax.process_index() == 0
  default = metric_writers.create_default_writer(workdir, just_logging=not is_main,
                                                 asynchronous=False)
  jsonl = JsonlWriter(os.path.join(workdir, 'metrics.jsonl')) if is_main else None
  writers = [default] + ([jsonl] if jsonl else [])
  return metric_writers.MultiWriter(writers), jsonl


def create_replica_writers(folder: str):
  """One replica's writers (config.replicas > 1): TensorBoard events and metrics.jsonl in its
  replica_<k>/ folder, on process 0, and no logging writer (the loop logs one line for all
  replicas)."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([]), None
  os.makedirs(folder, exist_ok=True)
  jsonl = JsonlWriter(os.path.join(folder, 'metrics.jsonl'))
  return metric_writers.MultiWriter([metric_writers.SummaryWriter(folder), jsonl]), jsonl
