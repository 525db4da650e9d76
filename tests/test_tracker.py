"""The dynamics tracker: wiring of the metric functions into step and probe mode."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamics
from configs import tiny
from dynamics import (
    config as dconfig,
    dfa,
    nulls,
    phase,
    signals,
    stability,
    tracker as tracker_lib,
)
from training import loop, programs

TAP_SHAPES = {
    '00_stem': (4, 8, 8, 3),
    '01_block1': (4, 8, 8, 5),
    '02_block2': (4, 4, 4, 6),
    '03_block3': (4, 2, 2, 7),
    '04_head': (4, 9),
}


def _dcfg(**overrides):
  c = dconfig.default_config()
  c.window = 32
  c.volatility_window_steps = 4
  c.sliding_epochs = 12
  c.volatility_window_epochs = 3
  c.convergence_warmup_epochs = 0
  for k, v in overrides.items():
    c[k] = v
  return c


def _random_taps(rng, t):
  """Taps whose statistics drift with t, so the signals are not white noise."""
  out = {}
  for i, (name, shape) in enumerate(TAP_SHAPES.items()):
    drift = np.sin(0.05 * t * (i + 1)) + 0.01 * t
    out[name] = jnp.asarray(rng.standard_normal(shape) + drift, jnp.float32)
  return out


def _run_steps(tracker, num_steps, seed=0):
  state = tracker.init()
  step_fn = jax.jit(tracker.record_step)
  rng = np.random.default_rng(seed)
  outputs = []
  for t in range(num_steps):
    state, out = step_fn(state, _random_taps(rng, t), jnp.int32(t))
    outputs.append(jax.device_get(out))
  return state, outputs, step_fn


def test_reductions_match_numpy():
  rng = np.random.default_rng(0)
  taps = {k: rng.standard_normal(s).astype(np.float32) for k, s in TAP_SHAPES.items()}
  mean = signals.reduce_taps(taps, 'mean')
  rms = signals.reduce_taps(taps, 'rms')
  np.testing.assert_allclose(
      mean, [taps[k].astype(np.float64).mean() for k in sorted(taps)], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
      rms, [np.sqrt((taps[k].astype(np.float64) ** 2).mean()) for k in sorted(taps)], rtol=1e-5
  )
  projections = signals.make_projections([s[-1] for s in TAP_SHAPES.values()], 3, seed=7)
  proj = signals.reduce_taps(taps, 'proj:3', projections)
  expected = np.concatenate(
      [
          p @ taps[k].reshape(-1, taps[k].shape[-1]).astype(np.float64).mean(0)
          for p, k in zip(projections, sorted(taps))
      ]
  )
  np.testing.assert_allclose(proj, expected, rtol=1e-4, atol=1e-6)
  for p in projections:
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-6)
  again = signals.make_projections([s[-1] for s in TAP_SHAPES.values()], 3, seed=7)
  assert all(np.array_equal(a, b) for a, b in zip(projections, again))


@pytest.mark.parametrize('every', [1, 3])
def test_step_mode_equals_functions_on_the_last_window(every):
  dcfg = _dcfg(every_steps=every)
  num_steps = 48
  tracker = tracker_lib.make_tracker(dcfg, TAP_SHAPES, num_steps, num_epochs=1)
  state, outputs, step_fn = _run_steps(tracker, num_steps)
  assert step_fn._cache_size() == 1  # one compilation for every step
  recorded = tracker.export(state)  # the ring holds every step of so short a run
  series = np.asarray(recorded['step_signals'])
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  scales = dfa.default_scales(
      dcfg.window, dcfg.dfa_min_scale, dcfg.dfa_max_divisor, dcfg.dfa_num_scales
  )
  computed = []
  for t in range(num_steps):
    due = t + 1 >= dcfg.window and (t + 1) % every == 0
    got = float(recorded['step_dsi'][t])
    if not due:
      assert np.isnan(got), t  # nothing over unfilled or skipped samples
      assert np.isnan(outputs[t]['dynamics/integration'])
      continue
    computed.append(t)
    x = jnp.asarray(series[:, t - dcfg.window + 1 : t + 1])
    integ = dfa.integration(x, scales, spec.dfa_order, spec.integration_method)
    meta = phase.metastability(x, spec.phase_preprocess, spec.phase_edge)
    sync = phase.synchrony(x, spec.phase_preprocess, spec.phase_edge)
    dsi = stability.stability_index(integ, meta)
    np.testing.assert_allclose(recorded['step_integration'][t], integ, rtol=1e-5)
    np.testing.assert_allclose(recorded['step_metastability'][t], meta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(recorded['step_synchrony'][t], sync, rtol=1e-5)
    np.testing.assert_allclose(got, dsi, rtol=1e-5)
    np.testing.assert_allclose(outputs[t]['dynamics/dsi'], dsi, rtol=1e-5)
  # Volatility: std of the last `volatility_window_steps` computed DSI values.
  dsi_computed = np.asarray(recorded['step_dsi'])[computed].astype(np.float64)
  w = dcfg.volatility_window_steps
  vol = np.asarray(recorded['step_dsi_volatility'])[computed]
  for i in range(len(computed)):
    if i + 1 < w:
      assert np.isnan(vol[i])
    else:
      np.testing.assert_allclose(
          vol[i], dsi_computed[i + 1 - w : i + 1].std(), rtol=1e-4, atol=1e-7
      )
  # The online convergence state equals the offline detector over the computed samples.
  offline = int(
      stability.convergence_signal(
          jnp.asarray(vol), dcfg.convergence_rho, dcfg.convergence_patience, 0
      )
  )
  expected = computed[offline] if offline >= 0 else -1
  assert int(state['step_convergence']) == expected


def test_step_and_probe_nulls_equal_surrogate_test():
  num = 9
  dcfg = _dcfg(surrogates=num, surrogate_methods='synchrony=shift')
  tracker = tracker_lib.make_tracker(dcfg, TAP_SHAPES, 40, num_epochs=30, seed=5)
  state, outputs, _ = _run_steps(tracker, 40)
  recorded = tracker.export(state)
  np.testing.assert_array_equal(state['surrogate_key'], jax.random.key_data(jax.random.key(5)))
  scales = dfa.default_scales(dcfg.window)
  stats = {
      'integration': (lambda x: dfa.integration(x, scales), 'shuffle'),
      'synchrony': (phase.synchrony, 'shift'),
      'metastability': (phase.metastability, 'phase'),
  }
  for t in (31, 39):
    x = jnp.asarray(np.asarray(recorded['step_signals'])[:, t - 31 : t + 1])
    key = nulls.evaluation_key(state['surrogate_key'], 0, t)
    for name, (fn, method) in stats.items():
      want = dynamics.surrogate_test(
          fn, x, jax.random.fold_in(key, nulls.SURROGATE_METHODS.index(method)), num, method
      )
      for s in ('z', 'p'):
        np.testing.assert_allclose(
            recorded[f'step_{name}_{s}'][t], want[s], rtol=1e-4, atol=1e-5, err_msg=(name, s, t)
        )
        np.testing.assert_allclose(
            outputs[t][f'dynamics/{name}_{s}'], want[s], rtol=1e-4, atol=1e-5
        )
    assert 1 / (1 + num) <= float(recorded['step_dsi_p'][t]) <= 1
  assert np.isnan(recorded['step_integration_z'][30])  # not computed before the window fills
  # A pure function of (seed, step) (checked above); another seed draws other nulls.
  other_tracker = tracker_lib.make_tracker(dcfg, TAP_SHAPES, 40, 30, seed=6)
  other, _, _ = _run_steps(other_tracker, 40)
  assert not np.array_equal(
      other_tracker.export(other)['step_synchrony_z'][31:], recorded['step_synchrony_z'][31:]
  )
  # Probe mode: the expanding history's nulls at the last epoch.
  rng = np.random.default_rng(1)
  for _ in range(6):  # integration needs 24 epochs: these test the phase nulls
    state = tracker.probe_update(state, jnp.asarray(rng.standard_normal(5), jnp.float32))
  history = state['probe_signals'][:, :6]
  key = nulls.evaluation_key(state['surrogate_key'], 1, 5)
  want = dynamics.surrogate_test(
      phase.metastability,
      history,
      jax.random.fold_in(key, nulls.SURROGATE_METHODS.index('phase')),
      num,
      'phase',
  )
  np.testing.assert_allclose(state['probe_metastability_p'][5], want['p'], rtol=1e-6)
  scalars, _ = tracker.summarize_probe(state)
  assert 'dynamics_epoch/metastability_z' in scalars
  assert 'dynamics_epoch_sliding/synchrony_p' in scalars


def test_surrogate_config_errors():
  with pytest.raises(ValueError, match='surrogate_methods'):
    tracker_lib.make_tracker(_dcfg(surrogate_methods='synchrony=fourier'), TAP_SHAPES, 40, 1)
  with pytest.raises(ValueError, match='surrogate_methods'):
    tracker_lib.make_tracker(_dcfg(surrogate_methods='accuracy=shuffle'), TAP_SHAPES, 40, 1)
  state = tracker_lib.make_tracker(_dcfg(surrogates=0), TAP_SHAPES, 40, 1).init()
  assert 'surrogate_key' not in state and 'step_integration_z' not in state


def test_online_convergence_matches_offline_on_a_decaying_volatility():
  """Drive the state machine with a DSI that swings then settles, so the signal fires."""
  dcfg = _dcfg(volatility_window_steps=3, convergence_patience=3, convergence_rho=0.3)
  tracker = tracker_lib.make_tracker(dcfg, TAP_SHAPES, 200, num_epochs=1)
  rng = np.random.default_rng(1)
  state = tracker.init()
  step_fn = jax.jit(tracker.record_step)
  for t in range(200):
    amplitude = 3.0 * np.exp(-t / 40.0)
    taps = {
        k: jnp.asarray(
            rng.standard_normal(s) * (1 + amplitude * rng.standard_normal())
            + amplitude * rng.standard_normal(),
            jnp.float32,
        )
        for k, s in TAP_SHAPES.items()
    }
    state, _ = step_fn(state, taps, jnp.int32(t))
  vol = tracker.export(state)['step_dsi_volatility']
  offline = int(
      stability.convergence_signal(
          jnp.asarray(vol), dcfg.convergence_rho, dcfg.convergence_patience, 0
      )
  )
  assert offline >= 0, 'test signal should converge'
  assert int(state['step_convergence']) == offline


def test_probe_mode_equals_functions_on_the_history():
  # Smaller DFA scales than the default so that 16 epochs reach them (the probe update
  # compiles once for all 16: tests/test_probe_compile_once.py).
  dcfg = _dcfg(dfa_min_scale=3, dfa_max_divisor=2, sliding_epochs=10)
  epochs = 16
  tracker = tracker_lib.make_tracker(dcfg, TAP_SHAPES, 10, num_epochs=epochs)
  state = tracker.init()
  rng = np.random.default_rng(2)
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  for e in range(epochs):
    state = tracker.probe_update(state, tracker.reduce(_random_taps(rng, 3 * e)))
    history = np.asarray(state['probe_signals'])[:, : e + 1]
    for prefix, hist in (
        ('probe_', history),
        ('probe_sliding_', history[:, max(0, e + 1 - dcfg.sliding_epochs) :]),
    ):
      scales = tracker_lib.resolve_scales(dcfg, hist.shape[-1])
      if scales is None:
        assert np.isnan(state[prefix + 'integration'][e])
      else:
        expected = dfa.integration(jnp.asarray(hist), scales)
        np.testing.assert_allclose(state[prefix + 'integration'][e], expected, rtol=1e-5)
      if hist.shape[-1] >= tracker_lib.min_phase_samples(spec):
        np.testing.assert_allclose(
            state[prefix + 'metastability'][e],
            phase.metastability(jnp.asarray(hist)),
            rtol=1e-5,
            atol=1e-6,
        )
  # 16 epochs reach the scales 3..8 (3 scales need 12 samples), expanding and sliding.
  assert np.isfinite(state['probe_sliding_integration'][epochs - 1])
  assert np.isfinite(state['probe_integration'][epochs - 1])
  dsi = np.asarray(state['probe_dsi'], np.float64)
  vol = np.asarray(state['probe_dsi_volatility'])
  w = dcfg.volatility_window_epochs
  for e in range(epochs):
    window = dsi[e + 1 - w : e + 1] if e + 1 >= w else None
    if window is None or not np.isfinite(window).all():
      assert np.isnan(vol[e])
    else:
      np.testing.assert_allclose(vol[e], window.std(), rtol=1e-4, atol=1e-7)
  scalars, hists = tracker.summarize_probe(state)
  assert 'dynamics_epoch/integration' in scalars and 'dynamics_epoch/alpha' in hists
  exported = tracker.export(state)
  assert exported['probe_signals'].shape == (len(TAP_SHAPES), epochs)
  assert list(exported['tap_names']) == sorted(TAP_SHAPES)


def test_step_window_too_short_for_scales_is_a_config_error():
  with pytest.raises(ValueError, match='dfa'):
    tracker_lib.make_tracker(_dcfg(window=12), TAP_SHAPES, 10, num_epochs=1)


def test_quickstart_style_run_writes_dynamics(tmp_path):
  config = tiny.get_config()
  config.num_epochs = 3  # 24 steps, window 16: step metrics from step 16 on
  result = loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  keys = set().union(*records)
  for name in (
      'integration',
      'metastability',
      'synchrony',
      'dsi',
      'dsi_volatility',
      'integration_z',
      'integration_p',
      'synchrony_z',
      'metastability_p',
      'dsi_z',
  ):
    assert f'dynamics/{name}' in keys, name
  assert 'dynamics/alpha' in keys and isinstance(
      next(r['dynamics/alpha'] for r in records if 'dynamics/alpha' in r), list
  )
  exported = np.load(tmp_path / 'dynamics.npz')
  assert exported['step_signals'].shape == (9, 24)
  assert exported['probe_signals'].shape == (9, 3)
  assert exported['step_integration_p'].shape == (24,) and 'surrogate_key' in exported
  assert len(exported['tap_names']) == 9
  # The series drained to dynamics_steps.f32 are what was exported, and equal the ring's.
  assert (tmp_path / 'dynamics_steps.f32').stat().st_size == 24 * 4 * (9 + 13)
  ring = np.asarray(result['state'].dynamics['step_recent_signals'])
  np.testing.assert_array_equal(exported['step_signals'], ring[:, :24])


def _compiled_train_step(config):
  exp = programs.build(
      config,
      4,
      (32, 32, 3),
      jnp.zeros(3),
      jnp.ones(3),
      steps_per_epoch=8,
      total_steps=8,
      mesh=programs.make_mesh(),
  )
  state = exp.init_state(0)
  images = jnp.zeros((8, 32, 32, 3), jnp.uint8)
  labels = jnp.zeros((8,), jnp.int32)
  return exp.train_step.lower(state, images, labels).compile().as_text().lower()


def test_disabled_dynamics_compile_no_metric_work():
  """With dynamics off the compiled train step holds no FFT (Hilbert) nor the tap series."""
  config = tiny.get_config()
  on = _compiled_train_step(config)
  config.dynamics.enabled = False
  off = _compiled_train_step(config)
  assert 'fft' in on
  assert 'fft' not in off
  assert len(off) < len(on)
