"""The loop's periodic actions (log, evaluate and probe, early stop, stop notices, checkpoint),
each a named function of the run, registered in ACTIONS in the order they act after a step.

Adding an action is one edit: a function `(run, tick) -> None` and its line in ACTIONS.
"""

import dataclasses
import math
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from training import (
    checkpoint,
    console,
    divergence,
    early_stop as early_stop_lib,
    feeds,
    replicas as replicas_lib,
)
from training.sinks import split


@dataclasses.dataclass
class Run:
  """A run in progress: what its actions read (plan, programs, data, sinks) and change."""

  plan: Any  # training/plan.Plan
  exp: Any  # training/programs.Experiment
  dataset: Any
  workdir: str
  sinks: List[Any]  # training/sinks.Sink, one per replica
  manager: Any  # checkpoint manager
  watcher: Any  # checkpoint.PreemptionWatcher
  replicated: Any  # sharding of a replicated array
  batch_sharding: Any
  train_step: Callable  # console.announce_first_call(exp.train_step)
  feed: Callable  # feeds.train_feed: step -> the train step's data arguments
  probe_images: Any
  state: Any
  start_step: int
  last_saved: Optional[int]  # the newest checkpoint's step (None: none saved)
  # training/step_series.StepSeriesFile of each replica (process 0, step mode; else empty)
  step_files: List[Any] = dataclasses.field(default_factory=list)
  stop_after: Optional[int] = None
  eval_metrics: List[Dict[str, float]] = dataclasses.field(default_factory=list)
  progress: Tuple[str, str] = ('', '')  # the last log line's training and throughput parts
  interval_start: float = dataclasses.field(default_factory=time.time)
  interval_steps: int = 0
  stop: Optional[str] = None  # 'preempted', 'stopped_early' or 'stop_after' once stopping
  stopped_early: bool = False
  t_start: float = dataclasses.field(default_factory=time.time)  # when its first step began

  @property
  def config(self):
    return self.plan.config

  @property
  def n(self) -> int:
    return self.plan.replicas


class Tick(NamedTuple):
  """The step just trained."""

  step: int  # 0-based global step
  metrics: Any  # the train step's metrics (device arrays; [N] per key with N replicas)

  @property
  def done(self) -> int:
    return self.step + 1


def epoch_end(run: Run, tick: Tick) -> bool:
  return tick.done % run.plan.steps_per_epoch == 0 or tick.done == run.plan.total_steps


def epoch_of(run: Run, done: int) -> int:
  return math.ceil(done / run.plan.steps_per_epoch)


def _replica_suffix(run: Run, k: int) -> str:
  return f' (replica {k})' if run.n > 1 else ''


# --- log ---------------------------------------------------------------------------------------


def log_due(run: Run, tick: Tick) -> bool:
  return tick.done % run.config.log_every_steps == 0 or epoch_end(run, tick)


def log_train(run: Run, tick: Tick):
  """Every log_every_steps and at each epoch end: the values of the logged step itself (not
  an interval mean, so that a resumed run logs exactly what an uninterrupted one would) to
  each replica's writers, and one progress line to the console (at an epoch end, the epoch's
  line carries it instead). Keeps the line's training and throughput parts in run.progress."""
  plan, config, n, done = run.plan, run.config, run.n, tick.done
  fetched = jax.device_get(tick.metrics)  # waits for the step: the interval's time ends here
  steps_per_sec = run.interval_steps / max(time.time() - run.interval_start, 1e-9)
  logged = []
  for k, (sink, replica) in enumerate(zip(run.sinks, split(fetched, n))):
    values = {
        key: float(replica[key]) for key in ('train/loss', 'train/accuracy', 'train/grad_norm')
    }
    divergence.check_finite(values, done, run.workdir, run.last_saved, _replica_suffix(run, k))
    if run.exp.tracker is not None:
      values.update(run.exp.tracker.summarize_step(replica))
    values['train/learning_rate'] = float(run.exp.schedule(tick.step))
    values['train/steps_per_sec'] = steps_per_sec
    sink.writer.write_scalars(done, values)
    logged.append(values)
  eta = (plan.total_steps - done) / max(steps_per_sec, 1e-9)
  speed = (
      f'{steps_per_sec:.2f} steps/s  {steps_per_sec * config.batch_size * n:.0f} img/s  '
      f'ETA {console.format_seconds(eta)}'
  )
  if n == 1:
    train = f'loss {logged[0]["train/loss"]:.4f}  acc {logged[0]["train/accuracy"]:.1f}%'
  else:
    train = (
        f'loss {console.spread_text([v["train/loss"] for v in logged])}  acc '
        f'{console.spread_text([v["train/accuracy"] for v in logged], 1)}% '
        f'(mean ± std of {n} replicas)'
    )
  if not epoch_end(run, tick):
    logging.info(
        'step %d/%d  epoch %.2f/%d  %s  | %s',
        done,
        plan.total_steps,
        done / plan.steps_per_epoch,
        plan.num_epochs,
        train,
        speed,
    )
  run.progress = (f'train {train}', speed)
  run.interval_start, run.interval_steps = time.time(), 0


# --- evaluate and probe ------------------------------------------------------------------------


def _probe(run: Run, done: int) -> str:
  """The dynamics probe at an epoch end: its sample appended to the state, its scalars and
  histograms to each replica's writers; returns the epoch line's dynamics part."""
  exp, n = run.exp, run.n
  signals = exp.probe(run.state, run.probe_images)
  if n == 1:
    run.state = run.state.replace(dynamics=exp.tracker.probe_update(run.state.dynamics, signals))
  else:
    dynamics = replicas_lib.probe_update(exp.tracker, run.state.dynamics, signals)
    run.state = jax.device_put(run.state.replace(dynamics=dynamics), exp.state_sharding)
  epoch_scalars = []
  for sink, dyn in zip(run.sinks, split(jax.device_get(run.state.dynamics), n)):
    scalars, hists = exp.tracker.summarize_probe(dyn)
    sink.writer.write_scalars(done, scalars)
    if hists:
      sink.writer.write_histograms(done, hists)
    epoch_scalars.append(scalars)
  shown = []
  for name in ('integration', 'metastability', 'dsi'):
    values = [s.get(f'dynamics_epoch/{name}') for s in epoch_scalars]
    if all(v is not None for v in values):
      shown.append(f'{name} {console.spread_text(values, 3)}')
  text = '; epoch dynamics: ' + (', '.join(shown) or 'not defined yet')
  if not shown and run.plan.dfa_epochs:
    text += f' (integration and DSI from epoch {run.plan.dfa_epochs})'
  return text


def end_epoch(run: Run, tick: Tick):
  """Evaluation, the dynamics probe and the per-tap alphas to each replica's writers; one
  console line with the log's progress. Keeps the evaluation metrics in run.eval_metrics."""
  plan, n, done = run.plan, run.n, tick.done
  epoch = epoch_of(run, done)
  t_eval = time.time()
  eval_metrics = feeds.evaluate(
      run.exp.eval_step, run.state, run.dataset, run.config, run.batch_sharding
  )
  for sink, values in zip(run.sinks, eval_metrics):
    values['epoch'] = epoch
    sink.writer.write_scalars(done, values)
  test = (
      f'loss {console.spread_text([v["eval/loss"] for v in eval_metrics])}  acc '
      f'{console.spread_text([v["eval/accuracy"] for v in eval_metrics], 2)}%'
  )
  line = (
      f'epoch {epoch}/{plan.num_epochs} (step {done}/{plan.total_steps}): {run.progress[0]}  | '
      f'test {test} ({time.time() - t_eval:.1f} s)  | {run.progress[1]}'
  )
  if run.exp.probe is not None:
    line += _probe(run, done)
  if run.exp.tracker is not None and run.config.dynamics.step_mode and jax.process_index() == 0:
    all_alphas = np.asarray(jax.device_get(run.state.dynamics['step_alphas']))
    for sink, alphas in zip(run.sinks, split(all_alphas, n)):
      if np.isfinite(alphas).any():
        sink.writer.write_histograms(done, {'dynamics/alpha': alphas})
  logging.info('%s', line)
  run.eval_metrics = eval_metrics


# --- early stop ----------------------------------------------------------------------------


def early_stop_due(run: Run, tick: Tick) -> bool:
  return epoch_end(run, tick) and early_stop_lib.enabled(run.config)


def all_stopped(run: Run) -> bool:
  """Whether every replica's early-stop rule has acted with action 'stop'."""
  config = run.config
  return (
      early_stop_lib.enabled(config)
      and config.early_stop.action == 'stop'
      and bool(np.all(early_stop_lib.epochs_acted(run.state.early_stop, run.n) >= 0))
  )


def early_stop(run: Run, tick: Tick):
  """config.early_stop at an epoch end: records the epoch at which the rule acts for each
  replica whose signal has fired (the state carries it, so a resume acts alike)."""
  config, n = run.config, run.n
  epoch = epoch_of(run, tick.done)
  acted_at = early_stop_lib.epochs_acted(run.state.early_stop, n)
  dyn = split(jax.device_get(run.state.dynamics), n)
  now = early_stop_lib.check(config, dyn, acted_at, epoch)
  if now:
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
    state = run.state.replace(early_stop=marker)
    run.state = jax.device_put(state, run.exp.state_sharding if n > 1 else run.replicated)
  run.stopped_early = all_stopped(run)


# --- stop notices and checkpoints ----------------------------------------------------------


def watch_stops(run: Run, tick: Tick):
  """Whether the run stops after this step: a preemption notice (SIGTERM, Ctrl-C), every
  replica stopped early, or `stop_after` reached. The end of the run is saved anyway."""
  done = tick.done
  if run.watcher.reached(done) and done < run.plan.total_steps:
    run.stop = 'preempted'
  elif run.stopped_early:
    run.stop = 'stopped_early'
  elif run.stop_after is not None and done >= run.stop_after:
    run.stop = 'stop_after'


def checkpoint_due(run: Run, tick: Tick) -> bool:
  done = tick.done
  return (
      done % run.config.checkpoint_every_steps == 0
      or done == run.plan.total_steps
      or epoch_end(run, tick)
      or run.stop is not None
  )


def drain_due(run: Run, tick: Tick) -> bool:
  """Often enough that the tracker's ring never overwrites an undrained step, and before
  every checkpoint (a checkpoint's step series are then all on disk)."""
  return bool(run.step_files) and (
      tick.done % run.exp.tracker.recent_steps == 0 or checkpoint_due(run, tick)
  )


def drain_step_series(run: Run, tick: Tick):
  """The steps recorded since the last drain, from each replica's ring to its
  dynamics_steps.f32 (training/step_series.py)."""
  del tick
  ring = {
      k: v
      for k, v in run.state.dynamics.items()
      if k == 'step_last' or k.startswith('step_recent_')
  }
  for series, dyn in zip(run.step_files, split(jax.device_get(ring), run.n)):
    series.drain(dyn)


def save_checkpoint(run: Run, tick: Tick):
  """A checkpoint of step `done`, after its records are written (so a run killed at any point
  resumes from a checkpoint whose records are all in metrics.jsonl); never of a diverged
  state (the last good checkpoint must stay the newest)."""
  done = tick.done
  for sink in run.sinks:
    sink.writer.flush()  # metrics.jsonl holds every record of a checkpointed step
  losses = np.asarray(jax.device_get(tick.metrics['train/loss'])).reshape(-1)
  for k, loss in enumerate(losses):
    divergence.check_finite(
        {'train/loss': float(loss)}, done, run.workdir, run.last_saved, _replica_suffix(run, k)
    )
  divergence.check_state_finite(run.state, done, run.workdir, run.last_saved)
  checkpoint.save(run.manager, run.state)
  run.last_saved = done


def restart_interval_clock(run: Run, tick: Tick):
  """Evaluation and saving time is not training throughput."""
  del tick
  run.interval_start = time.time()


def always(run: Run, tick: Tick) -> bool:
  del run, tick
  return True


class Action(NamedTuple):
  name: str
  due: Callable[[Run, Tick], bool]
  act: Callable[[Run, Tick], None]


ACTIONS = (
    Action('log', log_due, log_train),
    Action('evaluate', epoch_end, end_epoch),
    Action('early_stop', early_stop_due, early_stop),
    Action('watch_stops', always, watch_stops),
    Action('drain_step_series', drain_due, drain_step_series),
    Action('checkpoint', checkpoint_due, save_checkpoint),
    Action('restart_interval_clock', epoch_end, restart_interval_clock),
)
