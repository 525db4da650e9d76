"""Orbax checkpoints of the whole train state (dynamics buffers included), verified byte for
byte before every restore, restored past damaged ones, and the stop notices (SIGTERM, SIGINT)
that make the loop save and stop.

Every step directory holds `digests.json`: the size and SHA-256 of every file of the step and
the config of the run that wrote it. It is written by Orbax's post-finalization callback, inside
`<step>.orbax-checkpoint-tmp` after all processes finished writing and before the rename that
commits the step, so a committed step always has its digests (steps written by older versions
of this code have none, see `restore_latest`). Not covered: `_CHECKPOINT_METADATA`, which Orbax
rewrites at the commit (it adds the commit timestamp) and which holds no array data.
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from configs import common

DAMAGED_DIR = 'checkpoints.damaged'  # next to checkpoints/, where unreadable steps are moved
DIGESTS_FILE = 'digests.json'  # in every step directory
DIGESTS_FORMAT = 1
# Orbax rewrites it when the step is committed, after the digests are taken; no array data.
_NOT_DIGESTED = ('_CHECKPOINT_METADATA', DIGESTS_FILE)
_TMP_SUFFIX = '.orbax-checkpoint-tmp'  # orbax/checkpoint/_src/path/atomicity_types.py


class CheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be read."""


class CheckpointConfigError(ValueError):
  """The checkpoints in the workdir were written by a run with a different config."""


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed (in the background or at its start): the run stops at once."""


class NoSpaceError(OSError):
  """A checkpoint does not fit on its disk; the last good checkpoint is left as it was."""

  def __init__(self, message: str):
    super().__init__(errno.ENOSPC, message)

  def __str__(self):
    return self.args[1]


def free_bytes(path: str) -> int:
  """Bytes available to this user on the file system of `path` (tests replace it)."""
  return shutil.disk_usage(path).free


def _megabytes(n: int) -> str:
  return f'{n / 2**20:.1f} MiB'


def _is_no_space(e: BaseException) -> bool:
  """Whether `e` or an exception it was raised from reports a full disk (ENOSPC, also as text
  when TensorStore wraps it)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(e) or 'ENOSPC' in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


# ----------------------------------------------------------------------------------------------
# Digests


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def _files(folder: str) -> List[str]:
  """Paths of every file under `folder`, relative to it, sorted."""
  out = []
  for root, _, names in os.walk(folder):
    out.extend(os.path.relpath(os.path.join(root, n), folder) for n in names)
  return sorted(out)


def _record_digest(record: Dict[str, Any]) -> str:
  """SHA-256 of a digests record without its own `sha256` field, so that digests.json is
  checked too (a damaged config in it would otherwise pass as "no config stored")."""
  body = {k: v for k, v in record.items() if k != 'sha256'}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_digests(folder: str, step: int, config: Optional[Dict[str, Any]]):
  """Writes `<folder>/digests.json`: {format, step, config, files: {path: [bytes, sha256]},
  sha256 (of the rest)}."""
  files = {
      rel: [os.path.getsize(os.path.join(folder, rel)), _sha256(os.path.join(folder, rel))]
      for rel in _files(folder)
      if rel not in _NOT_DIGESTED
  }
  record = {'format': DIGESTS_FORMAT, 'step': step, 'config': config, 'files': files}
  record['sha256'] = _record_digest(record)
  path = os.path.join(folder, DIGESTS_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + '.tmp', path)


def verify_digests(folder: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
  """Checks every file of a step directory against its digests.json.

  Returns (record, None) when all match, (None, None) when there is no digests.json (a step of
  an older version; nothing to check against), and (None, problem) naming the first file that is
  missing, of another size or of other bytes.
  """
  path = os.path.join(folder, DIGESTS_FILE)
  if not os.path.exists(path):
    return None, None
  try:
    with open(path) as f:
      record = json.load(f)
    files = record['files']
    if record.get('format') != DIGESTS_FORMAT or not isinstance(files, dict):
      raise ValueError(f'unknown format {record.get("format")!r}')
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    return None, f'{DIGESTS_FILE} cannot be read ({type(e).__name__}: {e})'
  if record.get('sha256') != _record_digest(record):
    return None, f'{DIGESTS_FILE} itself was changed since it was saved (SHA-256 differs)'
  for rel, (size, digest) in sorted(files.items()):
    file = os.path.join(folder, rel)
    if not os.path.isfile(file):
      return None, f'{rel} is missing'
    if os.path.getsize(file) != size:
      return None, f'{rel} has {os.path.getsize(file)} bytes, {size} when it was saved'
    if _sha256(file) != digest:
      return None, f'the bytes of {rel} changed since it was saved (SHA-256 differs)'
  return record, None


# ----------------------------------------------------------------------------------------------
# The manager


class Manager(ocp.CheckpointManager):
  """Orbax's CheckpointManager, plus: digests of every step, the run's config with them, and
  one clear error when a checkpoint does not fit on its disk.

  Saves are asynchronous (Orbax's default): a step is written to `<step>.orbax-checkpoint-tmp`
  and renamed to `<step>` only once complete, so a process killed mid-save leaves no
  half-written step that `all_steps()` would list.
  """

  def __init__(self, directory: str, keep: int, config: Optional[Dict[str, Any]] = None):
    self._config = config
    self._saving: Optional[int] = None  # the step of the save in flight
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._write_digests),
    )
    # A single item, said so here: left to guess, Orbax decides from the first step it restores
    # whether the checkpoints hold one item or several, and a newest step without its
    # `default` folder made every older one fail with "Must provide args of type Composite".
    super().__init__(directory, options=options, item_handlers=ocp.StandardCheckpointHandler())

  def _write_digests(self):
    # Orbax's callback, on process 0 only, once every process has written its files, before
    # the rename that commits the step: the digests are part of the committed step.
    step = self._saving
    if step is None:
      return
    folder = os.path.join(str(self.directory), f'{step}{_TMP_SUFFIX}')
    if not os.path.isdir(folder):  # file systems without atomic rename write in place
      folder = os.path.join(str(self.directory), str(step))
    write_digests(folder, step, self._config)

  def _no_space(
      self, step: int, needed: Optional[int], free: int, wrote: bool = False
  ) -> NoSpaceError:
    last = self.latest_step()
    kept = (
        f'The last good checkpoint (step {last}) is intact; run the same command again '
        f'to resume from it'
        if last is not None
        else 'No checkpoint was saved before; ' 'run the same command again to start afresh'
    )
    if wrote and needed:  # the estimate passed, the write itself ran out of room
      size = f'needs more than estimated ({_megabytes(needed)}) and did not fit: '
    else:
      size = f'needs about {_megabytes(needed)}, ' if needed else 'does not fit, '
    return NoSpaceError(
        f'No space left on the disk of {self.directory}: the checkpoint of step {step} '
        f'{size}{_megabytes(free)} are free. {kept} once space is freed (or with a --workdir '
        'on a disk with room).'
    )

  def _translate(self, e: BaseException, step: Optional[int]):
    if _is_no_space(e):
      step = self._saving if step is None else step
      tmp = os.path.join(str(self.directory), f'{step}{_TMP_SUFFIX}')
      if jax.process_index() == 0 and os.path.isdir(tmp):  # half written: frees the space
        shutil.rmtree(tmp, ignore_errors=True)
      needed = getattr(self, '_needed', None)
      raise self._no_space(step, needed, free_bytes(str(self.directory)), wrote=True) from e

  def _save_failed(self, e: BaseException, step: Optional[int]) -> CheckpointSaveError:
    step = self._saving if step is None else step
    last = self.latest_step()
    kept = (
        f'the last good checkpoint (step {last}) is intact, and the same command resumes from ' 'it'
        if last is not None and last != step
        else 'no checkpoint was committed before it, and the same command starts afresh'
    )
    return CheckpointSaveError(
        f'Saving the checkpoint of step {step} in {self.directory} failed '
        f'({type(e).__name__}: {_first_line(e)}); the run stopped there. Once that is fixed '
        f'(a folder that can be written, with room), run again: {kept}.'
    )

  def _background_error(self) -> Optional[BaseException]:
    """The error of a background save that has failed, without waiting for anything (None if
    none failed, or where this Orbax version keeps it elsewhere)."""
    async_manager = getattr(getattr(self, '_checkpointer', None), '_async_manager', None)
    error = getattr(async_manager, '_exception', None)
    if error is not None:
      return error
    # The CheckpointManager's finalize thread takes the error over once it has waited for the
    # commit, and keeps it as its `exception` when it ends.
    finalize = getattr(self, '_finalize_thread', None)
    try:
      return finalize.map(lambda t: t.exception if t is not None and not t.is_alive() else None)
    except Exception:  # pylint: disable=broad-except  # another Orbax: found at the next save
      return None

  def check_saves(self):
    """Raises CheckpointSaveError (NoSpaceError for a full disk) as soon as the save in flight
    has failed in the background; cheap, so the loop calls it every step instead of finding
    out at the next save."""
    if self._background_error() is not None:
      self.wait_until_finished()  # raises it, translated

  def wait_until_finished(self):
    try:
      super().wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._translate(e, None)
      raise self._save_failed(e, None) from e

  def save(self, step: int, *args, **kwargs) -> bool:
    self.wait_until_finished()  # Orbax does it too; here so that _saving is the step in flight
    needed = kwargs.pop('needed_bytes', None)
    self._needed = needed
    if needed is not None:
      free = free_bytes(str(self.directory))
      if free < needed:
        raise self._no_space(step, needed, free)
    self._saving = step
    try:
      return super().save(step, *args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      self._translate(e, step)
      raise self._save_failed(e, step) from e


def make_manager(workdir: str, keep: int, config=None) -> Manager:
  """The checkpoint manager of `workdir`; `config` (a ConfigDict) is stored with every step."""
  config = json.loads(config.to_json_best_effort(sort_keys=True)) if config is not None else None
  return Manager(os.path.join(os.path.abspath(workdir), 'checkpoints'), keep, config)


def _state_bytes(tree) -> int:
  return sum(int(getattr(x, 'nbytes', 0)) for x in jax.tree.leaves(tree))


def save(manager: ocp.CheckpointManager, state, force: bool = False) -> bool:
  """Starts an asynchronous save of `state` at its own step; False if that step exists.

  Raises NoSpaceError, before writing anything, when the disk has less room than the state's
  bytes (and when the write itself runs out of space).
  """
  step = int(jax.device_get(state.step))
  tree = flax.serialization.to_state_dict(state)
  kwargs = {'needed_bytes': _state_bytes(tree)} if isinstance(manager, Manager) else {}
  return manager.save(step, args=ocp.args.StandardSave(tree), force=force, **kwargs)


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
      flax.serialization.to_state_dict(template),
  )
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


ALLOW_UNVERIFIED_FLAG = '--allow_unverified_checkpoint'


def _refuse_config(manager, step: int, saved: Dict[str, Any], what: str):
  """Refuses a step whose config (`saved`, as `what` tells it) differs from this run's."""
  new = getattr(manager, '_config', None)
  if new is None:
    return
  differences = common.config_differences(saved, new)
  if differences:
    shown = '; '.join(differences[:12]) + ('; ...' if len(differences) > 12 else '')
    raise CheckpointConfigError(
        f'{_step_dir(manager, step)} was written by a run with a different config '
        f'({len(differences)} field(s), {what} -> now: {shown}). Resume it with its own '
        'config, or move the checkpoints folder away (or choose a new --workdir) to start '
        'afresh.'
    )


def _check_config(manager, step: int, record: Dict[str, Any], allow_unverified: bool):
  """Refuses a step written by a run of another config, naming the differing fields.

  The config in digests.json is covered by its SHA-256: it is the step's own. A record without
  one (a manager made without a config) binds the bytes to no config: such a step is
  unverified, see _check_unverified."""
  if record.get('config') is None and getattr(manager, '_config', None) is not None:
    _check_unverified(manager, step, f'its {DIGESTS_FILE} holds no config', allow_unverified)
    return
  if record.get('config') is not None:
    _refuse_config(manager, step, record['config'], 'checkpoint')


def _check_unverified(manager, step: int, why: str, allow_unverified: bool):
  """A step that digests.json does not vouch for (no digests, or digests of no config): refused
  unless `allow_unverified`, and then only with the workdir's config.json to check its config
  against (never restored under a config nobody can tell)."""
  step_dir = _step_dir(manager, step)
  config_path = os.path.join(os.path.dirname(str(manager.directory)), 'config.json')
  what = (
      f'{step_dir} has no {DIGESTS_FILE}: its bytes and its config cannot be verified (a step '
      'written by an older version of this code, or one whose digests were removed)'
      if why == 'no digests'
      else f'{step_dir} cannot be verified: {why}'
  )
  if not allow_unverified:
    raise CheckpointError(
        f'{what}. It is restored only if asked for: pass {ALLOW_UNVERIFIED_FLAG} '
        '(train_and_evaluate(..., allow_unverified=True)) to restore it anyway, its config '
        f'checked against {config_path}; or move {step_dir} out of checkpoints/ to resume '
        'from an older verified step.'
    )
  if getattr(manager, '_config', None) is None:
    return
  try:
    with open(config_path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise CheckpointError(
        f'{what}, and the workdir has no config.json to check its config against, so it is '
        f'not restored even with {ALLOW_UNVERIFIED_FLAG}: put the config.json of the run that '
        f'wrote it back in {os.path.dirname(config_path)}, or move {step_dir} out of '
        'checkpoints/.'
    ) from None
  except (OSError, ValueError) as e:
    raise CheckpointError(
        f'{what}, and {config_path} cannot be read ({e}) to check its config against.'
    ) from None
  _refuse_config(manager, step, saved, 'config.json')


def restore_latest(
    manager: ocp.CheckpointManager, template, sharding, allow_unverified: bool = False
) -> Optional[object]:
  """The newest intact checkpoint restored into `template`'s structure with `sharding`.

  template: a TrainState (abstract or concrete) with the shapes of this config.
  Returns None when there is no checkpoint. Each step is first checked against its
  digests.json (every file there, of the same size and SHA-256); a step that fails the check,
  or that Orbax cannot read, is damaged: it is moved to
  `<workdir>/checkpoints.damaged/<step>-<time>` with a warning once an older one has been
  restored, and the next older one is tried; nothing is deleted. A step without digests.json
  (written before they existed, or whose digests were removed), or whose digests hold no
  config, is unverified: refused with CheckpointError unless `allow_unverified`, and then
  restored with Orbax's own checks only, with a warning, once its config matches the
  workdir's config.json (refused when there is none).

  Raises:
    CheckpointConfigError: the step about to be restored was written with another config.
    CheckpointError: checkpoints exist but none can be read (they are left where they are), or
      the newest readable one is unverified and `allow_unverified` is not set.
  """
  failures: List[Tuple[int, str]] = []
  for step in sorted(manager.all_steps(), reverse=True):
    record, problem = verify_digests(_step_dir(manager, step))
    if problem is None:
      if record is not None:
        _check_config(manager, step, record, allow_unverified)
      else:
        _check_unverified(manager, step, 'no digests', allow_unverified)
        logging.warning(
            'Checkpoint %s has no %s: restored as asked (%s), its bytes checked by ' 'Orbax only.',
            _step_dir(manager, step),
            DIGESTS_FILE,
            ALLOW_UNVERIFIED_FLAG,
        )
      try:
        state = _restore_step(manager, step, template, sharding)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax and TensorStore report damage as ValueError, OSError, KeyError and more; any
        # failure to read this step means "try the previous one".
        problem = f'{type(e).__name__}: {_first_line(e)}'
    if problem is not None:
      logging.warning(
          'Checkpoint %s is damaged (%s); trying the previous one.',
          _step_dir(manager, step),
          problem,
      )
      failures.append((step, problem))
      continue
    if failures:
      moved = _move_aside(manager, [s for s, _ in failures])
      logging.warning(
          'Resuming from step %d, the newest intact checkpoint. The damaged '
          'checkpoint(s) were moved, not deleted: %s',
          step,
          ', '.join(moved),
      )
    logging.info(
        'Restored checkpoint at step %d from %s (%s)',
        step,
        manager.directory,
        'bytes verified' if record is not None else 'unverified',
    )
    return state
  if failures:
    listing = '; '.join(f'{_step_dir(manager, s)}: {p}' for s, p in failures)
    raise CheckpointError(
        f'None of the checkpoints in {manager.directory} can be read ({listing}). They are '
        'left in place. To start this run again from step 0, move them out of that folder; '
        'or use a fresh --workdir.'
    )
  return None


def _first_line(e: Exception, limit: int = 300) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  return text if len(text) <= limit else text[:limit] + '...'


# ----------------------------------------------------------------------------------------------
# Stop notices

_STOP_SIGNALS = {signal.SIGTERM: 'Preempted (SIGTERM)', signal.SIGINT: 'Interrupted (SIGINT)'}
_last_signal: Optional[int] = None


def last_signal() -> Optional[int]:
  """The signal that made the last run of this process save and stop (None: none did)."""
  return _last_signal


class PreemptionWatcher:
  """Notices a stop notice (SIGTERM, or SIGINT from Ctrl-C) so that the loop can save at the
  current step and stop.

  One process: a handler sets a flag that `reached(step)` reads once per step, a plain Python
  read (no device or host synchronisation). A second Ctrl-C raises KeyboardInterrupt at once
  (Python's default), for a user who does not want to wait for the save.
  Several processes (jax.distributed): JAX's preemption sync manager owns SIGTERM; it spreads the
  notice to every process and picks one step at which all of them save (Orbax's
  `CheckpointManager.reached_preemption`, a local query). A Python handler here would replace
  JAX's and leave the other processes waiting in the save's collectives, so none is installed
  (and SIGINT keeps its default).
  """

  def __init__(self, manager: ocp.CheckpointManager):
    global _last_signal
    _last_signal = None
    self._manager = manager
    self.signum: Optional[int] = None
    self._previous = {}
    self._multi_process = jax.process_count() > 1
    # signal.signal only works in the main thread; elsewhere the signals keep their effect.
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      for signum in _STOP_SIGNALS:
        self._previous[signum] = signal.signal(signum, self._on_signal)

  @property
  def reason(self) -> str:
    """'Preempted (SIGTERM)' or 'Interrupted (SIGINT)': what made the run stop, for its log."""
    return _STOP_SIGNALS.get(self.signum, _STOP_SIGNALS[signal.SIGTERM])

  def _on_signal(self, signum, frame):
    del frame
    global _last_signal
    if self.signum is None:
      self.signum = _last_signal = signum
      if signum == signal.SIGINT:
        logging.warning(
            'Ctrl-C: saving a checkpoint at the end of this step, then stopping '
            '(press Ctrl-C again to stop at once without saving).'
        )
        signal.signal(signal.SIGINT, signal.default_int_handler)

  def reached(self, step: int) -> bool:
    """Whether to save at `step` (the number of steps done) and stop."""
    if self._multi_process:
      return self._manager.reached_preemption(step)
    return self.signum is not None

  def close(self):
    for signum, previous in self._previous.items():
      # None: the old handler was not set from Python; use the default.
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)
    self._previous = {}
