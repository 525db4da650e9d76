r"""Where the tracker's bytes go on the TPU compiler, and its share when the window metrics run
every k steps.

  python benchmarks/bench_tracker_tpu.py --out=results/performance/bench_tracker_tpu.json

`make pod-check` (benchmarks/pod_compile.py) compiles each setting's train step with the tracker
on and off; the difference in bytes accessed is the tracker's share. This compiles, for the same
chip (one v5e chip: bytes accessed do not depend on the slice), the one piece of the tracker
that does not scale with the batch: the step window's metric evaluation (`tracker.compute_metrics`
over S signals x `window` samples, with and without the surrogate nulls), for each setting's
tap count. Then it splits pod_compile.json's tracker bytes into that evaluation and the rest
(the tap reductions, the ring updates), and gives the share per step when the evaluation runs
every k steps (`dynamics.every_steps`).

Why a split is needed: the train step holds the evaluation under a `lax.cond` (it runs only on
the steps where it is due), but XLA's cost analysis counts a conditional's branches as if they
ran (checked here on a toy: cond(p, heavy, light) reports heavy + light bytes), so pod_compile's
share is the share at every_steps = 1 whatever the config says. Compiler estimates only.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # see benchmarks/pod_compile.py
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import dynamics  # noqa: E402
from benchmarks import pod_compile  # noqa: E402
from dynamics import tracker as tracker_lib  # noqa: E402
import models  # noqa: E402
from models import layers  # noqa: E402
from training import programs  # noqa: E402

POD_JSON = 'results/performance/pod_compile.json'
EVERY = (1, 4, 10, 16)


def _cost(fn, *args) -> dict:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {'bytes': float(cost['bytes accessed']), 'flops': float(cost['flops'])}


def window_metrics_cost(devices, signals: int, window: int, surrogates: int) -> dict:
  """Bytes and flops of one step-window evaluation on `devices[0]`'s compiler."""
  sharding = NamedSharding(Mesh(devices[:1], ('d',)), P())
  dcfg = dynamics.as_config({'surrogates': surrogates})
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  scales = tracker_lib.resolve_scales(dcfg, window, strict=True)

  def evaluate(x, key_data):
    key = jax.random.wrap_key_data(key_data) if surrogates else None
    return tracker_lib.compute_metrics(x, spec, scales, key)

  return _cost(
      evaluate,
      jax.ShapeDtypeStruct((signals, window), jnp.float32, sharding=sharding),
      jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding),
  )


def setting_signals(name: str) -> tuple:
  """(signals, window, surrogates, replicas) of a pod_compile setting, from its config."""
  _, _, _, make = pod_compile.SETTINGS[name]
  config, meta = make()
  side = config.image_size or meta['side']
  model_args = {k: v for k, v in config.model_args.items() if v}  # as training/programs.py
  with layers.target_platform('tpu'):
    model = models.get(
        config.model, meta['num_classes'], dtype=jnp.dtype(config.dtype), **model_args
    )
    shapes = programs.tap_shapes(model, (side, side, 3))
  dcfg = config.dynamics
  kind, k = dynamics.signals.parse_reduction(dcfg.reduction)
  signals = len(shapes) * (k if kind == 'proj' else 1)
  window = int(dcfg.window) or tracker_lib.AUTO_DEFAULTS['window']  # auto: 256 on long runs
  return signals, window, int(dcfg.surrogates), int(config.replicas)


def _replicas(replicas: int, counted: int) -> str:
  if replicas == 1:
    return ''
  return f' x {replicas} replicas' + (' (map: one trip counted)' if counted == 1 else '')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=None, help='JSON output path.')
  parser.add_argument('--pod_json', default=POD_JSON)
  args = parser.parse_args(argv)
  with open(args.pod_json) as f:
    pod = json.load(f)['settings']
  devices = pod_compile.topology_devices('v5e:1x1', chips_per_host_bounds=(1, 1, 1))
  out = {'jax': jax.__version__, 'every_steps': EVERY, 'settings': {}}
  cache = {}
  print(
      '| setting | signals | tracker bytes/step (pod_compile) | window evaluation, 39 nulls / none '
      '| rest | share at every_steps ' + ' / '.join(map(str, EVERY)) + ' |'
  )
  print('|---|---:|---:|---:|---:|---:|')
  for name, result in pod.items():
    signals, window, surrogates, replicas = setting_signals(name)
    for num in (surrogates, 0):
      if (signals, window, num) not in cache:
        t0 = time.perf_counter()
        cache[(signals, window, num)] = dict(
            window_metrics_cost(devices, signals, window, num),
            compile_seconds=round(time.perf_counter() - t0, 1),
        )
    # A 'map' program's bytes are one replica's (XLA's cost analysis counts a loop body once),
    # so its window evaluation counts once too, and the shares are one replica's.
    counted = 1 if result.get('replica_impl') == 'map' else replicas
    with_nulls = cache[(signals, window, surrogates)]['bytes'] * counted
    without = cache[(signals, window, 0)]['bytes'] * counted
    on = result['tracker_on']['train']['bytes_accessed']
    off = result['tracker_off']['train']['bytes_accessed']
    extra = on - off
    rest = extra - with_nulls
    shares = {k: (rest + with_nulls / k) / off for k in EVERY}
    out['settings'][name] = dict(
        signals=signals,
        window=window,
        surrogates=surrogates,
        replicas=replicas,
        tracker_bytes=extra,
        step_bytes_tracker_off=off,
        window_evaluation_bytes=with_nulls,
        window_evaluation_bytes_no_nulls=without,
        rest_bytes=rest,
        share_at_every_steps={str(k): v for k, v in shares.items()},
    )
    print(
        f'| {name} | {signals} x {window}{_replicas(replicas, counted)} '
        f'| {extra / 1e6:,.1f} MB ({extra / off:+.2%}) | {with_nulls / 1e6:,.1f} / '
        f'{without / 1e6:,.1f} MB | {rest / 1e6:,.1f} MB | '
        + ' / '.join(f'{shares[k]:+.2%}' for k in EVERY)
        + ' |',
        flush=True,
    )
  out['compiles'] = {f'{s}x{w}, surrogates {n}': v for (s, w, n), v in cache.items()}
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(out, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
