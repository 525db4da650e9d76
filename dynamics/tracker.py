"""The dynamics tracker: init / record / summarize, optax style, living in the train state.

Two sources of layer signals (DESIGN 3.1):

* step mode: `record_step` runs inside the jitted train step. It reduces the taps of the
  training forward pass to signals f32[S] and writes them, with the step's metrics, into ring
  buffers of the last `recent_steps` steps (K, at least the window): the state's size does not
  depend on the run's length. Every `every_steps` steps, once `window` samples exist, it
  computes the window metrics over the ring's last `window` signals under a `lax.cond` (no
  retracing, nothing computed over unfilled samples). The host takes the whole-run series out
  in chunks with `drain` (at least every K steps; `dynamics.StepSeries` collects them) and
  `export` joins them to the rest of the state.
* probe (epoch) mode: `probe_update` runs at the end of every epoch on the signals of a fixed
  probe batch in inference mode and computes the metrics over the whole history (expanding)
  and over the last `sliding_epochs` samples. The history is a buffer of the run's num_epochs
  samples and its length a traced count (dynamics/prefix.py computes the metrics of a prefix
  of it), so `probe_update` compiles once for the whole run and can be jitted inside a user's
  own evaluation step; it equals `probe_histories` on the history sliced to its length.

The state is a flat dict of arrays, so it checkpoints with the rest of the train state and
gains a leading replica axis under `vmap` when several seeds train together.
"""

from collections.abc import Mapping
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import (
    config as config_lib,
    dfa,
    nulls,
    phase,
    prefix as prefix_lib,
    registry,
    signals,
    stability,
)
from dynamics.sizing import (  # noqa: F401  (re-exported: tracker.resolve_scales etc., as before)
    AUTO,
    AUTO_DEFAULTS,
    AUTO_RECENT_STEPS,
    auto_volatility_window,
    auto_window,
    computed_windows,
    min_dfa_length,
    min_phase_samples,
    min_step_window,
    recent_steps,
    resolve_auto,
    resolve_scales,
)
from dynamics.taps import check_taps  # noqa: F401  (dynamics.tracker.check_taps, as before)

State = Dict[str, jnp.ndarray]
METRICS = registry.BUILTIN_NAMES  # integration, metastability, synchrony, dsi
# z-score and p-value of each built-in metric against its surrogate null (DESIGN 3.6;
# dynamics/nulls.py); MetricSpec.output_names adds those of registered metrics.
NULL_KEYS = tuple(f'{m}_{s}' for m in nulls.NULL_METRICS for s in ('z', 'p'))
# jax.named_scope names of the tracker's two pieces of work inside a step, so that they can be
# told apart in a compiled program's HLO: the tap reductions (every step) and the window
# evaluation (every `every_steps` steps, under a lax.cond).
SIGNALS_SCOPE = 'dynamics_signals'
WINDOW_SCOPE = 'dynamics_window'


class MetricSpec(NamedTuple):
  """The static (hashable) part of the dynamics config that defines the metrics."""

  dfa_order: int = 1
  integration_method: str = 'per_layer_mean'
  phase_preprocess: str = 'detrend'
  phase_edge: int = 0
  dsi_form: str = 'product'
  dsi_w_integration: float = 1.0
  dsi_w_metastability: float = 1.0
  # The config's default (39), so that `compute_metrics(x, MetricSpec(), scales, key)` draws
  # the same nulls as a run with the default config; 0 turns the nulls off.
  surrogates: int = config_lib.SURROGATES
  surrogate_methods: str = nulls.DEFAULT_METHODS
  # The registered metrics computed besides the built-ins (dynamics/registry.py).
  extra: Tuple[registry.Metric, ...] = ()

  @classmethod
  def from_config(cls, dcfg: Any) -> 'MetricSpec':
    """The config's definition, with the metrics registered now (after importing the config's
    dynamics.metric_modules, which register theirs)."""
    fields = {field: dcfg[field] for field in cls._fields if field != 'extra'}
    if fields['phase_preprocess'] == 'bandpass':  # the band travels in the static method
      fields['phase_preprocess'] = phase.bandpass_method(dcfg.get('phase_band', '0.02,0.2'))
    fields['extra'] = registry.import_modules(dcfg.get('metric_modules', ''))
    return cls(**fields)

  def output_names(self, with_nulls: bool) -> Tuple[str, ...]:
    """The metric outputs of this definition: values, then z and p (registry.output_names)."""
    return registry.output_names(self.extra, with_nulls and int(self.surrogates) > 0)

  def null_methods(self) -> Dict[str, str]:
    """{metric: surrogate method} of every metric computed from its own surrogates."""
    methods = nulls.parse_methods(self.surrogate_methods)
    methods.update({m.name: m.null for m in self.extra if m.null is not None})
    return methods


def compute_metrics(
    x: jnp.ndarray,
    spec: MetricSpec,
    scales: Optional[Tuple[int, ...]],
    key: Optional[jnp.ndarray] = None,
) -> Dict[str, jnp.ndarray]:
  """x: f[..., S, N] -> integration, metastability, synchrony, dsi f[...], alphas f[..., S].

  Entries that the history cannot define yet (too short for the scales or the Hilbert
  transform) are NaN. The same function serves step mode, probe mode and offline ablation.
  With a key (a key array of shape x.shape[:-2], one per evaluation) and spec.surrogates > 0,
  also NULL_KEYS: each metric's z and p against spec.surrogates surrogates; the values and the
  nulls come from one copy of the metric pipeline (nulls.values_and_nulls).
  """
  per_layer = spec.integration_method == 'per_layer_mean'
  how = (spec.phase_preprocess, spec.phase_edge)
  length = x.shape[-1]

  def defined(metric: registry.Metric) -> bool:
    needed = metric.min_samples
    if metric.needs == 'phases':
      needed = max(needed, min_phase_samples(spec))
    return length >= needed

  def registered(inputs):
    return registry.evaluate(
        spec.extra,
        inputs,
        lambda xr: phase.phases(xr, *how),
        lambda xr: jnp.ones(xr.shape, bool),
        defined,
    )

  def alphas_of(xi):
    nan = jnp.full(xi.shape[:-1], jnp.nan, xi.dtype)
    return nan if scales is None else dfa.dfa_exponent(xi, scales, spec.dfa_order)

  def metrics(inputs: Dict[str, jnp.ndarray], with_alphas: bool) -> Dict[str, jnp.ndarray]:
    """Each metric of its own signals f[..., S, N] ({metric: signals}); no DSI."""
    xi, xs, xm = (inputs[name] for name in nulls.SIGNAL_METRICS)
    nan = jnp.full(xi.shape[:-2], jnp.nan, xi.dtype)
    out = {'alphas': alphas_of(xi)} if with_alphas else {}
    if scales is None:
      out['integration'] = nan
    else:
      out['integration'] = dfa.integration(xi, scales, spec.dfa_order, spec.integration_method)
    phased = xs.shape[-1] >= min_phase_samples(spec)
    out['synchrony'] = phase.synchrony(xs, *how) if phased else nan
    out['metastability'] = phase.metastability(xm, *how) if phased else nan
    out.update(registered(inputs))
    return out

  def with_dsi(out: Dict[str, jnp.ndarray]) -> Dict[str, jnp.ndarray]:
    form = (spec.dsi_form, spec.dsi_w_integration, spec.dsi_w_metastability)
    return dict(out, dsi=stability.stability_index(out['integration'], out['metastability'], *form))

  everything = nulls.SIGNAL_METRICS + tuple(m.name for m in spec.extra)
  if key is None or spec.surrogates <= 0:
    return with_dsi(metrics({name: x for name in everything}, with_alphas=True))
  methods = spec.null_methods()

  def one(k, signals_):
    draws = nulls.method_draws(k, signals_, int(spec.surrogates), methods)
    # The alphas come with per_layer_mean's integration; mean_field's DFA is of the mean field.
    values, null = nulls.values_and_nulls(lambda s: metrics(s, per_layer), signals_, draws, methods)
    if not per_layer:
      values['alphas'] = alphas_of(signals_)
    # Registered metrics without a null: of the data only.
    values.update(registered({m: signals_ for m in everything if m not in values}))
    values = with_dsi(values)
    return dict(values, **nulls.null_z_and_p(values, null, spec))

  for _ in x.shape[:-2]:  # one vmap per batch axis: each evaluation draws from its own key
    one = jax.vmap(one)
  return one(key, x)


def probe_histories(
    history: jnp.ndarray, dcfg: Any, spec: MetricSpec, surrogate_key: Optional[jnp.ndarray] = None
) -> Dict[str, Dict[str, jnp.ndarray]]:
  """history: f32[S, n], the probe signals of epochs 0..n-1 -> compute_metrics of the
  expanding history ('') and of its last `sliding_epochs` samples ('sliding_'), as at epoch
  n-1. Shared by the tracker and the offline ablation (analysis/ablation.py).

  surrogate_key: the run's uint32[2] base key (state['surrogate_key']); None = no nulls."""
  n = history.shape[-1]
  sliding = history[:, max(0, n - int(dcfg.sliding_epochs)) :]
  out = {}
  for mode, (prefix, h) in enumerate((('', history), ('sliding_', sliding)), start=1):
    key = None if surrogate_key is None else nulls.evaluation_key(surrogate_key, mode, n - 1)
    out[prefix] = compute_metrics(h, spec, resolve_scales(dcfg, h.shape[-1]), key)
  return out


class ProbePlan(NamedTuple):
  """What the probe's metrics need to know on the host, for a history buffer of `capacity`
  samples (hashable: it keys compiled programs). Built by `probe_plan`."""

  spec: MetricSpec
  sliding_epochs: int
  expanding: prefix_lib.ScalePlan  # DFA scales of every history length 0..capacity
  sliding: prefix_lib.ScalePlan  # ... 0..min(capacity, sliding_epochs)


def probe_plan(dcfg: Any, capacity: int, spec: Optional[MetricSpec] = None) -> ProbePlan:
  """The ProbePlan of a probe history of at most `capacity` samples under `dcfg`.

  The DFA scales of every length come from `resolve_scales`, as `probe_histories` takes them,
  and are checked against the DFA order here (what `probe_histories` would raise at the first
  epoch long enough for them, this raises before the first epoch)."""
  spec = MetricSpec.from_config(dcfg) if spec is None else spec
  capacity = max(int(capacity), 1)
  sliding = int(dcfg.sliding_epochs)
  sets = []
  for n in range(capacity + 1):
    scales = resolve_scales(dcfg, n)
    if scales is not None:
      dfa.validate_scales(scales, n, int(spec.dfa_order))
    sets.append(scales)
  expanding = prefix_lib.ScalePlan(tuple(sets))
  return ProbePlan(
      spec=spec,
      sliding_epochs=sliding,
      expanding=expanding,
      sliding=prefix_lib.ScalePlan(expanding.sets[: min(capacity, sliding) + 1]),
  )


def probe_histories_at(
    buffer: jnp.ndarray,
    count: jax.typing.ArrayLike,
    plan: ProbePlan,
    surrogate_key: Optional[jnp.ndarray] = None,
) -> Dict[str, Dict[str, jnp.ndarray]]:
  """`probe_histories(buffer[:, :count], ...)` with count traced: one program for every count.

  buffer: f32[S, C] (C = the plan's capacity), the probe signals of epochs 0..count-1 in its
  first count columns (what follows is ignored); count: int32[], 1 <= count <= C."""
  count = jnp.asarray(count, jnp.int32)
  num_signals, capacity = buffer.shape
  width = min(capacity, plan.sliding_epochs)
  start = jnp.maximum(count - plan.sliding_epochs, 0)
  sliding = jax.lax.dynamic_slice(buffer, (0, start), (num_signals, width))
  histories = (
      ('', buffer, count, plan.expanding),
      ('sliding_', sliding, jnp.minimum(count, plan.sliding_epochs), plan.sliding),
  )
  out = {}
  for mode, (name, history, length, scale_plan) in enumerate(histories, start=1):
    key = None if surrogate_key is None else nulls.evaluation_key(surrogate_key, mode, count - 1)
    out[name] = prefix_lib.compute_metrics(history, length, plan.spec, scale_plan, key)
  return out


def probe_volatility(dsi: jnp.ndarray, dcfg: Any) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """dsi: f32[n], one history's DSI per epoch -> (volatility f32[n], NaN until
  `volatility_window_epochs` values exist; convergence epoch int32, 0-based, -1 if not fired)."""
  window = int(dcfg.volatility_window_epochs)
  vol = (
      stability.rolling_volatility(dsi, window)
      if dsi.shape[-1] >= window
      else jnp.full(dsi.shape, jnp.nan, jnp.float32)
  )
  conv = stability.convergence_signal(
      vol, dcfg.convergence_rho, dcfg.convergence_patience, dcfg.convergence_warmup_epochs
  ).astype(jnp.int32)
  return vol, conv


class Tracker(NamedTuple):
  """Pure functions over the tracker state; build with `make_tracker`."""

  init: Callable[[], State]
  record_step: Callable[
      [State, Dict[str, jnp.ndarray], jnp.ndarray], Tuple[State, Dict[str, jnp.ndarray]]
  ]
  reduce: Callable[[Dict[str, jnp.ndarray]], jnp.ndarray]
  probe_update: Callable[[State, jnp.ndarray], State]
  summarize_step: Callable[[Dict[str, Any]], Dict[str, float]]
  summarize_probe: Callable[[State], Tuple[Dict[str, float], Dict[str, np.ndarray]]]
  export: Callable[..., Dict[str, np.ndarray]]
  signal_names: Sequence[str]
  tap_names: Sequence[str]
  drain: Callable[[State, int], Dict[str, np.ndarray]] = None
  recent_steps: int = 0  # K: drain at least every K steps
  series_keys: Sequence[str] = ()  # the step series drain returns, besides 'steps'


# State entries that only serve the step ring (not exported: the series leave through drain).
_RING_KEYS = ('step_last', 'step_dsi_history')
_RING_PREFIX = 'step_recent_'


def make_tracker(
    dcfg: Any,
    tap_shapes: Dict[str, Tuple[int, ...]],
    num_steps: Optional[int],
    num_epochs: int,
    seed: int = 0,
    on_step_past_end: Optional[Callable[[np.ndarray], None]] = None,
) -> Tracker:
  """dcfg: config.dynamics; tap_shapes: {tap: shape} from jax.eval_shape of the model; seed:
  the run seed, from which the surrogate draws derive (state['surrogate_key']).

  num_steps: the run's training steps, or None (no end: the state's size never depended on it;
  it only bounds the steps recorded). A `record_step` at a step >= num_steps records nothing;
  on_step_past_end, if given, is called on the host with that step (a jax.debug.callback, only
  traced in when given: dynamics.make_tracker warns with it)."""
  spec = MetricSpec.from_config(dcfg)
  with_nulls = int(spec.surrogates) > 0
  nulls.parse_methods(spec.surrogate_methods)  # a config error now, not inside the step
  metric_keys = spec.output_names(with_nulls)  # built-ins, then registered metrics
  series_keys = ('signals',) + metric_keys + ('dsi_volatility',)
  tap_names = sorted(tap_shapes)
  kind, k = signals.parse_reduction(dcfg.reduction)
  projections = (
      signals.make_projections([tap_shapes[t][-1] for t in tap_names], k, dcfg.projection_seed)
      if kind == 'proj'
      else []
  )
  names = signals.signal_names(tap_names, dcfg.reduction)
  num_signals = len(names)
  window, every = int(dcfg.window), int(dcfg.every_steps)
  step_scales = resolve_scales(dcfg, window, strict=True) if dcfg.step_mode else None
  vol_steps = int(dcfg.volatility_window_steps)
  num_epochs = max(int(num_epochs), 1)
  # The step ring: the last K steps' signals and metrics; column s % K holds step s.
  ring = recent_steps(dcfg) if dcfg.step_mode else 0

  def reduce(taps: Dict[str, jnp.ndarray]) -> jnp.ndarray:
    """taps {name: f[B, ..., C]}, the names and shapes of `tap_shapes` -> signals f32[S]."""
    check_taps(taps, tap_shapes, dcfg.reduction)
    # The scope names these ops in the compiled HLO (benchmarks/bench_tracker_hlo.py).
    with jax.named_scope(SIGNALS_SCOPE):
      return signals.reduce_taps(taps, dcfg.reduction, projections)

  def init() -> State:
    # Every entry is its own buffer (no array shared between keys), so that a step may donate
    # the state (jax.jit(..., donate_argnums=...)): XLA refuses to donate one buffer twice.
    f32 = jnp.float32

    def nan_epochs():
      return jnp.full((num_epochs,), jnp.nan, f32)

    state = {}
    if with_nulls:
      # Raw key data, so the state stays a plain dict of uint/float arrays (checkpointable,
      # and a replica axis can hold one key per seed).
      state['surrogate_key'] = jax.random.key_data(jax.random.key(seed))
    if dcfg.step_mode:
      state.update(
          step_recent_signals=jnp.zeros((num_signals, ring), f32),
          **{f'{_RING_PREFIX}{m}': jnp.full((ring,), jnp.nan, f32) for m in series_keys[1:]},
          step_last=jnp.full((), -1, jnp.int32),  # the last step recorded
          step_dsi_history=jnp.full((vol_steps,), jnp.nan, f32),  # the last computed DSIs
          step_alphas=jnp.full((num_signals,), jnp.nan, f32),
          step_vol_max=jnp.zeros((), f32),
          step_streak=jnp.zeros((), jnp.int32),
          step_streak_start=jnp.full((), -1, jnp.int32),
          step_convergence=jnp.full((), -1, jnp.int32),
      )
    if dcfg.probe_mode:
      state.update(
          probe_signals=jnp.zeros((num_signals, num_epochs), f32),
          probe_count=jnp.zeros((), jnp.int32),
          probe_alphas=jnp.full((num_signals,), jnp.nan, f32),
          **{
              f'probe_{h}{m}': nan_epochs()
              for h in ('', 'sliding_')
              for m in metric_keys + ('dsi_volatility',)
          },
          probe_convergence=jnp.full((), -1, jnp.int32),
          probe_sliding_convergence=jnp.full((), -1, jnp.int32),
      )
    return state

  def _window_metrics(window_signals, key):
    with jax.named_scope(WINDOW_SCOPE):
      return compute_metrics(window_signals, spec, step_scales, key if with_nulls else None)

  def _skip(window_signals, key):
    nan = jnp.full((), jnp.nan, jnp.float32)
    return dict(
        **{name: nan for name in metric_keys}, alphas=jnp.full((num_signals,), jnp.nan, jnp.float32)
    )

  def _set(ring_values, column, value, inside):
    return jax.lax.dynamic_update_slice(
        ring_values,
        jnp.where(inside, value, jax.lax.dynamic_slice(ring_values, (column,), (1,))),
        (column,),
    )

  def record_step(
      state: State, taps: Dict[str, jnp.ndarray], step: jax.typing.ArrayLike
  ) -> Tuple[State, Dict[str, jnp.ndarray]]:
    """Inside the train step: record this step's signals; maybe compute the window metrics.

    step: int32[], consecutive from 0 over the run (a resumed run continues the count)."""
    if not dcfg.step_mode:
      return state, {}
    state = dict(state)
    step = jnp.asarray(step, jnp.int32)
    sig = reduce(taps)
    # Past the end of the run the sample is dropped (no step of it is recorded or computed).
    inside = step < num_steps if num_steps is not None else jnp.ones((), bool)
    column = step % ring
    old = jax.lax.dynamic_slice(state['step_recent_signals'], (0, column), (num_signals, 1))
    state['step_recent_signals'] = jax.lax.dynamic_update_slice(
        state['step_recent_signals'], jnp.where(inside, sig[:, None], old), (0, column)
    )
    state['step_last'] = jnp.where(inside, step, state['step_last'])
    if on_step_past_end is not None:
      jax.lax.cond(
          inside,
          lambda s: None,
          lambda s: jax.debug.callback(on_step_past_end, s),
          step,
      )
    due = (step + 1 >= window) & ((step + 1) % every == 0) & inside
    key = (
        nulls.evaluation_key(state['surrogate_key'], 0, step)
        if with_nulls
        else jnp.zeros((), jnp.int32)
    )
    # The ring's last `window` columns, oldest first (steps step-window+1 .. step).
    window_signals = state['step_recent_signals'][
        :, (column - window + 1 + jnp.arange(window)) % ring
    ]
    m = jax.lax.cond(due, _window_metrics, _skip, window_signals, key)
    for name in metric_keys:  # NaN where no window is computed
      state[_RING_PREFIX + name] = _set(state[_RING_PREFIX + name], column, m[name][None], inside)
    state['step_alphas'] = jnp.where(due, m['alphas'], state['step_alphas'])
    # Volatility over the last `vol_steps` computed DSI values (every `every` steps): defined
    # once that many exist and all are finite.
    history = jnp.where(
        due,
        jnp.concatenate([state['step_dsi_history'][1:], m['dsi'][None]]),
        state['step_dsi_history'],
    )
    state['step_dsi_history'] = history
    vol = jnp.where(due & jnp.all(jnp.isfinite(history)), jnp.std(history), jnp.nan)
    state[_RING_PREFIX + 'dsi_volatility'] = _set(
        state[_RING_PREFIX + 'dsi_volatility'], column, vol[None], inside
    )
    # Online form of stability.convergence_signal over the computed samples.
    finite = due & jnp.isfinite(vol)
    vol_max = jnp.where(finite, jnp.maximum(state['step_vol_max'], vol), state['step_vol_max'])
    quiet = (
        finite
        & (step >= dcfg.convergence_warmup_steps)
        & (vol_max > 0)
        & (vol <= dcfg.convergence_rho * vol_max)
    )
    streak = jnp.where(due, jnp.where(quiet, state['step_streak'] + 1, 0), state['step_streak'])
    streak_start = jnp.where(
        due & quiet & (state['step_streak'] == 0), step, state['step_streak_start']
    )
    fired = (state['step_convergence'] < 0) & (streak >= dcfg.convergence_patience)
    state.update(
        step_vol_max=vol_max,
        step_streak=streak,
        step_streak_start=streak_start,
        step_convergence=jnp.where(fired, streak_start, state['step_convergence']),
    )
    out = {f'dynamics/{name}': m[name] for name in metric_keys}
    out['dynamics/dsi_volatility'] = vol
    out['dynamics/convergence_step'] = state['step_convergence']
    return state, out

  def drain(state: State, since: int = 0) -> Dict[str, np.ndarray]:
    """Host side: the step series of steps `since` .. the last recorded, from the ring.

    Returns {'steps': int64[n], 'step_signals': f32[S, n], 'step_<metric>': f32[n]} (n = 0 when
    nothing newer than `since` was recorded). The ring holds the last K = recent_steps steps, so
    drain at least every K steps; a step already overwritten is a ValueError. Pure: the state
    is not changed, so draining twice, or after a restore, gives the same records."""
    last = int(np.asarray(state['step_last']))
    since = int(since)
    oldest = max(last - ring + 1, 0)
    if since < oldest and last >= 0:
      raise ValueError(
          f'drain(since={since}): the tracker holds steps {oldest}..{last} only (its ring keeps '
          f'the last dynamics.recent_steps={ring} steps), so steps {since}..{oldest - 1} are '
          f'lost. Drain at least every {ring} steps, or build the tracker with a larger '
          'dynamics.recent_steps.'
      )
    steps = np.arange(since, last + 1, dtype=np.int64)
    columns = steps % ring
    out = {'steps': steps}
    for name in series_keys:
      out[f'step_{name}'] = np.asarray(state[_RING_PREFIX + name])[..., columns]
    return out

  def summarize_step(fetched: Dict[str, Any]) -> Dict[str, float]:
    """Host side: the finite step-mode scalars of one step's fetched metrics."""
    out = {}
    for key, value in fetched.items():
      if not key.startswith('dynamics/'):
        continue
      value = float(value)
      if key == 'dynamics/convergence_step':
        if value >= 0:
          # The state holds the 0-based index into the step series (as dynamics.npz's
          # step_convergence); the log's steps are 1-based (step s = s steps done), as are
          # the plots and the report: index i is step i + 1.
          out[key] = value + 1
      elif np.isfinite(value):
        out[key] = value
    return out

  plan = probe_plan(dcfg, num_epochs, spec) if dcfg.probe_mode else None

  @jax.jit
  def _probe_update(state: State, sig: jnp.ndarray) -> State:
    state = dict(state)
    # A sample past the end of the history (num_epochs) is dropped, as record_step drops a
    # step past num_steps; probe_update raises before that where it can see the count.
    inside = state['probe_count'] < num_epochs
    count = jnp.where(inside, state['probe_count'] + 1, state['probe_count'])
    index = jnp.maximum(count - 1, 0)
    column = jax.lax.dynamic_slice(state['probe_signals'], (0, index), (num_signals, 1))
    state['probe_signals'] = jax.lax.dynamic_update_slice(
        state['probe_signals'], jnp.where(inside, sig[:, None], column), (0, index)
    )
    state['probe_count'] = count
    histories = probe_histories_at(
        state['probe_signals'], jnp.maximum(count, 1), plan, state.get('surrogate_key')
    )
    filled = jnp.arange(num_epochs) < count
    for history, m in histories.items():
      prefix = 'probe_' + history
      for name in metric_keys:
        old = state[prefix + name]
        state[prefix + name] = old.at[index].set(jnp.where(inside, m[name], old[index]))
      if not history:
        state['probe_alphas'] = jnp.where(inside, m['alphas'], state['probe_alphas'])
      # Over the whole buffer: the volatility only looks back and the DSI is NaN past the
      # count, so entries < count are those of the history and the rest stay NaN.
      vol, conv = probe_volatility(state[prefix + 'dsi'], dcfg)
      state[prefix + 'dsi_volatility'] = jnp.where(filled, vol, state[prefix + 'dsi_volatility'])
      state[prefix + 'convergence'] = conv
    return state

  def probe_update(state: State, sig: jnp.ndarray) -> State:
    """At the end of an epoch: append the probe signals f32[S] and recompute the metrics.

    Compiles once for the run (the history length is a traced count) and can be called
    inside the user's own jitted evaluation step. Called eagerly it raises on a sample past
    num_epochs; traced, such a sample is dropped (the state is returned unchanged)."""
    try:
      count = int(state['probe_count']) + 1
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
      count = None  # traced (inside a jit): the step cannot raise; _probe_update drops it
    if count is not None and count > num_epochs:
      raise ValueError(f'More probe samples ({count}) than epochs ({num_epochs}).')
    return _probe_update(state, sig)

  def summarize_probe(state: State) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Host side: scalars and per-tap alphas of the latest probe sample."""
    index = int(state['probe_count']) - 1
    scalars = {}
    for prefix, label in (
        ('probe_', 'dynamics_epoch'),
        ('probe_sliding_', 'dynamics_epoch_sliding'),
    ):
      for name in metric_keys + ('dsi_volatility',):
        value = float(state[prefix + name][index])
        if np.isfinite(value):
          scalars[f'{label}/{name}'] = value
      epoch = int(state[prefix + 'convergence'])
      if epoch >= 0:
        scalars[f'{label}/convergence_epoch'] = float(epoch + 1)
    alphas = np.asarray(state['probe_alphas'])
    hists = {'dynamics_epoch/alpha': alphas} if np.isfinite(alphas).any() else {}
    return scalars, hists

  def export(
      state: State, step_series: Optional[Mapping[str, np.ndarray]] = None
  ) -> Dict[str, np.ndarray]:
    """Everything needed to recompute the metrics offline (written to dynamics.npz).

    step_series: the whole run's step series, as drained ({'step_signals': f32[S, n],
    'step_<metric>': f32[n]}, e.g. `StepSeries.arrays()`), steps 0..n-1; exported padded to
    num_steps (signals 0, metrics NaN, as for steps never recorded). None: the ring's own
    records, which is the whole series only while the run has recorded at most K steps."""
    out = {
        k: np.asarray(v)
        for k, v in state.items()
        if k not in _RING_KEYS and not k.startswith(_RING_PREFIX)
    }
    if 'step_last' in state:
      if step_series is None:
        last = int(np.asarray(state['step_last']))
        if last >= ring:
          raise ValueError(
              f'export: the state holds only the last {ring} of the {last + 1} steps recorded '
              '(dynamics.recent_steps); pass the whole series as export(state, step_series=...), '
              'collected with dynamics.StepSeries (series.update(tracker, state) at least every '
              f'{ring} steps).'
          )
        step_series = drain(state, 0)
      recorded = np.asarray(step_series['step_signals']).shape[-1]
      length = recorded if num_steps is None else int(num_steps)
      for name in series_keys:
        values = np.asarray(step_series[f'step_{name}'], np.float32)[..., :length]
        pad = [(0, 0)] * (values.ndim - 1) + [(0, length - values.shape[-1])]
        fill = 0.0 if name == 'signals' else np.nan
        out[f'step_{name}'] = np.pad(values, pad, constant_values=fill)
    if 'probe_count' in out:
      count = int(out['probe_count'])
      probe_series = ('signals',) + metric_keys + ('dsi_volatility',)
      for key in [f'probe_{k}' for k in probe_series] + [
          f'probe_sliding_{k}' for k in probe_series[1:]
      ]:
        out[key] = out[key][..., :count]
    out['tap_names'] = np.asarray(tap_names)
    out['signal_names'] = np.asarray(names)
    for index, p in enumerate(projections):
      out[f'projection_{index:02d}'] = p
    if step_scales is not None:
      out['step_scales'] = np.asarray(step_scales)
      out['step_window'] = np.asarray(window)
    return out

  return Tracker(
      init=init,
      record_step=record_step,
      reduce=reduce,
      probe_update=probe_update,
      summarize_step=summarize_step,
      summarize_probe=summarize_probe,
      export=export,
      signal_names=names,
      tap_names=tap_names,
      drain=drain,
      recent_steps=ring,
      series_keys=tuple(f'step_{name}' for name in series_keys),
  )
