"""The end of a run: dynamics.npz and summary.json of each replica (and of the whole run),
written atomically, and the summary the run returns."""

import json
import os
import time
from typing import Any, Dict, List, Optional

import jax
import numpy as np
from absl import logging

from training import console, early_stop as early_stop_lib, feeds, writers as writers_lib
from training.sinks import split as _split


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


def finish(run) -> Dict[str, Any]:
  """dynamics.npz and summary.json of each replica (and of the whole run); the result.

  run: training/actions.Run after its last step. A run that stopped early (every replica's
  early-stop rule acted) is finished; a preempted one returns at once."""
  n, workdir, state = run.n, run.workdir, run.state
  where = '' if n == 1 else 'replica_*'
  outputs = {
      'workdir': os.path.abspath(workdir),
      'tensorboard': os.path.abspath(workdir),
      'metrics': os.path.abspath(os.path.join(workdir, where, 'metrics.jsonl')),
      'checkpoints': os.path.abspath(os.path.join(workdir, 'checkpoints')),
  }
  final_step = int(jax.device_get(state.step))
  if run.stop == 'preempted':  # exit fast: the scheduler's grace period is short
    return dict(
        final_step=final_step,
        total_steps=run.plan.total_steps,
        finished=False,
        preempted=True,
        **_eval_fields(run.eval_metrics, n),
        seconds=time.time() - run.t_start,
        state=state,
        outputs=outputs,
    )
  if run.exp.tracker is not None and jax.process_index() == 0:
    outputs['dynamics'] = os.path.abspath(os.path.join(workdir, where, 'dynamics.npz'))
    write_dynamics(run)
  summary = write_summary(run, final_step)
  logging.info('Training took %s.', console.format_seconds(summary['seconds']))
  return dict(summary, preempted=False, state=state, outputs=outputs)


def write_dynamics(run):
  """Each replica's dynamics.npz: the tracker's export (its step series from the replica's
  dynamics_steps.f32), its config and steps per epoch."""
  files = run.step_files or [None] * run.n
  for sink, dyn, series in zip(run.sinks, _split(jax.device_get(run.state.dynamics), run.n), files):
    if series is not None:
      series.drain(dyn)  # nothing new after the last step's drain; cheap to be sure
    export = run.exp.tracker.export(dyn, series.read() if series is not None else None)
    export['config_json'] = np.asarray(run.config.dynamics.to_json_best_effort(sort_keys=True))
    export['steps_per_epoch'] = np.asarray(run.plan.steps_per_epoch)
    with writers_lib.atomic_file(os.path.join(sink.workdir, 'dynamics.npz'), 'wb') as f:
      np.savez(f, **export)


def write_summary(run, final_step: int) -> Dict[str, Any]:
  """summary.json of the run (and of each replica); a finished run restarted keeps its own."""
  config, n, total_steps = run.config, run.n, run.plan.total_steps
  summary_path = os.path.join(run.workdir, 'summary.json')
  previous = _previous_summary(summary_path) if jax.process_index() == 0 else None
  has_previous = previous is not None if jax.process_index() == 0 else os.path.exists(summary_path)
  complete = final_step >= total_steps or run.stopped_early
  eval_metrics = run.eval_metrics
  if complete and not eval_metrics and not has_previous:
    # Killed after its final checkpoint but before summary.json: report the final state.
    eval_metrics = feeds.evaluate(
        run.exp.eval_step, run.state, run.dataset, config, run.batch_sharding
    )
  acted_at = early_stop_lib.epochs_acted(run.state.early_stop, n)
  summary = {
      'final_step': final_step,
      'total_steps': total_steps,
      'finished': complete,
      **_eval_fields(eval_metrics, n),
      'seconds': time.time() - run.t_start,
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
  if (run.start_step >= total_steps or run.stopped_early) and previous is not None:
    return previous  # a finished run restarted: nothing new to report
  if jax.process_index() == 0 and summary['finished']:
    # Each written whole or not at all (writers.atomic_file): a summary.json that exists
    # parses and is complete.
    for sink, replica_summary in zip(run.sinks if n > 1 else [], summary.get('replicas', [])):
      writers_lib.write_json(os.path.join(sink.workdir, 'summary.json'), replica_summary, indent=2)
    # Written last: its presence marks a finished run (the sweep skips those).
    writers_lib.write_json(summary_path, summary, indent=2)
  return summary
