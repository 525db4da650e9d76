"""How fast one host core feeds the streaming path, and how many cores a pod host would need.

The streaming path (data/streaming.py) decodes each training JPEG on the host and takes its
random-resized crop to 224 px; nothing else of the step's input runs there. This measures, on
generated ImageNet-sized JPEGs (--width x --height, quality 90, smooth fields with fine
noise, about the size of an average ImageNet photo):

- one core: `streaming.decode(path, 224, rng)` called one image after another in one thread
  (file read, JPEG decode, crop and bilinear resample): images per second per core;
- the loader: `StreamingDataset.train_batches(...).batch(step)` with the default thread pool
  over this host's cores, and with grain worker processes (`data.workers`, where grain is
  installed): images per second for the whole host.

It then divides each pod setting's roofline images/s (results/performance/pod_compile.json) by
the topology's host count (`jax.experimental.topologies`, libtpu; skipped without it) to give
the decode rate a host must sustain and the cores that takes at this machine's per-core rate.
The pod's hosts are other CPUs, so the core count is an order of magnitude, not a sizing.

Usage: python benchmarks/bench_host_input.py [--images=192] [--out=...]
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from data import streaming  # noqa: E402

SIZE = 224
POD_JSON = 'results/performance/pod_compile.json'


def write_folder(root: str, images: int, width: int, height: int, classes: int = 4):
  """An image folder (train and test splits) of `images` generated JPEGs per split."""
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for i in range(images):
      coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
      smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
      noise = rng.normal(0, 12, (height, width, 3))
      pixels = np.clip(smooth + noise, 0, 255).astype(np.uint8)
      folder = os.path.join(root, split, f'class_{i % classes}')
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(pixels).save(os.path.join(folder, f'{i}.jpg'), quality=90)


def per_core_rate(root: str, rounds: int) -> dict:
  """Images/s of decode + random-resized crop in one thread, the median over rounds."""
  paths, _, _ = streaming.list_split(root, 'train')
  rates = []
  for r in range(rounds):
    rng = np.random.default_rng(r)
    t = time.perf_counter()
    for path in paths:
      streaming.decode(path, SIZE, rng)
    rates.append(len(paths) / (time.perf_counter() - t))
  mean_bytes = float(np.mean([os.path.getsize(p) for p in paths]))
  return dict(images_per_second=float(np.median(rates)), rounds=rates, jpeg_bytes=mean_bytes)


def loader_rate(root: str, batch: int, steps: int, loader: str, workers: int) -> float:
  """Images/s of `steps` train batches from the streaming dataset (after one warm-up batch)."""
  ds = streaming.load(root, SIZE)
  batches = ds.train_batches(0, batch, 0, 1, loader=loader, workers=workers)
  batches.batch(0)
  t = time.perf_counter()
  for step in range(1, steps + 1):
    batches.batch(step)
  seconds = time.perf_counter() - t
  if hasattr(batches, 'close'):
    batches.close()
  return steps * batch / seconds


def pod_demand(per_core: float) -> dict:
  """{setting: images/s per host at the roofline, hosts, cores at this per-core rate}."""
  if importlib.util.find_spec('libtpu') is None or not os.path.exists(POD_JSON):
    return {}
  from benchmarks import pod_compile  # pylint: disable=import-outside-toplevel

  with open(POD_JSON) as f:
    settings = json.load(f)['settings']
  out = {}
  for name, r in settings.items():
    if r.get('replicas', 1) > 1 or not name.startswith('resnet50_imagenet'):
      continue  # the streaming path: ImageNet
    _, topology, kwargs, _ = pod_compile.SETTINGS[name]
    devices = pod_compile.topology_devices(topology, **kwargs)
    hosts = max(d.process_index for d in devices) + 1
    per_host = r['images_per_second'] / hosts
    out[name] = dict(
        roofline_images_per_second=r['images_per_second'],
        hosts=hosts,
        images_per_second_per_host=per_host,
        cores_at_this_rate=per_host / per_core,
    )
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=192, help='Generated JPEGs per split.')
  parser.add_argument('--width', type=int, default=500)
  parser.add_argument('--height', type=int, default=375)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--workers', default='1,2', help='grain worker processes to try ("": none).')
  parser.add_argument('--out', default=None, help='JSON output path.')
  args = parser.parse_args(argv)
  root = tempfile.mkdtemp(prefix='bench_host_input_')
  try:
    write_folder(root, args.images, args.width, args.height)
    core = per_core_rate(root, args.rounds)
    print(
        f'one core: {core["images_per_second"]:.0f} images/s (decode + random-resized crop to '
        f'{SIZE}, {args.width}x{args.height} JPEGs of {core["jpeg_bytes"] / 1e3:.0f} kB)'
    )
    steps = max(1, args.images // args.batch - 1)
    loaders = {f'threads ({streaming._workers()} threads)': ('threads', 0)}  # pylint: disable=protected-access
    if importlib.util.find_spec('grain') is not None:
      for w in filter(None, args.workers.split(',')):
        loaders[f'grain, {w} workers'] = ('grain', int(w))
    host = {}
    for label, (loader, workers) in loaders.items():
      host[label] = loader_rate(root, args.batch, steps, loader, workers)
      print(f'loader {label}: {host[label]:.0f} images/s on {os.cpu_count()} cores')
  finally:
    shutil.rmtree(root, ignore_errors=True)
  demand = pod_demand(core['images_per_second'])
  for name, d in demand.items():
    print(
        f'{name}: {d["roofline_images_per_second"]:,.0f} images/s at the roofline over '
        f'{d["hosts"]} hosts = {d["images_per_second_per_host"]:,.0f} per host, '
        f'{d["cores_at_this_rate"]:.0f} cores at this machine\'s per-core rate'
    )
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(
          dict(
              image=f'{args.width}x{args.height} JPEG q90',
              cpu_count=os.cpu_count(),
              per_core=core,
              loaders=host,
              pod=demand,
          ),
          f,
          indent=2,
      )
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
