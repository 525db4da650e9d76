"""Reliability at scale: a killed or preempted run resumes exactly, divergence stops before anything
diverged is saved, damaged checkpoints are stepped over without deleting them, a workdir of
another run is never silently reused, bad input is named, and two processes train like one.

Runs that must be interrupted are `train.py` subprocesses (as a user starts them); the runs they
are compared with, and the resumptions, run in this process (same machine, same XLA build, same
device count), so "equal" below means bitwise equal. All of them share JAX's persistent
compilation cache (a fresh folder for this module): compiling, not training, is what takes the
time here, and a cached executable is the very program the first run compiled.
"""

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
from training import checkpoint, loop

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


_CACHE_OPTIONS = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
_CACHE_ENV = {}  # for the subprocesses, filled by the fixture below


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('jax_cache'))
  saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  compilation_cache.reset_cache()  # JAX decides once per process whether to use the cache
  _CACHE_ENV.update(JAX_COMPILATION_CACHE_DIR=folder,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
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
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(env or os.environ, **_CACHE_ENV),
                            stdout=log, stderr=subprocess.STDOUT)


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
      pytest.fail(f'train.py exited ({proc.returncode}) before checkpoint {step}:\n'
                  f'{_tail(log_path)}')
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
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          reader.metadata(path).item_metadata)
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
  with np.load(os.path.join(ref_dir, 'dynamics.npz')) as a, \
       np.load(os.path.join(workdir, 'dynamics.npz')) as b:
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
  match = re.search(r'Preempted \(SIGTERM\) at step (\d+)/(\d+): checkpoint saved',
                    _tail(log, 10**6))
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
  match = re.match(r'(train/loss = \S+|train/grad_norm = \S+|NaN/Inf in \S+) .*at step (\d+): '
                   r'training diverged', message)
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
# 4. Damaged checkpoints


def _damage(step_dir, how):
  """Damages every file of a checkpoint step the way a full disk or a bad copy would."""
  for folder, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(folder, name)
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


def _snapshot(folder):
  return {os.path.relpath(os.path.join(d, n), folder): os.path.getsize(os.path.join(d, n))
          for d, _, files in os.walk(folder) for n in files}


def test_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_resumes(
    reference, tmp_path, caplog):
  workdir = _copy_run(reference, tmp_path / 'run')
  bad_dir = os.path.join(workdir, 'checkpoints', '24')
  _damage(bad_dir, 'truncate')
  damaged_files = _snapshot(bad_dir)

  result = loop.train_and_evaluate(_config(), workdir)

  # Stepped back to 16, trained 16 -> 24 again: the same run as the reference.
  assert result['finished']
  _assert_same_run(*reference, workdir, result['state'])
  assert 'checkpoints/24 cannot be read' in caplog.text
  # The damaged step was moved, not deleted, and is byte for byte what it was.
  aside = os.listdir(os.path.join(workdir, checkpoint.DAMAGED_DIR))
  assert len(aside) == 1 and aside[0].startswith('24-')
  assert _snapshot(os.path.join(workdir, checkpoint.DAMAGED_DIR, aside[0])) == damaged_files
  assert 'moved, not deleted' in caplog.text and aside[0] in caplog.text


def test_no_readable_checkpoint_stops_with_a_clear_error(reference, tmp_path):
  workdir = _copy_run(reference, tmp_path / 'run')
  for step, how in zip((8, 16, 24), ('flip', 'empty', 'truncate')):
    _damage(os.path.join(workdir, 'checkpoints', str(step)), how)
  before = _snapshot(workdir)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'None of the checkpoints .* can be read') as info:
    loop.train_and_evaluate(_config(), workdir)
  for step in (8, 16, 24):
    assert os.path.join(workdir, 'checkpoints', str(step)) in str(info.value)
  assert _snapshot(workdir) == before  # nothing moved, deleted or written


# ----------------------------------------------------------------------------------------------
# 5. Workdir safety


def test_workdir_of_another_config_is_refused_or_moved_aside(reference, tmp_path, caplog):
  workdir = _copy_run(reference, tmp_path / 'run')
  before = _snapshot(workdir)
  config = _config()
  config.learning_rate = 0.02
  config.num_train_steps = 2
  config.dynamics.enabled = False
  with pytest.raises(ValueError, match='different config') as info:
    loop.train_and_evaluate(config, workdir)
  for field in (f'learning_rate: {_config().learning_rate!r} -> 0.02',
                f'num_train_steps: {TOTAL} -> 2', 'dynamics.enabled: True -> False',
                '--overwrite'):
    assert field in str(info.value)
  assert _snapshot(workdir) == before

  result = loop.train_and_evaluate(config, workdir, overwrite=True)

  assert result['finished'] and result['final_step'] == 2
  moved = [p for p in os.listdir(tmp_path) if p.startswith('run.old-')]
  assert len(moved) == 1 and moved[0] in caplog.text
  assert _snapshot(tmp_path / moved[0]) == before  # the old run, whole
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['learning_rate'] == 0.02


# ----------------------------------------------------------------------------------------------
# 6. Bad input that only shows once the data is there (the config-only checks are the table in
#    test_train.py; data.load's own messages are unit-tested in test_data.py)


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


BAD_DATA = {  # case: (make the folder, error, what the message must name)
    'missing folder': (_missing, FileNotFoundError, r'images-nowhere'),
    'empty class': (_empty_class, ValueError, r'empty_cls'),
    'unreadable image': (_unreadable_image, ValueError, r'broken\.png'),
    'no split folders': (_no_split_folders, ValueError, r'images.*train'),
    'wrong image size': (_wrong_image_size, ValueError, r'9\.png.*16x16'),
}


@pytest.mark.parametrize('case', sorted(BAD_DATA))
def test_bad_data_names_the_file_and_leaves_no_run_behind(case, tmp_path):
  make, error, pattern = BAD_DATA[case]
  config = tiny.get_config()
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
  pattern = (rf'dynamics\.probe_size={config.dynamics.probe_size} .*test split '
             rf'\({config.data.test_size} images\)')
  with pytest.raises(ValueError, match=pattern):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))


# ----------------------------------------------------------------------------------------------
# 7. Two processes x 2 CPU devices, started as on a cluster, train like one process x 4 devices,
#    and a SIGTERM to one of them makes both save the same step and stop.


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


MULTI = {'num_train_steps': 10, 'log_every_steps': 1, 'checkpoint_every_steps': 2,
         'dynamics.probe_mode': False}


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
  (code,) = _wait_all([(_start_train(single, str(tmp_path / 'single.log'), MULTI, (), env),
                        str(tmp_path / 'single.log'))])
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
  # it (about 3e-5 at step 3, 1e-3 after 4 steps), so only the first steps are compared, to
  # 1e-4: a batch split or reduced wrongly is off by percents from the first step.
  first = [[r['train/loss'] for r in records[w][:3]] for w in (multi, single)]
  np.testing.assert_allclose(first[0], first[1], rtol=1e-4)
  state = _read_checkpoint(multi, MULTI['num_train_steps'])
  assert int(state['step']) == MULTI['num_train_steps']
