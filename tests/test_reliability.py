"""Reliability at scale: a killed, preempted or interrupted run resumes exactly, divergence stops
before anything diverged is saved, damaged checkpoints (whatever the damage, bytes overwritten
included) are stepped over without deleting them, a workdir of another run or in use by another
run is never silently reused, a full disk stops the run with one message, every config field out
of range is named before anything is loaded, bad input is named, the command line reports user
errors in one message, and two processes train like one.

Most cases are rows of a table (DAMAGE, CONFIG_MISMATCH, BAD_FIELDS, BAD_DATA, CLI_ERRORS) and
each asserts the exit path, the key words of the message, and that no good checkpoint or record
was lost. docs/long_runs.md lists the cases with their outcomes.

Runs that must be interrupted are `train.py` subprocesses (as a user starts them); the runs they
are compared with, and the resumptions, run in this process (same machine, same XLA build, same
device count), so "equal" below means bitwise equal. All of them share JAX's persistent
compilation cache (a fresh folder for this module): compiling, not training, is what takes the
time here, and a cached executable is the very program the first run compiled.
"""

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.experimental.compilation_cache import compilation_cache
from PIL import Image

from configs import tiny
from training import checkpoint, loop, validate, workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One config for every run compared with the reference: 3 epochs of 8 steps, checkpoints at
# 8, 16, 24 (the epoch ends), records every 2 steps, so a killed run usually has records past
# its last checkpoint. Step and probe (epoch) dynamics are both on.
OVERRIDES = {'num_train_steps': 24, 'log_every_steps': 2, 'checkpoint_every_steps': 8}
TOTAL = OVERRIDES['num_train_steps']


def _config():
  config = tiny.get_config()
  config.update(OVERRIDES)
  return config


def _set(config, field, value):
  """config['a.b'] = value for a dotted field."""
  *parents, leaf = field.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


_CACHE_OPTIONS = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
_CACHE_ENV = {}  # for the subprocesses, filled by the fixture below


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('jax_cache'))
  saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  compilation_cache.reset_cache()  # JAX decides once per process whether to use the cache
  _CACHE_ENV.update(
      JAX_COMPILATION_CACHE_DIR=folder, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0'
  )
  yield
  _CACHE_ENV.clear()
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _start_train(workdir, log_path, overrides=None, extra_flags=(), env=None):
  """`python train.py` on the tiny config with `overrides` (default OVERRIDES); its output goes
  to log_path (a file, not a pipe, which a chatty child could fill and then block on)."""
  overrides = OVERRIDES if overrides is None else overrides
  cmd = [sys.executable, 'train.py', '--config=configs/tiny.py', f'--workdir={workdir}']
  cmd += [f'--config.{k}={v}' for k, v in overrides.items()] + list(extra_flags)
  with open(log_path, 'w') as log:
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=dict(env or os.environ, **_CACHE_ENV),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _tail(path, n=3000):
  with open(path) as f:
    return f.read()[-n:]


def _committed_steps(workdir):
  """Finished checkpoints (Orbax renames `<step>.orbax-checkpoint-tmp` to `<step>` at commit)."""
  folder = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def _wait_for_checkpoint(workdir, proc, log_path, step, timeout=400):
  deadline = time.time() + timeout
  while not any(s >= step for s in _committed_steps(workdir)):
    if proc.poll() is not None:
      pytest.fail(
          f'train.py exited ({proc.returncode}) before checkpoint {step}:\n' f'{_tail(log_path)}'
      )
    if time.time() > deadline:
      proc.kill()
      pytest.fail(f'no checkpoint {step} after {timeout} s:\n{_tail(log_path)}')
    time.sleep(0.05)


def _records(workdir):
  """metrics.jsonl without the wall-clock speed, the one value that may differ between runs."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  for r in records:
    r.pop('train/steps_per_sec', None)
  return records


def _read_checkpoint(workdir, step):
  """The raw state dict of checkpoint `step`, on this process's first device, whatever the
  topology that wrote it."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as reader:
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        reader.metadata(path).item_metadata,
    )
    return jax.device_get(reader.restore(path, target))


def _assert_same_run(ref_dir, ref_state, workdir, state):
  """Bitwise: final state (NaN-padded dynamics buffers included), every metrics record, and
  every series of dynamics.npz."""
  for part in ('params', 'batch_stats', 'opt_state', 'dynamics', 'step', 'rng'):
    a, b = jax.device_get(getattr(ref_state, part)), jax.device_get(getattr(state, part))
    assert jax.tree.structure(a) == jax.tree.structure(b), part
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y, err_msg=part)
  np.testing.assert_equal(_records(workdir), _records(ref_dir))  # NaN == NaN here
  with (
      np.load(os.path.join(ref_dir, 'dynamics.npz')) as a,
      np.load(os.path.join(workdir, 'dynamics.npz')) as b,
  ):
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run every interrupted one must reproduce."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  result = loop.train_and_evaluate(_config(), workdir)
  assert result['finished'] and _committed_steps(workdir) == [8, 16, 24]
  return workdir, result['state']


def _copy_run(reference, dest):
  shutil.copytree(reference[0], dest)
  return str(dest)


# ----------------------------------------------------------------------------------------------
# 1. SIGKILL, 2. SIGTERM


def test_sigkill_mid_run_then_resume_is_exact(reference, tmp_path):
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'train.log')
  proc = _start_train(workdir, log)
  _wait_for_checkpoint(workdir, proc, log, step=8)
  proc.kill()  # SIGKILL: no handler runs, an async save may be cut short
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, 'summary.json')), 'killed too late'
  survived = _committed_steps(workdir)
  assert survived and survived[-1] < TOTAL
  # What a kill in the middle of a write leaves, made certain here: a last metrics line without
  # its newline, and the next checkpoint half written in Orbax's temporary folder.
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 13, "train/lo')
  partial = os.path.join(workdir, 'checkpoints', f'{survived[-1] + 8}.orbax-checkpoint-tmp')
  os.makedirs(partial, exist_ok=True)
  with open(os.path.join(partial, 'half_written'), 'wb') as f:
    f.write(b'\0' * 100)

  result = loop.train_and_evaluate(_config(), workdir)  # same workdir, same config

  assert result['finished'] and result['final_step'] == TOTAL
  _assert_same_run(*reference, workdir, result['state'])
  assert not os.path.exists(partial)  # replaced by the complete save of that step


def test_killed_after_its_last_checkpoint_a_restart_completes_the_run(reference, tmp_path):
  workdir = _copy_run(reference, tmp_path / 'run')
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  for name in ('summary.json', 'dynamics.npz'):  # written after the final checkpoint
    os.remove(os.path.join(workdir, name))

  result = loop.train_and_evaluate(_config(), workdir)

  _assert_same_run(*reference, workdir, result['state'])
  with open(os.path.join(workdir, 'summary.json')) as f:
    again = json.load(f)
  for key in ('final_step', 'finished', 'eval_accuracy', 'eval_loss'):
    assert again[key] == summary[key], key


def test_sigterm_saves_at_the_current_step_and_resumes_exactly(reference, tmp_path):
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'train.log')
  proc = _start_train(workdir, log)
  _wait_for_checkpoint(workdir, proc, log, step=8)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 143, _tail(log)  # 128 + SIGTERM: "not finished"
  match = re.search(
      r'Preempted \(SIGTERM\) at step (\d+)/(\d+): checkpoint saved', _tail(log, 10**6)
  )
  assert match, _tail(log)
  stopped = int(match.group(1))
  assert 8 <= stopped < TOTAL and int(match.group(2)) == TOTAL
  assert _committed_steps(workdir)[-1] == stopped  # saved at the step it stopped, committed

  result = loop.train_and_evaluate(_config(), workdir)

  assert result['finished'] and not result['preempted']
  _assert_same_run(*reference, workdir, result['state'])


# ----------------------------------------------------------------------------------------------
# 3. Divergence


def test_divergence_stops_naming_step_and_quantity_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny.get_config()
  config.learning_rate = 1e4
  config.num_train_steps = 8
  config.checkpoint_every_steps = 1  # a save is attempted after every step ...
  config.log_every_steps = 100  # ... and only the guard before each save looks at the numbers
  config.dynamics.enabled = False
  workdir = str(tmp_path / 'run')
  with pytest.raises(FloatingPointError) as info:
    loop.train_and_evaluate(config, workdir)
  message = str(info.value)
  match = re.match(
      r'(train/loss = \S+|train/grad_norm = \S+|NaN/Inf in \S+) .*at step (\d+): '
      r'training diverged',
      message,
  )
  assert match, message
  bad_step = int(match.group(2))
  assert 1 < bad_step <= config.num_train_steps

  # Every step before the bad one was saved (the last `keep_checkpoints` are kept), none after,
  # and the newest one, committed although the run stopped with an error, is finite.
  steps = _committed_steps(workdir)
  assert steps == list(range(max(1, bad_step - config.keep_checkpoints), bad_step))
  assert f'last good checkpoint (step {bad_step - 1})' in message
  for step in steps:
    state = _read_checkpoint(workdir, step)
    assert int(state['step']) == step
    for part in ('params', 'batch_stats', 'opt_state'):
      assert all(np.isfinite(x).all() for x in jax.tree.leaves(state[part])), (step, part)


# ----------------------------------------------------------------------------------------------
# 4. Damaged checkpoints: each row damages the newest step (24) of a copy of the reference run;
#    the run must notice, move that step aside untouched, resume from 16 and end as the
#    reference did.


def _step_files(step_dir):
  return [os.path.join(d, n) for d, _, files in os.walk(step_dir) for n in files]


def _damage(step_dir, how, spare=()):
  """Damages every file of a checkpoint step (but those named in `spare`) the way a full disk
  or a bad copy would."""
  for path in _step_files(step_dir):
    if os.path.basename(path) in spare:
      continue
    size = os.path.getsize(path)
    if how == 'truncate':
      os.truncate(path, size // 2)
    elif how == 'empty':
      os.truncate(path, 0)
    elif how == 'flip' and size > 64:  # corrupt bytes in place, sizes unchanged
      with open(path, 'r+b') as f:
        f.seek(size // 2)
        chunk = f.read(16)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def _overwrite_largest(step_dir):
  """2,000 random bytes over the middle of the largest array-data file, its size unchanged:
  what defect 1 of issue 12 restored silently, with optimiser values of order 1e38."""
  data_files = [p for p in _step_files(step_dir) if os.sep + 'd' + os.sep in p]
  path = max(data_files, key=os.path.getsize)
  size = os.path.getsize(path)
  assert size > 4000, (path, size)
  with open(path, 'r+b') as f:
    f.seek(size // 2 - 1000)
    f.write(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
  assert os.path.getsize(path) == size


def _remove_default(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'default'))


def _empty_default(step_dir):
  for name in os.listdir(os.path.join(step_dir, 'default')):
    path = os.path.join(step_dir, 'default', name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _garble_digests(step_dir):
  # '{\n "config": {' becomes '{"not json": {': still JSON, the config's key lost.
  with open(os.path.join(step_dir, checkpoint.DIGESTS_FILE), 'r+b') as f:
    f.write(b'{"not json')


DAMAGE = {  # case: (damage step 24, what the warning must say about it)
    'files truncated': (
        lambda d: _damage(d, 'truncate', spare=[checkpoint.DIGESTS_FILE]),
        r'has \d+ bytes, \d+ when it was saved',
    ),
    'bytes overwritten, size unchanged': (_overwrite_largest, r'bytes of default/.* changed'),
    'bytes flipped in every file': (
        lambda d: _damage(d, 'flip'),  # digests.json too
        r'digests\.json cannot be read',
    ),
    'bytes flipped in every data file': (
        lambda d: _damage(d, 'flip', spare=[checkpoint.DIGESTS_FILE]),
        r'bytes of .* changed',
    ),
    'default folder removed': (_remove_default, r'default/\S+ is missing'),
    'default folder emptied': (_empty_default, r'default/\S+ is missing'),
    'digests.json garbled': (_garble_digests, r'digests\.json itself was changed'),
}


def _snapshot(folder):
  return {
      os.path.relpath(os.path.join(d, n), folder): os.path.getsize(os.path.join(d, n))
      for d, _, files in os.walk(folder)
      for n in files
  }


def _contents(folder):
  out = {}
  for rel in _snapshot(folder):
    with open(os.path.join(folder, rel), 'rb') as f:
      out[rel] = f.read()
  return out


@pytest.mark.parametrize('case', sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(
    case, reference, tmp_path, caplog
):
  damage, says = DAMAGE[case]
  workdir = _copy_run(reference, tmp_path / 'run')
  bad_dir = os.path.join(workdir, 'checkpoints', '24')
  damage(bad_dir)
  damaged_files = _contents(bad_dir)

  result = loop.train_and_evaluate(_config(), workdir)

  # Stepped back to 16, trained 16 -> 24 again: the same run as the reference.
  assert result['finished']
  _assert_same_run(*reference, workdir, result['state'])
  assert re.search(r'checkpoints/24 is damaged \(.*' + says, caplog.text), caplog.text[-3000:]
  assert '<bound method' not in caplog.text
  # The damaged step was moved, not deleted, and is byte for byte what it was.
  aside = os.listdir(os.path.join(workdir, checkpoint.DAMAGED_DIR))
  assert len(aside) == 1 and aside[0].startswith('24-')
  assert _contents(os.path.join(workdir, checkpoint.DAMAGED_DIR, aside[0])) == damaged_files
  assert 'moved, not deleted' in caplog.text and aside[0] in caplog.text
  # The step saved again in its place has its own digests, and they hold.
  assert checkpoint.verify_digests(bad_dir)[1] is None
  assert checkpoint.verify_digests(bad_dir)[0]['step'] == 24


def test_every_committed_step_has_digests_of_all_its_files(reference):
  for step in (8, 16, 24):
    folder = os.path.join(reference[0], 'checkpoints', str(step))
    record, problem = checkpoint.verify_digests(folder)
    assert problem is None and record['step'] == step
    assert record['config'] == json.loads(_config().to_json_best_effort(sort_keys=True))
    on_disk = {os.path.relpath(p, folder) for p in _step_files(folder)}
    # Orbax writes these two at the commit, after the digests: metadata, no array data.
    assert set(record['files']) == on_disk - {
        'digests.json',
        '_CHECKPOINT_METADATA',
        'commit_success.txt',
    }
    assert any(name.startswith('default/') for name in record['files'])


def test_a_step_without_digests_older_format_is_restored_with_a_warning(
    reference, tmp_path, caplog
):
  workdir = _copy_run(reference, tmp_path / 'run')
  for name in ('summary.json', 'dynamics.npz'):  # the run died after its final checkpoint
    os.remove(os.path.join(workdir, name))
  os.remove(os.path.join(workdir, 'checkpoints', '24', checkpoint.DIGESTS_FILE))
  # Unverified: refused unless asked for (issue 26; tests/test_reliability_second_pass.py).
  with pytest.raises(checkpoint.CheckpointError, match='allow_unverified_checkpoint'):
    loop.train_and_evaluate(_config(), workdir)
  result = loop.train_and_evaluate(_config(), workdir, allow_unverified=True)
  _assert_same_run(*reference, workdir, result['state'])
  assert 'checkpoints/24 has no digests.json' in caplog.text
  assert not os.path.exists(os.path.join(workdir, checkpoint.DAMAGED_DIR))


def test_no_readable_checkpoint_stops_with_a_clear_error(reference, tmp_path):
  workdir = _copy_run(reference, tmp_path / 'run')
  for step, how in zip((8, 16, 24), ('flip', 'empty', 'truncate')):
    _damage(os.path.join(workdir, 'checkpoints', str(step)), how)
  before = _snapshot(workdir)
  with pytest.raises(
      checkpoint.CheckpointError, match=r'None of the checkpoints .* can be read'
  ) as info:
    loop.train_and_evaluate(_config(), workdir)
  for step in (8, 16, 24):
    assert os.path.join(workdir, 'checkpoints', str(step)) in str(info.value)
  assert _snapshot(workdir) == before  # nothing moved, deleted or written


# ----------------------------------------------------------------------------------------------
# 5. Workdir safety: another run's config, another run's checkpoints, another run at work


def test_workdir_of_another_config_is_refused_or_moved_aside(reference, tmp_path, caplog):
  workdir = _copy_run(reference, tmp_path / 'run')
  before = _snapshot(workdir)
  config = _config()
  config.learning_rate = 0.02
  config.num_train_steps = 2
  config.dynamics.enabled = False
  with pytest.raises(ValueError, match='different config') as info:
    loop.train_and_evaluate(config, workdir)
  for field in (
      f'learning_rate: {_config().learning_rate!r} -> 0.02',
      f'num_train_steps: {TOTAL} -> 2',
      'dynamics.enabled: True -> False',
      '--overwrite',
  ):
    assert field in str(info.value)
  assert _snapshot(workdir) == before

  result = loop.train_and_evaluate(config, workdir, overwrite=True)

  assert result['finished'] and result['final_step'] == 2
  moved = [p for p in os.listdir(tmp_path) if p.startswith('run.old-')]
  assert len(moved) == 1 and moved[0] in caplog.text
  assert _snapshot(tmp_path / moved[0]) == before  # the old run, whole
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['learning_rate'] == 0.02


CONFIG_MISMATCH = {  # case: (change to the config, the difference the message must name)
    'learning rate': ({'learning_rate': 0.02}, 'learning_rate: 0.05 -> 0.02'),
    'model width': ({'model_args.width': 8}, 'model_args.width: 0 -> 8'),  # a tree mismatch
}


@pytest.mark.parametrize('case', sorted(CONFIG_MISMATCH))
def test_checkpoints_of_another_config_without_config_json_are_refused(case, reference, tmp_path):
  changes, difference = CONFIG_MISMATCH[case]
  workdir = _copy_run(reference, tmp_path / 'run')
  os.remove(os.path.join(workdir, 'config.json'))  # only the checkpoints tell the config
  before = _contents(workdir)
  config = _config()
  for field, value in changes.items():
    _set(config, field, value)
  with pytest.raises(checkpoint.CheckpointConfigError, match='different config') as info:
    loop.train_and_evaluate(config, workdir)
  assert difference in str(info.value) and 'checkpoints/24' in str(info.value)
  assert _contents(workdir) == before  # nothing moved, written or deleted


def _dead_pid():
  proc = subprocess.Popen(['true'])
  proc.wait()
  return proc.pid


def test_workdir_in_use_is_refused_and_ctrl_c_saves_and_resumes_exactly(reference, tmp_path):
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'train.log')
  proc = _start_train(workdir, log)
  _wait_for_checkpoint(workdir, proc, log, step=8)
  # A second run on the same workdir stops at once, naming the first, and touches nothing.
  t0 = time.time()
  with pytest.raises(
      workdir_lib.WorkdirLockedError, match=rf'in use by process {proc.pid} on host'
  ):
    loop.train_and_evaluate(_config(), workdir)
  assert time.time() - t0 < 5
  assert os.path.exists(workdir_lib.lock_path(workdir))  # still the first run's

  proc.send_signal(signal.SIGINT)  # Ctrl-C
  assert proc.wait(timeout=300) == 130, _tail(log)  # 128 + SIGINT
  text = _tail(log, 10**6)
  match = re.search(
      r'Interrupted \(SIGINT\) at step (\d+)/(\d+): checkpoint saved.*Run the '
      r'same command again to resume from step (\d+)',
      text,
  )
  assert match and 'Traceback' not in text, _tail(log)
  stopped = int(match.group(1))
  assert 8 <= stopped < TOTAL and _committed_steps(workdir)[-1] == stopped
  assert not os.path.exists(workdir_lib.lock_path(workdir))  # released on the way out

  result = loop.train_and_evaluate(_config(), workdir)

  assert result['finished']
  _assert_same_run(*reference, workdir, result['state'])  # no record doubled, none lost


def test_stale_lock_is_taken_over_and_a_corrupt_metrics_line_is_moved_aside(
    reference, tmp_path, caplog
):
  workdir = _copy_run(reference, tmp_path / 'run')
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '24'))  # resumes from 16
  for name in ('summary.json', 'dynamics.npz'):
    os.remove(os.path.join(workdir, name))
  dead = _dead_pid()
  with open(workdir_lib.lock_path(workdir), 'w') as f:  # a run killed with SIGKILL left it
    json.dump({'pid': dead, 'host': socket.gethostname(), 'started': 'earlier'}, f)
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path) as f:
    lines = f.readlines()
  bad_line = 3  # a record of step <= 16: it is not written again
  assert json.loads(lines[bad_line - 1])['step'] < 16
  lines[bad_line - 1] = lines[bad_line - 1][:20] + '\0\0\0garbage\n'
  with open(path, 'w') as f:
    f.writelines(lines)

  result = loop.train_and_evaluate(_config(), workdir)

  assert result['finished']
  assert re.search(rf'stale lock .*process {dead} .*no longer running', caplog.text)
  assert re.search(
      rf'metrics\.jsonl: line\(s\) {bad_line} are not valid JSON records; moved '
      r'to .*metrics\.jsonl\.bad',
      caplog.text,
  ), caplog.text[-2000:]
  with open(path + '.bad') as f:
    assert f.read() == f'metrics.jsonl:{bad_line}: {lines[bad_line - 1]}'
  expected = _records(reference[0])
  del expected[bad_line - 1]  # the one record that was damaged; every other one is kept
  np.testing.assert_equal(_records(workdir), expected)
  assert not os.path.exists(workdir_lib.lock_path(workdir))


def test_lock_of_another_host_is_refused_naming_it(tmp_path):
  workdir = str(tmp_path / 'run')
  with open(workdir_lib.lock_path(workdir), 'w') as f:
    json.dump({'pid': 1234, 'host': 'node-17', 'started': 'earlier', 'command': 'train.py'}, f)
  with pytest.raises(
      workdir_lib.WorkdirLockedError, match=r"process 1234 on host 'node-17'.*delete .*run\.lock"
  ):
    workdir_lib.WorkdirLock(workdir).acquire()


# ----------------------------------------------------------------------------------------------
# 5b. A full disk: one message, the last good checkpoint intact


def _resumable_copy(reference, dest):
  """The reference run as if killed after checkpoint 16: it resumes there and saves 24."""
  workdir = _copy_run(reference, dest)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '24'))
  for name in ('summary.json', 'dynamics.npz'):
    os.remove(os.path.join(workdir, name))
  return workdir


def _assert_no_space_error(info, workdir):
  message = str(info.value)
  assert info.value.errno == errno.ENOSPC
  assert re.match(
      r'No space left on the disk of \S+/checkpoints: the checkpoint of step 24 ', message
  ), message
  assert 'The last good checkpoint (step 16) is intact' in message
  assert _committed_steps(workdir) == [8, 16]
  for step in (8, 16):
    assert checkpoint.verify_digests(os.path.join(workdir, 'checkpoints', str(step)))[1] is None
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]


def test_full_disk_stops_with_one_message_and_keeps_the_last_checkpoint(
    reference, tmp_path, monkeypatch
):
  workdir = _resumable_copy(reference, tmp_path / 'run')
  monkeypatch.setattr(checkpoint, 'free_bytes', lambda path: 100 * 2**10)
  with pytest.raises(checkpoint.NoSpaceError) as info:
    loop.train_and_evaluate(_config(), workdir)
  _assert_no_space_error(info, workdir)
  assert re.search(r'needs about 1\.\d MiB, 0\.1 MiB are free', str(info.value))


@pytest.mark.parametrize('when', ['checked before the save', 'the write itself fails'])
def test_full_disk_for_real(when, reference, tmp_path, monkeypatch):
  """On a tmpfs with room for less than one more checkpoint (needs permission to mount)."""
  mount = tmp_path / 'small'
  mount.mkdir()
  need = sum(_snapshot(os.path.join(reference[0], 'checkpoints', '16')).values())
  mounted = subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', f'size={8 * need}', 'tmpfs', str(mount)], capture_output=True
  )
  if mounted.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.decode().strip()}')
  try:
    workdir = _resumable_copy(reference, mount / 'run')
    # Shrunk to what the copy uses plus a third of a checkpoint (the records to come fit).
    used = shutil.disk_usage(mount).used
    subprocess.run(['mount', '-o', f'remount,size={used + need // 3}', str(mount)], check=True)
    assert shutil.disk_usage(mount).free < need
    if when == 'the write itself fails':  # let the save start, as if the estimate were wrong
      monkeypatch.setattr(checkpoint, 'free_bytes', lambda path: 2**40)
    with pytest.raises(checkpoint.NoSpaceError) as info:
      loop.train_and_evaluate(_config(), workdir)
    _assert_no_space_error(info, workdir)
  finally:
    subprocess.run(['umount', '-l', str(mount)], check=False)


# ----------------------------------------------------------------------------------------------
# 6. Values out of range (validate.FIELDS): refused before any data is loaded or anything is
#    compiled, naming the field, the value and the allowed range; nothing is left behind.

BAD_FIELDS = {  # field=value: what "allowed" must say
    'label_smoothing=2.0': r'a finite number in \[0, 1\)',
    'grad_clip_norm=-1.0': r'a finite number >= 0 \(0 disables clipping\)',
    'momentum=1.5': r'a finite number in \[0, 1\)',
    'warmup_epochs=-1.0': r'a finite number >= 0',
    'data.num_classes=1': r'an integer >= 2',
    'crop_padding=100': r'an integer in \[0, 31\]',  # the synthetic images are 32x32
    'crop_padding=-1': r'an integer in \[0, 31\]',
    'learning_rate=inf': r'a finite number > 0',
    'image_size=-1': r"an integer in \[0, 4096\] \(0 keeps the dataset's size\)",
    'model_args.width=-8': r"an integer >= 0 \(0 keeps the model's own\)",
    'seed=-1': r'an integer in \[0, 4294967295\]',
    "init_checkpoint='weights.npz'": r"'' for model 'resnet18_tiny', which has no "
    r'pretrained-weights loader \(models with one: vit\*\)',
    'dynamics.convergence_rho=1.0': r'a finite number in \(0, 1\)',
    'dynamics.every_steps=0': r'an integer >= 1',
}


@pytest.mark.parametrize('case', sorted(BAD_FIELDS))
def test_value_out_of_range_is_refused_before_loading_anything(case, tmp_path, monkeypatch):
  field, _, text = case.partition('=')
  value = eval(text, {'inf': float('inf')})  # pylint: disable=eval-used
  config = tiny.get_config()
  _set(config, field, value)

  def no_loading(*args, **kwargs):
    raise AssertionError('data were loaded before the config was checked')

  monkeypatch.setattr(loop.data_lib, 'load', no_loading)
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError) as info:
    loop.train_and_evaluate(config, workdir)
  expected = rf'{re.escape(field)}={re.escape(repr(value))} is not allowed; allowed: '
  assert re.match(expected + BAD_FIELDS[case], str(info.value)), str(info.value)
  assert not os.path.exists(workdir) and not os.path.exists(workdir_lib.lock_path(workdir))


def test_every_config_field_in_the_table_exists():
  config = tiny.get_config()
  for field, _, _ in validate.FIELDS:
    node = config
    for part in field.split('.'):
      node = node[part]
  for field, _, _ in validate.DYNAMICS_FIELDS:
    assert field in config.dynamics, field


# ----------------------------------------------------------------------------------------------
# 6b. Bad input that only shows once the data is there (data.load's own messages are
#     unit-tested in test_data.py)


def _image(path, size=8):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((size, size, 3), 100, np.uint8)).save(path)


def _folder(root):
  """A valid image folder: <split>/<class>/<image>, 2 classes x 2 images per split."""
  for split in ('train', 'test'):
    for cls in ('a', 'b'):
      for i in range(2):
        _image(os.path.join(root, split, cls, f'{i}.png'))
  return root


def _missing(root):
  return root + '-nowhere'


def _empty_class(root):
  os.makedirs(os.path.join(_folder(root), 'train', 'empty_cls'))
  return root


def _unreadable_image(root):
  with open(os.path.join(_folder(root), 'train', 'b', 'broken.png'), 'wb') as f:
    f.write(b'this is not a png')
  return root


def _no_split_folders(root):
  for cls in ('a', 'b'):  # <class>/<image> one level too high
    _image(os.path.join(root, cls, 'x', '0.png'))
  return root


def _wrong_image_size(root):
  _image(os.path.join(_folder(root), 'train', 'a', '9.png'), size=16)
  return root


def _one_class(root):
  for split in ('train', 'test'):
    _image(os.path.join(root, split, 'only', '0.png'))
  return root


BAD_DATA = {  # case: (make the folder, error, what the message must name, config changes)
    'missing folder': (_missing, FileNotFoundError, r'images-nowhere', {}),
    'empty class': (_empty_class, ValueError, r'empty_cls', {}),
    'unreadable image': (_unreadable_image, ValueError, r'broken\.png', {}),
    'no split folders': (_no_split_folders, ValueError, r'images.*train', {}),
    'wrong image size': (_wrong_image_size, ValueError, r'9\.png.*16x16', {}),
    'one class only': (_one_class, ValueError, r'1 class\(es\) \(only\); .* at least two', {}),
    'crop padding as wide as the images': (
        _folder,
        ValueError,
        r'crop_padding=8 is not allowed for 8x8 images; allowed: an ' r'integer in \[0, 7\]',
        {'crop_padding': 8},
    ),
}


@pytest.mark.parametrize('case', sorted(BAD_DATA))
def test_bad_data_names_the_file_and_leaves_no_run_behind(case, tmp_path):
  make, error, pattern, changes = BAD_DATA[case]
  config = tiny.get_config()
  config.update(changes)
  config.data.source = 'image_folder'
  config.data.path = make(str(tmp_path / 'images'))
  config.data.cache_dir = str(tmp_path / 'cache')
  workdir = tmp_path / 'run'
  with pytest.raises(error, match=pattern):
    loop.train_and_evaluate(config, str(workdir))
  # No config.json: the corrected run may use the same workdir without --overwrite.
  assert not (workdir / 'config.json').exists()


def test_probe_batch_larger_than_its_split(tmp_path):
  config = tiny.get_config()
  config.dynamics.probe_split = 'test'
  config.dynamics.probe_size = config.data.test_size + 32
  pattern = (
      rf'dynamics\.probe_size={config.dynamics.probe_size} .*test split '
      rf'\({config.data.test_size} images\)'
  )
  with pytest.raises(ValueError, match=pattern):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))


# ----------------------------------------------------------------------------------------------
# 6c. The command line: a user error is one message, its traceback in a log file (or shown with
#     --verbose), exit status 1. All cases start at once (their time is mostly imports).


def _cli_missing_config(tmp, reference):
  del reference
  return str(tmp / 'run'), ['--config=configs/nope.py']


def _cli_value(tmp, reference):
  del reference
  return str(tmp / 'run'), ['--config=configs/tiny.py', '--config.label_smoothing=2.0']


def _cli_in_use(tmp, reference):
  del reference
  workdir = str(tmp / 'run')
  with open(workdir_lib.lock_path(workdir), 'w') as f:  # held by this (live) test process
    json.dump({'pid': os.getpid(), 'host': socket.gethostname(), 'started': 'now'}, f)
  return workdir, ['--config=configs/tiny.py']


def _cli_no_readable_checkpoint(tmp, reference):
  workdir = _copy_run(reference, tmp / 'run')
  for step in (8, 16, 24):
    _damage(os.path.join(workdir, 'checkpoints', str(step)), 'truncate')
  return workdir, ['--config=configs/tiny.py'] + [f'--config.{k}={v}' for k, v in OVERRIDES.items()]


def _cli_missing_data(tmp, reference):
  del reference
  return str(tmp / 'run'), [
      '--config=configs/tiny.py',
      '--config.data.source=image_folder',
      f'--config.data.path={tmp}/nowhere',
  ]


CLI_ERRORS = {  # case: (set up, the message)
    'missing config file': (
        _cli_missing_config,
        r'--config=configs/nope\.py: there is no file ' r'\S+/configs/nope\.py',
    ),
    'value out of range': (
        _cli_value,
        r'label_smoothing=2\.0 is not allowed; allowed: a ' r'finite number in \[0, 1\)',
    ),
    'workdir in use': (_cli_in_use, rf'workdir \S+ is in use by process {os.getpid()} on host'),
    'no readable checkpoint': (
        _cli_no_readable_checkpoint,
        r'None of the checkpoints in \S+ can be read',
    ),
    'missing data': (_cli_missing_data, r"data\.path='\S+/nowhere' \(\S+\) does not exist"),
}


@pytest.fixture(scope='module')
def cli_runs(reference, tmp_path_factory):
  """{case: (exit status, output)} of train.py for every CLI_ERRORS case (and one --verbose)."""
  procs = {}
  for case, (setup, _) in sorted(CLI_ERRORS.items()) + [('verbose', (_cli_value, None))]:
    tmp = tmp_path_factory.mktemp('cli')
    workdir, flags = setup(tmp, reference)
    flags += ['--verbose'] if case == 'verbose' else []
    log = str(tmp / 'train.log')
    with open(log, 'w') as out:
      cmd = [sys.executable, 'train.py', f'--workdir={workdir}'] + flags
      procs[case] = (
          subprocess.Popen(
              cmd,
              cwd=ROOT,
              env=dict(os.environ, **_CACHE_ENV),
              stdout=out,
              stderr=subprocess.STDOUT,
          ),
          log,
      )
  results = {}
  for case, (proc, log) in procs.items():
    code = proc.wait(timeout=600)
    with open(log) as f:
      results[case] = (code, f.read())
  return results


@pytest.mark.parametrize('case', sorted(CLI_ERRORS))
def test_command_line_user_error_is_one_message_without_traceback(case, cli_runs):
  code, output = cli_runs[case]
  assert code == 1, output[-3000:]
  assert 'Traceback' not in output, output[-3000:]
  match = re.search(
      r'\nError: (.*)\n(\(traceback in (\S+); --verbose prints it here\)\n)?$', output
  )
  assert match, output[-3000:]
  assert re.search(CLI_ERRORS[case][1], match.group(1)), match.group(1)
  if case != 'missing config file':  # raised nothing, so there is no traceback to keep
    with open(match.group(3)) as f:
      assert 'Traceback (most recent call last)' in f.read()


def test_command_line_verbose_shows_the_traceback(cli_runs):
  code, output = cli_runs['verbose']
  assert code == 1 and 'Traceback (most recent call last)' in output
  assert re.search(r'\nError: label_smoothing=2\.0 is not allowed', output)


# ----------------------------------------------------------------------------------------------
# 7. Two processes x 2 CPU devices, started as on a cluster, train like one process x 4 devices,
#    and a SIGTERM to one of them makes both save the same step and stop.


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


MULTI = {
    'num_train_steps': 10,
    'log_every_steps': 1,
    'checkpoint_every_steps': 2,
    'dynamics.probe_mode': False,
}


def _run_pair(workdir, tmp_path, tag):
  """train.py as processes 0 and 1 of a job on 127.0.0.1, two CPU devices each."""
  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = []
  for rank in (0, 1):
    log = str(tmp_path / f'{tag}{rank}.log')
    flags = [f'--coordinator_address={address}', '--num_processes=2', f'--process_id={rank}']
    procs.append((_start_train(workdir, log, MULTI, flags, env), log))
  return procs


def _wait_all(procs, timeout=500):
  try:
    return [proc.wait(timeout=timeout) for proc, _ in procs]
  finally:
    for proc, _ in procs:
      if proc.poll() is None:
        proc.kill()


def test_two_processes_train_like_one_and_stop_together_on_sigterm(tmp_path):
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  # One after the other, not side by side: on 2 cores, 3 compiling processes could keep the
  # pair apart for longer than gloo waits for a peer to connect.
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=4')
  (code,) = _wait_all(
      [
          (
              _start_train(single, str(tmp_path / 'single.log'), MULTI, (), env),
              str(tmp_path / 'single.log'),
          )
      ]
  )
  assert code == 0, _tail(str(tmp_path / 'single.log'))

  pair = _run_pair(multi, tmp_path, 'first')
  _wait_for_checkpoint(multi, pair[0][0], pair[0][1], step=2)
  pair[1][0].send_signal(signal.SIGTERM)  # the notice reaches one process only
  codes = _wait_all(pair)
  logs = [_tail(log, 10**6) for _, log in pair]
  assert codes == [143, 143], logs[0][-3000:] + logs[1][-3000:]
  assert 'process 1 of 2, 2 local device(s), 4 in all' in logs[1]
  stops = [int(re.search(r'Preempted \(SIGTERM\) at step (\d+)/', log).group(1)) for log in logs]
  assert stops[0] == stops[1] < MULTI['num_train_steps']
  assert _committed_steps(multi)[-1] == stops[0]  # written by both, together

  codes = _wait_all(_run_pair(multi, tmp_path, 'again'))
  assert codes == [0, 0], _tail(str(tmp_path / 'again0.log'))

  records = {w: [r for r in _records(w) if 'train/loss' in r] for w in (single, multi)}
  assert [r['step'] for r in records[multi]] == list(range(1, MULTI['num_train_steps'] + 1))
  # The same global batches and the same collectives, summed in another order across
  # processes: equal to float rounding at first, then drifting apart as training amplifies
  # it (with jax 0.10: 2e-4 at step 2, 1.6e-3 at step 3), so the first step is compared to
  # 1e-5 and the next two to 5e-3: a batch split or reduced wrongly is off by percents from
  # the first step.
  first = [[r['train/loss'] for r in records[w][:3]] for w in (multi, single)]
  np.testing.assert_allclose(first[0][0], first[1][0], rtol=1e-5)
  np.testing.assert_allclose(first[0], first[1], rtol=5e-3)
  state = _read_checkpoint(multi, MULTI['num_train_steps'])
  assert int(state['step']) == MULTI['num_train_steps']
