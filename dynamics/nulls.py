"""Null models: surrogate data for the dynamics metrics, and the surrogate test (DESIGN 3.6).

(The module is `nulls`, not `surrogates`, so that `dynamics.surrogates` is the function.)

A metric value means something only against what it would be without the structure it claims
to measure. A surrogate keeps some properties of the data and destroys others:

==============  ===============================================  =================================
method          keeps                                            destroys
==============  ===============================================  =================================
``shuffle``     each signal's values (sorted values exactly)     all temporal order (alpha ~ 0.5)
``phase``       each signal's power spectrum and mean exactly    phase relations between signals,
                                                                 and nonlinear structure
``phase_joint`` spectra and cross-spectra (one random phase      nonlinear structure only
                per frequency shared by every signal)
``iaaft``       sorted values exactly, spectrum approximately    phase relations, nonlinearity
``shift``       each signal exactly, up to a circular shift      the alignment between signals
==============  ===============================================  =================================

Integration (DFA alpha) is a property of each signal's autocorrelation, so its null is
``shuffle``; ``phase`` keeps the spectrum and therefore alpha. Synchrony and metastability are
properties of the relations between signals: their null is ``phase`` (or ``shift``).

Everything is pure ``jnp`` with time on the last axis, signals on the one before it: jit- and
vmap-compatible (``num``, ``method`` and ``iterations`` are static).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dynamics.arrays import as_real_float

__all__ = ['ALTERNATIVES', 'SURROGATE_METHODS', 'null_stats', 'surrogate_test', 'surrogates']

SURROGATE_METHODS = ('shuffle', 'phase', 'phase_joint', 'iaaft', 'shift')
ALTERNATIVES = ('greater', 'less', 'two-sided')


def _check(method: str, num, iterations) -> None:
  if method not in SURROGATE_METHODS:
    raise ValueError(f'surrogate method must be one of {SURROGATE_METHODS}, got {method!r}.')
  if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
    raise ValueError(
        f'surrogates: num must be a positive integer (surrogates to draw), ' f'got {num!r}.'
    )
  if (
      isinstance(iterations, bool)
      or not isinstance(iterations, (int, np.integer))
      or iterations < 1
  ):
    raise ValueError(
        f'surrogates: iterations must be a positive integer (IAAFT passes), ' f'got {iterations!r}.'
    )


def surrogates(
    key: jax.Array, x: jax.Array, num: int, method: str = 'phase', iterations: int = 10
) -> jax.Array:
  """Draw ``num`` surrogates of the signals x.

  Args:
    key: a PRNG key (``jax.random.key`` or ``PRNGKey``).
    x: f[..., S, T], S signals (at least a vector: f[T] is one signal), time last, real.
    num: static number of surrogates.
    method: 'shuffle' | 'phase' | 'phase_joint' | 'iaaft' | 'shift' (static; see the module).
    iterations: static IAAFT passes (each: impose the amplitudes, then the sorted values).

  Returns:
    f[num, ..., S, T], same dtype as x. Surrogate j depends only on (key, j).
  """
  _check(method, num, iterations)
  x = as_real_float(x, 'surrogates')
  if x.ndim < 1 or x.shape[-1] < 1:
    raise ValueError(f'surrogates expects f[..., S, T] with T >= 1, got shape {x.shape}.')
  return _surrogates(key, x, int(num), method, int(iterations))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _surrogates(key, x, num: int, method: str, iterations: int) -> jax.Array:
  # fold_in rather than split: surrogate j is the same whatever num is.
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(num))
  return jax.vmap(lambda k: _one(k, x, method, iterations))(keys)


def _flat(draw, key, shape, *args) -> jax.Array:
  """draw(key, shape, *args) (jax.random.bits or uniform), drawn as a vector and reshaped.

  The same numbers: JAX's threefry draws an array of any shape as its flat row-major vector,
  in both its modes (``jax_threefry_partitionable`` on or off), and uniform maps each element
  alone. Drawn flat, XLA:CPU compiles the draw in half the time (the hash indexes a vector
  instead of a multi-dimensional iota; benchmarks/README.md, "The nulls' compile")."""
  return draw(key, (int(np.prod(shape, dtype=np.int64)),), *args).reshape(shape)


def _random_phases(key, shape, n: int, dtype) -> jax.Array:
  """Unit phasors f[..., n//2 + 1] for an rfft of length n: DC (and Nyquist for even n) get
  phasor 1, so the inverse transform stays real and the mean (and the Nyquist amplitude with
  its sign) is kept exactly."""
  nf = n // 2 + 1
  theta = _flat(jax.random.uniform, key, shape + (nf,), dtype, 0, 2 * np.pi)
  fixed = np.zeros(nf, bool)
  fixed[0] = True
  if n % 2 == 0:
    fixed[-1] = True
  theta = jnp.where(jnp.asarray(fixed), 0, theta)
  return jax.lax.complex(jnp.cos(theta), jnp.sin(theta))


def _phase_randomise(key, x, joint: bool) -> jax.Array:
  n = x.shape[-1]
  spectrum = jnp.fft.rfft(x, axis=-1)
  # joint: one phase per frequency (shared over the signal axis, independent over batch axes).
  shape = x.shape[:-2] + (1,) if joint and x.ndim >= 2 else x.shape[:-1]
  rot = _random_phases(key, shape, n, x.dtype)
  return jnp.fft.irfft(spectrum * rot, n=n, axis=-1).astype(x.dtype)


def _rank_permute(key, x) -> jax.Array:
  """An independent uniform permutation of each row's samples: the row sorted by random 32-bit
  keys (one sort carrying the values; 3x faster on the CPU than jax.random.permutation's
  independent rounds; ties, probability ~T^2 / 2^33 per row, only bias the order negligibly)."""
  bits = _flat(jax.random.bits, key, x.shape, jnp.uint32)
  return jax.lax.sort((bits, x), dimension=x.ndim - 1, num_keys=1)[1]


def _one(key, x, method: str, iterations: int) -> jax.Array:
  n = x.shape[-1]
  if method == 'shuffle':
    return _rank_permute(key, x)
  if method == 'phase':
    return _phase_randomise(key, x, joint=False)
  if method == 'phase_joint':
    return _phase_randomise(key, x, joint=True)
  if method == 'shift':
    shift = jax.random.randint(key, x.shape[:-1] + (1,), 0, n)
    idx = (jnp.arange(n) + shift) % n
    return jnp.take_along_axis(x, idx, axis=-1)
  # IAAFT (Schreiber & Schmitz 1996): start from a shuffle; alternately impose the original
  # Fourier amplitudes and the original value distribution (rank-ordering). Ending on the
  # rank step keeps the sorted values exactly.
  sorted_x = jnp.sort(x, axis=-1)
  amplitude = jnp.abs(jnp.fft.rfft(x, axis=-1))

  def body(_, s):
    spec = jnp.fft.rfft(s, axis=-1)
    mag = jnp.abs(spec)
    phasor = jnp.where(mag > 0, spec / jnp.where(mag > 0, mag, 1), 1)
    s = jnp.fft.irfft(amplitude * phasor, n=n, axis=-1).astype(x.dtype)
    ranks = jnp.argsort(jnp.argsort(s, axis=-1), axis=-1)
    return jnp.take_along_axis(sorted_x, ranks, axis=-1)

  return jax.lax.fori_loop(0, iterations, body, _rank_permute(key, x))


def null_stats(value, null, alternative: str = 'greater') -> dict[str, jax.Array]:
  """Surrogate-test statistics of a value against null draws (NaN draws are left out).

  p = (1 + #{null >= value}) / (1 + num) for 'greater' (#{null <= value} for 'less'; for
  'two-sided', #{|null - null_mean| >= |value - null_mean|}); num counts the finite draws.
  z = (value - null_mean) / null_std (ddof 1). A NaN value, or no finite draw, gives NaN.

  Args:
    value: f[...].
    null: f[num, ...].
    alternative: 'greater' | 'less' | 'two-sided' (static).

  Returns:
    {'value', 'null_mean', 'null_std', 'z', 'p'}: f[...] each.
  """
  if alternative not in ALTERNATIVES:
    raise ValueError(
        f'surrogate_test: alternative must be one of {ALTERNATIVES}, ' f'got {alternative!r}.'
    )
  value = jnp.asarray(value)
  null = jnp.asarray(null, value.dtype)
  ok = jnp.isfinite(null)
  count = jnp.sum(ok, axis=0)
  safe = jnp.maximum(count, 1)
  mean = jnp.sum(jnp.where(ok, null, 0), axis=0) / safe
  var = jnp.sum(jnp.where(ok, jnp.square(null - mean), 0), axis=0) / jnp.maximum(count - 1, 1)
  std = jnp.sqrt(var)
  if alternative == 'greater':
    hits = ok & (null >= value)
  elif alternative == 'less':
    hits = ok & (null <= value)
  else:
    hits = ok & (jnp.abs(null - mean) >= jnp.abs(value - mean))
  p = (1 + jnp.sum(hits, axis=0)) / (1 + count)
  bad = ~jnp.isfinite(value) | (count == 0)
  nan = jnp.asarray(jnp.nan, value.dtype)
  z = jnp.where(std > 0, (value - mean) / jnp.where(std > 0, std, 1), nan)
  return {
      'value': value,
      'null_mean': jnp.where(count > 0, mean, nan),
      'null_std': jnp.where(count > 1, std, nan),
      'z': jnp.where(bad | (count < 2), nan, z),
      'p': jnp.where(bad, nan, p.astype(value.dtype)),
  }


def surrogate_test(
    statistic: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    key: jax.Array,
    num: int = 99,
    method: str = 'phase',
    alternative: str = 'greater',
    iterations: int = 10,
) -> dict[str, jax.Array]:
  """Test a statistic of the signals against its value on ``num`` surrogates.

  Args:
    statistic: a jnp function f[S, T] -> scalar (e.g. ``dynamics.synchrony``, or
      ``functools.partial(dynamics.integration, scales=...)``); it is vmapped over surrogates.
    x: f[S, T] (batch axes before S are passed through to ``statistic`` unchanged).
    key: a PRNG key.
    num: static number of surrogates.
    method, iterations: see ``surrogates``.
    alternative: 'greater' (the structure raises the statistic), 'less' or 'two-sided'.

  Returns:
    {'value', 'null_mean', 'null_std', 'z', 'p'} (see ``null_stats``); p >= 1 / (1 + num).
  """
  x = as_real_float(x, 'surrogate_test')
  value = statistic(x)
  null = jax.vmap(statistic)(surrogates(key, x, num, method, iterations))
  return null_stats(value, null, alternative)


# --------------------------------------------------------------------------- the tracker's nulls

# Metrics with a null in the tracker and the report, and the default null of each (DESIGN 3.6).
NULL_METRICS = ('integration', 'synchrony', 'metastability', 'dsi')
# Those computed from signals (each from its own surrogates); the DSI is computed from two of them.
SIGNAL_METRICS = NULL_METRICS[:3]
DEFAULT_METHODS = 'integration=shuffle,synchrony=phase,metastability=phase'


def parse_methods(text: str) -> dict[str, str]:
  """'integration=shuffle,synchrony=phase,...' -> {metric: method} for integration, synchrony
  and metastability (a metric not named keeps its default). The DSI null combines the
  integration and metastability nulls draw by draw (neither structure present)."""
  out = dict(item.split('=') for item in DEFAULT_METHODS.split(','))
  for item in str(text).split(','):
    if not item.strip():
      continue
    metric, sep, method = (s.strip() for s in item.partition('='))
    if not sep or metric not in out:
      raise ValueError(
          f'dynamics.surrogate_methods={text!r}: expected comma-separated '
          f'metric=method with metric in {tuple(out)}, e.g. {DEFAULT_METHODS!r}.'
      )
    if method not in SURROGATE_METHODS:
      raise ValueError(
          f'dynamics.surrogate_methods={text!r}: method {method!r} for {metric} '
          f'is not one of {SURROGATE_METHODS}.'
      )
    out[metric] = method
  return out


def evaluation_key(base_key, mode: int, sample) -> jax.Array:
  """The surrogate key of one metric evaluation: a pure function of the run's base key (from its
  seed), the mode (0 = step, 1 = probe expanding, 2 = probe sliding) and the sample index (step
  or epoch), so a resumed run, and the offline ablation, draw exactly the same surrogates.

  base_key: uint32[2] raw key data (``jax.random.key_data``), as kept in the tracker state."""
  key = jax.random.wrap_key_data(jnp.asarray(base_key, jnp.uint32))
  return jax.random.fold_in(jax.random.fold_in(key, mode), sample)


def method_draws(key, x, num: int, methods: dict[str, str], draw=None) -> dict[str, jax.Array]:
  """The surrogates of one metric evaluation: {method: f[num, ..., S, N]} for every method named
  in `methods` (``parse_methods``), method i of SURROGATE_METHODS drawn from fold_in(key, i).

  draw(key, x, num, method) -> f[num, ...] draws them (default: ``surrogates``; the masked
  probe passes its prefix form)."""
  draw = surrogates if draw is None else draw
  return {
      method: draw(jax.random.fold_in(key, index), x, num, method)
      for index, method in enumerate(SURROGATE_METHODS)
      if method in methods.values()
  }


def values_and_nulls(
    metrics: Callable[[dict[str, jax.Array]], dict[str, jax.Array]],
    x: jax.Array,
    draws: dict[str, jax.Array],
    methods: dict[str, str],
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """The metrics of x and of each of its surrogates, from one traced copy of the metrics.

  `metrics` maps {metric: its signals} (SIGNAL_METRICS, as in `methods`) to {name: f[...]}; it
  is vmapped over 1 + num inputs: first every metric of x itself (the values), then metric m
  of surrogate j of methods[m] (the nulls). The program holds the metric pipeline once, where
  computing the values and then vmapping the metrics over the surrogates held it twice, which
  made the nulls cost more to compile than the rest of the tracker. The nulls are those of the
  metrics vmapped over the surrogates alone (mostly bit for bit on XLA:CPU), the values those of
  x alone, both up to float32 round-off: XLA:CPU rounds some reductions over a batch of
  evaluations differently from one evaluation's (benchmarks/README.md, "The nulls' compile").

  Args:
    metrics: {metric: f[..., S, N]} -> {name: f[...]} (pure jnp).
    x: f[..., S, N].
    draws: ``method_draws`` of x: {method: f[num, ..., S, N]}.
    methods: {metric: method} (``parse_methods``).

  Returns:
    (values {name: f[...]}, null {name: f[num, ...]}).
  """
  inputs = {method: jnp.concatenate([x[None], d]) for method, d in draws.items()}
  out = jax.vmap(lambda row: metrics({metric: row[method] for metric, method in methods.items()}))(
      inputs
  )
  return {k: v[0] for k, v in out.items()}, {k: v[1:] for k, v in out.items()}


def null_z_and_p(values: dict, null: dict, spec) -> dict:
  """The DSI's null from its parts' nulls (`null` holds integration, synchrony and
  metastability of every surrogate), then `<metric>_z` and `<metric>_p` of every NULL_METRICS
  value against its null (one-sided, 'greater') and of every registered metric with a null
  (spec.extra) on its registered side."""
  # Imported here: tracker imports this module, and the metric modules do not import it.
  from dynamics import stability  # pylint: disable=g-import-not-at-top

  null = dict(
      null,
      dsi=stability.stability_index(
          null['integration'],
          null['metastability'],
          spec.dsi_form,
          spec.dsi_w_integration,
          spec.dsi_w_metastability,
      ),
  )
  tests = [(name, 'greater') for name in NULL_METRICS]
  # Registered metrics with a null (spec.extra, dynamics/registry.py), on their own side.
  tests += [(m.name, m.alternative) for m in getattr(spec, 'extra', ()) if m.null is not None]
  out = {}
  for name, alternative in tests:
    stats = null_stats(values[name], null[name], alternative)
    out[f'{name}_z'] = stats['z']
    out[f'{name}_p'] = stats['p']
  return out
