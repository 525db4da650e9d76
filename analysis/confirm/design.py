"""The confirmatory study's design (PLAN.md as constants) and each run's measured inputs."""

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from analysis import ablation, runs as runs_lib, stats
from analysis.confirm import tables
from analysis.finding2 import LOSS_RATE, LOSS_WINDOW, LR_FRACTION, detector_config, epoch_curves
from analysis.views import STEP, View

# The accuracy gate: a primary cell counts only if its seeds' mean final test accuracy reaches it.
GATES = {'cifar10': 70.0, 'cifar100': 30.0}
PRIMARY_MODELS = ('resnet18', 'vgg16')  # the two families on one SGD recipe
DATASETS = ('cifar10', 'cifar100')
F1_MARGIN = 0.10  # alpha units
F2_MARGIN = 1.0  # epochs
F3_MARGIN = 0.75  # held-out accuracy
SIGN_FLIPS = 99_999
FALSE_ALARM_SURROGATES = 199
EXACT_LABELLINGS = 100_000  # finding 3: enumerate every labelling up to this many
CROSS_RECIPE_PERMUTATIONS = 9_999
# Finding 1's whole-run DFA: DESIGN 3.2's default scale grid on the whole step series.
WHOLE_RUN_DFA = dict(dfa_min_scale=4, dfa_max_divisor=4, dfa_num_scales=12, dfa_scales='')
ALPHA = stats.ALPHA


def planned_runs() -> List[str]:
  """The design's run names, in training order (configs/study.py confirm_runs())."""
  import sweep  # pylint: disable=g-import-not-at-top
  from configs import study  # pylint: disable=g-import-not-at-top

  return [sweep.run_name(d, m, s, 1, sched) for d, m, s, sched in study.confirm_runs()]


def is_plan_study(runs_dir: str) -> bool:
  """True when the runs folder has a PLAN.md beside it (results/<study>/{PLAN.md,runs/})."""
  parent = os.path.dirname(os.path.normpath(os.path.abspath(runs_dir)))
  return os.path.isfile(os.path.join(parent, 'PLAN.md'))


@dataclasses.dataclass
class Measures:
  """One run's inputs to the tests; epochs are 0-based here, None where undefined."""

  view: View
  schedule: str
  final_accuracy: float
  minutes: float
  whole_integration: float  # finding 1's statistic
  whole_dropped_taps: int  # taps whose whole-run alpha is NaN (constant signal)
  final_loss: float  # mean logged training loss of the last epoch
  plateau: Optional[int]
  signal: int  # causal epoch of the step-mode detector; num_epochs if it never fired
  sliding_signal: int  # the same for the sliding-history epoch detector
  lr_rule: int  # epoch at which the learning-rate rule fires; num_epochs if never
  loss_rule: int

  @property
  def run(self) -> runs_lib.Run:
    return self.view.run

  def lead(self, which: str = 'signal') -> Optional[float]:
    if self.plateau is None:
      return None
    return float(self.plateau - getattr(self, which))


def whole_run_integration(step_signals: np.ndarray, order: int = 1) -> Tuple[float, int]:
  """Finding 1's statistic: mean over taps of DFA alpha of each whole step series.

  step_signals: f32[S, T]; order: the DFA order (1, the plan's; an ablation may change it).
  Returns (the mean of the finite alphas, how many were NaN).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  import dynamics  # pylint: disable=g-import-not-at-top
  from dynamics import tracker as tracker_lib  # pylint: disable=g-import-not-at-top

  dcfg = ml_collections.ConfigDict(WHOLE_RUN_DFA)
  scales = tracker_lib.resolve_scales(dcfg, step_signals.shape[-1], strict=True)
  alphas = np.asarray(
      dynamics.dfa_exponent(jnp.asarray(step_signals, jnp.float32), scales, int(order))
  )
  finite = np.isfinite(alphas)
  return (float(alphas[finite].mean()) if finite.any() else float('nan')), int((~finite).sum())


def _causal_epoch(start: int, patience: int, every: int, steps_per_epoch: int) -> Optional[int]:
  """The 0-based epoch holding the step at which a detector whose settled streak starts at
  step `start` could know: start + (patience - 1) * every. None if it never fired."""
  if start < 0:
    return None
  return (start + (patience - 1) * every) // steps_per_epoch


def training_minutes(run: runs_lib.Run) -> float:
  """Minutes of training steps, summed from the logged rates (each log interval's steps over
  its steps/s), so that a run resumed across sessions counts every segment (summary.json's
  `seconds` holds only the last one). Evaluation and compilation are not included."""
  total, previous = 0.0, 0
  for record in run.records:
    rate = record.get('train/steps_per_sec')
    if isinstance(rate, (int, float)) and rate > 0:
      total += (int(record['step']) - previous) / rate
      previous = int(record['step'])
  return total / 60 if previous else float('nan')


def measure(run: runs_lib.Run, definition=None) -> Measures:
  """The run's measures under its logged definition, or under `definition` = (dynamics
  config, step series, probe series) from an offline recomputation (analysis/grid.py)."""
  if definition is None:
    definition = (
        run.dynamics_config(),
        ablation.logged_step_series(run.dynamics),
        ablation.logged_probe_series(run.dynamics),
    )
  dcfg, step, probe = definition
  view = View(run, dcfg, probe, step)
  epochs = run.num_epochs
  spe = int(run.steps_per_epoch)
  patience = int(dcfg.convergence_patience)
  never = epochs  # "after the run": a rule that never fires anticipates nothing
  step_conv = int(step.get('convergence', -1))
  signal = _causal_epoch(step_conv, patience, int(dcfg.every_steps), spe)
  sliding = int(view.probe.get('sliding_convergence', -1))
  sliding = None if sliding < 0 else sliding + patience - 1
  curves = epoch_curves(run)
  lr = stats.first_fraction_epoch(curves['lr'], LR_FRACTION)
  loss = stats.slope_rule_epoch(curves['loss'], LOSS_WINDOW, LOSS_RATE)
  whole, dropped = whole_run_integration(run.dynamics['step_signals'], int(dcfg.dfa_order))
  accuracy = run.test_accuracy
  summary = run.summary or {}
  return Measures(
      view=view,
      schedule=str(run.config.get('schedule', 'cosine')),
      final_accuracy=float(summary.get('eval_accuracy', accuracy[-1] if len(accuracy) else np.nan)),
      minutes=training_minutes(run),
      whole_integration=whole,
      whole_dropped_taps=dropped,
      final_loss=float(curves['loss'][-1]) if len(curves['loss']) else float('nan'),
      plateau=view.plateau if view.plateau >= 0 else None,
      signal=never if signal is None else min(signal, never),
      sliding_signal=never if sliding is None else min(sliding, never),
      lr_rule=never if lr < 0 else lr,
      loss_rule=never if loss < 0 else loss,
  )


def phase_null_false_alarms(m: Measures, num: int = FALSE_ALARM_SURROGATES) -> float:
  """Finding 2's null that keeps the signal's autocorrelation: the fraction of Fourier
  phase-randomised surrogates of the run's step DSI series (same power spectrum) whose
  detector (the run's volatility window, rho, patience and warm-up, in steps) could know
  before the plateau. NaN without a plateau or a DSI series."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  import dynamics  # pylint: disable=g-import-not-at-top
  from dynamics import tracker as tracker_lib  # pylint: disable=g-import-not-at-top

  view = m.view
  dcfg = detector_config(view, STEP)
  dsi = view.series('dsi', STEP).astype(np.float32)
  ok = np.isfinite(dsi)
  if dcfg is None or m.plateau is None or ok.sum() < int(dcfg.volatility_window_epochs) + 1:
    return float('nan')
  key = jax.random.key(m.run.seed)
  null = np.asarray(dynamics.surrogates(key, jnp.asarray(dsi[ok]), num, 'phase'))
  series = np.tile(dsi, (num, 1))
  series[:, ok] = null
  _, conv = tracker_lib.probe_volatility(jnp.asarray(series), dcfg)
  patience, every = int(dcfg.convergence_patience), int(view.dcfg.every_steps)
  epochs = [_causal_epoch(int(c), patience, every, m.run.steps_per_epoch) for c in np.asarray(conv)]
  return float(np.mean([e is not None and e < m.plateau for e in epochs]))


# ------------------------------------------------------------------------------------ the design


@dataclasses.dataclass
class Design:
  """The runs found against the plan's cells: what is in, what is missing, what passes."""

  measures: List[Measures]
  planned: List[str]
  skipped: List[Tuple[str, str]]  # (run folder, why)

  def cell(self, model: str, dataset: str, schedule: str = 'cosine') -> List[Measures]:
    return [
        m
        for m in self.measures
        if m.run.model == model and m.run.dataset == dataset and m.schedule == schedule
    ]

  def planned_count(self, model: str, dataset: str, schedule: str = 'cosine') -> int:
    tag = '_constantlr' if schedule == 'constant' else ''
    return sum(n.startswith(f'{dataset}_{model}{tag}_s') for n in self.planned)

  def complete(self, model: str, dataset: str, schedule: str = 'cosine') -> bool:
    return len(self.cell(model, dataset, schedule)) >= self.planned_count(model, dataset, schedule)

  def gate(self, model: str, dataset: str) -> Tuple[bool, float]:
    acc = [m.final_accuracy for m in self.cell(model, dataset)]
    mean = float(np.mean(acc)) if acc else float('nan')
    return bool(acc) and mean >= GATES[dataset], mean

  def pending(self, cells: Sequence[Tuple[str, str]]) -> Optional[str]:
    """'pending (...)' if a needed cell lacks planned runs, else None."""
    short = [
        f'{tables._label(m)} {runs_lib.DATASET_LABELS[d]} {len(self.cell(m, d))} of '
        f'{self.planned_count(m, d)}'
        for m, d in cells
        if not self.complete(m, d)
    ]
    return f'pending: runs still to come ({"; ".join(short)})' if short else None


def load(workdirs: Sequence[str]) -> Design:
  measures, skipped = [], []
  for workdir in workdirs:
    try:
      run = runs_lib.load_run(workdir)
    except (OSError, ValueError) as e:
      skipped.append((workdir, f'unreadable: {e}'))
      continue
    if not run.finished:
      skipped.append((run.name, 'not finished'))
    elif not run.has_step:
      skipped.append((run.name, 'no step-mode series'))
    else:
      measures.append(measure(run))
  measures.sort(key=lambda m: (m.run.dataset, m.run.model, m.schedule, m.run.seed))
  return Design(measures, planned_runs(), skipped)
