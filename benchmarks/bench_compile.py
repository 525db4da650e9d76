r"""Compile time of the train step: tracker off, tracker without surrogates, tracker with the
default surrogates (issue 27). Prints ratios from one run, writes JSON; asserts nothing.

  python benchmarks/bench_compile.py                         # ResNet-18 (configs/default.py)
  python benchmarks/bench_compile.py --repeats=2 --step_rounds=2 --out=/tmp/compile.json

1. Compile: the step train.py runs (training/programs.build_for on the run's plan) for
   `--config` (default: configs/default.py, ResNet-18, batch 128), three ways: dynamics.enabled
   False, the tracker with dynamics.surrogates=0, and with the default 39. Each is built afresh
   (new jit objects, jax.clear_caches(), the persistent compilation cache off), then lowered and
   compiled ahead of time; lowering (tracing to StableHLO) and XLA's compile are timed apart.
   The three kinds alternate, `--repeats` rounds, and the medians and the ratios of medians are
   reported: on a shared machine only ratios from interleaved runs mean much. The size of each
   program (StableHLO text, the compiled HLO's instructions, its while loops) is recorded too.
2. The window metrics with their nulls alone (tracker.compute_metrics at the config's window,
   over the model's signals): compile time and run time, surrogates 0 and the default.
3. The probe (the tracker's epoch update, tracker.probe_update jitted as a user's eval step
   would), surrogates 0 and the default, for a `--config` with probe mode: compile time,
   interleaved, medians.
4. Step time: the `--step_config` (tiny) step with metrics due at every timed step (the step
   counter is set back to the window after each call; the signal buffer holds noise so that the
   metrics are finite), the three kinds alternating, `--step_rounds` rounds of one untimed
   and `--steps` timed steps.
The machine's load average is printed and written beside the figures.
"""

import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from training import runtime  # noqa: E402

runtime.configure_xla_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import default, quickstart, tiny  # noqa: E402
from data import facts as facts_lib  # noqa: E402
from dynamics import config as dynamics_config, nulls, tracker as tracker_lib  # noqa: E402
from training import plan as plan_lib, programs  # noqa: E402

CONFIGS = {'default': default, 'quickstart': quickstart, 'tiny': tiny}
flags.DEFINE_enum('config', 'default', list(CONFIGS), 'config whose train step is compiled')
flags.DEFINE_string('model', 'resnet18', 'model (configs/default.py only)')
flags.DEFINE_integer('repeats', 3, 'interleaved compile rounds')
flags.DEFINE_enum('step_config', 'tiny', list(CONFIGS), 'config whose step is timed')
flags.DEFINE_integer('step_rounds', 5, 'interleaved step-time rounds (0: skip part 4)')
flags.DEFINE_integer('steps', 5, 'timed steps per kind per round')
flags.DEFINE_integer('metric_calls', 5, 'timed calls of the metrics alone (0: skip part 2)')
flags.DEFINE_string('out', 'runs/benchmarks/bench_compile.json', 'JSON output path')
FLAGS = flags.FLAGS

KINDS = ('off', 'surrogates_0', 'surrogates_default')


def _config(name: str, kind: str):
  config = CONFIGS[name].get_config(f'model={FLAGS.model}' if name == 'default' else '')
  config.dynamics.enabled = kind != 'off'
  config.dynamics.surrogates = 0 if kind == 'surrogates_0' else dynamics_config.SURROGATES
  return config


def _experiment(config):
  plan = plan_lib.make_plan(config, facts_lib.from_config(config.data), 1, 1)
  return plan, programs.build_for(plan, programs.make_mesh(), jnp.zeros(3), jnp.ones(3))


def _abstract_batch(plan):
  batch = plan.config.batch_size
  return (
      jax.ShapeDtypeStruct((batch,) + tuple(plan.image_shape), jnp.uint8),
      jax.ShapeDtypeStruct((batch,), jnp.int32),
  )


def _program_size(lowered_text: str, compiled_text: str) -> dict:
  instructions = [line for line in compiled_text.splitlines() if ' = ' in line]
  return dict(
      stablehlo_chars=len(lowered_text),
      hlo_instructions=len(instructions),
      hlo_while_loops=sum(bool(re.search(r'\bwhile\(', line)) for line in instructions),
      hlo_sorts=sum(bool(re.search(r'\bsort\(', line)) for line in instructions),
  )


def compile_once(kind: str) -> dict:
  """One fresh lower + compile of the train step of `kind`."""
  jax.clear_caches()
  plan, exp = _experiment(_config(FLAGS.config, kind))
  state = jax.eval_shape(lambda: exp.init_state(0))
  images, labels = _abstract_batch(plan)
  t = time.perf_counter()
  lowered = exp.train_step.lower(state, images, labels)
  lower_s = time.perf_counter() - t
  t = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  row = dict(lower_s=lower_s, compile_s=compile_s, total_s=lower_s + compile_s)
  row.update(_program_size(lowered.as_text(), compiled.as_text()))
  if exp.tracker is not None:
    row['signals'] = len(exp.tracker.signal_names)
    row['window'] = int(plan.config.dynamics.window)
  return row


def compile_times() -> dict:
  rows = {kind: [] for kind in KINDS}
  for r in range(FLAGS.repeats):
    for kind in KINDS[r % 3 :] + KINDS[: r % 3]:
      rows[kind].append(compile_once(kind))
      print(
          f'  round {r + 1} {kind:20s} lower {rows[kind][-1]["lower_s"]:5.2f} s, '
          f'compile {rows[kind][-1]["compile_s"]:5.2f} s',
          flush=True,
      )
  median = {
      kind: {
          key: statistics.median(row[key] for row in rows[kind])
          for key in ('lower_s', 'compile_s', 'total_s')
      }
      for kind in KINDS
  }
  return dict(
      runs=rows,
      median=median,
      ratio_default_to_0=median['surrogates_default']['total_s']
      / median['surrogates_0']['total_s'],
      ratio_0_to_off=median['surrogates_0']['total_s'] / median['off']['total_s'],
  )


def metrics_alone(signals: int) -> dict:
  """compute_metrics with and without the nulls, as the `--config` run's step window computes
  them (its window and DFA scales): compile and run time."""
  out = {}
  config = _config(FLAGS.config, 'surrogates_0')
  dcfg = plan_lib.make_plan(config, facts_lib.from_config(config.data), 1, 1).config.dynamics
  window = int(dcfg.window)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((signals, window)), jnp.float32)
  base = jax.random.key_data(jax.random.key(0))
  for kind, surrogates in (
      ('surrogates_0', 0),
      ('surrogates_default', dynamics_config.SURROGATES),
  ):
    dcfg.surrogates = surrogates
    spec = tracker_lib.MetricSpec.from_config(dcfg)
    scales = tracker_lib.resolve_scales(dcfg, window, strict=True)

    # The key is an argument, as in the step: a constant key would let XLA fold the draws.
    def f(x, base, spec=spec, scales=scales, surrogates=surrogates):
      key = nulls.evaluation_key(base, 0, 0) if surrogates else None
      return tracker_lib.compute_metrics(x, spec, scales, key)

    jax.clear_caches()
    t = time.perf_counter()
    compiled = jax.jit(f).lower(x, base).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(x, base))
    times = []
    for _ in range(FLAGS.metric_calls):
      t = time.perf_counter()
      jax.block_until_ready(compiled(x, base))
      times.append(time.perf_counter() - t)
    out[kind] = dict(compile_s=compile_s, run_ms=1e3 * statistics.median(times))
  return out


def probe_times() -> dict:
  """Compile time of the probe update (tracker.probe_update) with and without the nulls."""
  kinds = ('surrogates_0', 'surrogates_default')
  times = {kind: [] for kind in kinds}
  for r in range(FLAGS.repeats):
    for kind in kinds[r % 2 :] + kinds[: r % 2]:
      jax.clear_caches()
      _, exp = _experiment(_config(FLAGS.config, kind))
      state = jax.eval_shape(exp.tracker.init)
      signals = jax.ShapeDtypeStruct((len(exp.tracker.signal_names),), jnp.float32)
      t = time.perf_counter()
      jax.jit(exp.tracker.probe_update).lower(state, signals).compile()
      times[kind].append(time.perf_counter() - t)
  median = {kind: statistics.median(ts) for kind, ts in times.items()}
  return dict(
      runs=times,
      median_s=median,
      ratio_default_to_0=median['surrogates_default'] / median['surrogates_0'],
  )


class Step:
  """The `--step_config` train step of one kind, compiled, with metrics due at every call."""

  def __init__(self, kind: str):
    plan, self.exp = _experiment(_config(FLAGS.step_config, kind))
    state = self.exp.init_state(0)
    self.window = None
    if self.exp.tracker is not None:
      self.window = int(plan.config.dynamics.window)
      dyn = dict(state.dynamics)
      noise = np.random.default_rng(0).standard_normal(dyn['step_signals'].shape)
      dyn['step_signals'] = jnp.asarray(noise, jnp.float32)
      state = state.replace(dynamics=dyn, step=jnp.asarray(self.window, jnp.int32))
    self.state = state
    shape = _abstract_batch(plan)
    rng = np.random.default_rng(0)
    self.images = jnp.asarray(rng.integers(0, 256, shape[0].shape, np.uint8))
    self.labels = jnp.asarray(rng.integers(0, plan.data.num_classes, shape[1].shape), jnp.int32)
    self.compiled = self.exp.train_step.lower(self.state, self.images, self.labels).compile()
    self.kind = kind

  def __call__(self):
    state, metrics = self.compiled(self.state, self.images, self.labels)
    jax.block_until_ready((state, metrics))
    if self.window is not None:
      if not np.isfinite(float(metrics['dynamics/dsi'])):
        raise RuntimeError(f'{self.kind}: the tracker did not compute its metrics')
      state = state.replace(step=jnp.asarray(self.window, jnp.int32))
    self.state = state


def step_times() -> dict:
  steps = {kind: Step(kind) for kind in KINDS}
  times = {kind: [] for kind in KINDS}
  for r in range(FLAGS.step_rounds):
    for kind in KINDS[r % 3 :] + KINDS[: r % 3]:
      steps[kind]()  # untimed, after the switch
      for _ in range(FLAGS.steps):
        t = time.perf_counter()
        steps[kind]()
        times[kind].append(time.perf_counter() - t)
  median = {kind: statistics.median(ts) for kind, ts in times.items()}
  return dict(
      config=FLAGS.step_config,
      window=steps['surrogates_0'].window,
      step_ms={kind: 1e3 * v for kind, v in median.items()},
      ratio_default_to_0=median['surrogates_default'] / median['surrogates_0'],
      ratio_0_to_off=median['surrogates_0'] / median['off'],
  )


def main(argv):
  del argv
  load_start = os.getloadavg()
  what = f'model={FLAGS.model}' if FLAGS.config == 'default' else _config(FLAGS.config, 'off').model
  print(f'Train-step compile, configs/{FLAGS.config}.py ({what}), {jax.default_backend()}:')
  result = dict(config=FLAGS.config, model=FLAGS.model, surrogates=dynamics_config.SURROGATES)
  result['compile'] = c = compile_times()
  for kind in KINDS:
    m, size = c['median'][kind], c['runs'][kind][0]
    print(
        f'  {kind:20s} median lower {m["lower_s"]:5.2f} s + compile {m["compile_s"]:5.2f} s '
        f'= {m["total_s"]:5.2f} s; StableHLO {size["stablehlo_chars"] / 1e3:7.0f} kchars, '
        f'{size["hlo_instructions"]:6d} HLO instructions, {size["hlo_while_loops"]} while loops'
    )
  print(
      f'  surrogates {dynamics_config.SURROGATES} / surrogates 0: '
      f'{c["ratio_default_to_0"]:.2f}x   (surrogates 0 / off: {c["ratio_0_to_off"]:.2f}x)'
  )
  run = c['runs']['surrogates_0'][0]
  if FLAGS.metric_calls:
    result['metrics_alone'] = m = metrics_alone(run['signals'])
    print(f'Window metrics alone ({run["signals"]} signals x {run["window"]} samples):')
    for kind, row in m.items():
      print(f'  {kind:20s} compile {row["compile_s"]:5.2f} s, run {row["run_ms"]:7.1f} ms')
  if _config(FLAGS.config, 'surrogates_0').dynamics.probe_mode:
    result['probe'] = p = probe_times()
    print('Probe update (lower + compile), medians:')
    for kind, seconds in p['median_s'].items():
      print(f'  {kind:20s} {seconds:5.2f} s')
    print(
        f'  surrogates {dynamics_config.SURROGATES} / surrogates 0: {p["ratio_default_to_0"]:.2f}x'
    )
  if FLAGS.step_rounds:
    result['step'] = s = step_times()
    print(f'Step time, configs/{FLAGS.step_config}.py (window {s["window"]}), medians:')
    for kind, ms in s['step_ms'].items():
      print(f'  {kind:20s} {ms:7.1f} ms')
    print(
        f'  surrogates {dynamics_config.SURROGATES} / surrogates 0: {s["ratio_default_to_0"]:.3f}x'
        f'   (surrogates 0 / off: {s["ratio_0_to_off"]:.3f}x)'
    )
  load = os.getloadavg()
  print(
      f'load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores '
      f'(at the start: {load_start[0]:.1f} {load_start[1]:.1f} {load_start[2]:.1f})'
  )
  result.update(load_average_start=load_start, load_average_end=load, cores=os.cpu_count())
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      json.dump(result, f, indent=1)
    print(f'JSON: {FLAGS.out}')


if __name__ == '__main__':
  jax.config.update('jax_enable_compilation_cache', False)  # every compile a real one
  app.run(main)
