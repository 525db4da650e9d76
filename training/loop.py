"""train_and_evaluate(config, workdir): the whole run, as the absl main and the tests call it."""

import functools
import json
import logging as pylogging
import math
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

import data as data_lib
import models
from dynamics import tracker as tracker_lib
from training import checkpoint, optim, steps, validate, workdir as workdir_lib
from training import writers as writers_lib


class _QuietOrbax(pylogging.Filter):
  """Orbax logs every save at INFO, JAX that it found no TPU; keep their warnings and errors
  (and, with --verbose, everything), drop the chatter."""

  def filter(self, record):
    return (record.levelno >= pylogging.WARNING or logging.get_verbosity() >= logging.DEBUG
            or not ('/orbax/' in record.pathname or record.pathname.endswith('xla_bridge.py')))


logging.get_absl_handler().addFilter(_QuietOrbax())


def make_mesh():
  """A 1-D ('data',) mesh over every device of every process; Auto axes let XLA insert the
  collectives (BatchNorm statistics and gradients over the global batch)."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else (
      f'{seconds // 60}m{seconds % 60:02d}s')


def _save_config(config, workdir: str):
  # Written to a temporary file and renamed: other processes may be reading it (see
  # _prepare_workdir), and a half-written file would look like a different config.
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'config.json')
    with open(path + '.tmp', 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(path + '.tmp', path)


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
  """'field: saved -> new' for every dotted field that differs between two config dicts."""
  a, b = _flatten(saved), _flatten(new)
  missing = '<absent>'
  return [f'{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}'
          for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


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
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    new = json.loads(config.to_json_best_effort(sort_keys=True))  # same types as the file's
    try:
      with open(path) as f:
        differences = config_differences(json.load(f), new)
    except ValueError as e:  # not JSON: treat as a different run
      differences = [f'config.json cannot be parsed ({e})']
    if differences:
      if not overwrite:
        shown = '; '.join(differences[:12]) + ('; ...' if len(differences) > 12 else '')
        raise ValueError(
            f'{workdir} holds a run with a different config ({len(differences)} field(s), '
            f'saved -> now: {shown}). Resume it with its own config, choose a new --workdir, '
            'or pass --overwrite (train_and_evaluate(..., overwrite=True)) to move the old run '
            f'to {os.path.abspath(workdir)}.old-<timestamp> and start afresh.')
      aside = _move_run_aside(workdir)
      logging.warning('--overwrite: the previous run in %s (config differs in %s) was moved to '
                      '%s; starting afresh.', workdir,
                      ', '.join(d.split(':')[0] for d in differences[:12]), aside)
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


def _device_batch(sharding, local_array, global_batch):
  global_shape = (global_batch,) + local_array.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local_array, global_shape)


def _diverged(what: str, step: int, workdir: str, last_saved: Optional[int]):
  kept = (f'The last good checkpoint (step {last_saved}) is kept in '
          f'{os.path.join(workdir, "checkpoints")}' if last_saved is not None
          else 'No checkpoint was saved')
  return FloatingPointError(
      f'{what} at step {step}: training diverged. {kept}; lower learning_rate (or set '
      'grad_clip_norm) and run again in a fresh workdir (or with --overwrite, which moves '
      'this one aside).')


def _check_finite(values: Dict[str, float], step: int, workdir: str, last_saved):
  for key in ('train/loss', 'train/grad_norm'):
    if key in values and not math.isfinite(values[key]):
      raise _diverged(f'{key} = {values[key]}', step, workdir, last_saved)


@jax.jit
def _finite_leaves(tree):
  return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree)


def _check_state_finite(state: steps.TrainState, step: int, workdir: str, last_saved):
  """Raises if any parameter, BatchNorm statistic or optimiser slot is NaN/Inf.

  Run before every save: the loss of step s is computed with the parameters before its update,
  so a finite loss does not prove that the state about to be saved is finite. (The dynamics
  buffers hold NaN by design where nothing was computed, so they are not checked.)
  """
  tree = {'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state}
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
  init_state: Callable[[int], steps.TrainState]  # seed -> replicated state
  train_step: Callable  # (state, u8[B,H,W,3], i32[B]) -> (state, metrics); donates state
  eval_step: Callable  # (state, images, labels, mask) -> sums
  probe: Optional[Callable]  # (state, images) -> f32[S]


def build(config, num_classes: int, image_shape, mean, std, steps_per_epoch: int,
          total_steps: int, mesh) -> Experiment:
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
    tap_shapes = jax.eval_shape(lambda: models.apply_with_taps(model, model.init(
        {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, image, train=False), image,
        train=False)[1])
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    tracker = tracker_lib.make_tracker(
        config.dynamics, {k: v.shape for k, v in tap_shapes.items()}, total_steps, num_epochs,
        seed=config.seed)
  create = functools.partial(steps.create_train_state, model=model, tx=tx, tracker=tracker,
                             image_shape=image_shape)
  create = jax.jit(create, out_shardings=replicated)
  step_kwargs = dict(model=model, mean=mean, std=std, out_size=out_size)
  train_step = jax.jit(
      functools.partial(steps.train_step, tx=tx, tracker=tracker, config=config,
                        num_classes=num_classes, **step_kwargs),
      in_shardings=(replicated, batch_sharding, batch_sharding),
      out_shardings=(replicated, replicated), donate_argnums=0)
  eval_step = jax.jit(functools.partial(steps.eval_step, num_classes=num_classes,
                                        **step_kwargs),
                      in_shardings=(replicated,) + (batch_sharding,) * 3,
                      out_shardings=replicated)
  probe = None
  if tracker is not None and config.dynamics.probe_mode:
    probe = jax.jit(functools.partial(steps.probe_signals, tracker=tracker, **step_kwargs),
                    in_shardings=(replicated, batch_sharding), out_shardings=replicated)
  return Experiment(model=model, schedule=schedule, tx=tx, tracker=tracker,
                    init_state=lambda seed: create(jax.random.PRNGKey(seed)),
                    train_step=train_step, eval_step=eval_step, probe=probe)


def _probe_batch(config, dataset, batch_sharding):
  """The fixed probe batch (probe_size images of probe_split, chosen by the seed), sharded."""
  split_images = (dataset.test_images if config.dynamics.probe_split == 'test'
                  else dataset.train_images)
  pick = np.random.default_rng(config.seed).permutation(len(split_images))
  pick = np.sort(pick[:config.dynamics.probe_size])
  local = np.array_split(split_images[pick], jax.process_count())[jax.process_index()]
  return _device_batch(batch_sharding, local, config.dynamics.probe_size)


def _check_probe_size(config, dataset):
  if not (config.dynamics.enabled and config.dynamics.probe_mode):
    return
  split = config.dynamics.probe_split
  size = len(dataset.test_images if split == 'test' else dataset.train_images)
  if config.dynamics.probe_size > size:
    raise ValueError(
        f'dynamics.probe_size={config.dynamics.probe_size} is larger than the {split} split '
        f'({size} images); lower dynamics.probe_size or use the other dynamics.probe_split.')


def train_and_evaluate(config, workdir: str, stop_after: Optional[int] = None,
                       overwrite: bool = False) -> Dict[str, Any]:
  """_train_and_evaluate (below) holding the workdir's lock: a second run on the same workdir
  stops at once with WorkdirLockedError naming the first one (training/workdir.py)."""
  with workdir_lib.locked(workdir):
    return _train_and_evaluate(config, workdir, stop_after, overwrite)


def _train_and_evaluate(config, workdir: str, stop_after: Optional[int] = None,
                        overwrite: bool = False) -> Dict[str, Any]:
  """Trains config.model on config.data, evaluating every epoch; writes to workdir.

  Resumes from the newest readable checkpoint in workdir (unreadable ones are moved to
  `checkpoints.damaged/`). A workdir holding a run of a different config is refused unless
  `overwrite`, which moves that run to `<workdir>.old-<timestamp>`. On SIGTERM (a preemption
  notice) or SIGINT (Ctrl-C) the run saves a checkpoint at the current step and returns with
  `preempted` set (checkpoint.last_signal() tells which).
  `stop_after` ends the run early after that global step with a checkpoint, as a preemption
  would (tests use it to interrupt a run). A NaN/Inf loss, gradient norm or state raises
  FloatingPointError before anything diverged is saved.
  Returns a summary dict (final test accuracy, steps, paths, final state).
  """
  mesh = make_mesh()
  validate.validate_config(config, jax.device_count(), jax.process_count())
  # config.json keeps the config as given (auto fields as 0); the run uses them resolved.
  given = config
  train_size = validate.known_train_size(config)
  if train_size is not None:  # before loading: a run-length error costs no decoding
    config = _fit_to_run(config, train_size)
  _prepare_workdir(given, workdir, overwrite)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))

  t_load = time.time()
  logging.info('Loading the data: %s ...', config.data.source + (
      f' {config.data.path}' if config.data.source == 'image_folder' else
      f' {config.data.name}' if config.data.source == 'tfds' else ''))
  dataset = data_lib.load(config.data)
  validate.validate_data(config, dataset)
  logging.info('Data: %s, %d training and %d test images of %s (%.1f s).', dataset.name,
               len(dataset.train_labels), len(dataset.test_labels),
               'x'.join(map(str, dataset.train_images.shape[1:])), time.time() - t_load)
  if train_size is None:  # an image folder: its size is known now, still before compiling
    config = _fit_to_run(config, len(dataset.train_labels))
  _check_probe_size(config, dataset)
  num_classes = dataset.num_classes
  steps_per_epoch = data_lib.steps_per_epoch(len(dataset.train_labels), config.batch_size)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else steps_per_epoch * config.num_epochs)
  num_epochs = math.ceil(total_steps / steps_per_epoch)
  out_size = config.image_size or None
  image_shape = ((out_size, out_size, 3) if out_size else dataset.train_images.shape[1:])
  mean = jnp.asarray(dataset.mean, jnp.float32)
  std = jnp.asarray(dataset.std, jnp.float32)

  exp = build(config, num_classes, image_shape, mean, std, steps_per_epoch, total_steps,
              mesh)
  tracker, schedule = exp.tracker, exp.schedule
  state = _announce_first_call(exp.init_state, 'initial state')(config.seed)
  if config.init_checkpoint:
    init_params = models.load_pretrained(config.model, state.params, config.init_checkpoint)
    state = jax.device_put(state.replace(params=init_params,
                                         opt_state=exp.tx.init(init_params)), replicated)

  manager = checkpoint.make_manager(workdir, config.keep_checkpoints, config)
  restored = checkpoint.restore_latest(manager, state, replicated)
  if restored is not None:
    state = restored
  start_step = int(jax.device_get(state.step))
  # Written only now that the run is sure to start: a run that failed on its config or data
  # leaves no config.json that would make the corrected retry look like a different run.
  _save_config(given, workdir)
  writer, jsonl = writers_lib.create_writers(workdir)
  if jsonl is not None:
    # Records past the restored step come from steps that are about to be redone.
    workdir_lib.repair_metrics(os.path.join(workdir, 'metrics.jsonl'))
    jsonl.truncate_after(start_step)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.items() if not hasattr(v, 'items')})

  train_step = _announce_first_call(exp.train_step, 'train step')
  # The evaluation step and the probe compile in a second or two: the epoch line's time says it.
  eval_step, probe = exp.eval_step, exp.probe
  if probe is not None:
    probe_images = _probe_batch(config, dataset, batch_sharding)

  # The epoch order depends on the run seed, so seeds differ in data order as well as init.
  batches = data_lib.TrainBatches(dataset.train_images, dataset.train_labels, config.seed,
                                  config.batch_size, jax.process_index(), jax.process_count())

  def evaluate(state):
    totals = {'loss': 0.0, 'correct': 0.0, 'count': 0.0}
    # A bar on a terminal only (disable=None); the epoch line gives the time.
    for images, labels, mask in tqdm.tqdm(data_lib.eval_batches(
        dataset.test_images, dataset.test_labels, config.eval_batch_size,
        jax.process_index(), jax.process_count()), desc='evaluating', unit='batch',
        total=math.ceil(len(dataset.test_labels) / config.eval_batch_size), disable=None,
        leave=False):
      sums = eval_step(state, _device_batch(batch_sharding, images, config.eval_batch_size),
                       _device_batch(batch_sharding, labels, config.eval_batch_size),
                       _device_batch(batch_sharding, mask, config.eval_batch_size))
      for k, v in jax.device_get(sums).items():
        totals[k] += float(v)
    return {'eval/loss': totals['loss'] / totals['count'],
            'eval/accuracy': 100.0 * totals['correct'] / totals['count']}

  logging.info('Training %s on %s (%d classes): %d steps, %d per epoch, batch %d on %d '
               'device(s) in %d process(es); workdir %s', config.model, dataset.name,
               num_classes, total_steps, steps_per_epoch, config.batch_size,
               jax.device_count(), jax.process_count(), workdir)
  # The periodic work of the loop below, each a named action.
  def log_train(step, metrics, interval_steps, interval_start, epoch_end):
    """Every log_every_steps and at each epoch end: the values of the logged step itself (not
    an interval mean, so that a resumed run logs exactly what an uninterrupted one would) to
    the writers, and one progress line to the console (at an epoch end, the epoch's line
    carries it instead). Returns the line's throughput part."""
    done = step + 1
    fetched = jax.device_get(metrics)  # waits for the step: the interval's time ends here
    interval_seconds = time.time() - interval_start
    values = {k: float(fetched[k]) for k in ('train/loss', 'train/accuracy', 'train/grad_norm')}
    _check_finite(values, done, workdir, last_saved)
    if tracker is not None:
      values.update(tracker.summarize_step(fetched))
    values['train/learning_rate'] = float(schedule(step))
    values['train/steps_per_sec'] = interval_steps / max(interval_seconds, 1e-9)
    writer.write_scalars(done, values)
    eta = (total_steps - done) / max(values['train/steps_per_sec'], 1e-9)
    speed = (f'{values["train/steps_per_sec"]:.2f} steps/s  '
             f'{values["train/steps_per_sec"] * config.batch_size:.0f} img/s  '
             f'ETA {_format_seconds(eta)}')
    train = f'loss {values["train/loss"]:.4f}  acc {values["train/accuracy"]:.1f}%'
    if not epoch_end:
      logging.info('step %d/%d  epoch %.2f/%d  %s  | %s', done, total_steps,
                   done / steps_per_epoch, num_epochs, train, speed)
    return f'train {train}', speed

  def end_epoch(state, done, progress):
    """Evaluation, the dynamics probe and the per-tap alphas to the writers; one console line
    with `progress` (log_train's). Returns (state with the probe sample appended, the
    evaluation metrics)."""
    epoch = math.ceil(done / steps_per_epoch)
    t_eval = time.time()
    eval_metrics = evaluate(state)
    eval_metrics['epoch'] = epoch
    writer.write_scalars(done, eval_metrics)
    line = (f'epoch {epoch}/{num_epochs} (step {done}/{total_steps}): {progress[0]}  | test '
            f'loss {eval_metrics["eval/loss"]:.4f}  acc {eval_metrics["eval/accuracy"]:.2f}% '
            f'({time.time() - t_eval:.1f} s)  | {progress[1]}')
    if probe is not None:
      state = state.replace(dynamics=tracker.probe_update(
          state.dynamics, probe(state, probe_images)))
      scalars, hists = tracker.summarize_probe(state.dynamics)
      writer.write_scalars(done, scalars)
      if hists:
        writer.write_histograms(done, hists)
      shown = [(name, scalars.get(f'dynamics_epoch/{name}'))
               for name in ('integration', 'metastability', 'dsi')]
      line += '; epoch dynamics: ' + (', '.join(f'{n} {v:.3f}' for n, v in shown if v is not None)
                                      or 'not defined yet')
      if shown[0][1] is None and dfa_epochs:
        line += f' (integration and DSI from epoch {dfa_epochs})'
    if tracker is not None and config.dynamics.step_mode and jax.process_index() == 0:
      alphas = np.asarray(jax.device_get(state.dynamics['step_alphas']))
      if np.isfinite(alphas).any():
        writer.write_histograms(done, {'dynamics/alpha': alphas})
    logging.info('%s', line)
    return state, eval_metrics

  dfa_epochs = tracker is not None and validate.min_dfa_length(config.dynamics)

  def save_checkpoint(state, done, metrics):
    """A checkpoint of step `done`, after its records are written; never of a diverged state
    (the last good checkpoint must stay the newest)."""
    writer.flush()  # metrics.jsonl holds every record of a checkpointed step
    _check_finite({'train/loss': float(metrics['train/loss'])}, done, workdir, last_saved)
    _check_state_finite(state, done, workdir, last_saved)
    checkpoint.save(manager, state)

  last_saved = start_step if restored is not None else None
  preempted = False
  eval_metrics = {}
  t_interval, steps_in_interval = time.time(), 0
  t_start = time.time()
  watcher = checkpoint.PreemptionWatcher(manager)
  try:
    for step in range(start_step, total_steps):
      images, labels = batches.batch(step)
      state, metrics = train_step(
          state, _device_batch(batch_sharding, images, config.batch_size),
          _device_batch(batch_sharding, labels, config.batch_size))
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
      # Every record of step `done` is written before its checkpoint, so a run killed at any
      # point resumes from a checkpoint whose records are all in metrics.jsonl.
      preempted = watcher.reached(done) and done < total_steps  # the end is saved anyway
      stopping = preempted or (stop_after is not None and done >= stop_after)
      if (done % config.checkpoint_every_steps == 0 or done == total_steps or epoch_end
          or stopping):
        save_checkpoint(state, done, metrics)
        last_saved = done
      if preempted:
        manager.wait_until_finished()
        logging.warning('%s at step %d/%d: checkpoint saved in %s. Run the same command '
                        'again to resume from step %d.', watcher.reason, done, total_steps,
                        manager.directory, done)
        break
      if stopping:
        logging.info('Stopping after step %d as asked; the run resumes from here.', done)
        break
      if epoch_end:  # evaluation time is not training throughput
        t_interval = time.time()
  finally:
    writer.flush()  # the records of the last steps, also when the run stops with an error
    watcher.close()
    # Also when the run stops with an error: a save still in flight is the last good
    # checkpoint, and it is lost if the process exits before it is committed.
    manager.wait_until_finished()
    manager.close()
  writer.flush()

  outputs = {'workdir': os.path.abspath(workdir),
             'tensorboard': os.path.abspath(workdir),
             'metrics': os.path.abspath(os.path.join(workdir, 'metrics.jsonl')),
             'checkpoints': os.path.abspath(os.path.join(workdir, 'checkpoints'))}
  final_step = int(jax.device_get(state.step))
  if preempted:  # exit fast: the scheduler's grace period is short
    return dict(final_step=final_step, total_steps=total_steps, finished=False,
                preempted=True, eval_accuracy=eval_metrics.get('eval/accuracy'),
                eval_loss=eval_metrics.get('eval/loss'), seconds=time.time() - t_start,
                state=state, outputs=outputs)
  if tracker is not None and jax.process_index() == 0:
    export = tracker.export(jax.device_get(state.dynamics))
    export['config_json'] = np.asarray(config.dynamics.to_json_best_effort(sort_keys=True))
    export['steps_per_epoch'] = np.asarray(steps_per_epoch)
    outputs['dynamics'] = os.path.abspath(os.path.join(workdir, 'dynamics.npz'))
    np.savez(outputs['dynamics'], **export)
  summary_path = os.path.join(workdir, 'summary.json')
  if final_step >= total_steps and not eval_metrics and not os.path.exists(summary_path):
    # Killed after its final checkpoint but before summary.json: report the final state.
    eval_metrics = evaluate(state)
  summary = {'final_step': final_step, 'total_steps': total_steps,
             'finished': final_step >= total_steps,
             'eval_accuracy': eval_metrics.get('eval/accuracy'),
             'eval_loss': eval_metrics.get('eval/loss'),
             'seconds': time.time() - t_start}
  if start_step >= total_steps and os.path.exists(summary_path):
    with open(summary_path) as f:  # a finished run restarted: nothing new to report
      summary = json.load(f)
  elif jax.process_index() == 0 and summary['finished']:
    # Written last: its presence marks a finished run (the sweep skips those).
    with open(summary_path, 'w') as f:
      json.dump(summary, f, indent=2)
  logging.info('Training took %s.', _format_seconds(summary['seconds']))
  return dict(summary, preempted=False, state=state, outputs=outputs)
