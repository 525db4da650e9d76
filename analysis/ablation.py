"""Ablation without retraining: recompute the dynamics metrics with another definition.

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

import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from dynamics import nulls, stability, tracker as tracker_lib

METRICS = tracker_lib.METRICS  # integration, metastability, synchrony, dsi
HISTORIES = ('', 'sliding_')  # probe series prefixes: expanding history, sliding window

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


@functools.partial(jax.jit, static_argnums=(1, 2))
def _metrics(x, spec, scales, keys=None):
  return tracker_lib.compute_metrics(x, spec, scales, keys)


def surrogate_key(dynamics: Optional[Dict[str, np.ndarray]], seed: int = 0) -> np.ndarray:
  """The run's uint32[2] surrogate base key: the one its tracker saved, else the one a run
  with this seed would have used (so z and p can be added to runs trained without them)."""
  if dynamics is not None and 'surrogate_key' in dynamics:
    return np.asarray(dynamics['surrogate_key'], np.uint32)
  return np.asarray(jax.random.key_data(jax.random.key(int(seed))), np.uint32)


def probe_series(
    probe_signals: np.ndarray, dcfg, surrogate_key: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
  """The tracker's probe (epoch) mode over a whole saved history, offline.

  At epoch e (0-based) the expanding history is probe_signals[:, :e+1] and the sliding one its
  last `sliding_epochs` columns; each gives integration, metastability, synchrony and DSI at e.
  The DSI series of each history gives the volatility (rolling std over
  `volatility_window_epochs`, NaN until that many) and the convergence signal.

  Args:
    probe_signals: f32[S, E].
    dcfg: a dynamics config.
    surrogate_key: the run's base key (`surrogate_key`); with dcfg.surrogates > 0 the z and p
      of each metric come out too ('<metric>_z', '<metric>_p'), drawn exactly as the run did.

  Returns:
    {'integration', 'metastability', 'synchrony', 'dsi', 'dsi_volatility' and the same with a
    'sliding_' prefix: f32[E]; 'alphas': f32[S] (expanding, last epoch); 'convergence',
    'sliding_convergence': int (0-based epoch, -1 if it never fires)}: the keys of
    dynamics.npz without their 'probe_' prefix.
  """
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  x = jnp.asarray(probe_signals, jnp.float32)
  num_signals, num_epochs = x.shape
  names = _metric_names(spec, surrogate_key)
  out = {p + m: np.full((num_epochs,), np.nan, np.float32) for p in HISTORIES for m in names}
  out['alphas'] = np.full((num_signals,), np.nan, np.float32)
  key = None if names == METRICS else surrogate_key
  for count in range(1, num_epochs + 1):
    histories = tracker_lib.probe_histories(x[:, :count], dcfg, spec, key)
    for prefix, m in jax.device_get(histories).items():
      for name in names:
        out[prefix + name][count - 1] = m[name]
      if not prefix:
        out['alphas'] = np.asarray(m['alphas'])
  # The volatility at epoch e only looks back, so the final series holds every epoch's value.
  for prefix in HISTORIES:
    vol, conv = tracker_lib.probe_volatility(jnp.asarray(out[prefix + 'dsi']), dcfg)
    out[prefix + 'dsi_volatility'] = np.asarray(vol, np.float32)
    out[prefix + 'convergence'] = int(conv)
  return out


def _metric_names(spec, surrogate_key) -> Tuple[str, ...]:
  with_nulls = surrogate_key is not None and int(spec.surrogates) > 0
  return METRICS + (tracker_lib.NULL_KEYS if with_nulls else ())


def step_series(
    step_signals: np.ndarray, dcfg, chunk: int = 256, surrogate_key: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
  """The tracker's step mode over a whole saved run, offline.

  Every `every_steps` steps, once `window` samples exist, the metrics over the last `window`
  steps; the volatility over the last `volatility_window_steps` computed DSI values; the
  convergence signal over the computed samples (warm-up in steps). Windows are batched
  (`chunk` at a time) through the same `compute_metrics`.

  Args:
    step_signals: f32[S, steps].
    dcfg: a dynamics config.
    chunk: windows per compiled batch.
    surrogate_key: as for `probe_series`.

  Returns:
    {'integration', 'metastability', 'synchrony', 'dsi', 'dsi_volatility': f32[steps] (NaN
    where not computed), 'alphas': f32[S] (last computed window), 'convergence': int (0-based
    step, -1 if it never fires)}: the keys of dynamics.npz without their 'step_' prefix.
  """
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  window, every = int(dcfg.window), int(dcfg.every_steps)
  scales = tracker_lib.resolve_scales(dcfg, window, strict=True)
  x = np.asarray(step_signals, np.float32)
  num_signals, num_steps = x.shape
  names = _metric_names(spec, surrogate_key)
  out = {m: np.full((num_steps,), np.nan, np.float32) for m in names + ('dsi_volatility',)}
  out['alphas'] = np.full((num_signals,), np.nan, np.float32)
  # Samples whose step is a multiple of `every` (1-based); the metrics exist from `window` on.
  candidates = np.arange(every - 1, num_steps, every)
  due = candidates[candidates + 1 >= window]
  if len(due):
    batch = min(chunk, len(due))
    for start in tqdm.tqdm(
        range(0, len(due), batch), desc='step-mode windows', unit='chunk', disable=None, leave=False
    ):
      steps = due[start : start + batch]
      idx = steps[:, None] - window + 1 + np.arange(window)[None, :]
      windows = np.transpose(x[:, idx], (1, 0, 2))  # [B, S, window]
      pad = batch - len(steps)  # one compiled shape for every chunk
      if pad:
        windows = np.concatenate([windows, np.repeat(windows[-1:], pad, axis=0)])
      keys = None
      if names != METRICS:  # the key of each window's step, as in the tracker's record_step
        padded = np.concatenate([steps, np.repeat(steps[-1:], pad)])
        keys = jax.vmap(lambda t: nulls.evaluation_key(surrogate_key, 0, t))(
            jnp.asarray(padded, jnp.int32)
        )
      m = jax.device_get(_metrics(jnp.asarray(windows), spec, scales, keys))
      for name in names:
        out[name][steps] = np.asarray(m[name])[: len(steps)]
      out['alphas'] = np.asarray(m['alphas'])[len(steps) - 1]
  vol = stability.rolling_volatility(
      jnp.asarray(out['dsi'][candidates]), int(dcfg.volatility_window_steps)
  )
  vol = np.asarray(vol, np.float32)
  out['dsi_volatility'][due] = vol[candidates + 1 >= window]
  warmup = int(np.sum(candidates < int(dcfg.convergence_warmup_steps)))
  first = (
      int(
          stability.convergence_signal(
              jnp.asarray(vol), dcfg.convergence_rho, dcfg.convergence_patience, warmup
          )
      )
      if len(vol)
      else -1
  )
  out['convergence'] = int(candidates[first]) if first >= 0 else -1
  return out


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


def logged_step_series(dynamics: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """The step series as the run logged them, in `step_series`' layout."""
  keys = METRICS + tracker_lib.NULL_KEYS + ('dsi_volatility', 'alphas')
  out = {k: np.asarray(dynamics['step_' + k]) for k in keys if 'step_' + k in dynamics}
  if 'step_convergence' in dynamics:
    out['convergence'] = int(dynamics['step_convergence'])
  return out
