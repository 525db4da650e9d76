r"""Bytes of the dynamics tracker's device state against the run's length (no timing).

  python benchmarks/bench_state_bytes.py                    # ResNet-50 taps, mean and proj:8
  python benchmarks/bench_state_bytes.py --out=results/performance/bench_state_bytes.json

The tracker's state lives in the train state: every step reads and writes it, every checkpoint
stores it, and (with replicas) it is held once per seed. This prints its size, from
`jax.eval_shape(tracker.init)` (nothing is allocated), for the taps of ResNet-50 under the
`mean` and `proj:8` reductions at 5k, 50k and 450k training steps (90 epochs of ImageNet at
batch 256 is about 450k), with the default dynamics config and one probe sample per epoch
(an epoch of --steps_per_epoch steps). The step-mode part is the ring of the last
`recent_steps` steps; what still grows is the probe history, one column per epoch.
Deterministic: the figures depend on the code, not on the machine.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import jax  # noqa: E402

import dynamics  # noqa: E402
import models  # noqa: E402
from training import programs  # noqa: E402

flags.DEFINE_string('model', 'resnet50', 'whose taps the tracker records')
flags.DEFINE_list('reductions', ['mean', 'proj:8'], 'tap reductions (dynamics.reduction)')
flags.DEFINE_list('steps', ['5000', '50000', '450000'], 'training steps of the run')
flags.DEFINE_integer('steps_per_epoch', 5000, 'steps per epoch (probe samples = steps / this)')
flags.DEFINE_string('out', '', 'write the figures to this JSON file as well')
FLAGS = flags.FLAGS


def state_bytes(shapes, reduction: str, steps: int) -> dict:
  tracker = dynamics.make_tracker(
      {'reduction': reduction}, shapes, steps, max(steps // FLAGS.steps_per_epoch, 1)
  )
  state = jax.eval_shape(tracker.init)
  leaves = jax.tree_util.tree_leaves(state)
  total = sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)
  step_part = sum(v.size * v.dtype.itemsize for k, v in state.items() if k.startswith('step_'))
  return dict(
      signals=len(tracker.signal_names), total_bytes=int(total), step_mode_bytes=int(step_part)
  )


def main(argv):
  del argv
  shapes = programs.tap_shapes(models.get(FLAGS.model, num_classes=10), (32, 32, 3))
  rows = []
  print(f'{FLAGS.model}: {len(shapes)} taps; tracker state bytes (default dynamics config)')
  print(f'{"reduction":>10} {"signals":>8} {"steps":>8} {"state":>13} {"step mode":>13}')
  for reduction in FLAGS.reductions:
    for steps in (int(s) for s in FLAGS.steps):
      row = dict(
          model=FLAGS.model,
          reduction=reduction,
          steps=steps,
          **state_bytes(shapes, reduction, steps),
      )
      rows.append(row)
      print(
          f'{reduction:>10} {row["signals"]:>8} {steps:>8} '
          f'{row["total_bytes"] / 2**10:>9.1f} KiB {row["step_mode_bytes"] / 2**10:>9.1f} KiB'
      )
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump(dict(rows=rows, steps_per_epoch=FLAGS.steps_per_epoch), f, indent=2)
    print(f'Wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
