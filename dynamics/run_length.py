"""The run's length against what each metric needs: `auto` sized, impossible settings refused.

``fit_to_run(dcfg, num_steps, num_epochs)`` is what ``dynamics.make_tracker`` runs before it
builds a tracker (the project's loop runs the same checks in ``training.fit.fit_to_run``,
with the same messages; tests/test_run_length.py compares the two). It

* resolves the `auto` (0) step-mode fields: ``window`` = 256 on runs of at least 512 steps,
  else half the run (never below the shortest window the DFA scales and phase metrics allow);
  ``volatility_window_steps`` = 50 when at least 100 windows are computed, else half of them;
* raises ValueError, naming the field, its value and the allowed range, for a setting that would
  never produce its metric: an explicit ``window`` longer than the run, a
  ``volatility_window_steps`` longer than the computed windows, an ``every_steps`` with no
  multiple in the run, a ``phase_edge`` that leaves fewer than 3 samples of the window;
* returns as warnings what the run cannot compute with its settings (epoch history too short
  for the DFA scales, a volatility or convergence signal that cannot be reached), with the fix.
"""

import math
from typing import Any, List, NamedTuple, Optional

from dynamics import config as config_lib, tracker as tracker_lib

AUTO = tracker_lib.AUTO
AUTO_DEFAULTS = tracker_lib.AUTO_DEFAULTS


class RunFit(NamedTuple):
  """The config to run (every `auto` field resolved, a copy), the choices made (notes) and
  what the run will not compute (warnings)."""

  config: Any
  notes: List[str]
  warnings: List[str]


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def _scales_text(dcfg: Any) -> str:
  if dcfg.dfa_scales:
    return f'dynamics.dfa_scales={dcfg.dfa_scales!r}'
  return (
      f'3 DFA scales from dynamics.dfa_min_scale={dcfg.dfa_min_scale} to '
      f'N // dynamics.dfa_max_divisor={dcfg.dfa_max_divisor}'
  )


def _short_scales(dcfg: Any) -> bool:
  """Whether the DFA grid already starts as short as the short-run configs' (3 .. N//2)."""
  return not dcfg.dfa_scales and dcfg.dfa_min_scale <= 3 and dcfg.dfa_max_divisor <= 2


def fit_to_run(
    dcfg: Any,
    num_steps: Optional[int],
    num_epochs: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    flag: str = '',
) -> RunFit:
  """Checks a dynamics config against a run of `num_steps` steps and `num_epochs` epochs.

  Args:
    dcfg: the dynamics config (a ``Config``, ConfigDict, mapping or dataclass of fields, as
      ``dynamics.as_config`` takes); not changed.
    num_steps: training steps of the run (``record_step`` calls); None for a run of no set
      length (the `auto` fields take their standard values, nothing is checked against it).
    num_epochs: probe samples (``probe_update`` calls); default ceil(num_steps /
      steps_per_epoch), or 1.
    steps_per_epoch: only for the wording (``the run has N steps (E epoch(s) of P)``).
    flag: how a fix names a field: ``''`` gives ``window=128`` (the key to pass to
      ``make_tracker``), the project's loop passes ``'--config.dynamics.'``.

  Returns:
    RunFit(config, notes, warnings); the config is a complete ``Config`` (a copy) with the
    `auto` fields resolved.

  Raises:
    ValueError: a setting that no step of this run can honour, naming the field, the value,
      the allowed range and the fix.
  """
  # No set length: as long as int32 steps go, so the `auto` fields take their standard values.
  total = int(num_steps) if num_steps is not None else 2**31 - 1
  if num_epochs is None:
    num_epochs = math.ceil(total / steps_per_epoch) if steps_per_epoch else 1
  epochs = int(num_epochs)
  dcfg = config_lib.as_config(dcfg)  # a plain copy: the caller's config is left alone
  notes: List[str] = []
  warnings: List[str] = []
  if not dcfg.enabled:
    return RunFit(dcfg, notes, warnings)
  if 2 <= dcfg.surrogates < 19:
    warnings.append(
        f'dynamics.surrogates={dcfg.surrogates}: the smallest p-value it can give is '
        f'1/{dcfg.surrogates + 1} = {1 / (dcfg.surrogates + 1):.3f}; 19 or more are needed '
        'for a p below 0.05.'
    )
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  phase_min = tracker_lib.min_phase_samples(spec)
  dfa_min = tracker_lib.min_dfa_length(dcfg)
  diff = 1 if spec.phase_preprocess == 'diff' else 0
  run = f'the run has {total} steps' + (
      f' ({epochs} epoch(s) of {steps_per_epoch})' if steps_per_epoch else ''
  )
  if dcfg.step_mode:
    needed = max(dfa_min or 0, 3 + diff)  # the shortest window with every metric
    _fit_window(dcfg, total, needed, dfa_min, run, notes, warnings, flag)
    window = int(dcfg.window)
    tracker_lib.recent_steps(dcfg)  # raises on a ring shorter than the window
    _require(
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
    _fit_volatility(dcfg, computed, window, notes, warnings, flag)
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
    _check_epochs(dcfg, epochs, dfa_min, phase_min, warnings, flag)
  return RunFit(dcfg, notes, warnings)


def _fit_window(dcfg, total, needed, dfa_min, run, notes, warnings, flag):
  """Resolves window = auto, or checks an explicit one against the run."""
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
              else f', or for shorter runs use {flag}dfa_min_scale=3 {flag}dfa_max_divisor=2.'
          )
      )
    else:
      standard = AUTO_DEFAULTS['window']
      notes.append(
          f'dynamics.window=auto -> {dcfg.window} steps'
          + ('' if dcfg.window == standard else f' ({run}; the standard 256 needs {2 * standard})')
      )
  elif dcfg.window > total:
    hint = (
        f'use {flag}window={max(needed, total // 2)} (allowed: {needed} .. {total}) or 0 (auto)'
        if total >= needed
        else f'no window fits: the metrics need at least {needed} steps ({_scales_text(dcfg)})'
    )
    raise ValueError(
        f'dynamics.window={dcfg.window} but {run}: step-mode metrics would never be computed; '
        f'{hint}, or train longer.'
    )


def _fit_volatility(dcfg, computed, window, notes, warnings, flag):
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
        f'{flag}volatility_window_steps={max(computed // 2, 2)} or 0 (auto).'
    )


def _check_epochs(dcfg, epochs, dfa_min, phase_min, warnings, flag):
  """Warnings for the probe (epoch-mode) history: one sample per epoch."""
  fix_short = f'train for at least {dfa_min} epochs (num_epochs)'
  if not _short_scales(dcfg):
    fix_short += (
        f', or use {flag}dfa_min_scale=3 {flag}dfa_max_divisor=2 (defined from 10 epochs on)'
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
        f'will never be computed; use {flag}sliding_epochs={dfa_min} or more.'
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
