"""Estimability: the bias and spread of DFA alpha and metastability on known-answer signals,
and the report section saying what a difference of 0.1 means."""

from typing import Any, Dict, List, Sequence

import numpy as np

from analysis.markdown import _table
from analysis.views import View
from dynamics import tracker as tracker_lib

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


def section(views: Sequence[View]) -> List[str]:
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
