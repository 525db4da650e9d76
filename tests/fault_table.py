"""The fault script of docs/reliability.md: signal and bad-data cases run as a user runs them
(`train.py` subprocesses on the tiny config), each classified the way the fault table counts.

    .venv/bin/python tests/fault_table.py --out=/tmp/faults            # both categories
    .venv/bin/python tests/fault_table.py --out=/tmp/faults --only=signals --only=data

It is not collected by pytest (about 25 minutes on 2 busy CPU cores). It writes one JSON line
per case to <out>/cases.jsonl, each run's output to <out>/<category>/<case>.log, and prints the
table rows (tried, clear, recovered, raw or hang, silent, lost).

Signals: each case is `train.py` with one signal delivered at a chosen point (before the first
step, mid-epoch, while a checkpoint is being committed, during an evaluation, while the final
dynamics.npz is written, before the stop handler exists ...). The child sends the signal to
itself (`os.kill(os.getpid(), sig)`) from a hook installed around train.py, so that the point is
the same in every run; the kernel delivers it as it would a scheduler's. The same command is then
run again, unhooked, and the result must equal an uninterrupted run bit for bit: every array of
the final checkpoint, every metrics.jsonl record but the wall-clock speed, every dynamics.npz
series and the committed steps. A case is *recovered* when it does, *silent* when the resumed run
finishes but differs, *lost* when a finished step or record is gone, *raw or hang* when either
run prints a traceback or exceeds its time limit. `eval_bound` also measures the time from a
SIGTERM during an evaluation of 12,000 test images to the exit.

Data: each case is `train.py` on a small synthetic image folder (PNG files written here) with
one fault. *clear*: exit status 1, one `Error:` line naming the file or field (a pattern per
case), no traceback. *recovered*: the run completes (exit 0) and the log names what was done
about the fault (a pattern per case). A completed run where an error was due is *silent*.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, os.path.join(ROOT, 'train.py'), '--config=configs/tiny.py']
# 2 epochs of 8 steps, checkpoints at 8 and 16 (the epoch ends), records every 2 steps.
SIGNAL_FLAGS = ['--config.log_every_steps=2', '--config.checkpoint_every_steps=8']
TOTAL = 16

# ----------------------------------------------------------------------------------------------
# The child: train.py with one hook that signals this process at a chosen point.


def _child(spec, argv):
  """Runs train.py (argv) with the hook `spec` = {signal, at, n, marker, again}."""
  sys.path.insert(0, ROOT)
  os.chdir(ROOT)
  import data as data_lib  # pylint: disable=import-outside-toplevel
  from training import checkpoint, loop, writers  # pylint: disable=import-outside-toplevel

  try:  # where the loop gets its feed: training/feeds.py, or training/loop.py before it
    from training import feeds  # pylint: disable=import-outside-toplevel

    feed_owner, feed_name = feeds, 'train_feed'
  except ImportError:
    feed_owner, feed_name = loop, '_train_feed'

  sig = getattr(signal, spec['signal'])

  def fire():
    deadline = time.time() + 300
    while spec.get('wait_for') and not os.path.exists(spec['wait_for']) and time.time() < deadline:
      time.sleep(0.05)  # a checkpoint commits in the background, steps later
    with open(spec['marker'], 'w') as f:
      f.write(repr(time.time()))
    os.kill(os.getpid(), sig)
    if spec.get('again'):  # a second Ctrl-C while the first is being honoured
      time.sleep(0.2)
      os.kill(os.getpid(), sig)

  at, n = spec['at'], spec.get('n', 0)
  if at == 'load':  # after the data are loaded: before the stop handler is installed
    original_load = data_lib.load

    def load(cfg):
      dataset = original_load(cfg)
      fire()
      return dataset

    data_lib.load = load
  elif at == 'step':  # before step n+1 runs (n = 0: before the first step compiles)
    original_feed = getattr(feed_owner, feed_name)

    def train_feed(*args):
      feed = original_feed(*args)

      def hooked(step):
        if step == n:
          fire()
        return feed(step)

      return hooked

    setattr(feed_owner, feed_name, train_feed)
  elif at == 'eval':  # at the second batch of the first evaluation
    original_eval = data_lib.eval_batches
    calls = [0]

    def eval_batches(*args, **kwargs):
      calls[0] += 1
      for k, batch in enumerate(original_eval(*args, **kwargs)):
        if calls[0] == 1 and k == 1:
          fire()
        yield batch

    data_lib.eval_batches = eval_batches
  elif at == 'save':  # step n's files written, its digests not yet, the step not committed
    original_digests = checkpoint.write_digests

    def write_digests(folder, step, config):
      if step == n:
        fire()
        time.sleep(1)  # SIGTERM: the handler runs in the main thread meanwhile
      return original_digests(folder, step, config)

    checkpoint.write_digests = write_digests
  elif at == 'final_write':  # inside the atomic write of the final dynamics.npz
    original_atomic = writers.atomic_file

    def atomic_file(path, mode='w'):
      if path.endswith('dynamics.npz'):
        fire()
      return original_atomic(path, mode)

    writers.atomic_file = atomic_file
  else:
    raise ValueError(f'unknown hook point {at!r}')
  import runpy  # pylint: disable=import-outside-toplevel

  sys.argv = ['train.py'] + argv
  runpy.run_path(os.path.join(ROOT, 'train.py'), run_name='__main__')


# ----------------------------------------------------------------------------------------------
# Running and reading runs


def _env(out):
  env = dict(os.environ)
  env.setdefault('JAX_PLATFORMS', 'cpu')
  env['JAX_COMPILATION_CACHE_DIR'] = os.path.join(out, 'jax_cache')
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return env


def _run(cmd, log, out, timeout):
  """(exit status or 'timeout', seconds, end time)."""
  t0 = time.time()
  with open(log, 'w') as f:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(out), stdout=f, stderr=subprocess.STDOUT)
    try:
      rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      rc = 'timeout'
  end = time.time()
  return rc, end - t0, end


def _read(log):
  with open(log, errors='replace') as f:
    return f.read()


def _tracebacks(text):
  return text.count('Traceback (most recent call last)')


def _error_lines(text):
  return [line for line in text.splitlines() if line.startswith('Error:')]


def _committed(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  for r in records:
    r.pop('train/steps_per_sec', None)
  return records


def _checkpoint_arrays(workdir, step):
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as reader:
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        reader.metadata(path).item_metadata,
    )
    tree = jax.device_get(reader.restore(path, target))
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _differences(ref, workdir):
  """What differs between the finished runs in `ref` and `workdir` (empty: bit for bit)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  diffs = []
  # A stop notice adds the step it saved at (kept: it is a checkpoint like the others).
  if not set(_committed(ref)) <= set(_committed(workdir)):
    diffs.append(f'committed steps {_committed(workdir)}, not all of {_committed(ref)}')
    return diffs
  a, b = _checkpoint_arrays(ref, TOTAL), _checkpoint_arrays(workdir, TOTAL)
  if sorted(a) != sorted(b):
    diffs.append('checkpoint structure')
  else:
    diffs += [f'checkpoint {k}' for k in a if not np.array_equal(a[k], b[k], equal_nan=True)]
  try:
    np.testing.assert_equal(_records(workdir), _records(ref))
  except AssertionError as e:
    diffs.append(f'metrics.jsonl: {str(e)[:300]}')
  with (
      np.load(os.path.join(ref, 'dynamics.npz')) as x,
      np.load(os.path.join(workdir, 'dynamics.npz')) as y,
  ):
    if sorted(x.files) != sorted(y.files):
      diffs.append('dynamics.npz keys')
    else:
      diffs += [
          f'dynamics.npz {k}'
          for k in x.files
          if not np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == 'f')
      ]
  with open(os.path.join(ref, 'summary.json')) as f:
    s_ref = json.load(f)
  with open(os.path.join(workdir, 'summary.json')) as f:
    s_run = json.load(f)
  for key in ('final_step', 'finished', 'eval_accuracy', 'eval_loss'):
    if s_ref.get(key) != s_run.get(key):
      diffs.append(f'summary.json {key}: {s_run.get(key)} != {s_ref.get(key)}')
  return diffs


# ----------------------------------------------------------------------------------------------
# Signals

# name: (signal, hook point, n, expected exit status of the signalled run, note)
SIGNAL_CASES = {
    'kill_after_data_load': ('SIGKILL', 'load', 0, -9),
    'kill_before_first_step': ('SIGKILL', 'step', 0, -9),
    'kill_mid_epoch': ('SIGKILL', 'step', 5, -9),
    'kill_after_first_checkpoint': ('SIGKILL', 'step', 11, -9),
    'kill_while_committing_checkpoint': ('SIGKILL', 'save', 8, -9),
    'kill_during_evaluation': ('SIGKILL', 'eval', 0, -9),
    'kill_while_writing_final_dynamics': ('SIGKILL', 'final_write', 0, -9),
    'term_after_data_load': ('SIGTERM', 'load', 0, -15),  # no handler yet: the default action
    'term_before_first_step': ('SIGTERM', 'step', 0, 143),
    'term_mid_epoch': ('SIGTERM', 'step', 5, 143),
    'term_while_committing_checkpoint': ('SIGTERM', 'save', 8, 143),
    'term_during_evaluation': ('SIGTERM', 'eval', 0, 143),
    'term_while_writing_final_dynamics': ('SIGTERM', 'final_write', 0, -15),  # handler closed
    'int_mid_epoch': ('SIGINT', 'step', 5, 130),
    'int_twice_mid_epoch': ('SIGINT', 'step', 5, 130),
}


def _signal_case(name, out, ref, timeout):
  sig, at, n, expected = SIGNAL_CASES[name]
  folder = os.path.join(out, 'signals')
  workdir = os.path.join(folder, name)
  marker = os.path.join(folder, name + '.signalled')
  spec = dict(signal=sig, at=at, n=n, marker=marker, again=name == 'int_twice_mid_epoch')
  if name == 'kill_after_first_checkpoint':  # step 8 committed before the kill, not in flight
    spec['wait_for'] = os.path.join(workdir, 'checkpoints', '8')
  argv = [f'--workdir={workdir}'] + TRAIN[2:] + SIGNAL_FLAGS
  child = [sys.executable, os.path.abspath(__file__), '--child', json.dumps(spec), '--'] + argv
  log1 = os.path.join(folder, name + '.log')
  rc1, _, end = _run(child, log1, out, timeout)
  sent = float(_read(marker)) if os.path.exists(marker) else None
  text1 = _read(log1)
  before = _committed(workdir)
  resume = TRAIN + [f'--workdir={workdir}'] + SIGNAL_FLAGS
  rc2, seconds2, _ = _run(resume, log1 + '.resume', out, timeout)
  text2 = _read(log1 + '.resume')
  row = dict(
      category='signals',
      case=name,
      signalled_exit=rc1,
      expected_exit=expected,
      signal_to_exit_s=None if sent is None else round(end - sent, 2),
      error=(_error_lines(text1) or [''])[-1][:200],
      tracebacks=_tracebacks(text1) + _tracebacks(text2),
      committed_after_signal=before,
      resume_exit=rc2,
      resume_s=round(seconds2, 1),
  )
  if sent is None:
    row.update(outcome='raw or hang', why='the hook never fired')
  elif 'timeout' in (rc1, rc2):
    row.update(outcome='raw or hang', why='time limit')
  elif row['tracebacks'] or rc2 != 0 or rc1 != expected:
    row.update(outcome='raw or hang', why=f'exit {rc1} (expected {expected}), resume exit {rc2}')
  elif not set(before) <= set(_committed(workdir)):
    row.update(outcome='lost', why=f'steps {before} -> {_committed(workdir)}')
  else:
    diffs = _differences(ref, workdir)
    moved = [f for f in os.listdir(workdir) if '.old-' in f or '.damaged' in f]
    row.update(
        outcome='silent' if diffs else 'recovered',
        why='; '.join(diffs[:5]) or 'resumed bit for bit',
        moved_aside=moved,
        committed_at_end=_committed(workdir),
    )
  return row


def _eval_bound(out, timeout):
  """SIGTERM at the second batch of the first evaluation of 12,000 test images: time to exit,
  compared with the evaluation's own time in an unsignalled epoch line."""
  folder = os.path.join(out, 'signals')
  flags = [
      '--config.data.test_size=12000',
      '--config.num_train_steps=24',  # the first epoch end is not the run's end
      '--config.log_every_steps=2',
      '--config.checkpoint_every_steps=8',
  ]
  workdir = os.path.join(folder, 'eval_bound')
  marker = workdir + '.signalled'
  spec = dict(signal='SIGTERM', at='eval', n=0, marker=marker)
  child = [sys.executable, os.path.abspath(__file__), '--child', json.dumps(spec), '--']
  child += [f'--workdir={workdir}'] + TRAIN[2:] + flags
  log = workdir + '.log'
  rc, _, end = _run(child, log, out, timeout)
  text = _read(log)
  sent = float(_read(marker)) if os.path.exists(marker) else None
  # The resumed run evaluates epochs 2 and 3 unsignalled: their epoch lines give the pass's time.
  rc2, _, _ = _run(TRAIN + [f'--workdir={workdir}'] + flags, log + '.resume', out, timeout)
  lines = re.findall(r'\| test loss .*? \(([\d.]+) s\)', _read(log + '.resume'))
  passes = [float(s) for s in lines]
  return dict(
      category='signals',
      case='eval_bound',
      signalled_exit=rc,
      expected_exit=143,
      signal_to_exit_s=None if sent is None else round(end - sent, 2),
      evaluation_pass_s=passes,
      error=(_error_lines(text) or [''])[-1][:200],
      tracebacks=_tracebacks(text) + _tracebacks(_read(log + '.resume')),
      resume_exit=rc2,
      outcome='recovered'
      if rc == 143 and rc2 == 0 and not _tracebacks(text) and sent is not None
      else 'raw or hang',
      why='saved at the step, exit 143; the resumed run completes',
  )


def run_signals(out, timeout, cases):
  folder = os.path.join(out, 'signals')
  os.makedirs(folder, exist_ok=True)
  ref = os.path.join(folder, 'reference')
  if not os.path.exists(os.path.join(ref, 'summary.json')):
    shutil.rmtree(ref, ignore_errors=True)
    rc, seconds, _ = _run(TRAIN + [f'--workdir={ref}'] + SIGNAL_FLAGS, ref + '.log', out, timeout)
    if rc != 0 or _committed(ref) != [8, TOTAL]:
      sys.exit(f'The reference run failed ({rc}); see {ref}.log')
    print(f'reference: {seconds:.0f} s', flush=True)
  for name in cases:
    if name == 'eval_bound':
      yield _eval_bound(out, timeout)
    else:
      shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
      for stale in (name + '.signalled', name + '.lock'):
        if os.path.exists(os.path.join(folder, stale)):
          os.remove(os.path.join(folder, stale))
      yield _signal_case(name, out, ref, timeout)


# ----------------------------------------------------------------------------------------------
# Data


def _png(path, size=16, mode='RGB', value=100):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  os.makedirs(os.path.dirname(path), exist_ok=True)
  shape = (size, size) if mode == 'L' else (size, size, 4 if mode == 'RGBA' else 3)
  Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)


def _folder(root, classes=('a', 'b'), train=16, test=8):
  for split, count in (('train', train), ('test', test)):
    for c, cls in enumerate(classes):
      for i in range(count):
        _png(os.path.join(root, split, cls, f'{i}.png'), value=40 * c + i)
  return root


def _cache_file(cache):
  (name,) = [n for n in os.listdir(cache) if n.endswith('.npz')]
  return os.path.join(cache, name)


def _rewrite_label(cache, split, value):
  import numpy as np  # pylint: disable=import-outside-toplevel

  path = _cache_file(cache)
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  arrays[f'{split}_labels'] = arrays[f'{split}_labels'].copy()
  arrays[f'{split}_labels'][3] = value
  with open(path, 'wb') as f:
    np.savez(f, **arrays)


def _prime_cache(root, cache, out):
  """Decodes `root` into `cache` (data.load, as the run does)."""
  code = (
      'import sys; sys.path.insert(0, sys.argv[1]); import data; c = data.default_config(); '
      "c.update(dict(source='image_folder', path=sys.argv[2], cache_dir=sys.argv[3])); "
      'data.load(c)'
  )
  subprocess.run([sys.executable, '-c', code, ROOT, root, cache], check=True, env=_env(out))


def _tar(root, truncate=False):
  path = root + '.tar.gz'
  with tarfile.open(path, 'w:gz') as tar:
    tar.add(root, arcname='imgs')
  if truncate:
    os.truncate(path, os.path.getsize(path) // 2)
  return path


# Each maker gets (root, cache, out) and returns (data.path, extra flags); then (the outcome
# due, a pattern the Error line or the log must hold).
def _d_missing(r, c, o):
  return r + '-nowhere', []


def _d_empty_class(r, c, o):
  os.makedirs(os.path.join(_folder(r), 'train', 'empty_cls'))
  return r, []


def _d_unreadable(r, c, o):
  with open(os.path.join(_folder(r), 'train', 'b', 'broken.png'), 'wb') as f:
    f.write(b'this is not a png')
  return r, []


def _d_no_splits(r, c, o):
  for cls in ('a', 'b'):
    _png(os.path.join(r, cls, 'x', '0.png'))
  return r, []


def _d_size(r, c, o):
  _png(os.path.join(_folder(r), 'train', 'a', '99.png'), size=24)
  return r, []


def _d_one_class(r, c, o):
  return _folder(r, classes=('only',)), []


def _d_test_class_not_in_train(r, c, o):
  _png(os.path.join(_folder(r), 'test', 'zebra', '0.png'))
  return r, []


def _d_missing_test(r, c, o):
  shutil.rmtree(os.path.join(_folder(r), 'test'))
  return r, []


def _d_text_file(r, c, o):
  with open(r + '.txt', 'w') as f:
    f.write('not images')
  return r + '.txt', []


def _d_truncated_archive(r, c, o):
  return _tar(_folder(r), truncate=True), []


def _d_crop(r, c, o):
  return _folder(r), ['--config.crop_padding=16']


def _d_subset(r, c, o):
  return _folder(r), ['--config.data.train_subset=1000']


def _d_empty_path(r, c, o):
  return '', []


def _d_unknown_source(r, c, o):
  return _folder(r), ['--config.data.source=imagenet_folder']


def _d_streaming_subset(r, c, o):
  return _folder(r), ['--config.data.streaming=True', '--config.data.train_subset=8']


def _d_cache_label(split, value):
  def make(r, c, o):
    _prime_cache(_folder(r), c, o)
    _rewrite_label(c, split, value)
    return r, []

  return make


def _d_cache_truncated(r, c, o):
  _prime_cache(_folder(r), c, o)
  os.truncate(_cache_file(c), 300)
  return r, []


def _d_cache_garbage(r, c, o):
  _prime_cache(_folder(r), c, o)
  with open(_cache_file(c), 'wb') as f:
    f.write(os.urandom(5000))
  return r, []


def _d_cache_stale(r, c, o):
  _prime_cache(_folder(r), c, o)
  _png(os.path.join(r, 'train', 'a', '100.png'), value=7)  # the folder changed since
  return r, []


def _d_cache_unwritable(r, c, o):
  # A file where the cache folder goes: unwritable even as root (a chmod is not, for root).
  with open(c, 'w') as f:
    f.write('a file, not a folder')
  return _folder(r), []


def _d_grey_and_rgba(r, c, o):
  _folder(r)
  _png(os.path.join(r, 'train', 'a', '50.png'), mode='L')
  _png(os.path.join(r, 'train', 'b', '50.png'), mode='RGBA')
  return r, []


DATA_CASES = {
    'missing folder': (_d_missing, 'clear', r'Error: data\.path=.*-nowhere.* does not exist'),
    'empty class folder': (_d_empty_class, 'clear', r'Error: .*empty_cls'),
    'unreadable image': (_d_unreadable, 'clear', r'Error: .*broken\.png'),
    'no split folders': (_d_no_splits, 'clear', r'Error: .*train'),
    'image of another size': (_d_size, 'clear', r'Error: .*99\.png.*24x24'),
    'one class only': (_d_one_class, 'clear', r'Error: .*only.*at least two'),
    'test class not in train': (_d_test_class_not_in_train, 'clear', r'Error: .*zebra'),
    'test split missing': (_d_missing_test, 'clear', r'Error: .*test'),
    'data.path a text file': (_d_text_file, 'clear', r'Error: data\.path=.*\.txt'),
    'truncated archive': (_d_truncated_archive, 'clear', r'Error: .*\.tar\.gz'),
    'crop padding as wide as the images': (_d_crop, 'clear', r'Error: .*crop_padding=16'),
    'train_subset larger than the split': (_d_subset, 'clear', r'Error: .*train_subset=1000'),
    'data.path empty': (_d_empty_path, 'clear', r'Error: .*data\.path'),
    'unknown data.source': (_d_unknown_source, 'clear', r'Error: .*data\.source'),
    'streaming with a subset': (_d_streaming_subset, 'clear', r'Error: .*streaming.*subset'),
    'cache: label 200 of 2 classes': (
        _d_cache_label('train', 200),
        'clear',
        r'Error: .*cache file \S+\.npz: train_labels .*200.*\[0, 1\].*delete it',
    ),
    'cache: negative test label': (
        _d_cache_label('test', -1),
        'clear',
        r'Error: .*cache file \S+\.npz: test_labels .*-1.*\[0, 1\].*delete it',
    ),
    'cache: truncated file': (_d_cache_truncated, 'recovered', r'Ignoring unreadable cache file'),
    'cache: garbage bytes': (_d_cache_garbage, 'recovered', r'Ignoring unreadable cache file'),
    'cache: folder changed since': (_d_cache_stale, 'recovered', r'Decoding .*imgs|Decoding'),
    'cache: unwritable cache folder': (_d_cache_unwritable, 'recovered', r'Could not write'),
    'greyscale and RGBA images': (_d_grey_and_rgba, 'recovered', r'Decoded 34 \+ 16 images'),
}
DATA_FLAGS = [
    '--config.data.source=image_folder',
    '--config.batch_size=8',
    '--config.eval_batch_size=8',
    '--config.num_train_steps=4',
    '--config.checkpoint_every_steps=4',
    '--config.log_every_steps=2',
    '--config.dynamics.probe_size=8',
    '--config.crop_padding=2',
]


def _data_case(name, out, timeout):
  make, due, pattern = DATA_CASES[name]
  slug = re.sub(r'\W+', '_', name).strip('_')
  folder = os.path.join(out, 'data', slug)
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  root, cache = os.path.join(folder, 'imgs'), os.path.join(folder, 'cache')
  path, extra = make(root, cache, out)
  workdir = os.path.join(folder, 'run')
  cmd = TRAIN + [f'--workdir={workdir}'] + DATA_FLAGS
  cmd += [f'--config.data.path={path}', f'--config.data.cache_dir={cache}'] + extra
  log = folder + '.log'
  rc, seconds, _ = _run(cmd, log, out, timeout)
  text = _read(log)
  errors = _error_lines(text)
  row = dict(
      category='data',
      case=name,
      due=due,
      exit=rc,
      seconds=round(seconds, 1),
      error=(errors or [''])[-1][:300],
      tracebacks=_tracebacks(text),
  )
  found = re.search(pattern, '\n'.join(errors) if due == 'clear' else text)
  if rc == 'timeout' or row['tracebacks'] or rc not in (0, 1):
    row['outcome'] = 'raw or hang'
  elif rc == 0 and due == 'clear':
    row['outcome'] = 'silent'
  elif rc == 1 and due == 'clear':
    row['outcome'] = 'clear' if found and len(errors) == 1 else 'raw or hang'
    row['why'] = 'names it' if found else f'the Error line misses {pattern!r}'
  elif rc == 0 and due == 'recovered':
    finished = os.path.exists(os.path.join(workdir, 'summary.json'))
    row['outcome'] = 'recovered' if found and finished else 'silent'
    row['why'] = 'the log names it' if found else f'the log misses {pattern!r}'
  else:
    row['outcome'] = 'raw or hang'
    row['why'] = f'exit {rc}, {due} due'
  return row


def run_data(out, timeout, cases):
  for name in cases:
    yield _data_case(name, out, timeout)


# ----------------------------------------------------------------------------------------------

OUTCOMES = ('clear', 'recovered', 'raw or hang', 'silent', 'lost')


def main():
  if len(sys.argv) > 1 and sys.argv[1] == '--child':
    _child(json.loads(sys.argv[2]), sys.argv[4:])
    return
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='scratch folder (not in the repository)')
  parser.add_argument('--only', action='append', choices=('signals', 'data'))
  parser.add_argument('--case', action='append', help='run only these cases (names as listed)')
  parser.add_argument('--timeout', type=int, default=400, help='seconds per train.py run')
  args = parser.parse_args()
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  categories = args.only or ['signals', 'data']
  rows = []
  with open(os.path.join(out, 'cases.jsonl'), 'a') as f:
    for category in categories:
      names = list(SIGNAL_CASES) + ['eval_bound'] if category == 'signals' else list(DATA_CASES)
      names = [n for n in names if not args.case or n in args.case]
      run = run_signals if category == 'signals' else run_data
      for row in run(out, args.timeout, names):
        rows.append(row)
        f.write(json.dumps(row) + '\n')
        f.flush()
        print(
            f'{row["category"]:8s} {row["case"]:40s} {row["outcome"]:12s} {row.get("why", "")}',
            flush=True,
        )
  print('\n| category | tried | clear | recovered | raw or hang | silent | lost |')
  print('|---|---|---|---|---|---|---|')
  for category in categories:
    mine = [r for r in rows if r['category'] == category]
    counts = [sum(r['outcome'] == o for r in mine) for o in OUTCOMES]
    print(f'| {category} | {len(mine)} | ' + ' | '.join(map(str, counts)) + ' |')


if __name__ == '__main__':
  main()
