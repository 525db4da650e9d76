"""train_and_evaluate(config, workdir): the whole run, as the absl main and the tests call it."""

import functools
import json
import logging as pylogging
import math
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

import data as data_lib
import models
from dynamics import tracker as tracker_lib
from training import (
    checkpoint,
    early_stop as early_stop_lib,
    optim,
    replicas as replicas_lib,
    steps,
    validate,
    workdir as workdir_lib,
    writers as writers_lib,
)


class _QuietOrbax(pylogging.Filter):
  """Orbax logs every save at INFO, JAX that it found no TPU; keep their warnings and errors
  (and, with --verbose, everything), drop the chatter."""

  def filter(self, record):
    verbose = logging.get_verbosity() >= logging.DEBUG
    orbax = '/orbax/' in record.pathname
    if orbax and record.exc_info and not verbose:
      # A failed background save: Orbax logs its traceback from each thread it passes through;
      # the run reports the error itself, once (CheckpointSaveError), its traceback in the log
      # file train.py names. Orbax's one-line message is kept.
      record.exc_info, record.exc_text = None, None
    return (
        record.levelno >= pylogging.WARNING
        or verbose
        or not (orbax or record.pathname.endswith('xla_bridge.py'))
    )


logging.get_absl_handler().addFilter(_QuietOrbax())


def make_mesh():
  """A 1-D ('data',) mesh over every device of every process; Auto axes let XLA insert the
  collectives (BatchNorm statistics and gradients over the global batch)."""
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return (
      f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
      if seconds >= 3600
      else (f'{seconds // 60}m{seconds % 60:02d}s')
  )


def _save_config(config, workdir: str):
  # Written to a temporary file and renamed: other processes may be reading it (see
  # _prepare_workdir), and a half-written file would look like a different config.
  if jax.process_index() == 0:
    with writers_lib.atomic_file(os.path.join(workdir, 'config.json')) as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    # Each replica's folder reads like the 1-replica run it equals (seed + k).
    for k in range(config.replicas if config.replicas > 1 else 0):
      folder = replicas_lib.replica_dir(workdir, k)
      os.makedirs(folder, exist_ok=True)
      writers_lib.write_json(
          os.path.join(folder, 'config.json'),
          replicas_lib.replica_config(config, k),
          indent=2,
          sort_keys=True,
      )


def _flatten(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}: config fields by their dotted names."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(saved: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
  """'field: saved -> new' for every dotted field that differs between two config dicts.

  A field the saved config lacks (it was added to the project after that run was written)
  counts as its default value, so a run written before a field existed still resumes when the
  new config keeps that field's default.
  """
  from configs import common  # pylint: disable=g-import-not-at-top  (the fields' defaults)

  a, b = _flatten(saved), _flatten(new)
  defaults = _flatten(common.base_config().to_dict())
  missing = '<absent>'
  for k in set(b) - set(a):
    if k in defaults and defaults[k] == b[k]:
      a[k] = b[k]
  return [
      f'{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}'
      for k in sorted(set(a) | set(b))
      if a.get(k, missing) != b.get(k, missing)
  ]


def _move_run_aside(workdir: str) -> str:
  """Renames workdir to `<workdir>.old-<timestamp>` (process 0) and returns the new name."""
  base = f'{os.path.abspath(workdir)}.old-{time.strftime("%Y%m%d-%H%M%S")}'
  aside, n = base, 1
  while os.path.exists(aside):  # two overwrites within one second
    n += 1
    aside = f'{base}-{n}'
  checkpoint.sync_processes('workdir_checked')  # every process has read config.json
  if jax.process_index() == 0:
    os.replace(workdir, aside)
  checkpoint.sync_processes('workdir_moved')
  return aside


def _prepare_workdir(config, workdir: str, overwrite: bool):
  """Makes sure `workdir` can hold this run: new, or a run of this very config (resumed).

  A workdir whose config.json differs is refused, naming the differing fields, unless
  `overwrite`: then the old run is moved (not deleted) to `<workdir>.old-<timestamp>`. With an
  identical config, `overwrite` changes nothing and the run resumes, so a job restarted with
  the same command line never throws away its progress.
  """
  workdir_lib.check_workdir_files(workdir)
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    new = json.loads(config.to_json_best_effort(sort_keys=True))  # same types as the file's
    try:
      with open(path) as f:
        saved = json.load(f)
    except ValueError as e:  # not JSON: treat as a different run
      saved, differences = None, [f'config.json cannot be parsed ({e})']
    if saved is not None:
      replicas_lib.check_not_replica(saved, workdir)
      differences = config_differences(saved, new)
    if differences:
      if not overwrite:
        shown = '; '.join(differences[:12]) + ('; ...' if len(differences) > 12 else '')
        raise ValueError(
            f'{workdir} holds a run with a different config ({len(differences)} field(s), '
            f'saved -> now: {shown}). Resume it with its own config, choose a new --workdir, '
            'or pass --overwrite (train_and_evaluate(..., overwrite=True)) to move the old run '
            f'to {os.path.abspath(workdir)}.old-<timestamp> and start afresh.'
        )
      aside = _move_run_aside(workdir)
      logging.warning(
          '--overwrite: the previous run in %s (config differs in %s) was moved to '
          '%s; starting afresh.',
          workdir,
          ', '.join(d.split(':')[0] for d in differences[:12]),
          aside,
      )
  os.makedirs(workdir, exist_ok=True)


def _announce_first_call(fn, what: str):
  """fn, whose first call (where jax.jit compiles) is announced and timed on the console."""
  called = False

  def call(*args):
    nonlocal called
    if called:
      return fn(*args)
    called = True
    logging.info('Compiling the %s ...', what)
    t = time.time()
    out = jax.block_until_ready(fn(*args))
    call.seconds = time.time() - t
    logging.info('Compiled the %s in %.1f s (its first call included).', what, call.seconds)
    return out

  call.seconds = 0.0  # of the first call, once made
  return call


def _fit_to_run(config, train_size: int):
  """validate.fit_to_run on this run's length; logs its choices and warnings."""
  fit = validate.fit_to_run(config, *validate.run_length(config, train_size))
  for note in fit.notes:
    logging.info('%s', note)
  for warning in fit.warnings:
    logging.warning('%s', warning)
  return fit.config


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


def _check_state_fits(config, exp: 'Experiment'):
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


def _device_batch(sharding, local_array, global_batch):
  global_shape = (global_batch,) + local_array.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local_array, global_shape)


def _diverged(what: str, step: int, workdir: str, last_saved: Optional[int]):
  kept = (
      f'The last good checkpoint (step {last_saved}) is kept in '
      f'{os.path.join(workdir, "checkpoints")}'
      if last_saved is not None
      else 'No checkpoint was saved'
  )
  return FloatingPointError(
      f'{what} at step {step}: training diverged. {kept}; lower learning_rate (or set '
      'grad_clip_norm) and run again in a fresh workdir (or with --overwrite, which moves '
      'this one aside).'
  )


def _check_finite(values: Dict[str, float], step: int, workdir: str, last_saved, where: str = ''):
  for key in ('train/loss', 'train/grad_norm'):
    if key in values and not math.isfinite(values[key]):
      raise _diverged(f'{key} = {values[key]}{where}', step, workdir, last_saved)


@jax.jit
def _finite_leaves(tree):
  return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree)


def _check_state_finite(state: steps.TrainState, step: int, workdir: str, last_saved):
  """Raises if any parameter, BatchNorm statistic or optimiser slot is NaN/Inf.

  Run before every save: the loss of step s is computed with the parameters before its update,
  so a finite loss does not prove that the state about to be saved is finite. (The dynamics
  buffers hold NaN by design where nothing was computed, so they are not checked.)
  """
  tree = {'params': state.params, 'batch_stats': state.batch_stats, 'opt_state': state.opt_state}
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(_finite_leaves(tree)))
  bad = [jax.tree_util.keystr(path, simple=True, separator='/') for path, ok in flat if not ok]
  if bad:
    names = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
    raise _diverged(f'NaN/Inf in {names}', step, workdir, last_saved)


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
    config, num_classes: int, image_shape, mean, std, steps_per_epoch: int, total_steps: int, mesh
) -> Experiment:
  """Model, optimiser, tracker and the jitted steps with their shardings.

  image_shape: (H, W, 3) as the model sees it; mean, std: f32[3] in 0..255 units.
  """
  dcfg = config.dynamics
  if dcfg.enabled and validate.AUTO in (dcfg.window, dcfg.volatility_window_steps):
    # Called directly (train_and_evaluate resolves these first): size them to the run.
    config = validate.fit_to_run(config, total_steps, steps_per_epoch).config
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  out_size = config.image_size or None
  model_args = {k: v for k, v in config.model_args.items() if v}
  model = models.get(config.model, num_classes, dtype=jnp.dtype(config.dtype), **model_args)
  schedule = optim.make_schedule(config, steps_per_epoch, total_steps)
  tx = optim.make_optimizer(config, schedule)
  tracker = None
  if config.dynamics.enabled:
    image = jnp.zeros((1,) + tuple(image_shape))
    tap_shapes = jax.eval_shape(
        lambda: models.apply_with_taps(
            model,
            model.init(
                {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, image, train=False
            ),
            image,
            train=False,
        )[1]
    )
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    tracker = tracker_lib.make_tracker(
        config.dynamics,
        {k: v.shape for k, v in tap_shapes.items()},
        total_steps,
        num_epochs,
        seed=config.seed,
    )
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
      init_state=lambda seed: create(jax.random.PRNGKey(seed)),
  )
  if config.replicas > 1:
    return Experiment(
        **common, **_jit_replicated(config, mesh, create, train_fn, eval_fn, probe_fn)
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


def _jit_replicated(config, mesh, create, train_fn, eval_fn, probe_fn) -> Dict[str, Any]:
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
      functools.partial(replicas_lib.train_step, single_step=train_fn, impl=impl, groups=groups),
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


def _probe_batch(config, dataset, batch_sharding):
  """The fixed probe batch (probe_size images of probe_split, chosen by the seed), sharded."""
  split_images = (
      dataset.test_images if config.dynamics.probe_split == 'test' else dataset.train_images
  )
  pick = np.random.default_rng(config.seed).permutation(len(split_images))
  pick = np.sort(pick[: config.dynamics.probe_size])
  local = np.array_split(split_images[pick], jax.process_count())[jax.process_index()]
  return _device_batch(batch_sharding, local, config.dynamics.probe_size)


def _probe_images(config, dataset, mesh, batch_sharding):
  """The probe batch; with N replicas u8[N, P, ...], replica k's drawn from seed + k."""
  if config.replicas == 1:
    return _probe_batch(config, dataset, batch_sharding)
  split_images = (
      dataset.test_images if config.dynamics.probe_split == 'test' else dataset.train_images
  )
  picks = [
      np.sort(
          np.random.default_rng(config.seed + k).permutation(len(split_images))[
              : config.dynamics.probe_size
          ]
      )
      for k in range(config.replicas)
  ]
  return _global_array(
      NamedSharding(mesh, P(replicas_lib.REPLICA_AXIS, replicas_lib.DATA_AXIS)),
      np.stack([split_images[pick] for pick in picks]),
  )


def _check_probe_size(config, dataset):
  if not (config.dynamics.enabled and config.dynamics.probe_mode):
    return
  split = config.dynamics.probe_split
  size = len(dataset.test_images if split == 'test' else dataset.train_images)
  if config.dynamics.probe_size > size:
    raise ValueError(
        f'dynamics.probe_size={config.dynamics.probe_size} is larger than the {split} split '
        f'({size} images); lower dynamics.probe_size or use the other dynamics.probe_split.'
    )


class _Sink(NamedTuple):
  """Where one replica's records go: the workdir itself with one replica, replica_<k>/ else."""

  workdir: str
  writer: Any
  jsonl: Optional[writers_lib.JsonlWriter]


def _open_sinks(config, workdir: str, start_step: int) -> List[_Sink]:
  n = config.replicas
  sinks = []
  stamp = time.strftime('%Y%m%d-%H%M%S')
  if start_step == 0 and n > 1 and jax.process_index() == 0:
    workdir_lib.set_aside_previous_records(workdir, stamp)  # the whole run's summary.json
  for k in range(n):
    folder = workdir if n == 1 else replicas_lib.replica_dir(workdir, k)
    if n == 1:
      writer, jsonl = writers_lib.create_writers(folder)
    else:  # the loop logs one line for all replicas, not one per replica
      writer, jsonl = writers_lib.create_replica_writers(folder)
    if jsonl is not None:
      if start_step == 0:
        # No checkpoint: records of an earlier run here cannot be redone from one. They are
        # moved aside, never truncated (nothing when the folder holds no records).
        workdir_lib.set_aside_previous_records(folder, stamp)
      # Records past the restored step come from steps that are about to be redone.
      workdir_lib.repair_metrics(os.path.join(folder, 'metrics.jsonl'))
      jsonl.truncate_after(start_step)
    if start_step == 0:
      hparams = {k: v for k, v in config.items() if not hasattr(v, 'items')}
      if n > 1:
        hparams.update(seed=config.seed + k, replica=k)
      writer.write_hparams(hparams)
    sinks.append(_Sink(folder, writer, jsonl))
  return sinks


def _split(tree, n: int) -> List[Any]:
  """[tree] with one replica; [replica 0, ..., replica n-1] of a stacked tree otherwise."""
  return [tree] if n == 1 else [replicas_lib.take(tree, k) for k in range(n)]


def _initial_state(config, exp: Experiment, replicated):
  """The state at step 0: seed's init (and pretrained weights); stacked over replicas."""

  def one(seed):
    state = exp.init_state(seed)
    if 'surrogate_key' in state.dynamics:  # the tracker was built with config.seed
      # Replica k draws its surrogates as the 1-replica run of seed + k would.
      state = state.replace(
          dynamics=dict(
              state.dynamics,
              surrogate_key=jax.device_put(
                  jax.random.key_data(jax.random.key(seed)),
                  state.dynamics['surrogate_key'].sharding,
              ),
          )
      )
    if config.init_checkpoint:
      # Every replica gets the same pretrained weights; what the release does not hold (the
      # new head) keeps replica k's own initialisation from seed + k.
      try:
        init_params = models.load_pretrained(config.model, state.params, config.init_checkpoint)
      except (OSError, ValueError, KeyError, EOFError) as e:  # numpy's own words name no file
        raise ValueError(
            f'init_checkpoint={config.init_checkpoint!r} cannot be read as pretrained weights '
            f'of {config.model!r} ({type(e).__name__}: {e})'
        ) from e
      state = jax.device_put(
          state.replace(params=init_params, opt_state=exp.tx.init(init_params)), replicated
      )
    return state

  if config.replicas == 1:
    return one(config.seed)
  if config.init_checkpoint:
    logging.info(
        'init_checkpoint with %d replicas: all start from %s; the heads are '
        'initialised per replica (seeds %d..%d).',
        config.replicas,
        config.init_checkpoint,
        config.seed,
        config.seed + config.replicas - 1,
    )
  return jax.device_put(
      replicas_lib.stack([one(config.seed + k) for k in range(config.replicas)]), exp.state_sharding
  )


def _check_checkpoint_replicas(manager, config):
  """A checkpoint of an N-replica run cannot be resumed with another N: say so, naming the
  field, instead of letting the restore fail (and the checkpoint look damaged)."""
  steps_saved = manager.all_steps()
  if not steps_saved:
    return
  try:
    # A fresh manager's item_metadata() knows no handler yet; read the step's tree metadata.
    path = os.path.join(str(manager.directory), str(max(steps_saved)), 'default')
    with ocp.StandardCheckpointer() as reader:
      saved = replicas_lib.num_replicas_in(reader.metadata(path).item_metadata)
  except Exception:  # pylint: disable=broad-except
    return  # unreadable metadata: restore_latest reports the damage
  if saved != config.replicas:
    raise ValueError(
        f'The checkpoints in {manager.directory} hold a {saved}-replica state but this run has '
        f'replicas={config.replicas} (config field `replicas`). Resume it with '
        f'--config.replicas={saved}, or start the {config.replicas}-replica run in a fresh '
        '--workdir.'
    )


def _global_array(sharding, host_array: np.ndarray):
  """A global array from the full host array, which every process holds (any topology)."""
  return jax.make_array_from_callback(host_array.shape, sharding, lambda i: host_array[i])


def _train_feed(config, dataset, mesh, batch_sharding) -> Callable[[int], tuple]:
  """step -> the train step's data arguments.

  One replica: this process's share of the global batch (u8[B, ...], i32[B]), gathered on the
  host. N replicas: i32[N, B] rows (replica k draws the order of seed + k) and the device
  resident train set, from which the step gathers the batches itself.
  """
  if config.replicas == 1:
    # The epoch order depends on the run seed, so seeds differ in data order as well as init.
    # A streamed folder (data/streaming.py) gives its own batches: the same indices, decoded.
    if hasattr(dataset, 'train_batches'):
      batches = dataset.train_batches(
          config.seed, config.batch_size, jax.process_index(), jax.process_count()
      )
    else:
      batches = data_lib.TrainBatches(
          dataset.train_images,
          dataset.train_labels,
          config.seed,
          config.batch_size,
          jax.process_index(),
          jax.process_count(),
      )

    def feed(step):
      images, labels = batches.batch(step)
      return (
          _device_batch(batch_sharding, images, config.batch_size),
          _device_batch(batch_sharding, labels, config.batch_size),
      )

    return feed
  batches = [
      data_lib.TrainBatches(
          dataset.train_images, dataset.train_labels, config.seed + k, config.batch_size
      )
      for k in range(config.replicas)
  ]
  replicated = NamedSharding(mesh, P())
  images = _global_array(replicated, np.asarray(dataset.train_images))
  labels = _global_array(replicated, np.asarray(dataset.train_labels, np.int32))
  index_sharding = NamedSharding(mesh, P(replicas_lib.REPLICA_AXIS, replicas_lib.DATA_AXIS))

  def feed(step):
    return (
        _global_array(index_sharding, replicas_lib.train_indices(batches, step)),
        images,
        labels,
    )

  return feed


def spread_text(values: Sequence[float], digits: int = 4) -> str:
  """'mean ± sample std' of the replicas' values (the value itself with one replica)."""
  v = np.asarray(values, np.float64)
  if len(v) == 1:
    return f'{v[0]:.{digits}f}'
  return f'{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}'


def train_and_evaluate(
    config,
    workdir: str,
    stop_after: Optional[int] = None,
    overwrite: bool = False,
    allow_unverified: bool = False,
) -> Dict[str, Any]:
  """_train_and_evaluate (below) holding the workdir's lock: a second run on the same workdir
  stops at once with WorkdirLockedError naming the first one (training/workdir.py)."""
  with workdir_lib.locked(workdir):
    return _train_and_evaluate(config, workdir, stop_after, overwrite, allow_unverified)


def _train_and_evaluate(
    config,
    workdir: str,
    stop_after: Optional[int] = None,
    overwrite: bool = False,
    allow_unverified: bool = False,
) -> Dict[str, Any]:
  """Trains config.model on config.data, evaluating every epoch; writes to workdir.

  Resumes from the newest readable checkpoint in workdir (unreadable ones are moved to
  `checkpoints.damaged/`). A workdir holding a run of a different config is refused unless
  `overwrite`, which moves that run to `<workdir>.old-<timestamp>`. On SIGTERM (a preemption
  notice) or SIGINT (Ctrl-C) the run saves a checkpoint at the current step and returns with
  `preempted` set (checkpoint.last_signal() tells which).
  `stop_after` ends the run early after that global step with a checkpoint, as a preemption
  would (tests use it to interrupt a run). A checkpoint step without digests.json is restored
  only with `allow_unverified` (checkpoint.restore_latest). A NaN/Inf loss, gradient norm or
  state raises FloatingPointError before anything diverged is saved.
  With config.replicas = N > 1 the seeds seed .. seed + N - 1 train in one program
  (training/replicas.py); replica k writes its records, dynamics.npz and summary.json to
  `<workdir>/replica_<k>/` and `checkpoints/` holds the one stacked state.
  Returns a summary dict (final test accuracy, steps, paths, final state; with N > 1 the
  accuracies are lists over replicas and `replicas` holds each replica's summary).
  """
  replicas_lib.validate(config, jax.device_count())
  n = config.replicas
  mesh = make_mesh() if n == 1 else replicas_lib.make_mesh(config)
  validate.validate_config(config, mesh.shape['data'], jax.process_count())
  # config.json keeps the config as given (auto fields as 0); the run uses them resolved.
  given = config
  train_size = validate.known_train_size(config)
  if train_size is not None:  # before loading: a run-length error costs no decoding
    config = _fit_to_run(config, train_size)
  _prepare_workdir(given, workdir, overwrite)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))

  t_load = time.time()
  logging.info(
      'Loading the data: %s ...',
      config.data.source
      + (
          f' {config.data.path}'
          if config.data.source == 'image_folder'
          else f' {config.data.name}'
          if config.data.source == 'tfds'
          else ''
      ),
  )
  dataset = data_lib.load(config.data)
  validate.validate_data(config, dataset)
  logging.info(
      'Data: %s, %d training and %d test images of %s (%.1f s).',
      dataset.name,
      len(dataset.train_labels),
      len(dataset.test_labels),
      'x'.join(map(str, dataset.train_images.shape[1:])),
      time.time() - t_load,
  )
  if train_size is None:  # an image folder: its size is known now, still before compiling
    config = _fit_to_run(config, len(dataset.train_labels))
  _check_probe_size(config, dataset)
  num_classes = dataset.num_classes
  steps_per_epoch = data_lib.steps_per_epoch(len(dataset.train_labels), config.batch_size)
  total_steps = (
      config.num_train_steps if config.num_train_steps > 0 else steps_per_epoch * config.num_epochs
  )
  num_epochs = math.ceil(total_steps / steps_per_epoch)
  out_size = config.image_size or None
  image_shape = (out_size, out_size, 3) if out_size else dataset.train_images.shape[1:]
  mean = jnp.asarray(dataset.mean, jnp.float32)
  std = jnp.asarray(dataset.std, jnp.float32)

  exp = build(config, num_classes, image_shape, mean, std, steps_per_epoch, total_steps, mesh)
  _check_state_fits(config, exp)
  tracker, schedule = exp.tracker, exp.schedule
  state = _initial_state(
      config,
      exp._replace(init_state=_announce_first_call(exp.init_state, 'initial state')),
      replicated,
  )

  manager = checkpoint.make_manager(workdir, config.keep_checkpoints, given)
  try:
    _check_checkpoint_replicas(manager, config)
  except ValueError:
    manager.close()
    raise
  # N > 1: restored replicated (one sharding for every leaf), then split over 'replica'.
  restored = checkpoint.restore_latest(manager, state, replicated, allow_unverified)
  if restored is not None:
    state = restored if n == 1 else jax.device_put(restored, exp.state_sharding)
  start_step = int(jax.device_get(state.step))
  # Written only now that the run is sure to start: a run that failed on its config or data
  # leaves no config.json that would make the corrected retry look like a different run.
  _save_config(given, workdir)
  sinks = _open_sinks(config, workdir, start_step)

  train_step = _announce_first_call(exp.train_step, 'train step')
  # The evaluation step and the probe compile in a second or two: the epoch line's time says it.
  eval_step, probe = exp.eval_step, exp.probe
  if probe is not None:
    probe_images = _probe_images(config, dataset, mesh, batch_sharding)
  feed = _train_feed(config, dataset, mesh, batch_sharding)

  def evaluate(state) -> List[Dict[str, float]]:
    """Test loss and accuracy of each replica."""
    totals = [{'loss': 0.0, 'correct': 0.0, 'count': 0.0} for _ in range(n)]
    # A bar on a terminal only (disable=None); the epoch line gives the time.
    for images, labels, mask in tqdm.tqdm(
        data_lib.eval_batches(
            dataset.test_images,
            dataset.test_labels,
            config.eval_batch_size,
            jax.process_index(),
            jax.process_count(),
        ),
        desc='evaluating',
        unit='batch',
        total=math.ceil(len(dataset.test_labels) / config.eval_batch_size),
        disable=None,
        leave=False,
    ):
      sums = eval_step(
          state,
          _device_batch(batch_sharding, images, config.eval_batch_size),
          _device_batch(batch_sharding, labels, config.eval_batch_size),
          _device_batch(batch_sharding, mask, config.eval_batch_size),
      )
      for total, part in zip(totals, _split(jax.device_get(sums), n)):
        for k, v in part.items():
          total[k] += float(v)
    return [
        {'eval/loss': t['loss'] / t['count'], 'eval/accuracy': 100.0 * t['correct'] / t['count']}
        for t in totals
    ]

  logging.info(
      'Training %s on %s (%d classes): %d steps, %d per epoch, batch %d on %d '
      'device(s) in %d process(es); workdir %s',
      config.model,
      dataset.name,
      num_classes,
      total_steps,
      steps_per_epoch,
      config.batch_size,
      jax.device_count(),
      jax.process_count(),
      workdir,
  )

  # The periodic work of the loop below, each a named action.
  def log_train(step, metrics, interval_steps, interval_start, epoch_end):
    """Every log_every_steps and at each epoch end: the values of the logged step itself (not
    an interval mean, so that a resumed run logs exactly what an uninterrupted one would) to
    each replica's writers, and one progress line to the console (at an epoch end, the epoch's
    line carries it instead). Returns the line's training and throughput parts."""
    done = step + 1
    fetched = jax.device_get(metrics)  # waits for the step: the interval's time ends here
    steps_per_sec = interval_steps / max(time.time() - interval_start, 1e-9)
    logged = []
    for k, (sink, replica) in enumerate(zip(sinks, _split(fetched, n))):
      values = {
          key: float(replica[key]) for key in ('train/loss', 'train/accuracy', 'train/grad_norm')
      }
      _check_finite(values, done, workdir, last_saved, f' (replica {k})' if n > 1 else '')
      if tracker is not None:
        values.update(tracker.summarize_step(replica))
      values['train/learning_rate'] = float(schedule(step))
      values['train/steps_per_sec'] = steps_per_sec
      sink.writer.write_scalars(done, values)
      logged.append(values)
    eta = (total_steps - done) / max(steps_per_sec, 1e-9)
    speed = (
        f'{steps_per_sec:.2f} steps/s  {steps_per_sec * config.batch_size * n:.0f} img/s  '
        f'ETA {_format_seconds(eta)}'
    )
    if n == 1:
      train = f'loss {logged[0]["train/loss"]:.4f}  acc {logged[0]["train/accuracy"]:.1f}%'
    else:
      train = (
          f'loss {spread_text([v["train/loss"] for v in logged])}  acc '
          f'{spread_text([v["train/accuracy"] for v in logged], 1)}% (mean ± std of {n} replicas)'
      )
    if not epoch_end:
      logging.info(
          'step %d/%d  epoch %.2f/%d  %s  | %s',
          done,
          total_steps,
          done / steps_per_epoch,
          num_epochs,
          train,
          speed,
      )
    return f'train {train}', speed

  def end_epoch(state, done, progress):
    """Evaluation, the dynamics probe and the per-tap alphas to each replica's writers; one
    console line with `progress` (log_train's). Returns (state with the probe sample appended,
    the evaluation metrics of each replica)."""
    epoch = math.ceil(done / steps_per_epoch)
    t_eval = time.time()
    eval_metrics = evaluate(state)
    for sink, values in zip(sinks, eval_metrics):
      values['epoch'] = epoch
      sink.writer.write_scalars(done, values)
    test = (
        f'loss {spread_text([v["eval/loss"] for v in eval_metrics])}  acc '
        f'{spread_text([v["eval/accuracy"] for v in eval_metrics], 2)}%'
    )
    line = (
        f'epoch {epoch}/{num_epochs} (step {done}/{total_steps}): {progress[0]}  | test '
        f'{test} ({time.time() - t_eval:.1f} s)  | {progress[1]}'
    )
    if probe is not None:
      signals = probe(state, probe_images)
      if n == 1:
        state = state.replace(dynamics=tracker.probe_update(state.dynamics, signals))
      else:
        dynamics = replicas_lib.probe_update(tracker, state.dynamics, signals)
        state = jax.device_put(state.replace(dynamics=dynamics), exp.state_sharding)
      epoch_scalars = []
      for sink, dyn in zip(sinks, _split(jax.device_get(state.dynamics), n)):
        scalars, hists = tracker.summarize_probe(dyn)
        sink.writer.write_scalars(done, scalars)
        if hists:
          sink.writer.write_histograms(done, hists)
        epoch_scalars.append(scalars)
      shown = []
      for name in ('integration', 'metastability', 'dsi'):
        values = [s.get(f'dynamics_epoch/{name}') for s in epoch_scalars]
        if all(v is not None for v in values):
          shown.append(f'{name} {spread_text(values, 3)}')
      line += '; epoch dynamics: ' + (', '.join(shown) or 'not defined yet')
      if not shown and dfa_epochs:
        line += f' (integration and DSI from epoch {dfa_epochs})'
    if tracker is not None and config.dynamics.step_mode and jax.process_index() == 0:
      all_alphas = np.asarray(jax.device_get(state.dynamics['step_alphas']))
      for sink, alphas in zip(sinks, _split(all_alphas, n)):
        if np.isfinite(alphas).any():
          sink.writer.write_histograms(done, {'dynamics/alpha': alphas})
    logging.info('%s', line)
    return state, eval_metrics

  dfa_epochs = tracker is not None and validate.min_dfa_length(config.dynamics)

  def epoch_of(done):
    return math.ceil(done / steps_per_epoch)

  def early_stop(state, done):
    """config.early_stop at an epoch end: records the epoch at which the rule acts for each
    replica whose signal has fired (the state carries it, so a resume acts alike)."""
    epoch = epoch_of(done)
    acted_at = early_stop_lib.epochs_acted(state.early_stop, n)
    dyn = _split(jax.device_get(state.dynamics), n)
    now = early_stop_lib.check(config, dyn, acted_at, epoch)
    if not now:
      return state
    for k in now:
      acted_at[k] = epoch
      what = (
          'stopping'
          if n == 1 and config.early_stop.action == 'stop'
          else 'freezing this replica'
          if config.early_stop.action == 'stop'
          else f'learning rate x {config.early_stop.decay_factor:g} from here'
      )
      logging.info(
          'Early stop%s: %s fired by epoch %d; %s.',
          f' (replica {k}, seed {config.seed + k})' if n > 1 else '',
          early_stop_lib.describe(config.early_stop),
          epoch,
          what,
      )
    marker = {'epoch': jnp.asarray(acted_at if n > 1 else acted_at[0], jnp.int32)}
    state = state.replace(early_stop=marker)
    return jax.device_put(state, exp.state_sharding if n > 1 else replicated)

  def all_stopped(state) -> bool:
    return (
        early_stop_lib.enabled(config)
        and config.early_stop.action == 'stop'
        and bool(np.all(early_stop_lib.epochs_acted(state.early_stop, n) >= 0))
    )

  def save_checkpoint(state, done, metrics):
    """A checkpoint of step `done`, after its records are written; never of a diverged state
    (the last good checkpoint must stay the newest)."""
    for sink in sinks:
      sink.writer.flush()  # metrics.jsonl holds every record of a checkpointed step
    losses = np.asarray(jax.device_get(metrics['train/loss'])).reshape(-1)
    for k, loss in enumerate(losses):
      _check_finite(
          {'train/loss': float(loss)}, done, workdir, last_saved, f' (replica {k})' if n > 1 else ''
      )
    _check_state_finite(state, done, workdir, last_saved)
    checkpoint.save(manager, state)

  last_saved = start_step if restored is not None else None
  preempted = False
  eval_metrics = []  # one dict per replica
  t_interval, steps_in_interval = time.time(), 0
  t_start = time.time()
  watcher = checkpoint.PreemptionWatcher(manager)
  stopped_early = all_stopped(state)  # a stopped run restarted trains no further
  try:
    for step in range(start_step, total_steps if not stopped_early else start_step):
      state, metrics = train_step(state, *feed(step))
      manager.check_saves()  # a background save that failed stops the run here, not later
      steps_in_interval += 1
      if step == start_step:  # the compilation is not training throughput
        t_interval += train_step.seconds
      done = step + 1
      epoch_end = done % steps_per_epoch == 0 or done == total_steps
      if done % config.log_every_steps == 0 or epoch_end:
        progress = log_train(step, metrics, steps_in_interval, t_interval, epoch_end)
        t_interval, steps_in_interval = time.time(), 0
      if epoch_end:
        state, eval_metrics = end_epoch(state, done, progress)
        if early_stop_lib.enabled(config):
          state = early_stop(state, done)
          stopped_early = all_stopped(state)
      # Every record of step `done` is written before its checkpoint, so a run killed at any
      # point resumes from a checkpoint whose records are all in metrics.jsonl.
      preempted = watcher.reached(done) and done < total_steps  # the end is saved anyway
      stopping = preempted or stopped_early or (stop_after is not None and done >= stop_after)
      if done % config.checkpoint_every_steps == 0 or done == total_steps or epoch_end or stopping:
        save_checkpoint(state, done, metrics)
        last_saved = done
      if preempted:
        manager.wait_until_finished()
        logging.warning(
            '%s at step %d/%d: checkpoint saved in %s. Run the same command '
            'again to resume from step %d.',
            watcher.reason,
            done,
            total_steps,
            manager.directory,
            done,
        )
        break
      if stopped_early:
        logging.info('Stopped early after step %d (epoch %d).', done, epoch_of(done))
        break
      if stopping:
        logging.info('Stopping after step %d as asked; the run resumes from here.', done)
        break
      if epoch_end:  # evaluation time is not training throughput
        t_interval = time.time()
  finally:
    for sink in sinks:  # the records of the last steps, also when the run stops with an error
      sink.writer.flush()
    watcher.close()
    # Also when the run stops with an error: a save still in flight is the last good
    # checkpoint, and it is lost if the process exits before it is committed.
    manager.wait_until_finished()
    manager.close()

  return _finish(
      config,
      workdir,
      state,
      exp,
      sinks,
      eval_metrics,
      evaluate,
      start_step,
      total_steps,
      steps_per_epoch,
      preempted,
      t_start,
      stopped_early,
  )


def _previous_summary(path: str) -> Optional[Dict[str, Any]]:
  """The summary.json a finished run left; None if there is none, or if it cannot be read (a
  version that wrote it in place, cut short): that one is moved to `<path>.damaged-<time>`
  with a warning, and the run writes it again."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, 'rb') as f:
      summary = json.loads(f.read().decode('utf-8'))
    if isinstance(summary, dict) and 'finished' in summary:
      return summary
    problem = 'not a complete summary'
  except (OSError, ValueError) as e:
    problem = f'{type(e).__name__}: {e}'
  aside = f'{path}.damaged-{time.strftime("%Y%m%d-%H%M%S")}'
  os.replace(path, aside)
  logging.warning('%s cannot be read (%s): moved to %s; written again.', path, problem, aside)
  return None


def _eval_fields(eval_metrics: List[Dict[str, float]], n: int) -> Dict[str, Any]:
  """eval_accuracy / eval_loss of a summary: numbers with one replica, lists over replicas."""
  rows = eval_metrics or [{}] * n
  fields = {
      'eval_accuracy': [m.get('eval/accuracy') for m in rows],
      'eval_loss': [m.get('eval/loss') for m in rows],
  }
  return fields if n > 1 else {k: v[0] for k, v in fields.items()}


def _finish(
    config,
    workdir,
    state,
    exp,
    sinks,
    eval_metrics,
    evaluate,
    start_step,
    total_steps,
    steps_per_epoch,
    preempted,
    t_start,
    stopped_early=False,
) -> Dict[str, Any]:
  """dynamics.npz and summary.json of each replica (and of the whole run); the result.

  A run that stopped early (every replica's early-stop rule acted) is finished."""
  n, tracker = config.replicas, exp.tracker
  where = '' if n == 1 else 'replica_*'
  outputs = {
      'workdir': os.path.abspath(workdir),
      'tensorboard': os.path.abspath(workdir),
      'metrics': os.path.abspath(os.path.join(workdir, where, 'metrics.jsonl')),
      'checkpoints': os.path.abspath(os.path.join(workdir, 'checkpoints')),
  }
  final_step = int(jax.device_get(state.step))
  if preempted:  # exit fast: the scheduler's grace period is short
    return dict(
        final_step=final_step,
        total_steps=total_steps,
        finished=False,
        preempted=True,
        **_eval_fields(eval_metrics, n),
        seconds=time.time() - t_start,
        state=state,
        outputs=outputs,
    )
  if tracker is not None and jax.process_index() == 0:
    outputs['dynamics'] = os.path.abspath(os.path.join(workdir, where, 'dynamics.npz'))
    for sink, dyn in zip(sinks, _split(jax.device_get(state.dynamics), n)):
      export = tracker.export(dyn)
      export['config_json'] = np.asarray(config.dynamics.to_json_best_effort(sort_keys=True))
      export['steps_per_epoch'] = np.asarray(steps_per_epoch)
      with writers_lib.atomic_file(os.path.join(sink.workdir, 'dynamics.npz'), 'wb') as f:
        np.savez(f, **export)
  summary_path = os.path.join(workdir, 'summary.json')
  previous = _previous_summary(summary_path) if jax.process_index() == 0 else None
  has_previous = previous is not None if jax.process_index() == 0 else os.path.exists(summary_path)
  complete = final_step >= total_steps or stopped_early
  if complete and not eval_metrics and not has_previous:
    # Killed after its final checkpoint but before summary.json: report the final state.
    eval_metrics = evaluate(state)
  acted_at = early_stop_lib.epochs_acted(state.early_stop, n)
  summary = {
      'final_step': final_step,
      'total_steps': total_steps,
      'finished': complete,
      **_eval_fields(eval_metrics, n),
      'seconds': time.time() - t_start,
  }
  if n == 1:
    summary.update(early_stop_lib.summary_fields(config, int(acted_at[0])))
  else:  # each replica's own summary.json, as its 1-replica run would write it
    summary['replicas'] = [
        dict(
            summary,
            seed=config.seed + k,
            **_eval_fields([m], 1),
            **early_stop_lib.summary_fields(config, int(acted_at[k])),
        )
        for k, m in enumerate(eval_metrics or [{}] * n)
    ]
    if early_stop_lib.enabled(config):
      summary['stop_epochs'] = [int(e) if e >= 0 else None for e in acted_at]
  if (start_step >= total_steps or stopped_early) and previous is not None:
    summary = previous  # a finished run restarted: nothing new to report
  elif jax.process_index() == 0 and summary['finished']:
    # Each written whole or not at all (writers.atomic_file): a summary.json that exists
    # parses and is complete.
    for sink, replica_summary in zip(sinks if n > 1 else [], summary.get('replicas', [])):
      writers_lib.write_json(os.path.join(sink.workdir, 'summary.json'), replica_summary, indent=2)
    # Written last: its presence marks a finished run (the sweep skips those).
    writers_lib.write_json(summary_path, summary, indent=2)
  logging.info('Training took %s.', _format_seconds(summary['seconds']))
  return dict(summary, preempted=False, state=state, outputs=outputs)
