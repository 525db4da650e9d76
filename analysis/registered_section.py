"""The report's section on registered metrics (dynamics/registry.py): each one's final value
and its surrogate test, per dataset, model and history, over the runs that computed it.

It describes; it tests no finding. The study's findings are pre-registered on the built-in
metrics (results/confirm/PLAN.md), so a metric added later is reported beside them: its mean ±
sample std over seeds, and in how many runs its final value beats its own null (the run's
surrogate test, p <= 0.05, on the side it was registered with) -- a count, not a claim, and
uncorrected for the metrics and histories shown.
"""

from typing import List, Sequence

import numpy as np

from analysis import ablation
from analysis.markdown import _cell, _f, _table
from analysis.views import HISTORY_NAMES, View, resolutions

ALPHA = 0.05


def names(views: Sequence[View]) -> List[str]:
  """The registered metrics the runs computed, in registration order."""
  out: List[str] = []
  for view in views:
    for name in ablation.registered_names(view.dcfg):
      if name not in out and len(view.series(name, '')):
        out.append(name)
  return out


def section(views: Sequence[View]) -> List[str]:
  metrics = names(views)
  if not metrics:
    return []
  lines = [
      '## Registered metrics',
      '',
      "Metrics added with `dynamics.register_metric` (the runs' `dynamics.metric_modules`: "
      f'{", ".join(f"`{m}`" for m in metrics)}). Descriptive only: no finding is tested on them. '
      'Per cell, the final value (mean ± sample std over seeds, n runs), the median z against '
      f"the metric's own surrogate null, and the runs whose final p <= {ALPHA} (uncorrected).",
      '',
  ]
  rows = []
  cells = sorted({(v.run.dataset_label, v.run.model) for v in views})
  for metric in metrics:
    for prefix in resolutions(views):
      for dataset, model in cells:
        group = [v for v in views if (v.run.dataset_label, v.run.model) == (dataset, model)]
        values = [v.final(metric, prefix) for v in group]
        z = [_at_last(v, metric, '_z', prefix) for v in group]
        p = np.asarray([_at_last(v, metric, '_p', prefix) for v in group], np.float64)
        tested = int(np.isfinite(p).sum())
        beats = f'{int((p[np.isfinite(p)] <= ALPHA).sum())}/{tested}' if tested else 'n/a'
        finite_z = np.asarray(z, np.float64)
        finite_z = finite_z[np.isfinite(finite_z)]
        median_z = _f(float(np.median(finite_z)) if len(finite_z) else np.nan, 2)
        rows.append([metric, HISTORY_NAMES[prefix], dataset, model, _cell(values), median_z, beats])
  lines += _table(
      ['metric', 'history', 'dataset', 'model', 'final value', 'median z', f'p <= {ALPHA}'], rows
  )
  return lines + ['']


def _at_last(view: View, metric: str, suffix: str, prefix: str) -> float:
  """The z or p of the metric's last defined value in this history."""
  values = view.series(metric, prefix)
  stats = view.series(metric + suffix, prefix)
  finite = np.flatnonzero(np.isfinite(values))
  if not len(finite) or finite[-1] >= len(stats):
    return float('nan')
  return float(stats[finite[-1]])
