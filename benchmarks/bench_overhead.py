r"""Cost of the dynamics tracker inside the train step: the same model and batch with the
tracker on and off, alternating in one process; prints the median step-time ratio.

  python benchmarks/bench_overhead.py                      # ResNet-18, batch 128
  python benchmarks/bench_overhead.py --model=resnet18_tiny --batch=64 --rounds=5

Metrics are computed every step (dynamics.every_steps=1), the worst case.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import default  # noqa: E402
from training import loop  # noqa: E402

flags.DEFINE_string('model', 'resnet18', 'Registry name.')
flags.DEFINE_integer('batch', 128, 'Global batch size.')
flags.DEFINE_integer('rounds', 5, 'Alternating rounds (each: on then off, or off then on).')
flags.DEFINE_integer('steps', 3, 'Timed steps per configuration per round.')
flags.DEFINE_string('reduction', 'mean', 'dynamics.reduction.')
flags.DEFINE_integer('window', 256, 'dynamics.window.')
FLAGS = flags.FLAGS


def make(enabled: bool):
  config = default.get_config(f'model={FLAGS.model}')
  config.batch_size = FLAGS.batch
  config.dynamics.enabled = enabled
  config.dynamics.every_steps = 1
  config.dynamics.reduction = FLAGS.reduction
  config.dynamics.window = FLAGS.window
  total = FLAGS.window + FLAGS.rounds * FLAGS.steps * 2 + 8
  exp = loop.build(config, 10, (32, 32, 3), jnp.full(3, 120.0), jnp.full(3, 64.0),
                   steps_per_epoch=total, total_steps=total, mesh=loop.make_mesh())
  state = exp.init_state(0)
  if enabled:
    # Start past the first window so that every timed step computes the full metrics.
    state = state.replace(step=jnp.asarray(FLAGS.window, jnp.int32))
  return exp, state


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 255, (FLAGS.batch, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, (FLAGS.batch,)), jnp.int32)
  runs = {}
  for enabled in (False, True):
    exp, state = make(enabled)
    t = time.perf_counter()
    state, m = exp.train_step(state, images, labels)
    jax.block_until_ready(m)
    print(f'dynamics {"on " if enabled else "off"}: compile + first step '
          f'{time.perf_counter() - t:.1f} s')
    runs[enabled] = [exp, state, []]
  for r in range(FLAGS.rounds):
    for enabled in ((False, True) if r % 2 == 0 else (True, False)):
      exp, state, times = runs[enabled]
      for _ in range(FLAGS.steps):
        t = time.perf_counter()
        state, m = exp.train_step(state, images, labels)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t)
      runs[enabled][1] = state
      if enabled:
        assert np.isfinite(float(m['dynamics/dsi'])), 'metrics were not computed'
  off, on = np.median(runs[False][2]), np.median(runs[True][2])
  print(f'model {FLAGS.model}, batch {FLAGS.batch}, {jax.device_count()} {jax.devices()[0].platform}'
        f' device(s), reduction {FLAGS.reduction}, window {FLAGS.window}, metrics every step')
  print(f'median step: off {off * 1e3:.1f} ms, on {on * 1e3:.1f} ms, '
        f'ratio on/off {on / off:.3f} ({len(runs[True][2])} steps each)')


if __name__ == '__main__':
  app.run(main)
