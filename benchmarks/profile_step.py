r"""Where one train step spends its time: a jax.profiler trace of one step, summed by kind of
XLA operation (fusion names without their numbers), largest first.

  python benchmarks/profile_step.py --model=mobilenetv2
  python benchmarks/profile_step.py --model=resnet50 --dynamics      # with the tracker

The times are thread time (two threads on two cores can both count), and on the CPU the
convolutions that run as Eigen tasks are not named in the trace, so the total can fall short
of the step. The raw trace stays in --trace_dir for TensorBoard's profile plugin.
"""

import collections
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import runtime  # noqa: E402  (main sets the model's XLA:CPU flags)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import default  # noqa: E402
from training import programs  # noqa: E402

flags.DEFINE_string('model', 'resnet18', 'Registry name.')
flags.DEFINE_integer('batch', 128, 'Global batch size.')
flags.DEFINE_bool('dynamics', False, 'Trace the step with the tracker on.')
flags.DEFINE_integer('top', 15, 'Rows to print.')
flags.DEFINE_string('trace_dir', 'runs/benchmarks/trace', 'Where the trace is written.')
FLAGS = flags.FLAGS


def op_times(trace_dir: str) -> collections.Counter:
  """Milliseconds per operation kind from the XSpace protobuf that jax.profiler wrote."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # ships with tensorflow-cpu

  path = max(glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True), key=os.path.getmtime)
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  totals = collections.Counter()
  for plane in space.planes:
    if plane.name != '/host:CPU':
      continue
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      if line.name == 'python':
        continue
      for event in line.events:
        name = names.get(event.metadata_id, '?')
        # Skip Python frames ($file:line) and the executor's spans, which contain the ops.
        if not name.startswith('$') and 'Execute' not in name:
          totals[re.sub(r'[._]\d+$', '', name)] += event.duration_ps / 1e9
  return totals


def main(argv):
  del argv
  runtime.configure_xla_cpu(model=FLAGS.model)  # before JAX starts, as train.py does
  os.environ['XLA_FLAGS'] += ' --xla_cpu_enable_xprof_traceme=true'  # name the thunks
  config = default.get_config(f'model={FLAGS.model}')
  config.batch_size = FLAGS.batch
  config.dynamics.enabled = FLAGS.dynamics
  total = config.dynamics.window + 10
  exp = programs.build(
      config,
      10,
      (32, 32, 3),
      jnp.full(3, 120.0),
      jnp.full(3, 64.0),
      steps_per_epoch=total,
      total_steps=total,
      mesh=programs.make_mesh(),
  )
  state = exp.init_state(0)
  if FLAGS.dynamics:  # past the first window, so that the step computes the metrics
    state = state.replace(step=jnp.asarray(config.dynamics.window, jnp.int32))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (FLAGS.batch, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, (FLAGS.batch,)), jnp.int32)
  for _ in range(2):  # compile and warm up
    state, metrics = exp.train_step(state, images, labels)
    jax.block_until_ready((state, metrics))
  with jax.profiler.trace(FLAGS.trace_dir):
    state, metrics = exp.train_step(state, images, labels)
    jax.block_until_ready((state, metrics))
  totals = op_times(FLAGS.trace_dir)
  print(
      f'{FLAGS.model}, batch {FLAGS.batch}, tracker {"on" if FLAGS.dynamics else "off"}: '
      f'{sum(totals.values()):.0f} ms of named operations (thread time)'
  )
  for name, ms in totals.most_common(FLAGS.top):
    print(f'{ms:9.1f} ms  {name}')


if __name__ == '__main__':
  app.run(main)
