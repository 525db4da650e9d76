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
  surrogates) recompute the metrics from the recorded signals, all of a run's window
  definitions together (`recompute_all`, `dynamics.offline_grid`): the definitions that share
  the shapes (step window, DFA order, surrogates) go through one compiled program, which draws
  each window's surrogates once for all of them, and which every run of the same signal count
  reuses (jit's cache; the job turns on JAX's persistent compilation cache too);
- a window definition whose step metrics (or probe metrics) are the logged definition's (a
  new step window leaves the probe alone; a new sliding history leaves the step window alone)
  takes those from the logged series and reruns only the detector on them;
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
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from analysis import ablation, runs as runs_lib
from dynamics import offline, offline_grid, stability, tracker as tracker_lib

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


class Job(NamedTuple):
  """An ablation job whose every definition has been checked on every run (plan_job)."""

  patterns: Tuple[str, ...]
  runs: List[runs_lib.Run]
  definitions: List[Dict[str, Any]]
  retrain: List[Tuple[str, List[str]]]  # axes that need a new training run
  product: bool


def plan_job(patterns: Sequence[str], grid_items: Sequence[str], product: bool = False) -> Job:
  """The runs and definitions of `analyze.py ablate`, checked before any work.

  Raises ValueError (one line) when the grid is malformed, no run has recorded series, or a
  definition cannot be computed from a run's recorded series. Cheap (no compilation), so a bad
  definition fails at once.
  """
  axes = parse_grid(grid_items)
  retrain = [(f, v) for f, v in axes if f in ablation.FIXED_FIELDS]
  axes = [(f, v) for f, v in axes if f not in ablation.FIXED_FIELDS]
  workdirs = runs_lib.find_runs(patterns)
  runs = [runs_lib.load_run(w) for w in workdirs]
  runs = [r for r in runs if r.dynamics is not None and (r.has_step or r.has_probe)]
  if not runs:
    raise ValueError(f'ablate: no run under {", ".join(patterns)} has recorded dynamics series.')
  defs = definitions(axes, runs[0].dynamics_config(), product) if axes else [{}]
  check(defs, runs)  # every definition on every run, before anything is computed
  return Job(tuple(patterns), runs, defs, retrain, product)


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
  """{'step': step series, 'probe': probe series} of the run under the definition, with z
  and p at every window."""
  return recompute_all(run, [overrides], nulls_at='every')[0]


def _step_signature(dcfg: ml_collections.ConfigDict) -> Tuple:
  """What the step window's metrics depend on, the detector aside."""
  window = int(dcfg.window)
  scales = tracker_lib.resolve_scales(dcfg, window, strict=True)
  return (tracker_lib.MetricSpec.from_config(dcfg), scales, window, int(dcfg.every_steps))


def _reusable(logged: Optional[Dict[str, Any]], names: Sequence[str]) -> bool:
  return logged is not None and all(name in logged for name in names)


def _with_step_detector(series: Dict[str, Any], dcfg) -> Dict[str, Any]:
  series = dict(series)
  series['dsi_volatility'], series['convergence'] = offline.step_detector(series['dsi'], dcfg)
  return series


def _with_probe_detector(series: Dict[str, Any], dcfg) -> Dict[str, Any]:
  series = dict(series)
  for prefix in ablation.HISTORIES:
    vol, conv = tracker_lib.probe_volatility(jnp.asarray(series[prefix + 'dsi']), dcfg)
    series[prefix + 'dsi_volatility'] = np.asarray(vol, np.float32)
    series[prefix + 'convergence'] = int(conv)
  return series


def recompute_all(
    run: runs_lib.Run,
    defs: Sequence[Dict[str, Any]],
    timings: Optional[Dict[str, float]] = None,
    nulls_at: str = 'last',
) -> List[Dict[str, Dict[str, Any]]]:
  """`recompute` of each definition, in order, the window definitions together.

  The window definitions' step series come from one `offline_grid.step_series_grid` call and
  their probe series from one `offline_grid.probe_series_grid` call, each definition
  computed once however often it repeats. A definition whose step (probe) metrics are those of
  the logged definition, the detector aside, takes them from the logged series (the
  recomputation equals them to float32 round-off: tests/test_grid.py).

  timings: if given, the seconds of the window definitions' 'step' and 'probe' are added to it.
  nulls_at: `offline_grid.step_series_grid`'s: by default a recomputed step series has its z
    and p at its last window only, which is all the table and the verdicts read ('every' for
    the whole series, at about 40 times the work).
  """
  out: List[Optional[Dict[str, Dict[str, Any]]]] = [None] * len(defs)
  window = [i for i, overrides in enumerate(defs) if _stage(overrides) == 'window']
  for i, overrides in enumerate(defs):
    if i not in window:
      out[i] = _recompute_one(run, overrides)
  if not window:
    return out
  logged_cfg = run.dynamics_config()
  cfgs = {i: ablation.apply_overrides(logged_cfg, defs[i]) for i in window}
  key = ablation.surrogate_key(run.dynamics, run.seed)
  step: Dict[int, Any] = {i: None for i in window}
  probe: Dict[int, Any] = {i: None for i in window}
  start = time.perf_counter()
  if run.has_step:
    logged = ablation.logged_step_series(run.dynamics)
    logged_signature = _step_signature(logged_cfg)
    todo: Dict[Tuple, List[int]] = {}
    for i in window:
      signature = _step_signature(cfgs[i])
      names = offline._metric_names(signature[0], key)  # pylint: disable=protected-access
      if signature == logged_signature and _reusable(logged, names):
        step[i] = _with_step_detector(logged, cfgs[i])
      else:
        todo.setdefault(signature, []).append(i)
    if todo:
      firsts = [same[0] for same in todo.values()]
      with tqdm.tqdm(desc='step windows', unit='chunk', disable=None, leave=False) as bar:

        def progress(done, total):
          bar.total = total
          bar.update(done - bar.n)

        series = offline_grid.step_series_grid(
            run.dynamics['step_signals'],
            [cfgs[i] for i in firsts],
            surrogate_key=key,
            progress=progress,
            nulls_at=nulls_at,
        )
      for computed, same in zip(series, todo.values()):
        for i in same:
          step[i] = _with_step_detector(computed, cfgs[i])
  if timings is not None:
    timings['step'] = timings.get('step', 0.0) + time.perf_counter() - start
  start = time.perf_counter()
  if run.has_probe:
    logged = ablation.logged_probe_series(run.dynamics)
    num_epochs = run.dynamics['probe_signals'].shape[-1]
    logged_plan = tracker_lib.probe_plan(logged_cfg, num_epochs)
    todo = {}
    for i in window:
      plan = tracker_lib.probe_plan(cfgs[i], num_epochs)
      names = offline._metric_names(plan.spec, key)  # pylint: disable=protected-access
      names = [prefix + name for prefix in ablation.HISTORIES for name in names]
      if plan == logged_plan and _reusable(logged, names):
        probe[i] = _with_probe_detector(logged, cfgs[i])
      else:
        todo.setdefault(plan, []).append(i)
    if todo:
      firsts = [same[0] for same in todo.values()]
      series = offline_grid.probe_series_grid(
          run.dynamics['probe_signals'], [cfgs[i] for i in firsts], key
      )
      for computed, same in zip(series, todo.values()):
        for i in same:
          probe[i] = _with_probe_detector(computed, cfgs[i])
  if timings is not None:
    timings['probe'] = timings.get('probe', 0.0) + time.perf_counter() - start
  for i in window:
    out[i] = {'step': step[i], 'probe': probe[i]}
  return out


def _recompute_one(run: runs_lib.Run, overrides: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
  """The logged, DSI and detector stages of one definition (`recompute`)."""
  logged_cfg = run.dynamics_config()
  dcfg = ablation.apply_overrides(logged_cfg, overrides)
  step = ablation.logged_step_series(run.dynamics) if run.has_step else None
  probe = ablation.logged_probe_series(run.dynamics) if run.has_probe else None
  stage = _stage(overrides)
  if stage in ('dsi', 'detector'):
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
  registered = ablation.registered_names(run.dynamics_config())
  for resolution, history, prefix in PLACES:
    source = series['step'] if resolution == 'step' else series['probe']
    if source is None:
      continue
    prefix = '' if resolution == 'step' else prefix
    for metric in SERIES + registered:
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
