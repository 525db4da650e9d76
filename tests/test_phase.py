"""Kuramoto phase metrics against an independent float64 numpy/scipy reference and known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

import dynamics
from dynamics import phase

# --------------------------------------------------------------------------- references


def ref_preprocess(x, method):
  x = np.asarray(x, dtype=np.float64)
  if method == 'detrend':
    r = scipy.signal.detrend(x, axis=-1, type='linear')
  elif method == 'demean':
    r = x - x.mean(axis=-1, keepdims=True)
  else:
    r = np.diff(x, axis=-1)
  sd = r.std(axis=-1, keepdims=True)
  return np.divide(r - r.mean(axis=-1, keepdims=True), sd, out=np.zeros_like(r), where=sd > 0)


def ref_order(x, method):
  z = ref_preprocess(x, method)
  phi = np.angle(scipy.signal.hilbert(z, axis=-1))
  usable = np.any(z != 0, axis=-1, keepdims=True)  # constant rows carry no phase
  return np.abs(np.sum(np.exp(1j * phi) * usable, axis=-2)) / usable.sum(axis=-2)


def ref_sync_meta(x, method, edge):
  r = ref_order(x, method)
  r = r[..., edge : r.shape[-1] - edge]
  return r.mean(axis=-1), r.std(axis=-1)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# --------------------------------------------------------------------------- hilbert


@pytest.mark.parametrize('shape', [(64,), (3, 101), (2, 3, 512), (1,), (2,)])
def test_hilbert_matches_scipy(shape):
  x = np.random.default_rng(sum(shape)).standard_normal(shape)
  want = scipy.signal.hilbert(x, axis=-1)
  with jax.enable_x64(True):
    got = phase.hilbert(jnp.asarray(x))
    assert got.dtype == jnp.complex128
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
  got32 = phase.hilbert(x.astype(np.float32))
  assert got32.dtype == jnp.complex64
  np.testing.assert_allclose(got32, want, atol=1e-4 * np.abs(want).max())


# --------------------------------------------------------------------------- reference agreement


@pytest.mark.parametrize('method', ['detrend', 'demean', 'diff'])
def test_preprocess_matches_reference(x64, method):
  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, 101)) + np.linspace(0, 5, 101) * rng.standard_normal((3, 1))
  got = phase.preprocess(jnp.asarray(x), method)
  assert got.shape == (3, 100 if method == 'diff' else 101)
  np.testing.assert_allclose(got, ref_preprocess(x, method), rtol=1e-6, atol=1e-9)


CASES = [
    ((4, 64), 'detrend', 0),
    ((3, 101), 'demean', 5),
    ((2, 5, 512), 'detrend', 32),
    ((3, 101), 'diff', 3),
]


def _all_metrics(x, method, edge):
  # One outer jit per case: one compilation instead of three, and it exercises jit-ability.
  return jax.jit(
      lambda v: (
          phase.kuramoto_order(v, method),
          phase.synchrony(v, method, edge),
          phase.metastability(v, method, edge),
      )
  )(x)


@pytest.mark.parametrize('shape, method, edge', CASES)
def test_metrics_match_reference_float64(x64, shape, method, edge):
  rng = np.random.default_rng(shape[-1])
  # Random walks plus a trend: strongly non-stationary rows, like layer activations in training.
  x = np.cumsum(rng.standard_normal(shape), axis=-1) + 0.05 * np.arange(shape[-1])
  r, sync, meta = _all_metrics(jnp.asarray(x), method, edge)
  assert r.dtype == jnp.float64
  np.testing.assert_allclose(r, ref_order(x, method), atol=1e-6)
  want_sync, want_meta = ref_sync_meta(x, method, edge)
  np.testing.assert_allclose(sync, want_sync, atol=1e-6)
  np.testing.assert_allclose(meta, want_meta, atol=1e-6)


@pytest.mark.parametrize('shape, method, edge', CASES)
def test_metrics_match_reference_float32(shape, method, edge):
  rng = np.random.default_rng(shape[-1] + 1)
  x = (np.cumsum(rng.standard_normal(shape), axis=-1) + 3.0).astype(np.float32)
  r, sync, meta = _all_metrics(x, method, edge)
  assert r.dtype == jnp.float32
  # R lies in [0, 1], so absolute tolerances are the meaningful ones.
  np.testing.assert_allclose(r, ref_order(x, method), atol=1e-4)
  want_sync, want_meta = ref_sync_meta(x, method, edge)
  np.testing.assert_allclose(sync, want_sync, atol=1e-4)
  np.testing.assert_allclose(meta, want_meta, atol=1e-4)


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize('method', ['detrend', 'demean', 'diff'])
def test_phase_locked_taps_give_r_one(method):
  # Identical phase, different amplitudes, offsets and linear drifts: after preprocessing every
  # row is the same z-scored signal ('diff' and 'demean' leave the drift in, so it is only added
  # for 'detrend').
  n, taps = 256, 6
  rng = np.random.default_rng(2)
  t = np.arange(n)
  carrier = np.sin(2 * np.pi * 0.037 * t + 0.4)
  drift = rng.standard_normal((taps, 1)) * t / n if method == 'detrend' else 0.0
  x = rng.uniform(0.5, 3.0, (taps, 1)) * carrier + rng.normal(0, 5, (taps, 1)) + drift
  r, sync, meta = _all_metrics(x.astype(np.float32), method, 0)
  np.testing.assert_allclose(r, 1.0, atol=1e-5)
  np.testing.assert_allclose(sync, 1.0, atol=1e-5)
  assert float(meta) < 1e-5


@pytest.mark.parametrize('signal', ['sinusoids', 'noise'])
def test_independent_phases_give_low_synchrony(signal):
  taps, n = 64, 512
  rng = np.random.default_rng(3)
  t = np.arange(n)
  if signal == 'sinusoids':
    freq = rng.uniform(0.01, 0.2, (taps, 1))
    x = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, (taps, 1)))
  else:
    x = rng.standard_normal((taps, n))
  sync = float(phase.synchrony(x.astype(np.float32), edge=16))
  # |mean of L independent unit phasors| has mean ~ sqrt(pi / (4 L)); 3 / sqrt(L) is far above.
  assert sync < 3 / np.sqrt(taps)


def test_constant_tap_is_zeros_not_nan():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((3, 64)).astype(np.float32)
  x[1] = 0.1  # its float32 mean does not round back to 0.1 exactly
  x[2] = 2.0 + 0.5 * np.arange(64, dtype=np.float32)  # an exact line: constant after detrending
  z = np.asarray(phase.preprocess(x, 'detrend'))
  assert np.all(z[1:] == 0)
  assert np.all(np.asarray(phase.preprocess(x, 'demean'))[1] == 0)
  assert np.all(np.asarray(phase.preprocess(x, 'diff'))[1] == 0)
  # One tap with a phase is left: R(t) is undefined (it used to be |(u + 1 + 1) / 3|).
  assert np.all(np.isnan(phase.kuramoto_order(x)))
  assert int(phase.excluded_signals(x)) == 2 and int(phase.excluded_signals(x, 'demean')) == 1


def test_constant_taps_excluded_from_phase_metrics():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((5, 64)).astype(np.float32)
  x[[1, 3]] = 0.25
  for f in (phase.synchrony, phase.metastability):
    np.testing.assert_allclose(f(x), f(x[[0, 2, 4]]), rtol=1e-6)
  np.testing.assert_allclose(
      phase.synchrony(x), ref_sync_meta(x[[0, 2, 4]], 'detrend', 0)[0], rtol=1e-4
  )
  # All-constant taps gave synchrony 1 and metastability 0, "perfect synchrony".
  const = np.full((4, 64), 3.0, np.float32)
  assert np.isnan(phase.synchrony(const)) and np.isnan(phase.metastability(const))
  assert int(phase.excluded_signals(x)) == 2


def test_nan_tap_makes_phase_metrics_nan():
  rng = np.random.default_rng(6)
  x = rng.standard_normal((2, 4, 64)).astype(np.float32)
  x[0, 2, 10] = np.nan  # it used to count as a zero-magnitude phasor 1: a finite metastability
  for f in (phase.synchrony, phase.metastability):
    out = np.asarray(f(x))
    assert np.isnan(out[0]) and np.isfinite(out[1])
  assert np.all(np.isnan(phase.kuramoto_order(x)[0]))
  # The same rule as integration: a diverged tap is not averaged away.
  from dynamics import dfa

  for method in ('per_layer_mean', 'mean_field'):
    assert np.isnan(dfa.integration(x[0], (4, 8, 16), method=method))


# --------------------------------------------------------------------------- transforms


def test_vmap_over_batch_and_jit_match_loop():
  x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 4, 100)), jnp.float32)
  loop = jnp.stack([phase.metastability(b, 'detrend', 4) for b in x])
  vm = jax.vmap(lambda b: phase.metastability(b, 'detrend', 4))(x)
  jt = jax.jit(phase.metastability, static_argnums=(1, 2))(x, 'detrend', 4)
  np.testing.assert_allclose(vm, loop, atol=1e-6)
  np.testing.assert_allclose(jt, loop, atol=1e-6)
  # vmap over taps of the per-row transform equals the row loop
  hv = jax.vmap(phase.hilbert)(x[0])
  np.testing.assert_allclose(hv, jnp.stack([phase.hilbert(row) for row in x[0]]), atol=1e-6)


# --------------------------------------------------------------------------- bad arguments


def test_invalid_arguments_name_the_field():
  x = np.zeros((2, 16), np.float32)
  with pytest.raises(ValueError, match='dynamics.phase_preprocess.*detrend'):
    phase.kuramoto_order(x, 'hp_filter')
  with pytest.raises(ValueError, match='dynamics.phase_preprocess'):
    phase.preprocess(x, 'none')
  with pytest.raises(ValueError, match='dynamics.phase_edge'):
    phase.synchrony(x, edge=8)
  with pytest.raises(ValueError, match='dynamics.phase_edge'):
    phase.metastability(x, 'diff', edge=-1)
  with pytest.raises(ValueError, match='dynamics.phase_edge'):
    phase.metastability(x, 'diff', edge=1.5)
  with pytest.raises(ValueError, match=r'\[\.\.\., L, N\]'):
    phase.kuramoto_order(np.zeros(16))


# --------------------------------------------------------------------------- band-limited phase


def ref_bandpass(x, lo, hi):
  """scipy: linear detrend, an FFT brick-wall band-pass (scipy.fft), z-score."""
  import scipy.fft

  r = scipy.signal.detrend(np.asarray(x, np.float64), axis=-1, type='linear')
  freq = np.abs(scipy.fft.fftfreq(r.shape[-1]))
  r = scipy.fft.ifft(scipy.fft.fft(r, axis=-1) * ((freq >= lo) & (freq <= hi)), axis=-1).real
  sd = r.std(axis=-1, keepdims=True)
  return np.divide(r - r.mean(axis=-1, keepdims=True), sd, out=np.zeros_like(r), where=sd > 0)


@pytest.mark.parametrize('n,band', [(256, (0.02, 0.2)), (101, (0.05, 0.5)), (30, (0.0, 0.25))])
def test_bandpass_phase_matches_scipy_float64(x64, n, band):
  del x64
  rng = np.random.default_rng(n)
  t = np.arange(n)
  x = np.cumsum(rng.standard_normal((5, n)), axis=-1) + np.sin(2 * np.pi * 0.1 * t)
  method = phase.bandpass_method(band)
  z = phase.preprocess(jnp.asarray(x), method)
  np.testing.assert_allclose(np.asarray(z), ref_bandpass(x, *band), rtol=0, atol=1e-10)
  # R(t) from scipy.signal.hilbert of the band-passed rows.
  phi = np.angle(scipy.signal.hilbert(ref_bandpass(x, *band), axis=-1))
  r_ref = np.abs(np.exp(1j * phi).mean(axis=0))
  r = phase.kuramoto_order(jnp.asarray(x), method)
  np.testing.assert_allclose(np.asarray(r), r_ref, rtol=0, atol=1e-10)
  sync, meta = phase.synchrony(jnp.asarray(x), method), phase.metastability(jnp.asarray(x), method)
  np.testing.assert_allclose([float(sync), float(meta)], [r_ref.mean(), r_ref.std()], atol=1e-10)


def test_bandpass_keeps_a_phase_locked_band_and_rejects_bad_bands():
  # Two taps locked at 0.1 cycles/sample under independent broadband noise: inside the band
  # the phases lock (synchrony near 1); the broadband phase does not see it as clearly.
  rng = np.random.default_rng(0)
  t = np.arange(512)
  x = np.sin(2 * np.pi * 0.1 * t)[None] + 3.0 * rng.standard_normal((2, 512))
  locked = float(phase.synchrony(jnp.asarray(x, jnp.float32), phase.bandpass_method('0.09,0.11')))
  broad = float(phase.synchrony(jnp.asarray(x, jnp.float32), 'detrend'))
  assert locked > 0.9 and locked > broad + 0.1
  for bad in ('0.3,0.2', '0.1', '0.1,0.7', 'a,b', (-0.1, 0.2)):
    with pytest.raises(ValueError, match='phase_band'):
      phase.bandpass_method(bad)
  with pytest.raises(ValueError, match='phase_band'):
    phase.preprocess(jnp.ones((2, 8)), 'bandpass')


def test_bandpass_in_the_tracker_config_and_validation():
  from dynamics import config as config_lib, tracker as tracker_lib
  from training import validate

  dcfg = config_lib.default_config()
  dcfg.phase_preprocess = 'bandpass'
  dcfg.phase_band = '0.05,0.25'
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  assert spec.phase_preprocess == 'bandpass:0.05,0.25'
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 64)), jnp.float32)
  m = tracker_lib.compute_metrics(x, spec, (4, 8, 16))
  assert np.isfinite(float(m['metastability']))
  np.testing.assert_allclose(
      float(m['synchrony']), float(phase.synchrony(x, 'bandpass:0.05,0.25')), rtol=1e-6
  )
  dcfg.phase_band = '0.3,0.1'
  with pytest.raises(ValueError, match='phase_band'):
    validate.validate_dynamics(dcfg, num_devices=1)


def test_phase_metrics_are_nan_where_the_series_is_too_short_for_r_to_change():
  """Detrended, 3 samples leave one degree of freedom: every signal is a multiple of
  (1, -2, 1), R(t) is constant, and the functions return synchrony = |mean sign| and
  metastability 0 whatever the signals. The tracker reports NaN there (phase.min_samples),
  and from the minimum on a value that depends on the signals."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
  assert float(phase.metastability(x, 'detrend')) < 1e-6  # the artefact itself
  spec = dynamics.MetricSpec(surrogates=0)
  # Demeaned at 3 samples, or differenced at 4, the analytic signal has one positive
  # frequency: every phase turns at the same rate, R(t) is constant as well.
  assert float(phase.metastability(x, 'demean')) < 1e-6
  x4 = jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)
  assert float(phase.metastability(x4, 'diff')) < 1e-6
  assert phase.min_samples('detrend') == 4 and phase.min_samples('demean') == 4
  assert phase.min_samples('diff') == 5 and phase.min_samples('detrend', edge=1) == 5
  for method in ('detrend', 'demean'):
    short = dynamics.compute_metrics(x, spec._replace(phase_preprocess=method), None)
    assert np.isnan(short['metastability']) and np.isnan(short['synchrony']), method
    enough = dynamics.compute_metrics(x4, spec._replace(phase_preprocess=method), None)
    assert float(enough['metastability']) > 1e-3, method
  short = dynamics.compute_metrics(x4, spec._replace(phase_preprocess='diff'), None)
  assert np.isnan(short['metastability'])
  x5 = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
  enough = dynamics.compute_metrics(x5, spec._replace(phase_preprocess='diff'), None)
  assert float(enough['metastability']) > 1e-3
