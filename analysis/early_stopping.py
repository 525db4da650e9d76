"""Early stopping on the convergence signal (finding 2 as a feature): where config.early_stop
would have ended each run under each rule, measured on the full-length runs."""

from typing import List, Optional, Sequence

import numpy as np

from analysis import stats
from analysis.finding2 import LOSS_RATE, LOSS_WINDOW, LR_FRACTION, epoch_curves
from analysis.markdown import _cell, _f, _table
from analysis.views import HISTORIES, STEP, View, resolutions

STOP_RULES = (
    ('', 'DSI signal, expanding'),
    ('sliding_', 'DSI signal, sliding'),
    (STEP, 'DSI signal, step window'),
    ('oracle', 'oracle: the accuracy plateau'),
    ('lr', f'learning rate at {LR_FRACTION:g} of peak'),
    ('loss', 'loss-slope rule'),
)


def stop_epoch(view: View, rule: str, min_epochs: int = 0) -> Optional[int]:
  """The 1-based epoch at whose end config.early_stop (action 'stop') would end this run under
  `rule`, or None if the rule never acts within the run.

  The signals are causal (every sample uses the past only) and a stop changes nothing before
  it, so this is exactly the epoch the online rule stops at (training/early_stop.py): a DSI
  signal whose settled streak starts at sample c is known at sample c + patience - 1, i.e.
  at the end of epoch c + patience (epoch mode) or of the epoch holding step
  c + (patience - 1) * every_steps (step mode); then not before min_epochs. The oracle stops
  at the plateau epoch itself (it knows the future); the trivial predictors at the epoch they
  fire.
  """
  patience = int(view.dcfg.convergence_patience)
  if rule in HISTORIES:
    conv = view.convergence(rule)
    fired = conv + patience if conv >= 0 else None
  elif rule == STEP:
    spe = view.run.steps_per_epoch
    conv = int(view.step.get('convergence', -1)) if view.has_step else -1
    known = conv + (patience - 1) * int(view.dcfg.every_steps)  # 0-based step index
    fired = -(-(known + 1) // spe) if conv >= 0 and spe else None
  elif rule == 'oracle':
    fired = view.plateau + 1 if view.plateau >= 0 else None
  else:
    curves = epoch_curves(view.run)
    epoch = (
        stats.first_fraction_epoch(curves['lr'], LR_FRACTION)
        if rule == 'lr'
        else stats.slope_rule_epoch(curves['loss'], LOSS_WINDOW, LOSS_RATE)
    )
    fired = epoch + 1 if epoch >= 0 else None
  if fired is None:
    return None
  epochs = len(view.run.test_accuracy)
  stop = max(fired, int(min_epochs))
  return stop if stop < epochs else None


def section(views: Sequence[View]) -> List[str]:
  lines = [
      '## Early stopping on the convergence signal',
      '',
      'What config.early_stop (action `stop`) would have saved on these runs: for each rule, '
      'the epoch at which it ends the run (training/early_stop.py; measured on the '
      'full-length runs, which is exact because the signals are causal: see '
      "`analysis.report.stop_epoch`), the test accuracy there against the full run's final "
      'accuracy, and the epochs saved. A rule that never acts trains the full run (0 saved, '
      '0 lost). Cost = final accuracy − accuracy at the stop (points; negative: the stop was '
      'better). The oracle stops at the true plateau (it needs the future); the trivial '
      "predictors are finding 2's.",
      '',
  ]
  prefixes = resolutions(views)
  rules = [(k, label) for k, label in STOP_RULES if k not in (STEP,) or STEP in prefixes]
  per_rule = {k: {'saved': [], 'cost': [], 'acted': 0} for k, _ in rules}
  rows = []
  for view in views:
    acc = view.run.test_accuracy
    epochs = len(acc)
    min_epochs = int(view.run.config.get('early_stop', {}).get('min_epochs', 0))
    row = [view.run.name, _f(acc[-1], 2)]
    for key, _ in rules:
      stop = stop_epoch(view, key, min_epochs)
      if stop is None:
        saved, cost, cell = 0, 0.0, 'never'
      else:
        saved, cost = epochs - stop, float(acc[-1] - acc[stop - 1])
        per_rule[key]['acted'] += 1
        cell = f'{stop} ({_f(acc[stop - 1], 2)}%, {saved} saved)'
      per_rule[key]['saved'].append(saved)
      per_rule[key]['cost'].append(cost)
      row.append(cell)
    rows.append(row)
  lines += _table(
      ['run', 'final test acc (%)'] + [f'stop: {label}' for _, label in rules], rows
  ) + ['']
  summary = []
  for key, label in rules:
    r = per_rule[key]
    saved, cost = np.asarray(r['saved'], float), np.asarray(r['cost'], float)
    rate = (
        f'{saved.sum() / cost.sum():.2f} epochs saved per point of accuracy given up'
        if cost.sum() > 0
        else 'no accuracy given up in total'
        if saved.sum() > 0
        else 'nothing saved'
    )
    summary.append(
        [
            label,
            f'{r["acted"]} of {len(saved)}',
            _cell(saved.tolist()),
            _cell(cost.tolist()),
            rate,
        ]
    )
  lines += _table(
      ['rule', 'acted in', 'epochs saved', 'accuracy given up (points)', 'trade-off'], summary
  ) + ['']
  return lines + [
      'Epochs saved and accuracy given up are mean ± std over the runs (n = all runs, a rule '
      'that never acts counting as 0 and 0).',
      '',
  ]
