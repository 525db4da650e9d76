r"""Train-step speed of every CIFAR model: this codebase's jitted step with the dynamics
tracker off and on, and the same step in PyTorch, alternating in one process.

  python benchmarks/bench_train.py                      # all CIFAR models, batch 128
  python benchmarks/bench_train.py --models=resnet18 --rounds=3 --steps=2

For each model it reports images/s of the three steps (medians over the timed steps), the
JAX/PyTorch throughput ratio, the tracker's cost (step time on/off), compile time (JAX) and
first-step time (PyTorch), and the FLOPs of the compiled step (XLA cost analysis) with the
achieved rate against a matmul peak measured on the same machine in the same process.
A table goes to stdout, everything (with the machine and versions) to --out as JSON.

Both sides do the same work on the same uint8 batch: random crop (pad 4) and flip,
normalisation, forward, cross-entropy, backward and an SGD step with momentum and L2 weight
decay, the recipe of configs/default.py. The JAX step is the one train.py runs
(training.programs.build); the tracker runs with its defaults, metrics every step. PyTorch is the
eager CPU build, its default NCHW layout and thread count (one per core); it is optional
(`pip install -r requirements-bench.txt`) and without it the PyTorch columns are left out.
Rounds rotate the order of the three steps so that drift in machine speed hits all alike,
and each kind's timed steps follow one untimed step of the same kind. Each model runs in a
process of its own, started with the XLA:CPU flags train.py would use for it
(training/runtime.py), so no model inherits another's memory or flags.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import runtime  # noqa: E402  (main sets the model's XLA:CPU flags)

USER_XLA_FLAGS = os.environ.get('XLA_FLAGS')  # what the child processes start from

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import default  # noqa: E402
from timing import time_calls  # noqa: E402
from training import programs  # noqa: E402

CIFAR_MODELS = ('resnet18', 'resnet34', 'resnet50', 'vgg16', 'densenet121', 'mobilenetv2')

flags.DEFINE_list('models', list(CIFAR_MODELS), 'Registry names to measure.')
flags.DEFINE_integer('batch', 128, 'Global batch size.')
flags.DEFINE_integer('rounds', 3, 'Rounds; each times every step kind `steps` times.')
flags.DEFINE_integer('steps', 2, 'Timed steps per kind per round.')
flags.DEFINE_bool('torch', True, 'Also time the PyTorch twin (skipped if torch is missing).')
flags.DEFINE_bool('torch_channels_last', False, 'PyTorch in channels-last memory format.')
flags.DEFINE_string('out', 'runs/benchmarks/bench_train.json', 'JSON output path.')
flags.DEFINE_bool(
    'one_process',
    False,
    'Measure every model in this process, with the XLA:CPU '
    'flags of the first, instead of one process per model.',
)
FLAGS = flags.FLAGS

MEAN, STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)  # CIFAR-10, 0..255 units


def machine() -> dict:
  cpu = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  info = dict(
      cpu=cpu,
      cores=os.cpu_count(),
      python=platform.python_version(),
      jax=jax.__version__,
      backend=jax.default_backend(),
      devices=jax.device_count(),
      xla_flags=os.environ.get('XLA_FLAGS', ''),
  )
  try:
    import torch

    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  except ImportError:
    pass
  return info


def matmul_peak(n=2048) -> dict:
  """Best float32 n x n matmul rate (GFLOP/s) of XLA and, when present, PyTorch."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
  mm = jax.jit(lambda a: a @ a)
  peak = {'jax': 2 * n**3 / min(time_calls(lambda: mm(a).block_until_ready())) / 1e9}
  if _torch() is not None:
    import torch

    at = torch.from_numpy(np.asarray(a))
    peak['torch'] = 2 * n**3 / min(time_calls(lambda: at @ at)) / 1e9
  return peak


def _torch():
  if not FLAGS.torch:
    return None
  try:
    import torch

    return torch
  except ImportError:
    return None


class JaxStep:
  """The train.py step for `name`, tracker on or off, compiled ahead of time."""

  def __init__(self, name, config, dynamics, images, labels):
    config = config.copy_and_resolve_references()
    config.dynamics.enabled = dynamics
    window = config.dynamics.window
    total = window + 10_000
    self.exp = programs.build(
        config,
        10,
        images.shape[1:],
        jnp.asarray(MEAN),
        jnp.asarray(STD),
        steps_per_epoch=total,
        total_steps=total,
        mesh=programs.make_mesh(),
    )
    self.state = self.exp.init_state(0)
    if dynamics:  # past the first window, so that every timed step computes the metrics
      self.state = self.state.replace(step=jnp.asarray(window, jnp.int32))
    self.images, self.labels = images, labels
    t = time.perf_counter()
    self.compiled = self.exp.train_step.lower(self.state, images, labels).compile()
    self.compile_s = time.perf_counter() - t
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost.get('flops', float('nan')))
    self.dynamics = dynamics

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.images, self.labels)
    jax.block_until_ready((self.state, metrics))
    if self.dynamics and not np.isfinite(float(metrics['dynamics/dsi'])):
      raise RuntimeError('the tracker did not compute its metrics in the timed step')
    return float(metrics['train/loss'])


class TorchStep:
  """The same step in PyTorch (benchmarks/torch_models.py twins), on the same batch."""

  def __init__(self, name, config, images, labels, channels_last):
    import torch
    import torch_models

    self.torch = torch
    torch.manual_seed(0)
    self.model = torch_models.get(name, 10).train()
    self.opt = torch.optim.SGD(
        self.model.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    self.images = torch.from_numpy(np.asarray(images))
    self.labels = torch.from_numpy(np.asarray(labels)).long()
    self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    self.std = torch.tensor(STD).view(1, 3, 1, 1)
    self.pad, self.smoothing = config.crop_padding, config.label_smoothing
    self.channels_last = channels_last
    if channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    t = time.perf_counter()
    self()
    self.first_step_s = time.perf_counter() - t

  def augment(self):
    torch = self.torch
    x = self.images.permute(0, 3, 1, 2).float()
    b, _, h, w = x.shape
    p = self.pad
    x = torch.nn.functional.pad(x, (p, p, p, p))  # zeros = black, as in data/augment.py
    dy, dx = torch.randint(0, 2 * p + 1, (2, b)).tolist()
    x = torch.stack([x[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.rand(b) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    x = (x - self.mean) / self.std
    return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

  def __call__(self):
    self.opt.zero_grad(set_to_none=True)
    logits = self.model(self.augment())
    loss = self.torch.nn.functional.cross_entropy(
        logits, self.labels, label_smoothing=self.smoothing
    )
    loss.backward()
    self.opt.step()
    return loss.item()


def config_and_batch(name: str):
  """configs/default.py for `name` at --batch, and a fixed batch: u8[B, 32, 32, 3], i32[B]."""
  config = default.get_config(f'model={name}')
  config.batch_size = FLAGS.batch
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (FLAGS.batch, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, (FLAGS.batch,)), jnp.int32)
  return config, images, labels


def measure(name: str) -> dict:
  config, images, labels = config_and_batch(name)
  steps = {
      'jax': JaxStep(name, config, False, images, labels),
      'jax_dynamics': JaxStep(name, config, True, images, labels),
  }
  if _torch() is not None:
    steps['torch'] = TorchStep(name, config, images, labels, FLAGS.torch_channels_last)
  times = {kind: [] for kind in steps}
  kinds = list(steps)
  for r in range(FLAGS.rounds):
    for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
      # One untimed step after each switch: the first step after another program ran pays
      # for memory that program's buffers took (page faults, cache), which a training run,
      # repeating one step, does not. Without it the plain ResNet-50 step measured 12 s here
      # against 9.2 s in a process of its own, and slower than the step with the tracker.
      steps[kind]()
      for _ in range(FLAGS.steps):
        t = time.perf_counter()
        steps[kind]()
        times[kind].append(time.perf_counter() - t)
  median = {kind: statistics.median(ts) for kind, ts in times.items()}
  row = dict(
      model=name,
      batch=FLAGS.batch,
      timed_steps=len(times['jax']),
      xla_flags=os.environ.get('XLA_FLAGS', ''),
      step_s=median,
      images_per_s={k: FLAGS.batch / v for k, v in median.items()},
      dynamics_overhead=median['jax_dynamics'] / median['jax'],
      compile_s=steps['jax'].compile_s,
      gflop_per_step=steps['jax'].flops / 1e9,
      gflop_per_s=steps['jax'].flops / 1e9 / median['jax'],
  )
  if 'torch' in steps:
    row['jax_vs_torch'] = median['torch'] / median['jax']
    row['torch_first_step_s'] = steps['torch'].first_step_s
  return row


def print_table(rows, peak):
  has_torch = 'jax_vs_torch' in rows[0]
  head = f"{'model':12s} {'JAX img/s':>9s} {'+dyn img/s':>10s} {'dyn cost':>8s}"
  if has_torch:
    head += f" {'torch img/s':>11s} {'JAX/torch':>9s}"
  head += f" {'compile s':>9s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'% peak':>6s}"
  print(head)
  for r in rows:
    ips = r['images_per_s']
    line = (
        f"{r['model']:12s} {ips['jax']:9.1f} {ips['jax_dynamics']:10.1f} "
        f"{r['dynamics_overhead']:8.3f}"
    )
    if has_torch:
      line += f" {ips['torch']:11.1f} {r['jax_vs_torch']:9.2f}"
    line += (
        f" {r['compile_s']:9.1f} {r['gflop_per_step']:10.1f} {r['gflop_per_s']:8.1f} "
        f"{100 * r['gflop_per_s'] / peak['jax']:6.1f}"
    )
    print(line)


def measure_in_child(name: str) -> dict:
  """measure(name) in a fresh process (this script, --models=name), so that it starts with the
  model's own XLA:CPU flags."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'row.json')
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        f'--models={name}',
        f'--out={out}',
        f'--batch={FLAGS.batch}',
        f'--rounds={FLAGS.rounds}',
        f'--steps={FLAGS.steps}',
        f'--torch={FLAGS.torch}',
        f'--torch_channels_last={FLAGS.torch_channels_last}',
    ]
    env = dict(os.environ)
    env.pop('XLA_FLAGS', None)  # this process's flags (the defaults): the child picks the model's
    if USER_XLA_FLAGS is not None:
      env['XLA_FLAGS'] = USER_XLA_FLAGS
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
      raise RuntimeError(f'bench_train.py --models={name} failed:\n{proc.stderr[-3000:]}')
    with open(out) as f:
      return json.load(f)['rows'][0]


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.models) - set(CIFAR_MODELS))
  if unknown:
    raise app.UsageError(f'--models: {", ".join(unknown)} not among {", ".join(CIFAR_MODELS)}')
  in_process = len(FLAGS.models) == 1 or FLAGS.one_process
  runtime.configure_xla_cpu(model=FLAGS.models[0] if in_process else None)
  info = machine()
  peak = matmul_peak()
  print(
      f"{info['cpu']}, {info['cores']} cores; jax {info['jax']} ({info['backend']})"
      + (f", torch {info['torch']} ({info['torch_threads']} threads)" if 'torch' in info else '')
      + '\nfloat32 matmul peak (2048^3): '
      + ', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in peak.items())
  )
  rows = []
  for name in FLAGS.models:
    t = time.perf_counter()
    rows.append(measure(name) if in_process else measure_in_child(name))
    print(
        f'  {name}: measured in {time.perf_counter() - t:.0f} s; XLA_FLAGS: '
        f"{rows[-1]['xla_flags'] or '(none)'}",
        flush=True,
    )
  print(
      f'\nbatch {FLAGS.batch}, medians of {rows[0]["timed_steps"]} timed steps per kind; '
      'dyn cost = step time with the tracker / without'
  )
  print_table(rows, peak)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(dict(machine=info, matmul_peak_gflop_s=peak, rows=rows), f, indent=1)
  print(f'\nJSON: {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
