"""DFA (integration) against an independent float64 numpy reference, nolds, and known answers."""

import re
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import dfa

# --------------------------------------------------------------------------- references


def ref_fluctuation(x, scales, order=1):
  """Per-series, per-window np.polyfit DFA (float64), straight from the definition."""
  x = np.asarray(x, dtype=np.float64)
  out = np.empty(x.shape[:-1] + (len(scales),))
  for idx in np.ndindex(*x.shape[:-1]):
    series = x[idx]
    n_time = series.size
    profile = np.cumsum(series - series.mean())
    for s, n in enumerate(scales):
      i = np.arange(n)
      sq = []
      for j in range(n_time // n):
        seg = profile[j * n : (j + 1) * n]
        sq.append(np.mean((seg - np.polyval(np.polyfit(i, seg, order), i)) ** 2))
      out[idx + (s,)] = np.sqrt(np.mean(sq))
  return out


def ref_alpha(x, scales, order=1):
  f = ref_fluctuation(x, scales, order)
  out = np.empty(f.shape[:-1])
  for idx in np.ndindex(*f.shape[:-1]):
    keep = f[idx] != 0
    if keep.sum() < 2 or np.all(np.asarray(x)[idx] == np.asarray(x)[idx][0]):
      out[idx] = np.nan
    else:
      out[idx] = np.polyfit(np.log(np.asarray(scales)[keep]), np.log(f[idx][keep]), 1)[0]
  return out


def ref_zscore(x):
  x = np.asarray(x, dtype=np.float64)
  sd = x.std(axis=-1, keepdims=True)
  const = np.all(x == x[..., :1], axis=-1, keepdims=True)
  return np.where(const, 0.0, (x - x.mean(axis=-1, keepdims=True)) / np.where(const, 1, sd))


def fgn_davies_harte(n, hurst, rng):
  """Fractional Gaussian noise (unit variance) by circulant embedding of its autocovariance."""
  k = np.arange(n + 1, dtype=np.float64)
  h2 = 2.0 * hurst
  gamma = 0.5 * (np.abs(k - 1) ** h2 - 2.0 * k**h2 + (k + 1) ** h2)
  row = np.concatenate([gamma, gamma[-2:0:-1]])
  lam = np.fft.fft(row).real
  assert lam.min() > -1e-9 * lam.max(), 'circulant embedding not non-negative definite'
  m = row.size
  w = rng.standard_normal(m) + 1j * rng.standard_normal(m)
  return np.fft.fft(np.sqrt(np.clip(lam, 0.0, None) / m) * w).real[:n]


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


SHAPES = [(64,), (3, 101), (2, 3, 512)]


def _scales(n):
  return dfa.default_scales(n)


def _fluct_alpha(x, scales, order):
  # One outer jit: one compilation for both results, and it exercises jit-ability.
  both = lambda v: (dfa.fluctuation(v, scales, order), dfa.dfa_exponent(v, scales, order))
  return jax.jit(both)(x)


# --------------------------------------------------------------------------- scales


def test_default_scales_follow_log_grid():
  for n in (64, 101, 512, 2048, 4096):
    got = dfa.default_scales(n)
    grid = np.logspace(np.log10(4), np.log10(n // 4), 12)
    # Rounding to 6 decimals first: logspace returns e.g. 7.9999999 for an exact 8.
    want = tuple(int(v) for v in np.unique(np.floor(np.round(grid, 6))))
    assert got == want
    assert got[-1] == n // 4 and got[0] == 4
    assert list(got) == sorted(set(got))
    assert all(isinstance(s, int) for s in got)


def test_default_scales_too_short_names_fields():
  with pytest.raises(ValueError, match='dfa_min_scale') as e:
    dfa.default_scales(16)
  assert 'n=16' in str(e.value)
  # The suggested length must actually work.
  need = int(re.search(r'at least (\d+) samples', str(e.value)).group(1))
  assert len(dfa.default_scales(need)) >= 3
  assert len(dfa._log_grid(need - 1, 4, 4, 12)) < 3


@pytest.mark.parametrize(
    'kwargs, field',
    [
        (dict(min_scale=1), 'dfa_min_scale'),
        (dict(max_divisor=0), 'dfa_max_divisor'),
        (dict(num=2), 'dfa_num_scales'),
    ],
)
def test_default_scales_bad_arguments(kwargs, field):
  with pytest.raises(ValueError, match=field):
    dfa.default_scales(512, **kwargs)


@pytest.mark.parametrize(
    'scales, order',
    [
        ((4, 8), 1),  # too few
        ((4, 4, 8), 1),  # too few distinct
        ((2, 4, 8), 1),  # 2 points for a line
        ((3, 4, 8), 2),  # 3 points for a parabola
        ((4, 8, 128), 1),  # longer than the series
        ((4.5, 8, 16), 1),  # not integers
    ],
)
def test_validate_scales_rejects(scales, order):
  with pytest.raises(ValueError, match='dynamics.dfa_scales'):
    dfa.validate_scales(scales, 100, order)


def test_validate_order_and_method():
  x = np.zeros((2, 64), np.float32)
  with pytest.raises(ValueError, match='dynamics.dfa_order'):
    dfa.fluctuation(x, (4, 8, 16), order=-1)
  with pytest.raises(ValueError, match='dynamics.integration_method.*per_layer_mean'):
    dfa.integration(x, (4, 8, 16), method='median')


# --------------------------------------------------------------------------- reference agreement


@pytest.mark.parametrize(
    'shape, order', [(SHAPES[0], 1), (SHAPES[1], 1), (SHAPES[2], 1), (SHAPES[1], 2)]
)
def test_matches_reference_float64(x64, shape, order):
  rng = np.random.default_rng(hash((shape, order)) % 2**32)
  x = rng.standard_normal(shape)
  scales = _scales(shape[-1])
  f, a = _fluct_alpha(jnp.asarray(x), scales, order)
  assert f.dtype == jnp.float64 and a.dtype == jnp.float64
  np.testing.assert_allclose(f, ref_fluctuation(x, scales, order), rtol=1e-6)
  np.testing.assert_allclose(a, ref_alpha(x, scales, order), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('shape', SHAPES)
def test_matches_reference_float32(shape):
  rng = np.random.default_rng(len(shape))
  x = rng.standard_normal(shape)
  if len(shape) == 2:
    # A random walk too: its profile drifts far from 0, the hard case for float32.
    x = np.cumsum(x, axis=-1)
  x32 = x.astype(np.float32)
  scales = _scales(shape[-1])
  f, a = _fluct_alpha(x32, scales, 1)
  assert f.dtype == jnp.float32 and a.dtype == jnp.float32
  np.testing.assert_allclose(f, ref_fluctuation(x32, scales), rtol=1e-4)
  np.testing.assert_allclose(a, ref_alpha(x32, scales), rtol=1e-4)


@pytest.mark.parametrize('dtype, rtol', [(np.float64, 1e-6), (np.float32, 1e-4)])
def test_large_windows_match_reference(dtype, rtol):
  # Windows above dfa._DENSE_MAX_SCALE take the factored-projector path.
  scales = (5, 50, dfa._DENSE_MAX_SCALE + 1, 700, 1500)
  x = np.random.default_rng(9).standard_normal((2, 1500)).astype(dtype)
  with jax.enable_x64(dtype == np.float64):
    f, a = _fluct_alpha(x, scales, 1)
  np.testing.assert_allclose(f, ref_fluctuation(x, scales), rtol=rtol)
  np.testing.assert_allclose(a, ref_alpha(x, scales), rtol=rtol)


def test_matches_nolds(x64):
  # requirements-dev.txt installs nolds on Python < 3.12, so there a failed import is an error,
  # not a reason to skip (it once skipped silently when setuptools dropped pkg_resources).
  if sys.version_info >= (3, 12):
    pytest.skip('nolds 0.6.2 is only installed on Python < 3.12 (requirements-dev.txt)')
  import nolds

  rng = np.random.default_rng(7)
  noise_and_walks = rng.standard_normal((4, 512))
  noise_and_walks[2:] = np.cumsum(noise_and_walks[2:], axis=-1)
  for x, order in [(rng.standard_normal((2, 301)), 2), (noise_and_walks, 1)]:
    scales = _scales(x.shape[-1])
    got = dfa.dfa_exponent(jnp.asarray(x), scales, order)
    want = [
        nolds.dfa(row, nvals=scales, overlap=False, order=order, fit_trend='poly', fit_exp='poly')
        for row in x
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_zero_fluctuations_dropped_from_fit():
  # Exact zeros in F only arise for degenerate input, so the masking rule (nolds drops F == 0
  # before the fit) is checked on the fitting step itself with chosen F values.
  scales = (4, 6, 9, 13, 19)
  x = jnp.asarray(np.random.default_rng(5).standard_normal((4, 64)), jnp.float32)
  f = np.array(
      [[0.0, 1.0, 1.7, 2.1, 3.3], [1.0, 0.0, 0.0, 2.5, 4.0], [0.0, 0.0, 0.0, 0.0, 2.0], [0.0] * 5],
      np.float32,
  )
  got = np.asarray(jax.jit(dfa._slope, static_argnums=2)(x, jnp.asarray(f), scales))
  for row, g in zip(f, got):
    keep = row != 0
    if keep.sum() < 2:
      assert np.isnan(g)
    else:
      want = np.polyfit(np.log(np.asarray(scales)[keep]), np.log(row[keep]), 1)[0]
      np.testing.assert_allclose(g, want, rtol=1e-5)


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize(
    'kind, expected',
    [('white', 0.5), ('walk', 1.5), ('fgn', 0.8)],
)
def test_known_exponents(kind, expected):
  n, reps = 2048, 8
  rng = np.random.default_rng({'white': 1, 'walk': 2, 'fgn': 3}[kind])
  if kind == 'fgn':
    x = np.stack([fgn_davies_harte(n, expected, rng) for _ in range(reps)])
  else:
    x = rng.standard_normal((reps, n))
    x = np.cumsum(x, axis=-1) if kind == 'walk' else x
  alpha = np.asarray(dfa.dfa_exponent(x.astype(np.float32), dfa.default_scales(n)))
  # The mean of 8 independent realisations: one series' estimate has a spread of ~0.05 (random
  # walk), which would make a 0.1 band a coin toss over seeds.
  assert abs(alpha.mean() - expected) < 0.1, alpha


def test_fgn_generator_has_target_autocovariance():
  rng = np.random.default_rng(4)
  x = np.stack([fgn_davies_harte(1024, 0.8, rng) for _ in range(64)])
  lag1 = np.mean(x[:, :-1] * x[:, 1:])
  assert abs(x.var() - 1.0) < 0.05
  assert abs(lag1 - 0.5 * (2**1.6 - 2)) < 0.05


# --------------------------------------------------------------------------- degenerate input


@pytest.mark.parametrize('value', [0.0, 0.1, 3.7e3])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_constant_input_is_nan(value, dtype):
  # 0.1 and 3.7e3: the float mean of a constant need not round back to the constant, which
  # leaves roundoff-sized fluctuations that must not turn into a finite alpha.
  with jax.enable_x64(dtype == np.float64), warnings.catch_warnings():
    warnings.simplefilter('error')
    a = dfa.dfa_exponent(np.full((2, 128), value, dtype), (4, 8, 16, 32))
    i = dfa.integration(np.full((2, 128), value, dtype), (4, 8, 16, 32), method='mean_field')
    assert a.dtype == dtype
  assert np.all(np.isnan(np.asarray(a))) and np.isnan(i)


def test_integration_per_layer_mean_skips_constant_tap(x64):
  rng = np.random.default_rng(11)
  x = rng.standard_normal((2, 4, 128))
  x[:, 1] = 2.5
  scales = _scales(128)
  got = dfa.integration(jnp.asarray(x), scales)
  alphas = ref_alpha(x, scales)
  np.testing.assert_allclose(got, np.nanmean(alphas, axis=-1), rtol=1e-6)
  all_const = dfa.integration(jnp.full(x.shape, 1.0), scales)
  assert np.all(np.isnan(all_const))


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_polynomial_input_is_nan(dtype):
  # The profile of a polynomial of degree < order is a polynomial of degree <= order: every F is
  # round-off, and the fit used to return a slope of it (1.50 for arange(256) at order 2).
  n = 256
  t = np.arange(n, dtype=np.float64)
  scales = dfa.default_scales(n)
  cases = [(t, 2), (3.0 - 0.01 * t, 2), (1e-3 * (t - 40.0) ** 2 + t, 3), (t, 3)]
  with jax.enable_x64(dtype == np.float64):
    for x, order in cases:
      sc = tuple(s for s in scales if s >= order + 2)
      assert np.isnan(dfa.dfa_exponent(x.astype(dtype), sc, order)), (order, x[:3])
    # A polynomial of degree = order has a real fluctuation left (profile degree order + 1).
    a = float(dfa.dfa_exponent(t.astype(dtype), scales, 1))
    assert np.isfinite(a) and abs(a - 2.0) < 0.05


def test_integration_nan_tap_and_excluded_count(x64):
  rng = np.random.default_rng(13)
  x = rng.standard_normal((5, 128))
  x[1] = 2.5  # constant
  x[3] = 0.5 * np.arange(128)  # a line: no fluctuation at order 2
  scales = _scales(128)
  got = dfa.integration(jnp.asarray(x), scales, order=2)
  np.testing.assert_allclose(got, ref_alpha(x[[0, 2, 4]], scales, order=2).mean(), rtol=1e-6)
  assert int(dfa.excluded_signals(x, scales, order=2)) == 2
  assert int(dfa.excluded_signals(x, scales, order=2, method='mean_field')) == 1
  # A NaN tap: both methods NaN (per_layer_mean used to drop it silently), and it is not
  # counted as excluded (it is not left out: it makes the score NaN).
  x[4, 7] = np.nan
  for method in ('per_layer_mean', 'mean_field'):
    assert np.isnan(dfa.integration(x, scales, method=method)), method
  assert int(dfa.excluded_signals(x, scales)) == 1


@pytest.mark.parametrize('dtype, rtol', [(np.float64, 1e-6), (np.float32, 1e-4)])
def test_integration_mean_field(dtype, rtol):
  rng = np.random.default_rng(12)
  x = rng.standard_normal((3, 5, 101)) * rng.uniform(0.1, 10, (3, 5, 1)) + 4.0
  x[0, 2] = -1.0  # a constant tap contributes 0 to the field
  x = x.astype(dtype)
  scales = _scales(101)
  with jax.enable_x64(dtype == np.float64):
    got = dfa.integration(x, scales, method='mean_field')
  want = ref_alpha(ref_zscore(x).mean(axis=-2), scales)
  np.testing.assert_allclose(got, want, rtol=rtol)


# --------------------------------------------------------------------------- transforms


def test_vmap_and_jit_match_loop():
  rng = np.random.default_rng(13)
  x = jnp.asarray(rng.standard_normal((2, 3, 128)), jnp.float32)
  scales = _scales(128)
  loop = jnp.stack([dfa.dfa_exponent(tap, scales) for tap in x[0]])
  vm = jax.jit(jax.vmap(lambda tap: dfa.dfa_exponent(tap, scales)))(x[0])
  np.testing.assert_allclose(vm, loop, rtol=1e-6)
  # vmap over a leading batch (e.g. seeds) of the multi-tap score equals the loop over it
  integ = jax.vmap(lambda v: dfa.integration(v, scales, method='mean_field'))(x)
  np.testing.assert_allclose(
      integ, [dfa.integration(v, scales, method='mean_field') for v in x], rtol=1e-6
  )


def test_traced_scales_rejected():
  with pytest.raises(ValueError, match='dynamics.dfa_scales'):
    jax.jit(dfa.fluctuation)(jnp.ones(64), jnp.array([4, 8, 16]))
