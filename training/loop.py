"""train_and_evaluate(config, workdir): the whole run, as the absl main and the tests call it."""

import functools
import json
import logging as pylogging
import math
import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

import data as data_lib
import models
from dynamics import tracker as tracker_lib
from training import checkpoint, optim, steps, validate, writers as writers_lib


class _QuietOrbax(pylogging.Filter):
  """Orbax logs every save at INFO; keep its warnings and errors, drop the chatter."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or '/orbax/' not in record.pathname


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
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def _device_batch(sharding, local_array, global_batch):
  global_shape = (global_batch,) + local_array.shape[1:]
  return jax.make_array_from_process_local_data(sharding, local_array, global_shape)


def _check_finite(values: Dict[str, float], step: int, workdir: str, last_saved):
  for key in ('train/loss', 'train/grad_norm'):
    if key in values and not math.isfinite(values[key]):
      raise FloatingPointError(
          f'{key} = {values[key]} at step {step}: training diverged. The last good checkpoint '
          f'(step {last_saved}) is kept in {os.path.join(workdir, "checkpoints")}; lower '
          'learning_rate (or set grad_clip_norm) and run again in a fresh workdir.')


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
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  out_size = config.image_size or None
  model_args = {k: v for k, v in config.model_args.items() if v}
  model = models.get(config.model, num_classes, dtype=jnp.dtype(config.dtype), **model_args)
  schedule = optim.make_schedule(config, steps_per_epoch, total_steps)
  tx = optim.make_optimizer(config, schedule)
  tracker = None
  if config.dynamics.enabled:
    tap_shapes = jax.eval_shape(
        lambda: model.init_with_output(
            {'params': jax.random.key(0), 'dropout': jax.random.key(0)},
            jnp.zeros((1,) + tuple(image_shape)), train=False)[0][1])
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    tracker = tracker_lib.make_tracker(
        config.dynamics, {k: v.shape for k, v in tap_shapes.items()}, total_steps, num_epochs)
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


def train_and_evaluate(config, workdir: str, stop_after: Optional[int] = None
                       ) -> Dict[str, Any]:
  """Trains config.model on config.data, evaluating every epoch; writes to workdir.

  Resumes from the newest checkpoint in workdir. `stop_after` ends the run early after that
  global step with a checkpoint, as a preemption would (tests use it to interrupt a run).
  Returns a summary dict (final test accuracy, steps, paths, final state).
  """
  mesh = make_mesh()
  validate.validate_config(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  _save_config(config, workdir)
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))

  dataset = data_lib.load(config.data)
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
  state = exp.init_state(config.seed)
  if config.init_checkpoint:
    init_params = models.load_pretrained(config.model, state.params, config.init_checkpoint)
    state = jax.device_put(state.replace(params=init_params,
                                         opt_state=exp.tx.init(init_params)), replicated)

  manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
  restored = checkpoint.restore_latest(manager, state, replicated)
  if restored is not None:
    state = restored
  start_step = int(jax.device_get(state.step))
  writer, jsonl = writers_lib.create_writers(workdir)
  if jsonl is not None:
    jsonl.truncate_after(start_step)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.items() if not hasattr(v, 'items')})

  train_step, eval_step = exp.train_step, exp.eval_step
  probe = None
  if tracker is not None and config.dynamics.probe_mode:
    split_images = (dataset.test_images if config.dynamics.probe_split == 'test'
                    else dataset.train_images)
    if config.dynamics.probe_size > len(split_images):
      raise ValueError(
          f'dynamics.probe_size={config.dynamics.probe_size} is larger than the '
          f'{config.dynamics.probe_split} split ({len(split_images)} images).')
    pick = np.random.default_rng(config.seed).permutation(len(split_images))
    pick = np.sort(pick[:config.dynamics.probe_size])
    local = np.array_split(split_images[pick], jax.process_count())[jax.process_index()]
    probe_images = _device_batch(batch_sharding, local, config.dynamics.probe_size)
    probe = exp.probe

  # The epoch order depends on the run seed, so seeds differ in data order as well as init.
  batches = data_lib.TrainBatches(dataset.train_images, dataset.train_labels, config.seed,
                                  config.batch_size, jax.process_index(), jax.process_count())

  def evaluate(state):
    totals = {'loss': 0.0, 'correct': 0.0, 'count': 0.0}
    for images, labels, mask in data_lib.eval_batches(
        dataset.test_images, dataset.test_labels, config.eval_batch_size,
        jax.process_index(), jax.process_count()):
      sums = eval_step(state, _device_batch(batch_sharding, images, config.eval_batch_size),
                       _device_batch(batch_sharding, labels, config.eval_batch_size),
                       _device_batch(batch_sharding, mask, config.eval_batch_size))
      for k, v in jax.device_get(sums).items():
        totals[k] += float(v)
    return {'eval/loss': totals['loss'] / totals['count'],
            'eval/accuracy': 100.0 * totals['correct'] / totals['count']}

  logging.info('Training %s on %s (%d classes): %d steps, %d per epoch, batch %d on %d '
               'device(s); workdir %s', config.model, dataset.name, num_classes, total_steps,
               steps_per_epoch, config.batch_size, jax.device_count(), workdir)
  last_saved = start_step if restored is not None else None
  eval_metrics = {}
  t_interval, steps_in_interval = time.time(), 0
  t_start = time.time()
  for step in range(start_step, total_steps):
    images, labels = batches.batch(step)
    state, metrics = train_step(state, _device_batch(batch_sharding, images, config.batch_size),
                                _device_batch(batch_sharding, labels, config.batch_size))
    steps_in_interval += 1
    done = step + 1
    epoch_end = done % steps_per_epoch == 0 or done == total_steps
    if done % config.log_every_steps == 0 or epoch_end:
      # The values of the logged step itself (not an interval mean), so that a resumed run
      # logs exactly what an uninterrupted one would.
      fetched = jax.device_get(metrics)
      values = {k: float(fetched[k]) for k in ('train/loss', 'train/accuracy', 'train/grad_norm')}
      _check_finite(values, done, workdir, last_saved)
      if tracker is not None:
        values.update(tracker.summarize_step(fetched))
      elapsed = time.time() - t_interval
      values['train/learning_rate'] = float(schedule(step))
      values['train/steps_per_sec'] = steps_in_interval / max(elapsed, 1e-9)
      writer.write_scalars(done, values)
      eta = (total_steps - done) / max(values['train/steps_per_sec'], 1e-9)
      logging.info(
          'step %d/%d  epoch %.2f/%d  loss %.4f  acc %.1f%%  | %.2f steps/s  %.0f img/s  '
          'ETA %s', done, total_steps, done / steps_per_epoch, num_epochs,
          values['train/loss'], values['train/accuracy'], values['train/steps_per_sec'],
          values['train/steps_per_sec'] * config.batch_size, _format_seconds(eta))
      t_interval, steps_in_interval = time.time(), 0
    if epoch_end:
      epoch = math.ceil(done / steps_per_epoch)
      eval_metrics = evaluate(state)
      eval_metrics['epoch'] = epoch
      writer.write_scalars(done, eval_metrics)
      logging.info('epoch %d: test loss %.4f, test accuracy %.2f%%', epoch,
                   eval_metrics['eval/loss'], eval_metrics['eval/accuracy'])
      if probe is not None:
        state = state.replace(dynamics=tracker.probe_update(
            state.dynamics, probe(state, probe_images)))
        scalars, hists = tracker.summarize_probe(state.dynamics)
        writer.write_scalars(done, scalars)
        if hists:
          writer.write_histograms(done, hists)
      if tracker is not None and config.dynamics.step_mode and jax.process_index() == 0:
        alphas = np.asarray(jax.device_get(state.dynamics['step_alphas']))
        if np.isfinite(alphas).any():
          writer.write_histograms(done, {'dynamics/alpha': alphas})
    stopping = stop_after is not None and done >= stop_after
    if (done % config.checkpoint_every_steps == 0 or done == total_steps or epoch_end
        or stopping):
      # Never save a diverged state: the last good checkpoint must stay the newest.
      _check_finite({'train/loss': float(metrics['train/loss'])}, done, workdir, last_saved)
      checkpoint.save(manager, state)
      last_saved = done
    if stopping:
      logging.info('Stopping after step %d as asked; the run resumes from here.', done)
      break
    if epoch_end:  # evaluation time is not training throughput
      t_interval = time.time()
  manager.wait_until_finished()
  writer.flush()

  outputs = {'workdir': os.path.abspath(workdir),
             'tensorboard': os.path.abspath(workdir),
             'metrics': os.path.abspath(os.path.join(workdir, 'metrics.jsonl')),
             'checkpoints': os.path.abspath(os.path.join(workdir, 'checkpoints'))}
  if tracker is not None and jax.process_index() == 0:
    export = tracker.export(jax.device_get(state.dynamics))
    export['config_json'] = np.asarray(config.dynamics.to_json_best_effort(sort_keys=True))
    export['steps_per_epoch'] = np.asarray(steps_per_epoch)
    outputs['dynamics'] = os.path.abspath(os.path.join(workdir, 'dynamics.npz'))
    np.savez(outputs['dynamics'], **export)
  final_step = int(jax.device_get(state.step))
  summary = {'final_step': final_step, 'total_steps': total_steps,
             'finished': final_step >= total_steps,
             'eval_accuracy': eval_metrics.get('eval/accuracy'),
             'eval_loss': eval_metrics.get('eval/loss'),
             'seconds': time.time() - t_start}
  summary_path = os.path.join(workdir, 'summary.json')
  if start_step >= total_steps and os.path.exists(summary_path):
    with open(summary_path) as f:  # a finished run restarted: nothing new to report
      summary = json.load(f)
  elif jax.process_index() == 0 and summary['finished']:
    # Written last: its presence marks a finished run (the sweep skips those).
    with open(summary_path, 'w') as f:
      json.dump(summary, f, indent=2)
  logging.info('Training took %s.', _format_seconds(summary['seconds']))
  return dict(summary, state=state, outputs=outputs)
