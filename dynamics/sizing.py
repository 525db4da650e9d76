"""How long the series are: the DFA scales of a length, the shortest lengths each metric needs,
and the `auto` sizes of the step window, its volatility window and the step ring.

Shared by the tracker (dynamics/tracker.py, which re-exports every name here: tracker.X as
before), the library's run-length checks (dynamics/run_length.py) and the project's loop
(training/fit.py). Pure host-side Python over the dynamics config.
"""

from typing import Any, Optional, Tuple

from dynamics import config as config_lib, dfa, phase


def resolve_scales(dcfg: Any, n: int, strict: bool = False) -> Optional[Tuple[int, ...]]:
  """The DFA scales for a series of n samples, or None when n is too short for them.

  With strict=True a too-short series is a config error (used for the fixed step window).
  dcfg: the dynamics config (attribute access), or a plain mapping of the fields to change
  from ``default_config()`` (``{'dfa_scales': '4,8,16'}``).
  """
  if not hasattr(dcfg, 'dfa_scales'):
    dcfg = config_lib.as_config(dcfg)
  try:
    if dcfg.dfa_scales:
      try:
        scales = tuple(sorted({int(s) for s in str(dcfg.dfa_scales).split(',') if s.strip()}))
      except ValueError:
        raise ValueError(
            f'dynamics.dfa_scales={dcfg.dfa_scales!r} must be comma-separated '
            'integers, e.g. "4,8,16,32", or empty for the default grid.'
        ) from None
      dfa.validate_scales(scales, n)
      return scales
    return dfa.default_scales(n, dcfg.dfa_min_scale, dcfg.dfa_max_divisor, dcfg.dfa_num_scales)
  except ValueError:
    if strict:
      raise
    return None


def min_phase_samples(spec: Any) -> int:
  """Shortest history on which the phase metrics are defined (phase.min_samples: 4 with the
  default detrend, where 3 samples leave one degree of freedom and only artefacts)."""
  return phase.min_samples(spec.phase_preprocess, spec.phase_edge)


# `auto` (0) for dynamics.window and volatility_window_steps: sized to the run by the rules
# below (shared by the project's loop, through training/fit.fit_to_run, and by library
# users, through dynamics.make_tracker). Runs long enough get the standard values.
AUTO = 0
AUTO_DEFAULTS = {'window': 256, 'volatility_window_steps': 50}
# dynamics.recent_steps = auto: the step ring holds max(window, this) steps.
AUTO_RECENT_STEPS = 256


def recent_steps(dcfg: Any) -> int:
  """K, the steps of step-mode series the state holds (dynamics.recent_steps; 0 = auto:
  max(window, 256)). The host must drain the series at least every K steps."""
  window = int(dcfg.window)
  value = int(dcfg.get('recent_steps', AUTO))  # absent in configs saved before the field
  if value == AUTO:
    return max(window, AUTO_RECENT_STEPS)
  if value < window:
    raise ValueError(
        f'dynamics.recent_steps={value} is shorter than dynamics.window={window}: the step '
        f'ring must hold a whole window. Set recent_steps to at least {window}, or 0 (auto: '
        f'max(window, {AUTO_RECENT_STEPS})).'
    )
  return value


def min_dfa_length(dcfg: Any, limit: int = 1 << 20) -> Optional[int]:
  """Shortest series on which the DFA scales of `dcfg` are defined (3 distinct scales), or
  None if none up to `limit` is."""
  n = 1
  while n <= limit:  # doubling, then bisection: defined-ness is monotone in n
    if resolve_scales(dcfg, n) is not None:
      break
    n *= 2
  else:
    return None
  lo, hi = n // 2, n  # undefined at lo (or lo = 0), defined at hi
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if resolve_scales(dcfg, mid) is not None:
      hi = mid
    else:
      lo = mid
  return hi


def min_step_window(dcfg: Any) -> Optional[int]:
  """The shortest step window on which every metric is defined (None: no length is)."""
  dfa_min = min_dfa_length(dcfg)
  if dfa_min is None:
    return None
  return max(dfa_min, 3 + (1 if dcfg.phase_preprocess == 'diff' else 0))


def auto_window(dcfg: Any, num_steps: int) -> int:
  """dynamics.window = auto: 256 on runs of at least 512 steps, else half the run, never below
  `min_step_window` (a run shorter than that computes no step metrics)."""
  needed = min_step_window(dcfg) or 0
  standard = AUTO_DEFAULTS['window']
  if num_steps < needed:
    return needed
  return standard if num_steps >= 2 * standard else max(needed, num_steps // 2)


def computed_windows(num_steps: int, window: int, every: int) -> int:
  """Step-mode samples with metrics: steps k in [window, num_steps] (1-based), k % every == 0."""
  return max(num_steps // every - (window - 1) // every, 0) if num_steps >= window else 0


def auto_volatility_window(computed: int) -> int:
  """volatility_window_steps = auto: 50 when at least 100 windows are computed, else half of
  them (at least 2)."""
  standard = AUTO_DEFAULTS['volatility_window_steps']
  if computed < 4:
    return 2
  return standard if computed >= 2 * standard else computed // 2


def resolve_auto(dcfg: Any, num_steps: int) -> None:
  """Sets the `auto` step-mode fields of a (mutable, attribute-style) config in place."""
  if dcfg.window == AUTO:
    dcfg.window = auto_window(dcfg, num_steps)
  if dcfg.volatility_window_steps == AUTO:
    dcfg.volatility_window_steps = auto_volatility_window(
        computed_windows(num_steps, int(dcfg.window), int(dcfg.every_steps))
    )
