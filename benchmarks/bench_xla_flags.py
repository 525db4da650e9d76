r"""Which XLA:CPU settings help: bench_train.py once per variant, each in a fresh process
(XLA reads its flags and glibc its malloc settings at process start), then one table.

  python benchmarks/bench_xla_flags.py                  # ResNet-18, batch 128
  python benchmarks/bench_xla_flags.py --models=resnet18,vgg16 --rounds=2
  python benchmarks/bench_xla_flags.py --variants=ynn_all,ynn_dot_reduce \
      --models=resnet18,resnet34,resnet50,vgg16,densenet121,mobilenetv2 --rounds=1 --torch=false

Each variant reports JAX images/s and, with PyTorch installed, the JAX/PyTorch ratio measured
in that same process, so variants that change the process environment for both frameworks
(the malloc settings) are compared fairly. training/runtime.py keeps what this shows helps.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
YNN = '--xla_cpu_experimental_ynn_fusion_type'

# name -> (extra environment, one-line description). 'untuned' turns training/runtime.py's
# additions off; the others start from them.
VARIANTS = {
    'untuned': ({'DYNAMICS_XLA_CPU_TUNING': '0'}, 'XLA defaults (Eigen convolutions and dots)'),
    'default': ({}, 'training/runtime.py: YNNPACK fusions chosen per model family'),
    'ynn_all': (
        {'XLA_FLAGS': f'{YNN}=dot,eltwise,reduce'},
        "YNNPACK for dots, elementwise, reductions (the ResNets' setting)",
    ),
    'ynn_dot_reduce': (
        {'XLA_FLAGS': f'{YNN}=dot,reduce'},
        'YNNPACK for dots and reductions (VGG, DenseNet, MobileNetV2)',
    ),
    'ynn_dot_only': ({'XLA_FLAGS': f'{YNN}=dot'}, 'YNNPACK for dots only'),
    'ynn_with_conv': (
        {'XLA_FLAGS': f'{YNN}=individual_convolution,dot,eltwise,reduce'},
        'YNNPACK also for convolutions',
    ),
    'onednn': ({'XLA_FLAGS': '--xla_cpu_use_onednn=true'}, 'default + oneDNN thunks'),
    'fast_math': ({'XLA_FLAGS': '--xla_cpu_enable_fast_math=true'}, 'default + fast math'),
    'malloc_no_trim': (
        {'MALLOC_MMAP_THRESHOLD_': str(2**32), 'MALLOC_TRIM_THRESHOLD_': str(2**32)},
        'default + glibc keeps freed buffers (both frameworks)',
    ),
}

flags.DEFINE_list('variants', list(VARIANTS), 'Variants to run.')
flags.DEFINE_list('models', ['resnet18'], 'Models (bench_train.py --models).')
flags.DEFINE_integer('rounds', 3, 'bench_train.py --rounds.')
flags.DEFINE_integer('steps', 2, 'bench_train.py --steps.')
flags.DEFINE_bool('torch', True, 'bench_train.py --torch (False: JAX images/s only, faster).')
flags.DEFINE_string('out', 'runs/benchmarks/bench_xla_flags.json', 'JSON output path.')
FLAGS = flags.FLAGS


def run_variant(name: str, workdir: str) -> dict:
  extra, _ = VARIANTS[name]
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env.update(extra)
  out = os.path.join(workdir, f'{name}.json')
  cmd = [
      sys.executable,
      os.path.join(HERE, 'bench_train.py'),
      f'--models={",".join(FLAGS.models)}',
      f'--rounds={FLAGS.rounds}',
      f'--steps={FLAGS.steps}',
      f'--torch={FLAGS.torch}',
      f'--out={out}',
  ]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if proc.returncode:
    return {'error': (proc.stderr or proc.stdout)[-2000:]}
  with open(out) as f:
    return json.load(f)


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f'--variants: unknown {", ".join(unknown)}; known: {", ".join(VARIANTS)}')
  results = {}
  with tempfile.TemporaryDirectory() as workdir:
    for name in FLAGS.variants:
      results[name] = run_variant(name, workdir)
      status = 'failed' if 'error' in results[name] else 'done'
      print(f'  {name}: {status}', flush=True)
  print(
      f"\n{'variant':15s} {'model':12s} {'JAX img/s':>9s} {'JAX/torch':>9s} {'compile s':>9s}  "
      'what it is'
  )
  for name, result in results.items():
    if 'error' in result:
      print(f'{name:15s} failed: {result["error"].strip().splitlines()[-1]}')
      continue
    for row in result['rows']:
      ratio = f"{row['jax_vs_torch']:9.2f}" if 'jax_vs_torch' in row else f"{'-':>9s}"
      print(
          f"{name:15s} {row['model']:12s} {row['images_per_s']['jax']:9.1f} {ratio} "
          f"{row['compile_s']:9.1f}  {VARIANTS[name][1]}"
      )
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(results, f, indent=1)
  print(f'\nJSON: {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
