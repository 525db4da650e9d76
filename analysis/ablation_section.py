"""The report's ablation section: each run's metrics under the logged and the ablated
definition side by side, with their figures."""

import os
from typing import Dict, List

from analysis import figures
from analysis.markdown import _epoch, _f, _lead, _slug, _table
from analysis.views import HISTORIES, HISTORY_NAMES, Definition, _last_finite


def section(
    logged: Definition,
    ablated: Definition,
    checks: Dict[str, Dict[str, float]],
    fig_dir: str,
    rel: str,
) -> List[str]:
  with_step = any(v.step is not None for v in ablated.views)
  lines = [
      f'## Ablation: {ablated.title}',
      '',
      'Every epoch-mode metric'
      + (' and every step-mode one' if with_step else '')
      + ' recomputed offline from the saved '
      'per-signal series (dynamics.npz) with the new definition, by the same functions the '
      'tracker runs during training (dynamics/offline_grid.py, the new and the logged '
      'definition in one program per shape); a training run with that '
      'setting would have logged the same series (tests/test_analysis.py checks it). '
      'Findings 1 to 3 above show both definitions.',
      '',
  ]
  if checks:
    lines += [
        "Check: recomputing with each run's logged definition reproduces its logged "
        'series; largest absolute difference over all epoch-mode series '
        f'{max(c["probe"] for c in checks.values()):.3g}'
        + (
            ', over all step-mode series '
            f'{max(c["step"] for c in checks.values() if "step" in c):.3g}'
            if any('step' in c for c in checks.values())
            else ''
        )
        + '.',
        '',
    ]
  for old, new in zip(logged.views, ablated.views):
    name = old.run.name
    rows = []
    for key, label in (
        ('integration', 'final integration'),
        ('metastability', 'final metastability'),
        ('synchrony', 'final synchrony'),
        ('dsi', 'final DSI'),
    ):
      for prefix in HISTORIES:
        rows.append(
            [
                f'{label} ({HISTORY_NAMES[prefix]})',
                _f(old.final(key, prefix)),
                _f(new.final(key, prefix)),
            ]
        )
    for prefix in HISTORIES:
      rows.append(
          [
              f'convergence epoch ({HISTORY_NAMES[prefix]})',
              _epoch(old.convergence(prefix)),
              _epoch(new.convergence(prefix)),
          ]
      )
    rows.append(['accuracy plateau epoch', _epoch(old.plateau), _epoch(new.plateau)])
    for prefix in HISTORIES:
      rows.append(
          [
              f'lead time, epochs ({HISTORY_NAMES[prefix]})',
              _lead(old.lead(prefix)),
              _lead(new.lead(prefix)),
          ]
      )
    if old.step is not None and new.step is not None:
      for key in ('integration', 'metastability', 'dsi'):
        rows.append(
            [
                f'step mode: last {key}',
                _f(_last_finite(old.step[key])),
                _f(_last_finite(new.step[key])),
            ]
        )
      rows.append(
          [
              'step mode: convergence step',
              _epoch(old.step['convergence']),
              _epoch(new.step['convergence']),
          ]
      )
    lines += [f'### {name}', ''] + _table(['quantity', logged.title, ablated.title], rows) + ['']
    fig = f'ablation_{_slug(name)}.png'
    figures.ablation_probe(
        old.probe,
        new.probe,
        os.path.join(fig_dir, fig),
        f'{name}: epoch-mode metrics, logged vs {ablated.title}',
        'logged',
        'ablated',
    )
    lines.append(f'![{name}: epoch-mode metrics, logged vs ablated]({rel}/{fig})')
    if old.step is not None and new.step is not None:
      fig = f'ablation_step_{_slug(name)}.png'
      figures.ablation_step(
          old.step,
          new.step,
          old.run.steps_per_epoch,
          os.path.join(fig_dir, fig),
          f'{name}: step-mode DSI, logged vs {ablated.title}',
          'logged',
          'ablated',
      )
      lines.append(f'![{name}: step-mode DSI, logged vs ablated]({rel}/{fig})')
    lines.append('')
  return lines
