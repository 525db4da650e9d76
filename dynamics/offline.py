"""Recompute the metrics of a recorded run under another definition, offline.

The tracker saves every per-signal series of a run (`Tracker.export`: `probe_signals`
f32[S, E], `step_signals` f32[S, steps], `surrogate_key`). The metrics are functions of those
series and the definition fields only, so any definition that leaves the signals themselves
alone (not the tap reduction or the probe batch) can be evaluated from them, and gives what a
run trained with that definition would have logged. `probe_series` and `step_series` replay
the tracker's probe and step logic with the same functions (`compute_metrics`,
`resolve_scales`, `stability.*`); nothing here is a second implementation of a metric.

    import dynamics, numpy as np
    recorded = dict(np.load('runs/x/dynamics.npz'))           # or tracker.export(state)
    new = dynamics.recompute(recorded, phase_preprocess='demean', dfa_order=2)
    new['step']['metastability']                                # f32[steps], NaN where undefined
"""

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import config as config_lib, nulls, stability, tracker as tracker_lib

METRICS = tracker_lib.METRICS  # integration, metastability, synchrony, dsi
HISTORIES = ('', 'sliding_')  # probe series prefixes: expanding history, sliding window


def surrogate_key(dynamics: Optional[Mapping[str, np.ndarray]], seed: int = 0) -> np.ndarray:
  """The run's uint32[2] surrogate base key: the one its tracker saved, else the one a run
  with this seed would have used (so z and p can be added to runs trained without them)."""
  if dynamics is not None and 'surrogate_key' in dynamics:
    return np.asarray(dynamics['surrogate_key'], np.uint32)
  return np.asarray(jax.random.key_data(jax.random.key(int(seed))), np.uint32)


def recompute(
    recorded: Mapping[str, Any], dcfg: Any = None, seed: int = 0, **changes: Any
) -> Dict[str, Optional[Dict[str, Any]]]:
  """The metrics of a recorded run under a definition.

  Args:
    recorded: what the tracker exported (`Tracker.export`, or a run's dynamics.npz): needs
      `step_signals` and/or `probe_signals`; its `surrogate_key` is used when present.
    dcfg: the definition the run recorded with (the config given to `make_tracker`); None
      reads it from `recorded['config_json']` (a project run's dynamics.npz holds it).
    seed: for the surrogate key of a run that saved none.
    **changes: definition fields to change, e.g. phase_preprocess='demean', dfa_order=2.
      `auto` step windows are sized to the recorded length as the tracker sized them.

  Returns:
    {'step': step_series(...) or None, 'probe': probe_series(...) or None}.
  """
  import json  # pylint: disable=g-import-not-at-top

  if dcfg is None:
    if 'config_json' not in recorded:
      raise ValueError(
          'dynamics.recompute: pass the definition the run recorded with (the config given to '
          'make_tracker); this export holds no config_json.'
      )
    dcfg = json.loads(str(np.asarray(recorded['config_json'])))
  merged = config_lib.as_config(dict(config_lib.as_config(dcfg), **changes))
  key = surrogate_key(recorded, seed)
  out: Dict[str, Optional[Dict[str, Any]]] = {'step': None, 'probe': None}
  if 'step_signals' in recorded:
    signals = np.asarray(recorded['step_signals'])
    tracker_lib.resolve_auto(merged, signals.shape[-1])
    out['step'] = step_series(signals, merged, surrogate_key=key)
  if 'probe_signals' in recorded:
    out['probe'] = probe_series(np.asarray(recorded['probe_signals']), merged, key)
  return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _metrics(x, spec, scales, keys=None):
  return tracker_lib.compute_metrics(x, spec, scales, keys)


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
  if num_epochs:
    # Every epoch's histories in one compiled program (the tracker's probe_histories_at, the
    # history length a traced count), mapped over the epochs.
    plan = tracker_lib.probe_plan(dcfg, num_epochs, spec)
    key = jnp.asarray(surrogate_key, jnp.uint32) if _with_nulls(spec, surrogate_key) else None
    histories = jax.device_get(_probe_program(plan, key is not None)(x, key))
    for prefix, m in histories.items():
      for name in names:
        out[prefix + name][:] = m[name]
    out['alphas'] = np.asarray(histories['']['alphas'][-1])
  # The volatility at epoch e only looks back, so the final series holds every epoch's value.
  for prefix in HISTORIES:
    vol, conv = tracker_lib.probe_volatility(jnp.asarray(out[prefix + 'dsi']), dcfg)
    out[prefix + 'dsi_volatility'] = np.asarray(vol, np.float32)
    out[prefix + 'convergence'] = int(conv)
  return out


@functools.lru_cache(maxsize=32)
def _probe_program(plan: tracker_lib.ProbePlan, with_key: bool) -> Callable:
  """jit((x f32[S, E], key) -> probe_histories_at at every count 1..E, stacked on axis 0)."""

  def run(x, key):
    def one(count):
      return tracker_lib.probe_histories_at(x, count, plan, key if with_key else None)

    # In sequence (a scan): each epoch's program has the tracker's shapes, so the values are
    # the logged ones to float32 round-off; vmapping epochs together measured no faster.
    return jax.lax.map(one, jnp.arange(1, x.shape[-1] + 1, dtype=jnp.int32))

  return jax.jit(run)


def _with_nulls(spec, surrogate_key) -> bool:
  return surrogate_key is not None and int(spec.surrogates) > 0


def _metric_names(spec, surrogate_key) -> Tuple[str, ...]:
  """The metric outputs: the built-ins and the registered metrics (spec.extra), with their z
  and p where the run drew nulls."""
  return spec.output_names(_with_nulls(spec, surrogate_key))


def step_series(
    step_signals: np.ndarray,
    dcfg,
    chunk: int = 256,
    surrogate_key: Optional[np.ndarray] = None,
    progress: Optional[Callable[[int, int], None]] = None,
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
    progress: called as progress(chunk index, number of chunks) before each chunk.

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
    for start in range(0, len(due), batch):
      if progress is not None:
        progress(start // batch, -(-len(due) // batch))
      steps = due[start : start + batch]
      idx = steps[:, None] - window + 1 + np.arange(window)[None, :]
      windows = np.transpose(x[:, idx], (1, 0, 2))  # [B, S, window]
      pad = batch - len(steps)  # one compiled shape for every chunk
      if pad:
        windows = np.concatenate([windows, np.repeat(windows[-1:], pad, axis=0)])
      keys = None
      if _with_nulls(
          spec, surrogate_key
      ):  # the key of each window's step, as in the tracker's record_step
        padded = np.concatenate([steps, np.repeat(steps[-1:], pad)])
        keys = jax.vmap(lambda t: nulls.evaluation_key(surrogate_key, 0, t))(
            jnp.asarray(padded, jnp.int32)
        )
      m = jax.device_get(_metrics(jnp.asarray(windows), spec, scales, keys))
      for name in names:
        out[name][steps] = np.asarray(m[name])[: len(steps)]
      out['alphas'] = np.asarray(m['alphas'])[len(steps) - 1]
  out['dsi_volatility'], out['convergence'] = step_detector(out['dsi'], dcfg)
  return out


def step_detector(dsi: np.ndarray, dcfg) -> Tuple[np.ndarray, int]:
  """The step-mode volatility and convergence of a DSI series, as the tracker computes them.

  Args:
    dsi: f32[steps], NaN where no window was computed.
    dcfg: a dynamics config (window, every_steps, volatility_window_steps, the detector).
  Returns:
    (f32[steps] volatility over the last `volatility_window_steps` computed values, NaN where
    not computed; the 0-based step at which the convergence streak starts, -1 if none).
  """
  every, window = int(dcfg.every_steps), int(dcfg.window)
  candidates = np.arange(every - 1, len(dsi), every)
  due = candidates[candidates + 1 >= window]
  vol = np.asarray(
      stability.rolling_volatility(jnp.asarray(dsi[candidates]), int(dcfg.volatility_window_steps)),
      np.float32,
  )
  out = np.full(np.shape(dsi), np.nan, np.float32)
  out[due] = vol[candidates + 1 >= window]
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
  return out, (int(candidates[first]) if first >= 0 else -1)
