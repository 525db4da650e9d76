"""Markdown pieces of the confirmatory report: p-values, spreads, labels, verdicts, the Holm
table (numbers and tables: analysis/markdown.py, shared with the study report)."""

from typing import List, Sequence

import numpy as np

from analysis import stats
from analysis.markdown import _table

# The line, just above each finding's verdict, that gives its primary test's p in one line (read
# back by the ablation's multiverse table, analysis/grid_report.py).
PRIMARY = 'Primary test: '


def _p(p) -> str:
  if p is None or not np.isfinite(p):
    return 'n/a'
  return f'{p:.4f}' if p >= 1e-4 else f'{p:.1e}'


def _spread(values) -> str:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if not len(v):
    return 'n/a (n = 0)'
  sd = f' ± {v.std(ddof=1):.3f}' if len(v) > 1 else ''
  return f'{v.mean():.3f}{sd} (n = {len(v)})'


LABELS = {'resnet18': 'ResNet-18', 'vgg16': 'VGG-16', 'vit_tiny': 'vit_tiny'}


def _label(model: str) -> str:
  return LABELS.get(model, model)


def _verdict(text: str) -> str:
  return f'**{text}**'


def _secondary_table(names: Sequence[str], pvalues: Sequence[float]) -> List[str]:
  adjusted = stats.holm(pvalues)
  rows = [
      [n, _p(p), _p(q), 'rejects' if np.isfinite(q) and q < stats.ALPHA else 'does not reject']
      for n, p, q in zip(names, pvalues, adjusted)
  ]
  return [f'Secondary tests (Holm over these {sum(np.isfinite(pvalues))}):', ''] + _table(
      ['test', 'p', 'Holm p', f'at {stats.ALPHA}'], rows
  )
