"""Dynamical stability index (DSI), its rolling volatility, and the convergence signal.

Definitions (DESIGN.md section 3.4):

- DSI = integration * (1 - metastability) ('product', default) or
  w_integration * integration - w_metastability * metastability ('linear');
- volatility at sample t = standard deviation (ddof 0) of the last ``window`` DSI values;
- convergence signal = first sample after a warm-up at which the volatility is at most rho times
  its running maximum and stays so for ``patience`` samples;
- accuracy plateau = first epoch from which accuracy stays within ``delta`` points of its final
  maximum. Lead time = plateau - convergence (positive: the DSI signal fired first).

Pure ``jnp`` functions, time on the LAST axis, jit- and vmap-compatible (options static).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.arrays import as_real_float

__all__ = [
    'DSI_FORMS',
    'stability_index',
    'rolling_volatility',
    'convergence_signal',
    'accuracy_plateau',
]

DSI_FORMS = ('product', 'linear')


def _is_int(v) -> bool:
  return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _check_real(value, field: str, rule: str, ok) -> None:
  try:
    v = float(value)
  except jax.errors.ConcretizationTypeError:
    # A traced value cannot be checked on the host; it is the caller's responsibility.
    return
  except (TypeError, ValueError) as e:
    raise ValueError(f'dynamics.{field} must be {rule}, got {value!r}.') from e
  if not ok(v):
    raise ValueError(f'dynamics.{field} must be {rule}, got {value!r}.')


def stability_index(
    integration: jax.typing.ArrayLike,
    metastability: jax.typing.ArrayLike,
    form: str = 'product',
    w_integration: float = 1.0,
    w_metastability: float = 1.0,
) -> jax.Array:
  """Dynamical stability index, elementwise.

  'product' (default): integration * (1 - metastability); the weights are unused.
  'linear': w_integration * integration - w_metastability * metastability.

  Args:
    integration: f[...] (broadcastable with metastability).
    metastability: f[...].
    form: 'product' | 'linear' (static).

  Returns:
    f[...] (broadcast shape).
  """
  if form not in DSI_FORMS:
    raise ValueError(f'dynamics.dsi_form must be one of {DSI_FORMS}, got {form!r}.')
  i = as_real_float(integration, 'integration')
  m = as_real_float(metastability, 'metastability')
  if form == 'product':
    return i * (1 - m)
  _check_real(w_integration, 'dsi_w_integration', 'a finite number', math.isfinite)
  _check_real(w_metastability, 'dsi_w_metastability', 'a finite number', math.isfinite)
  return w_integration * i - w_metastability * m


def rolling_volatility(v: jax.typing.ArrayLike, window: int) -> jax.Array:
  """Rolling standard deviation (ddof 0) over the trailing ``window`` samples.

  out[..., t] = std(v[..., t-window+1 : t+1]); NaN where t < window - 1 (not enough history)
  or where that window holds a NaN.

  Args:
    v: f[..., N], time on the last axis.
    window: static int >= 1.

  Returns:
    f[..., N].
  """
  if not _is_int(window) or window < 1:
    raise ValueError(
        f'dynamics.volatility_window must be an integer >= 1 (samples per rolling std), '
        f'got {window!r}.'
    )
  return _rolling_volatility(as_real_float(v, 'v'), int(window))


# Each public function compiles once per (shape, static options): eager op-by-op dispatch of
# these small graphs costs far more than the math.
@functools.partial(jax.jit, static_argnums=1)
def _rolling_volatility(v: jax.Array, window: int) -> jax.Array:
  n = v.shape[-1]
  t = np.arange(n)
  # Gather an explicit [N, window] view rather than differencing cumulative sums: a running
  # sum of squares loses the small late-training variance against the large early one.
  idx = np.clip(t[:, None] - np.arange(window - 1, -1, -1)[None, :], 0, None)
  win = v[..., idx]
  mean = jnp.mean(win, axis=-1, keepdims=True)
  sd = jnp.sqrt(jnp.mean(jnp.square(win - mean), axis=-1))
  has_history = jnp.asarray(t >= window - 1)
  return jnp.where(has_history & ~jnp.any(jnp.isnan(win), axis=-1), sd, jnp.nan)


def convergence_signal(
    volatility: jax.typing.ArrayLike, rho: float = 0.25, patience: int = 3, warmup: int = 0
) -> jax.Array:
  """First sample at which the volatility has settled, or -1.

  M[t] = max of the finite volatility values up to and including t; cond[t] = t >= warmup and
  volatility[t] is finite and M[t] > 0 and volatility[t] <= rho * M[t]. The signal is the first
  t with cond true at t, t+1, ..., t+patience-1 (all of which must exist).

  Args:
    volatility: f[..., N], e.g. ``rolling_volatility`` of the DSI series.
    rho: fraction of the running maximum, in (0, 1].
    patience: static int >= 1.
    warmup: static int >= 0, first sample allowed to fire.

  Returns:
    int32[...] (a scalar for 1-D input): the sample index, -1 if it never fires.
  """
  _check_real(rho, 'convergence_rho', 'a number in (0, 1]', lambda r: 0 < r <= 1)
  if not _is_int(patience) or patience < 1:
    raise ValueError(f'dynamics.convergence_patience must be an integer >= 1, got {patience!r}.')
  if not _is_int(warmup) or warmup < 0:
    raise ValueError(f'dynamics.convergence_warmup must be an integer >= 0, got {warmup!r}.')
  v = as_real_float(volatility, 'volatility')
  if patience > v.shape[-1]:
    return jnp.full(v.shape[:-1], -1, dtype=jnp.int32)
  return _convergence_signal(v, rho, int(patience), int(warmup))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _convergence_signal(v: jax.Array, rho, patience: int, warmup: int) -> jax.Array:
  n = v.shape[-1]
  finite = jnp.isfinite(v)
  running_max = jax.lax.cummax(jnp.where(finite, v, -jnp.inf), axis=v.ndim - 1)
  cond = jnp.asarray(np.arange(n) >= warmup) & finite & (running_max > 0) & (v <= rho * running_max)
  counts = jnp.cumsum(cond.astype(jnp.int32), axis=-1)
  counts = jnp.concatenate([jnp.zeros_like(counts[..., :1]), counts], axis=-1)
  # held[t]: cond true on t .. t+patience-1, for the n-patience+1 starts that fit.
  held = (counts[..., patience:] - counts[..., : n - patience + 1]) == patience
  first = jnp.argmax(held, axis=-1).astype(jnp.int32)
  return jnp.where(jnp.any(held, axis=-1), first, jnp.int32(-1))


def accuracy_plateau(accuracy: jax.typing.ArrayLike, delta: float = 1.0) -> jax.Array:
  """First epoch from which accuracy stays within ``delta`` of its final maximum, or -1.

  Returns the first e with accuracy[e'] >= nanmax(accuracy) - delta for every e' >= e; NaN
  entries count as not within. -1 if no non-empty tail qualifies (the last value is NaN, or all
  are). Lead time of the convergence signal is ``accuracy_plateau(acc) -
  convergence_signal(vol)`` on the same sample axis: positive means the DSI settled first.

  Args:
    accuracy: f[..., E], in percent points.
    delta: tolerance in the same units, >= 0.

  Returns:
    int32[...] (a scalar for 1-D input).
  """
  _check_real(delta, 'plateau_delta', 'a finite number >= 0', lambda d: math.isfinite(d) and d >= 0)
  a = as_real_float(accuracy, 'accuracy')
  if a.shape[-1] == 0:
    raise ValueError('accuracy_plateau needs at least one epoch.')
  return _accuracy_plateau(a, delta)


@jax.jit
def _accuracy_plateau(a: jax.Array, delta) -> jax.Array:
  e = a.shape[-1]
  best = jnp.max(jnp.where(jnp.isnan(a), -jnp.inf, a), axis=-1, keepdims=True)
  within = a >= best - delta  # False for NaN
  # Last epoch that is not within; the plateau starts right after it.
  idx = jnp.asarray(np.arange(e), dtype=jnp.int32)
  last_out = jnp.max(jnp.where(within, -1, idx), axis=-1)
  start = last_out + 1
  return jnp.where(start < e, start, jnp.int32(-1)).astype(jnp.int32)
