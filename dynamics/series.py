"""The whole run's step series on the host, collected from the tracker's ring in chunks.

The tracker's device state holds the step-mode series (signals and metrics per step) of the last
K = ``tracker.recent_steps`` steps only, so its size does not grow with the run. A loop that
wants the whole series (for ``export``, dynamics.npz, offline ablation) calls
``series.update(tracker, state)`` at least every K steps, outside the jitted step:

    series = dynamics.StepSeries()
    for step in range(num_steps):
      state, out = train_step(state, batch, step)      # record_step inside
      if (step + 1) % tracker.recent_steps == 0:
        series.update(tracker, state.dynamics)
    series.update(tracker, state.dynamics)
    recorded = tracker.export(state.dynamics, series.arrays())

``update`` reads the state (one device-to-host copy of the ring, about 4 * (S + 13) * K bytes)
and changes nothing on the device, so it may be called as often as convenient.
"""

from typing import Any, Dict, List

import numpy as np


class StepSeries:
  """Step-mode series of steps 0 .. `steps` - 1, appended chunk by chunk."""

  def __init__(self):
    self._chunks: List[Dict[str, np.ndarray]] = []
    self.steps = 0  # the next step to collect

  def append(self, records: Dict[str, np.ndarray]) -> None:
    """records: a `tracker.drain(state, since=self.steps)` result (its 'steps' start here)."""
    steps = np.asarray(records['steps'])
    if not steps.size:
      return
    if int(steps[0]) != self.steps or np.any(np.diff(steps) != 1):
      raise ValueError(
          f'StepSeries.append: records of steps {int(steps[0])}..{int(steps[-1])} do not '
          f'continue the series, which holds steps 0..{self.steps - 1}; pass '
          'tracker.drain(state, since=series.steps).'
      )
    self._chunks.append({k: np.asarray(v) for k, v in records.items() if k != 'steps'})
    self.steps = int(steps[-1]) + 1

  def update(self, tracker: Any, state: Dict[str, Any]) -> None:
    """Appends what `state` recorded since the last update (tracker: the dynamics.Tracker)."""
    self.append(tracker.drain(state, self.steps))

  def arrays(self) -> Dict[str, np.ndarray]:
    """{'step_signals': f32[S, steps], 'step_<metric>': f32[steps], ...}; {} before any step."""
    if not self._chunks:
      return {}
    return {
        key: np.concatenate([chunk[key] for chunk in self._chunks], axis=-1)
        for key in self._chunks[0]
    }
