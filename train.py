r"""Trains a vision network and measures its layer dynamics.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python train.py --config=configs/default.py:dataset=cifar100 --workdir=runs/c100 \
      --config.dynamics.reduction=proj:8

Several processes (one per host, or per GPU), each started with the same flags plus its own id:

  python train.py --config=... --workdir=<shared dir> \
      --coordinator_address=10.0.0.1:12345 --num_processes=2 --process_id=0   # and =1

On a TPU pod, SLURM, Open MPI or Kubernetes, `--distributed` alone lets jax.distributed detect
them. Exit status: 0 when the run finished (or stopped as asked); 143 when it was preempted
(SIGTERM) and 130 when it was interrupted (Ctrl-C, SIGINT), both after saving a checkpoint:
running the same command again resumes it; 1 for a user error (bad config, missing data, workdir
in use, damaged checkpoints with nothing to fall back to, full disk, divergence), reported in
one message whose traceback is written to a log file (shown with --verbose).

All logic lives in training.loop.train_and_evaluate(config, workdir).
"""

import datetime
import errno
import os
import re
import signal
import sys
import tempfile
import threading
import traceback
from typing import Optional

if __name__ == '__main__':  # the imports below take seconds (JAX): show that the run started
  print('train.py: loading JAX and the project ...', file=sys.stderr, flush=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Importing the project touches no device, so main can still set XLA's CPU flags for the model
# and initialize jax.distributed.
from training import checkpoint, runtime, workdir as workdir_lib  # noqa: E402
from training.console import spread_text
from training.loop import train_and_evaluate  # noqa: E402

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what an unhandled SIGTERM would report
USER_ERROR_EXIT_CODE = 1
# What a user can fix from the message alone: shown as one message, without the traceback.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,  # a read-only workdir: the message names the path
    checkpoint.CheckpointError,
    checkpoint.CheckpointSaveError,
    workdir_lib.WorkdirLockedError,
    FloatingPointError,
)


def _env_int(name):
  value = os.environ.get(name)
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'${name}={value!r} must be an integer.') from None


FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_bool(
    'overwrite',
    False,
    'If the workdir holds a run with a different config, move it to '
    '<workdir>.old-<timestamp> and start afresh (without this flag such a run '
    'refuses to start). A workdir of the same config is resumed either way.',
)
flags.DEFINE_bool(
    'allow_unverified_checkpoint',
    False,
    'Restore the newest checkpoint even if it has no digests.json (written by an '
    'older version, or its digests were removed), so its bytes cannot be verified. '
    "Its config is still checked against the workdir's config.json (refused "
    'without one). Without this flag such a checkpoint is refused.',
)
flags.DEFINE_bool(
    'distributed',
    False,
    'Call jax.distributed.initialize() and let it detect the cluster (Cloud TPU '
    'pods, SLURM, Open MPI, Kubernetes). Implied by the three flags below.',
)
flags.DEFINE_string(
    'coordinator_address',
    os.environ.get('JAX_COORDINATOR_ADDRESS'),
    'host:port of process 0, the same for every process (default: ' '$JAX_COORDINATOR_ADDRESS).',
)
flags.DEFINE_integer(
    'num_processes',
    _env_int('JAX_NUM_PROCESSES'),
    'How many processes take part (default: $JAX_NUM_PROCESSES).',
)
flags.DEFINE_integer(
    'process_id',
    _env_int('JAX_PROCESS_ID'),
    'This process, 0 .. num_processes - 1 (default: $JAX_PROCESS_ID).',
)
flags.DEFINE_bool(
    'verbose',
    False,
    'Also log every scalar and histogram written (as absl -v 1 does) and the '
    "libraries' informational messages (by default the console shows one "
    'progress line per log interval and one line per epoch); and on a user '
    'error, print the Python traceback too (it is always written to a log file, '
    'named in the message).',
)
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed():
  """jax.distributed.initialize from the flags; must run before anything touches a device."""
  given = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if not FLAGS.distributed and all(v is None for v in given):
    return
  # Cross-process collectives of the CPU backend (tests, CPU clusters); 'gloo' is the
  # default of current JAX, set here so that an older or changed default cannot break it.
  # It only affects the CPU backend: GPUs use NCCL and TPUs their own interconnect.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
  )
  _connect_collectives()
  logging.info(
      'jax.distributed: process %d of %d, %d local device(s), %d in all.',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )


def _connect_collectives():
  """Runs the two kinds of cross-process collective the run uses, now, while every process
  is at the same point.

  CPU (gloo) collectives connect on first use and give up if a peer has not arrived within
  30 s; the first real ones come after data loading and compilation, which can take one
  process much longer than another. Once connected they wait as long as needed.
  """
  multihost_utils.sync_global_devices('train.py: processes connected')  # Orbax's barriers
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  ones = jax.make_array_from_process_local_data(
      NamedSharding(mesh, P('data')), np.ones(jax.local_device_count(), np.float32)
  )
  total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(ones)  # the step's sums
  if int(total) != jax.device_count():
    raise RuntimeError(
        f'A sum over all {jax.device_count()} devices gave {int(total)}: the '
        'processes do not see the same devices.'
    )


def _is_user_error(e: BaseException) -> bool:
  return isinstance(e, USER_ERRORS) or (isinstance(e, OSError) and e.errno == errno.ENOSPC)


def _fail(message: str, exc: Optional[BaseException], code: int = USER_ERROR_EXIT_CODE):
  """Prints `message` alone (the traceback of `exc` goes to a log file, and to stderr with
  --verbose) and exits with `code`."""
  if exc is None:  # nothing raised: no traceback to keep
    print(f'\nError: {message}', file=sys.stderr)
    sys.exit(code)
  text = ''.join(traceback.format_exception(exc))
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  log = os.path.join(tempfile.gettempdir(), f'train-error-{stamp}-{os.getpid()}.log')
  try:
    with open(log, 'w') as f:
      f.write(f'{" ".join(sys.argv)}\n\n{text}')
    where = f'traceback in {log}'
  except OSError:  # a full disk, say: the message matters more than the log
    where = 'no log file could be written'
  if FLAGS.verbose:
    print(text, file=sys.stderr)
  print(f'\nError: {message}\n({where}; --verbose prints it here)', file=sys.stderr)
  _exit(code)


def _exit(code: int):
  """sys.exit(code); os._exit(code) when threads that Python would wait for are still alive
  (Orbax's background save threads after a failed save wait forever for signals that never
  come, and the interpreter would hang at exit joining them)."""
  stray = [
      t
      for t in threading.enumerate()
      if t is not threading.main_thread() and not t.daemon and t.is_alive()
  ]
  if stray:
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def _load_config():
  """FLAGS.config, or a one-line error naming the file when it cannot be loaded."""
  given = FLAGS['config'].config_filename
  path = given.split(':', 1)[0]
  if not os.path.isfile(path):
    configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
    _fail(
        f'--config={given}: there is no file {os.path.abspath(path)} (the configs of this '
        f'project are in {configs}).',
        None,
    )
  try:
    config = FLAGS.config
  except OSError as e:  # ml_collections reports a failed import as "Failed loading config file"
    _fail(f'--config={given} cannot be loaded: {e.__cause__ or e}', e)
  _check_config_argument(given)
  return config


def _check_config_argument(given: str):
  """`--config=file.py:arg` where get_config ignores `arg` (it gives the same config as without
  it) is refused, naming the argument: it would otherwise train another config than asked."""
  path, _, arg = given.partition(':')
  if not arg:
    return
  import importlib.util  # pylint: disable=import-outside-toplevel

  try:
    spec = importlib.util.spec_from_file_location('_config_argument_check', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain = module.get_config().to_json_best_effort(sort_keys=True)
    with_arg = module.get_config(arg).to_json_best_effort(sort_keys=True)
  except Exception:  # pylint: disable=broad-except  # needs its argument, or checks it itself
    return
  if plain == with_arg:
    fields = ' '.join(f'--config.{part}' for part in arg.split(',') if '=' in part)
    _fail(
        f'--config={given}: {path} ignores its argument {arg!r} (the config is the same '
        'without it), so it would change nothing.'
        + (f' To set config fields, use {fields}.' if fields else ''),
        None,
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.verbose:
    logging.set_verbosity(logging.DEBUG)
  config = _load_config()
  # Before anything touches a device: XLA reads its flags when the backend starts.
  runtime.configure_xla_cpu(model=config.model)
  initialize_distributed()
  try:
    result = train_and_evaluate(
        config,
        FLAGS.workdir,
        overwrite=FLAGS.overwrite,
        allow_unverified=FLAGS.allow_unverified_checkpoint,
    )
  except KeyboardInterrupt as e:  # a second Ctrl-C, or one before training started
    _fail(
        'Interrupted (Ctrl-C) without saving; the newest checkpoint in '
        f'{os.path.join(FLAGS.workdir, "checkpoints")} (if any) is where the same command '
        'resumes.',
        e,
        code=128 + signal.SIGINT,
    )
  except Exception as e:  # pylint: disable=broad-except
    if not _is_user_error(e):
      raise
    _fail(str(e), e)
  if result['preempted']:
    sys.exit(128 + checkpoint.last_signal() if checkpoint.last_signal() else PREEMPTED_EXIT_CODE)
  out = result['outputs']
  if result['eval_accuracy'] is not None:
    logging.info('Final test accuracy: %s', _accuracy_text(result['eval_accuracy']))
  print('Results:')
  print(f'  TensorBoard logs:    tensorboard --logdir {out["tensorboard"]}')
  print(f'  metrics (JSON lines): {out["metrics"]}')
  print(f'  checkpoints:          {out["checkpoints"]}')
  if 'dynamics' in out:
    print(f'  dynamics series:      {out["dynamics"]}')


def _accuracy_text(accuracy) -> str:
  """'97.27%' for one run; each replica's and their mean ± sample std for a list of them."""
  if not isinstance(accuracy, (list, tuple)):
    return f'{accuracy:.2f}%'
  each = ', '.join(f'{v:.2f}%' for v in accuracy)
  return f'{each} (replicas 0..{len(accuracy) - 1}; mean {spread_text(accuracy, 2)}%)'


def _parse_flags(argv):
  """absl's flag parsing, with a config override of a field that does not exist
  (`--config.dynamics.windw=5`) or a value absl refuses reported in one line, exit status 1."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an unknown field of the config
    # "'windw'\nDid you mean ...", escaped once more when re-raised as AttributeError
    text = (str(e.args[0]) if e.args else str(e)).replace('\\n', '\n').replace("\\'", "'")
    found = re.search(r"'(\w+)'", text)
    if found is None:
      raise
    name = found.group(1)
    given = next(
        (
            a
            for a in argv
            if a.startswith('--config.') and re.search(rf'[.]{re.escape(name)}(=|$)', a)
        ),
        None,
    )
    if given is None:
      raise
    field = given[len('--config.') :].split('=', 1)[0]
    match = re.search(r'Did you mean "([^"]+)"', text)
    near = field.rsplit('.', 1)[0] + '.' + match.group(1) if match and '.' in field else None
    near = near or (match.group(1) if match else None)
    print(
        f'\nError: {given}: the config has no field {field!r}'
        + (f'; did you mean --config.{near}?' if near else '.'),
        file=sys.stderr,
    )
    sys.exit(USER_ERROR_EXIT_CODE)
  except (flags.Error, ValueError) as e:  # a flag value absl or the config file refuses
    lines = str(e).strip().splitlines()
    if 'Traceback (most recent call last):' in lines:  # ml_collections quotes the config's
      lines = [lines[0].rstrip(': ') + ': ' + lines[-1].strip()]
    print('\nError: ' + '\n'.join(lines), file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
