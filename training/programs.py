"""The run's programs: the model, optimiser and tracker, and the jitted initial state, train
step, eval step and probe with their shardings, built from the plan (no data, no workdir)."""

import functools
import math
import os
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

import models
from dynamics import tracker as tracker_lib
from training import (
    early_stop as early_stop_lib,
    fit as fit_lib,
    optim,
    replicas as replicas_lib,
    steps,
)


def make_mesh():
  """A 1-D ('data',) mesh over every device of every process; Auto axes let XLA insert the
  collectives (BatchNorm statistics and gradients over the global batch)."""
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


# XLA:CPU's LLVM at its default -O3 spends most of the initial state's compile on the
# parameters' random draws (threefry for every parameter): the demo's state compiles in 8.7 s
# there and in 3.2 s at -O1 on a quiet 2-core machine (benchmarks/bench_initial_state.py), with
# bit-identical values (tests/test_structure.py checks the equality on the tiny ResNet). The
# state is computed once per run; only the CPU backend is told.
INITIAL_STATE_CPU_OPTIONS = {'xla_backend_optimization_level': 1}


def initial_state_options() -> Optional[Dict[str, Any]]:
  """The initial state's compiler options on this backend (None: the backend's defaults)."""
  return dict(INITIAL_STATE_CPU_OPTIONS) if jax.default_backend() == 'cpu' else None


def _compiled_once(create, options):
  """seed -> create(PRNGKey(seed)), compiled once with `options` (traced as it is inside
  jax.eval_shape or another jit, where the outer program compiles it)."""
  compiled = []

  def init_state(seed):
    key = jax.random.PRNGKey(seed)
    if options is None or isinstance(key, jax.core.Tracer):
      return create(key)
    if not compiled:
      compiled.append(create.lower(key).compile(compiler_options=options))
    return compiled[0](key)

  return init_state


def mesh_for(plan):
  """The plan's mesh: ('data',) with one replica, ('replica', 'data') with N > 1."""
  return make_mesh() if plan.replicas == 1 else replicas_lib.make_mesh(plan.config)


def memory_per_device() -> Optional[int]:
  """Bytes one device can hold: the accelerator's limit, or the host's RAM for CPU devices
  (None where neither can be read). Tests replace it."""
  device = jax.local_devices()[0]
  try:
    limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # pylint: disable=broad-except  # not every backend has memory stats
    limit = None
  if limit:
    return int(limit)
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def _gigabytes(n: float) -> str:
  return f'{n / 1e9:.2f} GB'


def check_state_fits(config, exp: 'Experiment'):
  """Refuses, before anything is compiled or allocated, a train state (parameters, optimiser
  slots and the dynamics buffers, whose step-mode series grow with the run's length) larger
  than one device's memory, naming its largest parts and the fields that size them."""
  available = memory_per_device()
  if not available:
    return
  abstract = jax.eval_shape(exp.init_state, 0)
  leaves = [
      (jax.tree_util.keystr(path, simple=True, separator='/'), leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]
  ]
  sizes = sorted(
      ((math.prod(leaf.shape) * leaf.dtype.itemsize, name, leaf) for name, leaf in leaves),
      key=lambda row: -row[0],
  )
  # Replicas stack their states on one program; a state is replicated on every device.
  needed = sum(size for size, _, _ in sizes) * max(int(config.replicas), 1)
  if needed <= available:
    return
  largest = ', '.join(
      f'{name} {leaf.dtype}{list(leaf.shape)} {_gigabytes(size)}' for size, name, leaf in sizes[:3]
  )
  raise ValueError(
      f'The train state needs {_gigabytes(needed)} per device but a device here holds '
      f'{_gigabytes(available)}; largest parts: {largest}. The dynamics buffers grow with '
      'num_train_steps (step mode: one value per step and signal), dynamics.surrogates and '
      'dynamics.dfa_num_scales, the rest with the model (model, model_args.*): lower those, or '
      'set dynamics.step_mode=False.'
  )


class Experiment(NamedTuple):
  """Everything a run compiles, built from the config alone (no data, no workdir)."""

  model: Any
  schedule: Any
  tx: Any
  tracker: Optional[tracker_lib.Tracker]
  init_state: Callable[[int], steps.TrainState]  # seed -> replicated 1-replica state
  # 1 replica: (state, u8[B,H,W,3], i32[B]) -> (state, metrics). N > 1 (replicas.py):
  # (stacked state, i32[N, B] indices, u8[n,H,W,3] train set, i32[n]) -> (state, {k: [N]}).
  # Donates state.
  train_step: Callable
  eval_step: Callable  # (state, images, labels, mask) -> sums (each [N] with N > 1)
  probe: Optional[Callable]  # (state, images) -> f32[S] (f32[N, S] with N > 1)
  # N > 1: the stacked state's shardings (replicas.state_sharding); None with one replica.
  state_sharding: Any = None


def build(
    config,
    num_classes: int,
    image_shape,
    mean,
    std,
    steps_per_epoch: int,
    total_steps: int,
    mesh,
    stored_shape=None,
) -> Experiment:
  """Model, optimiser, tracker and the jitted steps with their shardings.

  image_shape: (H, W, 3) as the model sees it; mean, std: f32[3] in 0..255 units;
  stored_shape: (H, W, 3) of the training images before config.image_size resizes them
  (None: image_shape), for the replicas' gather from flat rows (replicas.resident_images).
  """
  dcfg = config.dynamics
  if dcfg.enabled and fit_lib.AUTO in (dcfg.window, dcfg.volatility_window_steps):
    # Called directly (train_and_evaluate resolves these first): size them to the run.
    config = fit_lib.fit_to_run(config, total_steps, steps_per_epoch).config
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  out_size = config.image_size or None
  model_args = {k: v for k, v in config.model_args.items() if v}
  model = models.get(config.model, num_classes, dtype=jnp.dtype(config.dtype), **model_args)
  schedule = optim.make_schedule(config, steps_per_epoch, total_steps)
  tx = optim.make_optimizer(config, schedule)
  tracker = _make_tracker(config, model, image_shape, total_steps, steps_per_epoch)
  create = functools.partial(
      steps.create_train_state,
      model=model,
      tx=tx,
      tracker=tracker,
      image_shape=image_shape,
      early_stop=early_stop_lib.init_state(config),
  )
  step_kwargs = dict(model=model, mean=mean, std=std, out_size=out_size)
  train_fn = functools.partial(
      steps.train_step,
      tx=tx,
      tracker=tracker,
      config=config,
      num_classes=num_classes,
      **step_kwargs,
  )
  eval_fn = functools.partial(steps.eval_step, num_classes=num_classes, **step_kwargs)
  probe_fn = (
      functools.partial(steps.probe_signals, tracker=tracker, **step_kwargs)
      if tracker is not None and config.dynamics.probe_mode
      else None
  )
  create = jax.jit(create, out_shardings=replicated)
  common = dict(
      model=model,
      schedule=schedule,
      tx=tx,
      tracker=tracker,
      init_state=_compiled_once(create, initial_state_options()),
  )
  if config.replicas > 1:
    return Experiment(
        **common,
        **_jit_replicated(
            config, mesh, create, train_fn, eval_fn, probe_fn, stored_shape or image_shape
        ),
    )
  train_step = jax.jit(
      train_fn,
      in_shardings=(replicated, batch_sharding, batch_sharding),
      out_shardings=(replicated, replicated),
      donate_argnums=0,
  )
  eval_step = jax.jit(
      eval_fn, in_shardings=(replicated,) + (batch_sharding,) * 3, out_shardings=replicated
  )
  probe = None
  if probe_fn is not None:
    probe = jax.jit(probe_fn, in_shardings=(replicated, batch_sharding), out_shardings=replicated)
  return Experiment(**common, train_step=train_step, eval_step=eval_step, probe=probe)


def tap_shapes(model, image_shape) -> Dict[str, Tuple[int, ...]]:
  """{tap: shape} of the model's taps for one image, from an abstract init and apply."""
  image = jnp.zeros((1,) + tuple(image_shape))
  taps = jax.eval_shape(
      lambda: models.apply_with_taps(
          model,
          model.init(
              {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, image, train=False
          ),
          image,
          train=False,
      )[1]
  )
  return {k: v.shape for k, v in taps.items()}


def _make_tracker(config, model, image_shape, total_steps: int, steps_per_epoch: int):
  """The dynamics tracker for the model's taps; None with dynamics.enabled=False."""
  if not config.dynamics.enabled:
    return None
  return tracker_lib.make_tracker(
      config.dynamics,
      tap_shapes(model, image_shape),
      total_steps,
      math.ceil(total_steps / steps_per_epoch),
      seed=config.seed,
  )


def build_for(plan, mesh, mean, std) -> Experiment:
  """`build` for a planned run."""
  return build(
      plan.config,
      plan.data.num_classes,
      plan.image_shape,
      mean,
      std,
      plan.steps_per_epoch,
      plan.total_steps,
      mesh,
      stored_shape=tuple(plan.data.image_shape),
  )


def _jit_replicated(
    config, mesh, create, train_fn, eval_fn, probe_fn, stored_shape
) -> Dict[str, Any]:
  """The N-replica steps (training/replicas.py), jitted with the ('replica', 'data') mesh's
  shardings: state split over 'replica', batches over 'data', the train set replicated."""
  impl = replicas_lib.resolve_impl(config)
  groups = mesh.shape[replicas_lib.REPLICA_AXIS] if impl == 'map' else 1
  abstract = jax.eval_shape(create, jax.random.PRNGKey(0))
  state_sharding = replicas_lib.state_sharding(abstract, mesh)
  replicated = NamedSharding(mesh, P())
  per_replica = NamedSharding(mesh, P(replicas_lib.REPLICA_AXIS))
  batch_sharding = NamedSharding(mesh, P(replicas_lib.DATA_AXIS))
  train_step = jax.jit(
      functools.partial(
          replicas_lib.train_step,
          single_step=train_fn,
          impl=impl,
          groups=groups,
          image_shape=tuple(stored_shape),
      ),
      in_shardings=(
          state_sharding,
          NamedSharding(mesh, P(replicas_lib.REPLICA_AXIS, replicas_lib.DATA_AXIS)),
          replicated,
          replicated,
      ),
      out_shardings=(state_sharding, per_replica),
      donate_argnums=0,
  )
  eval_step = jax.jit(
      replicas_lib.shared_input_step(eval_fn, impl, groups),
      in_shardings=(state_sharding,) + (batch_sharding,) * 3,
      out_shardings=per_replica,
  )
  probe = None
  if probe_fn is not None:
    # Each replica's own probe batch (a run draws it from its seed): u8[N, P, H, W, 3].
    probe = jax.jit(
        replicas_lib.per_replica_input_step(probe_fn, impl, groups),
        in_shardings=(
            state_sharding,
            NamedSharding(mesh, P(replicas_lib.REPLICA_AXIS, replicas_lib.DATA_AXIS)),
        ),
        out_shardings=per_replica,
    )
  logging.info(
      '%d replicas (seeds %d..%d) in one program: %s over a %s mesh.',
      config.replicas,
      config.seed,
      config.seed + config.replicas - 1,
      impl,
      dict(mesh.shape),
  )
  return dict(
      train_step=train_step, eval_step=eval_step, probe=probe, state_sharding=state_sharding
  )
