"""Ablation without retraining: recompute the dynamics metrics with another definition.

The recomputation itself is the library's (`dynamics.recompute`, in dynamics/offline.py,
usable on series recorded in any loop); this module adds what the analysis needs around it:
parsing and checking overrides against a run's config, and the logged series in the same
layout.

The tracker saves every per-signal series of a run in dynamics.npz (`probe_signals` f32[S, E],
`step_signals` f32[S, steps]). The metrics are functions of those series and the definition
fields of `config.dynamics` only, so any definition that leaves the signals themselves alone
can be evaluated offline, and gives exactly what a training run with that setting would have
logged (same seed, same signals; tests/test_analysis.py trains both and compares).

`probe_series` and `step_series` replicate the tracker's probe and step logic with the same
functions (`tracker.compute_metrics`, `tracker.resolve_scales`, `stability.*`); nothing here is a
second implementation of a metric.

    overrides = parse_overrides(['dynamics.dsi_form=linear', 'dynamics.dfa_order=2'])
    dcfg = apply_overrides(run.dynamics_config(), overrides)
    new = probe_series(run.dynamics['probe_signals'], dcfg)   # {'integration': f32[E], ...}
"""

from typing import Any, Dict, Optional, Sequence

import ml_collections
import numpy as np
import tqdm

from analysis import runs as runs_lib
from dynamics import offline as recompute_lib, tracker as tracker_lib

METRICS = tracker_lib.METRICS  # integration, metastability, synchrony, dsi
# The library's offline recomputation, as the analysis calls it.
HISTORIES = recompute_lib.HISTORIES
probe_series = recompute_lib.probe_series
surrogate_key = recompute_lib.surrogate_key

# Fields that shape the saved signals themselves (or whether they exist): changing them needs a
# new training run.
FIXED_FIELDS = {
    'reduction': 'the per-signal series were reduced from the taps with it during training',
    'projection_seed': 'the proj:K signals were projected with it during training',
    'probe_size': 'the probe signals were measured on that many images during training',
    'probe_split': 'the probe signals were measured on that split during training',
    'enabled': 'it decides whether the run recorded any signals',
    'probe_mode': 'it decides whether the run recorded probe signals',
    'step_mode': 'it decides whether the run recorded step signals',
}


def parse_overrides(
    items: Sequence[str], base: Optional[ml_collections.ConfigDict] = None
) -> Dict[str, Any]:
  """['dynamics.dsi_form=linear', 'dfa_order=2', ...] -> {field: typed value}.

  Values take the type of the field in `base` (the run's dynamics config; default: the current
  defaults). Fields that the saved signals depend on (`FIXED_FIELDS`) are rejected.
  """
  if base is None:
    from analysis import runs  # pylint: disable=g-import-not-at-top

    base = runs.dynamics_config()
  out = {}
  for item in items:
    key, sep, raw = item.partition('=')
    key = key.strip()
    if not sep or not key:
      raise ValueError(f'--set {item!r}: expected dynamics.<field>=<value>.')
    if '.' in key:
      prefix, _, field = key.partition('.')
      if prefix != 'dynamics' or '.' in field:
        raise ValueError(
            f'--set {item!r}: only dynamics.<field> definitions can be changed '
            'offline (the run itself, model, data and optimiser, cannot).'
        )
    else:
      field = key
    if field in FIXED_FIELDS:
      raise ValueError(
          f'--set dynamics.{field} cannot be changed offline: '
          f'{FIXED_FIELDS[field]}. Train a new run with --config.dynamics.{field}=...'
      )
    if field not in base:
      raise ValueError(
          f'--set: unknown field dynamics.{field}; fields that can be changed '
          f'offline: {", ".join(sorted(k for k in base if k not in FIXED_FIELDS))}.'
      )
    out[field] = _typed(field, raw.strip(), base[field])
  return out


def _typed(field: str, raw: str, like: Any) -> Any:
  try:
    if isinstance(like, bool):
      if raw.lower() in ('1', 'true', 'yes'):
        return True
      if raw.lower() in ('0', 'false', 'no'):
        return False
      raise ValueError(raw)
    if isinstance(like, int):
      return int(raw)
    if isinstance(like, float):
      return float(raw)
  except ValueError:
    kind = (
        'true or false'
        if isinstance(like, bool)
        else 'an integer'
        if isinstance(like, int)
        else 'a number'
    )
    raise ValueError(
        f'--set dynamics.{field}={raw!r}: expected {kind} ' f'(its current value is {like!r}).'
    ) from None
  if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in '\'"':
    raw = raw[1:-1]
  return raw


def apply_overrides(
    dcfg: ml_collections.ConfigDict, overrides: Dict[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `dcfg` with `overrides` set, checked as a training run would check it."""
  from training import validate  # pylint: disable=g-import-not-at-top

  new = ml_collections.ConfigDict(dcfg.to_dict())
  for field, value in overrides.items():
    if field in FIXED_FIELDS:
      raise ValueError(f'dynamics.{field} cannot be changed offline: {FIXED_FIELDS[field]}.')
    new[field] = value
  validate.validate_dynamics(new, num_devices=1)
  # The scales must suit the DFA order, which resolve_scales does not check: a window of
  # order + 1 points or fewer has no residual (dfa.validate_scales would stop the run later).
  if new.dfa_scales:
    smallest = min(tracker_lib.resolve_scales(new, 2**31, strict=True))
  else:
    smallest = int(new.dfa_min_scale)
  if smallest < int(new.dfa_order) + 2:
    raise ValueError(
        f'dynamics.dfa_order={new.dfa_order} needs DFA scales >= {int(new.dfa_order) + 2}, but '
        f'the smallest is {smallest} (dynamics.dfa_scales={new.dfa_scales!r}, '
        f'dfa_min_scale={new.dfa_min_scale}); raise dynamics.dfa_min_scale or set dfa_scales.'
    )
  return new


def changed_fields(
    old: ml_collections.ConfigDict, new: ml_collections.ConfigDict
) -> Dict[str, Any]:
  """{field: (old, new)} for every definition field that differs."""
  return {k: (old.get(k), new[k]) for k in new if old.get(k) != new[k]}


def step_series(
    step_signals: np.ndarray, dcfg, chunk: int = 256, key: Optional[np.ndarray] = None, **kw
) -> Dict[str, np.ndarray]:
  """dynamics.offline.step_series with a progress bar on a terminal (`surrogate_key=` is
  taken as a keyword, as the library's)."""
  key = kw.pop('surrogate_key', key)
  with tqdm.tqdm(desc='step-mode windows', unit='chunk', disable=None, leave=False) as bar:

    def progress(done, total):
      bar.total = total
      bar.update(done - bar.n)

    return recompute_lib.step_series(step_signals, dcfg, chunk, key, progress=progress)


def logged_probe_series(dynamics: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """The probe series as the run logged them, in `probe_series`' layout."""
  out = {
      key[len('probe_') :]: np.asarray(value)
      for key, value in dynamics.items()
      if key.startswith('probe_') and key not in ('probe_signals', 'probe_count')
  }
  for key in ('convergence', 'sliding_convergence'):
    if key in out:
      out[key] = int(out[key])
  return out


def registered_names(dcfg) -> tuple:
  """The registered metrics (dynamics/registry.py) of a run's dynamics config, after importing
  its dynamics.metric_modules."""
  return tuple(m.name for m in tracker_lib.MetricSpec.from_config(dcfg).extra)


def registered_outputs(dynamics: Dict[str, np.ndarray]) -> tuple:
  """The registered metrics' outputs (value, z, p) a run's dynamics.npz holds."""
  if 'config_json' not in dynamics:
    return ()
  names = registered_names(runs_lib.dynamics_config(str(dynamics['config_json'])))
  return tuple(n + suffix for n in names for suffix in ('', '_z', '_p'))


def logged_step_series(dynamics: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """The step series as the run logged them, in `step_series`' layout."""
  keys = (
      METRICS + tracker_lib.NULL_KEYS + ('dsi_volatility', 'alphas') + registered_outputs(dynamics)
  )
  out = {k: np.asarray(dynamics['step_' + k]) for k in keys if 'step_' + k in dynamics}
  if 'step_convergence' in dynamics:
    out['convergence'] = int(dynamics['step_convergence'])
  return out
