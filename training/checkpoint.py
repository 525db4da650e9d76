"""Orbax checkpoints of the whole train state (dynamics buffers included), restored past damaged
ones, and the preemption notice (SIGTERM) that makes the loop save and stop."""

import os
import signal
import threading
import time
from typing import List, Optional, Tuple

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

DAMAGED_DIR = 'checkpoints.damaged'  # next to checkpoints/, where unreadable steps are moved


class CheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be read."""


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  # Saves are asynchronous (Orbax's default): a step is written to `<step>.orbax-checkpoint-tmp`
  # and renamed to `<step>` only once complete, so a process killed mid-save leaves no
  # half-written step that `all_steps()` would list.
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def save(manager: ocp.CheckpointManager, state, force: bool = False) -> bool:
  """Starts an asynchronous save of `state` at its own step; False if that step exists."""
  step = int(jax.device_get(state.step))
  return manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                      force=force)


def sync_processes(name: str):
  """A barrier across processes (no-op with one), for file moves done by process 0 alone."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  # make_manager uses Orbax's default step names: the bare step number.
  return os.path.join(str(manager.directory), str(step))


def _restore_step(manager, step: int, template, sharding):
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      flax.serialization.to_state_dict(template))
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  saved_step = int(np.asarray(jax.device_get(restored['step'])))
  if saved_step != step:  # e.g. a step directory copied or renamed by hand
    raise ValueError(f'the directory is named step {step} but holds step {saved_step}')
  return flax.serialization.from_state_dict(template, restored)


def _move_aside(manager, steps: List[int]) -> List[str]:
  """Moves the step directories out of checkpoints/ (never deletes them); returns new paths."""
  damaged_root = os.path.join(os.path.dirname(str(manager.directory)), DAMAGED_DIR)
  moved = []
  for step in steps:
    dest = os.path.join(damaged_root, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      os.makedirs(damaged_root, exist_ok=True)
      os.replace(_step_dir(manager, step), dest)
    moved.append(dest)
  sync_processes('checkpoint_move_aside')
  manager.reload()  # forget the moved steps, so the run can save those step numbers again
  return moved


def restore_latest(manager: ocp.CheckpointManager, template, sharding) -> Optional[object]:
  """The newest readable checkpoint restored into `template`'s structure with `sharding`.

  template: a TrainState (abstract or concrete) with the shapes of this config.
  Returns None when there is no checkpoint. A checkpoint that cannot be read (missing,
  truncated or corrupted files: Orbax checks the metadata and TensorStore the sizes and
  CRC32C checksums of the data) is moved to `<workdir>/checkpoints.damaged/<step>-<time>` with
  a warning, and the next older one is tried; nothing is deleted.

  Raises:
    CheckpointError: checkpoints exist but none can be read (they are left where they are).
  """
  failures: List[Tuple[int, Exception]] = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = _restore_step(manager, step, template, sharding)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore report damage as ValueError, OSError, JSONDecodeError and more;
      # any failure to read this step means "try the previous one".
      logging.warning('Checkpoint %s cannot be read (%s: %s); trying the previous one.',
                      _step_dir(manager, step), type(e).__name__, _first_line(e))
      failures.append((step, e))
      continue
    if failures:
      moved = _move_aside(manager, [s for s, _ in failures])
      logging.warning('Resuming from step %d. The unreadable checkpoint(s) were moved, not '
                      'deleted: %s', step, ', '.join(moved))
    logging.info('Restored checkpoint at step %d from %s', step, manager.directory)
    return state
  if failures:
    listing = '; '.join(f'{_step_dir(manager, s)}: {type(e).__name__}: {_first_line(e)}'
                        for s, e in failures)
    raise CheckpointError(
        f'None of the checkpoints in {manager.directory} can be read ({listing}). They are '
        'left in place. To start this run again from step 0, move them out of that folder; '
        'or use a fresh --workdir.')
  return None


def _first_line(e: Exception, limit: int = 300) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  return text if len(text) <= limit else text[:limit] + '...'


class PreemptionWatcher:
  """Notices a preemption notice (SIGTERM) so that the loop can save at the current step and stop.

  One process: a SIGTERM handler sets a flag that `reached(step)` reads once per step, a plain
  Python read (no device or host synchronisation).
  Several processes (jax.distributed): JAX's preemption sync manager owns SIGTERM; it spreads the
  notice to every process and picks one step at which all of them save (Orbax's
  `CheckpointManager.reached_preemption`, a local query). A Python handler here would replace
  JAX's and leave the other processes waiting in the save's collectives, so none is installed.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self._manager = manager
    self._signalled = False
    self._installed = False
    self._previous = None
    self._multi_process = jax.process_count() > 1
    # signal.signal only works in the main thread; elsewhere SIGTERM keeps its usual effect.
    if (not self._multi_process
        and threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._signalled = True

  def reached(self, step: int) -> bool:
    """Whether to save at `step` (the number of steps done) and stop."""
    if self._multi_process:
      return self._manager.reached_preemption(step)
    return self._signalled

  def close(self):
    if self._installed:  # None: the old handler was not set from Python; use the default
      signal.signal(signal.SIGTERM,
                    signal.SIG_DFL if self._previous is None else self._previous)
      self._installed = False
