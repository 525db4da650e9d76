"""Finding 2 of the study report: the DSI volatility settles before accuracy plateaus, against
trivial predictors, its null (false alarms) and the constant-learning-rate control."""

import dataclasses
import os
from typing import Dict, List, Optional, Sequence

import ml_collections
import numpy as np

from analysis import figures, runs as runs_lib, stats
from analysis.markdown import _cell, _epoch, _f, _lead, _names, _slug, _table, _test_cell, mean_std
from analysis.views import HISTORY_NAMES, STEP, Definition, View, resolutions
from dynamics import tracker as tracker_lib


@dataclasses.dataclass
class LeadCount:
  """Finding 2 for one history under one definition: runs by sign of the lead time."""

  prefix: str
  early: List[str]
  same: List[str]
  late: List[str]
  never: List[str]  # the convergence signal did not fire
  no_plateau: List[str]
  leads: List[int]

  @property
  def total(self) -> int:
    return (
        len(self.early) + len(self.same) + len(self.late) + len(self.never) + len(self.no_plateau)
    )

  def verdict(self) -> str:
    name = HISTORY_NAMES[self.prefix]
    n = self.total
    text = (
        f'**{name}**: the convergence signal fired before the accuracy plateau (lead > 0) '
        f'in {len(self.early)} of {n} runs{_names(self.early)}; at the plateau epoch in '
        f'{len(self.same)}; after it in {len(self.late)}{_names(self.late)}; it never fired '
        f'in {len(self.never)}{_names(self.never)}'
    )
    if self.no_plateau:
      text += f'; no plateau in {len(self.no_plateau)}{_names(self.no_plateau)}'
    mean, std, k = mean_std(self.leads)
    if k:
      text += f'. Lead time {mean:+.2f} epochs' + (f' ± {std:.2f} (n={k})' if k > 1 else '')
    holds = n > 0 and len(self.early) == n
    return (
        text
        + '. Volatility settles before accuracy plateaus in every run: '
        + (f'**{"holds" if holds else "does not hold"}**.')
    )


def lead_counts(views: Sequence[View], prefix: str) -> LeadCount:
  out = LeadCount(prefix, [], [], [], [], [], [])
  for view in views:
    name = view.run.name
    if view.plateau < 0:
      out.no_plateau.append(name)
    elif view.convergence(prefix) < 0:
      out.never.append(name)
    else:
      lead = view.lead(prefix)
      out.leads.append(lead)
      (out.early if lead > 0 else out.same if lead == 0 else out.late).append(name)
  return out


def section(
    definitions: Sequence[Definition],
    fig_dir: str,
    rel: str,
    controls: Sequence[View] = (),
) -> List[str]:
  lines = [
      '## Finding 2: the DSI volatility settles before accuracy plateaus',
      '',
      'Claim (the study): the volatility of the stability index drops before test accuracy '
      'plateaus. Computed per run: the convergence-signal epoch (stability.'
      'convergence_signal of the epoch-mode DSI volatility, rho = dynamics.convergence_rho, '
      'patience = dynamics.convergence_patience, warm-up = '
      'dynamics.convergence_warmup_epochs), on the expanding history and on the sliding '
      'window, and at step resolution (the step-mode DSI volatility over '
      'dynamics.volatility_window_steps computed windows, the same rule online; its step '
      'is reported as the epoch holding it); the accuracy-plateau epoch (stability.'
      'accuracy_plateau of the test accuracy per epoch, delta = dynamics.plateau_delta '
      'points); lead time = plateau − convergence (positive: the signal came first). Epochs '
      'are 1-based. The expanding history calms by its own growth, so its lead is expected '
      'to be positive whatever the network does; the sliding window and the step window are '
      'the fairer tests. "never" for the plateau means the last epoch is more than delta '
      'below the best one (accuracy still moving).',
      '',
  ]
  for definition in definitions:
    prefixes = resolutions(definition.views)
    rows, groups = [], {}
    for view in definition.views:
      acc = view.run.test_accuracy
      rows.append(
          [
              view.run.name,
              view.run.model,
              view.run.dataset_label,
              view.run.seed,
              _f(acc[-1] if len(acc) else float('nan'), 2),
              _epoch(view.plateau),
          ]
          + [x for p in prefixes for x in (_epoch(view.convergence(p)), _lead(view.lead(p)))]
      )
      for prefix in prefixes:
        lead = view.lead(prefix)
        groups.setdefault((view.run.model, view.run.dataset_label, prefix), []).append(
            np.nan if lead is None else lead
        )
    lines += [f'### {definition.title}', '']
    lines += _table(
        ['run', 'model', 'dataset', 'seed', 'final test acc (%)', 'plateau epoch']
        + [
            x
            for p in prefixes
            for x in (f'convergence ({HISTORY_NAMES[p]})', f'lead ({HISTORY_NAMES[p]})')
        ],
        rows,
    ) + ['']
    if any(len(v) > 1 for v in groups.values()):
      keys = sorted({(m, d) for m, d, _ in groups})
      lines += ['Lead time (epochs) over seeds, mean ± std (n runs where both epochs exist):', '']
      lines += _table(
          ['model', 'dataset'] + [f'lead ({HISTORY_NAMES[p]})' for p in prefixes],
          [[m, d] + [_lead_cell(groups[(m, d, p)]) for p in prefixes] for m, d in keys],
      ) + ['']
    lines += [f'- {lead_counts(definition.views, p).verdict()}' for p in prefixes] + ['']
    lines += _predictors(definition.views)
    if controls and definition.key == 'logged':
      lines += _schedule_control(definition.views, controls)
    for view in list(definition.views) + (list(controls) if definition.key == 'logged' else []):
      name = f'lead_{_slug(view.run.name)}_{definition.key}.png'
      figures.lead_figure(
          view,
          os.path.join(fig_dir, name),
          f'{view.run.name}: test accuracy and DSI volatility ' f'({definition.title})',
      )
      lines.append(f'![{view.run.name}: accuracy and DSI volatility]({rel}/{name})')
    lines.append('')
  return lines


# Trivial predictors of the plateau (finding 2), stated in the report.
LR_FRACTION = 0.5  # the learning-rate schedule has decayed to this fraction of its peak
LOSS_WINDOW, LOSS_RATE = 3, 0.02  # training loss fell < 2% per epoch over the last 3 epochs
NULL_DSI_SURROGATES = 199


def epoch_curves(run: runs_lib.Run) -> Dict[str, np.ndarray]:
  """Per-epoch learning rate (the last logged in the epoch) and mean training loss, f64[E]."""
  spe = run.steps_per_epoch
  out = {}
  series = run.scalars()
  n = len(run.test_accuracy)
  for key, name, reduce in (('train/learning_rate', 'lr', 'last'), ('train/loss', 'loss', 'mean')):
    values = np.full(n, np.nan)
    if spe and key in series:
      rows = series[key]
      epoch = ((rows[:, 0] - 1) // spe).astype(int)  # logged steps are 1-based (steps done)
      for e in range(n):
        v = rows[epoch == e, 1]
        if len(v):
          values[e] = v[-1] if reduce == 'last' else v.mean()
    out[name] = values
  return out


def trivial_leads(view: 'View') -> Dict[str, Optional[int]]:
  """Lead time (plateau - firing epoch) of the two trivial predictors."""
  curves = epoch_curves(view.run)
  fired = {
      'lr': stats.first_fraction_epoch(curves['lr'], LR_FRACTION),
      'loss': stats.slope_rule_epoch(curves['loss'], LOSS_WINDOW, LOSS_RATE),
  }
  plateau = view.plateau
  return {k: (plateau - e if e >= 0 and plateau >= 0 else None) for k, e in fired.items()}


def detector_config(view: 'View', prefix: str):
  """The dynamics config whose epoch-mode volatility and detector (tracker.probe_volatility)
  reproduce the signal of `prefix`: the run's own for the probe histories; for the step
  window, its volatility window and warm-up in steps (the online step rule, with metrics
  computed every step). None where the step rule cannot be replayed (every_steps > 1)."""
  if prefix != STEP:
    return view.dcfg
  if int(view.dcfg.every_steps) != 1 or int(view.dcfg.volatility_window_steps) < 1:
    return None
  dcfg = ml_collections.ConfigDict(view.dcfg.to_dict())
  dcfg.volatility_window_epochs = int(view.dcfg.volatility_window_steps)
  dcfg.convergence_warmup_epochs = int(view.dcfg.convergence_warmup_steps)
  return dcfg


def false_alarm_rate(
    view: 'View', prefix: str, num: int = NULL_DSI_SURROGATES, seed: int = 0
) -> float:
  """How often the convergence signal fires before the plateau on null DSI series: the run's
  own finite DSI values in shuffled order (no settling trend left), through the same volatility
  and detector (tracker.probe_volatility; for the step window, in steps). NaN without a
  plateau or a DSI series."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  import dynamics  # pylint: disable=g-import-not-at-top

  dcfg = detector_config(view, prefix)
  dsi = view.series('dsi', prefix).astype(np.float32)
  ok = np.isfinite(dsi)
  plateau = view.plateau
  if dcfg is None or plateau < 0 or ok.sum() < int(dcfg.volatility_window_epochs) + 1:
    return float('nan')
  null = np.asarray(dynamics.surrogates(jax.random.key(seed), jnp.asarray(dsi[ok]), num, 'shuffle'))
  series = np.tile(dsi, (num, 1))
  series[:, ok] = null
  _, conv = tracker_lib.probe_volatility(jnp.asarray(series), dcfg)
  conv = np.asarray(conv)
  if prefix == STEP:  # a step index: the epoch holding it
    conv = np.where(conv >= 0, conv // view.run.steps_per_epoch, -1)
  return float(np.mean((conv >= 0) & (conv < plateau)))


def _lead_cell(values):
  mean, std, n = mean_std(values)
  if n == 0:
    return 'n/a'
  return f'{mean:+.2f}' + (f' ± {std:.2f} (n={n})' if n > 1 else ' (n=1)')


def _predictors(views: Sequence[View]) -> List[str]:
  prefixes = resolutions(views)
  lines = [
      'Against trivial predictors and a null. Trivial predictors of the plateau: the '
      f'learning-rate schedule having decayed to {LR_FRACTION:g} of its peak; the training '
      f'loss falling by less than {100 * LOSS_RATE:g}% per epoch over {LOSS_WINDOW} epochs. '
      "False alarms: the share of null DSI series (each run's own DSI values in shuffled "
      f'order, {NULL_DSI_SURROGATES} per run, so nothing settles) on which the same detector '
      'fires before the plateau; a detector that fires early on its null as often as on the '
      'run says nothing about the run.',
      '',
  ]
  rows = []
  leads = {k: [] for k in prefixes + ('lr', 'loss')}
  alarms = {p: [] for p in prefixes}
  for view in views:
    trivial = trivial_leads(view)
    fa = {p: false_alarm_rate(view, p) for p in prefixes}
    row = [view.run.name]
    for p in prefixes:
      alarms[p].append(fa[p])
      lead = view.lead(p)
      leads[p].append(np.nan if lead is None else lead)
      row += [_lead(lead), _f(fa[p], 2)]
    for k in ('lr', 'loss'):
      leads[k].append(np.nan if trivial[k] is None else trivial[k])
      row.append(_lead(trivial[k]))
    rows.append(row)
  lines += _table(
      ['run']
      + [
          x
          for p in prefixes
          for x in (f'lead DSI ({HISTORY_NAMES[p]})', f'false alarms ({HISTORY_NAMES[p]})')
      ]
      + [f'lead LR at {LR_FRACTION:g} of peak', 'lead loss-slope rule'],
      rows,
  ) + ['']
  summary = {k: mean_std(v) for k, v in leads.items()}
  labels = {p: f'DSI {HISTORY_NAMES[p]}' for p in prefixes}
  labels.update(lr='learning rate', loss='loss slope')
  text = '- Mean lead time (epochs): ' + ', '.join(
      f'{labels[k]} {_f(summary[k][0], 2)} (n={summary[k][2]})' for k in leads
  )
  best_trivial = max((summary[k][0] for k in ('lr', 'loss') if summary[k][2]), default=np.nan)
  for p in prefixes:
    fa_mean = mean_std(alarms[p])[0]
    adds = (
        np.isfinite(summary[p][0])
        and np.isfinite(best_trivial)
        and summary[p][0] > best_trivial
        and np.isfinite(fa_mean)
        and fa_mean < stats.ALPHA
    )
    text += (
        f'. The {HISTORY_NAMES[p]} DSI signal fires early on {_f(fa_mean, 2)} of its null '
        f'series; it adds to the trivial predictors (a longer mean lead than the better of '
        f'them and false alarms below {stats.ALPHA}): **{"yes" if adds else "not shown"}**'
    )
  return lines + [text + '.', '']


def _schedule_control(views: Sequence[View], controls: Sequence[View]) -> List[str]:
  """The constant-learning-rate control: does the signal still fire (and lead) without a
  schedule to track?"""
  cells = sorted({(c.run.model, c.run.dataset_label) for c in controls})
  prefixes = resolutions(list(views) + list(controls))
  lines = [
      '#### Control: constant learning rate',
      '',
      "The same model and data at the recipe's peak learning rate throughout (no warm-up, no "
      'decay; configs/study.py schedule=constant). A signal that only tracked the schedule '
      'would fire at the same epoch here as under the cosine schedule without any plateau to '
      'precede; one that tracks the network should follow the (later or absent) plateau. Per '
      'cell, mean ± std (n seeds) of the plateau epoch, the firing epoch and the lead:',
      '',
  ]
  rows = []
  for model, dataset in cells:
    for label, group in (
        ('cosine', [v for v in views if (v.run.model, v.run.dataset_label) == (model, dataset)]),
        (
            'constant',
            [v for v in controls if (v.run.model, v.run.dataset_label) == (model, dataset)],
        ),
    ):
      if not group:
        continue
      plateaus = [v.plateau + 1 if v.plateau >= 0 else np.nan for v in group]
      row = [
          model,
          dataset,
          label,
          _cell([v.run.test_accuracy[-1] for v in group]),
          _cell(plateaus),
          f'{sum(v.plateau < 0 for v in group)} of {len(group)}',
      ]
      for p in prefixes:
        fired = [v.convergence(p) + 1 if v.convergence(p) >= 0 else np.nan for v in group]
        row += [
            _cell(fired),
            _lead_cell([np.nan if v.lead(p) is None else v.lead(p) for v in group]),
        ]
      rows.append(row)
  lines += _table(
      ['model', 'dataset', 'schedule', 'final test acc (%)', 'plateau epoch', 'no plateau']
      + [
          x
          for p in prefixes
          for x in (f'fires at ({HISTORY_NAMES[p]})', f'lead ({HISTORY_NAMES[p]})')
      ],
      rows,
  ) + ['']
  for p in prefixes:
    cos = [v.convergence(p) for v in views if (v.run.model, v.run.dataset_label) in cells]
    con = [v.convergence(p) for v in controls]
    cos_f = [c + 1 for c in cos if c >= 0]
    con_f = [c + 1 for c in con if c >= 0]
    test = stats.two_sample(cos_f, con_f) if len(cos_f) > 1 and len(con_f) > 1 else None
    text = (
        f'- {HISTORY_NAMES[p]}: the signal fired in {len(cos_f)} of {len(cos)} cosine runs '
        f'and {len(con_f)} of {len(con)} constant-rate runs'
    )
    if test is not None and np.isfinite(test['p']):
      text += f'; firing epoch cosine − constant: {_test_cell(test)}'
    lines.append(text + '.')
  return lines + ['']
