r"""Where a model's train step goes, JAX against PyTorch: every convolution of the model timed
on its own (forward and both gradients, batch 128, each framework on its own kernel), summed
with its multiplicity, next to the whole train step; the rest of the step (BatchNorm, ReLU,
concatenation, pooling, loss, optimizer) is the difference.

  python benchmarks/bench_layers.py                         # VGG-16, DenseNet-121
  python benchmarks/bench_layers.py --models=mobilenetv2 --rows=10

The convolutions are found by tracing the model with models/layers.conv_general_dilated
wrapped, so the JAX column is the convolution the model runs (including the CPU rewrites).
The PyTorch column is torch.nn.functional.conv2d in NCHW, as in benchmarks/torch_models.py.
"""

import collections
import functools
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from training import runtime  # noqa: E402
from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402
from models import layers  # noqa: E402
from timing import time_calls  # noqa: E402
import bench_conv  # noqa: E402
import bench_train  # noqa: E402  (its step builders and flags: --batch, --torch)

flags.DEFINE_integer('rows', 12, 'Convolution shapes to list per model, costliest JAX first.')
flags.DEFINE_bool('whole_step', True, 'Also time the whole train step of both frameworks.')
flags.adopt_module_key_flags(bench_train)
flags.FLAGS.set_default('models', ['vgg16', 'densenet121'])
flags.FLAGS.set_default('out', 'runs/benchmarks/bench_layers.json')
FLAGS = flags.FLAGS

# (input shape [B, H, W, C], kernel shape [kh, kw, C / groups, K], strides, groups)
ConvShape = collections.namedtuple('ConvShape', 'x w strides groups')


def model_convolutions(name: str, batch: int) -> collections.Counter:
  """ConvShape -> how many times one forward pass of `name` runs it (32x32 inputs)."""
  found = collections.Counter()
  native = layers.conv_general_dilated

  def recording(lhs, rhs, window_strides, padding, **kwargs):
    found[
        ConvShape(
            tuple(lhs.shape),
            tuple(rhs.shape),
            tuple(window_strides),
            kwargs.get('feature_group_count', 1),
        )
    ] += 1
    return native(lhs, rhs, window_strides, padding, **kwargs)

  layers.conv_general_dilated = recording  # conv_and_norm looks it up when a model is built
  try:
    model = models.get(name, 10)
    jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32),
    )
  finally:
    layers.conv_general_dilated = native
  return found


def jax_conv_ms(shape: ConvShape) -> float:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape.x), jnp.float32)
  w = jnp.asarray(rng.standard_normal(shape.w) * 0.05, jnp.float32)
  conv = lambda x, w: layers.conv_general_dilated(
      x, w, shape.strides, 'SAME', feature_group_count=shape.groups
  )
  g = jnp.ones(jax.eval_shape(conv, x, w).shape, jnp.float32)
  step = jax.jit(functools.partial(bench_conv.forward_backward, conv))
  return 1e3 * statistics.median(time_calls(lambda: jax.block_until_ready(step(x, w, g))))


def torch_conv_ms(shape: ConvShape) -> float:
  import torch

  b, h, w_, c = shape.x
  kh, kw, cg, k = shape.w
  x = torch.randn(b, c, h, w_, requires_grad=True)
  w = (torch.randn(k, cg, kh, kw) * 0.05).requires_grad_()
  # 'SAME' for the odd kernels and even maps used here (stride 2 pads one side in XLA and
  # both in PyTorch: same output size and work).
  conv = lambda: torch.nn.functional.conv2d(
      x, w, stride=shape.strides, padding=kh // 2, groups=shape.groups
  )
  g = torch.ones_like(conv())

  def forward_backward():
    x.grad = w.grad = None
    conv().backward(g)

  return 1e3 * statistics.median(time_calls(forward_backward))


def describe(shape: ConvShape) -> str:
  (_, h, w, c), (kh, kw, _, k) = shape.x, shape.w
  kind = 'dw ' if shape.groups > 1 else ''
  stride = f' s{shape.strides[0]}' if shape.strides[0] > 1 else ''
  return f'{kind}{kh}x{kw} {c}->{k} @{h}x{w}{stride}'


def measure(name: str, has_torch: bool) -> dict:
  convs = model_convolutions(name, FLAGS.batch)
  rows = []
  for shape, count in convs.items():
    row = dict(conv=describe(shape), count=count, jax_ms=jax_conv_ms(shape))
    if has_torch:
      row['torch_ms'] = torch_conv_ms(shape)
    rows.append(row)
  total = {'jax': sum(r['count'] * r['jax_ms'] for r in rows) / 1e3}
  if has_torch:
    total['torch'] = sum(r['count'] * r['torch_ms'] for r in rows) / 1e3
  result = dict(
      model=name,
      batch=FLAGS.batch,
      conv_s=total,
      convs=rows,
      conv_layers=sum(convs.values()),
      conv_shapes=len(convs),
  )
  if FLAGS.whole_step:
    result['step_s'] = step_seconds(name, has_torch)
  return result


def step_seconds(name: str, has_torch: bool) -> dict:
  """Median whole-step seconds of train.py's step (tracker off) and the PyTorch twin."""
  config, images, labels = bench_train.config_and_batch(name)
  steps = {'jax': bench_train.JaxStep(name, config, False, images, labels)}
  if has_torch:
    steps['torch'] = bench_train.TorchStep(name, config, images, labels, False)
  return {kind: statistics.median(time_calls(step, repeats=3)) for kind, step in steps.items()}


def print_model(r: dict, has_torch: bool):
  print(
      f"\n{r['model']}: {r['conv_layers']} convolutions, {r['conv_shapes']} distinct shapes "
      f"(forward + both gradients, batch {r['batch']}; ms per call)"
  )
  head = f"  {'convolution':28s} {'count':>5s} {'JAX ms':>8s}"
  if has_torch:
    head += f" {'torch ms':>8s} {'JAX/torch time':>14s}"
  print(head)
  for row in sorted(r['convs'], key=lambda row: -row['count'] * row['jax_ms'])[: FLAGS.rows]:
    line = f"  {row['conv']:28s} {row['count']:5d} {row['jax_ms']:8.1f}"
    if has_torch:
      line += f" {row['torch_ms']:8.1f} {row['jax_ms'] / row['torch_ms']:14.2f}"
    print(line)
  kinds = ['jax', 'torch'] if has_torch else ['jax']
  print(f"  {'':28s} {'':5s} " + ' '.join(f'{k + " s":>8s}' for k in kinds))
  print(f"  {'all convolutions':28s} {'':5s} " + ' '.join(f"{r['conv_s'][k]:8.2f}" for k in kinds))
  if 'step_s' in r:
    print(
        f"  {'whole train step':28s} {'':5s} " + ' '.join(f"{r['step_s'][k]:8.2f}" for k in kinds)
    )
    print(
        f"  {'rest of the step':28s} {'':5s} "
        + ' '.join(f"{r['step_s'][k] - r['conv_s'][k]:8.2f}" for k in kinds)
    )


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.models) - set(bench_train.CIFAR_MODELS))
  if unknown:
    raise app.UsageError(
        f'--models: {", ".join(unknown)} not among ' f'{", ".join(bench_train.CIFAR_MODELS)}'
    )
  flag_sets = {name: runtime.cpu_flags(name) for name in FLAGS.models}
  if any(f != flag_sets[FLAGS.models[0]] for f in flag_sets.values()):
    raise app.UsageError(
        f'--models: these run with different XLA:CPU flags ({flag_sets}); '
        'measure them in separate runs.'
    )
  runtime.configure_xla_cpu(model=FLAGS.models[0])
  has_torch = bench_train._torch() is not None
  print(
      f'jax {jax.__version__} ({jax.default_backend()}), XLA_FLAGS: {os.environ["XLA_FLAGS"]}'
      + (f', torch {bench_train._torch().__version__}' if has_torch else ', no torch')
  )
  results = []
  for name in FLAGS.models:
    results.append(measure(name, has_torch))
    print_model(results[-1], has_torch)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(dict(machine=bench_train.machine(), results=results), f, indent=1)
  print(f'\nJSON: {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
