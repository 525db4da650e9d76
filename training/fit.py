"""The config against the run's length: `fit_to_run` sizes every `auto` dynamics field to the
run, refuses settings no step of the run can honour, and warns about what the run will not
compute, each line naming the field.

These need the run's length (steps, epochs), which depends on the dataset size, so the plan
(training/plan.py) runs them once that is known, before anything is compiled.
"""

from typing import Any, List, NamedTuple, Optional, Tuple

from dynamics import run_length as run_length_lib, tracker as tracker_lib
from training.validate import TFDS_NAMES

AUTO = tracker_lib.AUTO  # dynamics.window / volatility_window_steps: size the field to the run
AUTO_DEFAULTS = tracker_lib.AUTO_DEFAULTS
CIFAR_TRAIN_SIZE = 50_000  # CIFAR-10 and CIFAR-100 alike
min_dfa_length = tracker_lib.min_dfa_length  # probe samples (epochs) the DFA scales need


class RunFit(NamedTuple):
  """What fit_to_run decided: the config to run (every `auto` field resolved), the choices it
  made (info lines) and what the run will not compute (warning lines)."""

  config: Any
  notes: List[str]
  warnings: List[str]


def known_train_size(config) -> Optional[int]:
  """Training examples the run will see, from the config alone; None if only loading knows
  (an image folder without data.train_subset)."""
  if config.data.train_subset > 0:
    return int(config.data.train_subset)
  if config.data.source == 'synthetic':
    return int(config.data.train_size)
  if config.data.source == 'tfds' and config.data.name in TFDS_NAMES:
    return CIFAR_TRAIN_SIZE
  return None


def run_length(config, train_size: int) -> Tuple[int, int]:
  """(total_steps, steps_per_epoch) exactly as the loop computes them."""
  steps_per_epoch = max(train_size // config.batch_size, 1)
  total = (
      config.num_train_steps if config.num_train_steps > 0 else steps_per_epoch * config.num_epochs
  )
  return total, steps_per_epoch


def fit_to_run(config, total_steps: int, steps_per_epoch: int) -> RunFit:
  """Compares the run's length with what every dynamics metric needs, and the warm-up with
  the run: the library's checks (dynamics/run_length.py, the same for a user of
  `make_tracker`) with the project's field names, plus the optimiser's.

  Resolves the `auto` (0) fields to the run: dynamics.window = 256 when the run has at least
  512 steps, else half the run (never below the shortest window the DFA scales and the phase
  metrics allow); volatility_window_steps = 50 when at least 100 windows are computed, else half
  of them. An explicit window or volatility window longer than the run, or a phase_edge that
  leaves fewer than 3 samples of the window, raises ValueError naming the field, the value and
  the allowed range. What the run cannot compute with its settings (epoch history too short for
  the DFA scales, volatility or convergence that cannot be reached) is returned as warnings
  with the numbers and the fix. The config is copied, never changed in place. Call it once,
  on the config as given: a window that auto set above a run too short for any window would
  read as an explicit one the second time.
  """
  total = total_steps
  config = config.copy_and_resolve_references()
  warnings = []
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.warmup_epochs > 0 and warmup >= total:
    warnings.append(
        f'warmup_epochs={config.warmup_epochs:g} is {warmup} steps of warm-up but the run has '
        f'{total}: the warm-up is cut to {max(total - 1, 0)} steps, so the learning rate '
        'reaches its peak only at the last step. Lower warmup_epochs (at most '
        f'{(total - 1) / steps_per_epoch:.3g} here) or train longer.'
    )
  fit = run_length_lib.fit_to_run(
      config.dynamics, total, steps_per_epoch=steps_per_epoch, flag='--config.dynamics.'
  )
  with config.unlocked():
    for field in ('window', 'volatility_window_steps'):  # the `auto` fields it resolves
      config.dynamics[field] = type(config.dynamics[field])(getattr(fit.config, field))
  return RunFit(config, list(fit.notes), warnings + list(fit.warnings))
