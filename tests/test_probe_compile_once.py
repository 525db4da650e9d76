"""The epoch probe compiles once (issue 27, item 4) and equals the sliced computation.

The probe's history is a buffer of the run's num_epochs samples with a traced length
(dynamics/prefix.py). These tests check that the metrics of the first n samples equal today's
computation on the history sliced to n (`tracker.compute_metrics` / `probe_histories`, one
program per n) in float64, that `probe_update` jits inside a user's own evaluation step with
one compilation for every epoch, and that a 90-epoch history traces the metric computation
once (it traced it 90 times when the history length was static).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import config as dconfig, dfa, nulls, offline, prefix, tracker as tracker_lib

TAP_SHAPES = {'00_stem': (4, 6), '01_block': (4, 3, 5), '02_block': (4, 2, 2, 7), '03_head': (4, 9)}


def _dcfg(**overrides):
  c = dconfig.default_config()
  c.window = 32
  c.volatility_window_steps = 4
  c.sliding_epochs = 10
  c.volatility_window_epochs = 3
  c.convergence_warmup_epochs = 0
  c.dfa_min_scale = 3
  c.dfa_max_divisor = 2
  c.surrogates = 4
  c.step_mode = False
  for k, v in overrides.items():
    c[k] = v
  return c


def _signals(num_signals, length, seed=0):
  """Random walks (long-range correlated) and one white-noise row, float64."""
  rng = np.random.default_rng(seed)
  x = np.cumsum(rng.standard_normal((num_signals, length)), axis=-1)
  x[1] = rng.standard_normal(length)
  return x


def _plan(dcfg, length):
  return prefix.ScalePlan(tuple(tracker_lib.resolve_scales(dcfg, n) for n in range(length + 1)))


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# A definition per phase preprocessing, with every surrogate method among them.
DEFINITIONS = [
    {},  # detrend; shuffle / phase / phase (the defaults)
    dict(
        phase_preprocess='demean',
        integration_method='mean_field',
        surrogate_methods='integration=iaaft,synchrony=phase_joint,metastability=shift',
    ),
    dict(
        phase_preprocess='diff',
        phase_edge=1,
        dfa_order=2,
        dfa_min_scale=4,
        dsi_form='linear',
        surrogate_methods='synchrony=shift,metastability=iaaft',
    ),
    dict(phase_preprocess='bandpass', phase_band='0.1,0.4', dfa_scales='3,4,6'),
]


@pytest.mark.parametrize('overrides', DEFINITIONS, ids=['detrend', 'demean', 'diff', 'bandpass'])
def test_prefix_metrics_equal_the_sliced_history_float64(x64, overrides):
  dcfg = _dcfg(**overrides)
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  length = 14
  x = jnp.asarray(_signals(4, length))
  plan = _plan(dcfg, length)
  base = jax.random.key_data(jax.random.key(3))
  traces = []

  @jax.jit
  def masked(x, n, key):
    traces.append(1)
    return prefix.compute_metrics(x, n, spec, plan, key)

  phase_min = tracker_lib.min_phase_samples(spec)
  dfa_min = next(n for n, s in enumerate(plan.sets) if s is not None)
  # The shortest histories (1, the phase minimum, the DFA minimum), and longer ones.
  for n in sorted({1, 2, phase_min, phase_min + 1, dfa_min, dfa_min + 1, length}):
    key = nulls.evaluation_key(base, 1, n - 1)
    want = tracker_lib.compute_metrics(x[:, :n], spec, plan.sets[n], key)
    got = masked(x, n, key)
    assert set(got) == set(want)
    degenerate = bool(np.asarray(want['metastability']) < 1e-9)
    for name in want:
      a, b = np.asarray(want[name]), np.asarray(got[name])
      if degenerate and name.endswith(('_z', '_p')) and 'integration' not in name:
        # R(t) is constant in exact arithmetic here (a band that keeps one frequency: every
        # phase turns at the same rate), so metastability is 0 and the phase
        # nulls tie with the values: their z and p are decided by round-off in either form.
        # The values themselves agree (below).
        continue
      np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg=f'{name} at n={n}')
      np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=f'{name} at n={n}')
  assert len(traces) == 1


def test_dfa_prefix_uses_the_same_scales_and_windows(x64):
  dcfg = _dcfg()
  length = 40
  x = jnp.asarray(_signals(3, length, seed=1))
  plan = _plan(dcfg, length)
  union = plan.union
  member, _ = prefix._plan_tables(plan)  # pylint: disable=protected-access
  fluct = jax.jit(lambda x, n: prefix.fluctuation(x, n, union, 1))
  alpha = jax.jit(lambda x, n: prefix.dfa_exponent(x, n, plan, 1))
  for n in range(1, length + 1):
    scales = tracker_lib.resolve_scales(dcfg, n)
    assert tuple(s for s, m in zip(union, member[n]) if m) == (scales or ())
    if scales is None:
      assert np.isnan(alpha(x, n)).all()
      continue
    f = np.asarray(fluct(x, n))[:, member[n]]
    np.testing.assert_allclose(f, dfa.fluctuation(x[:, :n], scales), rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        alpha(x, n), dfa.dfa_exponent(x[:, :n], scales), rtol=1e-12, atol=1e-13
    )
  # What lies past n does not enter.
  y = x.at[:, 25:].set(jnp.nan)
  np.testing.assert_array_equal(fluct(y, 25), fluct(x, 25))


@pytest.mark.parametrize('method', nulls.SURROGATE_METHODS)
def test_surrogates_of_the_prefix_are_the_same_draws(x64, method):
  length = 12
  x = jnp.asarray(_signals(3, length, seed=2))
  key = jax.random.key(7)
  draw = jax.jit(lambda x, n: prefix.surrogates(key, x, n, 5, method))
  for n in (1, 2, 3, 4, 7, 12):
    got = np.asarray(draw(x, n))
    want = np.asarray(nulls.surrogates(key, x[:, :n], 5, method))
    if method in ('shuffle', 'shift', 'iaaft'):  # permutations of the samples: exact
      np.testing.assert_array_equal(got[..., :n], want)
    else:
      np.testing.assert_allclose(got[..., :n], want, rtol=0, atol=1e-12)
    assert not got[..., n:].any()
  assert draw._cache_size() == 1  # pylint: disable=protected-access


def _taps(rng, e):
  return {
      name: jnp.asarray(rng.standard_normal(shape) + np.sin(0.3 * e * (i + 1)), jnp.float32)
      for i, (name, shape) in enumerate(TAP_SHAPES.items())
  }


def test_probe_update_jits_inside_a_user_eval_step_with_one_compile():
  epochs = 14
  dcfg = _dcfg()
  tracker = tracker_lib.make_tracker(dcfg, TAP_SHAPES, 10, num_epochs=epochs, seed=2)
  traces = []

  @jax.jit
  def eval_step(state, taps):  # a user's evaluation step, the probe update inside it
    traces.append(1)
    return tracker.probe_update(state, tracker.reduce(taps))

  rng = np.random.default_rng(0)
  taps = [_taps(rng, e) for e in range(epochs)]
  state = tracker.init()
  eager = tracker.init()
  for e in range(epochs):
    state = eval_step(state, taps[e])
    eager = tracker.probe_update(eager, tracker.reduce(taps[e]))
  assert len(traces) == 1 and eval_step._cache_size() == 1  # pylint: disable=protected-access
  assert int(state['probe_count']) == epochs
  for name in state:
    np.testing.assert_array_equal(np.asarray(state[name]), np.asarray(eager[name]), err_msg=name)
  # The reference: today's computation on the history sliced to each length.
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  history = state['probe_signals']
  for count in (3, 5, 9, epochs):  # 3: below the phase minimum of 4 (phase.min_samples)
    want = tracker_lib.probe_histories(history[:, :count], dcfg, spec, state['surrogate_key'])
    for h, m in want.items():
      for name in tracker_lib.METRICS + tracker_lib.NULL_KEYS:
        np.testing.assert_allclose(
            state[f'probe_{h}{name}'][count - 1],
            m[name],
            rtol=1e-4,
            atol=1e-5,
            err_msg=(h, name, count),
        )
  # Eagerly, a sample past num_epochs is an error; inside a jit it is dropped.
  with pytest.raises(ValueError, match='More probe samples'):
    tracker.probe_update(state, tracker.reduce(taps[0]))
  after = eval_step(state, taps[0])
  for name in state:
    np.testing.assert_array_equal(np.asarray(after[name]), np.asarray(state[name]), err_msg=name)
  assert len(traces) == 1


def test_a_90_epoch_history_traces_the_probe_metrics_once(monkeypatch):
  epochs = 90
  traces = []
  compute = prefix.compute_metrics

  def counting(*args, **kwargs):
    traces.append(1)  # a Python side effect: runs when a program is traced, not when it runs
    return compute(*args, **kwargs)

  monkeypatch.setattr(prefix, 'compute_metrics', counting)
  dcfg = _dcfg(surrogates=2)
  tracker = tracker_lib.make_tracker(dcfg, TAP_SHAPES, 10, num_epochs=epochs, seed=1)
  state = tracker.init()
  rng = np.random.default_rng(3)
  for e in range(epochs):
    state = tracker.probe_update(state, tracker.reduce(_taps(rng, e)))
  # One program for the run: two histories (expanding, sliding) traced once each.
  assert len(traces) == 2, len(traces)
  assert int(state['probe_count']) == epochs
  first = tracker_lib.min_dfa_length(dcfg) - 1  # the first epoch with DFA scales
  assert np.isnan(np.asarray(state['probe_integration'])[:first]).all()
  assert np.isfinite(np.asarray(state['probe_integration'])[first:]).all()
  assert np.isfinite(np.asarray(state['probe_dsi_volatility'])[first + 2 :]).all()
  # The offline recomputation (the ablation's) is one program over all 90 epochs, and gives
  # what the run logged.
  traces.clear()
  exported = tracker.export(state)
  series = offline.probe_series(exported['probe_signals'], dcfg, exported['surrogate_key'])
  assert len(traces) == 2
  for key, value in series.items():
    logged = exported[f'probe_{key}'] if key != 'alphas' else exported['probe_alphas']
    if key.endswith(('_z', '_p')):
      # z over 2 surrogates amplifies float32 round-off. (The 3-epoch history, where R(t) is
      # constant in exact arithmetic, is NaN in both: phase.min_samples.)
      np.testing.assert_allclose(value, logged, rtol=1e-3, atol=1e-5, err_msg=key)
    else:
      np.testing.assert_allclose(value, logged, rtol=1e-5, atol=1e-6, err_msg=key)
