"""Stability index, rolling volatility, convergence signal and accuracy plateau against
straightforward Python-loop references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import stability

# --------------------------------------------------------------------------- references


def ref_rolling_std(v, window):
  v = np.asarray(v, dtype=np.float64)
  out = np.full(v.shape, np.nan)
  for idx in np.ndindex(*v.shape[:-1]):
    for t in range(window - 1, v.shape[-1]):
      seg = v[idx][t - window + 1 : t + 1]
      if not np.any(np.isnan(seg)):
        out[idx + (t,)] = np.std(seg)
  return out


def ref_convergence(v, rho, patience, warmup):
  running, cond = -math.inf, []
  for t, x in enumerate(v):
    if math.isfinite(x):
      running = max(running, x)
    cond.append(t >= warmup and math.isfinite(x) and running > 0 and x <= rho * running)
  for t in range(len(v) - patience + 1):
    if all(cond[t : t + patience]):
      return t
  return -1


def ref_plateau(acc, delta):
  acc = list(acc)
  best = max(a for a in acc if not math.isnan(a)) if any(not math.isnan(a) for a in acc) else None
  for e in range(len(acc)):
    if best is not None and all(not math.isnan(a) and a >= best - delta for a in acc[e:]):
      return e
  return -1


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# --------------------------------------------------------------------------- stability index


def test_stability_index_forms():
  rng = np.random.default_rng(0)
  i, m = rng.uniform(0.3, 1.5, 7), rng.uniform(0, 0.5, 7)
  np.testing.assert_allclose(stability.stability_index(i, m), i * (1 - m), rtol=1e-6)
  np.testing.assert_allclose(
      stability.stability_index(i, m, 'linear', 2.0, 0.5), 2.0 * i - 0.5 * m, rtol=1e-6
  )
  jitted = jax.jit(stability.stability_index, static_argnums=2)(i, m, 'linear', 2.0, 0.5)
  np.testing.assert_allclose(jitted, 2.0 * i - 0.5 * m, rtol=1e-6)


# --------------------------------------------------------------------------- rolling volatility


@pytest.mark.parametrize('shape, window', [((40,), 5), ((3, 101), 7), ((2, 2, 64), 1), ((10,), 12)])
def test_rolling_volatility_matches_loop(x64, shape, window):
  rng = np.random.default_rng(window)
  v = rng.standard_normal(shape) * np.exp(-np.arange(shape[-1]) / 20) + 3.0
  v[..., shape[-1] // 2] = np.nan  # a NaN poisons exactly the windows that contain it
  got = stability.rolling_volatility(jnp.asarray(v), window)
  assert got.dtype == jnp.float64 and got.shape == shape
  np.testing.assert_allclose(got, ref_rolling_std(v, window), atol=1e-12, rtol=1e-6)


def test_rolling_volatility_float32_and_vmap():
  v = np.random.default_rng(1).standard_normal((4, 80)).astype(np.float32) * 0.01 + 100.0
  got = stability.rolling_volatility(v, 5)
  assert got.dtype == jnp.float32
  want = ref_rolling_std(v, 5)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.nanmax(want))
  vm = jax.vmap(lambda row: stability.rolling_volatility(row, 5))(jnp.asarray(v))
  np.testing.assert_allclose(vm, got, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- convergence signal


def _decaying_then_flat(n_high, n_low, rng):
  high = 1.0 + rng.uniform(0, 1, n_high)
  low = 0.05 * rng.uniform(0.5, 1, n_low)
  return np.concatenate([[np.nan] * 4, high, low])


def test_convergence_on_hand_built_sequences():
  rng = np.random.default_rng(2)
  v = _decaying_then_flat(10, 8, rng)
  first_low = 4 + 10  # NaN warm-up of the rolling window, then the high samples
  assert int(stability.convergence_signal(v)) == first_low == ref_convergence(v, 0.25, 3, 0)
  # warm-up later than the drop: fires at the warm-up itself
  assert int(stability.convergence_signal(v, warmup=first_low + 2)) == first_low + 2
  # never drops below rho * max
  flat = np.linspace(1.0, 0.5, 30)
  assert int(stability.convergence_signal(flat)) == -1 == ref_convergence(flat, 0.25, 3, 0)
  # drops, but patience runs past the end of the series
  short = np.concatenate([np.ones(10), [0.1, 0.1]])
  assert int(stability.convergence_signal(short, patience=3)) == -1
  assert int(stability.convergence_signal(short, patience=2)) == 10
  # patience longer than the series, all-NaN, and a one-sample rebound that resets the run
  assert int(stability.convergence_signal(short, patience=50)) == -1
  assert int(stability.convergence_signal(np.full(6, np.nan))) == -1
  rebound = np.array([1.0, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1])
  assert int(stability.convergence_signal(rebound)) == 4 == ref_convergence(rebound, 0.25, 3, 0)


def test_convergence_matches_loop_on_random_sequences():
  rng = np.random.default_rng(3)
  batch = rng.uniform(0, 1, (32, 40)) * np.exp(-np.arange(40) / rng.uniform(3, 30, (32, 1)))
  batch[rng.uniform(size=batch.shape) < 0.05] = np.nan
  for rho, patience, warmup in [(0.25, 3, 0), (0.5, 1, 5), (0.1, 4, 2)]:
    got = jax.jit(stability.convergence_signal, static_argnums=(2, 3))(
        batch.astype(np.float32), rho, patience, warmup
    )
    want = [ref_convergence(row, rho, patience, warmup) for row in batch.astype(np.float32)]
    assert got.dtype == jnp.int32 and got.shape == (32,)
    np.testing.assert_array_equal(got, want)
  # vmap over the batch equals the batched call (and so the loop above)
  vm = jax.vmap(lambda r: stability.convergence_signal(r, rho, patience, warmup))(batch)
  np.testing.assert_array_equal(vm, want)


def test_convergence_on_rolling_volatility_of_dsi():
  # End to end on the composed pipeline: a DSI series that settles after a noisy start.
  rng = np.random.default_rng(4)
  dsi = np.concatenate([rng.normal(0.5, 0.2, 15), 0.9 + rng.normal(0, 0.005, 25)])
  vol = stability.rolling_volatility(dsi, 5)
  want = ref_convergence(ref_rolling_std(dsi, 5), 0.25, 3, 0)
  assert want > 15
  assert int(stability.convergence_signal(vol)) == want


# --------------------------------------------------------------------------- accuracy plateau


def test_accuracy_plateau_hand_built_and_random():
  acc = np.array([10.0, 40.0, 70.0, 85.0, 88.6, 89.0, 90.0, 89.2, 89.5])
  for delta in (0.0, 0.5, 1.0, 1.5, 100.0):
    assert int(stability.accuracy_plateau(acc, delta)) == ref_plateau(acc, delta)
  assert int(stability.accuracy_plateau(acc, 100.0)) == 0
  nan_mid = acc.copy()
  nan_mid[-2] = np.nan  # a NaN is not within, so only the last epoch remains
  assert int(stability.accuracy_plateau(nan_mid)) == ref_plateau(nan_mid, 1.0) == acc.size - 1
  nan_end = acc.copy()
  nan_end[-1] = np.nan
  assert int(stability.accuracy_plateau(nan_end)) == -1 == ref_plateau(nan_end, 1.0)
  assert int(stability.accuracy_plateau(np.full(4, np.nan))) == -1
  rng = np.random.default_rng(5)
  curves = 100 * (1 - np.exp(-np.arange(30) / rng.uniform(2, 10, (16, 1)))) + rng.normal(
      0, 0.5, (16, 30)
  )
  got = jax.jit(stability.accuracy_plateau)(curves.astype(np.float32), 1.0)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, [ref_plateau(c, 1.0) for c in curves.astype(np.float32)])
  lead = stability.accuracy_plateau(acc) - stability.convergence_signal(
      stability.rolling_volatility(acc, 3)
  )
  assert lead.dtype == jnp.int32


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    'call, field',
    [
        (lambda: stability.stability_index(1.0, 0.1, form='ratio'), 'dynamics.dsi_form'),
        (lambda: stability.rolling_volatility(np.ones(5), 0), 'dynamics.volatility_window'),
        (lambda: stability.rolling_volatility(np.ones(5), 2.5), 'dynamics.volatility_window'),
        (lambda: stability.convergence_signal(np.ones(5), rho=0.0), 'dynamics.convergence_rho'),
        (lambda: stability.convergence_signal(np.ones(5), rho=1.5), 'dynamics.convergence_rho'),
        (
            lambda: stability.convergence_signal(np.ones(5), patience=0),
            'dynamics.convergence_patience',
        ),
        (
            lambda: stability.convergence_signal(np.ones(5), warmup=-1),
            'dynamics.convergence_warmup',
        ),
        (lambda: stability.accuracy_plateau(np.ones(5), delta=-1.0), 'dynamics.plateau_delta'),
    ],
)
def test_invalid_arguments_name_the_field(call, field):
  with pytest.raises(ValueError, match=field):
    call()
