"""The config against the run's length: `fit_to_run` sizes every `auto` dynamics field to the
run, refuses settings no step of the run can honour, and warns about what the run will not
compute, each line naming the field.

These need the run's length (steps, epochs), which depends on the dataset size, so the plan
(training/plan.py) runs them once that is known, before anything is compiled.
"""

import math
from typing import Any, List, NamedTuple, Optional, Tuple

from dynamics import tracker as tracker_lib
from training.validate import TFDS_NAMES, require

AUTO = tracker_lib.AUTO  # dynamics.window / volatility_window_steps: size the field to the run
AUTO_DEFAULTS = tracker_lib.AUTO_DEFAULTS
CIFAR_TRAIN_SIZE = 50_000  # CIFAR-10 and CIFAR-100 alike


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


min_dfa_length = tracker_lib.min_dfa_length


def _scales_text(dcfg) -> str:
  if dcfg.dfa_scales:
    return f'dynamics.dfa_scales={dcfg.dfa_scales!r}'
  return (
      f'3 DFA scales from dynamics.dfa_min_scale={dcfg.dfa_min_scale} to '
      f'N // dynamics.dfa_max_divisor={dcfg.dfa_max_divisor}'
  )


def _short_scales(dcfg) -> bool:
  """Whether the DFA grid already starts as short as the short-run configs' (3 .. N//2)."""
  return not dcfg.dfa_scales and dcfg.dfa_min_scale <= 3 and dcfg.dfa_max_divisor <= 2


def fit_to_run(config, total_steps: int, steps_per_epoch: int) -> RunFit:
  """Compares the run's length with what every dynamics metric needs.

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
  total, epochs = total_steps, math.ceil(total_steps / steps_per_epoch)
  config = config.copy_and_resolve_references()
  dcfg = config.dynamics
  notes, warnings = [], []
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.warmup_epochs > 0 and warmup >= total:
    warnings.append(
        f'warmup_epochs={config.warmup_epochs:g} is {warmup} steps of warm-up but the run has '
        f'{total}: the warm-up is cut to {max(total - 1, 0)} steps, so the learning rate '
        'reaches its peak only at the last step. Lower warmup_epochs (at most '
        f'{(total - 1) / steps_per_epoch:.3g} here) or train longer.'
    )
  if not dcfg.enabled:
    return RunFit(config, notes, warnings)
  if 2 <= dcfg.surrogates < 19:
    warnings.append(
        f'dynamics.surrogates={dcfg.surrogates}: the smallest p-value it can give is '
        f'1/{dcfg.surrogates + 1} = {1 / (dcfg.surrogates + 1):.3f}; 19 or more are needed '
        'for a p below 0.05.'
    )
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  phase_min = tracker_lib.min_phase_samples(spec)
  dfa_min = min_dfa_length(dcfg)
  diff = 1 if spec.phase_preprocess == 'diff' else 0
  run = f'the run has {total} steps ({epochs} epoch(s) of {steps_per_epoch})'
  if dcfg.step_mode:
    needed = max(dfa_min or 0, 3 + diff)  # the shortest window with every metric
    with config.unlocked():
      _fit_window(dcfg, total, needed, dfa_min, run, notes, warnings)
    window = int(dcfg.window)
    require(
        phase_min <= window,
        f'dynamics.phase_edge={dcfg.phase_edge} drops {2 * dcfg.phase_edge} of the '
        f'{window} samples of the step window (dynamics.window), leaving fewer than the 3 '
        f'the phase metrics need; allowed: 0 .. {max((window - 3 - diff) // 2, 0)}.',
    )
    computed = tracker_lib.computed_windows(total, window, int(dcfg.every_steps))
    if computed == 0 and total >= window and dcfg.every_steps > 1:
      raise ValueError(
          f'dynamics.every_steps={dcfg.every_steps} but {run} and a step window of {window}: '
          'no step from the first full window on is a multiple of it, so no step-mode metric '
          f'would ever be computed; allowed here: 1 .. {total - window + 1} (or any value '
          f'with a multiple between {window} and {total}).'
      )
    with config.unlocked():
      _fit_volatility(dcfg, computed, window, notes, warnings)
    vol = int(dcfg.volatility_window_steps)
    if computed >= vol:
      first = window + (vol - 1) * int(dcfg.every_steps)  # 1-based step of the first volatility
      left = computed - vol + 1
      if left < dcfg.convergence_patience:
        warnings.append(
            f'step-mode convergence signal: {left} volatility value(s) (from step {first} on) '
            f'but dynamics.convergence_patience={dcfg.convergence_patience}; it cannot fire. '
            'Lower the patience or train longer.'
        )
      if dcfg.convergence_warmup_steps >= total:
        warnings.append(
            f'dynamics.convergence_warmup_steps={dcfg.convergence_warmup_steps} but {run}: the '
            'step-mode convergence signal cannot fire; lower it below the run length.'
        )
  if dcfg.probe_mode:
    _check_epochs(dcfg, epochs, dfa_min, phase_min, warnings)
  return RunFit(config, notes, warnings)


def _fit_window(dcfg, total, needed, dfa_min, run, notes, warnings):
  """Resolves dynamics.window = auto, or checks an explicit one against the run."""
  if dfa_min is None:
    fields = (
        'dynamics.dfa_scales'
        if dcfg.dfa_scales
        else 'dynamics.dfa_min_scale, dfa_max_divisor or dfa_num_scales'
    )
    raise ValueError(f'{_scales_text(dcfg)} are not defined on any series length; fix {fields}.')
  if dcfg.window == AUTO:
    dcfg.window = tracker_lib.auto_window(dcfg, total)
    if total < needed:
      warnings.append(
          f'step-mode metrics need a window of at least {needed} steps ({_scales_text(dcfg)}) '
          f'but {run}: they will not be computed (the signals are still saved). Train at '
          f'least {needed} steps (num_train_steps or num_epochs)'
          + (
              '.'
              if _short_scales(dcfg)
              else ', or for shorter runs use '
              '--config.dynamics.dfa_min_scale=3 --config.dynamics.dfa_max_divisor=2.'
          )
      )
    else:
      standard = AUTO_DEFAULTS['window']
      notes.append(
          f'dynamics.window=auto -> {dcfg.window} steps'
          + (
              ''
              if dcfg.window == standard
              else f' ({run}; the standard 256 needs ' f'{2 * standard})'
          )
      )
  elif dcfg.window > total:
    hint = (
        f'use --config.dynamics.window={max(needed, total // 2)} (allowed: {needed} .. '
        f'{total}) or 0 (auto)'
        if total >= needed
        else f'no window fits: the metrics need at least {needed} steps ({_scales_text(dcfg)})'
    )
    raise ValueError(
        f'dynamics.window={dcfg.window} but {run}: step-mode metrics would never be computed; '
        f'{hint}, or train longer.'
    )


def _fit_volatility(dcfg, computed, window, notes, warnings):
  """Resolves volatility_window_steps = auto, or checks an explicit one against the run."""
  standard = AUTO_DEFAULTS['volatility_window_steps']
  every = int(dcfg.every_steps)
  if dcfg.volatility_window_steps == AUTO:
    dcfg.volatility_window_steps = tracker_lib.auto_volatility_window(computed)
    if computed < 4:
      if computed:
        warnings.append(
            f'step-mode DSI volatility: only {computed} window(s) are computed (dynamics.window='
            f'{window}, every_steps={every}); the volatility needs 2 and the convergence signal '
            'more. Train longer or lower dynamics.window.'
        )
      return
    if dcfg.volatility_window_steps != standard:
      notes.append(
          f'dynamics.volatility_window_steps=auto -> {dcfg.volatility_window_steps} '
          f'(the run computes {computed} step windows; the standard {standard} needs '
          f'{2 * standard})'
      )
  elif computed and dcfg.volatility_window_steps > computed:
    raise ValueError(
        f'dynamics.volatility_window_steps={dcfg.volatility_window_steps} but the run computes '
        f'only {computed} step-mode DSI values (dynamics.window={window}, every_steps={every}): '
        f'the volatility would never be defined; allowed: 2 .. {computed}; use '
        f'--config.dynamics.volatility_window_steps={max(computed // 2, 2)} or 0 (auto).'
    )


def _check_epochs(dcfg, epochs, dfa_min, phase_min, warnings):
  """Warnings for the probe (epoch-mode) history: one sample per epoch."""
  fix_short = f'train for at least {dfa_min} epochs (num_epochs)'
  if not _short_scales(dcfg):
    fix_short += (
        ', or use --config.dynamics.dfa_min_scale=3 --config.dynamics.dfa_max_divisor=2 '
        '(defined from 10 epochs on)'
    )
  if epochs < phase_min:
    warnings.append(
        f'epoch-mode synchrony and metastability need {phase_min} probe samples '
        f'(one per epoch; dynamics.phase_edge={dcfg.phase_edge}) but the run has '
        f'{epochs} epoch(s): they will not be computed.'
    )
  if dfa_min is not None and epochs < dfa_min:
    warnings.append(
        f'epoch-mode integration, DSI and convergence need {dfa_min} probe samples (one per '
        f'epoch; {_scales_text(dcfg)}) but the run has {epochs} epoch(s): they will not be '
        f'computed; {fix_short}.'
    )
    return
  if dfa_min is not None and dcfg.sliding_epochs < dfa_min:
    warnings.append(
        f'dynamics.sliding_epochs={dcfg.sliding_epochs} is shorter than the {dfa_min} samples '
        f'the DFA scales need ({_scales_text(dcfg)}): the sliding-window integration and DSI '
        f'will never be computed; use --config.dynamics.sliding_epochs={dfa_min} or more.'
    )
  with_dsi = epochs - (dfa_min or 1) + 1  # epochs at which the expanding DSI is defined
  vol = dcfg.volatility_window_epochs
  if with_dsi < vol:
    warnings.append(
        f'epoch-mode DSI volatility needs dynamics.volatility_window_epochs={vol} DSI values, '
        f'the run has {with_dsi} (DSI defined from epoch {dfa_min or 1} of {epochs}): '
        'volatility and convergence signal will not be computed; lower it or train longer.'
    )
  elif with_dsi - vol + 1 < dcfg.convergence_patience:
    warnings.append(
        f'epoch-mode convergence signal: {with_dsi - vol + 1} volatility value(s) but '
        f'dynamics.convergence_patience={dcfg.convergence_patience}; it cannot fire.'
    )
  if dcfg.convergence_warmup_epochs >= epochs:
    warnings.append(
        f'dynamics.convergence_warmup_epochs={dcfg.convergence_warmup_epochs} but the run has '
        f'{epochs} epoch(s): the epoch-mode convergence signal cannot fire.'
    )
