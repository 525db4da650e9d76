r"""Figures and reports for finished runs.

One run (what `make demo` writes):

  python analyze.py --workdir=runs/quickstart

A run of several replicas (config.replicas = N) gets each replica's figures and report in
its replica_<k>/ and, in <workdir>/report.md (also printed), the seeds side by side with
mean, sample std and n, and figures of the seed mean with a +-1 std band.

Reads <workdir>/metrics.jsonl and <workdir>/dynamics.npz and writes <workdir>/plots/*.png and
<workdir>/report.md: loss and accuracy, the step-mode dynamics series (integration,
metastability, DSI and its volatility), the epoch-mode series with the convergence signal and
the accuracy plateau marked, and the per-tap DFA exponents.

A pre-registered study (a folder results/<study>/ holding PLAN.md and runs/): the plan's
primary tests, Holm-corrected secondary tests, loss-only baselines and verdicts
(analysis/confirm.py), from the committed run artefacts:

  python analyze.py --runs=results/confirm/runs --out=results/confirm

Ablation as a job (analysis/grid.py): a grid of metric definitions over one run or a folder
of runs, a tidy table (ablation.parquet, .csv) and ablation.md, with each finding's verdict
under every definition when the runs are a pre-registered study:

  python analyze.py ablate --runs=runs/quickstart --grid dfa_order=1,2 \
      --grid phase_preprocess=detrend,demean,diff --out=runs/quickstart/ablation [--product]

The study (many runs; analysis/report.py), optionally with an offline ablation of the metric
definition (analysis/ablation.py; no retraining):

  python analyze.py --runs=runs/cpu --out=results/cpu
  python analyze.py --runs='runs/cpu/cifar10_*' --runs='runs/cpu/cifar100_*' --out=results/x \
      --set dynamics.dsi_form=linear --set dynamics.dfa_order=2

writes <out>/report.md and <out>/figures/*.png: (1) integration per model x dataset and the
CIFAR-10 - CIFAR-100 difference, (2) convergence-signal epoch, accuracy plateau and lead time per
run, (3) integration-metastability trajectories, loss/accuracy curves, and with --set the
logged and the recomputed metrics side by side.
"""

import logging as pylogging
import os
import sys
from typing import List

from training import runtime

runtime.configure_xla_cpu()  # before JAX starts (the --set ablation recomputes metrics)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

# JAX logs at INFO that it found no TPU; only its warnings belong on this console.
pylogging.getLogger('jax._src.xla_bridge').setLevel(pylogging.WARNING)

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('workdir', None, 'Run directory (repeatable).')
flags.DEFINE_multi_string(
    'runs',
    None,
    'Study mode: a run directory, a directory of runs, or '
    'a glob (repeatable); writes one report over all of them to --out.',
)
flags.DEFINE_string('out', None, 'Study mode: output directory for report.md and figures/.')
flags.DEFINE_multi_string(
    'set',
    None,
    'Study mode: dynamics.<field>=<value> (repeatable): '
    'recompute every metric offline with this definition and show it '
    'beside the logged one.',
)
flags.DEFINE_multi_string(
    'grid',
    None,
    'ablate: field=value1,value2 (repeatable), the values of one definition field.',
)
flags.DEFINE_bool(
    'product',
    False,
    'ablate: every combination of the --grid values (default: one axis at a time).',
)
flags.DEFINE_bool(
    'include_unfinished',
    False,
    'Study mode: also analyse runs without ' 'summary.json (interrupted runs with a dynamics.npz).',
)
flags.DEFINE_bool(
    'ablate_step_mode',
    True,
    'Study mode with --set: also recompute the '
    'step-mode metrics (every training step; the slower part).',
)


def _step_lines(run, dcfg) -> List[str]:
  """report.md's step-mode lines: the last window's values, or why there are none."""
  from analysis import figures  # pylint: disable=g-import-not-at-top  (matplotlib: not for ablate)

  dyn = run.dynamics
  steps_done = int(dyn['step_dsi'].shape[0])
  window = int(dyn['step_window']) if 'step_window' in dyn else int(dcfg.window)
  last = {
      k: dyn[f'step_{k}'][np.isfinite(dyn[f'step_{k}'])]
      for k in ('integration', 'metastability', 'synchrony', 'dsi')
  }
  if not any(len(v) for v in last.values()):
    return [
        'Step mode, window metrics: '
        + figures.not_defined_text(window, steps_done, 'training steps (dynamics.window)')
        + '.'
    ]
  lines = [
      f'Step mode, last window ({window} steps, n = {len(last["dsi"])} windows): '
      + ', '.join(f'{k} {v[-1]:.3f}' for k, v in last.items() if len(v))
      + '.'
      + _nulls(dyn, 'step_')
  ]
  conv = int(dyn.get('step_convergence', -1))
  vol = np.isfinite(dyn['step_dsi_volatility']).any()
  lines.append(
      'Step mode convergence signal: '
      + (
          f'step {conv + 1}.'
          if conv >= 0
          else 'did not fire.'
          if vol
          else 'DSI volatility '
          + figures.not_defined_text(
              window + (int(dcfg.volatility_window_steps) - 1) * int(dcfg.every_steps),
              steps_done,
              'training steps',
          )
          + '.'
      )
  )
  return lines


def _epoch_lines(run, dcfg, min_epochs: int, plateau: int) -> List[str]:
  from analysis import figures  # pylint: disable=g-import-not-at-top  (matplotlib: not for ablate)

  dyn = run.dynamics
  count = int(dyn['probe_count'])
  final = {k: float(dyn[f'probe_{k}'][-1]) for k in ('integration', 'metastability', 'dsi')}
  shown = ', '.join(f'{k} {v:.3f}' for k, v in final.items() if np.isfinite(v))
  lines = [
      f'Epoch mode (probe batch, expanding history of {count} epoch{"" if count == 1 else "s"}): '
      + (shown or 'nothing defined')
      + '.'
  ]
  if not np.isfinite(final['dsi']):
    lines.append(
        'Epoch mode integration and DSI: '
        + figures.not_defined_text(min_epochs, count, 'epochs')
        + '.'
    )
  conv = int(dyn['probe_convergence'])
  vol = np.isfinite(dyn['probe_dsi_volatility']).any()
  lines.append(
      'Epoch mode convergence signal: '
      + (
          f'epoch {conv + 1}.'
          if conv >= 0
          else 'did not fire.'
          if vol
          else 'DSI volatility '
          + figures.not_defined_text(
              min_epochs + int(dcfg.volatility_window_epochs) - 1, count, 'epochs'
          )
          + '.'
      )
  )
  lines.append(
      'Accuracy plateau: '
      + (
          f'epoch {plateau + 1} (within {dcfg.plateau_delta:g} ' 'points of the final maximum).'
          if plateau >= 0
          else 'not reached.'
      )
  )
  return lines


def _nulls(dyn, prefix: str) -> str:
  """' Against the surrogate nulls: integration z +3.1 (p 0.025), ...' at the last sample with
  a z-score, or '' when the run has none (dynamics.surrogates = 0, or trained before them)."""
  parts = []
  for k in ('integration', 'synchrony', 'metastability', 'dsi'):
    z, p = dyn.get(f'{prefix}{k}_z'), dyn.get(f'{prefix}{k}_p')
    if z is None or p is None:
      continue
    ok = np.isfinite(z)
    if ok.any():
      parts.append(f'{k} z {z[ok][-1]:+.2f} (p {p[ok][-1]:.3f})')
  if not parts:
    return ''
  return (
      ' Against the surrogate nulls (z-score, one-sided p; see README "Null models"): '
      + ', '.join(parts)
      + '.'
  )


def _registered_lines(dyn, dcfg) -> List[str]:
  """report.md's lines on registered metrics (dynamics.metric_modules): each one's last defined
  value per resolution, with its z and p where it has a null; none when the run has none."""
  from analysis import ablation  # pylint: disable=g-import-not-at-top

  lines = []
  for name in ablation.registered_names(dcfg):
    parts = []
    for prefix, label in (('step_', 'last step window'), ('probe_', 'last epoch (expanding)')):
      values = dyn.get(prefix + name)
      if values is None or not np.isfinite(values).any():
        continue
      last = np.flatnonzero(np.isfinite(values))[-1]
      text = f'{label} {values[last]:.3f}'
      z, p = dyn.get(f'{prefix}{name}_z'), dyn.get(f'{prefix}{name}_p')
      if z is not None and p is not None and np.isfinite(z[last]):
        text += f' (z {z[last]:+.2f}, p {p[last]:.3f})'
      parts.append(text)
    lines.append(f'Registered metric {name}: ' + ('; '.join(parts) or 'never defined') + '.')
  return lines


def analyze_run(workdir: str) -> str:
  """Writes the figures and report.md of one run; returns the report path."""
  from analysis import (
      figures,  # pylint: disable=g-import-not-at-top  (matplotlib: not for ablate)
      runs as runs_lib,  # pylint: disable=g-import-not-at-top
  )
  from dynamics import stability, tracker  # pylint: disable=g-import-not-at-top

  run = runs_lib.load_run(workdir)
  plots = os.path.join(workdir, 'plots')
  os.makedirs(plots, exist_ok=True)
  figures.run_training(run, os.path.join(plots, 'training.png'))
  written = ['training.png']
  lines = [f'# Run {run.name}: {figures.run_title(run)}', '']
  acc = run.test_accuracy
  if len(acc):
    lines.append(
        f'Final test accuracy: {acc[-1]:.2f}% (best {np.nanmax(acc):.2f}%, '
        f'{len(acc)} epoch(s)).'
    )
  elif run.finished:  # the records are gone or unreadable, not missing
    final = run.summary.get('eval_accuracy')
    lines.append(
        'Test accuracy: metrics.jsonl holds no evaluation record (it is empty or unreadable) '
        'although the run finished'
        + (
            f'; summary.json gives the final test accuracy, {final:.2f}%.'
            if isinstance(final, (int, float))
            else '.'
        )
    )
  else:
    lines.append('Test accuracy: not evaluated yet (no epoch finished).')
  dyn = run.dynamics
  if dyn is None:
    lines.append('Dynamics: no dynamics.npz (dynamics.enabled=False, or the run has not ended).')
  else:
    dcfg = run.dynamics_config()
    min_epochs = tracker.min_dfa_length(dcfg) or 0
    plateau = int(stability.accuracy_plateau(acc, float(dcfg.plateau_delta))) if len(acc) else -1
    if 'step_dsi' in dyn:
      figures.run_step_dynamics(run, os.path.join(plots, 'step_dynamics.png'))
      written.append('step_dynamics.png')
      lines += _step_lines(run, dcfg)
    if 'probe_dsi' in dyn and int(dyn['probe_count']) > 0:
      figures.run_epoch_dynamics(
          run, os.path.join(plots, 'epoch_dynamics.png'), min_epochs, plateau
      )
      written.append('epoch_dynamics.png')
      lines += _epoch_lines(run, dcfg, min_epochs, plateau)
      nulls = _nulls(dyn, 'probe_')
      if nulls:
        lines.append('Epoch mode, last epoch (expanding history):' + nulls)
    lines += _registered_lines(dyn, dcfg)
    figures.run_alphas(run, os.path.join(plots, 'alphas.png'), min_epochs)
    written.append('alphas.png')
  lines += [f'Skipped (unreadable): {note}.' for note in run.skipped]
  lines = [line if line.startswith('#') or not line else f'- {line}' for line in lines]
  lines += [''] + [f'![{f}](plots/{f})' for f in written]
  report = os.path.join(workdir, 'report.md')
  with open(report, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return report


def _seed_spread(values) -> str:
  v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
  if not len(v):
    return 'n/a'
  return (
      f'{v.mean():.3f} ± {v.std(ddof=1):.3f} (n={len(v)})' if len(v) > 1 else (f'{v[0]:.3f} (n=1)')
  )


def analyze_replicas(workdir: str, replica_dirs) -> str:
  """A replicated run: each replica's own report, then the seeds together with their spread
  in <workdir>/report.md and plots/seeds.png. Returns the report path."""
  from analysis import (
      figures,  # pylint: disable=g-import-not-at-top  (matplotlib: not for ablate)
      runs as runs_lib,  # pylint: disable=g-import-not-at-top
  )

  for folder in replica_dirs:
    analyze_run(folder)
  runs = [runs_lib.load_run(folder) for folder in replica_dirs]
  title = os.path.basename(os.path.normpath(workdir))
  columns = [
      ('final test acc (%)', lambda r: r.test_accuracy[-1] if len(r.test_accuracy) else np.nan),
      (
          'best test acc (%)',
          lambda r: np.nanmax(r.test_accuracy) if len(r.test_accuracy) else np.nan,
      ),
  ]
  for key, label in (
      ('probe_integration', 'integration'),
      ('probe_metastability', 'metastability'),
      ('probe_dsi', 'DSI'),
  ):
    columns.append(
        (
            f'final epoch {label}',
            lambda r, key=key: (
                float(r.dynamics[key][-1]) if r.has_probe and len(r.dynamics[key]) else np.nan
            ),
        )
    )
  header = ['replica', 'seed'] + [c for c, _ in columns]
  rows = [
      [os.path.basename(r.workdir), str(r.seed)] + [f'{fn(r):.3f}' for _, fn in columns]
      for r in runs
  ]
  rows.append(['mean ± std (n)', ''] + [_seed_spread([fn(r) for r in runs]) for _, fn in columns])
  table = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  table += ['| ' + ' | '.join(row) + ' |' for row in rows]
  plots = os.path.join(workdir, 'plots')
  os.makedirs(plots, exist_ok=True)
  seeds = sorted(r.seed for r in runs)
  figures.seeds(
      runs,
      os.path.join(plots, 'seeds.png'),
      f'{title} ({runs[0].model} on {runs[0].dataset_label}, seeds {seeds[0]}-{seeds[-1]})',
  )
  lines = [
      f'# Run {title}: {len(runs)} seeds in one program',
      '',
      'Each replica is the run of its seed; per-replica reports: '
      + ', '.join(f'[{os.path.basename(f)}]({os.path.basename(f)}/report.md)' for f in replica_dirs)
      + '.',
      '',
      'Seeds: mean ± sample std (n):',
      '',
  ] + table
  lines += ['', '![seeds](plots/seeds.png)']
  report = os.path.join(workdir, 'report.md')
  with open(report, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(table))
  return report


def main(argv):
  if argv[1:] == ['ablate']:
    ablate_main()
    return
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]} (the one command is `ablate`).')
  if FLAGS.runs:
    study_main()
    return
  if not FLAGS.workdir:
    raise app.UsageError('Give --workdir=<run> (one run) or --runs=<runs> --out=<dir> (study).')
  if FLAGS.set:
    raise app.UsageError('--set works in study mode: --runs=<workdir> --out=<dir> --set ...')
  from analysis import runs as runs_lib  # pylint: disable=g-import-not-at-top

  failed = []
  for workdir in FLAGS.workdir:
    try:
      replica_dirs = runs_lib.replica_dirs(workdir)
      report = analyze_replicas(workdir, replica_dirs) if replica_dirs else analyze_run(workdir)
    except (ValueError, OSError) as e:  # no or unreadable config.json: not a run to analyse
      print(f'Error: {workdir}: {e}', file=sys.stderr)
      failed.append(workdir)
      continue
    print(f'Report: {os.path.abspath(report)}')
    print(f'Plots:  {os.path.abspath(os.path.join(workdir, "plots"))}/')
  if failed:
    sys.exit(1)


def ablate_main():
  """`analyze.py ablate`: the definition grid (analysis/grid.py). A bad grid or definition
  is one line on stderr and exit status 2, before any work and without an output folder."""
  import shlex  # pylint: disable=g-import-not-at-top

  from analysis import grid  # pylint: disable=g-import-not-at-top

  if not FLAGS.runs or not FLAGS.out:
    print('Error: ablate needs --runs=<run or folder of runs> and --out=<dir>.', file=sys.stderr)
    sys.exit(2)
  try:
    # The check first, before the report's imports (pandas, matplotlib): a bad definition
    # fails at once.
    job = grid.plan_job(FLAGS.runs, FLAGS.grid or [], product=FLAGS.product)
    from analysis import grid_report  # pylint: disable=g-import-not-at-top

    path = grid_report.write_job(
        job,
        FLAGS.out,
        command=' '.join(shlex.quote(a) for a in ['python', 'analyze.py'] + sys.argv[1:]),
    )
  except (ValueError, FileNotFoundError) as e:
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'Report: {os.path.abspath(path)}')
  print(f'Table:  {os.path.abspath(os.path.join(FLAGS.out, "ablation.parquet"))} (and .csv)')


def study_main():
  import shlex  # pylint: disable=g-import-not-at-top

  from analysis import ablation, confirm, report as report_lib, runs as runs_lib  # pylint: disable=g-import-not-at-top

  if not FLAGS.out:
    raise app.UsageError('--runs needs --out=<directory for report.md and figures/>.')
  try:
    workdirs = runs_lib.find_runs(FLAGS.runs)
    if len(FLAGS.runs) == 1 and not FLAGS.set and confirm.is_plan_study(FLAGS.runs[0]):
      # A pre-registered study (a PLAN.md beside its runs folder): the plan's tests.
      print(
          f'Analysing {len(workdirs)} run(s) by {os.path.join(FLAGS.runs[0], "..", "PLAN.md")} ...'
      )
      path = confirm.build_report(
          workdirs,
          FLAGS.out,
          command=' '.join(shlex.quote(a) for a in ['python', 'analyze.py'] + sys.argv[1:]),
      )
      print(f'Report:  {os.path.abspath(path)}')
      print(f'Figures: {os.path.abspath(os.path.join(FLAGS.out, "figures"))}/')
      return
    overrides = None
    if FLAGS.set:
      first = runs_lib.load_run(workdirs[0]).dynamics_config()
      overrides = ablation.parse_overrides(FLAGS.set, first)
    print(
        f'Analysing {len(workdirs)} run(s)'
        + (f', recomputing their metrics with {", ".join(FLAGS.set)}' if overrides else '')
        + ' ...',
        flush=True,
    )
    path = report_lib.build_report(
        workdirs,
        FLAGS.out,
        overrides=overrides,
        include_unfinished=FLAGS.include_unfinished,
        step=FLAGS.ablate_step_mode,
        command=' '.join(shlex.quote(a) for a in ['python', 'analyze.py'] + sys.argv[1:]),
    )
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  print(f'Report:  {os.path.abspath(path)}')
  print(f'Figures: {os.path.abspath(os.path.join(FLAGS.out, "figures"))}/')


if __name__ == '__main__':
  app.run(main)
