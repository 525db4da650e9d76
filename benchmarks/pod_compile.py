r"""Compiles the project's train step, eval step and probe for TPU pod topologies, on this CPU.

  python benchmarks/pod_compile.py                      # the full table (make pod-check)
  python benchmarks/pod_compile.py --settings=tiny_v5e_2x2 --out=/tmp/pod.json

Needs libtpu (requirements-tpu.txt: the `jax[tpu]` extra pinned to the installed jax), but no
TPU: `jax.experimental.topologies.get_topology_desc` describes the pod's devices, a mesh is
built over them exactly as train.py builds its own (training/programs.py make_mesh, or the
replicas' ('replica', 'data') mesh), `training.programs.build` makes the jitted steps with their
shardings, and each is lowered on `ShapeDtypeStruct` arguments carrying those shardings and
compiled by the TPU compiler (MaxText's train_compile.py does the same for its models).

Reported per compiled program, per device: memory_analysis() (arguments, outputs, aliased,
temporaries; peak = arguments + outputs - aliased + temporaries) against the chip's HBM, and
cost_analysis() (flops, bytes accessed, the compiler's `optimal_seconds`, which the TPU
compiler returns negative for every large program, so it is kept but not used). The step time
is the roofline of the program's own flops and bytes on the chip's published peak flop/s and
HBM bandwidth; images/s = global batch / that time, MFU = flops / (time * peak flop/s). The
tracker's share is (on - off) / off for each figure, compiled with config.dynamics.enabled on
and off. The replicas' speedup is N x (one single-seed step's roofline) / (the N-replica
step's). All of these are estimates from the compiler's output, not measurements: no TPU ran
anything (docs/pod.md).
"""

import argparse
import json
import math
import os
import sys
import time

# libtpu takes a lockfile in /tmp; another process of this venv that loaded it (any jax
# import without JAX_PLATFORMS=cpu) would make get_topology_desc fail. Nothing here runs on a TPU.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from configs import imagenet as imagenet_config, study, tiny  # noqa: E402
from benchmarks import hlo_text  # noqa: E402
from models import layers  # noqa: E402
from data import facts as facts_lib  # noqa: E402
from training import plan as plan_lib, programs as programs_lib, replicas as replicas_lib  # noqa: E402

# Per device, as JAX sees the chip (one device per chip on v4 with megacore and on v5e):
# HBM in GiB, HBM bandwidth in bytes/s and peak dense bf16 flop/s (Google Cloud's figures).
CHIPS = {
    'TPU v5 lite': dict(name='v5e', hbm_gib=16.0, hbm_bandwidth=819e9, peak_flops=197e12),
    'TPU v4': dict(name='v4', hbm_gib=32.0, hbm_bandwidth=1228e9, peak_flops=275e12),
}
CHIP_BY_NAME = {c['name']: c for c in CHIPS.values()}
CIFAR_TRAIN, CIFAR_CLASSES = 50_000, 10


def _imagenet(batch, model='resnet50'):
  config = imagenet_config.get_config(f'model={model},batch={batch}')
  return config, dict(
      num_classes=imagenet_config.NUM_CLASSES,
      train_size=imagenet_config.NUM_TRAIN_IMAGES,
      side=config.data.image_size,
  )


def _vit(batch):
  config = study.get_config('model=vit_b16,dataset=cifar10')
  config.batch_size = batch
  config.eval_batch_size = batch
  config.dtype = 'bfloat16'
  config.dynamics.probe_size = batch
  return config, dict(num_classes=CIFAR_CLASSES, train_size=CIFAR_TRAIN, side=32)


def _cifar_resnet18(replicas):
  config = study.get_config('model=resnet18,dataset=cifar10')
  config.replicas = replicas
  config.dtype = 'bfloat16'
  return config, dict(num_classes=CIFAR_CLASSES, train_size=CIFAR_TRAIN, side=32)


def _tiny():
  config = tiny.get_config()
  return config, dict(num_classes=config.data.num_classes, train_size=256, side=32)


# name -> (what, topology, topology kwargs, config maker). 'replicas' settings compile the
# N-replica step and N = 1 beside it.
SETTINGS = {
    'resnet50_imagenet_v5e_16x16': (
        'ResNet-50, ImageNet 224 px, global batch 4,096',
        'v5e:16x16',
        {},
        lambda: _imagenet(4096),
    ),
    'resnet50_imagenet_v4_8x8x8': (
        'ResNet-50, ImageNet 224 px, global batch 4,096',
        'v4:8x8x8',
        {'chip_config_name': 'megacore'},
        lambda: _imagenet(4096),
    ),
    'vit_b16_finetune_v5e_8x8': (
        'ViT-B/16 fine-tuning, CIFAR-10 resized to 224 px, global batch 512',
        'v5e:8x8',
        {},
        lambda: _vit(512),
    ),
    'resnet18_cifar_replicas8_v5e_1x1': (
        "The study's CIFAR ResNet-18 (batch 128), 8 replicas vs 1, one chip",
        'v5e:1x1',
        {'chips_per_host_bounds': (1, 1, 1)},
        lambda: _cifar_resnet18(8),
    ),
    'tiny_v5e_2x2': ('configs/tiny.py', 'v5e:2x2', {}, _tiny),
}
DEFAULT_SETTINGS = [k for k in SETTINGS if not k.startswith('tiny')]


def topology_devices(topology: str, **kwargs):
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

  return topologies.get_topology_desc(topology_name=topology, platform='tpu', **kwargs).devices


def make_mesh(config, devices):
  """The mesh train.py would build on these devices (training/programs.py, training/replicas.py)."""
  if config.replicas > 1:
    return replicas_lib.make_mesh(config, devices)
  return jax.make_mesh(
      (len(devices),), ('data',), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
  )


def _abstract(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def analysis(compiled, chip) -> dict:
  """A compiled program's per-device memory and cost figures (the table's columns)."""
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  peak = (
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      - mem.alias_size_in_bytes
      + mem.temp_size_in_bytes
  )
  return dict(
      argument_bytes=int(mem.argument_size_in_bytes),
      output_bytes=int(mem.output_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes),
      temp_bytes=int(mem.temp_size_in_bytes),
      peak_bytes=int(peak),
      hbm_fraction=peak / (chip['hbm_gib'] * 2**30),
      flops=float(cost.get('flops', float('nan'))),
      bytes_accessed=float(cost.get('bytes accessed', float('nan'))),
      optimal_seconds=float(cost.get('optimal_seconds', float('nan'))),
      # The compiler's own per-op cycle estimates, summed (benchmarks/hlo_text.py).
      estimated_cycles=hlo_text.estimated_cycles(compiled.as_text()),
  )


def compile_experiment(
    config, meta, devices, programs=('train', 'eval', 'probe'), analyse=analysis
) -> dict:
  """Builds config's jitted steps with training.programs.build on a mesh over `devices` and
  compiles each for them. Returns {program: analyse(compiled, chip)} (per device) plus the
  compile times; `analyse` may also keep the compiled program (bench_tracker_hlo.py)."""
  config = config.copy_and_resolve_references()
  if config.replicas > 1:
    # 'auto' resolves by the host's backend; the program is for the TPU's.
    config.replica_impl = replicas_lib.resolve_impl(config, backend='tpu')
  mesh = make_mesh(config, devices)
  side = meta['side']
  facts = facts_lib.DataFacts(
      'pod_compile', meta['train_size'], meta['train_size'], (side, side, 3), meta['num_classes']
  )
  # The run's own plan (training/plan.py): validated and fitted as train.py's would be.
  plan = plan_lib.make_plan(config, facts, len(devices), max(d.process_index for d in devices) + 1)
  config, steps_per_epoch, total_steps = plan.config, plan.steps_per_epoch, plan.total_steps
  stored = (side, side, 3)  # what the host feeds: uint8 images of this side
  image_shape = (config.image_size,) * 2 + (3,) if config.image_size else stored
  mean = jnp.full((3,), 120.0, jnp.float32)
  std = jnp.full((3,), 60.0, jnp.float32)
  chip = CHIPS[devices[0].device_kind]
  results = {}
  with layers.target_platform('tpu'):
    exp = programs_lib.build(
        config,
        meta['num_classes'],
        image_shape,
        mean,
        std,
        steps_per_epoch,
        total_steps,
        mesh,
        stored_shape=stored,
    )
    replicated = NamedSharding(mesh, P())
    single = jax.eval_shape(exp.init_state, 0)
    n = config.replicas
    if n == 1:
      state = _abstract(single, jax.tree.map(lambda _: replicated, single))
      batch = NamedSharding(mesh, P('data'))
    else:
      stacked = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct((n,) + x.shape, x.dtype), single.replace(step=None)
      ).replace(step=single.step)
      state = _abstract(stacked, exp.state_sharding)
      batch = NamedSharding(mesh, P(replicas_lib.DATA_AXIS))
    b, eb = config.batch_size, config.eval_batch_size
    if n == 1:
      train_args = (
          jax.ShapeDtypeStruct((b,) + stored, jnp.uint8, sharding=batch),
          jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch),
      )
    else:  # indices [N, B] and the device-resident train set (training/replicas.py)
      rows = NamedSharding(mesh, P(replicas_lib.REPLICA_AXIS, replicas_lib.DATA_AXIS))
      train_args = (
          jax.ShapeDtypeStruct((n, b), jnp.int32, sharding=rows),
          # one flat row per image (replicas.resident_images)
          jax.ShapeDtypeStruct(
              (meta['train_size'], math.prod(stored)), jnp.uint8, sharding=replicated
          ),
          jax.ShapeDtypeStruct((meta['train_size'],), jnp.int32, sharding=replicated),
      )
    args = {
        'train': (exp.train_step, (state,) + train_args),
        'eval': (
            exp.eval_step,
            (
                state,
                jax.ShapeDtypeStruct((eb,) + stored, jnp.uint8, sharding=batch),
                jax.ShapeDtypeStruct((eb,), jnp.int32, sharding=batch),
                jax.ShapeDtypeStruct((eb,), jnp.float32, sharding=batch),
            ),
        ),
    }
    if exp.probe is not None:
      ps = config.dynamics.probe_size
      probe_shape = (ps,) + stored if n == 1 else (n, ps) + stored
      probe_sharding = (
          batch
          if n == 1
          else NamedSharding(mesh, P(replicas_lib.REPLICA_AXIS, replicas_lib.DATA_AXIS))
      )
      args['probe'] = (
          exp.probe,
          (state, jax.ShapeDtypeStruct(probe_shape, jnp.uint8, sharding=probe_sharding)),
      )
    for program in programs:
      if program not in args:
        continue
      fn, fn_args = args[program]
      t0 = time.perf_counter()
      compiled = fn.lower(*fn_args).compile()
      results[program] = dict(
          analyse(compiled, chip), compile_seconds=round(time.perf_counter() - t0, 1)
      )
  results['devices'] = len(devices)
  results['mesh'] = dict(mesh.shape)
  results['chip'] = chip['name']
  return results


def _share(on, off, key):
  return (on[key] - off[key]) / off[key] if off[key] else float('nan')


def run_setting(name: str, log=print) -> dict:
  what, topology, topo_kwargs, make = SETTINGS[name]
  config, meta = make()
  t0 = time.perf_counter()
  devices = topology_devices(topology, **topo_kwargs)
  chip = CHIPS[devices[0].device_kind]
  log(f'{name}: {what} on {topology} ({len(devices)} devices, {chip["name"]}) ...')
  out = dict(what=what, topology=topology, global_batch=config.batch_size)
  on = compile_experiment(config, meta, devices)
  out['tracker_on'] = on
  off_config = config.copy_and_resolve_references()
  off_config.dynamics.enabled = False
  out['tracker_off'] = compile_experiment(off_config, meta, devices, programs=('train',))
  out['replicas'] = config.replicas
  if config.replicas > 1:
    out['replica_impl'] = replicas_lib.resolve_impl(config, backend='tpu')
    single_config = config.copy_and_resolve_references()
    single_config.replicas = 1
    out['single_replica'] = compile_experiment(single_config, meta, devices, programs=('train',))
  out['seconds'] = round(time.perf_counter() - t0, 1)
  derive(out)
  log(f'  {_row(name, out)}  ({out["seconds"]:.0f} s)')
  return out


def roofline_seconds(analysis: dict, chip: dict) -> float:
  """max(flops / peak flop/s, bytes accessed / HBM bandwidth): the step time the compiler's
  own flops and bytes imply on one chip, ignoring collectives and overlap."""
  return max(
      analysis['flops'] / chip['peak_flops'], analysis['bytes_accessed'] / chip['hbm_bandwidth']
  )


def derive(out: dict) -> dict:
  """Adds to one setting's raw analyses: each program's roofline time, the train step's
  images/s and MFU at that time, the tracker's shares and the replicas' speedup.

  The TPU compiler's `optimal_seconds` is kept as reported; for the large programs here it
  comes back negative (e.g. -86.98 for ResNet-50's train step), so it cannot be used as a
  time and the roofline of the same program's flops and bytes is used instead.
  """
  chip = CHIP_BY_NAME[out['tracker_on']['chip']]
  programs = [out['tracker_on'], out['tracker_off']] + (
      [out['single_replica']] if 'single_replica' in out else []
  )
  for compiled in programs:
    for key in ('train', 'eval', 'probe'):
      if key in compiled:
        compiled[key]['roofline_seconds'] = roofline_seconds(compiled[key], chip)
  on, off = out['tracker_on']['train'], out['tracker_off']['train']
  t = on['roofline_seconds']
  # XLA's cost analysis counts a loop body once: the replicas' 'map' programs have one
  # replica's flops and bytes, so no roofline figure of N replicas (cycles count every trip).
  loop = out.get('replica_impl') == 'map'
  out['images_per_second'] = None if loop else out['global_batch'] * out['replicas'] / t
  out['mfu'] = None if loop else on['flops'] / (t * chip['peak_flops'])
  out['tracker_share'] = {
      k: _share(on, off, k)
      for k in ('flops', 'bytes_accessed', 'peak_bytes', 'temp_bytes', 'roofline_seconds')
  }
  if on['optimal_seconds'] > 0 and off['optimal_seconds'] > 0:
    out['tracker_share']['optimal_seconds'] = _share(on, off, 'optimal_seconds')
  if on.get('estimated_cycles') and off.get('estimated_cycles'):  # absent in older JSON
    out['tracker_share']['estimated_cycles'] = _share(on, off, 'estimated_cycles')
  if 'single_replica' in out:
    single = out['single_replica']['train']
    n = out['replicas']
    out['replica_speedup'] = None if loop else n * single['roofline_seconds'] / t
    out['replica_flops_ratio'] = None if loop else on['flops'] / (n * single['flops'])
    out['replica_bytes_ratio'] = (
        None if loop else on['bytes_accessed'] / (n * single['bytes_accessed'])
    )
    if on.get('estimated_cycles') and single.get('estimated_cycles'):
      # The compiler's cost model charges each op for the tiles it occupies: where one seed's
      # step leaves the chip idle, N seeds in one step cost less than N times one.
      out['replica_speedup_cycles'] = (
          out['replicas'] * single['estimated_cycles'] / on['estimated_cycles']
      )
  return out


def _gib(x):
  return x / 2**30


def _row(name, r):
  t = r['tracker_on']['train']
  share = r['tracker_share']
  text = (
      f'{name}: train peak {_gib(t["peak_bytes"]):.2f} GiB/device '
      f'({100 * t["hbm_fraction"]:.0f}% of HBM), {t["flops"] / 1e12:.3f} TFLOP, '
      f'{t["bytes_accessed"] / 1e9:.2f} GB, roofline {1e3 * t["roofline_seconds"]:.2f} ms, '
      f'{_number(r["images_per_second"], "{:,.0f}")} img/s, MFU '
      f'{_number(r["mfu"], "{:.0%}")}; tracker '
      f'{100 * share["flops"]:+.2f}% flops, {100 * share["bytes_accessed"]:+.2f}% bytes, '
      f'{100 * share["peak_bytes"]:+.2f}% memory'
  )
  if 'replica_speedup_cycles' in r:
    text += f'; replicas {r["replica_speedup_cycles"]:.2f}x over separate steps (cycles)'
  return text


def _number(x, fmt: str) -> str:
  """fmt.format(x), or 'n/a' for a figure a loop's single-trip count leaves undefined."""
  return 'n/a' if x is None else fmt.format(x)


def _seconds(a):
  """The compiler's optimal_seconds as reported, in ms; negative ones marked unusable."""
  ms = 1e3 * a['optimal_seconds']
  return f'{ms:.2f}' if ms > 0 else f'({ms:,.0f}: negative)'


def table(results: dict) -> str:
  """The Markdown tables of benchmarks/README.md (compiler estimates, per device)."""
  lines = [
      '| setting | topology | program | peak memory / device (GiB, % of HBM) | TFLOP / device '
      '| GB accessed / device | roofline step (ms) | compiler optimal_seconds (ms) | images/s '
      '| MFU |',
      '|---|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for name, r in results.items():
    on = r['tracker_on']
    for program in ('train', 'eval', 'probe'):
      if program not in on:
        continue
      a = on[program]
      extra = ' | '
      if program == 'train':
        extra = f'{_number(r["images_per_second"], "{:,.0f}")} | {_number(r["mfu"], "{:.0%}")}'
      trip = ' (one trip)' if r.get('replica_impl') == 'map' else ''  # see derive
      lines.append(
          f'| {name} | {r["topology"]} ({on["devices"]} devices) | {program} | '
          f'{_gib(a["peak_bytes"]):.2f} ({100 * a["hbm_fraction"]:.1f}%) | '
          f'{a["flops"] / 1e12:.3f}{trip} | {a["bytes_accessed"] / 1e9:.2f}{trip} | '
          f'{1e3 * a["roofline_seconds"]:.2f}{trip} | {_seconds(a)} | {extra} |'
      )
  lines += [
      '',
      '| setting | tracker share of the train step: flops | bytes accessed | peak memory | '
      'temporaries | roofline time | estimated cycles |',
      '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for name, r in results.items():
    s = r['tracker_share']
    lines.append(
        f'| {name} | {100 * s["flops"]:+.2f}% | {100 * s["bytes_accessed"]:+.2f}% | '
        f'{100 * s["peak_bytes"]:+.2f}% | {100 * s["temp_bytes"]:+.2f}% | '
        f'{100 * s["roofline_seconds"]:+.2f}% | '
        + (f'{100 * s["estimated_cycles"]:+.2f}% |' if 'estimated_cycles' in s else ' |')
    )
  replicas = {k: r for k, r in results.items() if 'single_replica' in r}
  if replicas:
    lines += [
        '',
        '| setting | replicas (implementation) | speedup over as many single-seed steps '
        '(roofline) | speedup (estimated cycles) | flops ratio | bytes ratio '
        '| peak memory: N replicas / 1 (GiB) |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for name, r in replicas.items():
      lines.append(
          f'| {name} | {r["replicas"]} ({r.get("replica_impl", "vmap")}) '
          f'| {_number(r["replica_speedup"], "{:.2f}x")} | '
          + (f'{r["replica_speedup_cycles"]:.2f}x' if 'replica_speedup_cycles' in r else '')
          + f' | {_number(r["replica_flops_ratio"], "{:.3f}")} '
          f'| {_number(r["replica_bytes_ratio"], "{:.3f}")} | '
          f'{_gib(r["tracker_on"]["train"]["peak_bytes"]):.2f} / '
          f'{_gib(r["single_replica"]["train"]["peak_bytes"]):.2f} |'
      )
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--settings',
      default=','.join(DEFAULT_SETTINGS),
      help=f'comma-separated, from: {", ".join(SETTINGS)}',
  )
  parser.add_argument('--out', default='results/performance/pod_compile.json')
  parser.add_argument(
      '--from_json',
      default='',
      help='print the table of an earlier run (its raw analyses re-derived), compiling nothing',
  )
  args = parser.parse_args(argv)
  if args.from_json:
    with open(args.from_json) as f:
      payload = json.load(f)
    for name, r in payload['settings'].items():
      r['replicas'] = SETTINGS[name][3]()[0].replicas
      derive(r)
    if args.out and args.out != args.from_json:
      with open(args.out, 'w') as f:
        json.dump(payload, f, indent=1, sort_keys=True, default=float)
    print(table(payload['settings']))
    return payload
  names = [s for s in args.settings.split(',') if s]
  unknown = sorted(set(names) - set(SETTINGS))
  if unknown:
    parser.error(f'unknown --settings {", ".join(unknown)}; allowed: {", ".join(SETTINGS)}')
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    sys.exit(
        'pod_compile needs libtpu (no TPU): pip install -r requirements-tpu.txt '
        '(the jax[tpu] extra at the installed jax version).'
    )
  results = {}
  payload = dict(
      note='XLA TPU compiler estimates from ahead-of-time compilation on a CPU host; '
      'no TPU ran these programs.',
      jax=jax.__version__,
      settings=results,
  )
  for name in names:
    results[name] = run_setting(name)
    if args.out:  # after every setting: a long table interrupted keeps what it compiled
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, 'w') as f:
        json.dump(payload, f, indent=1, sort_keys=True, default=float)
  if args.out:
    print(f'Wrote {args.out}')
  print()
  print(table(results))
  return payload


if __name__ == '__main__':
  main()
