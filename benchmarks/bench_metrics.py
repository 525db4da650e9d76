"""Speed of the jitted dynamics metrics against a per-series numpy/scipy loop of the same
definitions and against nolds (prints ratios and writes JSON; asserts nothing about speed).

    python benchmarks/bench_metrics.py                 # L in {8, 64, 256} x T in {64, 512, 4096}
    python benchmarks/bench_metrics.py --taps=64 --length=512   # one size

Both the JAX side and the numpy loop compute integration (per-layer mean DFA alpha, default
scales), synchrony, metastability and the product-form DSI from one [L, T] array; the JAX
side is compiled once (compile time reported separately) and timed with block_until_ready.
nolds (when installed) only has DFA, so it is timed on the integration score alone, against
the jitted integration alone. The last lines fit how each cost grows with L and T.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import scipy.signal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import runtime  # noqa: E402

runtime.configure_xla_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import dynamics  # noqa: E402

try:
  import nolds
except ImportError:  # an optional comparison (requirements-dev.txt)
  nolds = None


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
  row = dict(
      taps=taps,
      length=length,
      scales=len(scales),
      compile_s=compile_s,
      jax_s=jax_s,
      numpy_s=np_s,
      speedup=np_s / jax_s,
  )
  if nolds is not None:
    integ = jax.jit(lambda x: dynamics.integration(x, scales))
    jax.block_until_ready(integ(xj))
    row['jax_integration_s'] = _median_time(lambda: jax.block_until_ready(integ(xj)), repeats, 10.0)
    row['nolds_s'] = _median_time(
        lambda: [
            nolds.dfa(s, nvals=scales, overlap=False, fit_exp='poly') for s in x.astype(np.float64)
        ],
        max(1, repeats // 10),
        budget_s=5.0,
    )
    row['speedup_vs_nolds'] = row['nolds_s'] / row['jax_integration_s']
  if check:
    got = [float(v) for v in metrics(xj)]
    want = numpy_metrics(x, scales)
    row['max_abs_diff'] = max(abs(g - w) for g, w in zip(got, want))
  return row


def _print(row: dict) -> None:
  diff = f"  max|jax-numpy| {row['max_abs_diff']:.1e}" if 'max_abs_diff' in row else ''
  vs_nolds = ''
  if 'nolds_s' in row:
    vs_nolds = (
        f"  | DFA: jax {row['jax_integration_s'] * 1e3:8.3f} ms  nolds "
        f"{row['nolds_s'] * 1e3:9.1f} ms  {row['speedup_vs_nolds']:8.1f}x"
    )
  print(
      f"L={row['taps']:4d} T={row['length']:5d} (S={row['scales']:2d})  "
      f"jax {row['jax_s'] * 1e3:9.3f} ms  numpy {row['numpy_s'] * 1e3:10.1f} ms  "
      f"speed-up {row['speedup']:9.1f}x  (compile {row['compile_s']:.2f} s){vs_nolds}{diff}"
  )


def growth(rows: list, key: str) -> tuple:
  """Least-squares exponents (a, b) of cost ~ L^a T^b over the grid."""
  design = np.array([[1.0, np.log(r['taps']), np.log(r['length'])] for r in rows])
  coef, *_ = np.linalg.lstsq(design, np.log([r[key] for r in rows]), rcond=None)
  return float(coef[1]), float(coef[2])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--taps', type=int, help='one size instead of the grid (with --length)')
  parser.add_argument('--length', type=int, default=512)
  parser.add_argument('--repeats', type=int, default=50)
  parser.add_argument('--out', default='runs/benchmarks/bench_metrics.json')
  args = parser.parse_args()

  print(
      f'jax {jax.__version__} on {jax.devices()[0].device_kind} '
      f'({jax.default_backend()}), float32; numpy/scipy float64 loop per series; '
      + ('nolds ' + ('installed' if nolds else 'not installed'))
  )
  sizes = (
      [(args.taps, args.length)]
      if args.taps
      else [(taps, length) for taps in (8, 64, 256) for length in (64, 512, 4096)]
  )
  rows = []
  for taps, length in sizes:
    rows.append(bench(taps, length, args.repeats, check=(taps, length) == sizes[0]))
    _print(rows[-1])
  if len(rows) > 1:
    for key, label in (('jax_s', 'jax'), ('numpy_s', 'numpy loop'), ('nolds_s', 'nolds DFA')):
      if key in rows[0]:
        a, b = growth(rows, key)
        print(f'{label:10s} cost grows as L^{a:.2f} T^{b:.2f}')
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(dict(jax=jax.__version__, backend=jax.default_backend(), rows=rows), f, indent=1)
  print(f'JSON: {args.out}')


if __name__ == '__main__':
  main()
