r"""Speed of `analyze.py ablate`: a 12-definition grid over finished runs, by stage.

  python benchmarks/bench_ablation.py --runs=runs/quickstart          # the demo run
  python benchmarks/bench_ablation.py --runs=results/confirm/runs

The grid: the DFA scale range and integration method, the phase preprocessing and edge, the
step window, the DSI form and the detector (12 definitions with the logged one, one axis at a
time, on the demo's definition). Prints the wall time of
the whole job (what a user waits for, the check and the outputs included), and per stage the
definitions, their seconds and seconds per run-definition; JSON to --out, with the machine's
load average (1, 5, 15 minutes) at the start and at the end: on a shared machine the figures
are only as quiet as that.
"""

import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import runtime  # noqa: E402

runtime.configure_xla_cpu()

from absl import app, flags  # noqa: E402

from analysis import grid, grid_report  # noqa: E402
from analysis import runs as runs_lib  # noqa: E402

flags.DEFINE_multi_string('runs', None, 'A run, or a folder of runs.')
flags.DEFINE_string('out', 'runs/benchmarks/bench_ablation.json', 'JSON output path.')
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


def main(argv):
  del argv
  load_start = os.getloadavg()
  runs = [runs_lib.load_run(w) for w in runs_lib.find_runs(FLAGS.runs)]
  base = runs[0].dynamics_config()
  defs = grid.definitions(grid.parse_grid(GRID), base, product=False)
  stages = {}
  for overrides in defs:
    stage = grid._stage(overrides)  # pylint: disable=protected-access
    start = time.perf_counter()
    for run in runs:
      grid.recompute(run, overrides)
    entry = stages.setdefault(stage, {'definitions': 0, 'seconds': 0.0})
    entry['definitions'] += 1
    entry['seconds'] += time.perf_counter() - start
  with tempfile.TemporaryDirectory() as out:
    start = time.perf_counter()
    grid_report.run_job(FLAGS.runs, GRID, out)
    total = time.perf_counter() - start
  print(f'{len(defs)} definitions x {len(runs)} run(s): the whole job took {total:.1f} s')
  print(f'{"stage":<10} {"definitions":>11} {"seconds":>9} {"s per run-definition":>21}')
  for stage, e in stages.items():
    per = e['seconds'] / max(1, e['definitions'] * len(runs))
    print(f'{stage:<10} {e["definitions"]:>11} {e["seconds"]:>9.1f} {per:>21.2f}')
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out, 'w') as f:
    json.dump(
        dict(
            runs=FLAGS.runs,
            num_runs=len(runs),
            definitions=len(defs),
            grid=GRID,
            job_seconds=total,
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
