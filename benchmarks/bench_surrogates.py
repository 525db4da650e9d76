"""Cost of the surrogate nulls (prints ratios and writes JSON; asserts nothing about speed).

    python benchmarks/bench_surrogates.py                  # both parts, every CIFAR model
    python benchmarks/bench_surrogates.py --models=resnet18 --numpy_surrogates=10

1. Throughput: `--num` (1000) surrogates of `--signals` (64) x `--length` (512) samples with the
   metrics on each (phase surrogates -> synchrony and metastability, shuffle surrogates ->
   integration, as the tracker's default nulls), in one jitted call, against a per-surrogate
   numpy loop of the same surrogates and definitions. The numpy loop is vectorised over signals
   inside each surrogate (float64 FFTs, DFA by a projector matmul per scale), a strong baseline;
   it is timed on `--numpy_surrogates` surrogates and scaled linearly (it is a loop).
2. Cost inside the train step, from XLA's cost analysis of the compiled step (deterministic,
   unlike wall time on a shared machine): FLOPs and bytes accessed of the step without the
   tracker, with the tracker and no surrogates, and with the tracker at the default
   `dynamics.surrogates`, for every model at its configs/default.py setting and `--batch`. The
   compiled step keeps the metrics under a `lax.cond`, and XLA's cost analysis counts a
   conditional's branches, so the metric work is also measured on its own: the window metrics
   with their nulls, compiled unconditionally, over the model's signals.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import runtime  # noqa: E402

runtime.configure_xla_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import dynamics  # noqa: E402
from benchmarks.timing import time_calls  # noqa: E402
from configs import default  # noqa: E402
from dynamics import config as dynamics_config  # noqa: E402
from dynamics import dfa, nulls, tracker as tracker_lib  # noqa: E402
from training import programs  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer('num', 1000, 'surrogates per test')
flags.DEFINE_integer('signals', 64, 'signals')
flags.DEFINE_integer('length', 512, 'samples per signal')
flags.DEFINE_integer('numpy_surrogates', 20, 'surrogates the vectorised numpy loop is timed on')
flags.DEFINE_integer('reference_surrogates', 3, 'surrogates the reference numpy loop is timed on')
flags.DEFINE_list(
    'models',
    ['resnet18', 'resnet34', 'resnet50', 'vgg16', 'densenet121', 'mobilenetv2'],
    'models for the step cost (' ' = skip part 2)',
)
flags.DEFINE_integer('batch', 128, 'global batch of the step cost (configs/default.py: 128)')
flags.DEFINE_string('out', '', 'JSON output path (default: print only)')


# --------------------------------------------------------------------------- 1. throughput


def numpy_metrics(x: np.ndarray, scales, projectors) -> tuple:
  """integration (per-layer mean DFA), synchrony, metastability of x f64[S, T]."""
  xc = x - x.mean(-1, keepdims=True)
  fluct = []
  for n, d in zip(scales, projectors):
    k = x.shape[-1] // n
    resid = xc[:, : k * n].reshape(x.shape[0], k, n) @ d
    fluct.append(np.sqrt(np.mean(resid**2, axis=(1, 2))))
  log_f = np.log(np.stack(fluct, -1))
  alpha = np.polyfit(np.log(scales), log_f.T, 1)[0]
  t = np.arange(x.shape[-1]) - (x.shape[-1] - 1) / 2
  r = xc - (xc @ t / (t @ t))[:, None] * t
  z = r / r.std(-1, keepdims=True)
  spectrum = np.fft.fft(z, axis=-1)
  h = np.zeros(x.shape[-1])
  h[0] = 1
  h[1 : (x.shape[-1] + 1) // 2] = 2
  if x.shape[-1] % 2 == 0:
    h[x.shape[-1] // 2] = 1
  a = np.fft.ifft(spectrum * h, axis=-1)
  order = np.abs(np.mean(a / np.abs(a), axis=0))
  return alpha.mean(), order.mean(), order.std()


def numpy_loop(x: np.ndarray, num: int, scales, rng, reference: bool = False) -> np.ndarray:
  """Per surrogate: a phase surrogate for the phase metrics, a shuffle for integration.

  reference=True computes the metrics with benchmarks/bench_metrics.numpy_metrics, the
  per-series numpy/scipy reference of the definitions (a polyfit per DFA window)."""
  from benchmarks import bench_metrics  # pylint: disable=g-import-not-at-top

  projectors = [dfa._detrend_cumsum_matrix(n, 1) for n in scales]  # pylint: disable=protected-access
  metrics = (
      (lambda v: bench_metrics.numpy_metrics(v, scales)[:3])
      if reference
      else (lambda v: numpy_metrics(v, scales, projectors))
  )
  out = []
  n = x.shape[-1]
  spectrum = np.fft.rfft(x, axis=-1)
  for _ in range(num):
    theta = rng.uniform(0, 2 * np.pi, spectrum.shape)
    theta[:, 0] = 0
    if n % 2 == 0:
      theta[:, -1] = 0
    phase = np.fft.irfft(spectrum * np.exp(1j * theta), n=n, axis=-1)
    shuffled = rng.permuted(x, axis=-1)
    integ = metrics(shuffled)[0]
    _, sync, meta = metrics(phase)
    out.append((integ, sync, meta))
  return np.asarray(out)


def throughput() -> dict:
  rng = np.random.default_rng(0)
  x = rng.standard_normal((FLAGS.signals, FLAGS.length)).cumsum(-1) * 0.1 + rng.standard_normal(
      (FLAGS.signals, FLAGS.length)
  )
  scales = dynamics.default_scales(FLAGS.length)
  num = FLAGS.num

  @jax.jit
  def tests(key, x):
    k1, k2 = jax.random.split(key)
    integ = dynamics.surrogate_test(
        lambda s: dynamics.integration(s, scales), x, k1, num, 'shuffle'
    )
    phased = dynamics.surrogates(k2, x, num, 'phase')
    sync = dynamics.synchrony(phased)
    meta = dynamics.metastability(phased)
    return integ['z'], sync, meta

  xj = jnp.asarray(x, jnp.float32)
  key = jax.random.key(0)
  t = time.perf_counter()
  jax.block_until_ready(tests(key, xj))
  compile_s = time.perf_counter() - t
  jax_s = float(np.median(time_calls(lambda: jax.block_until_ready(tests(key, xj)), 3)))
  m = FLAGS.numpy_surrogates
  t = time.perf_counter()
  numpy_loop(x, m, scales, rng)
  numpy_s = (time.perf_counter() - t) * num / m
  m_ref = FLAGS.reference_surrogates
  t = time.perf_counter()
  numpy_loop(x, m_ref, scales, rng, reference=True)
  reference_s = (time.perf_counter() - t) * num / m_ref
  return dict(
      num=num,
      signals=FLAGS.signals,
      length=FLAGS.length,
      jax_s=jax_s,
      jax_compile_s=compile_s,
      numpy_s_scaled=numpy_s,
      numpy_surrogates_timed=m,
      reference_s_scaled=reference_s,
      reference_surrogates_timed=m_ref,
      speedup=numpy_s / jax_s,
      speedup_reference=reference_s / jax_s,
  )


# --------------------------------------------------------------------------- 2. step cost


def _cost(compiled) -> tuple:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', np.nan)), float(cost.get('bytes accessed', np.nan))


def _step_cost(name: str, enabled: bool, surrogates: int):
  config = default.get_config(f'model={name}')
  config.batch_size = FLAGS.batch
  config.dynamics.enabled = enabled
  config.dynamics.surrogates = surrogates
  window = config.dynamics.window
  total = window + 10_000
  exp = programs.build(
      config,
      10,
      (32, 32, 3),
      jnp.zeros(3),
      jnp.ones(3),
      steps_per_epoch=total,
      total_steps=total,
      mesh=programs.make_mesh(),
  )
  state = jax.eval_shape(lambda: exp.init_state(0))
  images = jax.ShapeDtypeStruct((FLAGS.batch, 32, 32, 3), jnp.uint8)
  labels = jax.ShapeDtypeStruct((FLAGS.batch,), jnp.int32)
  compiled = exp.train_step.lower(state, images, labels).compile()
  return _cost(compiled), exp


def _metric_cost(num_signals: int, surrogates: int) -> tuple:
  """The window metrics (+ nulls) of one evaluation, compiled on their own (no cond)."""
  dcfg = dynamics_config.default_config()
  dcfg.surrogates = surrogates
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  scales = tracker_lib.resolve_scales(dcfg, dcfg.window, strict=True)
  x = jax.ShapeDtypeStruct((num_signals, dcfg.window), jnp.float32)
  base = jax.random.key_data(jax.random.key(0))

  def f(x):
    key = nulls.evaluation_key(base, 0, 0) if surrogates else None
    return tracker_lib.compute_metrics(x, spec, scales, key)

  return _cost(jax.jit(f).lower(x).compile())


def step_cost(name: str) -> dict:
  surrogates = dynamics_config.SURROGATES
  t = time.perf_counter()
  (off_f, off_b), _ = _step_cost(name, False, 0)
  (bare_f, bare_b), exp = _step_cost(name, True, 0)
  (on_f, on_b), _ = _step_cost(name, True, surrogates)
  num_signals = len(exp.tracker.signal_names)
  metric_f, metric_b = _metric_cost(num_signals, 0)
  null_f, null_b = _metric_cost(num_signals, surrogates)
  return dict(
      model=name,
      batch=FLAGS.batch,
      signals=num_signals,
      surrogates=surrogates,
      step_gflop={'off': off_f / 1e9, 'tracker': bare_f / 1e9, 'tracker_surrogates': on_f / 1e9},
      step_gbytes={'off': off_b / 1e9, 'tracker': bare_b / 1e9, 'tracker_surrogates': on_b / 1e9},
      share_flops=(on_f - off_f) / off_f,
      share_bytes=(on_b - off_b) / off_b,
      surrogate_share_flops=(on_f - bare_f) / off_f,
      metrics_alone_share_flops=null_f / off_f,
      metrics_alone_share_bytes=null_b / off_b,
      metrics_alone_mflop={'no_surrogates': metric_f / 1e6, 'surrogates': null_f / 1e6},
      seconds=time.perf_counter() - t,
  )


def main(argv):
  del argv
  result = {'throughput': throughput()}
  r = result['throughput']
  print(
      f"{r['num']} surrogates x {r['signals']} signals x {r['length']} samples, metrics on each: "
      f"JAX {r['jax_s']:.3f} s (compile {r['jax_compile_s']:.1f} s), numpy loop "
      f"{r['numpy_s_scaled']:.1f} s vectorised over signals (timed on "
      f"{r['numpy_surrogates_timed']}, scaled): speed-up {r['speedup']:.1f}x; per-series "
      f"reference loop {r['reference_s_scaled']:.0f} s (timed on "
      f"{r['reference_surrogates_timed']}): speed-up {r['speedup_reference']:.0f}x",
      flush=True,
  )
  result['steps'] = []
  models = [m for m in FLAGS.models if m]
  if models:
    print(
        f"\n{'model':12s} {'signals':>7s} {'GFLOP off':>10s} {'tracker+nulls':>13s} "
        f"{'share FLOPs':>11s} {'share bytes':>11s} {'metrics alone':>13s}"
    )
  for name in models:
    row = step_cost(name)
    result['steps'].append(row)
    print(
        f"{name:12s} {row['signals']:7d} {row['step_gflop']['off']:10.1f} "
        f"{row['step_gflop']['tracker_surrogates']:13.1f} {100 * row['share_flops']:10.3f}% "
        f"{100 * row['share_bytes']:10.3f}% {100 * row['metrics_alone_share_flops']:12.3f}%",
        flush=True,
    )
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
