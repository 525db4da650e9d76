"""Finding 2: the DSI volatility settles before the accuracy plateau (PLAN.md), tested."""

import os
from typing import List, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

from analysis import (  # noqa: E402
    figures,
    runs as runs_lib,  # noqa: E402
    stats,
)
from analysis.confirm.design import (  # noqa: E402  (the plan's constants)  # noqa: E402
    ALPHA,
    DATASETS,
    F2_MARGIN,
    PRIMARY_MODELS,
    SIGN_FLIPS,
    Design,
    Measures,
    phase_null_false_alarms,
)
from analysis.confirm.tables import (  # noqa: E402
    PRIMARY,
    _label,
    _p,
    _secondary_table,
    _spread,
    _verdict,
)
from analysis.markdown import _f, _table  # noqa: E402


def finding2(design: Design, fig_dir: str) -> List[str]:
  lines = [
      '## Finding 2: the DSI volatility settles before the accuracy plateau',
      '',
      'Per run: the causal lead L = P − S in epochs, P the accuracy plateau (the first epoch '
      'from which test accuracy stays within 1 point of its final maximum), S the epoch at '
      'which the step-mode detector could know (its settled streak plus patience); a signal '
      'that never fires counts as after the run. Primary test: mean L > 0 over the primary '
      f'cosine runs, one-sided sign-flip test ({SIGN_FLIPS:,} random sign patterns). Does '
      f'not hold if the TOST rejects |mean L| ≥ {F2_MARGIN:g} epoch or mean L < 0 is '
      'significant.',
      '',
  ]
  cells = [(m, d) for m in PRIMARY_MODELS for d in DATASETS if design.gate(m, d)[0]]
  excluded = [(m, d) for m in PRIMARY_MODELS for d in DATASETS if (m, d) not in cells]
  runs = [m for model, d in cells for m in design.cell(model, d)]
  dropped = [m.run.name for m in runs if m.plateau is None]
  runs = [m for m in runs if m.plateau is not None]
  rows, alarms = [], {}
  for m in runs:
    alarms[m.run.name] = phase_null_false_alarms(m)
    rows.append(
        [
            m.run.name,
            f'{m.final_accuracy:.2f}',
            str(m.plateau + 1),
            str(m.signal + 1) if m.signal < m.run.num_epochs else 'never',
            f'{m.lead():+.0f}',
            f'{m.lead("lr_rule"):+.0f}',
            f'{m.lead("loss_rule"):+.0f}',
            f'{m.lead("sliding_signal"):+.0f}',
            _f(alarms[m.run.name], 2),
        ]
    )
  lines += _table(
      [
          'run',
          'final acc (%)',
          'plateau',
          'signal knows',
          'lead',
          'lead LR rule',
          'lead loss rule',
          'lead sliding signal',
          'false alarms (phase null)',
      ],
      rows,
  )
  leads = [m.lead() for m in runs]
  primary = stats.sign_flip_test(leads, 'greater', num=SIGN_FLIPS)
  opposite = stats.sign_flip_test(leads, 'less', num=SIGN_FLIPS)
  tost = stats.one_sample_tost(leads, F2_MARGIN)
  lines += [
      '',
      f'Lead of the step-mode signal: {_spread(leads)} epochs; one-sided p (mean > 0) = '
      f'{_p(primary["p"])}; p (mean < 0) = {_p(opposite["p"])}; TOST (|mean| < '
      f'{F2_MARGIN:g}) p = {_p(tost["p"])}.',
  ]
  if dropped:
    lines.append(
        f'Dropped (no accuracy plateau: the last epoch is more than 1 point below '
        f'the best): {len(dropped)} ({", ".join(dropped)}).'
    )
  if excluded:
    lines.append(
        'Cells left out: '
        + ', '.join(
            f'{_label(m)} {runs_lib.DATASET_LABELS[d]} ('
            + (
                f'mean accuracy {design.gate(m, d)[1]:.2f}%, below the gate'
                if design.cell(m, d)
                else 'no runs yet'
            )
            + ')'
            for m, d in excluded
        )
        + '.'
    )
  pending = design.pending([(m, d) for m in PRIMARY_MODELS for d in DATASETS])
  if pending:
    verdict = pending
  elif not runs:
    verdict = 'not shown: no primary cell passes the accuracy gate'
  elif primary['p'] < ALPHA:
    verdict = 'holds'
  elif tost['p'] < ALPHA or opposite['p'] < ALPHA:
    verdict = 'does not hold'
  else:
    verdict = 'not shown'
  lines += [
      '',
      f'{PRIMARY}p = {_p(primary["p"])} (mean lead {_f(primary["mean"], 2)} epochs over '
      f'{len(leads)} runs; TOST {_p(tost["p"])}).',
      f'Verdict: {_verdict(verdict)}.',
      '',
  ]
  # Secondary tests.
  names, pvalues = [], []
  for rule, what in (
      ('lr_rule', 'learning-rate rule (half the peak rate)'),
      ('loss_rule', 'loss-slope rule (loss-only baseline)'),
  ):
    diff = [m.lead() - m.lead(rule) for m in runs]
    t = stats.sign_flip_test(diff, 'two-sided', num=SIGN_FLIPS)
    names.append(
        f'(a/b) signal against the {what}: mean paired lead difference {_f(t["mean"], 2)} epochs'
    )
    pvalues.append(t['p'])
  pairs = _control_pairs(design)
  t = stats.sign_flip_test([c - k for c, k in pairs], 'two-sided')
  names.append(
      f'(c) control arm: lead cosine − constant rate over {len(pairs)} paired ResNet-18 '
      f'CIFAR-10 runs, mean {_f(t["mean"], 2)} epochs'
  )
  pvalues.append(t['p'] if pairs else np.nan)
  rate = [alarms[m.run.name] for m in runs if np.isfinite(alarms[m.run.name])]
  before = sum(m.lead() > 0 for m in runs)
  p0 = float(np.mean(rate)) if rate else np.nan
  binom = (
      scipy.stats.binomtest(before, len(runs), p0, alternative='greater').pvalue
      if runs and 0 < p0 < 1
      else np.nan
  )
  names.append(
      f'(d) runs whose signal knows before the plateau, {before} of {len(runs)}, against '
      f"the phase null's mean false-alarm rate {_f(p0, 3)}"
  )
  pvalues.append(binom)
  sliding = stats.sign_flip_test(
      [m.lead('sliding_signal') for m in runs], 'greater', num=SIGN_FLIPS
  )
  names.append(f'(e) the sliding-history epoch signal, mean lead {_f(sliding["mean"], 2)} > 0')
  pvalues.append(sliding['p'])
  lines += _secondary_table(names, pvalues)
  expanding = [m.view.lead('') for m in runs]
  lines += [
      '',
      'Beside, not tested: the expanding-history epoch signal (it calms by its own growth), '
      f'lead {_spread([x for x in expanding if x is not None])} epochs where it fired. '
      "A shuffled DSI series cannot settle, so a shuffle null's false-alarm rate of 0 is "
      'structural; the phase null above keeps the autocorrelation.',
      '',
      _lead_figure(runs, fig_dir),
  ]
  return lines


def _control_pairs(design: Design) -> List[Tuple[float, float]]:
  """(cosine lead, constant-rate lead) of the ResNet-18 CIFAR-10 runs sharing a seed."""
  cosine = {m.run.seed: m for m in design.cell('resnet18', 'cifar10')}
  pairs = []
  for m in design.cell('resnet18', 'cifar10', 'constant'):
    c = cosine.get(m.run.seed)
    if c is not None and c.plateau is not None and m.plateau is not None:
      pairs.append((c.lead(), m.lead()))
  return pairs


def _lead_figure(runs: Sequence[Measures], fig_dir: str) -> str:
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for i, (which, label) in enumerate(
      (
          ('signal', 'DSI step signal'),
          ('sliding_signal', 'DSI sliding'),
          ('lr_rule', 'LR rule'),
          ('loss_rule', 'loss rule'),
      )
  ):
    v = [m.lead(which) for m in runs]
    ax.plot(np.full(len(v), i) + np.linspace(-0.2, 0.2, len(v)), v, 'o', alpha=0.6)
    if v:
      ax.plot([i - 0.3, i + 0.3], [np.mean(v)] * 2, 'k-')
    ax.text(i, ax.get_ylim()[0], label, ha='center', va='bottom', fontsize=8)
  ax.axhline(0, color='grey', lw=0.8)
  ax.set_xticks([])
  ax.set_ylabel('lead over the plateau (epochs)')
  ax.set_title(f'Finding 2: causal leads per run (n = {len(runs)}), mean as a bar')
  path = os.path.join(fig_dir, 'finding2_leads.png')
  figures._save(fig, path)  # pylint: disable=protected-access
  return f'![leads per rule](figures/{os.path.basename(path)})'
