"""Each replica's whole-run step series on disk, `dynamics_steps.f32`, fed by the tracker's ring.

The tracker's state holds the step-mode series of the last K = dynamics.recent_steps steps only
(dynamics/tracker.py), so the loop drains them to this file at least every K steps and before
every checkpoint (training/actions.py). The file is append-only: row s is step s, float32
little-endian, the columns the tracker's `series_keys` (S signals, then one column per metric
series). A resumed run cuts it back to the restored checkpoint's step and refills what the
file lacks from the restored ring, so its series equal an uninterrupted run's. At the end
(training/finish.py) the file becomes the step series of dynamics.npz.
"""

import os
from typing import Dict, List

import jax
import numpy as np
from absl import logging

from training.sinks import split

FILENAME = 'dynamics_steps.f32'


class StepSeriesFile:
  """dynamics_steps.f32 of one replica's folder; tracker: the run's dynamics.Tracker."""

  def __init__(self, folder: str, tracker):
    self.path = os.path.join(folder, FILENAME)
    self.tracker = tracker
    self.num_signals = len(tracker.signal_names)
    self.row_bytes = 4 * (self.num_signals + len(tracker.series_keys) - 1)

  @property
  def rows(self) -> int:
    """Whole rows in the file (a torn last row, from a write cut short, does not count)."""
    return os.path.getsize(self.path) // self.row_bytes if os.path.exists(self.path) else 0

  def _write(self, rows: np.ndarray, at: int) -> None:
    mode = 'r+b' if os.path.exists(self.path) else 'wb'
    with open(self.path, mode) as f:
      f.truncate(at * self.row_bytes)  # drops a torn row and anything past `at`
      f.seek(at * self.row_bytes)
      f.write(np.ascontiguousarray(rows, '<f4').tobytes())
      f.flush()
      os.fsync(f.fileno())

  def _rows_of(self, records: Dict[str, np.ndarray]) -> np.ndarray:
    columns = [np.asarray(records['step_signals'], np.float32).T]
    columns += [
        np.asarray(records[key], np.float32)[:, None] for key in self.tracker.series_keys[1:]
    ]
    return np.concatenate(columns, axis=1)

  def drain(self, dynamics) -> int:
    """Appends the steps `dynamics` (one replica's tracker state, host or device) recorded
    past the file's end; returns how many."""
    start = self.rows
    records = self.tracker.drain(dynamics, start)
    if records['steps'].size:
      self._write(self._rows_of(records), start)
    return int(records['steps'].size)

  def resume(self, dynamics, step: int) -> None:
    """At the start of a run restored at `step` (0: a fresh run): the file cut back to `step`
    rows, then completed from the restored ring. Steps the ring no longer holds and the file
    lacks (the file deleted or damaged) are written as NaN, with a warning naming them."""
    have = min(self.rows, int(step))
    oldest = max(int(np.asarray(dynamics['step_last'])) - self.tracker.recent_steps + 1, 0)
    gap = np.zeros((0, self.row_bytes // 4), np.float32)
    if have < min(oldest, step):
      gap = np.full((min(oldest, step) - have, self.row_bytes // 4), np.nan, np.float32)
      logging.warning(
          '%s holds %d step(s) but the checkpoint is at step %d and its tracker state keeps only '
          'steps %d onwards: steps %d..%d of the step series are lost and written as NaN in '
          'dynamics.npz (the step-mode metrics logged at those steps are in metrics.jsonl).',
          self.path,
          self.rows,
          step,
          oldest,
          have,
          have + len(gap) - 1,
      )
    self._write(gap, have)
    self.drain(dynamics)

  def read(self) -> Dict[str, np.ndarray]:
    """{'step_signals': f32[S, n], 'step_<metric>': f32[n]}: the file's n whole rows."""
    n = self.rows
    with open(self.path, 'rb') as f:
      rows = np.frombuffer(f.read(n * self.row_bytes), '<f4').reshape(n, -1)
    out = {'step_signals': rows[:, : self.num_signals].T.copy()}
    for index, key in enumerate(self.tracker.series_keys[1:]):
      out[key] = rows[:, self.num_signals + index].copy()
    return out


def open_files(run) -> List[StepSeriesFile]:
  """Each replica's file, resumed at the run's start step (process 0 with the tracker in step
  mode; [] otherwise). run: training/actions.Run."""
  tracker = run.exp.tracker
  if tracker is None or not run.config.dynamics.step_mode or jax.process_index() != 0:
    return []
  files = [StepSeriesFile(sink.workdir, tracker) for sink in run.sinks]
  for series, dyn in zip(files, split(jax.device_get(run.state.dynamics), run.n)):
    series.resume(dyn, run.start_step)
  return files
