"""Markdown pieces shared by the reports: numbers, epochs, lead times, mean ± std cells, tables
and test results."""

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


def _f(x, digits=3) -> str:
  return 'n/a' if x is None or not np.isfinite(x) else f'{x:.{digits}f}'


def _epoch(e: int) -> str:
  return str(e + 1) if e >= 0 else 'never'


def _lead(lead: Optional[int]) -> str:
  return 'n/a' if lead is None else f'{lead:+d}'


def mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
  """(mean, sample std (ddof 1; NaN for one value), n) over the finite values."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if not len(v):
    return float('nan'), float('nan'), 0
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float('nan'), len(v)


def _cell(values: Sequence[float]) -> str:
  mean, std, n = mean_std(values)
  undefined = len(values) - n
  note = f'; {undefined} run(s) undefined' if undefined else ''
  if n == 0:
    return 'n/a' + (f' ({undefined} run(s) undefined)' if undefined else '')
  if n == 1:
    return f'{mean:.3f}' + (f' (n=1{note})' if undefined else '')
  return f'{mean:.3f} ± {std:.3f} (n={n}{note})'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
  return ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join('---' for _ in header) + ' |'] + [
      '| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows
  ]


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('_')


def _names(items: Sequence[str]) -> str:
  return f' ({", ".join(items)})' if items else ''


def _test_cell(t: Dict[str, Any]) -> str:
  if t['test'] == 'none' or not np.isfinite(t['p']):
    return 'n/a'
  ci = f'95% CI [{t["ci_low"]:+.3f}, {t["ci_high"]:+.3f}], ' if np.isfinite(t['ci_low']) else ''
  name = "Welch's t" if t['test'] == 'welch' else 'exact permutation'
  return f'{ci}{name} p = {t["p"]:.3g} (n = {t["n_a"]} + {t["n_b"]})'
