"""The train step's input work on a TPU compiler: the random crop and the replicas' gather.

Two choices in the step's input handling are made for the TPU, and this prints why, from one
run, each as a pair of implementations that give the same pixels:

- the random crop (data/augment.py): vmap(dynamic_slice), a gather, or one select per shift.
  `random_crop` takes the selects when traced for a TPU and the gather elsewhere;
- the replicas' batch gather from the device-resident training set (training/replicas.py):
  from u8[n, H, W, 3], or from flat rows u8[n, H * W * 3] (`resident_images`), which the
  replicas use on every backend.

For each pair it gives, on one v5e chip compiled here for its topology (libtpu; nothing runs),
the compiler's estimated cycles (benchmarks/hlo_text.py: a loop body counts once per trip) and
whether the program holds a loop or a copy of the whole training set; and on this host's
backend the measured time of each (the median over --rounds of --iters calls).

Usage: ALLOW_MULTIPLE_LIBTPU_LOAD=1 python benchmarks/bench_step_input.py [--batch=128] \
    [--out=results/performance/bench_step_input.json]   (without libtpu: host times only)
"""

import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import hlo_text, timing  # noqa: E402
from data import augment  # noqa: E402
from models import layers  # noqa: E402
from training import replicas  # noqa: E402

# crop implementation -> the platform to trace random_crop for, which picks it.
CROP = {'gather': 'cpu', 'selects': 'tpu'}


def crop_programs(batch: int, side: int, padding: int, **_):
  """{impl: (fn, example args)} for the crop; fresh functions, so no trace is reused."""

  def make(platform):
    def crop(key, images):
      with layers.target_platform(platform):
        return augment.random_crop(key, images, padding)

    return crop

  args = (jax.random.PRNGKey(0), _images(batch, side))
  return {impl: (make(platform), args) for impl, platform in CROP.items()}


def gather_programs(batch: int, side: int, train_size: int, **_):
  """{layout: (fn, example args)} for a batch gathered from the training set."""
  shape = (batch, side, side, 3)
  images = _images(train_size, side)
  indices = np.random.default_rng(1).integers(0, train_size, batch).astype(np.int32)
  return {
      'nhwc': (lambda images, idx: images[idx], (images, indices)),
      'flat_rows': (
          lambda rows, idx: rows[idx].reshape(shape),
          (replicas.resident_images(images), indices),
      ),
  }


def _images(n, side):
  return np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


PAIRS = {'crop': crop_programs, 'train_set_gather': gather_programs}


def host_seconds(programs: dict, rounds: int, iters: int) -> dict:
  """{impl: median seconds per call} on this host's backend; checks that the outputs agree."""
  jitted = {
      impl: (jax.jit(fn), [jnp.asarray(a) for a in args]) for impl, (fn, args) in programs.items()
  }
  outs = [np.asarray(f(*args)) for f, args in jitted.values()]
  if not all(np.array_equal(outs[0], o) for o in outs[1:]):
    raise SystemExit(f'{", ".join(programs)}: the implementations gave different pixels')

  def calls(f, args):  # iters calls, one timed unit
    for _ in range(iters):
      f(*args).block_until_ready()

  return {
      impl: float(np.median(timing.time_calls(lambda f=f, a=args: calls(f, a), rounds))) / iters
      for impl, (f, args) in jitted.items()
  }


def tpu_cycles(programs: dict) -> dict:
  """{impl: {'estimated_cycles', 'has_loop', 'copies_train_set'}} on one v5e chip."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

  from benchmarks import pod_compile  # pylint: disable=import-outside-toplevel

  devices = pod_compile.topology_devices('v5e:1x1', chips_per_host_bounds=(1, 1, 1))
  sharding = NamedSharding(Mesh(np.array(devices), ('d',)), P())
  out = {}
  for impl, (fn, args) in programs.items():
    abstract = [
        jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype, sharding=sharding) for a in args
    ]
    text = jax.jit(fn).lower(*abstract).compile().as_text()
    found = list(hlo_text.instructions(text))
    set_bytes = max(np.asarray(a).nbytes for a in args)
    out[impl] = dict(
        estimated_cycles=sum(i.cycles for i in found),
        has_loop=' while(' in text,
        # a copy that reads the whole training set (its bytes: operand + output)
        copies_train_set=any(i.op == 'copy' and i.bytes >= 2 * set_bytes for i in found),
    )
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--side', type=int, default=32)
  parser.add_argument('--padding', type=int, default=4)
  parser.add_argument('--train_size', type=int, default=50_000, help='CIFAR-10: 50,000.')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--iters', type=int, default=50)
  parser.add_argument('--out', default=None, help='JSON output path.')
  args = parser.parse_args(argv)
  sizes = dict(batch=args.batch, side=args.side, padding=args.padding, train_size=args.train_size)
  has_tpu = importlib.util.find_spec('libtpu') is not None
  result = dict(
      batch=args.batch, side=args.side, padding=args.padding, train_size=args.train_size,
      host_backend=jax.default_backend(),
  )  # fmt: skip
  for pair, make in PAIRS.items():
    programs = make(**sizes)
    entry = result[pair] = dict(host_seconds=host_seconds(programs, args.rounds, args.iters))
    a, b = list(programs)
    s = entry['host_seconds']
    print(
        f'{pair}, {jax.default_backend()}: {a} {s[a] * 1e6:,.0f} us, {b} {s[b] * 1e6:,.0f} us '
        f'({a} / {b} {s[a] / s[b]:.2f}x)'
    )
    if has_tpu:
      entry['tpu_v5e'] = c = tpu_cycles(programs)
      print(
          f'{pair}, v5e estimated cycles: '
          + ', '.join(
              f'{impl} {v["estimated_cycles"]:,} (loop: {v["has_loop"]}, copies the set: '
              f'{v["copies_train_set"]})'
              for impl, v in c.items()
          )
          + f' ({a} / {b} {c[a]["estimated_cycles"] / c[b]["estimated_cycles"]:.1f}x)'
      )
  if not has_tpu:
    print('libtpu is not installed (requirements-tpu.txt): no TPU figures.')
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
