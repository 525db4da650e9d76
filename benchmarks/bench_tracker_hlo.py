r"""Where the tracker's bytes go in the TPU compiler's optimized program, read from its HLO.

  python benchmarks/bench_tracker_hlo.py --out=results/performance/bench_tracker_hlo.json

pod_compile.py gives the tracker's share of a train step's bytes accessed (tracker on against
off). This says where that share comes from. For each setting it compiles the train step with
the tracker on and off, on a small slice of the setting's chip with the same images per chip
(a data-parallel step's per-device program depends on the per-chip batch, not on the slice's
size, apart from its collectives), and reads:

- the compiler's `cost_analysis()` bytes accessed, on and off, and those of the window
  evaluation compiled alone for the same chip (bench_tracker_tpu.py's `window_metrics_cost`);
  `rest` = on - off - evaluation is what the tracker costs on the steps where no window is
  evaluated;
- the optimized HLO (`compiled.as_text()`), where the tracker's ops carry its `jax.named_scope`
  names (dynamics/tracker.py: SIGNALS_SCOPE for the tap reductions, WINDOW_SCOPE for the window
  evaluation). Each top-level instruction is put in one class: a tap reduction fused into the
  fusion that produces its activation (the activation is read once, for both), a tap reduction
  on its own (one more read of the activation), the window evaluation, the memory-space copies
  (`copy-start` / `slice-start` and their `-done`: asynchronous copies between HBM and the
  chip's other memories that the compiler's memory-space assignment schedules) or the rest of
  the step. Bytes per class are our count: each instruction's operand plus output bytes, which
  is close to, not equal to, the compiler's own count (both are printed).

On v4 the compiler also places buffers in CMEM (128 MiB per chip; v5e has none), and its copies
to and from CMEM count as bytes accessed. The setting `resnet50_imagenet_v4_no_cmem` compiles
the same step with `--xla_tpu_cmem_memory_space_assignment=false` (LIBTPU_INIT_ARGS, so each
setting compiles in a process of its own) to show what those copies do to the share.
Compiler estimates only: no TPU ran anything.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # see benchmarks/pod_compile.py
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import hlo_text  # noqa: E402
from dynamics.tracker import SIGNALS_SCOPE, WINDOW_SCOPE  # noqa: E402

EVERY = (1, 10, 20)
NO_CMEM = '--xla_tpu_cmem_memory_space_assignment=false'

# name -> (pod_compile setting, slice topology, its get_topology_desc kwargs, LIBTPU_INIT_ARGS)
SETTINGS = {
    'resnet50_imagenet_v5e': ('resnet50_imagenet_v5e_16x16', 'v5e:2x2', {}, ''),
    'resnet50_imagenet_v4': (
        'resnet50_imagenet_v4_8x8x8',
        'v4:2x2x1',
        {'chip_config_name': 'megacore'},
        '',
    ),
    'resnet50_imagenet_v4_no_cmem': (
        'resnet50_imagenet_v4_8x8x8',
        'v4:2x2x1',
        {'chip_config_name': 'megacore'},
        NO_CMEM,
    ),
    'vit_b16_finetune_v5e': ('vit_b16_finetune_v5e_8x8', 'v5e:2x2', {}, ''),
    'resnet18_cifar_replicas8_v5e': (
        'resnet18_cifar_replicas8_v5e_1x1',
        'v5e:1x1',
        {'chips_per_host_bounds': (1, 1, 1)},
        '',
    ),
}

# ---------------------------------------------------------------------------------------------
# The optimized HLO, split by class.

MEMORY_COPIES = frozenset({'copy-start', 'copy-done', 'slice-start', 'slice-done'})
CLASSES = ('taps_fused', 'taps_standalone', 'window_evaluation', 'memory_copies', 'rest')


def _in_scope(scope: str):
  # A scope is one segment of an op_name: 'jit(step)/dynamics_signals/reduce_sum', or wrapped
  # by a transformation, 'jit(step)/vmap(dynamics_signals)/reduce_sum' (replicas).
  pattern = re.compile(rf'[/(]{scope}[)/]')
  return lambda name: pattern.search(name) is not None


_IN_SIGNALS, _IN_WINDOW = _in_scope(SIGNALS_SCOPE), _in_scope(WINDOW_SCOPE)


def classify(instruction: hlo_text.Instruction) -> str:
  names = instruction.op_names
  tapped = [n for n in names if _IN_SIGNALS(n)]
  if instruction.op in MEMORY_COPIES:
    return 'memory_copies'
  if any(_IN_WINDOW(n) for n in names):
    return 'window_evaluation'
  if tapped:  # alone: every op of it is the tracker's; fused: also ops of the model
    return 'taps_standalone' if len(tapped) == len(names) else 'taps_fused'
  return 'rest'


def split_hlo(text: str) -> dict:
  """Optimized HLO text -> {class: {'count', 'bytes', 'cycles'}} over the program's top-level
  instructions (benchmarks/hlo_text.py)."""
  out = {c: {'count': 0, 'bytes': 0, 'cycles': 0} for c in CLASSES}
  for instruction in hlo_text.instructions(text):
    entry = out[classify(instruction)]
    entry['count'] += 1
    entry['bytes'] += instruction.bytes
    entry['cycles'] += instruction.cycles
  return out


# ---------------------------------------------------------------------------------------------
# One setting, in this process.


def run_setting(name: str) -> dict:
  """Compiles setting `name`'s train step with the tracker on and off (and its window
  evaluation alone) for its slice; returns the compiler's figures and the HLO split."""
  import jax  # pylint: disable=import-outside-toplevel

  from benchmarks import bench_tracker_tpu, pod_compile  # pylint: disable=import-outside-toplevel

  setting, topology, topology_kwargs, _ = SETTINGS[name]
  _, pod_topology, _, make = pod_compile.SETTINGS[setting]
  pod_chips = math.prod(int(d) for d in pod_topology.split(':')[1].split('x'))
  devices = pod_compile.topology_devices(topology, **topology_kwargs)
  config, meta = make()
  per_chip = config.batch_size // pod_chips if config.replicas == 1 else config.batch_size
  result = dict(
      pod_setting=setting,
      topology=topology,
      devices=len(devices),
      images_per_chip=per_chip,
      libtpu_init_args=os.environ.get('LIBTPU_INIT_ARGS', ''),
      jax=jax.__version__,
  )
  programs = [('tracker_on', True, config.replicas), ('tracker_off', False, config.replicas)]
  if config.replicas > 1:  # and one seed alone, for the replicas' speedup in cycles
    programs.append(('single_replica', True, 1))
  for key, enabled, replicas in programs:
    config, meta = make()
    if config.replicas == 1:  # the pod's images per chip on this slice
      config.batch_size = config.eval_batch_size = per_chip * len(devices)
      config.dynamics.probe_size = min(config.dynamics.probe_size, config.batch_size)
    config.dynamics.enabled = enabled
    config.replicas = replicas
    texts = []

    def analysis(compiled, chip, _texts=texts):
      _texts.append(compiled.as_text())
      return pod_compile.analysis(compiled, chip)

    t0 = time.perf_counter()
    compiled = pod_compile.compile_experiment(
        config, meta, devices, programs=('train',), analyse=analysis
    )
    result[key] = dict(
        bytes_accessed=compiled['train']['bytes_accessed'],
        flops=compiled['train']['flops'],
        hlo=split_hlo(texts[0]),
        cycles=hlo_text.cycles_summary(texts[0]),
        compile_seconds=round(time.perf_counter() - t0, 1),
    )
  signals, window, surrogates, replicas = bench_tracker_tpu.setting_signals(setting)
  evaluation = bench_tracker_tpu.window_metrics_cost(devices, signals, window, surrogates)
  result.update(
      signals=signals,
      window=window,
      surrogates=surrogates,
      replicas=replicas,
      window_evaluation_bytes=evaluation['bytes'] * replicas,
  )
  return derive(result)


def derive(result: dict) -> dict:
  """Adds the tracker's bytes and estimated cycles, their rest (what a step without a window
  evaluation costs), the shares per every_steps and the HLO's differences on - off."""
  on, off = result['tracker_on'], result['tracker_off']
  extra = on['bytes_accessed'] - off['bytes_accessed']
  rest = extra - result['window_evaluation_bytes']
  cycles_on = sum(v['cycles'] for v in on['hlo'].values())
  cycles_off = sum(v['cycles'] for v in off['hlo'].values())
  window_cycles = on['hlo']['window_evaluation']['cycles']
  rest_cycles = cycles_on - cycles_off - window_cycles
  result.update(
      tracker_bytes=extra,
      rest_bytes=rest,
      share_at_every_steps={
          str(k): (rest + result['window_evaluation_bytes'] / k) / off['bytes_accessed']
          for k in EVERY
      },
      estimated_cycles_on=cycles_on,
      estimated_cycles_off=cycles_off,
      window_evaluation_cycles=window_cycles,
      rest_cycles=rest_cycles,
      cycles_share_at_every_steps={
          str(k): (rest_cycles + window_cycles / k) / cycles_off for k in EVERY
      },
  )
  if 'single_replica' in result:
    # The compiler's cost model charges each op for the tiles it occupies: where one seed's
    # step leaves the chip idle, N seeds in one step cost less than N times one.
    single = sum(v['cycles'] for v in result['single_replica']['hlo'].values())
    result['replica_speedup_cycles'] = result['replicas'] * single / cycles_on
  hlo_on, hlo_off = on['hlo'], off['hlo']
  step = ('taps_fused', 'taps_standalone', 'rest')  # everything but the evaluation and copies
  result['hlo_delta'] = dict(
      total=sum(v['bytes'] for v in hlo_on.values()) - sum(v['bytes'] for v in hlo_off.values()),
      step_without_copies=sum(hlo_on[c]['bytes'] for c in step)
      - sum(hlo_off[c]['bytes'] for c in step),
      memory_copies=hlo_on['memory_copies']['bytes'] - hlo_off['memory_copies']['bytes'],
      memory_copy_count=hlo_on['memory_copies']['count'] - hlo_off['memory_copies']['count'],
  )
  return result


# ---------------------------------------------------------------------------------------------
# The table.


def _mb(x):
  return f'{x / 1e6:,.1f}'


def table(results: dict) -> str:
  """Two tables: the tracker's bytes by class, then its shares in bytes and in cycles."""
  lines = [
      '| setting | slice, images/chip | bytes accessed off / on (MB) | window evaluation (MB) '
      '| rest (MB) | taps fused / alone (alone, MB) | memory copies on - off (n, MB) '
      '| HLO on - off without copies and evaluation (MB) |',
      '|---|---|---:|---:|---:|---:|---:|---:|',
  ]
  for name, r in results.items():
    on, off, d = r['tracker_on'], r['tracker_off'], r['hlo_delta']
    lines.append(
        f'| {name} | {r["topology"]}, {r["images_per_chip"]} '
        f'| {_mb(off["bytes_accessed"])} / {_mb(on["bytes_accessed"])} '
        f'| {_mb(r["window_evaluation_bytes"])} | {_mb(r["rest_bytes"])} '
        f'| {on["hlo"]["taps_fused"]["count"]} / {on["hlo"]["taps_standalone"]["count"]} '
        f'({_mb(on["hlo"]["taps_standalone"]["bytes"])}) '
        f'| {d["memory_copy_count"]:+d}, {d["memory_copies"] / 1e6:+,.1f} '
        f'| {d["step_without_copies"] / 1e6:+,.1f} |'
    )
  every = ' / '.join(map(str, EVERY))
  lines += [
      '',
      f'| setting | estimated cycles off / on (M) | window evaluation (M cycles) '
      f'| rest (M cycles) | bytes share at every_steps {every} '
      f'| cycles share at every_steps {every} |',
      '|---|---:|---:|---:|---:|---:|',
  ]
  for name, r in results.items():
    lines.append(
        f'| {name} | {r["estimated_cycles_off"] / 1e6:.2f} / {r["estimated_cycles_on"] / 1e6:.2f} '
        f'| {r["window_evaluation_cycles"] / 1e6:.3f} | {r["rest_cycles"] / 1e6:+.3f} | '
        + ' / '.join(f'{r["share_at_every_steps"][str(k)]:+.2%}' for k in EVERY)
        + ' | '
        + ' / '.join(f'{r["cycles_share_at_every_steps"][str(k)]:+.2%}' for k in EVERY)
        + ' |'
    )
  for name, r in results.items():
    if 'replica_speedup_cycles' in r:
      lines += [
          '',
          f'{name}: {r["replicas"]} replicas in one step against {r["replicas"]} single-seed '
          f'steps, by the compiler\'s estimated cycles: {r["replica_speedup_cycles"]:.2f}x.',
      ]
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--settings', default=','.join(SETTINGS), help='Comma-separated.')
  parser.add_argument('--out', default=None, help='JSON output path.')
  parser.add_argument('--from_json', default='', help='Print the tables of an earlier run.')
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)  # child: one setting
  args = parser.parse_args(argv)
  if args.from_json:
    with open(args.from_json) as f:
      print(table({k: derive(r) for k, r in json.load(f)['settings'].items()}))
    return
  if args.one:  # in a child process whose LIBTPU_INIT_ARGS the parent set
    print(json.dumps(run_setting(args.one)))
    return
  results = {}
  for name in args.settings.split(','):
    if name not in SETTINGS:
      raise SystemExit(f'--settings: {name!r} is not one of {", ".join(SETTINGS)}')
    env = dict(os.environ, LIBTPU_INIT_ARGS=SETTINGS[name][3])
    t0 = time.perf_counter()
    with tempfile.TemporaryFile('w+') as log:
      proc = subprocess.run(
          [sys.executable, os.path.abspath(__file__), f'--one={name}'],
          env=env,
          stdout=subprocess.PIPE,
          stderr=log,
          text=True,
          check=False,
      )
      if proc.returncode:
        log.seek(0)
        raise SystemExit(f'{name}: the compile failed:\n{log.read()[-4000:]}')
    results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f'{name}: {time.perf_counter() - t0:.0f} s', flush=True)
  print(table(results))
  if args.out:
    # --settings reruns some rows: keep the other rows of an earlier --out.
    merged = {}
    if os.path.exists(args.out):
      with open(args.out) as f:
        merged = json.load(f)['settings']
    merged.update(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump({'every_steps': EVERY, 'settings': merged}, f, indent=2)
    print(f'wrote {args.out} ({", ".join(results)} updated)')


if __name__ == '__main__':
  main()
