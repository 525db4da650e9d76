r"""Speed of `analyze.py ablate`: a 12-definition grid over finished runs, by stage.

  python benchmarks/bench_ablation.py --runs=runs/quickstart          # the demo run
  python benchmarks/bench_ablation.py --runs=results/confirm/runs --nostages --nonew_process

The grid: the DFA scale range and integration method, the phase preprocessing and edge, the
step window, the DSI form and the detector (12 definitions with the logged one, one axis at a
time, on the demo's definition). Prints, per stage, the definitions, their seconds and seconds
per run-definition (the window stage split into the step windows and the epoch probe), each
stage computed as the job computes it (`grid.recompute_all`: a stage's definitions of a run
together) and compiled from nothing (the persistent compilation cache is an empty temporary
folder); then the wall time of the whole job (the check and the outputs included) run again in
the same process (compiled), and once more in a new process that finds the programs in the
persistent cache (`python analyze.py ablate`, what a second job on the machine waits for,
the interpreter's start and imports included). JSON to --out, with the machine's load average
(1, 5, 15 minutes) at the start and at the end: on a shared machine the figures are only as
quiet as that.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import runtime  # noqa: E402

runtime.configure_xla_cpu()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from analysis import grid, grid_report  # noqa: E402
from analysis import runs as runs_lib  # noqa: E402

flags.DEFINE_multi_string('runs', None, 'A run, or a folder of runs.')
flags.DEFINE_string('out', 'runs/benchmarks/bench_ablation.json', 'JSON output path.')
flags.DEFINE_bool(
    'stages',
    True,
    'Time the stages first (compiled from nothing); the whole job then runs compiled. False: '
    'only the whole job, compiled from nothing (one pass: for many runs).',
)
flags.DEFINE_bool(
    'new_process', True, 'Also time the whole job in a new process with the persistent cache.'
)
FLAGS = flags.FLAGS

GRID = (
    'dfa_min_scale=3,4',
    'dfa_max_divisor=2,3',
    'integration_method=per_layer_mean,mean_field',
    'phase_preprocess=detrend,demean,diff',
    'phase_edge=0,8',
    'window=128,96',
    'dsi_form=product,linear',
    'convergence_rho=0.25,0.4',
    'convergence_patience=3,5',
    'volatility_window_steps=25,40',
)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main(argv):
  del argv
  load_start = os.getloadavg()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  stages, parts, fresh = {}, {}, None
  with tempfile.TemporaryDirectory() as cache:
    # Compiled from nothing: an empty persistent cache, which the first pass fills.
    jax.config.update('jax_compilation_cache_dir', cache)
    runs = [runs_lib.load_run(w) for w in runs_lib.find_runs(FLAGS.runs)]
    base = runs[0].dynamics_config()
    defs = grid.definitions(grid.parse_grid(GRID), base, product=False)
    if FLAGS.stages:
      by_stage = {}
      for overrides in defs:
        by_stage.setdefault(grid._stage(overrides), []).append(overrides)  # pylint: disable=protected-access
      for stage, stage_defs in by_stage.items():
        start = time.perf_counter()
        for run in runs:
          grid.recompute_all(run, stage_defs, timings=parts if stage == 'window' else None)
        stages[stage] = {
            'definitions': len(stage_defs),
            'seconds': time.perf_counter() - start,
        }
      stages['window'].update({f'{k}_seconds': v for k, v in parts.items()})
    with tempfile.TemporaryDirectory() as out:
      start, cpu = time.perf_counter(), _cpu_seconds()
      grid_report.run_job(FLAGS.runs, GRID, out)
      total, job_cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if FLAGS.new_process:
      with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, 'analyze.py', 'ablate', f'--out={out}']
        command += [f'--runs={r}' for r in FLAGS.runs] + [f'--grid={g}' for g in GRID]
        start = time.perf_counter()
        subprocess.run(
            command,
            cwd=root,
            check=True,
            capture_output=True,
            env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache),
        )
        fresh = time.perf_counter() - start
  print(f'{len(defs)} definitions x {len(runs)} run(s)')
  if stages:
    print(f'{"stage":<10} {"definitions":>11} {"seconds":>9} {"s per run-definition":>21}')
    for stage, e in stages.items():
      per = e['seconds'] / max(1, e['definitions'] * len(runs))
      print(f'{stage:<10} {e["definitions"]:>11} {e["seconds"]:>9.1f} {per:>21.2f}')
    print('window: ' + ', '.join(f'{k} {v:.1f} s' for k, v in parts.items()))
  again = 'again in the same process' if FLAGS.stages else 'compiled from nothing'
  print(f'the whole job, {again}: {total:.1f} s ({job_cpu:.0f} s of CPU time)')
  if fresh is not None:
    print(f'the whole job, a new process, programs in the persistent cache: {fresh:.1f} s')
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(
        dict(
            runs=FLAGS.runs,
            num_runs=len(runs),
            definitions=len(defs),
            grid=GRID,
            job_seconds=total,
            job_compiled_before=bool(FLAGS.stages),
            # The process's user + system time during the job (every thread): less sensitive
            # to the load than the wall time; a quiet machine's wall time is about this over
            # the cores the job keeps busy.
            job_cpu_seconds=job_cpu,
            job_seconds_new_process_cached=fresh,
            stages=stages,
            machine=platform.processor() or platform.machine(),
            cpus=os.cpu_count(),
            load_average_start=load_start,
            load_average_end=os.getloadavg(),
        ),
        f,
        indent=2,
    )


if __name__ == '__main__':
  flags.mark_flag_as_required('runs')
  app.run(main)
