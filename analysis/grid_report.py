"""The ablation job's outputs: the tidy table, ablation.md and its figure (analysis/grid.py).

For a set of runs that holds a pre-registered study (a PLAN.md beside the runs folder), each
finding's verdict is given under every definition, in the manner of a multiverse analysis:
the plan's tests (analysis/confirm) rerun on the recomputed series.
"""

import os
import tempfile
import time
from typing import Dict, List, Sequence

import jax
import matplotlib
from jax.experimental.compilation_cache import compilation_cache

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tqdm  # noqa: E402

from analysis import (  # noqa: E402
    ablation,
    figures,
    grid,  # noqa: E402
)


def run_job(
    patterns: Sequence[str],
    grid_items: Sequence[str],
    out_dir: str,
    product: bool = False,
    command: str = '',
) -> str:
  """Checks, computes and writes the grid; returns the path of ablation.md.

  Raises ValueError (one line) before any work or output when the grid is malformed or a
  definition cannot be computed from a run's recorded series (grid.plan_job).
  """
  return write_job(grid.plan_job(patterns, grid_items, product), out_dir, command)


def write_job(job: grid.Job, out_dir: str, command: str = '') -> str:
  """Computes a checked job (grid.plan_job) and writes its outputs; returns ablation.md's path."""
  defs, runs = job.definitions, job.runs
  persistent_compilation_cache()
  start = time.perf_counter()
  computed = {}
  # A run at a time, all its definitions together (the window definitions share programs).
  for run in tqdm.tqdm(runs, desc='runs', unit='run', disable=None, leave=False):
    for overrides, out in zip(defs, grid.recompute_all(run, defs)):
      computed[(grid.name(overrides), run.name)] = (run, out)
  rows, series = [], {}
  for overrides in defs:
    label = grid.name(overrides)
    for run in runs:
      _, out = computed[(label, run.name)]
      series[(label, run.name)] = out
      rows += grid.rows(run, label, out)
  seconds = time.perf_counter() - start
  os.makedirs(os.path.join(out_dir, 'figures'), exist_ok=True)
  table = pd.DataFrame(rows, columns=list(grid.COLUMNS))
  table.to_csv(os.path.join(out_dir, 'ablation.csv'), index=False)
  table.to_parquet(os.path.join(out_dir, 'ablation.parquet'), index=False)
  lines = _markdown(table, defs, runs, job.retrain, seconds, command, job.product)
  lines += _figure(table, out_dir)
  verdicts = _multiverse(defs, runs, series, job.patterns)
  lines += verdicts
  path = os.path.join(out_dir, 'ablation.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines).rstrip() + '\n')
  return path


# The folder `make study` and `make confirm` give JAX_COMPILATION_CACHE_DIR by default.
DEFAULT_COMPILATION_CACHE = os.path.join('~', '.cache', 'dynamics_jax')


def persistent_compilation_cache() -> str:
  """Turns on JAX's persistent compilation cache unless it is already on (the environment's
  JAX_COMPILATION_CACHE_DIR wins): the grid's programs (seconds to compile each) are then
  compiled once per machine, not once per job. Returns the folder."""
  folder = jax.config.jax_compilation_cache_dir
  if not folder:
    folder = os.path.expanduser(DEFAULT_COMPILATION_CACHE)
    jax.config.update('jax_compilation_cache_dir', folder)
    # JAX decides on its first compile whether to use the cache; let it decide again.
    compilation_cache.reset_cache()
  return folder


def _stat(values: np.ndarray) -> str:
  v = values[np.isfinite(values)]
  if not len(v):
    return 'n/a'
  return f'{np.median(v):.3f} [{v.min():.3f}, {v.max():.3f}]'


def _markdown(table, defs, runs, retrain, seconds, command, product) -> List[str]:
  lines = [
      '# Ablation of the metric definitions',
      '',
      f'    {command}' if command else '',
      '',
      f'{len(defs)} definitions ({"every combination" if product else "one axis at a time"}'
      f', the logged one first) over {len(runs)} run(s), {len(table)} rows in '
      f'`ablation.parquet` / `ablation.csv`, computed in {seconds:.1f} s. Each value is the '
      "last defined sample of the series (the run's final step window, or its last epoch).",
      '',
  ]
  if retrain:
    lines += [
        'Not computed (they shape the recorded signals, so they need a new training run): '
        + '; '.join(f'{f} ({ablation.FIXED_FIELDS[f]})' for f, _ in retrain)
        + '.',
        '',
    ]
  # The built-ins the findings use, then any registered metric the runs computed.
  registered = [m for m in dict.fromkeys(table.metric) if m not in grid.SERIES]
  for metric in ['integration', 'metastability', 'dsi'] + registered:
    lines += [
        f'## {metric}',
        '',
        'Median [min, max] over runs; shift = the median over runs of (definition − logged).',
        '',
    ]
    header = ['definition']
    cols = []
    for resolution, history, _ in grid.PLACES:
      sel = table[(table.resolution == resolution) & (table.history == history)]
      if len(sel) and sel.defined.any():
        cols.append((resolution, history))
        header += [f'{resolution} {history}', 'shift']
    body = []
    for overrides in defs:
      label = grid.name(overrides)
      row = [label]
      for resolution, history in cols:
        sel = table[
            (table.metric == metric) & (table.resolution == resolution) & (table.history == history)
        ]
        mine = sel[sel.definition == label].set_index('run').value
        logged = sel[sel.definition == 'logged'].set_index('run').value
        shift = (mine - logged.reindex(mine.index)).to_numpy(np.float64)
        row += [_stat(mine.to_numpy(np.float64)), _stat(shift).split(' [')[0]]
      body.append(row)
    lines += [
        '| ' + ' | '.join(header) + ' |',
        '|' + ' --- |' * len(header),
    ] + ['| ' + ' | '.join(r) + ' |' for r in body]
    lines.append('')
  return lines


def _figure(table, out_dir: str) -> List[str]:
  sel = table[(table.resolution == 'step') & table.defined]
  if not len(sel):
    sel = table[(table.history == 'expanding') & table.defined]
  if not len(sel):
    return []
  defs = list(dict.fromkeys(sel.definition))
  fig, axes = plt.subplots(1, 2, figsize=(11, 0.4 * len(defs) + 1.8))
  for ax, metric in zip(axes, ('integration', 'metastability')):
    for i, label in enumerate(defs):
      v = sel[(sel.metric == metric) & (sel.definition == label)].value.to_numpy()
      ax.plot(v, np.full(len(v), i), 'o', alpha=0.6)
    ax.set_yticks(range(len(defs)), defs, fontsize=7)
    ax.set_xlabel(metric)
    ax.grid(alpha=0.3)
  where = 'step window' if (sel.resolution == 'step').all() else 'expanding epoch history'
  fig.suptitle(f'Final values per definition ({where}; one point per run)')
  path = os.path.join(out_dir, 'figures', 'ablation_values.png')
  figures._save(fig, path)  # pylint: disable=protected-access
  return [f'![values per definition](figures/{os.path.basename(path)})', '']


def _multiverse(defs, runs, series, patterns) -> List[str]:
  """Each finding's verdict under every definition, for a pre-registered study's runs."""
  from analysis import confirm  # pylint: disable=g-import-not-at-top
  from analysis.confirm import finding1, finding2, finding3  # pylint: disable=g-import-not-at-top

  if len(patterns) != 1 or not confirm.is_plan_study(patterns[0]):
    return [
        '## Findings across definitions',
        '',
        'Not assessed: these runs are not a pre-registered study (a PLAN.md beside the runs '
        'folder), so there are no findings to test under each definition.',
    ]
  lines = [
      '## Findings across definitions (multiverse)',
      '',
      "Each finding's primary test and verdict rule from PLAN.md, rerun on the series "
      'recomputed under each definition (the verdict, then the primary p-values):',
      '',
      '| definition | finding 1 | finding 2 | finding 3 |',
      '| --- | --- | --- | --- |',
  ]
  counts: Dict[int, Dict[str, List[str]]] = {1: {}, 2: {}, 3: {}}
  reasons: Dict[int, Dict[str, List[str]]] = {1: {}, 2: {}, 3: {}}
  planned = confirm.planned_runs()
  with tempfile.TemporaryDirectory() as scratch:
    for overrides in defs:
      label = grid.name(overrides)
      measures = []
      for run in runs:
        if not run.finished or not run.has_step:
          continue
        out = series[(label, run.name)]
        dcfg = ablation.apply_overrides(run.dynamics_config(), overrides)
        measures.append(confirm.measure(run, (dcfg, out['step'], out['probe'])))
      design = confirm.Design(measures, planned, [])
      row = [label]
      for k, fn in ((1, finding1.finding1), (2, finding2.finding2), (3, finding3.finding3)):
        finding = fn(design, scratch)
        verdict, _, reason = _verdict(finding).partition(': ')
        counts[k].setdefault(verdict, []).append(label)
        if reason:
          reasons[k].setdefault(f'{verdict}: {reason}', []).append(label)
        row.append(f'{verdict} ({_primary(finding)})')
      lines.append('| ' + ' | '.join(row) + ' |')
  lines += [
      '',
      "Finding 1's statistic, the whole-run integration, has its own DFA grid (PLAN.md: "
      "DESIGN 3.2's 12 scales from 4 to N//4) and takes only the DFA order from a definition: "
      'the step window, its scales, the integration method and the phase definitions leave '
      'its primary test unchanged by design.',
      '',
  ]
  for k, by in reasons.items():  # each reason once, not in every cell
    for reason, names in by.items():
      which = 'every definition' if len(names) == len(defs) else ', '.join(names)
      lines.append(f'- Finding {k}, {which}: {reason}.')
  for k, by in counts.items():
    lines.append(
        f'- Finding {k}: '
        + '; '.join(f'"{v}" under {len(names)} of {len(defs)}' for v, names in by.items())
        + '.'
    )
  return lines


def _primary(lines: Sequence[str]) -> str:
  """The finding's primary test in one line (analysis/confirm/tables.PRIMARY), without its
  prefix and final full stop."""
  from analysis.confirm import tables  # pylint: disable=g-import-not-at-top

  for line in lines:
    if line.startswith(tables.PRIMARY):
      return line[len(tables.PRIMARY) :].rstrip('.')
  return 'n/a'


def _verdict(lines: Sequence[str]) -> str:
  for line in lines:
    if line.startswith('Verdict: **'):
      return line.split('**')[1]
  return 'n/a'
