"""The step ring: the tracker's state holds the last K steps only, and the whole run's step
series leave it through drain (dynamics.StepSeries, training/step_series.py) unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamics
from training import step_series

SHAPES = {'00_a': (4, 3), '01_b': (4, 5), '02_c': (4, 2)}
DCFG = dict(
    window=32,
    every_steps=3,
    volatility_window_steps=4,
    dfa_scales='4,8,16',
    surrogates=5,
    probe_mode=False,
)
NUM_STEPS = 100
# 5 surrogates keep the test small; make_tracker's warning that p cannot fall below 0.05 is moot.
pytestmark = pytest.mark.filterwarnings('ignore:dynamics.surrogates=5')


def _taps(t):
  rng = np.random.default_rng(t)
  return {
      k: jnp.asarray(rng.standard_normal(s) + np.sin(0.1 * t * (i + 1)), jnp.float32)
      for i, (k, s) in enumerate(SHAPES.items())
  }


def _run(recent_steps, drain_every=None, num_steps=NUM_STEPS):
  """(tracker, final state, per-step outputs, StepSeries drained every `drain_every` steps)."""
  tracker = dynamics.make_tracker(dict(DCFG, recent_steps=recent_steps), SHAPES, num_steps, seed=1)
  step = jax.jit(tracker.record_step)
  state, outputs, series = tracker.init(), [], dynamics.StepSeries()
  for t in range(num_steps):
    state, out = step(state, _taps(t), t)
    outputs.append(jax.device_get(out))
    if drain_every and (t + 1) % drain_every == 0:
      series.update(tracker, state)
  if drain_every or recent_steps >= num_steps:
    series.update(tracker, state)
  return tracker, state, outputs, series


@pytest.fixture(scope='module')
def unwrapped():
  return _run(recent_steps=256)  # holds the whole run: the reference


def test_a_wrapping_ring_gives_the_same_series_and_outputs_bit_for_bit(unwrapped):
  tracker, state, outputs, _ = unwrapped
  reference = tracker.export(state)
  assert np.isfinite(reference['step_dsi_volatility']).sum() >= 10  # the test has substance
  assert np.isfinite(reference['step_integration_z']).sum() >= 20
  ring_tracker, ring_state, ring_outputs, series = _run(recent_steps=32, drain_every=32)
  assert ring_state['step_recent_signals'].shape == (3, 32)
  exported = ring_tracker.export(ring_state, series.arrays())
  assert set(exported) == set(reference)
  for key in reference:
    np.testing.assert_array_equal(exported[key], reference[key], err_msg=key)
  for a, b in zip(outputs, ring_outputs):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_state_does_not_grow_with_the_run():
  sizes = {}
  for num_steps in (5_000, 450_000, None):
    tracker = dynamics.make_tracker(dict(DCFG, window=256), SHAPES, num_steps)
    state = jax.eval_shape(tracker.init)
    sizes[num_steps] = sum(v.size * v.dtype.itemsize for v in jax.tree.leaves(state))
  assert len(set(sizes.values())) == 1, sizes


def test_a_late_drain_and_a_long_export_say_what_to_do():
  tracker, state, _, _ = _run(recent_steps=40)
  with pytest.raises(ValueError, match=r'holds steps 60\.\.99 only.*steps 0\.\.59 are lost.*40'):
    tracker.drain(state, 0)
  with pytest.raises(ValueError, match='holds only the last 40 of the 100 steps.*StepSeries'):
    tracker.export(state)
  series = dynamics.StepSeries()
  with pytest.raises(ValueError, match='do not continue the series'):
    series.append(tracker.drain(state, 70))
  with pytest.raises(ValueError, match=r'recent_steps=16 is shorter than dynamics.window=32'):
    dynamics.make_tracker(dict(DCFG, recent_steps=16), SHAPES, NUM_STEPS)


def test_without_num_steps_the_tracker_records_and_computes(unwrapped):
  tracker = dynamics.make_tracker(dict(DCFG, recent_steps=32), SHAPES, None, seed=1)
  step = jax.jit(tracker.record_step)
  state, series = tracker.init(), dynamics.StepSeries()
  for t in range(NUM_STEPS):
    state, _ = step(state, _taps(t), t)
    if (t + 1) % 32 == 0:
      series.update(tracker, state)
  series.update(tracker, state)
  reference = unwrapped[0].export(unwrapped[1])
  exported = tracker.export(state, series.arrays())
  for key in ('step_signals', 'step_dsi', 'step_metastability_z', 'step_dsi_volatility'):
    np.testing.assert_array_equal(exported[key], reference[key], err_msg=key)


def test_the_series_file_resumes_cut_back_refilled_and_torn_rows_dropped(tmp_path, unwrapped):
  tracker, state, _, _ = _run(recent_steps=40)  # holds steps 60..99
  reference = unwrapped[0].export(unwrapped[1])
  host = jax.device_get(state)
  series = step_series.StepSeriesFile(str(tmp_path), tracker)
  assert series.row_bytes == 4 * (3 + 13)
  # A file that holds more than the checkpoint (steps trained after it) and a torn last row:
  # resumed at step 100 it is cut back to whole rows, then completed from the ring.
  rows = np.zeros((95, 16), '<f4')
  (tmp_path / step_series.FILENAME).write_bytes(rows.tobytes() + b'\x01\x02\x03')
  series.resume(host, 100)
  assert series.rows == 100
  np.testing.assert_array_equal(
      series.read()['step_signals'][:, 95:], reference['step_signals'][:, 95:]
  )
  # Resumed at step 100 with no file at all: the 60 steps the ring no longer holds are NaN.
  (tmp_path / step_series.FILENAME).unlink()
  series.resume(host, 100)
  recorded = series.read()
  assert np.isnan(recorded['step_signals'][:, :60]).all()
  np.testing.assert_array_equal(recorded['step_signals'][:, 60:], reference['step_signals'][:, 60:])
  np.testing.assert_array_equal(recorded['step_dsi'][60:], reference['step_dsi'][60:])
  # Resumed at an older checkpoint (step 0): everything after it is cut.
  series.resume(tracker.init(), 0)
  assert series.rows == 0
