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

import json
import os
import warnings
from typing import Dict, List

from training import runtime

runtime.configure_xla_cpu()  # before JAX starts (the --set ablation recomputes metrics)

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('workdir', None, 'Run directory (repeatable).')
flags.DEFINE_multi_string('runs', None, 'Study mode: a run directory, a directory of runs, or '
                          'a glob (repeatable); writes one report over all of them to --out.')
flags.DEFINE_string('out', None, 'Study mode: output directory for report.md and figures/.')
flags.DEFINE_multi_string('set', None, 'Study mode: dynamics.<field>=<value> (repeatable): '
                          'recompute every metric offline with this definition and show it '
                          'beside the logged one.')
flags.DEFINE_bool('include_unfinished', False, 'Study mode: also analyse runs without '
                  'summary.json (interrupted runs with a dynamics.npz).')
flags.DEFINE_bool('ablate_step_mode', True, 'Study mode with --set: also recompute the '
                  'step-mode metrics (every training step; the slower part).')


def load_metrics(workdir: str) -> Dict[str, np.ndarray]:
  """metrics.jsonl -> {name: f64[K, 2] rows of (step, value)} for every scalar."""
  series: Dict[str, List] = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      step = record.pop('step')
      for key, value in record.items():
        if isinstance(value, (int, float)):
          series.setdefault(key, []).append((step, value))
  return {k: np.asarray(v, np.float64) for k, v in series.items()}


def load_dynamics(workdir: str):
  path = os.path.join(workdir, 'dynamics.npz')
  return dict(np.load(path)) if os.path.exists(path) else None


def _plot(ax, xy, label, **kw):
  if xy is not None and len(xy):
    ax.plot(xy[:, 0], xy[:, 1], label=label, **kw)


def plot_training(metrics, path, title):
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  _plot(ax_loss, metrics.get('train/loss'), 'train')
  _plot(ax_loss, metrics.get('eval/loss'), 'test', marker='o')
  ax_loss.set(xlabel='training step', ylabel='cross-entropy loss', title=f'{title}: loss')
  _plot(ax_acc, metrics.get('train/accuracy'), 'train')
  _plot(ax_acc, metrics.get('eval/accuracy'), 'test', marker='o')
  ax_acc.set(xlabel='training step', ylabel='accuracy (%)', title=f'{title}: accuracy')
  for ax in (ax_loss, ax_acc):
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_step_dynamics(dyn, path, title):
  steps = np.arange(1, dyn['step_dsi'].shape[0] + 1)
  fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
  panels = [('step_integration', 'integration (DFA alpha)'),
            ('step_metastability', 'metastability (std of R)'),
            ('step_dsi', 'dynamical stability index'),
            ('step_dsi_volatility', 'DSI volatility')]
  for ax, (key, label) in zip(axes.flat, panels):
    ax.plot(steps, dyn[key], lw=1)
    ax.set(ylabel=label, title=label)
    ax.grid(alpha=0.3)
  conv = int(dyn.get('step_convergence', -1))
  if conv >= 0:
    axes.flat[3].axvline(conv + 1, color='C3', ls='--', label=f'convergence signal (step {conv + 1})')
    axes.flat[3].legend()
  for ax in axes[1]:
    ax.set_xlabel('training step')
  window = int(dyn['step_window']) if 'step_window' in dyn else None
  fig.suptitle(f'{title}: step-mode dynamics' +
               (f' (sliding window of {window} steps)' if window else ''))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_epoch_dynamics(dyn, metrics, path, title):
  count = int(dyn['probe_count'])
  epochs = np.arange(1, count + 1)
  fig, (ax_dsi, ax_vol) = plt.subplots(1, 2, figsize=(11, 4))
  for prefix, label in (('probe_', 'expanding history'), ('probe_sliding_', 'sliding window')):
    ax_dsi.plot(epochs, dyn[prefix + 'dsi'], marker='o', label=label)
    ax_vol.plot(epochs, dyn[prefix + 'dsi_volatility'], marker='o', label=f'volatility, {label}')
  ax_dsi.set(xlabel='epoch', ylabel='DSI', title=f'{title}: DSI per epoch (probe batch)')
  conv = int(dyn['probe_convergence'])
  if conv >= 0:
    ax_vol.axvline(conv + 1, color='C3', ls='--', label=f'convergence signal (epoch {conv + 1})')
  acc = metrics.get('eval/accuracy')
  if acc is not None and len(acc):
    ax_acc = ax_vol.twinx()
    ax_acc.plot(np.arange(1, len(acc) + 1), acc[:, 1], color='k', alpha=0.5, label='test accuracy')
    ax_acc.set_ylabel('test accuracy (%)')
  ax_vol.set(xlabel='epoch', ylabel='DSI volatility', title='volatility vs accuracy')
  for ax in (ax_dsi, ax_vol):
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_alphas(dyn, path, title):
  key = 'probe_alphas' if 'probe_alphas' in dyn and np.isfinite(dyn['probe_alphas']).any() else (
      'step_alphas')
  alphas = dyn.get(key)
  if alphas is None or not np.isfinite(alphas).any():
    return False
  names = [str(n) for n in dyn['signal_names']]
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
  ax.bar(range(len(alphas)), alphas)
  ax.axhline(0.5, color='k', lw=0.8, ls=':', label='white noise (0.5)')
  ax.axhline(1.5, color='k', lw=0.8, ls='--', label='random walk (1.5)')
  ax.set_xticks(range(len(names)), names, rotation=75, fontsize=7)
  source = 'probe, whole history' if key == 'probe_alphas' else 'training steps, last window'
  ax.set(ylabel='DFA exponent alpha', title=f'{title}: per-tap integration ({source})')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def analyze_run(workdir: str) -> str:
  """Writes the figures and report.md of one run; returns the report path."""
  title = os.path.basename(os.path.normpath(workdir))
  plots = os.path.join(workdir, 'plots')
  os.makedirs(plots, exist_ok=True)
  metrics = load_metrics(workdir)
  dyn = load_dynamics(workdir)
  figures = ['training.png']
  plot_training(metrics, os.path.join(plots, 'training.png'), title)
  lines = [f'# Run {title}', '']
  acc = metrics.get('eval/accuracy')
  if acc is not None and len(acc):
    lines.append(f'Final test accuracy: {acc[-1, 1]:.2f}% (best {acc[:, 1].max():.2f}%).')
  if dyn is not None:
    if 'step_dsi' in dyn:
      plot_step_dynamics(dyn, os.path.join(plots, 'step_dynamics.png'), title)
      figures.append('step_dynamics.png')
      last = {k: dyn[f'step_{k}'][np.isfinite(dyn[f'step_{k}'])] for k in
              ('integration', 'metastability', 'synchrony', 'dsi')}
      lines.append('Step mode, last window: ' + ', '.join(
          f'{k} {v[-1]:.3f}' for k, v in last.items() if len(v)) + '.')
    if 'probe_dsi' in dyn and int(dyn['probe_count']) > 0:
      plot_epoch_dynamics(dyn, metrics, os.path.join(plots, 'epoch_dynamics.png'), title)
      figures.append('epoch_dynamics.png')
      conv = int(dyn['probe_convergence'])
      lines.append('Epoch mode convergence signal: ' +
                   (f'epoch {conv + 1}.' if conv >= 0 else 'not fired.'))
    if plot_alphas(dyn, os.path.join(plots, 'alphas.png'), title):
      figures.append('alphas.png')
  lines += [''] + [f'![{f}](plots/{f})' for f in figures]
  report = os.path.join(workdir, 'report.md')
  with open(report, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return report


def _seed_spread(values) -> str:
  v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
  if not len(v):
    return 'n/a'
  return f'{v.mean():.3f} ± {v.std(ddof=1):.3f} (n={len(v)})' if len(v) > 1 else (
      f'{v[0]:.3f} (n=1)')


def _band(ax, curves, label, color):
  """The seeds' curves (thin) and their mean with a +-1 sample-std band, over epochs."""
  length = max((len(c) for c in curves), default=0)
  if not length:
    return
  grid = np.full((len(curves), length), np.nan)
  for i, c in enumerate(curves):
    grid[i, :len(c)] = c
    ax.plot(np.arange(1, len(c) + 1), c, color=color, lw=0.6, alpha=0.35)
  epochs = np.arange(1, length + 1)
  with warnings.catch_warnings():  # an epoch that no seed reached yet: NaN, not a warning
    warnings.simplefilter('ignore', RuntimeWarning)
    mean = np.nanmean(grid, axis=0)
    std = np.nanstd(grid, axis=0, ddof=1) if len(curves) > 1 else np.zeros(length)
  ax.plot(epochs, mean, color=color, lw=2, label=f'{label}: mean of {len(curves)} seeds')
  ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, label='± 1 std')


def analyze_replicas(workdir: str, replica_dirs) -> str:
  """A replicated run: each replica's own report, then the seeds together with their spread
  in <workdir>/report.md and plots/seeds.png. Returns the report path."""
  from analysis import runs as runs_lib  # pylint: disable=g-import-not-at-top
  for folder in replica_dirs:
    analyze_run(folder)
  runs = [runs_lib.load_run(folder) for folder in replica_dirs]
  title = os.path.basename(os.path.normpath(workdir))
  columns = [('final test acc (%)', lambda r: r.test_accuracy[-1] if len(r.test_accuracy)
              else np.nan),
             ('best test acc (%)', lambda r: np.nanmax(r.test_accuracy) if len(r.test_accuracy)
              else np.nan)]
  for key, label in (('probe_integration', 'integration'), ('probe_metastability',
                                                            'metastability'),
                     ('probe_dsi', 'DSI')):
    columns.append((f'final epoch {label}', lambda r, key=key: (
        float(r.dynamics[key][-1]) if r.has_probe and len(r.dynamics[key]) else np.nan)))
  header = ['replica', 'seed'] + [c for c, _ in columns]
  rows = [[os.path.basename(r.workdir), str(r.seed)] + [f'{fn(r):.3f}' for _, fn in columns]
          for r in runs]
  rows.append(['mean ± std (n)', ''] + [_seed_spread([fn(r) for r in runs])
                                        for _, fn in columns])
  table = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  table += ['| ' + ' | '.join(row) + ' |' for row in rows]
  plots = os.path.join(workdir, 'plots')
  os.makedirs(plots, exist_ok=True)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  _band(axes[0], [r.test_accuracy for r in runs], 'test accuracy', 'C0')
  axes[0].set(xlabel='epoch', ylabel='test accuracy (%)', title=f'{title}: test accuracy')
  _band(axes[1], [r.epoch_values('eval/loss') for r in runs], 'test loss', 'C1')
  axes[1].set(xlabel='epoch', ylabel='cross-entropy loss (nats)', title=f'{title}: test loss')
  _band(axes[2], [r.dynamics['probe_dsi'] for r in runs if r.has_probe], 'DSI', 'C2')
  axes[2].set(xlabel='epoch', ylabel='DSI (probe, expanding history)',
              title=f'{title}: dynamical stability index')
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(plots, 'seeds.png'), dpi=110)
  plt.close(fig)
  lines = [f'# Run {title}: {len(runs)} seeds in one program', '',
           'Each replica is the run of its seed; per-replica reports: ' + ', '.join(
               f'[{os.path.basename(f)}]({os.path.basename(f)}/report.md)'
               for f in replica_dirs) + '.', '', 'Seeds: mean ± sample std (n):', ''] + table
  lines += ['', '![seeds](plots/seeds.png)']
  report = os.path.join(workdir, 'report.md')
  with open(report, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(table))
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.runs:
    study_main()
    return
  if not FLAGS.workdir:
    raise app.UsageError('Give --workdir=<run> (one run) or --runs=<runs> --out=<dir> (study).')
  if FLAGS.set:
    raise app.UsageError('--set works in study mode: --runs=<workdir> --out=<dir> --set ...')
  from analysis import runs as runs_lib  # pylint: disable=g-import-not-at-top
  for workdir in FLAGS.workdir:
    replica_dirs = runs_lib.replica_dirs(workdir)
    report = (analyze_replicas(workdir, replica_dirs) if replica_dirs
              else analyze_run(workdir))
    print(f'Report: {os.path.abspath(report)}')
    print(f'Plots:  {os.path.abspath(os.path.join(workdir, "plots"))}/')


def study_main():
  import shlex  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from analysis import ablation, report as report_lib, runs as runs_lib  # pylint: disable=g-import-not-at-top
  if not FLAGS.out:
    raise app.UsageError('--runs needs --out=<directory for report.md and figures/>.')
  try:
    workdirs = runs_lib.find_runs(FLAGS.runs)
    overrides = None
    if FLAGS.set:
      first = runs_lib.load_run(workdirs[0]).dynamics_config()
      overrides = ablation.parse_overrides(FLAGS.set, first)
    path = report_lib.build_report(
        workdirs, FLAGS.out, overrides=overrides, include_unfinished=FLAGS.include_unfinished,
        step=FLAGS.ablate_step_mode,
        command=' '.join(shlex.quote(a) for a in ['python', 'analyze.py'] + sys.argv[1:]))
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  print(f'Report:  {os.path.abspath(path)}')
  print(f'Figures: {os.path.abspath(os.path.join(FLAGS.out, "figures"))}/')


if __name__ == '__main__':
  app.run(main)
