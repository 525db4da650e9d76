r"""Compile time of a run's initial state (parameters, optimiser slots, tracker state), by part.

  python benchmarks/bench_initial_state.py                 # the demo config (configs/quickstart.py)
  python benchmarks/bench_initial_state.py --config=tiny --out=/tmp/init.json

For the demo config it compiles the initial state as the run does (training/programs.py: XLA:CPU
at -O1) and at the backend's defaults, with the tracker on and off, with no surrogates, and the
parts alone: the model's init and the tracker's init. (With N replicas the run makes each
replica's state with this same program, one seed at a time, and stacks them: one compile.)
Each figure is one fresh compile (no persistent compilation cache) in this one process, so the
ratios compare like with like; it prints the machine's load beside them.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from training import runtime  # noqa: E402

runtime.configure_xla_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import quickstart, tiny  # noqa: E402
from data import facts as facts_lib  # noqa: E402
from training import plan as plan_lib, programs  # noqa: E402

flags.DEFINE_enum('config', 'quickstart', ['quickstart', 'tiny'], 'which config to compile')
flags.DEFINE_string('out', '', 'write the figures to this JSON file as well')
FLAGS = flags.FLAGS


def _experiment(config):
  plan = plan_lib.make_plan(config, facts_lib.from_config(config.data), 1, 1)
  return programs.build_for(plan, programs.make_mesh(), jnp.zeros(3), jnp.ones(3))


def _compile_seconds(fn, *args, options=None) -> float:
  jax.clear_caches()
  t = time.perf_counter()
  fn.lower(*args).compile(compiler_options=options)
  return time.perf_counter() - t


def _state_seconds(config, options) -> float:
  exp = _experiment(config)
  create = jax.jit(exp.init_state)  # a traced seed: init_state defers to this jit
  return _compile_seconds(create, jnp.int32(0), options=options)


def measure(config) -> dict:
  cheap = programs.INITIAL_STATE_CPU_OPTIONS
  off = config.copy_and_resolve_references()
  off.dynamics.enabled = False
  no_surrogates = config.copy_and_resolve_references()
  no_surrogates.dynamics.surrogates = 0
  exp = _experiment(config)
  image = jnp.zeros((1, 32, 32, 3))
  model_init = jax.jit(
      lambda key: exp.model.init({'params': key, 'dropout': key}, image, train=False)
  )
  key = jax.random.PRNGKey(0)
  rows = {
      'state, as the run compiles it (-O1)': _state_seconds(config, cheap),
      'state, backend defaults': _state_seconds(config, None),
      'state, tracker off (-O1)': _state_seconds(off, cheap),
      'state, tracker off, backend defaults': _state_seconds(off, None),
      'state, no surrogates (-O1)': _state_seconds(no_surrogates, cheap),
      'model init alone (-O1)': _compile_seconds(model_init, key, options=cheap),
      'model init alone, backend defaults': _compile_seconds(model_init, key),
      'tracker init alone': _compile_seconds(jax.jit(exp.tracker.init)),
  }
  return rows


def main(argv):
  del argv
  config = (quickstart if FLAGS.config == 'quickstart' else tiny).get_config()
  rows = measure(config)
  base = rows['state, backend defaults']
  print(f'Initial-state compile, {FLAGS.config} config, {jax.default_backend()}:')
  for name, seconds in rows.items():
    print(f'  {name:40s} {seconds:6.1f} s   {seconds / base:5.2f} x the default compile')
  load = os.getloadavg()
  print(f'load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores')
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(dict(config=FLAGS.config, seconds=rows, load_average=load), f, indent=2)


if __name__ == '__main__':
  app.run(main)
