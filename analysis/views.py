"""One run under one metric definition (View), a definition's views (Definition), and the
histories (resolutions) every finding reads them at."""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from analysis import runs as runs_lib
from dynamics import stability

HISTORIES = ('', 'sliding_')  # epoch resolution: the probe's expanding and sliding histories
STEP = 'step_'  # step resolution: the step-mode window over the every-step training taps
HISTORY_NAMES = {'': 'expanding', 'sliding_': 'sliding', STEP: 'step window'}


@dataclasses.dataclass
class View:
  """One run under one metric definition: its epoch-mode (and step-mode) series."""

  run: runs_lib.Run
  dcfg: ml_collections.ConfigDict
  probe: Dict[str, Any]
  step: Optional[Dict[str, Any]] = None

  @property
  def plateau(self) -> int:
    """0-based accuracy-plateau epoch (stability.accuracy_plateau), -1 if none."""
    acc = self.run.test_accuracy
    if not len(acc):
      return -1
    return int(stability.accuracy_plateau(acc, float(self.dcfg.plateau_delta)))

  @property
  def has_step(self) -> bool:
    return self.step is not None and 'integration' in self.step

  @property
  def resolutions(self) -> Tuple[str, ...]:
    """The histories this view has: the two epoch ones, and the step window if logged."""
    return HISTORIES + ((STEP,) if self.has_step else ())

  def series(self, name: str, prefix: str) -> np.ndarray:
    """f64[epochs] (prefix '' or 'sliding_') or f64[steps] (STEP) of metric `name`."""
    if prefix == STEP:
      return np.asarray(self.step.get(name, []) if self.has_step else [], np.float64)
    return np.asarray(self.probe[prefix + name], np.float64)

  def convergence(self, prefix: str) -> int:
    """0-based epoch at which the convergence signal's settled streak starts, -1 if none; for
    the step window, the epoch holding that step."""
    if prefix == STEP:
      spe = self.run.steps_per_epoch
      conv = int(self.step.get('convergence', -1)) if self.has_step else -1
      return conv // spe if conv >= 0 and spe else -1
    return int(self.probe[prefix + 'convergence'])

  def lead(self, prefix: str) -> Optional[int]:
    """plateau - convergence in epochs (positive: the signal came first); None if either is
    missing."""
    conv, plateau = self.convergence(prefix), self.plateau
    return plateau - conv if conv >= 0 and plateau >= 0 else None

  def final(self, name: str, prefix: str = '') -> float:
    """The last epoch's value; for the step window, the last computed window's."""
    series = self.series(name, prefix)
    if prefix == STEP:
      return _last_finite(series)
    return float(series[-1]) if len(series) else float('nan')


def resolutions(views: Sequence[View]) -> Tuple[str, ...]:
  """The histories every view has (the step window only where every run logged it)."""
  return HISTORIES + ((STEP,) if views and all(v.has_step for v in views) else ())


@dataclasses.dataclass
class Definition:
  key: str  # 'logged' or 'ablated'
  title: str
  views: List[View]


def _last_finite(series) -> float:
  s = np.asarray(series, np.float64)
  s = s[np.isfinite(s)]
  return float(s[-1]) if len(s) else float('nan')
