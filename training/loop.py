"""train_and_evaluate(config, workdir): a run, as a recipe of named stages (the absl main and
the tests call it); each stage lives in the module named for it."""

import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

import data as data_lib
from data import facts as facts_lib
from training import (
    actions as actions_lib,
    checkpoint,
    console,
    feeds,
    finish as finish_lib,
    plan as plan_lib,
    programs,
    restore,
    sinks as sinks_lib,
    step_series,
    workdir as workdir_lib,
)


def train_and_evaluate(
    config,
    workdir: str,
    stop_after: Optional[int] = None,
    overwrite: bool = False,
    allow_unverified: bool = False,
) -> Dict[str, Any]:
  """Trains config.model on config.data, evaluating every epoch; writes to workdir.

  Resumes from the newest readable checkpoint in workdir (unreadable ones are moved to
  `checkpoints.damaged/`). A workdir holding a run of a different config is refused unless
  `overwrite`, which moves that run to `<workdir>.old-<timestamp>`. A second run on the same
  workdir stops at once with WorkdirLockedError naming the first one. On SIGTERM (a preemption
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
  # Plan before the lock and before loading where the config alone tells the data's facts:
  # a config error then costs nothing and leaves nothing behind.
  dataset, facts = None, plan_lib.known_facts(config)
  if facts is None:  # an image folder: only its files tell its size, classes and image shape
    dataset = load_data(config)
    facts = facts_lib.of(dataset)
  plan = plan_lib.make_plan(config, facts, jax.device_count(), jax.process_count())
  with workdir_lib.locked(workdir):
    workdir_lib.prepare_workdir(plan.given, workdir, overwrite)
    plan.log()
    dataset = dataset or load_data(config)
    mesh = programs.mesh_for(plan)
    exp = programs.build_for(
        plan, mesh, jnp.asarray(dataset.mean, jnp.float32), jnp.asarray(dataset.std, jnp.float32)
    )
    programs.check_state_fits(plan.config, exp)
    run = start(plan, exp, dataset, mesh, workdir, allow_unverified, stop_after)
    try:
      train(run)
    finally:
      close(run)
    return finish_lib.finish(run)


def load_data(config):
  """The dataset config.data names, loaded (and logged with its time)."""
  t_load = time.time()
  source = config.data.source
  where = {'image_folder': f' {config.data.path}', 'tfds': f' {config.data.name}'}
  logging.info('Loading the data: %s ...', source + where.get(source, ''))
  dataset = data_lib.load(config.data)
  logging.info(
      'Data: %s, %d training and %d test images of %s (%.1f s).',
      dataset.name,
      len(dataset.train_labels),
      len(dataset.test_labels),
      'x'.join(map(str, dataset.train_images.shape[1:])),
      time.time() - t_load,
  )
  return dataset


def start(plan, exp, dataset, mesh, workdir, allow_unverified, stop_after) -> actions_lib.Run:
  """The run at its first step: restored (or initialised), config.json written, its records
  opened, its data feeds ready."""
  config = plan.config
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))
  state = restore.initial_state(
      config,
      exp._replace(init_state=console.announce_first_call(exp.init_state, 'initial state')),
      replicated,
  )
  manager = checkpoint.make_manager(workdir, config.keep_checkpoints, plan.given)
  try:
    restore.check_checkpoint_replicas(manager, config)
  except ValueError:
    manager.close()
    raise
  # N > 1: restored replicated (one sharding for every leaf), then split over 'replica'.
  restored = checkpoint.restore_latest(manager, state, replicated, allow_unverified)
  if restored is not None:
    state = restored if plan.replicas == 1 else jax.device_put(restored, exp.state_sharding)
  start_step = int(jax.device_get(state.step))
  # Written only now that the run is sure to start: a run that failed on its config or data
  # leaves no config.json that would make the corrected retry look like a different run.
  workdir_lib.save_config(plan.given, workdir)
  run = actions_lib.Run(
      plan=plan,
      exp=exp,
      dataset=dataset,
      workdir=workdir,
      sinks=sinks_lib.open_sinks(config, workdir, start_step),
      manager=manager,
      watcher=None,
      replicated=replicated,
      batch_sharding=batch_sharding,
      # The evaluation step and the probe compile in a second or two: the epoch line says it.
      train_step=console.announce_first_call(exp.train_step, 'train step'),
      feed=feeds.train_feed(config, dataset, mesh, batch_sharding),
      probe_images=(
          feeds.probe_images(config, dataset, mesh, batch_sharding) if exp.probe else None
      ),
      state=state,
      start_step=start_step,
      last_saved=start_step if restored is not None else None,
      stop_after=stop_after,
  )
  run.stopped_early = actions_lib.all_stopped(run)  # a stopped run restarted trains no further
  run.step_files = step_series.open_files(run)
  logging.info(
      'Training %s on %s (%d classes): %d steps, %d per epoch, batch %d on %d '
      'device(s) in %d process(es); workdir %s',
      config.model,
      dataset.name,
      plan.data.num_classes,
      plan.total_steps,
      plan.steps_per_epoch,
      config.batch_size,
      jax.device_count(),
      jax.process_count(),
      workdir,
  )
  return run


def train(run: actions_lib.Run):
  """The steps from run.start_step, each followed by the actions due (actions.ACTIONS), until
  the last step or a stop (preemption notice, early stop, stop_after)."""
  run.watcher = checkpoint.PreemptionWatcher(run.manager)
  run.t_start = time.time()
  run.interval_start, run.interval_steps = time.time(), 0
  last = run.plan.total_steps if not run.stopped_early else run.start_step
  for step in range(run.start_step, last):
    run.state, metrics = run.train_step(run.state, *run.feed(step))
    run.manager.check_saves()  # a background save that failed stops the run here, not later
    run.interval_steps += 1
    if step == run.start_step:  # the compilation is not training throughput
      run.interval_start += run.train_step.seconds
    tick = actions_lib.Tick(step, metrics)
    for action in actions_lib.ACTIONS:
      if action.due(run, tick):
        action.act(run, tick)
    if run.stop is not None:
      announce_stop(run, tick.done)
      break


def announce_stop(run: actions_lib.Run, done: int):
  if run.stop == 'preempted':
    run.manager.wait_until_finished()
    logging.warning(
        '%s at step %d/%d: checkpoint saved in %s. Run the same command '
        'again to resume from step %d.',
        run.watcher.reason,
        done,
        run.plan.total_steps,
        run.manager.directory,
        done,
    )
  elif run.stop == 'stopped_early':
    logging.info('Stopped early after step %d (epoch %d).', done, actions_lib.epoch_of(run, done))
  else:
    logging.info('Stopping after step %d as asked; the run resumes from here.', done)


def close(run: actions_lib.Run):
  """Also when the run stops with an error: the records of the last steps are flushed, and a
  save still in flight (the last good checkpoint, lost if the process exits before it is
  committed) is waited for."""
  for sink in run.sinks:
    sink.writer.flush()
  if run.watcher is not None:
    run.watcher.close()
  run.manager.wait_until_finished()
  run.manager.close()
