"""Finding 1 of the study report: integration separates CIFAR-10 from CIFAR-100 (per model,
against the shuffle null)."""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from analysis import figures, stats
from analysis.markdown import _cell, _f, _names, _table, _test_cell, mean_std
from analysis.views import HISTORY_NAMES, Definition, View, resolutions

C10, C100 = 'CIFAR-10', 'CIFAR-100'


@dataclasses.dataclass
class Separation:
  """Finding 1 for one history under one definition."""

  prefix: str
  values: Dict[str, Dict[str, List[float]]]  # model -> dataset label -> final values (seeds)
  diffs: Dict[str, Tuple[float, float]]  # model -> (mean C10 - mean C100, its standard error)
  higher: List[str]  # models with integration C10 > C100
  lower: List[str]
  equal: List[str]
  beyond_2se: List[str]  # |diff| > 2 standard errors (models with >= 2 seeds on both)
  se_models: List[str]  # models where the standard error exists
  tests: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)  # stats.two_sample

  @property
  def compared(self) -> List[str]:
    return self.higher + self.lower + self.equal

  def verdict(self) -> str:
    name = HISTORY_NAMES[self.prefix]
    n = len(self.compared)
    if not n:
      return (
          f'**{name}**: cannot be assessed: no model has a final integration value on both '
          'CIFAR-10 and CIFAR-100.'
      )
    one_way = len(self.higher) == n or len(self.lower) == n
    text = (
        f'**{name}**: integration CIFAR-10 > CIFAR-100 for {len(self.higher)} of {n} '
        f'models{_names(self.higher)}; CIFAR-10 < CIFAR-100 for {len(self.lower)} of {n}'
        f'{_names(self.lower)}'
    )
    if self.equal:
      text += f'; equal for {len(self.equal)}{_names(self.equal)}'
    text += (
        f'. A separation in one direction for every model: '
        f'**{"holds" if one_way else "does not hold"}**'
    )
    if self.se_models:
      text += (
          f'; the difference exceeds 2 standard errors of the seed spread for '
          f'{len(self.beyond_2se)} of {len(self.se_models)} models with several seeds'
          f'{_names(self.beyond_2se)}'
      )
    else:
      text += ' (one seed per cell: the seed spread is unknown)'
    tested = {m: t for m, t in self.tests.items() if np.isfinite(t['p'])}
    if tested:
      significant = sorted(m for m, t in tested.items() if t['p'] < stats.ALPHA)
      powerless = sorted(m for m, t in tested.items() if t['min_p'] >= stats.ALPHA)
      text += (
          f'; the difference is significant (p < {stats.ALPHA}) for {len(significant)} of '
          f'{len(tested)} tested models{_names(significant)}'
      )
      if powerless:
        text += (
            f', and {len(powerless)} cannot reach p < {stats.ALPHA} with their seeds '
            f'(permutation test){_names(powerless)}'
        )
      every = len(significant) == n and one_way
      text += (
          f'. Separation in one direction, significant for every model: '
          f'**{"holds" if every else "not shown"}**'
      )
    return text + '.'


def integration_separation(views: Sequence[View], prefix: str) -> Separation:
  values: Dict[str, Dict[str, List[float]]] = {}
  for view in views:
    values.setdefault(view.run.model, {}).setdefault(view.run.dataset_label, []).append(
        view.final('integration', prefix)
    )
  diffs, higher, lower, equal, beyond, se_models, tests = {}, [], [], [], [], [], {}
  for model, cells in values.items():
    m10, s10, n10 = mean_std(cells.get(C10, []))
    m100, s100, n100 = mean_std(cells.get(C100, []))
    if not (n10 and n100):
      continue
    diff = m10 - m100
    se = float(np.sqrt(s10**2 / n10 + s100**2 / n100)) if n10 > 1 and n100 > 1 else float('nan')
    diffs[model] = (diff, se)
    tests[model] = stats.two_sample(cells.get(C10, []), cells.get(C100, []))
    (higher if diff > 0 else lower if diff < 0 else equal).append(model)
    if np.isfinite(se):
      se_models.append(model)
      if abs(diff) > 2 * se:
        beyond.append(model)
  return Separation(prefix, values, diffs, higher, lower, equal, beyond, se_models, tests)


def _null_rows(views: Sequence[View], prefixes: Sequence[str]) -> List[List[str]]:
  rows = []
  for view in views:
    cells = []
    for prefix in prefixes:
      z, p = view.final('integration_z', prefix), view.final('integration_p', prefix)
      cells.append('n/a' if not np.isfinite(z) else f'z = {z:+.2f}, p = {p:.3f}')
    rows.append(
        [
            view.run.name,
            view.run.model,
            view.run.dataset_label,
            view.run.seed,
            _f(view.final('integration')),
        ]
        + cells
    )
  return rows


def _null_summary(views: Sequence[View], prefix: str) -> Optional[str]:
  """'Integration exceeds its shuffle null in k of n runs ...' for one history, or None."""
  zs, ps = [], []
  for view in views:
    z, p = view.final('integration_z', prefix), view.final('integration_p', prefix)
    if np.isfinite(z) and np.isfinite(p):
      zs.append(z)
      ps.append(p)
  if not zs:
    return None
  above = sum(p < stats.ALPHA for p in ps)
  return (
      f'{HISTORY_NAMES[prefix]}: integration exceeds its shuffle null (p < {stats.ALPHA}) in '
      f'{above} of {len(zs)} runs; median z {np.median(zs):+.2f} (range {min(zs):+.2f} to '
      f'{max(zs):+.2f}).'
  )


def section(definitions: Sequence[Definition], fig_dir: str, rel: str) -> List[str]:
  lines = [
      '## Finding 1: integration separates CIFAR-10 from CIFAR-100',
      '',
      'Claim (the study): for every architecture, integration differs between CIFAR-10 and '
      'the harder CIFAR-100. Computed: the final epoch-mode integration (mean DFA alpha over '
      'the probe signals at the last epoch) on the expanding history and on the sliding '
      'window, per model and dataset; mean ± sample std (n seeds) where several seeds exist; '
      'the difference of the means CIFAR-10 − CIFAR-100 and its sign. With several seeds on '
      'both datasets the standard error of the difference is sqrt(s10²/n10 + s100²/n100). '
      '"n/a": the history was too short for 3 DFA scales (or the signals were constant).',
      '',
  ]
  for definition in definitions:
    prefixes = resolutions(definition.views)
    seps = {p: integration_separation(definition.views, p) for p in prefixes}
    datasets = sorted({d for s in seps.values() for cells in s.values.values() for d in cells})
    header = ['model', 'history'] + datasets + ['C10 − C100', 'sign', 'CI and test']
    rows = []
    for model in seps[''].values:
      for prefix in prefixes:
        sep = seps[prefix]
        diff, se = sep.diffs.get(model, (float('nan'), float('nan')))
        sign = 'n/a' if not np.isfinite(diff) else '+' if diff > 0 else '−' if diff < 0 else '0'
        diff_text = _f(diff) + (f' ± {se:.3f} (SE)' if np.isfinite(se) else '')
        test = sep.tests.get(model)
        rows.append(
            [model, HISTORY_NAMES[prefix]]
            + [_cell(sep.values.get(model, {}).get(d, [])) for d in datasets]
            + [diff_text, sign, _test_cell(test) if test else 'n/a']
        )
    name = f'integration_{definition.key}.png'
    figures.integration_bars(
        {p: seps[p].values for p in prefixes},
        os.path.join(fig_dir, name),
        f'Final integration per model and dataset ({definition.title})',
    )
    lines += [f'### {definition.title}', ''] + _table(header, rows) + ['']
    lines += [f'- {seps[p].verdict()}' for p in prefixes]
    lines += ['', f'![integration per model and dataset]({rel}/{name})', '']
    null_rows = _null_rows(definition.views, prefixes)
    if any(c != 'n/a' for row in null_rows for c in row[5:]):
      lines += [
          "Each run's final integration against its shuffle null (the same history with "
          "every signal's samples permuted: no temporal structure, alpha about 0.5); z = "
          '(value − null mean) / null std, one-sided p = (1 + #{null ≥ value}) / '
          '(1 + surrogates):',
          '',
      ]
      lines += _table(
          [
              'run',
              'model',
              'dataset',
              'seed',
              'integration (expanding)',
          ]
          + [f'vs null ({HISTORY_NAMES[p]})' for p in prefixes],
          null_rows,
      ) + ['']
      summaries = [_null_summary(definition.views, p) for p in prefixes]
      lines += [f'- {t}' for t in summaries if t] + ['']
  return lines
