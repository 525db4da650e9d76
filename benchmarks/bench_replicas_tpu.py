"""Which `replica_impl` a TPU should run, by the TPU compiler's own cost model.

Compiles the study's CIFAR ResNet-18 train step (batch 128 per seed, bfloat16, dynamics on:
benchmarks/pod_compile.py's 'resnet18_cifar_replicas8_v5e_1x1') for one v5e chip with N
replicas under each implementation (training/replicas.py: vmap, map, unroll), and with one
seed alone. Nothing runs: the figures are the compiler's.

For each program it reads the optimized HLO (benchmarks/hlo_text.py; a loop body counts once
per trip) and reports the estimated cycles, the part in convolutions, the flops and bytes, and
the roofline time max(flops / peak, bytes / HBM bandwidth). The speedup against N single-seed
steps is N x one seed's / N replicas', by cycles and by roofline. By the roofline, N replicas
move N times one seed's bytes (each has its own weights and activations), so where one seed's
step is bound by memory no implementation can beat 1x: a speedup needs the chip idle in one
seed's step in a way the roofline does not see (small ops that fill part of a tile).

Usage (libtpu from requirements-tpu.txt; 'unroll' writes the step out N times, so its compile
takes about N times one seed's):
  ALLOW_MULTIPLE_LIBTPU_LOAD=1 python benchmarks/bench_replicas_tpu.py --impls=vmap,map \
      --replicas=8 --out=results/performance/bench_replicas_tpu.json
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import hlo_text, pod_compile  # noqa: E402

SETTING = 'resnet18_cifar_replicas8_v5e_1x1'
IMPLS = ('vmap', 'map', 'unroll')


def compile_one(replicas: int, impl: str, devices, setting: str = SETTING) -> dict:
  """One train program's compiler figures: cycles (total, convolutions), flops, bytes."""
  config, meta = pod_compile.SETTINGS[setting][3]()
  config.replicas = replicas
  config.replica_impl = impl
  texts = []

  def analysis(compiled, chip):
    texts.append(compiled.as_text())
    return pod_compile.analysis(compiled, chip)

  t0 = time.perf_counter()
  train = pod_compile.compile_experiment(
      config, meta, devices, programs=('train',), analyse=analysis
  )['train']
  cycles = hlo_text.cycles_summary(texts[0], top=5)
  chip = pod_compile.CHIPS[devices[0].device_kind]
  return dict(
      replicas=replicas,
      impl=impl if replicas > 1 else 'single',
      estimated_cycles=cycles['total'],
      convolution_cycles=cycles['convolutions'],
      top_cycles=cycles['top'],
      flops=train['flops'],
      bytes_accessed=train['bytes_accessed'],
      roofline_seconds=pod_compile.roofline_seconds(train, chip),
      compile_seconds=round(time.perf_counter() - t0, 1),
  )


def speedups(single: dict, rows: list) -> list:
  """Adds each N-replica row's speedup against N single-seed steps, by cycles and roofline."""
  for row in rows:
    n = row['replicas']
    row['speedup_cycles'] = n * single['estimated_cycles'] / row['estimated_cycles']
    # XLA's cost analysis counts a loop body once, so 'map''s flops and bytes are one
    # replica's: no roofline for it (hlo_text's cycles count every trip).
    row['speedup_roofline'] = (
        None if row['impl'] == 'map' else n * single['roofline_seconds'] / row['roofline_seconds']
    )
  return rows


def table(single: dict, rows: list) -> str:
  lines = [
      '| program | estimated cycles (M) | in convolutions (M) | TFLOP | GB accessed '
      '| roofline (ms) | speedup by cycles / roofline | compile (s) |',
      '|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in [single] + rows:
    speed, per_trip = '', ''
    if 'speedup_cycles' in r:
      roofline = r['speedup_roofline']
      speed = f'{r["speedup_cycles"]:.2f}x / ' + (f'{roofline:.2f}x' if roofline else 'n/a')
      per_trip = ' (one trip)' if roofline is None else ''
    lines.append(
        f'| {r["impl"]}, N = {r["replicas"]} | {r["estimated_cycles"] / 1e6:.2f} '
        f'| {r["convolution_cycles"] / 1e6:.2f} | {r["flops"] / 1e12:.3f}{per_trip} '
        f'| {r["bytes_accessed"] / 1e9:.2f}{per_trip} '
        f'| {r["roofline_seconds"] * 1e3:.2f}{per_trip} '
        f'| {speed} | {r["compile_seconds"]:.0f} |'
    )
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--impls', default='vmap,map', help=f'Comma-separated, of {IMPLS}.')
  parser.add_argument('--replicas', type=int, default=8)
  parser.add_argument('--out', default=None, help='JSON output path.')
  parser.add_argument('--from_json', default='', help='Print the table of an earlier run.')
  args = parser.parse_args(argv)
  if args.from_json:
    with open(args.from_json) as f:
      saved = json.load(f)
    print(table(saved['single'], speedups(saved['single'], saved['replicas'])))
    return
  impls = args.impls.split(',')
  for impl in impls:
    if impl not in IMPLS:
      raise SystemExit(f'--impls: {impl!r} is not one of {", ".join(IMPLS)}')
  if args.replicas < 2:
    raise SystemExit(f'--replicas={args.replicas}: compare at least 2 replicas with one seed.')
  _, topology, topology_kwargs, _ = pod_compile.SETTINGS[SETTING]
  devices = pod_compile.topology_devices(topology, **topology_kwargs)
  single = compile_one(1, 'vmap', devices)
  print(f'single seed: {single["compile_seconds"]:.0f} s', flush=True)
  rows = []
  for impl in impls:
    rows.append(compile_one(args.replicas, impl, devices))
    print(f'{impl}: {rows[-1]["compile_seconds"]:.0f} s', flush=True)
  speedups(single, rows)
  print(table(single, rows))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(dict(setting=SETTING, topology=topology, single=single, replicas=rows), f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
