"""Reliability, second pass (issue 26): a lock that symlinks cannot fool, verification that
cannot be switched off by deleting digests.json, records that a restart never truncates, an
atomic summary.json, a failed background save that stops the run at once, meaningless config
values named, and analyze.py on killed or damaged workdirs.

Runs are tiny (the tiny config, a handful of steps) and share one compilation cache.
"""

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from configs import tiny
from training import (
    checkpoint,
    fit as fit_lib,
    loop,
    programs,
    restore,
    workdir as workdir_lib,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 2 epochs of 4 steps, a checkpoint at each epoch end (4, 8), records every 2 steps.
OVERRIDES = {
    'num_train_steps': 8,
    'log_every_steps': 2,
    'checkpoint_every_steps': 4,
    'data.train_size': 128,
    'data.test_size': 64,
}
TOTAL = OVERRIDES['num_train_steps']


def _set(config, field, value):
  *parents, leaf = field.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def _config(**changes):
  config = tiny.get_config()
  for field, value in {**OVERRIDES, **changes}.items():
    _set(config, field, value)
  return config


_CACHE_OPTIONS = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
_CACHE_ENV = {}


@pytest.fixture(scope='module', autouse=True)
def _compilation_cache(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('jax_cache'))
  saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  compilation_cache.reset_cache()
  _CACHE_ENV.update(
      JAX_COMPILATION_CACHE_DIR=folder, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0'
  )
  yield
  _CACHE_ENV.clear()
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished run of _config(): checkpoints 4 and 8, metrics, dynamics.npz, summary.json."""
  workdir = str(tmp_path_factory.mktemp('finished') / 'run')
  result = loop.train_and_evaluate(_config(), workdir)
  assert result['finished'] and sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == [
      '4',
      '8',
  ]
  return workdir


def _copy(finished, dest):
  shutil.copytree(finished, dest)
  return str(dest)


def _lines(path):
  with open(path, 'rb') as f:
    return f.read().splitlines()


def _truncate(path, keep=0.5):
  os.truncate(path, int(os.path.getsize(path) * keep))


# ----------------------------------------------------------------------------------------------
# 1. A symlink does not defeat the lock


def test_lock_is_keyed_on_the_resolved_path(tmp_path):
  real = tmp_path / 'R'
  real.mkdir()
  link = tmp_path / 'A'
  link.symlink_to(real)
  assert workdir_lib.lock_path(str(link)) == workdir_lib.lock_path(str(real))
  assert workdir_lib.lock_path(str(real) + '/') == workdir_lib.lock_path(str(real))
  held = workdir_lib.WorkdirLock(str(real)).acquire()
  try:
    with pytest.raises(workdir_lib.WorkdirLockedError, match=rf'in use by process {os.getpid()}'):
      workdir_lib.WorkdirLock(str(link)).acquire()
  finally:
    held.release()


@pytest.mark.parametrize(
    'content', ['[1, 2]', 'null', '{"host": "h"}', '{"pid": "abc", "host": "h"}', '7']
)
def test_a_malformed_lock_file_is_named_and_taken_over(content, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  with open(workdir_lib.lock_path(workdir), 'w') as f:
    f.write(content)
  lock = workdir_lib.WorkdirLock(workdir).acquire()
  try:
    assert re.search(r'Took over the stale lock \S+run\.lock of a malformed lock file', caplog.text)
    with open(workdir_lib.lock_path(workdir)) as f:
      assert json.load(f)['pid'] == os.getpid()
  finally:
    lock.release()


@pytest.mark.parametrize('workdir', ['', '  '])
def test_an_empty_workdir_is_refused(workdir):
  with pytest.raises(ValueError, match='--workdir is empty'):
    workdir_lib.WorkdirLock(workdir)


def test_workdir_entries_of_the_wrong_kind_are_named(tmp_path):
  afile = tmp_path / 'afile'
  afile.write_text('x')
  with pytest.raises(NotADirectoryError, match=r'--workdir=\S+afile is not a directory'):
    workdir_lib.check_workdir_files(str(afile))
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'checkpoints.damaged').write_text('x')
  with pytest.raises(NotADirectoryError, match=r'run/checkpoints\.damaged is not a directory'):
    workdir_lib.check_workdir_files(str(tmp_path / 'run'))
  (tmp_path / 'run' / 'checkpoints.damaged').unlink()
  (tmp_path / 'run' / 'metrics.jsonl').mkdir()
  with pytest.raises(IsADirectoryError, match=r'run/metrics\.jsonl is a directory'):
    workdir_lib.check_workdir_files(str(tmp_path / 'run'))


# ----------------------------------------------------------------------------------------------
# 2. A step without digests.json is not restored unless asked for, and the config is checked


def _overwrite_largest(step_dir):
  files = [os.path.join(d, n) for d, _, names in os.walk(step_dir) for n in names]
  path = max((p for p in files if os.sep + 'd' + os.sep in p), key=os.path.getsize)
  size = os.path.getsize(path)
  with open(path, 'r+b') as f:
    f.seek(size // 2 - 1000)
    f.write(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())


def _without_digests(finished, tmp_path, damage=False):
  workdir = _copy(finished, tmp_path / 'run')
  for name in ('summary.json', 'dynamics.npz'):  # killed after its final checkpoint
    os.remove(os.path.join(workdir, name))
  step_dir = os.path.join(workdir, 'checkpoints', str(TOTAL))
  os.remove(os.path.join(step_dir, checkpoint.DIGESTS_FILE))
  if damage:
    _overwrite_largest(step_dir)
  return workdir


def test_a_step_without_digests_is_refused_unless_asked_for(finished, tmp_path):
  workdir = _without_digests(finished, tmp_path, damage=True)
  with pytest.raises(checkpoint.CheckpointError) as info:
    loop.train_and_evaluate(_config(), workdir)
  message = str(info.value)
  assert f'checkpoints/{TOTAL} has no digests.json' in message
  assert '--allow_unverified_checkpoint' in message
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  assert not os.path.exists(os.path.join(workdir, checkpoint.DAMAGED_DIR))


def test_an_unverified_step_asked_for_is_restored_with_its_config_checked(finished, tmp_path):
  workdir = _without_digests(finished, tmp_path)
  os.remove(os.path.join(workdir, 'config.json'))  # nothing left to tell its config
  with pytest.raises(checkpoint.CheckpointError, match='no config.json'):
    loop.train_and_evaluate(_config(learning_rate=0.02), workdir, allow_unverified=True)
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))

  shutil.copy(os.path.join(finished, 'config.json'), os.path.join(workdir, 'config.json'))
  result = loop.train_and_evaluate(_config(), workdir, allow_unverified=True)
  assert result['finished'] and result['final_step'] == TOTAL


def test_digests_without_a_config_are_not_trusted_for_the_config(finished, tmp_path):
  workdir = _copy(finished, tmp_path / 'run')
  for name in ('summary.json', 'dynamics.npz', 'config.json'):
    os.remove(os.path.join(workdir, name))
  step_dir = os.path.join(workdir, 'checkpoints', str(TOTAL))
  # Re-signed without a config: the bytes verify, only the binding to the config is missing.
  os.remove(os.path.join(step_dir, checkpoint.DIGESTS_FILE))
  checkpoint.write_digests(step_dir, TOTAL, None)
  with pytest.raises(checkpoint.CheckpointError, match='config'):
    loop.train_and_evaluate(_config(learning_rate=0.02), workdir)


# ----------------------------------------------------------------------------------------------
# 3. A restart never truncates records it cannot redo


def test_checkpoints_replaced_by_a_file_is_refused_and_nothing_truncated(finished, tmp_path):
  workdir = _copy(finished, tmp_path / 'run')
  before = _lines(os.path.join(workdir, 'metrics.jsonl'))
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  with open(os.path.join(workdir, 'checkpoints'), 'w') as f:
    f.write('not a folder')
  with pytest.raises(NotADirectoryError, match=r'checkpoints is not a directory'):
    loop.train_and_evaluate(_config(), workdir)
  assert _lines(os.path.join(workdir, 'metrics.jsonl')) == before


def test_lost_checkpoints_move_the_old_records_aside(finished, tmp_path):
  workdir = _copy(finished, tmp_path / 'run')
  metrics = os.path.join(workdir, 'metrics.jsonl')
  before = _lines(metrics)
  with open(os.path.join(workdir, 'summary.json'), 'rb') as f:
    summary = f.read()
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))

  result = loop.train_and_evaluate(_config(), workdir)

  assert result['finished']
  aside = [n for n in os.listdir(workdir) if n.startswith('metrics.jsonl.old-')]
  assert len(aside) == 1 and _lines(os.path.join(workdir, aside[0])) == before
  aside = [n for n in os.listdir(workdir) if n.startswith('summary.json.old-')]
  assert len(aside) == 1
  with open(os.path.join(workdir, aside[0]), 'rb') as f:
    assert f.read() == summary
  assert len(_lines(metrics)) == len(before)  # the run again from step 0, each record once


# ----------------------------------------------------------------------------------------------
# 4. summary.json is written atomically


def test_summary_json_is_never_left_half_written(finished, tmp_path, monkeypatch):
  workdir = _copy(finished, tmp_path / 'run')
  for name in ('summary.json', 'dynamics.npz'):
    os.remove(os.path.join(workdir, name))
  real_dump, real_dumps = json.dump, json.dumps

  def crash_in_summary(obj, *args, **kwargs):
    if isinstance(obj, dict) and 'finished' in obj:
      raise OSError('disk gone while writing the summary')
    return real_dumps(obj, *args, **kwargs)

  def dump(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and 'finished' in obj:
      f.write(real_dumps(obj, *args, **kwargs)[:20])
      raise OSError('disk gone while writing the summary')
    return real_dump(obj, f, *args, **kwargs)

  monkeypatch.setattr(json, 'dump', dump)
  monkeypatch.setattr(json, 'dumps', crash_in_summary)
  with pytest.raises(OSError, match='disk gone'):
    loop.train_and_evaluate(_config(), workdir)
  monkeypatch.undo()
  path = os.path.join(workdir, 'summary.json')
  assert not os.path.exists(path), open(path).read()


def test_a_truncated_summary_json_of_a_finished_run_is_written_again(finished, tmp_path):
  workdir = _copy(finished, tmp_path / 'run')
  path = os.path.join(workdir, 'summary.json')
  with open(path) as f:
    summary = json.load(f)
  _truncate(path)  # what the earlier, in-place write left when cut short
  result = loop.train_and_evaluate(_config(), workdir)
  assert result['finished']
  with open(path) as f:
    again = json.load(f)
  for key in ('final_step', 'finished', 'eval_accuracy', 'eval_loss'):
    assert again[key] == summary[key], key
  assert [n for n in os.listdir(workdir) if n.startswith('summary.json.damaged-')]


# ----------------------------------------------------------------------------------------------
# 6. A failed background save stops the run at once, with one message, and the process exits

_FAILING_SAVE = """
import runpy, sys, time
from training import checkpoint

def boom(folder, *args, **kwargs):
  raise PermissionError(13, 'Permission denied', folder)

checkpoint.write_digests = boom  # Orbax's background commit callback fails

# Tiny's steps take milliseconds: on a fast machine all eight steps after the failed save could
# run before the background thread has even failed. A step of 0.25 s (the check is where the
# loop spends it) gives the failure 2 s to surface, so "stopped before step 16" tests the
# loop's per-step check, not the machine's speed.
_check = checkpoint.Manager.check_saves
def slow_check(self):
  time.sleep(0.25)
  return _check(self)
checkpoint.Manager.check_saves = slow_check
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""


def test_a_failed_background_save_stops_at_once_and_the_process_exits(tmp_path):
  workdir, log = str(tmp_path / 'run'), str(tmp_path / 'train.log')
  # Tiny's own 16 steps, a checkpoint at 8 (it fails) and the next one only at 16.
  cmd = [sys.executable, '-c', _FAILING_SAVE, '--config=configs/tiny.py', f'--workdir={workdir}']
  with open(log, 'w') as out:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=dict(os.environ, **_CACHE_ENV), stdout=out, stderr=subprocess.STDOUT
    )
    try:
      code = proc.wait(timeout=400)
    except subprocess.TimeoutExpired:
      proc.kill()
      pytest.fail('train.py hung after a failed save:\n' + open(log).read()[-3000:])
  output = open(log).read()
  assert code == 1, output[-3000:]
  errors = re.findall(r'\nError: (.*)', output)
  assert len(errors) == 1 and 'Traceback' not in output, output[-3000:]
  assert re.match(
      r'Saving the checkpoint of step 8 in \S+/checkpoints failed \(PermissionError: .*'
      r'Permission denied',
      errors[0],
  ), errors[0]
  steps = [json.loads(line)['step'] for line in _lines(os.path.join(workdir, 'metrics.jsonl'))]
  assert max(steps) < 16, steps  # stopped soon after step 8, not at the next save


# ----------------------------------------------------------------------------------------------
# 8. A full disk: one line with the path, the bytes needed and the bytes free


def test_a_full_disk_during_a_checkpoint_write_says_what_it_needs(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  def full(self, step, *args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  manager = checkpoint.Manager(str(tmp_path / 'checkpoints'), 2)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
  monkeypatch.setattr(checkpoint, 'free_bytes', lambda path: 2**20)
  with pytest.raises(checkpoint.NoSpaceError) as info:
    manager.save(16, args=None, needed_bytes=2**19)  # the estimate fits, the write fails
  assert re.search(
      r'checkpoint of step 16 needs more than estimated \(0\.5 MiB\) and did not fit: 1\.0 MiB are '
      r'free',
      str(info.value),
  )
  monkeypatch.undo()
  manager.close()


def test_a_full_disk_writing_records_or_config_names_the_path(tmp_path, monkeypatch):
  from training import writers  # pylint: disable=import-outside-toplevel

  jsonl = writers.JsonlWriter('/dev/full')  # every write: ENOSPC
  jsonl.write_scalars(1, {'train/loss': 1.0})
  with pytest.raises(OSError, match=r'No space left on the disk of /dev/full .* free\)') as info:
    jsonl.flush()
  assert info.value.errno == errno.ENOSPC

  def full(fd):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(os, 'fsync', full)
  path = str(tmp_path / 'config.json')
  with pytest.raises(OSError, match=rf'No space left on the disk of {re.escape(path)} '):
    writers.write_json(path, {'a': 1})
  monkeypatch.undo()
  assert os.listdir(tmp_path) == []  # neither the file nor its temporary one


# ----------------------------------------------------------------------------------------------
# 5a. A config-file argument that the file ignores (--config=file.py:arg)


def test_a_config_argument_the_file_ignores_is_refused(tmp_path):
  out = subprocess.run(
      [
          sys.executable,
          'train.py',
          '--config=configs/tiny.py:model=vgg16_tiny',
          f'--workdir={tmp_path / "run"}',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-3000:]
  assert re.search(
      r'Error: --config=configs/tiny\.py:model=vgg16_tiny: configs/tiny\.py ignores its '
      r"argument 'model=vgg16_tiny' .* use --config\.model=vgg16_tiny",
      out.stderr,
  ), out.stderr[-3000:]
  assert not os.path.exists(tmp_path / 'run')


# ----------------------------------------------------------------------------------------------
# 5. Meaningless values: refused naming the field, or warned about, before anything is loaded

MEANINGLESS = {  # case: (changes, the message)
    'image_size=1': ({'image_size': 1}, r'image_size=1 is not allowed; allowed: 0 \(the dataset'),
    'one surrogate': (
        {'dynamics.surrogates': 1},
        r'dynamics\.surrogates=1 is not allowed; allowed: 0 \(no null models\) or at least 2',
    ),
    'nesterov without momentum': (
        {'nesterov': True, 'momentum': 0.0},
        r"nesterov=True is not allowed; allowed: False, unless optimizer='sgd' with momentum > 0",
    ),
    'vit image not a multiple of the patch': (
        {'model': 'vit_tiny', 'image_size': 30},
        r"image_size=30 is not allowed; allowed: a multiple of 4, the patch size of 'vit_tiny'",
    ),
    'init_checkpoint a folder': (
        {'model': 'vit_tiny', 'init_checkpoint': '/'},
        r"init_checkpoint='/' is not allowed; allowed: '' or the path of a file, not a folder",
    ),
    'two DFA scales': (
        {'dynamics.dfa_num_scales': 2},
        r'dynamics\.dfa_num_scales=2 is not allowed; allowed: an integer in \[3, 1024\] '
        r'\(points of the log-spaced DFA grid',
    ),
    'a billion DFA scales': (
        {'dynamics.dfa_num_scales': 10**9},
        r'dynamics\.dfa_num_scales=1000000000 is not allowed; allowed: an integer in \[3, 1024\]',
    ),
    '1e8 surrogates': (
        {'dynamics.surrogates': 10**8},
        r'dynamics\.surrogates=100000000 is not allowed; allowed: an integer in \[0, 10000\]',
    ),
    'synthetic images larger than the host': (
        {'data.image_size': 100000},
        r'data\.image_size=100000 with data\.train_size \+ data\.test_size = 352 synthetic images '
        r'needs 10560\.0 GB of host memory',
    ),
    'every_steps past the run': (
        {'dynamics.every_steps': 1000},
        r'dynamics\.every_steps=1000 but the run has 16 steps .* no step-mode metric would ever '
        r'be computed',
    ),
}


@pytest.mark.parametrize('case', sorted(MEANINGLESS))
def test_meaningless_value_is_refused_naming_the_field(case, tmp_path, monkeypatch):
  changes, pattern = MEANINGLESS[case]
  config = tiny.get_config()
  for field, value in changes.items():
    _set(config, field, value)

  def no_loading(*args, **kwargs):
    raise AssertionError('data were loaded before the config was checked')

  monkeypatch.setattr(loop.data_lib, 'load', no_loading)
  with pytest.raises(ValueError, match=pattern):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_an_init_checkpoint_that_is_not_weights_is_named(tmp_path):
  text = tmp_path / 'notes.txt'
  text.write_text('these are not weights\n')
  config = _config(model='vit_tiny', init_checkpoint=str(text))
  config.dynamics.enabled = False
  with pytest.raises(ValueError, match=rf"init_checkpoint='{re.escape(str(text))}' cannot be read"):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))


def test_a_state_larger_than_a_device_is_refused_before_compiling(tmp_path, monkeypatch):
  monkeypatch.setattr(programs, 'memory_per_device', lambda: 10**5)

  def no_compiling(*args, **kwargs):
    raise AssertionError('the initial state was compiled before its size was checked')

  monkeypatch.setattr(restore, 'initial_state', no_compiling)
  with pytest.raises(ValueError) as info:
    loop.train_and_evaluate(_config(), str(tmp_path / 'run'))
  assert re.match(
      r'The train state needs \S+ GB per device but a device here holds 0\.00 GB; largest '
      r'parts: \S+ float32\[',
      str(info.value),
  ), str(info.value)
  assert 'num_train_steps' in str(info.value)


def test_meaningful_but_doubtful_values_are_warned_about_naming_the_field():
  config = tiny.get_config()
  config.warmup_epochs = 1e6
  config.dynamics.surrogates = 5
  warnings = ' '.join(fit_lib.fit_to_run(config, 16, 8).warnings)
  assert re.search(r'warmup_epochs=1e\+06 is 8000000 steps of warm-up but the run has 16', warnings)
  assert re.search(r'dynamics\.surrogates=5: the smallest p-value it can give is 1/6', warnings)


# ----------------------------------------------------------------------------------------------
# 7. analyze.py on a killed or damaged workdir: what is readable is analysed, each skip named


def _report(workdir):
  import analyze  # pylint: disable=import-outside-toplevel

  with open(analyze.analyze_run(workdir)) as f:
    return f.read()


def test_analyze_reads_what_a_killed_run_left(finished, tmp_path):
  workdir = _copy(finished, tmp_path / 'run')
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 9, "train/lo')  # SIGKILL in the middle of a write
  _truncate(os.path.join(workdir, 'dynamics.npz'))
  _truncate(os.path.join(workdir, 'summary.json'))

  report = _report(workdir)

  assert 'Final test accuracy' in report  # the records that are there
  assert re.search(r'Skipped.*metrics\.jsonl: the last line \(\d+\) is cut short', report)
  assert re.search(r'Skipped.*dynamics\.npz: cannot be read', report)
  assert re.search(r'Skipped.*summary\.json: cannot be read \(JSONDecodeError', report)


def test_analyze_empty_or_binary_files(finished, tmp_path):
  workdir = _copy(finished, tmp_path / 'run')
  open(os.path.join(workdir, 'metrics.jsonl'), 'w').close()
  open(os.path.join(workdir, 'dynamics.npz'), 'w').close()
  report = _report(workdir)
  assert 'not evaluated yet' not in report
  assert re.search(r'no evaluation record .* summary\.json gives the final test accuracy', report)
  assert re.search(r'Skipped.*dynamics\.npz: cannot be read', report)

  with open(os.path.join(workdir, 'metrics.jsonl'), 'wb') as f:
    f.write(bytes(range(256)) * 8)
  assert re.search(r'Skipped.*metrics\.jsonl: \d+ line\(s\) are not JSON records', _report(workdir))


def test_analyze_names_an_unreadable_config_json(finished, tmp_path):
  from analysis import runs as runs_lib  # pylint: disable=import-outside-toplevel

  good = _copy(finished, tmp_path / 'runs' / 'good')
  bad = _copy(finished, tmp_path / 'runs' / 'bad')
  _truncate(os.path.join(bad, 'config.json'))
  with pytest.raises(ValueError, match=r'bad/config\.json cannot be read'):
    runs_lib.load_run(bad)
  assert runs_lib.find_runs([str(tmp_path / 'runs')]) == [good]
  with pytest.raises(FileNotFoundError, match=r'skipped: \S+/bad/config\.json cannot be read'):
    runs_lib.find_runs([bad])

  out = subprocess.run(
      [sys.executable, 'analyze.py', f'--workdir={bad}'],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 1 and 'Traceback' not in out.stderr, out.stderr[-3000:]
  assert re.search(r'Error: \S+bad: \S+/bad/config\.json cannot be read', out.stderr)


# ----------------------------------------------------------------------------------------------
# 9. Command-line errors: one line, exit status 1

CLI_PARSE = {  # flags: the message
    '--config.dynamics.windw=5': (
        r"Error: --config\.dynamics\.windw=5: the config has no field 'dynamics\.windw'; did you "
        r'mean --config\.dynamics\.window\?'
    ),
    '--config.foo=1': r"Error: --config\.foo=1: the config has no field 'foo'\.",
    '--config=configs/study.py:scale=xyz': (
        r'Error: flag --config=configs/study\.py:scale=xyz: Error whilst parsing config file: '
        r"ValueError: configs/study\.py: scale='xyz'; allowed: "
    ),
}


def test_command_line_parse_errors_are_one_line(tmp_path):
  procs = {}
  for flag in CLI_PARSE:
    config = [] if flag.startswith('--config=') else ['--config=configs/tiny.py']
    procs[flag] = subprocess.Popen(
        [sys.executable, 'train.py'] + config + [flag, f'--workdir={tmp_path / "run"}'],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
  for flag, proc in procs.items():
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1 and 'Traceback' not in output, output[-3000:]
    assert re.search(CLI_PARSE[flag], output), output[-3000:]
  assert not os.path.exists(tmp_path / 'run')


def test_a_read_only_workdir_is_a_user_error():
  # As root no folder is read-only, so the classification itself is checked: PermissionError
  # (its message names the path) is reported in one line, not as a traceback.
  out = subprocess.run(
      [
          sys.executable,
          '-c',
          'import train; print(train._is_user_error(PermissionError(13, "denied", "/x")))',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.stdout.strip().splitlines()[-1] == 'True', out.stderr[-2000:]


def test_a_config_written_before_a_field_existed_still_matches_its_default():
  """A workdir from before `dynamics.phase_band`, `model_args.stem` or `data.streaming` existed
  resumes under a config that keeps their defaults, and is refused when one is changed."""
  from configs import common, tiny

  new = tiny.get_config().to_dict()
  old = json.loads(json.dumps(new))
  del old['dynamics']['phase_band'], old['model_args']['stem'], old['data']['streaming']
  assert common.config_differences(old, new) == []
  new['dynamics']['phase_band'] = '0.05,0.25'
  assert common.config_differences(old, new) == ["dynamics.phase_band: '<absent>' -> '0.05,0.25'"]
