"""The metric definitions a report shows (the logged one, and an ablated one with its
replication check), and the table of the choices the study leaves open."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tqdm

from analysis import ablation, runs as runs_lib
from analysis.markdown import _table
from analysis.views import Definition, View
from dynamics import offline_grid


def definition_title(overrides: Dict[str, Any]) -> str:
  return 'ablated: ' + ', '.join(f'{k}={v}' for k, v in overrides.items())


def build_definitions(
    runs: Sequence[runs_lib.Run],
    overrides: Optional[Dict[str, Any]] = None,
    step: bool = True,
    verify: bool = True,
):
  """[logged definition] (+ [ablated] when overrides are given), and the replication checks."""
  logged, ablated, checks = [], [], {}
  # A bar on a terminal (the ablation recomputes every run's metrics: seconds to minutes).
  for run in tqdm.tqdm(runs, desc='analysing runs', unit='run', disable=None, leave=False):
    dcfg = run.dynamics_config()
    step_logged = ablation.logged_step_series(run.dynamics) if step and run.has_step else None
    logged.append(View(run, dcfg, ablation.logged_probe_series(run.dynamics), step_logged))
    key = ablation.surrogate_key(run.dynamics, run.seed)
    if overrides:
      new_cfg = ablation.apply_overrides(dcfg, overrides)
      # The ablated definition and (verify) the logged one recomputed, together: one program
      # per shape for both (dynamics/offline_grid.py).
      cfgs = [new_cfg, dcfg] if verify else [new_cfg]
      probes = offline_grid.probe_series_grid(run.dynamics['probe_signals'], cfgs, key)
      steps = [None] * len(cfgs)
      if step_logged is not None:
        steps = offline_grid.step_series_grid(run.dynamics['step_signals'], cfgs, surrogate_key=key)
      ablated.append(View(run, new_cfg, probes[0], steps[0]))
      if verify:
        checks[run.name] = {'probe': _max_diff(probes[1], logged[-1].probe)}
        if step_logged is not None:
          checks[run.name]['step'] = _max_diff(steps[1], step_logged)
  definitions = [Definition('logged', 'logged definition', logged)]
  if overrides:
    definitions.append(Definition('ablated', definition_title(overrides), ablated))
  return definitions, checks


def _max_diff(a: Dict[str, Any], b: Dict[str, Any]) -> float:
  """Largest |a - b| over the shared keys; NaN positions must agree (else inf)."""
  worst = 0.0
  for key in set(a) & set(b):
    x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
    if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
      return float('inf')
    finite = np.isfinite(x)
    if finite.any():
      worst = max(worst, float(np.max(np.abs(x[finite] - y[finite]))))
  return worst


def notes(runs: Sequence[runs_lib.Run]) -> List[str]:
  """Definition fields that differ between the runs (their findings mix definitions)."""
  configs = [r.dynamics_config() for r in runs]
  keys = sorted({k for c in configs for k in c})
  differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
  if not differing:
    return []
  return [
      '**Note:** the runs were trained with different dynamics definitions in: '
      + ', '.join(
          f'`{k}` ({", ".join(sorted({repr(c.get(k)) for c in configs}))})' for k in differing
      )
      + '. Cross-run comparisons mix those definitions.',
      '',
  ]


def changes(runs: Sequence[runs_lib.Run]) -> List[str]:
  """Each definition and recipe choice the study does not publish, with the value the runs
  used (read from their configs; several values are listed when the runs differ)."""

  def values(get) -> str:
    seen = []
    for run in runs:
      try:
        v = get(run)
      except (KeyError, TypeError):
        v = '?'
      if v not in seen:
        seen.append(v)
    return ', '.join(f'`{v}`' for v in seen)

  def dyn(field):
    return lambda r: r.dynamics_config()[field]

  def cfg(*path):
    def get(r):
      node = r.config
      for p in path:
        node = node[p]
      return node

    return get

  rows = [
      ('Tap signal (reduction of a block output)', 'not published', values(dyn('reduction'))),
      (
          'Activations of the epoch-mode metrics',
          'not published (per epoch)',
          values(
              lambda r: f'{r.dynamics_config().probe_size} {r.dynamics_config().probe_split} '
              'images, inference mode'
          ),
      ),
      ('DFA order', 'not published', values(dyn('dfa_order'))),
      (
          'DFA scales',
          'not published',
          values(_scales_choice),
      ),
      ('Integration over taps', 'not published', values(dyn('integration_method'))),
      (
          'Phase preprocessing before the Hilbert transform',
          'not published',
          values(dyn('phase_preprocess')),
      ),
      ('Samples dropped at each end of R(t)', 'not published', values(dyn('phase_edge'))),
      ('DSI form', 'not published', values(dyn('dsi_form'))),
      ('DSI volatility window (epochs)', 'not published', values(dyn('volatility_window_epochs'))),
      ('Sliding history (epochs)', 'expanding only', values(dyn('sliding_epochs'))),
      (
          'Step window / its volatility window (steps)',
          'no step mode',
          values(
              lambda r: f'{r.dynamics_config().window} / '
              f'{r.dynamics_config().volatility_window_steps}'
          ),
      ),
      (
          'Convergence rule (rho, patience, warm-up epochs)',
          'not published',
          values(
              lambda r: f'{r.dynamics_config().convergence_rho:g}, '
              f'{r.dynamics_config().convergence_patience}, '
              f'{r.dynamics_config().convergence_warmup_epochs}'
          ),
      ),
      ('Accuracy plateau tolerance (points)', 'not published', values(dyn('plateau_delta'))),
      (
          'Null models (surrogates per evaluation, methods)',
          'none',
          values(
              lambda r: f'{r.dynamics_config().surrogates}: '
              f'{r.dynamics_config().surrogate_methods}'
          ),
      ),
      ('Seeds per cell', 'one', str(max(_seed_counts(runs).values(), default=0))),
      ('Epochs', '25 to 58', values(lambda r: r.num_epochs)),
      (
          'Training / test images',
          'full CIFAR (50,000 / 10,000)',
          values(
              lambda r: f'{r.config["data"].get("train_subset") or "all"} / '
              f'{r.config["data"].get("test_subset") or "all"}'
          ),
      ),
      ('Models', 'full widths; pretrained ViT-B/16', values(lambda r: _model_label(r))),
      ('Learning-rate schedule', 'not published', values(cfg('schedule'))),
  ]
  return (
      [
          '## What we changed from the study',
          '',
          'The study does not publish its formulas or several recipe details; each choice '
          'below is a config field (DESIGN.md section 3), and the values are read from the '
          "runs' configs.",
          '',
      ]
      + _table(['choice', 'the study', 'this report'], [list(r) for r in rows])
      + ['']
  )


def _scales_choice(run: runs_lib.Run) -> str:
  dcfg = run.dynamics_config()
  return dcfg.dfa_scales or f'{dcfg.dfa_min_scale} to N//{dcfg.dfa_max_divisor}'


def _model_label(run: runs_lib.Run) -> str:
  args = {k: v for k, v in run.config.get('model_args', {}).items() if v}
  return run.model + (' (' + ', '.join(f'{k}={v}' for k, v in args.items()) + ')' if args else '')


def _seed_counts(runs: Sequence[runs_lib.Run]) -> Dict[Tuple[str, str], int]:
  """Runs per (model, dataset) cell; the constant-rate control runs are a cell apart and are
  not counted as seeds of their cosine cell."""
  counts: Dict[Tuple[str, str], int] = {}
  for run in runs:
    if run.is_control:
      continue
    key = (run.model, run.dataset)
    counts[key] = counts.get(key, 0) + 1
  return counts
