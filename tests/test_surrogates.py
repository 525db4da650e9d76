"""Surrogates and the surrogate test against known answers (DESIGN 3.6)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dynamics
from dynamics import nulls as surr
from tests.test_dfa import fgn_davies_harte

KEY = jax.random.key(0)


def _noise(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize(
    'method,n',
    [
        ('shuffle', 64),
        ('phase', 64),
        ('phase', 65),
        ('phase_joint', 65),
        ('iaaft', 64),
        ('shift', 65),
    ],
)
def test_shape_dtype_and_determinism(method, n):
  x = _noise((2, 3, n))
  y = dynamics.surrogates(KEY, x, 4, method)
  assert y.shape == (4, 2, 3, n) and y.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(y)))
  # Surrogate j is a function of (key, j) only: the first two of four equal a draw of two.
  np.testing.assert_array_equal(y[:2], dynamics.surrogates(KEY, x, 2, method))
  assert not np.array_equal(np.asarray(y[0]), np.asarray(y[1]))
  # A different key gives different surrogates; the data are changed.
  assert not np.array_equal(
      np.asarray(y), np.asarray(dynamics.surrogates(jax.random.key(1), x, 4, method))
  )
  assert not np.array_equal(np.asarray(y[0]), np.asarray(x))


@pytest.mark.parametrize('method', surr.SURROGATE_METHODS)
def test_jit_and_vmap(method):
  x = _noise((3, 4, 32))
  keys = jax.random.split(KEY, 3)
  f = jax.jit(jax.vmap(lambda k, s: surr.surrogates(k, s, 2, method)))
  out = f(keys, x)
  for i in range(3):
    np.testing.assert_allclose(
        out[i], surr.surrogates(keys[i], x[i], 2, method), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize('n', [64, 65, 7, 8])
def test_phase_keeps_amplitudes_and_mean(n):
  x = _noise((5, n), seed=n) + jnp.arange(5, dtype=jnp.float32)[:, None]
  y = np.asarray(dynamics.surrogates(KEY, x, 20, 'phase'), np.float64)
  xs = np.asarray(x, np.float64)
  a, b = np.abs(np.fft.rfft(xs)), np.abs(np.fft.rfft(y))
  # 1e-5 of the row's spectral scale (a bin near zero has no meaningful relative error).
  assert np.all(np.abs(b - a) < 1e-5 * a.max(-1, keepdims=True)), np.abs(b - a).max()
  np.testing.assert_allclose(
      y.mean(-1),
      np.broadcast_to(xs.mean(-1), y.shape[:-1]),
      rtol=0,
      atol=4 * np.finfo(np.float32).eps * np.abs(xs).max(),
  )
  # Phases do change (apart from DC and Nyquist), independently per signal.
  angles = np.angle(np.fft.rfft(y)[..., 1 : (n - 1) // 2 + 1]) - np.angle(
      np.fft.rfft(xs)[..., 1 : (n - 1) // 2 + 1]
  )
  assert np.std(np.angle(np.exp(1j * (angles[:, 0] - angles[:, 1])))) > 0.5


def test_phase_nyquist_and_dc_kept_exactly():
  n = 16
  t = np.arange(n)
  x = jnp.asarray(np.stack([np.cos(np.pi * t), 3.0 + 0 * t]), jnp.float32)  # Nyquist; DC
  y = dynamics.surrogates(KEY, x, 3, 'phase')
  np.testing.assert_allclose(y, np.broadcast_to(x, y.shape), atol=1e-6)


def test_phase_joint_keeps_cross_spectra():
  x = _noise((4, 128), seed=3)
  y = np.asarray(dynamics.surrogates(KEY, x, 10, 'phase_joint'), np.float64)
  fx, fy = np.fft.rfft(np.asarray(x, np.float64)), np.fft.rfft(y)
  cross_x = fx[:, None] * np.conj(fx[None, :])  # [S, S, F]
  cross_y = fy[:, :, None] * np.conj(fy[:, None, :])
  scale = np.abs(cross_x).max()
  assert np.abs(np.abs(cross_y) - np.abs(cross_x)).max() < 1e-5 * scale
  # Even the cross-phases are kept, which independent phases destroy.
  assert np.abs(cross_y - cross_x).max() < 1e-5 * scale
  fi = np.fft.rfft(np.asarray(dynamics.surrogates(KEY, x, 10, 'phase'), np.float64))
  cross_i = fi[:, :, None] * np.conj(fi[:, None, :])
  assert np.abs(cross_i - cross_x).max() > 0.1 * scale


@pytest.mark.parametrize('method', ['shuffle', 'iaaft'])
@pytest.mark.parametrize('n', [64, 65])
def test_sorted_values_kept_exactly(method, n):
  x = jnp.exp(_noise((3, n), seed=n))  # skewed, so a Gaussian rescaling would not pass
  y = dynamics.surrogates(KEY, x, 6, method, iterations=5)
  np.testing.assert_array_equal(np.sort(y, -1), np.broadcast_to(np.sort(x, -1), y.shape))


def test_iaaft_approaches_spectrum():
  rng = np.random.default_rng(4)
  x = jnp.asarray(
      np.exp(np.stack([fgn_davies_harte(256, 0.9, rng) for _ in range(3)])), jnp.float32
  )
  a = np.abs(np.fft.rfft(np.asarray(x, np.float64)))

  def err(y):
    b = np.abs(np.fft.rfft(np.asarray(y, np.float64)))
    return np.linalg.norm(b - a, axis=-1) / np.linalg.norm(a, axis=-1)

  shuffled = err(dynamics.surrogates(KEY, x, 8, 'shuffle')).mean()
  one = err(dynamics.surrogates(KEY, x, 8, 'iaaft', iterations=1)).mean()
  many = err(dynamics.surrogates(KEY, x, 8, 'iaaft', iterations=50)).mean()
  assert many < one < shuffled and many < 0.25 * shuffled


def test_shift_is_circular_roll():
  x = _noise((4, 33))
  y = np.asarray(dynamics.surrogates(KEY, x, 5, 'shift'))
  for row in range(4):
    rolls = [np.asarray(jnp.roll(x[row], -k)) for k in range(33)]
    for j in range(5):
      assert any(np.array_equal(y[j, row], r) for r in rolls)


def test_shuffle_destroys_long_range_correlation():
  rng = np.random.default_rng(5)
  n = 1024
  x = jnp.asarray(np.stack([fgn_davies_harte(n, 0.9, rng) for _ in range(8)]), jnp.float32)
  scales = dynamics.default_scales(n)
  original = float(jnp.mean(dynamics.dfa_exponent(x, scales)))
  shuffled = float(
      jnp.mean(dynamics.dfa_exponent(dynamics.surrogates(KEY, x, 16, 'shuffle'), scales))
  )
  phased = float(jnp.mean(dynamics.dfa_exponent(dynamics.surrogates(KEY, x, 16, 'phase'), scales)))
  assert abs(original - 0.9) < 0.1
  assert abs(shuffled - 0.5) < 0.05
  # Phase randomisation keeps the spectrum and therefore alpha: the wrong null for integration.
  assert abs(phased - original) < 0.05


def test_null_stats_formula():
  null = jnp.asarray([0.1, 0.2, 0.3, 0.4, np.nan, 0.5], jnp.float32)
  out = surr.null_stats(jnp.float32(0.35), null, 'greater')
  finite = np.asarray([0.1, 0.2, 0.3, 0.4, 0.5])
  np.testing.assert_allclose(out['p'], (1 + 2) / (1 + 5))
  np.testing.assert_allclose(out['null_mean'], finite.mean(), rtol=1e-6)
  np.testing.assert_allclose(out['null_std'], finite.std(ddof=1), rtol=1e-6)
  np.testing.assert_allclose(out['z'], (0.35 - finite.mean()) / finite.std(ddof=1), rtol=1e-5)
  np.testing.assert_allclose(surr.null_stats(jnp.float32(0.35), null, 'less')['p'], 4 / 6)
  # two-sided: |null - 0.3| >= |0.45 - 0.3| for 0.1 and 0.5 (0.2 and 0.4 are nearer).
  np.testing.assert_allclose(surr.null_stats(jnp.float32(0.45), null, 'two-sided')['p'], 3 / 6)
  assert np.isnan(surr.null_stats(jnp.float32(np.nan), null)['p'])
  assert np.isnan(surr.null_stats(jnp.float32(1.0), jnp.full(4, np.nan))['p'])
  with pytest.raises(ValueError, match='alternative'):
    surr.null_stats(0.0, null, 'above')


def test_surrogate_test_matches_its_draws():
  x = _noise((6, 64), seed=7)
  out = dynamics.surrogate_test(dynamics.synchrony, x, KEY, 49, 'phase')
  null = np.asarray(jax.vmap(dynamics.synchrony)(dynamics.surrogates(KEY, x, 49, 'phase')))
  value = float(dynamics.synchrony(x))
  np.testing.assert_allclose(out['value'], value, rtol=1e-6)
  np.testing.assert_allclose(out['p'], (1 + np.sum(null >= value)) / 50, rtol=1e-6)
  np.testing.assert_allclose(out['null_mean'], null.mean(), rtol=1e-5)
  np.testing.assert_allclose(out['null_std'], null.std(ddof=1), rtol=1e-4)


def test_bad_arguments_named():
  with pytest.raises(ValueError, match='method'):
    dynamics.surrogates(KEY, _noise((2, 8)), 3, 'fourier')
  with pytest.raises(ValueError, match='num'):
    dynamics.surrogates(KEY, _noise((2, 8)), 0, 'phase')
  with pytest.raises(ValueError, match='iterations'):
    dynamics.surrogates(KEY, _noise((2, 8)), 2, 'iaaft', iterations=0)
  with pytest.raises(ValueError, match='real'):
    dynamics.surrogates(KEY, jnp.ones((2, 8), jnp.complex64), 2, 'phase')


def test_calibration_on_independent_noise():
  # Independent Gaussian noise is, given its amplitudes, a phase surrogate of itself, so the
  # test is exact: P(p <= 0.05) = 5 / 100 with 99 surrogates.
  trials, num = 400, 99
  x = _noise((trials, 8, 64), seed=8)
  keys = jax.random.split(jax.random.key(9), trials)
  test = jax.jit(
      jax.vmap(lambda k, s: surr.surrogate_test(dynamics.synchrony, s, k, num, 'phase')['p'])
  )
  p = np.asarray(test(keys, x))
  rate = np.mean(p <= 0.05)
  assert abs(rate - 0.05) < 3 * np.sqrt(0.05 * 0.95 / trials), rate
  # p is roughly uniform: also right at 0.5.
  assert abs(np.mean(p <= 0.5) - 0.5) < 3 * np.sqrt(0.25 / trials)


def test_power_on_phase_locked_sinusoids():
  rng = np.random.default_rng(10)
  t = np.arange(256)
  lags = rng.uniform(0, 0.5, (8, 1))
  x = jnp.asarray(
      np.sin(2 * np.pi * t / 32 + lags) + 0.5 * rng.standard_normal((8, 256)), jnp.float32
  )
  for method in ('phase', 'shift'):
    out = dynamics.surrogate_test(dynamics.synchrony, x, KEY, 199, method)
    assert float(out['p']) <= 0.01 and float(out['z']) > 3, (method, out)


def test_integration_against_shuffle_null():
  rng = np.random.default_rng(11)
  x = jnp.asarray(np.stack([fgn_davies_harte(512, 0.9, rng) for _ in range(4)]), jnp.float32)
  stat = functools.partial(dynamics.integration, scales=dynamics.default_scales(512))
  out = dynamics.surrogate_test(stat, x, KEY, 99, 'shuffle')
  assert float(out['p']) <= 0.01 and abs(float(out['null_mean']) - 0.5) < 0.05
  white = dynamics.surrogate_test(stat, _noise((4, 512), seed=12), KEY, 99, 'shuffle')
  assert float(white['p']) > 0.05


# ------------------------------------------------------- the tracker's nulls (compute_metrics)


def _reference_nulls(x, spec, scales, key):
  """The tracker's z and p written out plainly: the values of x alone; the surrogates of each
  null method (method i of SURROGATE_METHODS from fold_in(key, i)); each metric vmapped over
  its method's surrogates."""
  from dynamics import dfa, tracker as tracker_lib  # pylint: disable=g-import-not-at-top

  values = tracker_lib.compute_metrics(x, spec, scales)
  methods = surr.parse_methods(spec.surrogate_methods)
  num = int(spec.surrogates)
  draws = {
      method: surr.surrogates(jax.random.fold_in(key, index), x, num, method)
      for index, method in enumerate(surr.SURROGATE_METHODS)
      if method in methods.values()
  }
  order = spec.dfa_order
  null = {
      'integration': jax.vmap(lambda s: dfa.integration(s, scales, order, spec.integration_method))(
          draws[methods['integration']]
      ),
      'synchrony': jax.vmap(
          lambda s: dynamics.synchrony(s, spec.phase_preprocess, spec.phase_edge)
      )(draws[methods['synchrony']]),
      'metastability': jax.vmap(
          lambda s: dynamics.metastability(s, spec.phase_preprocess, spec.phase_edge)
      )(draws[methods['metastability']]),
  }
  return values, surr.null_z_and_p(values, null, spec)


@pytest.mark.parametrize(
    'methods',
    [surr.DEFAULT_METHODS]
    + [f'integration={m},synchrony={m},metastability={m}' for m in surr.SURROGATE_METHODS]
    + ['integration=iaaft,synchrony=shift,metastability=phase_joint'],
)
def test_tracker_nulls_equal_the_plain_vmapped_nulls(methods):
  # compute_metrics computes the values and the nulls in one program (nulls.values_and_nulls,
  # which keeps its compile cheap); its z and p are those of the plain computation, and its
  # values those of compute_metrics without a key, up to float32 round-off (XLA rounds a
  # batch's reductions differently: z moves by round-off over the nulls' spread).
  from dynamics import tracker as tracker_lib  # pylint: disable=g-import-not-at-top

  spec = tracker_lib.MetricSpec(surrogates=9, surrogate_methods=methods)
  scales = (4, 8, 16)
  rng = np.random.default_rng(13)
  x = jnp.asarray(rng.standard_normal((2, 5, 64)).cumsum(-1) * 0.2, jnp.float32)
  x = x + _noise((2, 5, 64), seed=14)
  keys = jax.vmap(lambda s: surr.evaluation_key(jnp.asarray([0, 7], jnp.uint32), 0, s))(
      jnp.arange(2)
  )
  got = jax.jit(lambda x, k: tracker_lib.compute_metrics(x, spec, scales, k))(x, keys)
  for i in range(2):  # a batch axis: each evaluation draws from its own key
    values, want = jax.jit(lambda x, k: _reference_nulls(x, spec, scales, k))(x[i], keys[i])
    for name, value in values.items():
      np.testing.assert_allclose(got[name][i], value, rtol=1e-6, atol=1e-6, err_msg=name)
    for name, value in want.items():
      assert np.isfinite(value), name
      if name.endswith('_p'):
        np.testing.assert_array_equal(got[name][i], value, err_msg=name)
      else:
        np.testing.assert_allclose(got[name][i], value, rtol=1e-4, atol=1e-4, err_msg=name)
