"""The metrics of the first n samples of a fixed-capacity buffer, n traced: one program for all n.

The epoch probe's history grows by one sample per epoch. Computed on a slice of static length n
(`tracker.probe_histories`), every epoch is a new program to compile. Here the history keeps the
buffer's length L (the run's number of probe samples) and its length n is a traced int32, so
one compiled program serves every n <= L. Each function gives what its counterpart gives on
x[..., :n] (tests/test_probe_compile_once.py: to 1e-12 in float64), because it does the same
arithmetic on the same samples, not an approximation of it:

* DFA (`dfa_exponent`, `integration`): the scales of every length n <= L are known on the host
  (`ScalePlan`, from `tracker.resolve_scales`); F(s) is computed for the union of them, each
  over the floor(n / s) windows of the prefix (the windows start at 0, so they are the same
  windows whatever the buffer holds after n), and the slope is fitted over the scales of n.
* phases (`order_stats`): the length-n DFT as a product with cos and sin of 2 pi (k t mod n) / n,
  so the detrend, the band-pass (its bins from a host table, `numpy.fft.fftfreq(n)`), the Hilbert
  transform and the phase surrogates are those of length n. O(L^2) per signal, against
  O(n log n) for the FFT: nothing at a few hundred epochs.
* surrogates (`surrogates`): the same draws as `nulls.surrogates` on x[..., :n]. JAX's threefry
  is partitionable (``jax_threefry_partitionable``, the default since JAX 0.5): element i of a
  draw depends only on the key and i, so the draw of shape (S, n) is read from a flat draw of
  S * L at the flat indices s * n + t. The shuffle sorts the valid samples first, by the same
  keys, with the same stable sort.

Everything is pure jnp over x: f[S, L] (vmap for batch axes) and n: int32[], jit- and
vmap-compatible; n may differ across a vmap (the offline series vmaps over the epochs).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import dfa, nulls, phase, registry, stability

_HIGHEST = jax.lax.Precision.HIGHEST


class ScalePlan(NamedTuple):
  """The DFA scales of every history length 0..L of a buffer of length L (hashable).

  sets[n] is the tuple of scales of a length-n series, or None where n is too short."""

  sets: Tuple[Optional[Tuple[int, ...]], ...]

  @property
  def length(self) -> int:
    return len(self.sets) - 1

  @property
  def union(self) -> Tuple[int, ...]:
    return tuple(sorted({s for scales in self.sets if scales for s in scales}))


@functools.lru_cache(maxsize=64)
def _plan_tables(plan: ScalePlan) -> Tuple[np.ndarray, np.ndarray]:
  """(member bool[L+1, U]: scale u is one of length n's; defined bool[L+1])."""
  union = plan.union
  member = np.zeros((plan.length + 1, len(union)), bool)
  for n, scales in enumerate(plan.sets):
    for s in scales or ():
      member[n, union.index(s)] = True
  defined = np.asarray([scales is not None for scales in plan.sets], bool)
  return member, defined


def _valid(length: int, n) -> jax.Array:
  return jnp.arange(length) < n


def _count(n, dtype) -> jax.Array:
  return jnp.maximum(n, 1).astype(dtype)


def _masked_mean(x, valid, n) -> jax.Array:
  return jnp.sum(jnp.where(valid, x, 0), axis=-1, keepdims=True) / _count(n, x.dtype)


# ----------------------------------------------------------------------------------------- DFA


def fluctuation(x: jax.Array, n, scales: Tuple[int, ...], order: int) -> jax.Array:
  """F(s) of x[..., :n] for each s in scales (f[..., len(scales)]): dfa.fluctuation's steps
  over the floor(n / s) windows of the prefix (0 where none fits)."""
  n = jnp.asarray(n, jnp.int32)
  length = x.shape[-1]
  lead = x.shape[:-1]
  valid = _valid(length, n)
  xc = jnp.where(valid, x - _masked_mean(x, valid, n), 0)
  out = []
  for s in scales:
    k_max = length // s
    w = xc[..., : k_max * s].reshape(*lead, k_max, s)
    sq = jnp.square(dfa._window_residuals(w, s, order))  # pylint: disable=protected-access
    k = n // s
    used = (jnp.arange(k_max) < k)[:, None]
    total = jnp.sum(jnp.where(used, sq, 0), axis=(-2, -1))
    out.append(jnp.sqrt(total / _count(k * s, x.dtype)))
  return jnp.stack(out, axis=-1)


def dfa_exponent(x: jax.Array, n, plan: ScalePlan, order: int) -> jax.Array:
  """dfa.dfa_exponent(x[..., :n], plan.sets[n], order); NaN where plan.sets[n] is None."""
  n = jnp.asarray(n, jnp.int32)
  member, defined = _plan_tables(plan)
  union = plan.union
  if not union:
    return jnp.full(x.shape[:-1], jnp.nan, x.dtype)
  valid = _valid(x.shape[-1], n)
  f = fluctuation(x, n, union, order)
  alpha = dfa._slope(x, f, union, valid, jnp.asarray(member)[n])  # pylint: disable=protected-access
  return jnp.where(jnp.asarray(defined)[n], alpha, jnp.nan)


def integration(x: jax.Array, n, plan: ScalePlan, order: int, method: str) -> jax.Array:
  """dfa.integration(x[..., :n], plan.sets[n], order, method): x f[..., L, N] -> f[...]."""
  n = jnp.asarray(n, jnp.int32)
  valid = _valid(x.shape[-1], n)
  if method == 'per_layer_mean':
    alpha = dfa_exponent(x, n, plan, order)
    ok = ~jnp.isnan(alpha)
    count = jnp.sum(ok, axis=-1)
    total = jnp.sum(jnp.where(ok, alpha, 0), axis=-1)
    diverged = jnp.any(valid & ~jnp.isfinite(x), axis=(-2, -1))
    return jnp.where((count > 0) & ~diverged, total / jnp.maximum(count, 1), jnp.nan)
  # mean_field: dfa._zscore_time over the prefix.
  xc = x - _masked_mean(x, valid, n)
  sd = jnp.sqrt(_masked_mean(jnp.square(xc), valid, n))
  constant = jnp.all(jnp.where(valid, x == x[..., :1], True), axis=-1, keepdims=True)
  z = jnp.where(constant, 0, xc / jnp.where(constant, 1, sd))
  field = jnp.mean(jnp.where(valid, z, 0), axis=-2)
  return dfa_exponent(field, n, plan, order)


# -------------------------------------------------------------------------------------- phases


def _dft(n, length: int, dtype) -> Tuple[jax.Array, jax.Array]:
  """cos, sin of 2 pi (k t mod n) / n: f[length, length] (symmetric), 0 where k or t >= n.
  (k t is exact in int32 up to length 46340.)"""
  k = jnp.arange(length, dtype=jnp.int32)
  nn = jnp.maximum(n, 1).astype(jnp.int32)
  idx = (k[:, None] * k[None, :]) % nn
  angle = idx.astype(dtype) * (2 * np.pi) / nn.astype(dtype)
  inside = (k[:, None] < n) & (k[None, :] < n)
  return jnp.where(inside, jnp.cos(angle), 0), jnp.where(inside, jnp.sin(angle), 0)


def _onesided_weights(n, length: int, dtype) -> jax.Array:
  """1 at DC, 2 for 0 < k < n/2, 1 at k = n/2 (even n), 0 above: the Hilbert transform's h
  (scipy.signal.hilbert), and the weights of an inverse real FFT of length n."""
  k = jnp.arange(length)
  return jnp.where(k == 0, 1, jnp.where(2 * k < n, 2, jnp.where(2 * k == n, 1, 0))).astype(dtype)


def _forward(x, cos, sin):
  """The DFT X = sum_t x[t] exp(-2 pi i k t / n) as (real, imaginary) parts."""
  return (
      jnp.matmul(x, cos, precision=_HIGHEST),
      -jnp.matmul(x, sin, precision=_HIGHEST),
  )


def _inverse(yr, yi, cos, sin, n):
  """(1/n) sum_k Y[k] exp(+2 pi i k t / n) as (real, imaginary) parts."""
  count = _count(n, yr.dtype)
  real = (jnp.matmul(yr, cos, precision=_HIGHEST) - jnp.matmul(yi, sin, precision=_HIGHEST)) / count
  imag = (jnp.matmul(yr, sin, precision=_HIGHEST) + jnp.matmul(yi, cos, precision=_HIGHEST)) / count
  return real, imag


@functools.lru_cache(maxsize=64)
def _band_table(length: int, lo: float, hi: float) -> np.ndarray:
  """bool[length+1, length]: row n holds phase._preprocess_rows' kept bins for length n."""
  table = np.zeros((length + 1, length), bool)
  for n in range(1, length + 1):
    freq = np.abs(np.fft.fftfreq(n))
    table[n, :n] = (freq >= lo) & (freq <= hi)
  return table


def preprocess(x: jax.Array, n, method: str) -> Tuple[jax.Array, jax.Array]:
  """phase.preprocess(x[..., :n], method) -> (z f[..., L'] zero from m on, m: its length),
  L' = L and m = n (L - 1 and n - 1 for 'diff')."""
  n = jnp.asarray(n, jnp.int32)
  length = x.shape[-1]
  valid_x = _valid(length, n)
  if method == 'diff':
    r = x[..., 1:] - x[..., :-1]
    m = n - 1
  else:
    r = x - _masked_mean(x, valid_x, n)
    m = n
    if method == 'detrend' or method.startswith('bandpass:'):
      tc = jnp.where(valid_x, jnp.arange(length, dtype=x.dtype) - (n - 1).astype(x.dtype) / 2, 0)
      nf = n.astype(x.dtype)
      # sum of tc^2 = n (n^2 - 1) / 12, exact (the unmasked form sums it in float64).
      slope = jnp.sum(jnp.where(valid_x, r * tc, 0), axis=-1, keepdims=True) / (
          nf * (nf * nf - 1) / 12
      )
      r = r - slope * tc
    if method.startswith('bandpass:'):
      lo, hi = phase.parse_band(method[len('bandpass:') :])
      keep = jnp.asarray(_band_table(length, lo, hi))[n].astype(x.dtype)
      cos, sin = _dft(n, length, x.dtype)
      xr, xi = _forward(jnp.where(valid_x, r, 0), cos, sin)
      r, _ = _inverse(xr * keep, xi * keep, cos, sin, n)
  valid = _valid(r.shape[-1], m)
  r = jnp.where(valid, r, 0)
  rc = jnp.where(valid, r - _masked_mean(r, valid, m), 0)
  sd = jnp.sqrt(_masked_mean(jnp.square(rc), valid, m))
  scale = jnp.max(jnp.where(valid_x, jnp.abs(x), 0), axis=-1, keepdims=True)
  constant = sd <= phase._CONSTANT_ULPS * jnp.finfo(x.dtype).eps * scale  # pylint: disable=protected-access
  return jnp.where(constant | ~valid, 0, rc / jnp.where(constant, 1, sd)), m


def _analytic(x: jax.Array, n, method: str):
  """The preprocessed prefix and its analytic signal: (z f[..., L'], its length m, real and
  imaginary parts of hilbert(z) f[..., L'])."""
  z, m = preprocess(x, n, method)
  cos, sin = _dft(m, z.shape[-1], x.dtype)
  h = _onesided_weights(m, z.shape[-1], x.dtype)
  zr, zi = _forward(z, cos, sin)
  ar, ai = _inverse(zr * h, zi * h, cos, sin, m)
  return z, m, ar, ai


def kuramoto_order(x: jax.Array, n, method: str) -> Tuple[jax.Array, jax.Array]:
  """phase.kuramoto_order(x[..., :n], method) -> (R f[..., L'], its length m)."""
  n = jnp.asarray(n, jnp.int32)
  z, m, ar, ai = _analytic(x, n, method)
  mag = jnp.sqrt(ar * ar + ai * ai)
  positive = mag > 0
  safe = jnp.where(positive, mag, 1)
  ur = jnp.where(positive, ar / safe, 1)
  ui = jnp.where(positive, ai / safe, 0)
  usable = jnp.any(z != 0, axis=-1, keepdims=True)
  count = jnp.sum(usable, axis=-2)
  sr = jnp.sum(jnp.where(usable, ur, 0), axis=-2)
  si = jnp.sum(jnp.where(usable, ui, 0), axis=-2)
  r = jnp.sqrt(sr * sr + si * si) / jnp.maximum(count, 1)
  valid_x = _valid(x.shape[-1], n)
  diverged = jnp.any(valid_x & ~jnp.isfinite(x), axis=(-2, -1))[..., None]
  return jnp.where((count >= 2) & ~diverged, r, jnp.nan), m


def phases(x: jax.Array, n, method: str, edge: int) -> Tuple[jax.Array, jax.Array]:
  """phase.phases(x[..., :n], method, edge), padded: (phi f[..., S, L'], valid bool[..., S, L'])
  with valid False from the history's end (m - edge) on."""
  n = jnp.asarray(n, jnp.int32)
  z, m, ar, ai = _analytic(x, n, method)
  t = jnp.arange(z.shape[-1])
  inside = (t >= edge) & (t < m - edge)
  usable = jnp.any(z != 0, axis=-1, keepdims=True)
  return jnp.where(inside, jnp.arctan2(ai, ar), 0), inside & usable


def min_phase_samples(method: str, edge: int) -> int:
  """Shortest history on which the phase metrics are defined (tracker.min_phase_samples)."""
  return phase.min_samples(method, edge)


def order_stats(x: jax.Array, n, method: str, edge: int) -> Tuple[jax.Array, jax.Array]:
  """(synchrony, metastability) of x[..., :n] (phase.synchrony / phase.metastability), NaN
  where n is shorter than `min_phase_samples`."""
  r, m = kuramoto_order(x, n, method)
  t = jnp.arange(r.shape[-1])
  inside = (t >= edge) & (t < m - edge)
  count = _count(m - 2 * edge, x.dtype)
  mean = jnp.sum(jnp.where(inside, r, 0), axis=-1) / count
  var = jnp.sum(jnp.where(inside, jnp.square(r - mean[..., None]), 0), axis=-1) / count
  defined = n >= min_phase_samples(method, edge)
  return jnp.where(defined, mean, jnp.nan), jnp.where(defined, jnp.sqrt(var), jnp.nan)


# ---------------------------------------------------------------------------------- surrogates


def _rows(shape) -> np.ndarray:
  """Row indices (the flat index of the leading axes) broadcast as shape[:-1] + (1,)."""
  return np.arange(int(np.prod(shape[:-1], dtype=np.int64))).reshape(shape[:-1] + (1,))


def _flat_draw(draw, x_lead: Tuple[int, ...], width, width_max: int):
  """The draw of shape x_lead + (width,) (width traced, at most width_max), read from a flat draw
  of prod(x_lead) * width_max: f[x_lead + (width_max,)], entries from `width` on unspecified."""
  rows = _rows(x_lead + (width_max,))
  flat = draw((rows.size * width_max,))
  idx = jnp.minimum(rows * width + jnp.arange(width_max), rows.size * width_max - 1)
  return flat[idx]


def _sort_valid(valid, *operands, num_keys: int = 1):
  """lax.sort along the last axis with the valid entries first, in the same stable order."""
  invalid = jnp.broadcast_to(~valid, operands[0].shape).astype(jnp.int32)
  return jax.lax.sort((invalid,) + operands, dimension=operands[0].ndim - 1, num_keys=num_keys + 1)[
      1:
  ]


def _rank_permute(key, x, n):
  valid = _valid(x.shape[-1], n)
  bits = _flat_draw(
      lambda shape: jax.random.bits(key, shape, jnp.uint32), x.shape[:-1], n, x.shape[-1]
  )
  return jnp.where(valid, _sort_valid(valid, bits, x)[1], 0)


def _rfft(x, cos, sin, half: int):
  return _forward(x, cos[:, :half], sin[:, :half])


def _irfft(yr, yi, cos, sin, n):
  """numpy.fft.irfft(Y, n) for Y f[..., half] (bins from n // 2 + 1 on ignored; the imaginary
  parts of DC and, for even n, Nyquist dropped, as irfft does)."""
  half = yr.shape[-1]
  k = jnp.arange(half)
  c = _onesided_weights(n, half, yr.dtype)
  yi = jnp.where((k == 0) | (2 * k == n), 0, yi)
  real, _ = _inverse(yr * c, yi * c, cos[:half], sin[:half], n)
  return real


def _phase_randomise(key, x, n, joint: bool):
  length = x.shape[-1]
  half = length // 2 + 1
  valid = _valid(length, n)
  cos, sin = _dft(n, length, x.dtype)
  xr, xi = _rfft(jnp.where(valid, x, 0), cos, sin, half)
  shape = x.shape[:-2] + (1,) if joint and x.ndim >= 2 else x.shape[:-1]
  theta = _flat_draw(
      lambda s: jax.random.uniform(key, s, x.dtype, 0, 2 * np.pi), shape, n // 2 + 1, half
  )
  k = jnp.arange(half)
  theta = jnp.where((k == 0) | ((n % 2 == 0) & (k == n // 2)), 0, theta)
  c, s = jnp.cos(theta), jnp.sin(theta)
  out = _irfft(xr * c - xi * s, xr * s + xi * c, cos, sin, n)
  return jnp.where(valid, out, 0)


def _one(key, x, n, method: str, iterations: int):
  length = x.shape[-1]
  valid = _valid(length, n)
  if method == 'shuffle':
    return _rank_permute(key, x, n)
  if method in ('phase', 'phase_joint'):
    return _phase_randomise(key, x, n, joint=method == 'phase_joint')
  if method == 'shift':
    shift = jax.random.randint(key, x.shape[:-1] + (1,), 0, n)
    idx = (jnp.arange(length) + shift) % jnp.maximum(n, 1)
    return jnp.where(valid, jnp.take_along_axis(x, idx, axis=-1), 0)
  # IAAFT, as nulls._one.
  half = length // 2 + 1
  cos, sin = _dft(n, length, x.dtype)
  sorted_x = _sort_valid(valid, x)[0]
  xr, xi = _rfft(jnp.where(valid, x, 0), cos, sin, half)
  amplitude = jnp.sqrt(xr * xr + xi * xi)
  iota = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), x.shape)

  def body(_, s):
    sr, si = _rfft(s, cos, sin, half)
    mag = jnp.sqrt(sr * sr + si * si)
    positive = mag > 0
    safe = jnp.where(positive, mag, 1)
    s = _irfft(
        amplitude * jnp.where(positive, sr / safe, 1),
        amplitude * jnp.where(positive, si / safe, 0),
        cos,
        sin,
        n,
    )
    order = _sort_valid(valid, s, iota)[1]  # argsort of the valid samples, stable
    ranks = jax.lax.sort((order, iota), dimension=x.ndim - 1, num_keys=1)[1]
    return jnp.where(valid, jnp.take_along_axis(sorted_x, ranks, axis=-1), 0)

  return jax.lax.fori_loop(0, iterations, body, _rank_permute(key, x, n))


def surrogates(key, x: jax.Array, n, num: int, method: str, iterations: int = 10) -> jax.Array:
  """nulls.surrogates(key, x[..., :n], num, method, iterations), zero from n on:
  f[num, ..., S, L]."""
  n = jnp.asarray(n, jnp.int32)
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(num))
  return jax.vmap(lambda k: _one(k, x, n, method, iterations))(keys)


def compute_metrics(x: jax.Array, n, spec, plan: ScalePlan, key=None) -> dict:
  """tracker.compute_metrics(x[:, :n], spec, plan.sets[n], key) for x: f[S, L], n: int32[]
  (vmap for batch axes; n and key may be batched with x). With nulls, the values and the nulls
  come from one copy of the metrics, as there (nulls.values_and_nulls)."""
  n = jnp.asarray(n, jnp.int32)
  _, defined = _plan_tables(plan)
  per_layer = spec.integration_method == 'per_layer_mean'
  extra = getattr(spec, 'extra', ())

  def long_enough(metric) -> jax.Array:
    needed = metric.min_samples
    if metric.needs == 'phases':
      needed = max(needed, min_phase_samples(spec.phase_preprocess, spec.phase_edge))
    return n >= needed

  def registered(inputs: dict) -> dict:
    return registry.evaluate(
        extra,
        inputs,
        lambda xr: phases(xr, n, spec.phase_preprocess, spec.phase_edge),
        lambda xr: jnp.broadcast_to(_valid(xr.shape[-1], n), xr.shape),
        long_enough,
    )

  def metrics(inputs: dict, with_alphas: bool) -> dict:
    """Each metric of its own signals f[..., S, L] ({metric: signals}); no DSI."""
    xi, xs, xm = (inputs[name] for name in nulls.SIGNAL_METRICS)
    out = {'alphas': dfa_exponent(xi, n, plan, spec.dfa_order)} if with_alphas else {}
    out['integration'] = jnp.where(
        jnp.asarray(defined)[n],
        integration(xi, n, plan, spec.dfa_order, spec.integration_method),
        jnp.nan,
    )
    out['synchrony'], out['metastability'] = order_stats(
        xs, n, spec.phase_preprocess, spec.phase_edge
    )
    if xm is not xs:
      out['metastability'] = order_stats(xm, n, spec.phase_preprocess, spec.phase_edge)[1]
    out.update(registered(inputs))
    return out

  def with_dsi(out: dict) -> dict:
    form = (spec.dsi_form, spec.dsi_w_integration, spec.dsi_w_metastability)
    return dict(out, dsi=stability.stability_index(out['integration'], out['metastability'], *form))

  everything = nulls.SIGNAL_METRICS + tuple(m.name for m in extra)
  if key is None or spec.surrogates <= 0:
    return with_dsi(metrics({name: x for name in everything}, with_alphas=True))
  methods = spec.null_methods()
  draws = nulls.method_draws(
      key,
      x,
      int(spec.surrogates),
      methods,
      draw=lambda k, signals, num, method: surrogates(k, signals, n, num, method),
  )
  values, null = nulls.values_and_nulls(
      lambda inputs: metrics(inputs, with_alphas=per_layer), x, draws, methods
  )
  if not per_layer:  # as tracker.compute_metrics
    values['alphas'] = dfa_exponent(x, n, plan, spec.dfa_order)
  values.update(registered({m: x for m in everything if m not in values}))  # no null: data only
  values = with_dsi(values)
  values.update(nulls.null_z_and_p(values, null, spec))
  return values
