"""The study report over many runs: the three findings of DESIGN.md section 1, computed.

(1) integration separates CIFAR-10 from CIFAR-100 for every architecture;
(2) the DSI volatility settles (convergence signal) before test accuracy plateaus;
(3) integration against metastability shows a distinct training trajectory per architecture.

Each finding gets a table or figure and a sentence saying, from the numbers, whether it holds in
the runs analysed. Nothing is tuned: every threshold is a field of the runs' dynamics config
(or of an ablation, `overrides`), and every rule is stated in the report.

    path = build_report(['runs/cpu'], 'results/cpu', overrides={'dsi_form': 'linear'})
"""

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np
import tqdm

from analysis import ablation, figures, runs as runs_lib, stats
from dynamics import stability, tracker as tracker_lib

HISTORIES = ('', 'sliding_')  # epoch resolution: the probe's expanding and sliding histories
STEP = 'step_'  # step resolution: the step-mode window over the every-step training taps
HISTORY_NAMES = {'': 'expanding', 'sliding_': 'sliding', STEP: 'step window'}
C10, C100 = 'CIFAR-10', 'CIFAR-100'


@dataclasses.dataclass
class View:
  """One run under one metric definition: its epoch-mode (and step-mode) series."""

  run: runs_lib.Run
  dcfg: ml_collections.ConfigDict
  probe: Dict[str, Any]
  step: Optional[Dict[str, Any]] = None

  @property
  def plateau(self) -> int:
    """0-based accuracy-plateau epoch (stability.accuracy_plateau), -1 if none."""
    acc = self.run.test_accuracy
    if not len(acc):
      return -1
    return int(stability.accuracy_plateau(acc, float(self.dcfg.plateau_delta)))

  @property
  def has_step(self) -> bool:
    return self.step is not None and 'integration' in self.step

  @property
  def resolutions(self) -> Tuple[str, ...]:
    """The histories this view has: the two epoch ones, and the step window if logged."""
    return HISTORIES + ((STEP,) if self.has_step else ())

  def series(self, name: str, prefix: str) -> np.ndarray:
    """f64[epochs] (prefix '' or 'sliding_') or f64[steps] (STEP) of metric `name`."""
    if prefix == STEP:
      return np.asarray(self.step.get(name, []) if self.has_step else [], np.float64)
    return np.asarray(self.probe[prefix + name], np.float64)

  def convergence(self, prefix: str) -> int:
    """0-based epoch at which the convergence signal's settled streak starts, -1 if none; for
    the step window, the epoch holding that step."""
    if prefix == STEP:
      spe = self.run.steps_per_epoch
      conv = int(self.step.get('convergence', -1)) if self.has_step else -1
      return conv // spe if conv >= 0 and spe else -1
    return int(self.probe[prefix + 'convergence'])

  def lead(self, prefix: str) -> Optional[int]:
    """plateau - convergence in epochs (positive: the signal came first); None if either is
    missing."""
    conv, plateau = self.convergence(prefix), self.plateau
    return plateau - conv if conv >= 0 and plateau >= 0 else None

  def final(self, name: str, prefix: str = '') -> float:
    """The last epoch's value; for the step window, the last computed window's."""
    series = self.series(name, prefix)
    if prefix == STEP:
      return _last_finite(series)
    return float(series[-1]) if len(series) else float('nan')


def resolutions(views: Sequence[View]) -> Tuple[str, ...]:
  """The histories every view has (the step window only where every run logged it)."""
  return HISTORIES + ((STEP,) if views and all(v.has_step for v in views) else ())


@dataclasses.dataclass
class Definition:
  key: str  # 'logged' or 'ablated'
  title: str
  views: List[View]


# ---------------------------------------------------------------------------------------------
# Formatting


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


# ---------------------------------------------------------------------------------------------
# Finding 1: integration, CIFAR-10 vs CIFAR-100


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


def _test_cell(t: Dict[str, Any]) -> str:
  if t['test'] == 'none' or not np.isfinite(t['p']):
    return 'n/a'
  ci = f'95% CI [{t["ci_low"]:+.3f}, {t["ci_high"]:+.3f}], ' if np.isfinite(t['ci_low']) else ''
  name = "Welch's t" if t['test'] == 'welch' else 'exact permutation'
  return f'{ci}{name} p = {t["p"]:.3g} (n = {t["n_a"]} + {t["n_b"]})'


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


def _finding1(definitions: Sequence[Definition], fig_dir: str, rel: str) -> List[str]:
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


# ---------------------------------------------------------------------------------------------
# Finding 2: convergence signal vs accuracy plateau


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


def _finding2(
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


# Early stopping on the signal, measured on the full-length runs (finding 2 as a feature).

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


def _early_stopping(views: Sequence[View]) -> List[str]:
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


# ---------------------------------------------------------------------------------------------
# What this project chose where the study is silent


def _changes(runs: Sequence[runs_lib.Run]) -> List[str]:
  """Each definition and recipe choice the study does not publish, with the value the runs
  used (read from their configs; several values are listed when the runs differ)."""

  def values(get) -> str:
    seen = []
    for run in runs:
      try:
        v = get(run)
      except (KeyError, TypeError):
        v = '?'
      if v not in seen:
        seen.append(v)
    return ', '.join(f'`{v}`' for v in seen)

  def dyn(field):
    return lambda r: r.dynamics_config()[field]

  def cfg(*path):
    def get(r):
      node = r.config
      for p in path:
        node = node[p]
      return node

    return get

  rows = [
      ('Tap signal (reduction of a block output)', 'not published', values(dyn('reduction'))),
      (
          'Activations of the epoch-mode metrics',
          'not published (per epoch)',
          values(
              lambda r: f'{r.dynamics_config().probe_size} {r.dynamics_config().probe_split} '
              'images, inference mode'
          ),
      ),
      ('DFA order', 'not published', values(dyn('dfa_order'))),
      (
          'DFA scales',
          'not published',
          values(_scales_choice),
      ),
      ('Integration over taps', 'not published', values(dyn('integration_method'))),
      (
          'Phase preprocessing before the Hilbert transform',
          'not published',
          values(dyn('phase_preprocess')),
      ),
      ('Samples dropped at each end of R(t)', 'not published', values(dyn('phase_edge'))),
      ('DSI form', 'not published', values(dyn('dsi_form'))),
      ('DSI volatility window (epochs)', 'not published', values(dyn('volatility_window_epochs'))),
      ('Sliding history (epochs)', 'expanding only', values(dyn('sliding_epochs'))),
      (
          'Step window / its volatility window (steps)',
          'no step mode',
          values(
              lambda r: f'{r.dynamics_config().window} / '
              f'{r.dynamics_config().volatility_window_steps}'
          ),
      ),
      (
          'Convergence rule (rho, patience, warm-up epochs)',
          'not published',
          values(
              lambda r: f'{r.dynamics_config().convergence_rho:g}, '
              f'{r.dynamics_config().convergence_patience}, '
              f'{r.dynamics_config().convergence_warmup_epochs}'
          ),
      ),
      ('Accuracy plateau tolerance (points)', 'not published', values(dyn('plateau_delta'))),
      (
          'Null models (surrogates per evaluation, methods)',
          'none',
          values(
              lambda r: f'{r.dynamics_config().surrogates}: '
              f'{r.dynamics_config().surrogate_methods}'
          ),
      ),
      ('Seeds per cell', 'one', str(max(_seed_counts(runs).values(), default=0))),
      ('Epochs', '25 to 58', values(lambda r: r.num_epochs)),
      (
          'Training / test images',
          'full CIFAR (50,000 / 10,000)',
          values(
              lambda r: f'{r.config["data"].get("train_subset") or "all"} / '
              f'{r.config["data"].get("test_subset") or "all"}'
          ),
      ),
      ('Models', 'full widths; pretrained ViT-B/16', values(lambda r: _model_label(r))),
      ('Learning-rate schedule', 'not published', values(cfg('schedule'))),
  ]
  return (
      [
          '## What we changed from the study',
          '',
          'The study does not publish its formulas or several recipe details; each choice '
          'below is a config field (DESIGN.md section 3), and the values are read from the '
          "runs' configs.",
          '',
      ]
      + _table(['choice', 'the study', 'this report'], [list(r) for r in rows])
      + ['']
  )


def _scales_choice(run: runs_lib.Run) -> str:
  dcfg = run.dynamics_config()
  return dcfg.dfa_scales or f'{dcfg.dfa_min_scale} to N//{dcfg.dfa_max_divisor}'


def _model_label(run: runs_lib.Run) -> str:
  args = {k: v for k, v in run.config.get('model_args', {}).items() if v}
  return run.model + (' (' + ', '.join(f'{k}={v}' for k, v in args.items()) + ')' if args else '')


def _seed_counts(runs: Sequence[runs_lib.Run]) -> Dict[Tuple[str, str], int]:
  """Runs per (model, dataset) cell; the constant-rate control runs are a cell apart and are
  not counted as seeds of their cosine cell."""
  counts: Dict[Tuple[str, str], int] = {}
  for run in runs:
    if run.is_control:
      continue
    key = (run.model, run.dataset)
    counts[key] = counts.get(key, 0) + 1
  return counts


# ---------------------------------------------------------------------------------------------
# Finding 3: training styles in the integration-metastability plane


@dataclasses.dataclass
class Styles:
  """Finding 3 for one dataset and history: how well the model explains trajectory points."""

  dataset: str
  prefix: str
  models: List[str]
  points: int
  accuracy: float  # fraction of points nearest their own model's centroid
  baseline: float  # share of the most common model among the points
  centroids: Dict[str, Tuple[float, float]]  # model -> (metastability, integration), raw units

  def verdict(self) -> str:
    where = f'{self.dataset}, {HISTORY_NAMES[self.prefix]}'
    if len(self.models) < 2:
      return f'**{where}**: cannot be assessed: fewer than 2 models with defined trajectories.'
    holds = self.accuracy > self.baseline
    return (
        f'**{where}**: {100 * self.accuracy:.0f}% of {self.points} trajectory points '
        f"(epochs x runs) lie nearer their own model's centroid than any other model's "
        f'(majority baseline {100 * self.baseline:.0f}%, {len(self.models)} models). '
        f'Distinct trajectories per architecture: **{"holds" if holds else "does not hold"}** '
        'by this rule.'
    )


def style_separation(views: Sequence[View], prefix: str) -> List[Styles]:
  out = []
  for dataset in sorted({v.run.dataset_label for v in views}):
    pts, labels = [], []
    for view in (v for v in views if v.run.dataset_label == dataset):
      meta, integ = view.series('metastability', prefix), view.series('integration', prefix)
      ok = np.isfinite(meta) & np.isfinite(integ)
      pts.append(np.stack([meta[ok], integ[ok]], axis=-1))
      labels += [view.run.model] * int(ok.sum())
    pts = np.concatenate(pts) if pts else np.zeros((0, 2))
    labels = np.asarray(labels)
    models = sorted(set(labels.tolist()))
    if not len(pts):
      out.append(Styles(dataset, prefix, models, 0, float('nan'), float('nan'), {}))
      continue
    centroids = {m: pts[labels == m].mean(axis=0) for m in models}
    scale = pts.std(axis=0)
    scale[scale == 0] = 1.0
    z = pts / scale
    cz = np.stack([centroids[m] / scale for m in models])
    nearest = np.asarray(models)[np.argmin(((z[:, None, :] - cz[None]) ** 2).sum(-1), axis=1)]
    shares = [np.mean(labels == m) for m in models]
    out.append(
        Styles(
            dataset,
            prefix,
            models,
            len(pts),
            float(np.mean(nearest == labels)),
            float(max(shares)),
            {m: tuple(map(float, c)) for m, c in centroids.items()},
        )
    )
  return out


def trajectory_features(view: View, prefix: str) -> np.ndarray:
  """f64[4]: mean and final integration and metastability over the epochs where both exist
  (NaN when none does)."""
  meta, integ = view.series('metastability', prefix), view.series('integration', prefix)
  ok = np.isfinite(meta) & np.isfinite(integ)
  if not ok.any():
    return np.full(4, np.nan)
  return np.asarray([integ[ok].mean(), meta[ok].mean(), integ[ok][-1], meta[ok][-1]])


@dataclasses.dataclass
class HeldOut:
  """Finding 3 as a held-out test, for one dataset and history."""

  dataset: str
  prefix: str
  result: Dict[str, Any]  # stats.classification_test
  controls: Dict[str, Optional[Dict[str, Any]]]  # model -> fake-groups control
  shuffled: Optional[Dict[str, Any]] = None  # stats.shuffled_labels_control

  def verdict(self) -> str:
    where = f'{self.dataset}, {HISTORY_NAMES[self.prefix]}'
    r = self.result
    done = {m: c for m, c in self.controls.items() if c is not None}
    if not np.isfinite(r['accuracy']):
      text = (
          f'**{where}**: cannot be assessed: needs 2 or more models with 2 or more runs '
          f'each ({r["n"]} runs, {r["classes"]} models)'
      )
      return text + (f'. {self._fake_groups_text(done)}' if done else '') + '.'
    text = (
        f'**{where}**: leave-one-run-out accuracy {100 * r["accuracy"]:.0f}% over {r["n"]} '
        f'runs of {r["classes"]} models (largest class {100 * r["chance"]:.0f}%, permutation '
        f'null mean {100 * r["null_mean"]:.0f}%), p = {r["p"]:.3f}. Distinct trajectories '
        f'per architecture: **{"holds" if r["distinct"] else "not shown"}**'
    )
    if done:
      text += f'. {self._fake_groups_text(done)}'
    else:
      text += (
          f'. Fake-groups control: no model has the {stats.FAKE_SPLIT_MIN_RUNS} runs a fake '
          f'split needs to be able to reach p < {stats.ALPHA} (with '
          f'{stats.FAKE_SPLIT_MIN_RUNS - 1} or fewer the smallest p is '
          f'{stats.fake_split_min_p(stats.FAKE_SPLIT_MIN_RUNS - 1):.2f} or more)'
      )
    c = self.shuffled
    if c is not None:
      text += (
          f'. Shuffled-architecture control (the same runs with their model labels shuffled, '
          f'{c["repeats"]} times, where the answer is "not distinct"): said "distinct" in '
          f'{c["distinct"]} of {c["repeats"]} ({100 * c["rate"]:.0f}%, allowed '
          f'{100 * stats.ALPHA:.0f}%; '
          f'binomial p = {c["p"]:.2f}): **{"passes" if c["passes"] else "FAILS"}**'
      )
    return text + '.'

  @staticmethod
  def _fake_groups_text(done: Dict[str, Dict[str, Any]]) -> str:
    failed = sorted(m for m, c in done.items() if c['distinct'])
    each = '; '.join(
        f'{m}: {100 * c["accuracy"]:.0f}% over {c["n"]} runs, p = {c["p"]:.3f}'
        for m, c in sorted(done.items())
    )
    return (
        f'Control (the seeds of one model split into two fake groups, alternately by seed, '
        f'where the answer is "not distinct"; {each}): '
        f'**{"passes" if not failed else "FAILS"}** for {len(done) - len(failed)} of '
        f'{len(done)} models{_names(failed)}'
    )


def held_out_styles(views: Sequence[View], prefix: str, num: int = 999) -> List[HeldOut]:
  out = []
  for dataset in sorted({v.run.dataset_label for v in views}):
    chosen = [v for v in views if v.run.dataset_label == dataset]
    feats = np.stack([trajectory_features(v, prefix) for v in chosen])
    ok = np.all(np.isfinite(feats), axis=1)
    labels = np.asarray([v.run.model for v in chosen])[ok]
    feats = feats[ok]
    result = stats.classification_test(feats, labels, num=num)
    controls = {
        m: stats.fake_groups_control(feats, labels, m, num=num)
        for m in sorted(set(labels.tolist()))
    }
    shuffled = None
    if np.isfinite(result['accuracy']):
      shuffled = stats.shuffled_labels_control(feats, labels, seed=len(out))
    out.append(HeldOut(dataset, prefix, result, controls, shuffled))
  return out


def _finding3(definitions: Sequence[Definition], fig_dir: str, rel: str) -> List[str]:
  lines = [
      '## Finding 3: training styles in the integration-metastability plane',
      '',
      'Claim (the study): plotted against each other over training, integration and '
      'metastability trace a distinct trajectory per architecture. Shown: the epoch-mode '
      'trajectory of every run (one panel per dataset, one colour per model, circle = first '
      'epoch with both values defined, square = last epoch). Computed: with both axes '
      "scaled by their standard deviation over the panel's points, the share of trajectory "
      "points (epochs x runs) that lie nearer their own model's centroid than any other "
      "model's, against the share of the most common model (what assigning every point "
      'to one model would score): descriptive only, since it says "distinct" even for two '
      'seeds of one model. The test: each run is summarised by four trajectory features '
      '(mean and final integration and metastability) and classified by architecture with '
      'leave-one-run-out nearest-centroid cross-validation (features standardised on the '
      'training runs); the accuracy is compared with its permutation distribution (the '
      'model labels shuffled across runs, 999 times, or every distinct labelling when '
      f'there are fewer: an exact test); "distinct" needs p < {stats.ALPHA}. '
      'The same test on the runs of one model split into two fake groups, and on all the '
      'runs with their model labels shuffled (100 times, 99 permutations each: at most '
      f'{100 * stats.ALPHA:.0f}% may say "distinct"), must not say "distinct".',
      '',
  ]
  for definition in definitions:
    lines += [f'### {definition.title}', '']
    rows, verdicts = [], []
    prefixes = resolutions(definition.views)
    for prefix in prefixes:
      for styles in style_separation(definition.views, prefix):
        verdicts.append(styles.verdict())
        for model, (meta, integ) in styles.centroids.items():
          rows.append([styles.dataset, HISTORY_NAMES[prefix], model, _f(integ), _f(meta)])
      name = f'trajectories_{_slug(HISTORY_NAMES[prefix])}_{definition.key}.png'
      figures.trajectories(
          definition.views,
          prefix,
          os.path.join(fig_dir, name),
          f'Integration vs metastability over training ({definition.title})',
      )
      lines.append(f'![integration vs metastability, {HISTORY_NAMES[prefix]}]({rel}/{name})')
    lines += (
        ['']
        + _table(['dataset', 'history', 'model', 'mean integration', 'mean metastability'], rows)
        + ['']
    )
    lines += [f'- In-sample centroid rule (descriptive): {v}' for v in verdicts]
    lines += [
        f'- Held-out test: {h.verdict()}'
        for p in prefixes
        for h in held_out_styles(definition.views, p)
    ] + ['']
  return lines


# ---------------------------------------------------------------------------------------------
# Estimability

ESTIMABILITY_LENGTHS = (16, 30, 256, 2000)  # epoch histories (16-30) and step windows


def estimability(
    dcfg,
    lengths: Sequence[int] = ESTIMABILITY_LENGTHS,
    reps: int = 200,
    taps: int = 9,
    seed: int = 0,
) -> List[Dict[str, Any]]:
  """Bias and spread of DFA alpha and metastability on known-answer signals, per length.

  DFA alpha of white noise (answer 0.5) and of a random walk (1.5), on the scales the run
  definition gives at that length (dynamics.dfa_* fields; where they give fewer than 3, scales
  from 3 to n // 2); metastability of `taps` phase-locked sinusoids with small noise (answer 0)
  and of `taps` independent white-noise signals (no coupling: the null level).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  import dynamics  # pylint: disable=g-import-not-at-top
  from dynamics import dfa  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  spec = tracker_lib.MetricSpec.from_config(dcfg)
  rows = []
  for n in lengths:
    scales = tracker_lib.resolve_scales(dcfg, n)
    if scales is None:
      scales = dfa.default_scales(n, 3, 2, int(dcfg.dfa_num_scales))
    white = rng.standard_normal((reps, n)).astype(np.float32)
    walk = np.cumsum(rng.standard_normal((reps, n)), -1).astype(np.float32)
    row = {'n': n, 'scales': f'{scales[0]}..{scales[-1]} ({len(scales)})'}
    for name, x, answer in (('white', white, 0.5), ('walk', walk, 1.5)):
      a = np.asarray(dynamics.dfa_exponent(jnp.asarray(x), scales, int(dcfg.dfa_order)))
      row[name] = (float(np.nanmean(a) - answer), float(np.nanstd(a, ddof=1)))
    t = np.arange(n)
    period = max(n / 4, 4.0)
    locked = (
        np.sin(2 * np.pi * t / period + rng.uniform(0, 0.3, (reps, taps, 1)))
        + 0.1 * rng.standard_normal((reps, taps, n))
    ).astype(np.float32)
    noise = rng.standard_normal((reps, taps, n)).astype(np.float32)
    for name, x, answer in (('locked', locked, 0.0), ('independent', noise, None)):
      m = np.asarray(
          dynamics.metastability(
              jnp.asarray(x),
              spec.phase_preprocess,
              spec.phase_edge if 2 * spec.phase_edge < n - 2 else 0,
          )
      )
      row[name] = (
          float(np.mean(m) - (answer or 0.0)),
          float(np.std(m, ddof=1)),
          float(np.percentile(m, 5)),
          float(np.percentile(m, 95)),
      )
    rows.append(row)
  return rows


def _estimability(views: Sequence[View]) -> List[str]:
  dcfg = views[0].dcfg
  taps = len(views[0].run.dynamics['probe_signals']) if views[0].run.dynamics else 9
  rows = estimability(dcfg, taps=taps)
  lines = [
      '## Estimability: what a difference of 0.1 means',
      '',
      "Generated from known-answer signals (200 of each per length; the runs' DFA order "
      'and phase preprocessing): bias (mean − answer) ± spread (sample std) of one '
      'estimate. DFA alpha of white noise (answer 0.5) and a random walk (1.5) on the scales '
      'the definition gives at that length; metastability of '
      f'{taps} phase-locked noisy sinusoids (answer 0) and of {taps} independent '
      'white-noise signals (no coupling at all: the level a metastability must exceed to '
      'mean anything; 5-95% range). Epoch histories have 16 to 30 samples, step windows '
      'hundreds to thousands.',
      '',
  ]
  table = []
  for r in rows:
    table.append(
        [r['n'], r['scales']]
        + [f'{r[k][0]:+.3f} ± {r[k][1]:.3f}' for k in ('white', 'walk', 'locked')]
        + [
            f'{r["independent"][0]:.3f} ({r["independent"][2]:.3f} to '
            f'{r["independent"][3]:.3f})'
        ]
    )
  lines += _table(
      [
          'samples',
          'DFA scales',
          'alpha, white noise',
          'alpha, random walk',
          'metastability, locked',
          'metastability, independent noise',
      ],
      table,
  ) + ['']
  for r in rows:
    sd = r['white'][1]
    lines.append(
        f'- At {r["n"]} samples one white-noise alpha has a spread of {sd:.2f}, so a '
        f'difference of 0.1 between two single estimates is '
        f'{0.1 / (sd * np.sqrt(2)):.2f} standard deviations of their difference; '
        f'independent noise gives metastability {r["independent"][0]:.3f} '
        f'(5-95% {r["independent"][2]:.3f} to {r["independent"][3]:.3f}).'
    )
  return lines + ['']


# ---------------------------------------------------------------------------------------------
# Ablation


def _ablation(
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
      'tracker runs during training (analysis/ablation.py); a training run with that '
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


def _last_finite(series) -> float:
  s = np.asarray(series, np.float64)
  s = s[np.isfinite(s)]
  return float(s[-1]) if len(s) else float('nan')


def _max_diff(a: Dict[str, Any], b: Dict[str, Any]) -> float:
  """Largest |a - b| over the shared keys; NaN positions must agree (else inf)."""
  worst = 0.0
  for key in set(a) & set(b):
    x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
    if x.shape != y.shape or not np.array_equal(np.isnan(x), np.isnan(y)):
      return float('inf')
    finite = np.isfinite(x)
    if finite.any():
      worst = max(worst, float(np.max(np.abs(x[finite] - y[finite]))))
  return worst


# ---------------------------------------------------------------------------------------------
# The report


def definition_title(overrides: Dict[str, Any]) -> str:
  return 'ablated: ' + ', '.join(f'{k}={v}' for k, v in overrides.items())


def build_definitions(
    runs: Sequence[runs_lib.Run],
    overrides: Optional[Dict[str, Any]] = None,
    step: bool = True,
    verify: bool = True,
):
  """[logged definition] (+ [ablated] when overrides are given), and the replication checks."""
  logged, ablated, checks = [], [], {}
  # A bar on a terminal (the ablation recomputes every run's metrics: seconds to minutes).
  for run in tqdm.tqdm(runs, desc='analysing runs', unit='run', disable=None, leave=False):
    dcfg = run.dynamics_config()
    step_logged = ablation.logged_step_series(run.dynamics) if step and run.has_step else None
    logged.append(View(run, dcfg, ablation.logged_probe_series(run.dynamics), step_logged))
    key = ablation.surrogate_key(run.dynamics, run.seed)
    if overrides:
      new_cfg = ablation.apply_overrides(dcfg, overrides)
      new_step = None
      if step_logged is not None:
        new_step = ablation.step_series(run.dynamics['step_signals'], new_cfg, surrogate_key=key)
      ablated.append(
          View(
              run,
              new_cfg,
              ablation.probe_series(run.dynamics['probe_signals'], new_cfg, key),
              new_step,
          )
      )
      if verify:
        checks[run.name] = {
            'probe': _max_diff(
                ablation.probe_series(run.dynamics['probe_signals'], dcfg, key), logged[-1].probe
            )
        }
        if step_logged is not None:
          checks[run.name]['step'] = _max_diff(
              ablation.step_series(run.dynamics['step_signals'], dcfg, surrogate_key=key),
              step_logged,
          )
  definitions = [Definition('logged', 'logged definition', logged)]
  if overrides:
    definitions.append(Definition('ablated', definition_title(overrides), ablated))
  return definitions, checks


def _definition_notes(runs: Sequence[runs_lib.Run]) -> List[str]:
  """Definition fields that differ between the runs (their findings mix definitions)."""
  configs = [r.dynamics_config() for r in runs]
  keys = sorted({k for c in configs for k in c})
  differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
  if not differing:
    return []
  return [
      '**Note:** the runs were trained with different dynamics definitions in: '
      + ', '.join(
          f'`{k}` ({", ".join(sorted({repr(c.get(k)) for c in configs}))})' for k in differing
      )
      + '. Cross-run comparisons mix those definitions.',
      '',
  ]


def build_report(
    workdirs: Sequence[str],
    out_dir: str,
    overrides: Optional[Dict[str, Any]] = None,
    include_unfinished: bool = False,
    step: bool = True,
    command: Optional[str] = None,
) -> str:
  """Writes <out_dir>/report.md and <out_dir>/figures/*.png; returns the report path.

  Args:
    workdirs: run directories, directories of runs or globs (see runs.find_runs).
    out_dir: where the report goes.
    overrides: {dynamics field: value} for an offline ablation (see ablation.parse_overrides).
    include_unfinished: also analyse runs without summary.json (their last dynamics.npz).
    step: also recompute the step-mode metrics in an ablation.
    command: the command line, quoted at the top of the report.
  """
  fig_dir = os.path.join(out_dir, 'figures')
  os.makedirs(fig_dir, exist_ok=True)
  rel = 'figures'
  loaded = [runs_lib.load_run(w) for w in runs_lib.find_runs(workdirs)]
  analysed, skipped = [], []
  for run in loaded:
    if not run.has_probe:
      skipped.append((run, 'no epoch-mode series (dynamics.npz missing, or probe_mode off)'))
    elif not run.finished and not include_unfinished:
      skipped.append((run, 'not finished (no summary.json); --include_unfinished analyses it'))
    else:
      analysed.append(run)
  analysed.sort(key=lambda r: (r.dataset, r.model, r.seed, r.name))
  if overrides:
    # Parse errors name the field; check every run's definition before any long work.
    for run in analysed:
      ablation.apply_overrides(run.dynamics_config(), overrides)

  lines = ['# Study report', '']
  if command:
    lines += ['Generated by', '', f'    {command}', '']
  lines += [
      f'{len(analysed)} run(s) analysed, {len(skipped)} skipped. Every number below is '
      "computed from the runs' files; every rule is stated with its finding.",
      '',
  ]
  rows = []
  for run in analysed:
    acc = run.test_accuracy
    rows.append(
        [
            run.name,
            run.model,
            run.dataset_label,
            run.source,
            run.seed,
            f'{len(acc)}/{run.num_epochs}',
            'yes' if run.finished else 'no',
            _f(acc[-1] if len(acc) else np.nan, 2),
            _f(np.nanmax(acc) if len(acc) else np.nan, 2),
        ]
    )
  lines += (
      ['## Runs', '']
      + _table(
          [
              'run',
              'model',
              'dataset',
              'data source',
              'seed',
              'epochs',
              'finished',
              'final test acc (%)',
              'best test acc (%)',
          ],
          rows,
      )
      + ['']
  )
  if skipped:
    lines += ['Skipped:', ''] + [f'- `{r.workdir}`: {why}' for r, why in skipped] + ['']
  if not analysed:
    lines += ['Nothing to analyse.']
    return _write(out_dir, lines)
  lines += _definition_notes(analysed)

  definitions, checks = build_definitions(analysed, overrides, step=step)
  controls = []
  if any(not r.is_control for r in analysed):  # constant-rate runs: finding 2's control only
    controls = [v for v in definitions[0].views if v.run.is_control]
    for definition in definitions:
      definition.views = [v for v in definition.views if not v.run.is_control]
  if controls:
    lines += [
        f'{len(controls)} run(s) with a constant learning rate are the control of finding 2 '
        'and are left out of findings 1 and 3.',
        '',
    ]
  figures.training_curves(analysed, os.path.join(fig_dir, 'training_curves.png'))
  lines += _seed_figures(definitions[0].views, fig_dir, rel)
  lines += _finding1(definitions, fig_dir, rel)
  lines += _finding2(definitions, fig_dir, rel, controls)
  lines += _early_stopping(definitions[0].views)
  lines += _finding3(definitions, fig_dir, rel)
  lines += _estimability(definitions[0].views)
  lines += _changes(analysed)
  lines += [
      '## Loss and accuracy',
      '',
      'Training loss at the logged steps, test loss and test accuracy after every epoch.',
      '',
      f'![loss and accuracy]({rel}/training_curves.png)',
      '',
  ]
  if overrides:
    lines += _ablation(definitions[0], definitions[1], checks, fig_dir, rel)
  return _write(out_dir, lines)


def _seed_figures(views: Sequence[View], fig_dir: str, rel: str) -> List[str]:
  """The metrics over epochs with their seed spread and null bands, one figure per history."""
  if not any(len(v.series('integration_z', '')) for v in views):
    return []
  counts = _seed_counts([v.run for v in views])
  lines = [
      '## The metrics over training, with seed spread and null bands',
      '',
      'Per dataset and model: the seeds (thin) and their mean ± 1 sample std (band), '
      f'{min(counts.values())} to {max(counts.values())} seeds per cell; the z-scores '
      "against each metric's surrogate null (integration: shuffle; metastability: phase), "
      f"with |z| < {figures.NULL_Z} (the null's central 95%) shaded.",
      '',
  ]
  for prefix in HISTORIES:
    name = f'seeds_{_slug(HISTORY_NAMES[prefix])}.png'
    figures.seed_bands(
        views,
        os.path.join(fig_dir, name),
        f'Epoch-mode metrics over seeds and their nulls ({HISTORY_NAMES[prefix]} history)',
        prefix,
    )
    lines.append(f'![metrics over seeds, {HISTORY_NAMES[prefix]}]({rel}/{name})')
  return lines + ['']


def _write(out_dir: str, lines: List[str]) -> str:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path
