"""The workdir's safety catches: one run at a time (a lock file), and a metrics.jsonl that a
killed or damaged run left behind made readable again without losing a valid record."""

import contextlib
import json
import os
import socket
import sys
import time
from typing import Any, Dict, Iterator, List, Optional

import jax
from absl import logging

from configs import common
from training import checkpoint, replicas as replicas_lib, writers as writers_lib


class WorkdirLockedError(RuntimeError):
  """Another run (alive, or on another host) holds the workdir's lock."""


def lock_path(workdir: str) -> str:
  # Next to the workdir, not in it: `--overwrite` moves the workdir aside while the lock must
  # stay, and a lock in a fresh folder would be taken before the workdir check has run.
  # Keyed on the resolved path: two names of one folder (a symlink, `..`, a trailing slash)
  # are one workdir and must share one lock.
  return os.path.realpath(workdir).rstrip(os.sep) + '.lock'


def _start_time(pid: int) -> Optional[str]:
  """The start time of process `pid` in clock ticks since boot (Linux), to tell a live process
  from a new one that got a dead one's PID; None where /proc is not available."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      # The command name (field 2) is in parentheses and may hold spaces: split after it.
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(holder: Dict[str, Any]) -> bool:
  """Whether the process that wrote the lock `holder` (same host) still runs."""
  pid = int(holder['pid'])
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  started = holder.get('start_time')
  return started is None or _start_time(pid) in (None, started)


def _describe(holder: Dict[str, Any]) -> str:
  return (
      f'process {holder.get("pid")} on host {holder.get("host")!r} (started '
      f'{holder.get("started", "?")}: {holder.get("command", "?")})'
  )


class WorkdirLock:
  """`<workdir>.lock`, created atomically (O_EXCL), holding this process's PID and host.

  A lock whose process is dead (same host) is stale: taken over with a warning. A lock of a live
  process, or of another host (whose processes cannot be checked from here), is refused at
  once with WorkdirLockedError naming that process. With several processes (jax.distributed)
  only process 0 takes the lock: they are one run.
  """

  def __init__(self, workdir: str):
    if not workdir or not str(workdir).strip():
      raise ValueError(
          '--workdir is empty: give the folder for the run (it is created if needed), e.g. '
          '--workdir=runs/tiny.'
      )
    self.path = lock_path(workdir)
    self._mine: Optional[Dict[str, Any]] = None

  def _read(self) -> Optional[Dict[str, Any]]:
    """The holder's record; None when there is no lock, {} when it cannot be parsed (being
    written right now, or damaged), and {'malformed': why} for a JSON value that no run writes
    (a list, null, no integer pid): damaged, not in the middle of a write."""
    try:
      with open(self.path) as f:
        holder = json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}
    if not isinstance(holder, dict):
      return {'malformed': f'a JSON {type(holder).__name__}, not an object'}
    if isinstance(holder.get('pid'), bool) or not isinstance(holder.get('pid'), int):
      return {'malformed': f'its pid is {holder.get("pid")!r}, not a process id'}
    return holder

  def acquire(self) -> 'WorkdirLock':
    if jax.process_index() != 0:
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    me = {
        'pid': os.getpid(),
        'host': socket.gethostname(),
        'start_time': _start_time(os.getpid()),
        'started': time.strftime('%Y-%m-%d %H:%M:%S'),
        'command': ' '.join(sys.argv),
    }
    for _ in range(5):  # a few rounds of "create, else judge the holder", against races
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if holder is None:  # released in between
          continue
        if 'malformed' in holder:
          reason = f'a malformed lock file ({holder["malformed"]})'
        elif not holder:  # empty or unparsable: a holder that is writing it now, unless old
          age = time.time() - os.path.getmtime(self.path) if os.path.exists(self.path) else 0
          if age < 10:
            time.sleep(0.2)
            continue
          reason = 'an unreadable lock file'
        elif holder.get('host') != me['host']:
          raise WorkdirLockedError(
              f'The workdir {self.path[:-5]} is in use by {_describe(holder)}, another host, '
              f'whose processes cannot be checked from here. Wait for that run to end, or use '
              f'another --workdir; if it is no longer running, delete {self.path}.'
          )
        elif _alive(holder):
          raise WorkdirLockedError(
              f'The workdir {self.path[:-5]} is in use by {_describe(holder)}: two runs in '
              'one workdir would mix their records and checkpoints. Wait for it to end (or '
              'stop it), or use another --workdir.'
          )
        else:
          reason = f'{_describe(holder)}, which is no longer running'
        # Renamed, not deleted, so that of two runs taking over the same stale lock only one
        # succeeds (the other's rename fails, and it sees the winner's lock next round).
        stale = f'{self.path}.stale-{os.getpid()}'
        try:
          os.replace(self.path, stale)
        except FileNotFoundError:
          continue
        os.remove(stale)
        logging.warning('Took over the stale lock %s of %s.', self.path, reason)
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self._mine = me
      return self
    raise WorkdirLockedError(f'Could not take the lock {self.path}: other runs keep taking it.')

  def release(self):
    if self._mine is None:
      return
    holder = self._read()
    if (
        holder
        and holder.get('pid') == self._mine['pid']
        and (holder.get('started') == self._mine['started'])
    ):
      os.remove(self.path)
    self._mine = None


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[WorkdirLock]:
  """Holds the workdir's lock for the duration of the block."""
  lock = WorkdirLock(workdir).acquire()
  try:
    yield lock
  finally:
    lock.release()


def repair_metrics(path: str) -> List[int]:
  """Makes metrics.jsonl parse again before a resumed run reads it; returns the bad line numbers.

  A last line without its newline (a process killed in the middle of a write) is dropped, as
  the step that wrote it is redone. Any other line that is not a JSON record with a `step` (a
  damaged file) is moved to `<path>.bad` (appended, with its line number), with a warning naming
  the file and the line; every valid record is kept, in order.
  """
  if not os.path.exists(path):
    return []
  with open(path, 'rb') as f:
    text = f.read()
  lines = text.split(b'\n')
  torn = lines.pop()  # b'' when the file ends with a newline
  kept: List[bytes] = []
  bad: List[int] = []
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
      ok = isinstance(record, dict) and isinstance(record.get('step'), int)
    except ValueError:
      ok = False
    if ok:
      kept.append(line)
    elif line.strip():
      bad.append(number)
      with open(path + '.bad', 'ab') as f:
        f.write(b'%s:%d: %s\n' % (os.path.basename(path).encode(), number, line))
  if not bad and not torn:
    return []
  if bad:
    logging.warning(
        '%s: line(s) %s are not valid JSON records; moved to %s, the %d valid '
        'record(s) are kept.',
        path,
        ', '.join(map(str, bad)),
        path + '.bad',
        len(kept),
    )
  with open(path + '.tmp', 'wb') as f:
    f.write(b''.join(line + b'\n' for line in kept))
  os.replace(path + '.tmp', path)
  return bad


# What a workdir holds, and whether each is a folder: anything else in its place is refused
# before the run starts (instead of an error deep inside Orbax, or a run that silently starts
# afresh because it cannot see its checkpoints).
_WORKDIR_ENTRIES = {
    'checkpoints': True,
    'checkpoints.damaged': True,
    'config.json': False,
    'metrics.jsonl': False,
    'summary.json': False,
    'dynamics.npz': False,
}


def check_workdir_files(workdir: str):
  """Raises NotADirectoryError / IsADirectoryError naming the path when the workdir, or one
  of the entries a run writes in it, exists with the wrong kind (a file for a folder, or the
  other way round)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(
        f'--workdir={workdir} is not a directory (a file is in its place): remove or rename '
        'it, or choose another --workdir.'
    )
  for name, folder in _WORKDIR_ENTRIES.items():
    path = os.path.join(workdir, name)
    if not os.path.lexists(path) or os.path.isdir(path) == folder:
      continue
    if folder:
      raise NotADirectoryError(
          f'{path} is not a directory: the run keeps its checkpoints there. Move that file '
          'away (if this run had checkpoints, put their folder back in its place) and run '
          'again.'
      )
    raise IsADirectoryError(
        f'{path} is a directory, where the run writes a file: move it away and run again.'
    )


def set_aside_previous_records(folder: str, stamp: str) -> List[str]:
  """Before a run starts from step 0 (no checkpoint to resume from): the records of an earlier
  run in `folder` (a metrics.jsonl with anything in it, summary.json, dynamics.npz and
  dynamics_steps.f32) are moved to `<name>.old-<stamp>`, with a warning, so that nothing
  recorded is truncated and no stale summary.json marks the new run finished. Returns the new
  paths (none in a fresh folder)."""
  metrics = os.path.join(folder, 'metrics.jsonl')
  has_records = os.path.isfile(metrics) and os.path.getsize(metrics) > 0
  if not has_records and not os.path.exists(os.path.join(folder, 'summary.json')):
    return []
  moved = []
  for name in ('metrics.jsonl', 'summary.json', 'dynamics.npz', 'dynamics_steps.f32'):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      aside, n = f'{path}.old-{stamp}', 1
      while os.path.exists(aside):
        n += 1
        aside = f'{path}.old-{stamp}-{n}'
      os.replace(path, aside)
      moved.append(aside)
  logging.warning(
      'No checkpoint to resume from, but %s holds the records of an earlier run: moved to %s '
      '(not deleted); training starts from step 0.',
      folder,
      ', '.join(moved),
  )
  return moved


# ----------------------------------------------------------------------------------------------
# The workdir of a new or resumed run


def save_config(config, workdir: str):
  # Written to a temporary file and renamed: other processes may be reading it (see
  # prepare_workdir), and a half-written file would look like a different config.
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


def prepare_workdir(config, workdir: str, overwrite: bool):
  """Makes sure `workdir` can hold this run: new, or a run of this very config (resumed).

  A workdir whose config.json differs is refused, naming the differing fields, unless
  `overwrite`: then the old run is moved (not deleted) to `<workdir>.old-<timestamp>`. With an
  identical config, `overwrite` changes nothing and the run resumes, so a job restarted with
  the same command line never throws away its progress.
  """
  check_workdir_files(workdir)
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
      differences = common.config_differences(saved, new)
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
