r"""Trains a vision network and measures its layer dynamics.

  python train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python train.py --config=configs/default.py:dataset=cifar100 --workdir=runs/c100 \
      --config.dynamics.reduction=proj:8

Several processes (one per host, or per GPU), each started with the same flags plus its own id:

  python train.py --config=... --workdir=<shared dir> \
      --coordinator_address=10.0.0.1:12345 --num_processes=2 --process_id=0   # and =1

On a TPU pod, SLURM, Open MPI or Kubernetes, `--distributed` alone lets jax.distributed detect
them. Exit status: 0 when the run finished (or stopped as asked), 143 when it was preempted
(SIGTERM) after saving a checkpoint; running the same command again resumes it.

All logic lives in training.loop.train_and_evaluate(config, workdir).
"""

import os
import sys

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
from training import runtime  # noqa: E402
from training.loop import train_and_evaluate  # noqa: E402

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what an unhandled SIGTERM would report


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
flags.DEFINE_bool('overwrite', False,
                  'If the workdir holds a run with a different config, move it to '
                  '<workdir>.old-<timestamp> and start afresh (without this flag such a run '
                  'refuses to start). A workdir of the same config is resumed either way.')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() and let it detect the cluster (Cloud TPU '
                  'pods, SLURM, Open MPI, Kubernetes). Implied by the three flags below.')
flags.DEFINE_string('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS'),
                    'host:port of process 0, the same for every process (default: '
                    '$JAX_COORDINATOR_ADDRESS).')
flags.DEFINE_integer('num_processes', _env_int('JAX_NUM_PROCESSES'),
                     'How many processes take part (default: $JAX_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', _env_int('JAX_PROCESS_ID'),
                     'This process, 0 .. num_processes - 1 (default: $JAX_PROCESS_ID).')
flags.DEFINE_bool('verbose', False,
                  'Also log every scalar and histogram written (as absl -v 1 does), and the '
                  "libraries' informational messages; by default the console shows one "
                  'progress line per log interval and one line per epoch.')
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
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  _connect_collectives()
  logging.info('jax.distributed: process %d of %d, %d local device(s), %d in all.',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


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
      NamedSharding(mesh, P('data')), np.ones(jax.local_device_count(), np.float32))
  total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(ones)  # the step's sums
  if int(total) != jax.device_count():
    raise RuntimeError(f'A sum over all {jax.device_count()} devices gave {int(total)}: the '
                       'processes do not see the same devices.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.verbose:
    logging.set_verbosity(logging.DEBUG)
  # Before anything touches a device: XLA reads its flags when the backend starts.
  runtime.configure_xla_cpu(model=FLAGS.config.model)
  initialize_distributed()
  result = train_and_evaluate(FLAGS.config, FLAGS.workdir, overwrite=FLAGS.overwrite)
  if result['preempted']:
    sys.exit(PREEMPTED_EXIT_CODE)
  out = result['outputs']
  if result['eval_accuracy'] is not None:
    logging.info('Final test accuracy: %.2f%%', result['eval_accuracy'])
  print('Results:')
  print(f'  TensorBoard logs:    tensorboard --logdir {out["tensorboard"]}')
  print(f'  metrics (JSON lines): {out["metrics"]}')
  print(f'  checkpoints:          {out["checkpoints"]}')
  if 'dynamics' in out:
    print(f'  dynamics series:      {out["dynamics"]}')


if __name__ == '__main__':
  app.run(main)
