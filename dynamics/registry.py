"""The metric registry: every metric the tracker computes, the built-ins and those users add.

A metric is a name, what it is computed from, its null and the side its test looks at. The
tracker (step window and epoch probe), the surrogate nulls, the exported series, the logs, the
offline recomputation, the ablation and the report all take their metric list from here, so a
registered metric appears in every one of them with no edit to the library:

    def plv(phases, valid):            # f[S, N] radians, bool[S, N] -> f[]
      ...
    dynamics.register_metric('phase_locking', plv, needs='phases', null='phase')

``fn(x, valid) -> f[]`` is pure jnp: ``x`` f[S, N] holds the S layer signals of one window
(``needs='signals'``) or their instantaneous phases (``needs='phases'``: the configured
``phase_preprocess``, then the Hilbert transform, as the built-in Kuramoto metrics see them).
``valid[s, t]`` says which samples are data. In the step window all are; the epoch probe
computes every history length with one compiled program, so there ``x`` is a fixed-capacity
buffer whose first n samples are the history and the rest padding, and ``fn`` must leave the
invalid samples out (masked sums, ``jnp.where``); it is then exactly the metric of the history.
For phases, ``valid`` also drops ``phase_edge`` samples at each end and the signals with no
phase (constant after preprocessing). The tracker vmaps ``fn`` over surrogates and replicas.

``null`` names the surrogate method of its null (``dynamics.nulls``: shuffle, phase,
phase_joint, iaaft, shift), or None for no null; with one, the metric gets ``<name>_z`` and
``<name>_p`` (alternative 'greater', 'less' or 'two-sided') like the built-ins.

The four built-ins (integration, metastability, synchrony, dsi) are registry entries too: the
metric list, its order and every output name come from here (``output_names``). What computes
them is the configured pipeline (DFA scales and order, phase preprocessing, DSI form), because
those are the fields an ablation varies; their null methods are the config's
``surrogate_methods``.

A tracker (``make_tracker``) takes the metrics registered when it is built (they are part of
its static ``MetricSpec``). The project's runs register theirs through the config field
``dynamics.metric_modules``: modules imported before the tracker is built, whose import
registers the metrics (``examples/phase_locking.py``), and which the offline analysis imports
again from the run's saved config.
"""

import importlib
import keyword
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import nulls

NEEDS = ('signals', 'phases')


class Metric(NamedTuple):
  """One registered metric (hashable: it is part of the tracker's static MetricSpec)."""

  name: str
  fn: Optional[Callable]  # (x f[S, N], valid bool[S, N]) -> f[]; None for a built-in
  needs: str  # 'signals' | 'phases' (built-in DSI: 'metrics')
  null: Optional[str]  # surrogate method, None = no null (built-ins: the config's methods)
  alternative: str = 'greater'
  min_samples: int = 2  # shorter windows / histories give NaN
  builtin: bool = False


BUILTINS = (
    Metric('integration', None, 'signals', 'config', builtin=True),
    Metric('metastability', None, 'phases', 'config', builtin=True),
    Metric('synchrony', None, 'phases', 'config', builtin=True),
    Metric('dsi', None, 'metrics', 'config', builtin=True),
)
BUILTIN_NAMES = tuple(m.name for m in BUILTINS)
# Names that the tracker's outputs already use for something else.
_RESERVED = frozenset(BUILTIN_NAMES) | {'alphas', 'signals', 'dsi_volatility', 'convergence'}

_registered: dict = {}  # name -> Metric, in registration order


def register_metric(
    name: str,
    fn: Callable,
    *,
    needs: str = 'signals',
    null: Optional[str] = 'phase',
    alternative: str = 'greater',
    min_samples: int = 2,
    replace: bool = False,
    check: bool = True,
) -> Metric:
  """Adds a metric to every tracker built from now on (see the module docstring).

  Args:
    name: an identifier (it names the outputs: dynamics/<name>, step_<name>, <name>_z).
    fn: (x f[S, N], valid bool[S, N]) -> f[], pure jnp.
    needs: 'signals' (the layer signals) or 'phases' (their instantaneous phases, radians).
    null: the surrogate method of its null (shuffle | phase | phase_joint | iaaft | shift), or
      None for none.
    alternative: the side of its surrogate test: 'greater' | 'less' | 'two-sided'.
    min_samples: the shortest window or history it is defined on (NaN below).
    replace: allow re-registering an existing name (e.g. re-running a notebook cell).
    check: call fn once on a random window, plain and padded with a mask, and refuse a fn
      that reads the masked samples or does not return a scalar (what the probe needs).

  Returns:
    The Metric.
  """
  if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
    raise ValueError(f'register_metric: name {name!r} must be a Python identifier, e.g. "plv".')
  if name in _RESERVED or name.endswith(('_z', '_p')):
    raise ValueError(
        f"register_metric: {name!r} is taken by the tracker's own outputs (built-ins "
        f'{BUILTIN_NAMES}, alphas, signals, dsi_volatility, convergence, and the *_z / *_p '
        'null statistics); choose another name.'
    )
  if name in _registered and not replace:
    raise ValueError(
        f'register_metric: {name!r} is already registered; pass replace=True to redefine it, '
        'or unregister_metric it first.'
    )
  if not callable(fn):
    raise TypeError(
        f'register_metric({name!r}): fn must be callable (x, valid) -> f[], got {fn!r}.'
    )
  if needs not in NEEDS:
    raise ValueError(f'register_metric({name!r}): needs={needs!r} must be one of {NEEDS}.')
  if null is not None and null not in nulls.SURROGATE_METHODS:
    raise ValueError(
        f'register_metric({name!r}): null={null!r} must be one of '
        f'{nulls.SURROGATE_METHODS} or None (no null).'
    )
  if alternative not in nulls.ALTERNATIVES:
    raise ValueError(
        f'register_metric({name!r}): alternative={alternative!r} must be one of '
        f'{nulls.ALTERNATIVES}.'
    )
  if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
    raise ValueError(f'register_metric({name!r}): min_samples must be a positive int.')
  metric = Metric(name, fn, needs, null, alternative, int(min_samples))
  if check:
    _check_masking(metric)
  _registered[name] = metric
  return metric


def _check_masking(metric: Metric, signals: int = 4, length: int = 24, valid: int = 16) -> None:
  """Calls fn once on a random window, then on the same window padded with other values past
  `valid` samples and masked: a fn that reads the padding would give the epoch probe (which
  pads its history) wrong values without any error, so it is refused here instead."""
  rng = np.random.default_rng(0)
  if metric.needs == 'phases':
    draw = lambda shape: rng.uniform(-np.pi, np.pi, shape)  # noqa: E731
  else:
    draw = lambda shape: rng.standard_normal(shape).cumsum(-1)  # noqa: E731
  x = draw((signals, valid)).astype(np.float32)
  padded = np.concatenate([x, 100 * draw((signals, length - valid)).astype(np.float32)], -1)
  mask = np.broadcast_to(np.arange(length) < valid, padded.shape)
  try:
    exact = np.asarray(metric.fn(jnp.asarray(x), jnp.ones(x.shape, bool)), np.float64)
    masked = np.asarray(metric.fn(jnp.asarray(padded), jnp.asarray(mask)), np.float64)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f'register_metric({metric.name!r}): fn(x, valid) failed on a test window x f32[{signals}, '
        f'{valid}] ({type(e).__name__}: {e}). It must take x f[S, N] and valid bool[S, N] and '
        'return a scalar; pass check=False to skip this test call.'
    ) from e
  if exact.shape != () or masked.shape != ():
    raise ValueError(
        f'register_metric({metric.name!r}): fn returned shape {exact.shape}; it must return a '
        'scalar f[] (reduce over the signals and samples).'
    )
  if not np.allclose(exact, masked, rtol=1e-4, atol=1e-5, equal_nan=True):
    raise ValueError(
        f'register_metric({metric.name!r}): fn gives {float(exact):.6g} on a window and '
        f'{float(masked):.6g} on the same window padded past its valid samples: it reads samples '
        'where valid is False. The epoch probe passes a padded history with a mask; leave the '
        'invalid samples out (masked sums, jnp.where), or pass check=False if this is intended.'
    )


def unregister_metric(name: str) -> None:
  """Removes a registered metric (trackers already built keep it)."""
  if name in BUILTIN_NAMES:
    raise ValueError(f'unregister_metric: {name!r} is a built-in metric.')
  if name not in _registered:
    raise KeyError(
        f'unregister_metric: {name!r} is not registered (registered: {registered_names()}).'
    )
  del _registered[name]


def registered() -> Tuple[Metric, ...]:
  """The metrics users registered, in registration order (no built-ins)."""
  return tuple(_registered.values())


def registered_names() -> Tuple[str, ...]:
  return tuple(_registered)


def metrics(extra: Tuple[Metric, ...] = ()) -> Tuple[Metric, ...]:
  """Every metric a tracker with these registered ones computes: the built-ins, then them."""
  return BUILTINS + tuple(extra)


def output_names(extra: Tuple[Metric, ...], with_nulls: bool) -> Tuple[str, ...]:
  """The metric outputs, in order: every metric's value, then (with nulls) the z and p of
  every metric that has a null."""
  values = tuple(m.name for m in metrics(extra))
  if not with_nulls:
    return values
  # The built-ins' in their long-standing order (nulls.NULL_METRICS), then the registered ones.
  tested = nulls.NULL_METRICS + tuple(m.name for m in extra if m.null is not None)
  return values + tuple(f'{name}_{s}' for name in tested for s in ('z', 'p'))


def import_modules(text: str) -> Tuple[Metric, ...]:
  """Imports the modules named in `text` (dynamics.metric_modules: comma-separated, e.g.
  'examples.phase_locking'), whose import registers metrics; returns the registered metrics.
  A module that cannot be imported is a config error (ValueError) naming it."""
  for module in (m.strip() for m in str(text or '').split(',')):
    if not module:
      continue
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ValueError(
          f'dynamics.metric_modules: cannot import {module!r} ({e}). Name an importable module '
          '(on sys.path, e.g. examples.phase_locking from the repository root) whose import calls '
          'dynamics.register_metric.'
      ) from e
  return registered()


def evaluate(
    extra: Tuple[Metric, ...],
    inputs: Dict[str, jax.Array],
    phases_of: Callable,
    valid_of: Callable,
    defined: Callable,
) -> Dict[str, jax.Array]:
  """The registered metrics in `extra` whose inputs are given: {name: f[...]}.

  inputs: {metric name: its signals f[..., S, N]} (the data, or one of its surrogates);
  phases_of(x) -> (phi, valid) and valid_of(x) -> valid: the window's (tracker) or the masked
  history's (dynamics/prefix.py) inputs; defined(metric) -> bool (static) or bool[] (traced):
  whether the window / history is long enough for it (NaN where not).
  """
  out = {}
  for metric in extra:
    if metric.name not in inputs:
      continue
    x = inputs[metric.name]
    nan = jnp.full(x.shape[:-2], jnp.nan, x.dtype)
    ok = defined(metric)
    if ok is False:
      out[metric.name] = nan
      continue
    data, valid = phases_of(x) if metric.needs == 'phases' else (x, valid_of(x))
    fn = metric.fn
    for _ in x.shape[:-2]:  # fn sees one window: f[S, N]
      fn = jax.vmap(fn)
    value = jnp.asarray(fn(data, valid))
    if value.shape != x.shape[:-2]:
      raise ValueError(
          f'registered metric {metric.name!r} returned shape {value.shape} for signals of shape '
          f'{x.shape[-2:]}; fn(x f[S, N], valid bool[S, N]) must return a scalar f[].'
      )
    out[metric.name] = jnp.where(ok, value.astype(x.dtype), nan)
  return out
