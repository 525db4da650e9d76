r"""Seeds in one program: images/s of N replicas in one step against N single-seed steps.

  python benchmarks/bench_replicas.py                                # the full table
  python benchmarks/bench_replicas.py --rounds=1 --replicas=1,2,4    # a quick look

For each model (ResNet-18 and VGG-16, width 16, batch 128 per replica) and N in --replicas it
times, alternating in one process (rounds rotate the order; each kind's timed steps follow
one untimed step of that kind):

- `seq`: N separate single-seed train steps (the train.py step of a 1-replica run), one
  after another, each on its own state and batch: what N runs would do;
- `vmap` and `unroll` (and `map` with --impls): the N-replica step of config.replicas = N
  with that replica_impl, the batches gathered inside the step from the device-resident
  uint8 train set.

It reports images/s summed over replicas, the speed-up over `seq`, compile time (once for
the packed step against N times the single step's, which N runs pay), and the host time
that assembling the N uint8 batches on the host (and copying them to the device) would add
per step, which the in-step gather avoids. The tracker is off (--dynamics to turn it on).
Each model runs in a process of its own with the XLA:CPU flags train.py uses for it. A table
goes to stdout, everything to --out as JSON.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import runtime  # noqa: E402  (main sets the model's XLA:CPU flags)

USER_XLA_FLAGS = os.environ.get('XLA_FLAGS')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import default  # noqa: E402
from training import programs, replicas  # noqa: E402

flags.DEFINE_list('models', ['resnet18', 'vgg16'], 'Registry names.')
flags.DEFINE_integer('width', 16, 'model_args.width (base channels).')
flags.DEFINE_integer('batch', 128, 'Batch size per replica.')
flags.DEFINE_list('replicas', ['1', '2', '4', '8'], 'Replica counts N.')
flags.DEFINE_list('impls', ['vmap', 'unroll'], 'Packed implementations to time (map: slow on CPU).')
flags.DEFINE_integer('rounds', 3, 'Rounds; each times every kind `steps` times.')
flags.DEFINE_integer('steps', 2, 'Timed steps per kind per round.')
flags.DEFINE_bool('dynamics', False, 'Tracker on (its defaults).')
flags.DEFINE_string('out', 'runs/benchmarks/bench_replicas.json', 'JSON output path.')
FLAGS = flags.FLAGS

MEAN, STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
TRAIN_SIZE = 2048  # uint8 images on the device; only their count matters for the gather


def _config(model: str, n: int, impl: str = 'auto'):
  config = default.get_config()
  config.model = model
  config.model_args.width = FLAGS.width
  config.batch_size = FLAGS.batch
  config.dynamics.enabled = FLAGS.dynamics
  config.replicas = n
  config.replica_impl = impl
  return config


def _build(config):
  total = 10_000
  mesh = programs.make_mesh() if config.replicas == 1 else replicas.make_mesh(config)
  return programs.build(
      config,
      10,
      (32, 32, 3),
      jnp.asarray(MEAN),
      jnp.asarray(STD),
      steps_per_epoch=total,
      total_steps=total,
      mesh=mesh,
  )


class Sequential:
  """N single-seed steps, one after another, each on its own state and batch."""

  def __init__(self, model, n, images, labels, indices):
    self.exp = _build(_config(model, 1))
    self.states = [self.exp.init_state(k) for k in range(n)]
    self.batches = [(jnp.asarray(images[i]), jnp.asarray(labels[i])) for i in indices]
    t = time.perf_counter()
    self.compiled = self.exp.train_step.lower(self.states[0], *self.batches[0]).compile()
    self.compile_s = time.perf_counter() - t

  def __call__(self):
    for k, batch in enumerate(self.batches):
      self.states[k], metrics = self.compiled(self.states[k], *batch)
    jax.block_until_ready((self.states, metrics))


class Packed:
  """The N-replica step (config.replicas = N) with the given implementation."""

  def __init__(self, model, n, impl, images, labels, indices):
    self.exp = _build(_config(model, n, impl))
    self.state = jax.device_put(
        replicas.stack([self.exp.init_state(k) for k in range(n)]), self.exp.state_sharding
    )
    self.args = (
        jnp.asarray(indices),
        jnp.asarray(replicas.resident_images(images)),
        jnp.asarray(labels),
    )
    t = time.perf_counter()
    self.compiled = self.exp.train_step.lower(self.state, *self.args).compile()
    self.compile_s = time.perf_counter() - t

  def __call__(self):
    self.state, metrics = self.compiled(self.state, *self.args)
    jax.block_until_ready((self.state, metrics))


def host_assembly_s(images, labels, indices, repeats=5) -> float:
  """Seconds per step to gather N uint8 batches on the host and copy them to the device."""
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    x = jax.device_put(images[indices.reshape(-1)].reshape(indices.shape + images.shape[1:]))
    y = jax.device_put(labels[indices])
    jax.block_until_ready((x, y))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def measure(model: str, n: int) -> dict:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (TRAIN_SIZE, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (TRAIN_SIZE,)).astype(np.int32)
  indices = np.stack([rng.permutation(TRAIN_SIZE)[: FLAGS.batch] for _ in range(n)]).astype(
      np.int32
  )
  kinds = {'seq': Sequential(model, n, images, labels, indices)}
  if n > 1:
    for impl in FLAGS.impls:
      kinds[impl] = Packed(model, n, impl, images, labels, indices)
  times = {k: [] for k in kinds}
  names = list(kinds)
  for r in range(FLAGS.rounds):
    for kind in names[r % len(names) :] + names[: r % len(names)]:
      kinds[kind]()  # untimed: the first step after another program pays for its memory
      for _ in range(FLAGS.steps):
        t = time.perf_counter()
        kinds[kind]()
        times[kind].append(time.perf_counter() - t)
  median = {k: statistics.median(v) for k, v in times.items()}
  images_per_s = {k: n * FLAGS.batch / v for k, v in median.items()}
  return dict(
      model=model,
      width=FLAGS.width,
      batch_per_replica=FLAGS.batch,
      replicas=n,
      timed_steps=len(times['seq']),
      step_s=median,
      images_per_s=images_per_s,
      speedup={k: images_per_s[k] / images_per_s['seq'] for k in images_per_s},
      compile_s={
          'seq_once': kinds['seq'].compile_s,
          'seq_n_runs': n * kinds['seq'].compile_s,
          **{k: kinds[k].compile_s for k in kinds if k != 'seq'},
      },
      host_assembly_s=host_assembly_s(images, labels, indices),
      auto_impl=replicas.resolve_impl(_config(model, n)),
      xla_flags=os.environ.get('XLA_FLAGS', ''),
  )


def print_table(rows):
  impls = [i for i in FLAGS.impls]
  head = f"{'model':10s} {'N':>2s} {'seq img/s':>9s}"
  for i in impls:
    head += f" {i + ' img/s':>11s} {i + '/seq':>9s}"
  head += f" {'compile s: N runs':>17s}" + ''.join(f' {i:>6s}' for i in impls)
  head += f" {'host batch ms':>13s}"
  print(head)
  for r in rows:
    ips, sp, cs = r['images_per_s'], r['speedup'], r['compile_s']
    line = f"{r['model']:10s} {r['replicas']:2d} {ips['seq']:9.1f}"
    for i in impls:
      line += f' {ips[i]:11.1f} {sp[i]:9.2f}' if i in ips else f" {'-':>11s} {'-':>9s}"
    line += f" {cs['seq_n_runs']:17.1f}" + ''.join(
        f' {cs[i]:6.1f}' if i in cs else f" {'-':>6s}" for i in impls
    )
    line += f" {1e3 * r['host_assembly_s']:13.2f}"
    print(line, flush=True)


def measure_in_child(model: str) -> list:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'rows.json')
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        f'--models={model}',
        f'--out={out}',
        f'--width={FLAGS.width}',
        f'--batch={FLAGS.batch}',
        f'--replicas={",".join(FLAGS.replicas)}',
        f'--impls={",".join(FLAGS.impls)}',
        f'--rounds={FLAGS.rounds}',
        f'--steps={FLAGS.steps}',
        f'--dynamics={FLAGS.dynamics}',
    ]
    env = dict(os.environ)
    env.pop('XLA_FLAGS', None)
    if USER_XLA_FLAGS is not None:
      env['XLA_FLAGS'] = USER_XLA_FLAGS
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
      raise RuntimeError(f'bench_replicas.py --models={model} failed:\n{proc.stderr[-3000:]}')
    with open(out) as f:
      return json.load(f)['rows']


def main(argv):
  del argv
  in_process = len(FLAGS.models) == 1
  runtime.configure_xla_cpu(model=FLAGS.models[0] if in_process else None)
  counts = [int(n) for n in FLAGS.replicas]
  rows = []
  for model in FLAGS.models:
    t = time.perf_counter()
    if in_process:
      for n in counts:
        rows.append(measure(model, n))
        print(f'  {model} N={n}: done after {time.perf_counter() - t:.0f} s', flush=True)
    else:
      rows += measure_in_child(model)
      print(f'  {model}: measured in {time.perf_counter() - t:.0f} s', flush=True)
  print(
      f'\n{jax.default_backend()} ({os.cpu_count()} cores); width {FLAGS.width}, batch '
      f'{FLAGS.batch} per replica; medians of {rows[0]["timed_steps"]} timed steps; img/s '
      'summed over replicas; x/seq = speed-up over N single-seed steps; compile: N runs = N '
      'x the single step, else the packed step once; host batch = gathering the N batches '
      'on the host + copy (avoided)'
  )
  print_table(rows)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(
        dict(backend=jax.default_backend(), cores=os.cpu_count(), jax=jax.__version__, rows=rows),
        f,
        indent=1,
    )
  print(f'\nJSON: {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
