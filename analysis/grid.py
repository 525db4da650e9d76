r"""Ablation as a job: a grid of metric definitions over a set of runs, in one command.

  python analyze.py ablate --runs=runs/quickstart --grid dfa_order=1,2 \
      --grid phase_preprocess=detrend,demean,diff --out=runs/quickstart/ablation
  python analyze.py ablate --runs=results/confirm/runs --grid ... --product --out=DIR

`--grid field=v1,v2` (repeatable) names the values of one definition field. Without
`--product` each axis is varied alone (the other fields keep each run's logged value); with
it, every combination. Every definition is checked against every run before anything is
computed: a definition the recorded series cannot support stops the job with one line naming
the field, the value and the nearest supported value, and no output folder is made.

Recomputation is staged by what a field changes, so nothing is computed twice:
- window fields (DFA scales and order, the phase preprocessing, the step window, the
  surrogates) recompute the metrics from the recorded signals (`analysis.ablation`), one
  compiled program per definition shared by every run of the same shape (jit's cache);
- DSI fields (`dsi_form` and its weights) recombine the logged integration and metastability;
- detector fields (volatility windows, rho, patience, warm-ups) only rerun the volatility and
  the convergence detector on the DSI series;
- the logged definition itself is read, not recomputed.
Fields that shape the signals (the tap reduction, the probe batch) need a new training run;
they are listed with the reason.

Writes <out>/ablation.csv and ablation.parquet (one row per run x definition x metric x
resolution x history), ablation.md and figures/.
"""

import itertools
from typing import Any, Dict, List, Sequence, Tuple

import jax.numpy as jnp
import ml_collections
import numpy as np

from analysis import ablation, runs as runs_lib
from dynamics import offline, stability, tracker as tracker_lib

DSI_FIELDS = ('dsi_form', 'dsi_w_integration', 'dsi_w_metastability')
DETECTOR_FIELDS = (
    'volatility_window_epochs',
    'volatility_window_steps',
    'convergence_rho',
    'convergence_patience',
    'convergence_warmup_epochs',
    'convergence_warmup_steps',
    'plateau_delta',
)
SERIES = ('integration', 'metastability', 'synchrony', 'dsi', 'dsi_volatility')
# (resolution, history, key prefix): the step window, the epoch probe's two histories.
PLACES = (('step', 'window', 'step'), ('epoch', 'expanding', ''), ('epoch', 'sliding', 'sliding_'))
COLUMNS = (
    'run',
    'model',
    'dataset',
    'seed',
    'definition',
    'metric',
    'resolution',
    'history',
    'value',
    'z',
    'p',
    'samples',
    'defined',
)


def parse_grid(items: Sequence[str]) -> List[Tuple[str, List[str]]]:
  """['dfa_order=1,2', 'dynamics.phase_preprocess=detrend,demean'] -> [(field, [raw values])];
  'phase_band=0.02,0.2;0.05,0.25' (';' when a value holds commas)."""
  axes, seen = [], set()
  for item in items:
    key, sep, raw = item.partition('=')
    field = key.strip()
    if field.startswith('dynamics.'):
      field = field[len('dynamics.') :]
    # Values holding commas themselves (phase_band=lo,hi; dfa_scales=4,8,16) are separated
    # by ';' instead: phase_band=0.02,0.2;0.05,0.25.
    values = [v.strip() for v in raw.split(';' if ';' in raw else ',') if v.strip()]
    if not sep or not field or not values:
      raise ValueError(f'--grid {item!r}: expected field=value1,value2 (e.g. dfa_order=1,2).')
    if field in seen:
      raise ValueError(f'--grid: {field} is given twice; give its values once, comma-separated.')
    seen.add(field)
    axes.append((field, values))
  if not axes:
    raise ValueError('ablate needs at least one --grid field=value1,value2.')
  return axes


def definitions(
    axes: Sequence[Tuple[str, Sequence[str]]], base: ml_collections.ConfigDict, product: bool
) -> List[Dict[str, Any]]:
  """The grid's definitions as override dicts ({} is the logged definition), deduplicated.

  One axis at a time: each value of each axis alone. Product: every combination.
  """
  typed = [(f, [ablation.parse_overrides([f'{f}={v}'], base)[f] for v in vs]) for f, vs in axes]
  if product:
    combos = [
        dict(zip([f for f, _ in typed], c)) for c in itertools.product(*[v for _, v in typed])
    ]
  else:
    combos = [{f: v} for f, vs in typed for v in vs]
  out, seen = [{}], {()}
  for combo in combos:
    changed = {k: v for k, v in combo.items() if base.get(k) != v}
    key = tuple(sorted(changed.items()))
    if key not in seen:
      seen.add(key)
      out.append(changed)
  return out


def name(overrides: Dict[str, Any]) -> str:
  return ','.join(f'{k}={v}' for k, v in sorted(overrides.items())) or 'logged'


def _supported(run: runs_lib.Run, overrides: Dict[str, Any]) -> bool:
  try:
    _check_lengths(run, ablation.apply_overrides(run.dynamics_config(), overrides))
    return True
  except ValueError:
    return False


def _nearest(field: str, value: Any, run: runs_lib.Run) -> str:
  """'; nearest supported value: field=v' for a numeric field: the supported value closest to
  `value` on the way from the run's logged one (bisection; support is taken to be an
  interval around the logged value). '' when there is none."""
  good = run.dynamics_config()[field]
  if isinstance(good, bool) or not isinstance(good, (int, float)) or not _supported(run, {}):
    return ''
  bad = value
  for _ in range(60):
    if isinstance(good, int) and abs(bad - good) <= 1:
      break
    mid = (good + bad) // 2 if isinstance(good, int) else (good + bad) / 2
    good, bad = (mid, bad) if _supported(run, {field: mid}) else (good, mid)
  return f'; nearest supported value: {field}={good:g}'


def _check_lengths(run: runs_lib.Run, dcfg: ml_collections.ConfigDict) -> None:
  """The recorded step series must hold one window of the definition."""
  if run.has_step and dcfg.step_mode:
    steps = run.dynamics['step_signals'].shape[-1]
    if int(dcfg.window) > steps:
      raise ValueError(
          f'dynamics.window={dcfg.window} is longer than the {steps} recorded steps of {run.name}'
      )
    tracker_lib.resolve_scales(dcfg, int(dcfg.window), strict=True)


def check(defs: Sequence[Dict[str, Any]], runs: Sequence[runs_lib.Run]) -> None:
  """Every definition against every run, before any work: ValueError, one line, on the first
  that a run's recorded series cannot support."""
  for overrides in defs:
    for run in runs:
      try:
        _check_lengths(run, ablation.apply_overrides(run.dynamics_config(), overrides))
      except ValueError as e:
        text = str(e).splitlines()[0].rstrip('.')
        hint = ''
        if len(overrides) == 1:
          ((field, value),) = overrides.items()
          hint = _nearest(field, value, run)
        raise ValueError(f'ablate: {name(overrides)} on {run.name}: {text}{hint}.') from None


def _stage(overrides: Dict[str, Any]) -> str:
  """'logged', 'detector', 'dsi' or 'window': the earliest stage the definition changes."""
  if not overrides:
    return 'logged'
  fields = set(overrides)
  if fields <= set(DETECTOR_FIELDS):
    return 'detector'
  if fields <= set(DETECTOR_FIELDS) | set(DSI_FIELDS):
    return 'dsi'
  return 'window'


def recompute(run: runs_lib.Run, overrides: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
  """{'step': step series, 'probe': probe series} of the run under the definition."""
  logged_cfg = run.dynamics_config()
  dcfg = ablation.apply_overrides(logged_cfg, overrides)
  step = ablation.logged_step_series(run.dynamics) if run.has_step else None
  probe = ablation.logged_probe_series(run.dynamics) if run.has_probe else None
  stage = _stage(overrides)
  if stage == 'window':
    key = ablation.surrogate_key(run.dynamics, run.seed)
    if step is not None:
      step = ablation.step_series(run.dynamics['step_signals'], dcfg, surrogate_key=key)
    if probe is not None:
      probe = ablation.probe_series(run.dynamics['probe_signals'], dcfg, key)
  elif stage in ('dsi', 'detector'):
    step, probe = dict(step or {}), dict(probe or {})
    places = ([('step', step, '')] if run.has_step else []) + (
        [('probe', probe, p) for p in ('', 'sliding_')] if run.has_probe else []
    )
    for where, series, prefix in places:
      if stage == 'dsi':
        series[prefix + 'dsi'] = np.asarray(
            stability.stability_index(
                jnp.asarray(series[prefix + 'integration']),
                jnp.asarray(series[prefix + 'metastability']),
                dcfg.dsi_form,
                dcfg.dsi_w_integration,
                dcfg.dsi_w_metastability,
            ),
            np.float32,
        )
        for suffix in ('_z', '_p'):  # the logged null was of the logged DSI
          if prefix + 'dsi' + suffix in series:
            series[prefix + 'dsi' + suffix] = np.full_like(series[prefix + 'dsi'], np.nan)
      if where == 'step':
        series['dsi_volatility'], series['convergence'] = offline.step_detector(series['dsi'], dcfg)
      else:
        vol, conv = tracker_lib.probe_volatility(jnp.asarray(series[prefix + 'dsi']), dcfg)
        series[prefix + 'dsi_volatility'] = np.asarray(vol, np.float32)
        series[prefix + 'convergence'] = int(conv)
    step = step if run.has_step else None
    probe = probe if run.has_probe else None
  return {'step': step, 'probe': probe}


def rows(run: runs_lib.Run, definition: str, series: Dict[str, Dict[str, Any]]) -> List[Dict]:
  """The tidy rows of one run under one definition: the last defined value of each series."""
  out = []
  for resolution, history, prefix in PLACES:
    source = series['step'] if resolution == 'step' else series['probe']
    if source is None:
      continue
    prefix = '' if resolution == 'step' else prefix
    for metric in SERIES:
      values = np.asarray(source.get(prefix + metric, []), np.float64)
      finite = np.flatnonzero(np.isfinite(values))
      last = int(finite[-1]) if len(finite) else -1

      def at(suffix, last=last, prefix=prefix, metric=metric, source=source):
        v = np.asarray(source.get(prefix + metric + suffix, []), np.float64)
        return float(v[last]) if last >= 0 and last < len(v) else float('nan')

      out.append(
          dict(
              run=run.name,
              model=run.model,
              dataset=run.dataset,
              seed=run.seed,
              definition=definition,
              metric=metric,
              resolution=resolution,
              history=history,
              value=float(values[last]) if last >= 0 else float('nan'),
              z=at('_z'),
              p=at('_p'),
              samples=int(len(finite)),
              defined=bool(len(finite)),
          )
      )
  return out
