"""Integration: detrended fluctuation analysis (DFA) of layer time series.

Definition (DESIGN.md section 3.2), for one series x[0..N-1] and window sizes S:

1. profile y = cumsum(x - mean(x));
2. for each n in S, split y into floor(N/n) non-overlapping windows from the start (the tail
   that does not fill a window is dropped) and remove a least-squares polynomial of order q in
   the within-window index i = 0..n-1 from each window;
3. F(n) = sqrt(mean of the squared residuals over all windows of size n);
4. alpha = ordinary least-squares slope of ln F(n) against ln n.

This equals ``nolds.dfa(x, nvals=S, overlap=False, order=q, fit_trend='poly', fit_exp='poly')``
(nolds 0.6.2), including its rule of dropping sizes with F(n) == 0 from the fit.

Everything here is a pure ``jnp`` function of an array whose LAST axis is time, so it composes with
``jax.jit`` (``scales`` and ``order`` are static) and ``jax.vmap``. The window sizes are host-side
Python ints because they fix array shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.arrays import as_real_float

__all__ = [
    'INTEGRATION_METHODS',
    'default_scales',
    'validate_scales',
    'fluctuation',
    'dfa_exponent',
    'integration',
    'excluded_signals',
]

INTEGRATION_METHODS = ('per_layer_mean', 'mean_field')


def _is_int(v) -> bool:
  return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _validate_order(order) -> int:
  if not _is_int(order) or order < 0:
    raise ValueError(
        f'dynamics.dfa_order must be a non-negative integer (polynomial order of the '
        f'per-window trend; 1 = linear, the default), got {order!r}.'
    )
  return int(order)


def default_scales(
    n: int, min_scale: int = 4, max_divisor: int = 4, num: int = 12
) -> tuple[int, ...]:
  """Default DFA window sizes for a series of length ``n`` (host-side numpy).

  The distinct integers of ``floor(logspace(log10(min_scale), log10(n // max_divisor), num))``,
  sorted ascending. A relative nudge of 1e-9 is added before the floor so that grid points that
  are integers in exact arithmetic (notably the end point ``n // max_divisor``) are not lost to
  ``logspace`` rounding them to e.g. 7.999999999.

  Raises:
    ValueError: if fewer than 3 distinct sizes result (the series is too short for DFA).
  """
  if not _is_int(min_scale) or min_scale < 2:
    raise ValueError(
        f'dynamics.dfa_min_scale must be an integer >= 2 (smallest DFA window), '
        f'got {min_scale!r}.'
    )
  if not _is_int(max_divisor) or max_divisor < 1:
    raise ValueError(
        f'dynamics.dfa_max_divisor must be an integer >= 1 (largest DFA window is '
        f'n // dfa_max_divisor), got {max_divisor!r}.'
    )
  if not _is_int(num) or num < 3:
    raise ValueError(
        f'dynamics.dfa_num_scales must be an integer >= 3 (points of the log-spaced window '
        f'grid), got {num!r}.'
    )
  n = int(n)
  scales = _log_grid(n, int(min_scale), int(max_divisor), int(num))
  if len(scales) < 3:
    need = _min_length(int(min_scale), int(max_divisor), int(num))
    raise ValueError(
        f'DFA needs at least 3 distinct window sizes, but a series of length n={n} gives '
        f'{len(scales)} ({list(scales)}) on the log grid from dynamics.dfa_min_scale={min_scale} '
        f'to n // {max_divisor} = {n // max_divisor}. Use a window/history of at least {need} '
        f'samples, or a smaller dynamics.dfa_min_scale, or set dynamics.dfa_scales explicitly.'
    )
  return scales


def _log_grid(n: int, min_scale: int, max_divisor: int, num: int) -> tuple[int, ...]:
  hi = n // max_divisor
  if hi < min_scale:
    return ()
  grid = np.logspace(np.log10(min_scale), np.log10(hi), num)
  return tuple(int(v) for v in np.unique(np.floor(grid * (1.0 + 1e-9))))


def _min_length(min_scale: int, max_divisor: int, num: int) -> int:
  # Only reached on the error path; a linear search keeps the rule in one place (_log_grid).
  n = max_divisor * min_scale
  while len(_log_grid(n, min_scale, max_divisor, num)) < 3:
    n += 1
  return n


def validate_scales(scales: Sequence[int], n: int, order: int = 1) -> tuple[int, ...]:
  """Check DFA window sizes for a series of length ``n``; return them as a tuple of ints.

  Requires at least 3 distinct sizes (a slope from 2 points has no residual to judge it by),
  every size >= order + 2 (a window must hold more points than the order + 1 polynomial
  coefficients, else its residuals are identically 0), and every size <= n.
  """
  order = _validate_order(order)
  try:
    if isinstance(scales, (str, bytes)):
      raise TypeError('a string is not a sequence of window sizes')
    out = tuple(int(s) for s in scales)
    ok = all(float(s) == int(s) for s in scales)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError) as e:
    # Window sizes fix array shapes, so they cannot be traced values.
    raise ValueError(
        f'dynamics.dfa_scales must be a static sequence of integer window sizes '
        f'(Python ints), got {scales!r}.'
    ) from e
  if not ok:
    raise ValueError(f'dynamics.dfa_scales must be integers, got {scales!r}.')
  if len(set(out)) < 3:
    raise ValueError(
        f'dynamics.dfa_scales needs at least 3 distinct window sizes, got {list(out)}.'
    )
  if min(out) < order + 2:
    raise ValueError(
        f'dynamics.dfa_scales: every window size must be >= dfa_order + 2 = {order + 2} '
        f'(more points than polynomial coefficients), got {list(out)}.'
    )
  if max(out) > n:
    raise ValueError(
        f'dynamics.dfa_scales: largest window size {max(out)} exceeds the series length '
        f'n={n}; use a longer window/history or smaller sizes (got {list(out)}).'
    )
  return out


# Up to this window size the within-window cumsum and the detrending are one dense n x n matrix
# (a single matmul per scale: fastest to compile and to run, MXU-friendly); above it the matrix,
# baked into the program as a constant, grows as n^2, so the factored form is used instead.
_DENSE_MAX_SCALE = 512


@functools.lru_cache(maxsize=64)
def _trend_basis(n: int, order: int) -> np.ndarray:
  """Orthonormal basis Q (float64, [n, order+1]) of polynomials of degree <= order on 0..n-1.

  I - Q Q^T is the residual projector I - V (V^T V)^{-1} V^T of the Vandermonde matrix V of
  arange(n). Building it from Legendre columns on [-1, 1] spans the same space but keeps the
  QR well conditioned for large n and order.
  """
  t = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
  q, _ = np.linalg.qr(np.polynomial.legendre.legvander(t, order))
  return q


@functools.lru_cache(maxsize=64)
def _detrend_cumsum_matrix(n: int, order: int) -> np.ndarray:
  """Float64 [n, n] matrix D with (w @ D)[i] = residual of cumsum(w) after the order-q fit."""
  q = _trend_basis(n, order)
  projector = np.eye(n) - q @ q.T
  # w @ triu(ones) is the within-window cumsum; the projector is symmetric.
  return np.triu(np.ones((n, n))) @ projector


def _window_residuals(w: jax.Array, n: int, order: int) -> jax.Array:
  """w: f[..., k, n], k windows of n centred samples -> the residuals of each window's profile
  (its within-window cumsum) after the least-squares polynomial of order `order` in i = 0..n-1.

  Each window of the global profile is the within-window cumsum plus a constant offset, and
  constants lie in the trend space, so the residuals are identical; working per window keeps
  float32 magnitudes small where the global profile wanders far from 0. HIGHEST: TPU/GPU
  default f32 dots drop to bf16/tf32 and residuals are small differences of large numbers.
  (Shared by `_fluctuation` and the masked prefix form, dynamics/prefix.py.)
  """
  if n <= _DENSE_MAX_SCALE:
    d = jnp.asarray(_detrend_cumsum_matrix(n, order), dtype=w.dtype)
    return jnp.matmul(w, d, precision=jax.lax.Precision.HIGHEST)
  # Same projector applied in factored form, y - Q (Q^T y): O(n) memory and work.
  y = jnp.cumsum(w, axis=-1)
  q = jnp.asarray(_trend_basis(n, order), dtype=w.dtype)
  coef = jnp.matmul(y, q, precision=jax.lax.Precision.HIGHEST)
  return y - jnp.matmul(coef, q.T, precision=jax.lax.Precision.HIGHEST)


def fluctuation(x: jax.typing.ArrayLike, scales: Sequence[int], order: int = 1) -> jax.Array:
  """DFA fluctuation function F(n) (steps 1-3 of the definition).

  y = cumsum(x - mean(x)); for each n in ``scales`` the first floor(N/n)*n samples of y are cut
  into windows of n, the least-squares polynomial of order ``order`` in i = 0..n-1 is removed
  from each, and F(n) = sqrt(mean of squared residuals over all windows).

  Args:
    x: f[..., N], time on the last axis.
    scales: static sequence of window sizes (Python ints), see ``validate_scales``.
    order: static polynomial order of the per-window trend.

  Returns:
    f[..., S] with S = len(scales), in the order given.
  """
  x = as_real_float(x, 'DFA')
  order = _validate_order(order)
  return _fluctuation(x, validate_scales(scales, x.shape[-1], order), order)


# Compiled as one program per (shape, scales, order): called eagerly, the per-scale reshapes
# would otherwise compile dozens of small ops one by one.
@functools.partial(jax.jit, static_argnums=(1, 2))
def _fluctuation(x: jax.Array, scales: tuple[int, ...], order: int) -> jax.Array:
  n_time = x.shape[-1]
  lead = x.shape[:-1]
  xc = x - jnp.mean(x, axis=-1, keepdims=True)
  out = []
  for n in scales:
    k = n_time // n
    w = xc[..., : k * n].reshape(*lead, k, n)
    out.append(jnp.sqrt(jnp.mean(jnp.square(_window_residuals(w, n, order)), axis=(-2, -1))))
  return jnp.stack(out, axis=-1)


def dfa_exponent(x: jax.typing.ArrayLike, scales: Sequence[int], order: int = 1) -> jax.Array:
  """DFA scaling exponent alpha: OLS slope of ln F(n) on ln n (see ``fluctuation``).

  White noise gives alpha ~ 0.5, a random walk ~ 1.5, fractional Gaussian noise ~ its Hurst
  exponent. As in nolds 0.6.2, sizes with F(n) == 0 are left out of the fit, and so are sizes
  whose F(n) is at round-off level (<= 16 eps n max|x - mean|: the profile is exactly a
  polynomial of degree <= order there); fewer than 2 remaining sizes, or a constant series,
  give NaN (never an error or inf). A NaN or inf sample gives NaN.

  Args:
    x: f[..., N], time on the last axis.
    scales: static sequence of window sizes (Python ints).
    order: static polynomial order of the per-window trend.

  Returns:
    f[...], one alpha per series.
  """
  x = as_real_float(x, 'DFA')
  order = _validate_order(order)
  return _dfa_exponent(x, validate_scales(scales, x.shape[-1], order), order)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _dfa_exponent(x: jax.Array, scales: tuple[int, ...], order: int) -> jax.Array:
  return _slope(x, _fluctuation(x, scales, order), scales)


# F(n) of an input whose profile is exactly a polynomial of degree <= order (a constant, or a
# polynomial of degree < order, e.g. arange(256) at order 2) is round-off: measured at most
# 0.4 * eps * n * max|x - mean| for float32 and float64; 16 times that is far below any real
# signal's F (white noise: ~0.3 * std * sqrt(n)).
_ROUNDOFF_FACTOR = 16


def _slope(
    x: jax.Array,
    f: jax.Array,
    scales: tuple[int, ...],
    valid: jax.Array | None = None,
    member: jax.Array | None = None,
) -> jax.Array:
  """alpha from F(n) (step 4). valid (bool[N]) and member (bool[S]), for the masked prefix form
  (dynamics/prefix.py): only the samples where valid holds are the series, and only the sizes
  where member holds are its scales; None: all of them."""
  log_n = jnp.asarray(np.log(np.asarray(tuple(scales), dtype=np.float64)), dtype=x.dtype)
  # A size whose F is at round-off level carries no fluctuation: treated as F == 0, which
  # nolds drops from the fit (a NaN F stays in and propagates, which is what we want too).
  if valid is None:
    size = jnp.max(jnp.abs(x - jnp.mean(x, axis=-1, keepdims=True)), axis=-1, keepdims=True)
    # A constant series has F = 0 in exact arithmetic, but x - mean(x) need not round to
    # exactly 0, which would leave roundoff-sized F values and a meaningless slope.
    constant = jnp.all(x == x[..., :1], axis=-1)
  else:
    count_t = jnp.maximum(jnp.sum(valid), 1).astype(x.dtype)
    mean = jnp.sum(jnp.where(valid, x, 0), axis=-1, keepdims=True) / count_t
    size = jnp.max(jnp.where(valid, jnp.abs(x - mean), 0), axis=-1, keepdims=True)
    constant = jnp.all(jnp.where(valid, x == x[..., :1], True), axis=-1)
  floor = (
      _ROUNDOFF_FACTOR
      * jnp.finfo(x.dtype).eps
      * jnp.asarray(np.asarray(scales, np.float64), x.dtype)
      * size
  )
  keep = ~(f <= floor)
  if member is not None:
    keep = keep & member
  w = keep.astype(x.dtype)
  count = jnp.sum(w, axis=-1)
  safe_count = jnp.maximum(count, 1)
  log_f = jnp.where(keep, jnp.log(jnp.where(keep, f, 1)), 0)
  u_bar = jnp.sum(w * log_n, axis=-1, keepdims=True) / safe_count[..., None]
  v_bar = jnp.sum(w * log_f, axis=-1, keepdims=True) / safe_count[..., None]
  du = w * (log_n - u_bar)
  sxx = jnp.sum(du * du, axis=-1)
  sxy = jnp.sum(du * (log_f - v_bar), axis=-1)
  slope = sxy / jnp.where(sxx > 0, sxx, 1)
  return jnp.where((count >= 2) & ~constant, slope, jnp.nan)


def _zscore_time(x: jax.Array) -> jax.Array:
  xc = x - jnp.mean(x, axis=-1, keepdims=True)
  sd = jnp.sqrt(jnp.mean(jnp.square(xc), axis=-1, keepdims=True))
  # Exact test, not sd == 0: a constant row's mean may not round to the value itself.
  constant = jnp.all(x == x[..., :1], axis=-1, keepdims=True)
  return jnp.where(constant, 0, xc / jnp.where(constant, 1, sd))


def integration(
    x: jax.typing.ArrayLike, scales: Sequence[int], order: int = 1, method: str = 'per_layer_mean'
) -> jax.Array:
  """Integration score of a set of tap signals.

  ``per_layer_mean`` (default): mean over taps of ``dfa_exponent`` of each tap, leaving out
  finite taps whose alpha is NaN (no fluctuation: constant, or exactly polynomial); NaN if every
  tap is left out.
  ``mean_field``: ``dfa_exponent`` of the mean over taps of the z-scored tap signals (z-score
  along time, ddof 0; a constant tap contributes 0, i.e. is left out).
  Both: a tap with a NaN or inf sample makes the score NaN (a diverged signal is not data to
  average over). ``excluded_signals`` counts the taps left out.

  Args:
    x: f[..., L, N], L taps, time on the last axis.
    scales: static sequence of window sizes (Python ints).
    order: static polynomial order of the per-window trend.
    method: 'per_layer_mean' or 'mean_field' (static).

  Returns:
    f[...].
  """
  if method not in INTEGRATION_METHODS:
    raise ValueError(
        f'dynamics.integration_method must be one of {INTEGRATION_METHODS}, got {method!r}.'
    )
  x = as_real_float(x, 'DFA')
  if x.ndim < 2:
    raise ValueError(f'integration expects taps x time, f[..., L, N]; got shape {x.shape}.')
  order = _validate_order(order)
  return _integration(x, validate_scales(scales, x.shape[-1], order), order, method)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _integration(x: jax.Array, scales: tuple[int, ...], order: int, method: str) -> jax.Array:
  if method == 'per_layer_mean':
    alpha = _dfa_exponent(x, scales, order)
    ok = ~jnp.isnan(alpha)
    count = jnp.sum(ok, axis=-1)
    total = jnp.sum(jnp.where(ok, alpha, 0), axis=-1)
    diverged = jnp.any(~jnp.isfinite(x), axis=(-2, -1))
    return jnp.where((count > 0) & ~diverged, total / jnp.maximum(count, 1), jnp.nan)
  field = jnp.mean(_zscore_time(x), axis=-2)
  return _dfa_exponent(field, scales, order)


def excluded_signals(
    x, scales: Sequence[int], order: int = 1, method: str = 'per_layer_mean'
) -> jax.Array:
  """Number of finite taps that ``integration`` leaves out (no fluctuation to measure).

  ``per_layer_mean``: taps whose alpha is NaN (constant or exactly polynomial); ``mean_field``:
  constant taps. Taps with a NaN or inf sample are not counted: they make the score NaN.

  Args:
    x: f[..., L, N]; scales, order, method as for ``integration``.

  Returns:
    int32[...].
  """
  if method not in INTEGRATION_METHODS:
    raise ValueError(
        f'dynamics.integration_method must be one of {INTEGRATION_METHODS}, got {method!r}.'
    )
  x = as_real_float(x, 'DFA')
  order = _validate_order(order)
  return _excluded(x, validate_scales(scales, x.shape[-1], order), order, method)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _excluded(x: jax.Array, scales: tuple[int, ...], order: int, method: str) -> jax.Array:
  finite = jnp.all(jnp.isfinite(x), axis=-1)
  if method == 'per_layer_mean':
    left_out = jnp.isnan(_dfa_exponent(x, scales, order))
  else:
    left_out = jnp.all(x == x[..., :1], axis=-1)
  return jnp.sum(finite & left_out, axis=-1).astype(jnp.int32)
