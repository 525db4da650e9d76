"""Metastability: Kuramoto order parameter of the taps' Hilbert phases.

Definition (DESIGN.md section 3.3), for tap series x[l, 0..N-1]:

1. preprocess each row: 'detrend' (remove the least-squares line; default), 'demean', 'diff'
   (first difference, N-1 samples), or 'bandpass:lo,hi' (detrend, then keep only the FFT
   bins with lo <= |frequency| <= hi in cycles per sample: a band-limited phase, since Hilbert
   phases of broadband signals are unreliable, Chavez et al. 2006), then z-score (ddof 0);
2. analytic signal by the FFT Hilbert transform, identical to ``scipy.signal.hilbert`` along
   time; phase phi[l, t] = its angle;
3. R(t) = | mean over l of exp(i phi[l, t]) |, in [0, 1], over the taps that are not constant
   after step 1 (NaN when fewer than two are; NaN when any tap has a NaN or inf sample);
4. synchrony = mean over t of R(t); metastability = std over t of R(t) (ddof 0), optionally after
   dropping ``edge`` samples at each end (Hilbert edge effects).

All functions are pure ``jnp`` with time on the LAST axis (taps on the one before it), so they
compose with ``jax.jit`` (string/int options static) and ``jax.vmap``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.arrays import as_real_float

__all__ = [
    'PREPROCESS_METHODS',
    'hilbert',
    'preprocess',
    'kuramoto_order',
    'synchrony',
    'metastability',
    'excluded_signals',
]

PREPROCESS_METHODS = ('detrend', 'demean', 'diff', 'bandpass')

# A row whose preprocessed spread is within a few ulps of its raw magnitude is constant up to
# roundoff (e.g. a float32 constant whose mean does not round back to itself, or an exact line
# under 'detrend'); z-scoring it would blow roundoff up into a unit-variance signal.
_CONSTANT_ULPS = 4


def hilbert(x: jax.typing.ArrayLike) -> jax.Array:
  """Analytic signal x + i H[x] along the last axis, as ``scipy.signal.hilbert``.

  FFT, keep DC (and Nyquist for even N) once, double the positive frequencies, zero the
  negative ones, inverse FFT.

  Args:
    x: f[..., N], real.

  Returns:
    complex[..., N] (complex64 for float32 input, complex128 for float64).
  """
  x = as_real_float(x, 'hilbert')
  if x.shape[-1] < 1:
    raise ValueError('hilbert needs at least one sample along the last axis.')
  return _hilbert(x)


@jax.jit
def _hilbert(x: jax.Array) -> jax.Array:
  n = x.shape[-1]
  h = np.zeros(n)
  if n % 2 == 0:
    h[0] = h[n // 2] = 1.0
    h[1 : n // 2] = 2.0
  else:
    h[0] = 1.0
    h[1 : (n + 1) // 2] = 2.0
  spectrum = jnp.fft.fft(x, axis=-1)
  return jnp.fft.ifft(spectrum * jnp.asarray(h, dtype=x.dtype), axis=-1)


def parse_band(band) -> tuple:
  """'lo,hi' (or a pair) in cycles per sample -> (lo, hi), checked: 0 <= lo < hi <= 0.5."""
  try:
    lo, hi = (float(v) for v in (band.split(',') if isinstance(band, str) else band))
  except (TypeError, ValueError):
    raise ValueError(
        f'dynamics.phase_band={band!r} must be two numbers lo,hi in cycles per sample, e.g. '
        "'0.02,0.2'."
    ) from None
  if not 0.0 <= lo < hi <= 0.5:
    raise ValueError(
        f'dynamics.phase_band={band!r} must satisfy 0 <= lo < hi <= 0.5 (cycles per sample; '
        '0.5 is the Nyquist frequency).'
    )
  return lo, hi


def bandpass_method(band) -> str:
  """The static method string of a band-limited phase: 'bandpass:lo,hi'."""
  lo, hi = parse_band(band)
  return f'bandpass:{lo!r},{hi!r}'


def _check_method(method: str) -> None:
  if method.startswith('bandpass:'):
    parse_band(method[len('bandpass:') :])
    return
  if method not in PREPROCESS_METHODS[:3]:
    raise ValueError(
        f'dynamics.phase_preprocess must be one of {PREPROCESS_METHODS}, got {method!r}'
        + (' (bandpass takes its band from dynamics.phase_band)' if method == 'bandpass' else '')
        + '.'
    )


def preprocess(x: jax.typing.ArrayLike, method: str = 'detrend') -> jax.Array:
  """Per-row preprocessing before phase extraction, then z-score over time (ddof 0).

  'detrend': subtract the least-squares line in t = 0..N-1; 'demean': subtract the mean;
  'diff': first difference x[t+1] - x[t]. Rows that are constant after this step (up to
  roundoff) become zeros rather than NaN.

  Args:
    x: f[..., N].
    method: 'detrend' | 'demean' | 'diff' (static).

  Returns:
    f[..., N] ('detrend', 'demean') or f[..., N-1] ('diff').
  """
  _check_method(method)
  x = as_real_float(x, 'preprocess')
  _check_length(x, method)
  return _preprocess_rows(x, method)


# Each public function compiles once per (shape, options): eager op-by-op dispatch of these
# small graphs costs far more than the math.
@functools.partial(jax.jit, static_argnums=1)
def _preprocess_rows(x: jax.Array, method: str) -> jax.Array:
  n = x.shape[-1]
  if method == 'diff':
    r = jnp.diff(x, axis=-1)
  else:
    r = x - jnp.mean(x, axis=-1, keepdims=True)
    if method == 'detrend' or method.startswith('bandpass:'):
      tc = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
      tcj = jnp.asarray(tc, dtype=x.dtype)
      # tc sums to zero, so the slope needs no centring of x and the line through the
      # means is removed by subtracting slope * tc from the demeaned row.
      slope = jnp.sum(r * tcj, axis=-1, keepdims=True) / float(np.sum(tc * tc))
      r = r - slope * tcj
    if method.startswith('bandpass:'):
      lo, hi = parse_band(method[len('bandpass:') :])
      freq = np.abs(np.fft.fftfreq(n))
      keep = jnp.asarray((freq >= lo) & (freq <= hi), dtype=x.dtype)
      r = jnp.real(jnp.fft.ifft(jnp.fft.fft(r, axis=-1) * keep, axis=-1)).astype(x.dtype)
  rc = r - jnp.mean(r, axis=-1, keepdims=True)
  sd = jnp.sqrt(jnp.mean(jnp.square(rc), axis=-1, keepdims=True))
  scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
  constant = sd <= _CONSTANT_ULPS * jnp.finfo(x.dtype).eps * scale
  return jnp.where(constant, 0, rc / jnp.where(constant, 1, sd))


def kuramoto_order(x: jax.typing.ArrayLike, preprocess: str = 'detrend') -> jax.Array:
  """Kuramoto order parameter R(t) = |mean over taps of exp(i phi[l, t])|.

  phi = angle(hilbert(preprocess(x))). A row that is zero after preprocessing (a constant tap,
  or an exact line under 'detrend') has no phase and is left out of the mean over taps
  (``excluded_signals`` counts them); fewer than two remaining taps, or a NaN/inf sample in any
  tap, give NaN.

  Args:
    x: f[..., L, N], L taps, time on the last axis.
    preprocess: 'detrend' | 'demean' | 'diff' (static).

  Returns:
    f[..., N'] in [0, 1], N' = N (N - 1 for 'diff').
  """
  _check_method(preprocess)
  x = as_real_float(x, 'kuramoto_order')
  if x.ndim < 2:
    raise ValueError(f'kuramoto_order expects taps x time, f[..., L, N]; got shape {x.shape}.')
  _check_length(x, preprocess)
  return _kuramoto(x, preprocess)


def min_samples(method: str, edge: int = 0) -> int:
  """Shortest series on which the tracker reports the phase metrics (NaN below it).

  R(t) must be able to change, or synchrony and metastability (0) are artefacts of the length,
  not measurements. So: at least 2 degrees of freedom must survive the preprocessing, which
  removes 1 ('demean') or 2 ('detrend' and 'bandpass:...': the line; 'diff': a sample, then
  the z-score's mean) -- with 1 left every signal is a multiple of the same vector; and the
  preprocessed series (N, or N - 1 after 'diff') must have at least 4 samples -- with 3 the
  analytic signal holds one positive frequency, every phase turns at the same rate and R(t) is
  constant (demean at 3 samples, diff at 4). And at least 3 samples of R(t) must remain after
  dropping `edge` at each end. A band-pass that keeps a single frequency bin is degenerate at
  any length; no length rule can see that.
  """
  diff = 1 if method == 'diff' else 0
  removed = 1 if method == 'demean' else 2
  return max(3 + 2 * int(edge) + diff, removed + 2, 4 + diff)


def _check_length(x: jax.Array, method: str) -> None:
  min_len = 3 if method == 'diff' else 2
  if x.shape[-1] < min_len:
    raise ValueError(
        f'dynamics.phase_preprocess={method!r} needs at least {min_len} samples, '
        f'got {x.shape[-1]}.'
    )


@functools.partial(jax.jit, static_argnums=1)
def _kuramoto(x: jax.Array, method: str) -> jax.Array:
  z = _preprocess_rows(x, method)
  a = _hilbert(z)
  # exp(i * angle(a)) computed as a / |a|: no atan2/cos/sin; angle(0) == 0 gives phasor 1.
  mag = jnp.abs(a)
  unit = jnp.where(mag > 0, a / jnp.where(mag > 0, mag, 1), 1)
  # A constant row (all zeros after preprocessing) has no phase: it is left out of the mean,
  # rather than pulling R towards 1 with its phasor 1. A NaN/inf sample makes R NaN: a diverged
  # signal is not data (the same rule as dfa.integration).
  usable = jnp.any(z != 0, axis=-1, keepdims=True)
  count = jnp.sum(usable, axis=-2)
  r = jnp.abs(jnp.sum(jnp.where(usable, unit, 0), axis=-2)) / jnp.maximum(count, 1)
  diverged = jnp.any(~jnp.isfinite(x), axis=(-2, -1))[..., None]
  return jnp.where((count >= 2) & ~diverged, r, jnp.nan)


def phases(x: jax.Array, preprocess: str = 'detrend', edge: int = 0):
  """The instantaneous phases that the Kuramoto metrics use, for registered metrics
  (dynamics.registry, needs='phases'): angle(hilbert(preprocess(x))) in radians.

  Args:
    x: f[..., S, N] (traced; no checks: the tracker has checked the length).
    preprocess, edge: static, as ``synchrony``.

  Returns:
    (phi f[..., S, N'], valid bool[..., S, N']): N' = N (N - 1 for 'diff'); valid drops `edge`
    samples at each end and the signals with no phase (constant after preprocessing).
  """
  z = _preprocess_rows(x, preprocess)
  phi = jnp.angle(_hilbert(z)).astype(x.dtype)
  t = jnp.arange(z.shape[-1])
  inside = (t >= edge) & (t < z.shape[-1] - edge)
  usable = jnp.any(z != 0, axis=-1, keepdims=True)
  return phi, inside & usable


def excluded_signals(x, preprocess: str = 'detrend') -> jax.Array:
  """Number of finite taps that the phase metrics leave out (constant after preprocessing).

  Args:
    x: f[..., L, N].
    preprocess: 'detrend' | 'demean' | 'diff' (static).

  Returns:
    int32[...].
  """
  _check_method(preprocess)
  x = as_real_float(x, 'excluded_signals')
  _check_length(x, preprocess)
  return _excluded(x, preprocess)


@functools.partial(jax.jit, static_argnums=1)
def _excluded(x: jax.Array, method: str) -> jax.Array:
  constant = jnp.all(_preprocess_rows(x, method) == 0, axis=-1)
  finite = jnp.all(jnp.isfinite(x), axis=-1)
  return jnp.sum(constant & finite, axis=-1).astype(jnp.int32)


def _validate_trim(x, preprocess: str, edge: int) -> jax.Array:
  _check_method(preprocess)
  x = as_real_float(x, 'synchrony/metastability')
  if x.ndim < 2:
    raise ValueError(f'expected taps x time, f[..., L, N]; got shape {x.shape}.')
  _check_length(x, preprocess)
  if isinstance(edge, bool) or not isinstance(edge, (int, np.integer)) or edge < 0:
    raise ValueError(
        f'dynamics.phase_edge must be a non-negative integer (samples dropped at each end), '
        f'got {edge!r}.'
    )
  n = x.shape[-1] - (1 if preprocess == 'diff' else 0)
  if 2 * edge >= n:
    raise ValueError(
        f'dynamics.phase_edge={edge} drops {2 * edge} of {n} samples of R(t); '
        f'need 2 * phase_edge < {n}.'
    )
  return x


def _trimmed_order(x: jax.Array, preprocess: str, edge: int) -> jax.Array:
  r = _kuramoto(x, preprocess)
  return r[..., edge : r.shape[-1] - edge]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _synchrony(x: jax.Array, preprocess: str, edge: int) -> jax.Array:
  return jnp.mean(_trimmed_order(x, preprocess, edge), axis=-1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _metastability(x: jax.Array, preprocess: str, edge: int) -> jax.Array:
  return jnp.std(_trimmed_order(x, preprocess, edge), axis=-1)


def synchrony(x: jax.typing.ArrayLike, preprocess: str = 'detrend', edge: int = 0) -> jax.Array:
  """Synchrony: mean over t of R(t) (``kuramoto_order``), after dropping ``edge`` samples at
  each end.

  Args:
    x: f[..., L, N].
    preprocess: 'detrend' | 'demean' | 'diff' (static).
    edge: static int >= 0 with 2 * edge < N'.

  Returns:
    f[...].
  """
  x = _validate_trim(x, preprocess, edge)
  return _synchrony(x, preprocess, int(edge))


def metastability(x: jax.typing.ArrayLike, preprocess: str = 'detrend', edge: int = 0) -> jax.Array:
  """Metastability: standard deviation over t (ddof 0) of R(t) (``kuramoto_order``), after
  dropping ``edge`` samples at each end.

  Args:
    x: f[..., L, N].
    preprocess: 'detrend' | 'demean' | 'diff' (static).
    edge: static int >= 0 with 2 * edge < N'.

  Returns:
    f[...].
  """
  x = _validate_trim(x, preprocess, edge)
  return _metastability(x, preprocess, int(edge))
