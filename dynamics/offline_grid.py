"""The metrics of many definitions at once: one compiled program per shape, not per definition.

`offline.step_series` and `offline.probe_series` compute one definition: each program is
compiled for that definition's MetricSpec (static), and each window's (epoch's) surrogates,
DFA fluctuations and Hilbert phases are computed for it alone. The definitions of an ablation
grid share most of that work:

* the surrogates of an evaluation depend only on the run's key, the step (epoch), the surrogate
  methods and their number, not on the definition's DFA or phase fields;
* F(n) of one DFA scale does not depend on which other scales a definition fits, so F over the
  union of the definitions' scale sets serves every one of them;
* R(t) depends on the phase preprocessing only; the edge only trims it.

`step_series_grid` groups the definitions by what fixes the shapes (window, every_steps,
dfa_order, surrogates and their methods). For each group one program, compiled once and shared
by every run of the same signal count, maps over the windows of a chunk and for each window
draws the surrogates once, computes F(n) over the union of the scales once and R(t) once per
preprocessing (on the window and its surrogates in one batch), then fits each distinct scale
set, trims each distinct edge and combines each definition's DSI and null statistics. Which
scale set, integration, preprocessing and edge a definition uses, and its DSI form and weights,
are traced arrays: the program depends on the distinct variants, not on the definitions.
`probe_series_grid` does the same for the epoch probe's expanding and sliding histories, with
the masked prefix functions of dynamics/prefix.py that the tracker's probe uses.

Each definition's arithmetic is `tracker.compute_metrics`' (the same functions on the same
samples; the shuffle surrogate's permutation, bit for bit the same, is found by a faster sort),
so the results equal `step_series` and `probe_series` to float32 round-off (tests/test_grid.py).
"""

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import (
    dfa,
    nulls,
    offline,
    phase,
    prefix as prefix_lib,
    stability,
    tracker as tracker_lib,
)

METRICS = tracker_lib.METRICS
HISTORIES = offline.HISTORIES


class _Plan(NamedTuple):
  """What fixes the shapes of one group's program (hashable: it keys the compiled program)."""

  window: int
  order: int
  scale_sets: Tuple[Tuple[int, ...], ...]  # the distinct DFA scale sets
  integrations: Tuple[Tuple[int, str], ...]  # distinct (scale set index, integration method)
  phases: Tuple[Tuple[str, int], ...]  # distinct (preprocessing, edge) defined on the window
  num: int  # surrogates per method; 0: no nulls
  methods: Tuple[Tuple[str, str], ...]  # (metric, surrogate method), nulls.parse_methods

  @property
  def union(self) -> Tuple[int, ...]:
    return tuple(sorted({s for scales in self.scale_sets for s in scales}))


def _slopes(plan: _Plan, x: jax.Array, f: jax.Array) -> List[jax.Array]:
  """alpha of x under each scale set, from F over the union (f[..., U]): dfa._dfa_exponent."""
  union = plan.union
  out = []
  for scales in plan.scale_sets:
    f_set = f[..., np.asarray([union.index(s) for s in scales])]
    out.append(dfa._slope(x, f_set, scales))  # pylint: disable=protected-access
  return out


def _integrations(plan: _Plan, x: jax.Array, alphas: List[jax.Array]) -> jax.Array:
  """Each (scale set, method) integration of x f[..., S, N] (dfa._integration): f[..., V]."""
  field_alphas = None
  if any(method == 'mean_field' for _, method in plan.integrations):
    field = jnp.mean(dfa._zscore_time(x), axis=-2)  # pylint: disable=protected-access
    f_field = dfa._fluctuation(field, plan.union, plan.order)  # pylint: disable=protected-access
    field_alphas = _slopes(plan, field, f_field)
  diverged = jnp.any(~jnp.isfinite(x), axis=(-2, -1))
  out = []
  for index, method in plan.integrations:
    if method == 'mean_field':
      out.append(field_alphas[index])
      continue
    # dfa._integration's per_layer_mean, on the alphas of the set.
    alpha = alphas[index]
    ok = ~jnp.isnan(alpha)
    count = jnp.sum(ok, axis=-1)
    total = jnp.sum(jnp.where(ok, alpha, 0), axis=-1)
    out.append(jnp.where((count > 0) & ~diverged, total / jnp.maximum(count, 1), jnp.nan))
  return jnp.stack(out, axis=-1)


def _order_stats(plan: _Plan, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(synchrony, metastability) of x f[..., S, N] for each (preprocessing, edge) of the plan
  (phase._synchrony, phase._metastability; R(t) once per preprocessing): f[..., Q] each."""
  if not plan.phases:
    nan = jnp.full(x.shape[:-2] + (1,), jnp.nan, x.dtype)
    return nan, nan
  orders = {}
  sync, meta = [], []
  for method, edge in plan.phases:
    if method not in orders:
      orders[method] = phase._kuramoto(x, method)  # pylint: disable=protected-access
    r = orders[method]
    trimmed = r[..., edge : r.shape[-1] - edge]
    sync.append(jnp.mean(trimmed, axis=-1))
    meta.append(jnp.std(trimmed, axis=-1))
  return jnp.stack(sync, axis=-1), jnp.stack(meta, axis=-1)


def _dsi(integration, metastability, params):
  """stability.stability_index with the form and weights traced (f[..., D] each)."""
  return jnp.where(
      params['product'],
      integration * (1 - metastability),
      params['w_integration'] * integration - params['w_metastability'] * metastability,
  )


def _variants(x, draws, methods, integrations, order_stats):
  """Every variant of the metrics of x and of its surrogates, row 0 x's, rows 1.. the draws'.

  x is evaluated in one batch with the surrogates each metric's null draws from (integration
  with its own, the phase metrics with theirs), so the program holds each computation once.
  integrations(xs) -> (f[R, V], [alphas f[R, S]]); order_stats(xs) -> (f[R, Q], f[R, Q]).
  Returns (integration, synchrony, metastability: f[1 + num, ...], alphas of x [f[S]])."""
  if not methods:
    integ, alphas = integrations(x[None])
    sync, meta = order_stats(x[None])
    return integ, sync, meta, [a[0] for a in alphas]
  integ, alphas = integrations(jnp.concatenate([x[None], draws[methods['integration']]]))
  sync, meta = order_stats(jnp.concatenate([x[None], draws[methods['synchrony']]]))
  if methods['metastability'] != methods['synchrony']:
    _, meta_null = order_stats(draws[methods['metastability']])
    meta = jnp.concatenate([meta[:1], meta_null])
  return integ, sync, meta, [a[0] for a in alphas]


def _per_definition(integ, sync, meta, params, index, phase_ok=None):
  """Each definition's metrics (f[D]) and, with surrogates (rows 1.. of the variants), the z
  and p of each against its null: nulls.null_z_and_p with the DSI form traced."""
  nan = jnp.asarray(jnp.nan, integ.dtype)
  both = dict(
      integration=integ[:, index['integration']],
      synchrony=sync[:, params['phase']],
      metastability=meta[:, params['phase']],
  )
  if phase_ok is not None:
    for name in ('synchrony', 'metastability'):
      both[name] = jnp.where(phase_ok, both[name], nan)
  both['dsi'] = _dsi(both['integration'], both['metastability'], params)
  out = {name: value[0] for name, value in both.items()}
  if integ.shape[0] > 1:
    for name in nulls.NULL_METRICS:
      s = nulls.null_stats(out[name], both[name][1:], 'greater')
      out[f'{name}_z'] = s['z']
      out[f'{name}_p'] = s['p']
  return out


def _draws(plan, x, key, surrogates) -> Tuple[Dict[str, str], Dict[str, jax.Array]]:
  """nulls.metric_nulls' surrogates of x (the same keys), shared by every definition."""
  if not plan.num:
    return {}, {}
  methods = dict(plan.methods)
  draws = {}
  for index, method in enumerate(nulls.SURROGATE_METHODS):
    if method in methods.values():
      draws[method] = surrogates(jax.random.fold_in(key, index), method)
  return methods, draws


def _window(plan: _Plan, x: jax.Array, key, params: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
  """Every definition's metrics of one window x f[S, N]: {metric: f[D]}, alphas f[D, S]."""

  def integrations(xs):
    f = dfa._fluctuation(xs, plan.union, plan.order)  # pylint: disable=protected-access
    alphas = _slopes(plan, xs, f)
    return _integrations(plan, xs, alphas), alphas

  methods, draws = _draws(plan, x, key, lambda k, method: _surrogates(k, x, plan.num, method))
  integ, sync, meta, alphas = _variants(
      x, draws, methods, integrations, lambda xs: _order_stats(plan, xs)
  )
  out = _per_definition(integ, sync, meta, params, params, params['phase_ok'])
  out['alphas'] = jnp.stack(alphas)[params['scales']]
  return out


def _surrogates(key, x: jax.Array, num: int, method: str) -> jax.Array:
  """nulls.surrogates(key, x, num, method), bit for bit (the shuffle's permutation found by a
  faster sort, `_rank_permute`)."""
  if method != 'shuffle':
    return nulls.surrogates(key, x, num, method)
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(num))
  return jax.vmap(lambda k: _rank_permute(k, x))(keys)


def _rank_permute(key, x: jax.Array) -> jax.Array:
  """nulls._rank_permute, bit for bit: each row of x in the order of a stable sort of its random
  32-bit keys (the same draw), found without the two-operand sort (which XLA:CPU runs through a
  generic comparator: 0.61 s against 0.35 s for 64 windows' 39 x 9 rows of 128 samples).

  The low bits of each key are replaced by the sample's index and the keys sorted alone; that
  orders the samples by (key's high bits, index). Only samples whose keys share the high bits
  can be out of the stable order by (key, index), and they are adjacent: odd-even
  transposition passes by (key, index) put them in order, repeated until every row is sorted
  (almost always none, as a run needs two keys equal in their high 25 bits)."""
  bits = jax.random.bits(key, x.shape, jnp.uint32)
  t = x.shape[-1]
  low = (1 << max(1, int(np.ceil(np.log2(t))))) - 1
  packed = (bits & jnp.uint32(0xFFFFFFFF ^ low)) | jnp.arange(t, dtype=jnp.uint32)
  order = (jax.lax.sort(packed, dimension=x.ndim - 1) & jnp.uint32(low)).astype(jnp.int32)

  def out_of_order(order):
    k = jnp.take_along_axis(bits, order, axis=-1)
    ties = (k[..., 1:] == k[..., :-1]) & (order[..., 1:] < order[..., :-1])
    return jnp.any((k[..., 1:] < k[..., :-1]) | ties)

  def transpose_pairs(order, start):
    pairs = (t - start) // 2
    if not pairs:
      return order
    lead = order.shape[:-1]
    seg = order[..., start : start + 2 * pairs]
    k = jnp.take_along_axis(bits, seg, axis=-1).reshape(lead + (pairs, 2))
    seg = seg.reshape(lead + (pairs, 2))
    a, b = seg[..., 0], seg[..., 1]
    swap = (k[..., 1] < k[..., 0]) | ((k[..., 1] == k[..., 0]) & (b < a))
    seg = jnp.stack([jnp.where(swap, b, a), jnp.where(swap, a, b)], axis=-1)
    return jnp.concatenate(
        [order[..., :start], seg.reshape(lead + (2 * pairs,)), order[..., start + 2 * pairs :]],
        axis=-1,
    )

  order = jax.lax.while_loop(
      out_of_order, lambda o: transpose_pairs(transpose_pairs(o, 0), 1), order
  )
  return jnp.take_along_axis(x, order, axis=-1)


def _compiled(program: Callable, static, options: Dict[str, int], *args) -> Any:
  """program(static, *args), compiled once per (program, static, argument shapes) with XLA:CPU
  `options` (other backends: their defaults). The persistent compilation cache, when on,
  keeps the compiled program across processes as it does jit's."""
  leaves, tree = jax.tree.flatten(args)
  key = (program, static, tree, tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves))
  if key not in _COMPILED:
    if len(_COMPILED) >= 64:
      _COMPILED.clear()
    lowered = jax.jit(program, static_argnums=0).lower(static, *args)
    cpu = jax.default_backend() == 'cpu'
    _COMPILED[key] = lowered.compile(compiler_options=options if cpu else None)
  return _COMPILED[key](*args)


_COMPILED: Dict[Tuple, Any] = {}
# XLA:CPU's LLVM optimisation level of the grid's programs. The step program at -O1 compiled
# in 8.5 s against 14.4 s at the default -O3, ran as fast (1.5 s for 56 windows of the demo's
# six window-128 definitions) and gave identical values; the probe program's run is short
# (0.1 s for the demo's 16 epochs), and at -O0 it compiled in 9.4 s against 15.2 s, equal to
# float32 round-off. Both measured under load 7 on the 2-core machine of benchmarks/README.md.
STEP_OPTIONS = {'xla_backend_optimization_level': 1}
PROBE_OPTIONS = {'xla_backend_optimization_level': 0}


def _chunk(plan: _Plan, windows, steps, base_key, params):
  """windows f32[B, S, N], steps int32[B] -> {metric: f32[B, D]}, alphas f32[B, D, S]."""
  if not plan.num:
    return jax.vmap(lambda x: _window(plan, x, None, params))(windows)
  # The key of each window's step, as the tracker's record_step draws it.
  keys = jax.vmap(lambda t: nulls.evaluation_key(base_key, 0, t))(steps)
  return jax.vmap(lambda x, k: _window(plan, x, k, params))(windows, keys)


def _with_registered(dcfgs: Sequence[Any]) -> bool:
  """Whether the definitions compute registered metrics (dynamics/registry.py). The shared
  programs here hold the built-ins only; with registered metrics each definition is computed
  on its own (offline.step_series / probe_series: the same results, without the sharing)."""
  return any(tracker_lib.MetricSpec.from_config(d).extra for d in dcfgs)


def step_series_grid(
    step_signals: np.ndarray,
    dcfgs: Sequence[Any],
    chunk: int = 64,
    surrogate_key: Optional[np.ndarray] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    nulls_at: str = 'every',
) -> List[Dict[str, Any]]:
  """`offline.step_series(step_signals, dcfg, surrogate_key=...)` for each of `dcfgs`, with the
  work the definitions share done once (module docstring).

  Args:
    step_signals: f32[S, steps].
    dcfgs: dynamics configs.
    chunk: about this many windows per compiled batch (`_batch`; the last one is padded).
    surrogate_key: the run's base key (`offline.surrogate_key`); with surrogates > 0 the z
      and p of each metric come out too, drawn exactly as the run did.
    progress: called as progress(chunks done, number of chunks) before each chunk.
    nulls_at: 'every' computes the z and p at every window, as the run did; 'last' only at
      each definition's last window, the others' z and p staying NaN. The surrogates are
      nearly all of a window's work (39 per method against one series), and the ablation's
      table and verdicts read only the last window's z and p, so 'last' is what it uses. The
      last window's z and p, and every window's values, are those of 'every'.

  Returns:
    [step_series' dict for each definition], in the order of `dcfgs`.
  """
  if nulls_at not in ('every', 'last'):
    raise ValueError(f"nulls_at={nulls_at!r}: one of 'every', 'last'.")
  if _with_registered(dcfgs):
    return [
        offline.step_series(step_signals, d, surrogate_key=surrogate_key, progress=progress)
        for d in dcfgs
    ]
  x = np.asarray(step_signals, np.float32)
  num_signals, num_steps = x.shape
  groups: Dict[Tuple, List[Tuple[int, Any, Tuple[int, ...]]]] = {}
  outs: List[Dict[str, Any]] = []
  for i, dcfg in enumerate(dcfgs):
    spec = tracker_lib.MetricSpec.from_config(dcfg)
    window, every = int(dcfg.window), int(dcfg.every_steps)
    scales = tracker_lib.resolve_scales(dcfg, window, strict=True)
    dfa.validate_scales(scales, window, int(spec.dfa_order))
    names = offline._metric_names(spec, surrogate_key)  # pylint: disable=protected-access
    with_nulls = offline._with_nulls(spec, surrogate_key)  # pylint: disable=protected-access
    methods = tuple(nulls.parse_methods(spec.surrogate_methods).items()) if with_nulls else ()
    group = (window, every, int(spec.dfa_order), int(spec.surrogates) if with_nulls else 0, methods)
    groups.setdefault(group, []).append((i, spec, scales))
    out = {m: np.full((num_steps,), np.nan, np.float32) for m in names + ('dsi_volatility',)}
    out['alphas'] = np.full((num_signals,), np.nan, np.float32)
    outs.append(out)
  work = []
  for (window, every, order, num, methods), members in groups.items():
    candidates = np.arange(every - 1, num_steps, every)
    due = candidates[candidates + 1 >= window]
    if len(due) > 1 and num and nulls_at == 'last':
      work.append(((window, order, 0, ()), members, due[:-1]))  # the same values, no nulls
      due = due[-1:]
    if len(due):
      work.append(((window, order, num, methods), members, due))
  total = sum(-(-len(due) // _batch(len(due), chunk)) for _, _, due in work)
  done = 0
  base_key = jnp.asarray(
      np.zeros(2, np.uint32) if surrogate_key is None else surrogate_key, jnp.uint32
  )
  for (window, order, num, methods), members, due in work:
    plan, params = _plan(window, order, num, methods, members)
    batch = _batch(len(due), chunk)
    for start in range(0, len(due), batch):
      if progress is not None:
        progress(done, total)
      done += 1
      steps = due[start : start + batch]
      pad = batch - len(steps)  # one compiled shape for every chunk
      padded = np.concatenate([steps, np.repeat(steps[-1:], pad)])
      idx = padded[:, None] - window + 1 + np.arange(window)[None, :]
      windows = np.transpose(x[:, idx], (1, 0, 2))  # [B, S, window]
      m = jax.device_get(
          _compiled(
              _chunk,
              plan,
              STEP_OPTIONS,
              jnp.asarray(windows),
              jnp.asarray(padded, jnp.int32),
              base_key,
              params,
          )
      )
      for d, (i, _, _) in enumerate(members):
        for name in outs[i]:
          if name in m and name != 'alphas':
            outs[i][name][steps] = np.asarray(m[name])[: len(steps), d]
        outs[i]['alphas'] = np.asarray(m['alphas'])[len(steps) - 1, d]
  for out, dcfg in zip(outs, dcfgs):
    out['dsi_volatility'], out['convergence'] = offline.step_detector(out['dsi'], dcfg)
  return outs


def _check_form(spec) -> None:
  """The checks stability.stability_index makes of a static form, for the traced one."""
  zero = jnp.zeros((), jnp.float32)
  stability.stability_index(
      zero, zero, spec.dsi_form, spec.dsi_w_integration, spec.dsi_w_metastability
  )


def _batch(windows: int, chunk: int) -> int:
  """Windows per compiled batch: the fewest chunks of at most about `chunk`, evened out and
  rounded up to a multiple of 4 (385 windows: 7 of 56, not 7 of 64 with 63 padded)."""
  per = -(-windows // -(-windows // chunk))
  return min((per + 3) // 4 * 4, windows)


def _plan(window, order, num, methods, members) -> Tuple[_Plan, Dict[str, jax.Array]]:
  """The group's static plan and each definition's traced parameters."""
  scale_sets, integrations, phases = [], [], []
  params = {k: [] for k in ('scales', 'integration', 'phase', 'phase_ok')}
  params.update(product=[], w_integration=[], w_metastability=[])

  def index(items, item):
    if item not in items:
      items.append(item)
    return items.index(item)

  for _, spec, scales in members:
    _check_form(spec)
    s = index(scale_sets, tuple(scales))
    params['scales'].append(s)
    params['integration'].append(index(integrations, (s, spec.integration_method)))
    ok = window >= tracker_lib.min_phase_samples(spec)
    params['phase_ok'].append(ok)
    pair = (spec.phase_preprocess, int(spec.phase_edge))
    params['phase'].append(index(phases, pair) if ok else 0)
    params['product'].append(spec.dsi_form == 'product')
    params['w_integration'].append(float(spec.dsi_w_integration))
    params['w_metastability'].append(float(spec.dsi_w_metastability))
  plan = _Plan(
      window=window,
      order=order,
      scale_sets=tuple(scale_sets),
      integrations=tuple(integrations),
      phases=tuple(phases),
      num=num,
      methods=methods,
  )
  dtypes = dict(phase_ok=jnp.bool_, product=jnp.bool_, w_integration=jnp.float32)
  dtypes['w_metastability'] = jnp.float32
  return plan, {k: jnp.asarray(v, dtypes.get(k, jnp.int32)) for k, v in params.items()}


# ------------------------------------------------------------------------------ the epoch probe


class _History(NamedTuple):
  """One probe history (expanding or sliding) of a group: its distinct DFA scale plans."""

  scale_plans: Tuple[prefix_lib.ScalePlan, ...]
  integrations: Tuple[Tuple[int, str], ...]  # distinct (scale plan index, integration method)

  @property
  def union(self) -> Tuple[int, ...]:
    return tuple(sorted({s for plan in self.scale_plans for s in plan.union}))


class _ProbeGroup(NamedTuple):
  """What fixes the shapes of one group's probe program (hashable)."""

  order: int
  sliding_epochs: int
  histories: Tuple[_History, _History]  # expanding, sliding
  phases: Tuple[Tuple[str, int], ...]  # distinct (preprocessing, edge)
  num: int
  methods: Tuple[Tuple[str, str], ...]


def _prefix_alphas(history: _History, x: jax.Array, n, f: jax.Array) -> List[jax.Array]:
  """prefix.dfa_exponent(x, n, plan, order) for each scale plan, from F over the union."""
  union = history.union
  valid = prefix_lib._valid(x.shape[-1], n)  # pylint: disable=protected-access
  out = []
  for plan in history.scale_plans:
    if not plan.union:
      out.append(jnp.full(x.shape[:-1], jnp.nan, x.dtype))
      continue
    member, defined = prefix_lib._plan_tables(plan)  # pylint: disable=protected-access
    f_plan = f[..., np.asarray([union.index(s) for s in plan.union])]
    alpha = dfa._slope(x, f_plan, plan.union, valid, jnp.asarray(member)[n])  # pylint: disable=protected-access
    out.append(jnp.where(jnp.asarray(defined)[n], alpha, jnp.nan))
  return out


def _prefix_integrations(history: _History, x: jax.Array, n, order: int):
  """(prefix.integration of x[..., :n] for each (scale plan, method): f[..., V], the alphas of
  each scale plan: [f[..., S]]), each NaN where the plan's length n has no scales."""
  valid = prefix_lib._valid(x.shape[-1], n)  # pylint: disable=protected-access
  # (An empty union: no length of the history has scales; every plan's alphas are NaN.)
  f = prefix_lib.fluctuation(x, n, history.union, order) if history.union else None
  alphas = _prefix_alphas(history, x, n, f)
  field_alphas = None
  if any(method == 'mean_field' for _, method in history.integrations):
    # prefix.integration's mean_field: dfa._zscore_time over the prefix.
    xc = x - prefix_lib._masked_mean(x, valid, n)  # pylint: disable=protected-access
    sd = jnp.sqrt(prefix_lib._masked_mean(jnp.square(xc), valid, n))  # pylint: disable=protected-access
    constant = jnp.all(jnp.where(valid, x == x[..., :1], True), axis=-1, keepdims=True)
    z = jnp.where(constant, 0, xc / jnp.where(constant, 1, sd))
    field = jnp.mean(jnp.where(valid, z, 0), axis=-2)
    f_field = prefix_lib.fluctuation(field, n, history.union, order) if history.union else None
    field_alphas = _prefix_alphas(history, field, n, f_field)
  diverged = jnp.any(valid & ~jnp.isfinite(x), axis=(-2, -1))
  out = []
  for index, method in history.integrations:
    _, defined = prefix_lib._plan_tables(history.scale_plans[index])  # pylint: disable=protected-access
    if method == 'mean_field':
      value = field_alphas[index]
    else:
      alpha = alphas[index]
      ok = ~jnp.isnan(alpha)
      count = jnp.sum(ok, axis=-1)
      total = jnp.sum(jnp.where(ok, alpha, 0), axis=-1)
      value = jnp.where((count > 0) & ~diverged, total / jnp.maximum(count, 1), jnp.nan)
    out.append(jnp.where(jnp.asarray(defined)[n], value, jnp.nan))
  return jnp.stack(out, axis=-1), alphas


def _prefix_order_stats(group: _ProbeGroup, x: jax.Array, n):
  """prefix.order_stats(x, n, method, edge) for each (method, edge): (f[..., Q], f[..., Q]),
  R(t) once per method."""
  orders = {}
  sync, meta = [], []
  for method, edge in group.phases:
    if method not in orders:
      orders[method] = prefix_lib.kuramoto_order(x, n, method)
    r, m = orders[method]
    t = jnp.arange(r.shape[-1])
    inside = (t >= edge) & (t < m - edge)
    count = prefix_lib._count(m - 2 * edge, x.dtype)  # pylint: disable=protected-access
    mean = jnp.sum(jnp.where(inside, r, 0), axis=-1) / count
    var = jnp.sum(jnp.where(inside, jnp.square(r - mean[..., None]), 0), axis=-1) / count
    defined = n >= prefix_lib.min_phase_samples(method, edge)
    sync.append(jnp.where(defined, mean, jnp.nan))
    meta.append(jnp.where(defined, jnp.sqrt(var), jnp.nan))
  return jnp.stack(sync, axis=-1), jnp.stack(meta, axis=-1)


def _probe_history(group: _ProbeGroup, which: int, x, n, key, params):
  """Every definition's compute_metrics of one history x[:, :n] (prefix.compute_metrics)."""
  history = group.histories[which]
  index = params['histories'][which]
  methods, draws = _draws(
      group, x, key, lambda k, method: prefix_lib.surrogates(k, x, n, group.num, method)
  )
  integ, sync, meta, alphas = _variants(
      x,
      draws,
      methods,
      lambda xs: _prefix_integrations(history, xs, n, group.order),
      lambda xs: _prefix_order_stats(group, xs, n),
  )
  out = _per_definition(integ, sync, meta, params, index)
  out['alphas'] = jnp.stack(alphas)[index['scales']]
  return out


def _probe_program(group: _ProbeGroup, buffer, base_key, params):
  """tracker.probe_histories_at at every count 1..E, for every definition: {'' | 'sliding_':
  {metric: f32[E, D]}, alphas f32[E, D, S]}."""
  num_signals, capacity = buffer.shape
  width = min(capacity, group.sliding_epochs)

  def one(count):
    start = jnp.maximum(count - group.sliding_epochs, 0)
    sliding = jax.lax.dynamic_slice(buffer, (0, start), (num_signals, width))
    histories = (
        ('', buffer, count),
        ('sliding_', sliding, jnp.minimum(count, group.sliding_epochs)),
    )
    out = {}
    for which, (name, history, length) in enumerate(histories):
      key = nulls.evaluation_key(base_key, which + 1, count - 1) if group.num else None
      out[name] = _probe_history(group, which, history, length, key, params)
    return out

  # In sequence, as offline.probe_series: each epoch has the tracker's shapes.
  return jax.lax.map(one, jnp.arange(1, capacity + 1, dtype=jnp.int32))


def probe_series_grid(
    probe_signals: np.ndarray, dcfgs: Sequence[Any], surrogate_key: Optional[np.ndarray] = None
) -> List[Dict[str, Any]]:
  """`offline.probe_series(probe_signals, dcfg, surrogate_key)` for each of `dcfgs`, with the
  work they share done once: one program per group of definitions with the same DFA order,
  sliding history and surrogates (the module docstring; the probe's functions are
  dynamics/prefix.py's)."""
  if _with_registered(dcfgs):
    return [offline.probe_series(probe_signals, d, surrogate_key) for d in dcfgs]
  x = np.asarray(probe_signals, np.float32)
  num_signals, num_epochs = x.shape
  outs: List[Dict[str, Any]] = []
  groups: Dict[Tuple, List[Tuple[int, Any, Any]]] = {}
  for i, dcfg in enumerate(dcfgs):
    spec = tracker_lib.MetricSpec.from_config(dcfg)
    names = offline._metric_names(spec, surrogate_key)  # pylint: disable=protected-access
    with_nulls = offline._with_nulls(spec, surrogate_key)  # pylint: disable=protected-access
    methods = tuple(nulls.parse_methods(spec.surrogate_methods).items()) if with_nulls else ()
    out = {p + m: np.full((num_epochs,), np.nan, np.float32) for p in HISTORIES for m in names}
    out['alphas'] = np.full((num_signals,), np.nan, np.float32)
    outs.append(out)
    if num_epochs:
      plan = tracker_lib.probe_plan(dcfg, num_epochs, spec)
      group = (
          int(spec.dfa_order),
          int(dcfg.sliding_epochs),
          int(spec.surrogates) if methods else 0,
          methods,
      )
      groups.setdefault(group, []).append((i, spec, plan))
  base_key = jnp.asarray(
      np.zeros(2, np.uint32) if surrogate_key is None else surrogate_key, jnp.uint32
  )
  for (order, sliding, num, methods), members in groups.items():
    group, params = _probe_group(order, sliding, num, methods, members)
    result = jax.device_get(
        _compiled(_probe_program, group, PROBE_OPTIONS, jnp.asarray(x), base_key, params)
    )
    for d, (i, spec, _) in enumerate(members):
      for history, m in result.items():
        for name in offline._metric_names(spec, surrogate_key):  # pylint: disable=protected-access
          outs[i][history + name][:] = np.asarray(m[name])[:, d]
      outs[i]['alphas'] = np.asarray(result['']['alphas'])[-1, d]
  for out, dcfg in zip(outs, dcfgs):
    for history in HISTORIES:
      vol, conv = tracker_lib.probe_volatility(jnp.asarray(out[history + 'dsi']), dcfg)
      out[history + 'dsi_volatility'] = np.asarray(vol, np.float32)
      out[history + 'convergence'] = int(conv)
  return outs


def _probe_group(order, sliding, num, methods, members):
  """The probe group's static plan and each definition's traced parameters."""
  plans: Tuple[List, List] = ([], [])
  integrations: Tuple[List, List] = ([], [])
  phases: List = []
  index = ({'scales': [], 'integration': []}, {'scales': [], 'integration': []})
  params = dict(phase=[], product=[], w_integration=[], w_metastability=[])

  def position(items, item):
    if item not in items:
      items.append(item)
    return items.index(item)

  for _, spec, plan in members:
    _check_form(spec)
    for which, scale_plan in enumerate((plan.expanding, plan.sliding)):
      s = position(plans[which], scale_plan)
      index[which]['scales'].append(s)
      index[which]['integration'].append(
          position(integrations[which], (s, spec.integration_method))
      )
    params['phase'].append(position(phases, (spec.phase_preprocess, int(spec.phase_edge))))
    params['product'].append(spec.dsi_form == 'product')
    params['w_integration'].append(float(spec.dsi_w_integration))
    params['w_metastability'].append(float(spec.dsi_w_metastability))
  group = _ProbeGroup(
      order=order,
      sliding_epochs=sliding,
      histories=tuple(_History(tuple(plans[w]), tuple(integrations[w])) for w in range(2)),
      phases=tuple(phases),
      num=num,
      methods=methods,
  )
  traced = {
      'phase': jnp.asarray(params['phase'], jnp.int32),
      'product': jnp.asarray(params['product'], jnp.bool_),
      'w_integration': jnp.asarray(params['w_integration'], jnp.float32),
      'w_metastability': jnp.asarray(params['w_metastability'], jnp.float32),
      'histories': tuple({k: jnp.asarray(v, jnp.int32) for k, v in h.items()} for h in index),
  }
  return group, traced
