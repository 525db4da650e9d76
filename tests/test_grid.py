"""analyze.py ablate: the definition grid, its tidy table, the staged recomputation, refusals."""

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from analysis import ablation, grid, grid_report, runs as runs_lib
from configs import tiny
from dynamics import config as config_lib, offline, offline_grid
from training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  config = tiny.get_config()
  config.num_epochs = 12
  for key, value in dict(
      dfa_min_scale=3,
      dfa_max_divisor=2,
      sliding_epochs=10,
      volatility_window_epochs=3,
      convergence_warmup_epochs=2,
      window=16,
      volatility_window_steps=4,
  ).items():
    config.dynamics[key] = value
  workdir = str(tmp_path_factory.mktemp('grid') / 'run')
  loop.train_and_evaluate(config, workdir)
  return workdir


def test_parse_grid_and_definitions_one_axis_and_product(run_dir):
  base = runs_lib.load_run(run_dir).dynamics_config()
  axes = grid.parse_grid(['dfa_order=1,2', 'dynamics.phase_preprocess=detrend,demean,diff'])
  assert axes == [('dfa_order', ['1', '2']), ('phase_preprocess', ['detrend', 'demean', 'diff'])]
  one = grid.definitions(axes, base, product=False)
  # logged first; the logged values (order 1, detrend) are not repeated.
  assert one == [{}, {'dfa_order': 2}, {'phase_preprocess': 'demean'}, {'phase_preprocess': 'diff'}]
  both = grid.definitions(axes, base, product=True)
  assert len(both) == 2 * 3 and both[0] == {}
  assert {'dfa_order': 2, 'phase_preprocess': 'diff'} in both
  assert grid.parse_grid(['phase_band=0.02,0.2;0.05,0.25']) == [
      ('phase_band', ['0.02,0.2', '0.05,0.25'])
  ]
  for bad in (['dfa_order'], ['dfa_order='], ['a=1', 'a=2'], []):
    with pytest.raises(ValueError):
      grid.parse_grid(bad)


@pytest.mark.parametrize(
    'overrides',
    [
        {},
        {'dsi_form': 'linear', 'dsi_w_metastability': 2.0},  # the DSI stage
        {'convergence_rho': 0.5, 'volatility_window_steps': 3, 'volatility_window_epochs': 2},
        {'window': 12},  # the window stage: the step batched, the probe the logged one
    ],
)
def test_staged_recompute_equals_the_full_recompute(run_dir, overrides):
  """The shortcuts (logged series reused, DSI recombined, detector rerun) give what recomputing
  every metric from the signals gives."""
  run = runs_lib.load_run(run_dir)
  staged = grid.recompute(run, overrides)
  dcfg = ablation.apply_overrides(run.dynamics_config(), overrides)
  key = ablation.surrogate_key(run.dynamics, run.seed)
  full = {
      'step': ablation.step_series(run.dynamics['step_signals'], dcfg, surrogate_key=key),
      'probe': ablation.probe_series(run.dynamics['probe_signals'], dcfg, key),
  }
  for where in ('step', 'probe'):
    for k, v in full[where].items():
      if k.endswith(('dsi_z', 'dsi_p')) and 'dsi_form' in overrides:
        assert np.all(np.isnan(staged[where][k])), k  # the logged null was of the logged DSI
        continue
      a, b = np.asarray(staged[where][k], np.float64), np.asarray(v, np.float64)
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=f'{where} {k}')


def _assert_same_series(batched, single, label):
  assert set(batched) == set(single), label
  for k, v in single.items():
    a, b = np.asarray(batched[k], np.float64), np.asarray(v, np.float64)
    if k.endswith(('_z', '_p')) and 'integration' not in k:
      # phase.min_samples lets 'demean' define the phase metrics at 3 samples, but R(t) of 3
      # zero-mean samples is constant (the analytic signal is one rotating phasor per row): the
      # metastability there is round-off, and so are its z and p.
      history = 'sliding_' if k.startswith('sliding_') else ''
      fine = ~(np.abs(np.asarray(single[history + 'metastability'])) < 1e-6)
      a, b = a[fine], b[fine]
    # z divides the values' round-off (two programs, batched differently) by the spread of 5
    # surrogates: up to about 5e-6 here, as in test_analysis.
    atol = 1e-5 if k.endswith('_z') else 2e-6
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=atol, err_msg=f'{label} {k}')


def test_the_batched_grid_equals_each_definition_alone():
  """offline_grid computes several definitions in one program per shape (surrogates drawn once,
  DFA fluctuations over the union of the scale sets, R(t) once per preprocessing); each
  definition's series, z and p included, equal offline.step_series / probe_series of it alone."""
  rng = np.random.default_rng(7)
  walk = np.cumsum(rng.standard_normal((4, 40)), axis=1)
  step_signals = (0.3 * walk + rng.standard_normal((4, 40))).astype(np.float32)
  probe_signals = (0.3 * walk[:, :9] + rng.standard_normal((4, 9))).astype(np.float32)
  base = dict(
      window=16,
      every_steps=2,
      dfa_min_scale=3,
      dfa_max_divisor=2,
      surrogates=5,
      sliding_epochs=6,
      volatility_window_steps=3,
      volatility_window_epochs=2,
  )
  changes = [
      {},
      {'dfa_min_scale': 4, 'integration_method': 'mean_field'},
      {'phase_preprocess': 'diff', 'phase_edge': 1},
      {'phase_preprocess': 'demean', 'dsi_form': 'linear', 'dsi_w_metastability': 2.0},
      {'window': 12},  # a second group (another window length)
  ]
  cfgs = [config_lib.as_config(dict(base, **c)) for c in changes]
  key = offline.surrogate_key(None, 3)
  step = offline_grid.step_series_grid(step_signals, cfgs, chunk=4, surrogate_key=key)
  probe = offline_grid.probe_series_grid(probe_signals, cfgs, key)
  for change, dcfg, s, p in zip(changes, cfgs, step, probe):
    _assert_same_series(s, offline.step_series(step_signals, dcfg, surrogate_key=key), change)
    assert np.isfinite(s['integration_z']).any() and np.isfinite(s['metastability_p']).any()
    _assert_same_series(p, offline.probe_series(probe_signals, dcfg, key), change)


def test_nulls_at_the_last_window_only(run_dir):
  """The job's shortcut (z and p at the last window) keeps every value and the last z and p."""
  run = runs_lib.load_run(run_dir)
  dcfg = ablation.apply_overrides(run.dynamics_config(), {'window': 12})
  key = ablation.surrogate_key(run.dynamics, run.seed)
  signals = run.dynamics['step_signals']
  (every,) = offline_grid.step_series_grid(signals, [dcfg], chunk=4, surrogate_key=key)
  (last,) = offline_grid.step_series_grid(
      signals, [dcfg], chunk=4, surrogate_key=key, nulls_at='last'
  )
  assert set(every) == set(last)
  final = int(np.flatnonzero(np.isfinite(every['integration']))[-1])
  for k, v in every.items():
    a, b = np.asarray(last[k], np.float64), np.asarray(v, np.float64)
    if k.endswith(('_z', '_p')):
      assert np.isfinite(b[:final]).any() and np.all(np.isnan(a[:final])), k
      a, b = a[final:], b[final:]
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5, err_msg=k)
  with pytest.raises(ValueError, match='nulls_at'):
    offline_grid.step_series_grid(signals, [dcfg], surrogate_key=key, nulls_at='some')


def test_job_writes_a_tidy_table_and_a_short_report(run_dir, tmp_path):
  out = str(tmp_path / 'abl')
  path = grid_report.run_job(
      [run_dir],
      [
          'dfa_max_divisor=2,3',
          'phase_preprocess=detrend,demean,bandpass',
          'convergence_rho=0.25,0.5',
          'reduction=mean,rms',
      ],
      out,
  )
  table = pd.read_parquet(os.path.join(out, 'ablation.parquet'))
  assert list(table.columns) == list(grid.COLUMNS)
  assert set(table.definition) == {
      'logged',
      'dfa_max_divisor=3',
      'phase_preprocess=demean',
      'phase_preprocess=bandpass',
      'convergence_rho=0.5',
  }
  # one row per definition x metric x resolution x history (one run)
  assert len(table) == 5 * len(grid.SERIES) * len(grid.PLACES)
  assert table.groupby(['definition', 'metric', 'resolution', 'history']).size().max() == 1
  csv = pd.read_csv(os.path.join(out, 'ablation.csv'))
  assert len(csv) == len(table)
  step = table[(table.resolution == 'step') & (table.metric == 'integration')].set_index(
      'definition'
  )
  assert step.loc['logged', 'defined'] and step.loc['logged', 'samples'] > 0
  logged = runs_lib.load_run(run_dir).dynamics['step_integration']
  assert step.loc['logged', 'value'] == pytest.approx(float(logged[np.isfinite(logged)][-1]))
  # The phase preprocessing leaves integration alone (up to float32 round-off of a recompute).
  assert step.loc['phase_preprocess=demean', 'value'] == pytest.approx(
      step.loc['logged', 'value'], rel=1e-5
  )
  meta = table[(table.resolution == 'step') & (table.metric == 'metastability')]
  meta = meta.set_index('definition').value
  assert abs(meta['phase_preprocess=demean'] - meta['logged']) > 1e-4
  text = open(path).read()
  assert 'reduction' in text and 'new training run' in text  # listed, not computed
  assert 'not a pre-registered study' in text
  assert os.path.exists(os.path.join(out, 'figures', 'ablation_values.png'))


def test_a_definition_the_series_cannot_support_fails_fast_in_one_line(run_dir, tmp_path):
  out = tmp_path / 'never'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  start = time.perf_counter()
  proc = subprocess.run(
      [
          sys.executable,
          'analyze.py',
          'ablate',
          f'--runs={run_dir}',
          '--grid',
          'window=16,5000',
          f'--out={out}',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      env=env,
      timeout=300,
  )
  elapsed = time.perf_counter() - start
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert 'window=5000' in lines[0] and 'nearest supported value: window=' in lines[0]
  assert not out.exists()
  del elapsed  # timing is for benchmarks, not tests
