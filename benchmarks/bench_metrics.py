"""Speed of the jitted dynamics metrics against a per-series numpy/scipy loop of the same
definitions (run by hand; prints ratios, asserts nothing about speed).

    python benchmarks/bench_metrics.py            # 64 taps x 512 samples, float32
    python benchmarks/bench_metrics.py --sweep    # also L in {8, 64, 256} x T in {64, 512, 4096}

Both sides compute integration (per-layer mean DFA alpha, default scales), synchrony,
metastability and the product-form DSI from one [L, T] array. The JAX side is compiled once
(compile time reported separately) and timed with block_until_ready.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dynamics  # noqa: E402


def numpy_metrics(x: np.ndarray, scales) -> tuple[float, float, float, float]:
  """The definitions of DESIGN.md section 3, one series at a time (float64)."""
  alphas = []
  for series in x:
    profile = np.cumsum(series - series.mean())
    fluct = []
    for n in scales:
      i = np.arange(n)
      sq = []
      for j in range(series.size // n):
        seg = profile[j * n : (j + 1) * n]
        sq.append(np.mean((seg - np.polyval(np.polyfit(i, seg, 1), i)) ** 2))
      fluct.append(np.sqrt(np.mean(sq)))
    fluct = np.asarray(fluct)
    keep = fluct != 0
    if keep.sum() >= 2:
      alphas.append(np.polyfit(np.log(np.asarray(scales)[keep]), np.log(fluct[keep]), 1)[0])
  integ = float(np.mean(alphas)) if alphas else float('nan')
  phases = []
  for series in x:
    r = scipy.signal.detrend(series)
    sd = r.std()
    z = r / sd if sd > 0 else np.zeros_like(r)
    phases.append(np.angle(scipy.signal.hilbert(z)))
  order = np.abs(np.exp(1j * np.asarray(phases)).mean(axis=0))
  sync, meta = float(order.mean()), float(order.std())
  return integ, sync, meta, integ * (1 - meta)


def make_jax_metrics(scales):
  @jax.jit
  def metrics(x):
    integ = dynamics.integration(x, scales)
    meta = dynamics.metastability(x)
    return integ, dynamics.synchrony(x), meta, dynamics.stability_index(integ, meta)

  return metrics


def _median_time(fn, repeats: int, budget_s: float) -> float:
  times = []
  deadline = time.perf_counter() + budget_s
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    if time.perf_counter() > deadline:
      break
  return statistics.median(times)


def bench(taps: int, length: int, repeats: int, check: bool = True) -> dict:
  rng = np.random.default_rng(0)
  # Random walks: non-stationary, like layer activations during training.
  x = np.cumsum(rng.standard_normal((taps, length)), axis=-1).astype(np.float32)
  scales = dynamics.default_scales(length)
  metrics = make_jax_metrics(scales)
  xj = jnp.asarray(x)

  t0 = time.perf_counter()
  jax.block_until_ready(metrics(xj))
  compile_s = time.perf_counter() - t0
  jax_s = _median_time(lambda: jax.block_until_ready(metrics(xj)), repeats, budget_s=10.0)
  np_s = _median_time(lambda: numpy_metrics(x, scales), max(1, repeats // 10), budget_s=5.0)
  row = dict(taps=taps, length=length, scales=len(scales), compile_s=compile_s, jax_s=jax_s,
       numpy_s=np_s, speedup=np_s / jax_s)
  if check:
    got = [float(v) for v in metrics(xj)]
    want = numpy_metrics(x, scales)
    row['max_abs_diff'] = max(abs(g - w) for g, w in zip(got, want))
  return row


def _print(row: dict) -> None:
  diff = f"  max|jax-numpy| {row['max_abs_diff']:.1e}" if 'max_abs_diff' in row else ''
  print(
    f"L={row['taps']:4d} T={row['length']:5d} (S={row['scales']:2d})  "
    f"jax {row['jax_s'] * 1e3:9.3f} ms  numpy {row['numpy_s'] * 1e3:10.1f} ms  "
    f"speed-up {row['speedup']:9.1f}x  (compile {row['compile_s']:.2f} s){diff}"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--taps', type=int, default=64)
  parser.add_argument('--length', type=int, default=512)
  parser.add_argument('--repeats', type=int, default=50)
  parser.add_argument('--sweep', action='store_true', help='L in {8,64,256} x T in {64,512,4096}')
  args = parser.parse_args()

  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
     f'({jax.default_backend()}), float32; numpy/scipy float64 loop per series')
  _print(bench(args.taps, args.length, args.repeats))
  if args.sweep:
    print('sweep:')
    for taps in (8, 64, 256):
      for length in (64, 512, 4096):
        _print(bench(taps, length, args.repeats, check=False))


if __name__ == '__main__':
  main()
