r"""Power of the confirmatory study's primary tests, by simulation (results/confirm/PLAN.md).

  python -m analysis.power            # the table in PLAN.md, from the pilot statistics below

Each function draws normal data with a given standardised effect, runs the test the plan
names on every draw, and returns the fraction of draws that reject at alpha:
- `permutation_power`: the exact two-sided permutation test of a difference in means, every
  labelling enumerated (finding 1's primary test);
- `signed_rank_power`: the exact one-sided Wilcoxon signed-rank test of a median > 0
  (finding 2's primary test);
- `tost_power`: two one-sided Welch t-tests of |difference| < margin when the true difference
  is 0 (the equivalence test behind "does not hold").
`min_detectable` bisects an effect to a target power.
"""

import itertools
import math
from typing import Callable, Dict, List

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
TARGET_POWER = 0.8


def _splits(n1: int, n2: int) -> np.ndarray:
  """bool[C(n1 + n2, n1), n1 + n2]: every assignment of n1 of the runs to group 1."""
  rows = []
  for chosen in itertools.combinations(range(n1 + n2), n1):
    row = np.zeros(n1 + n2, bool)
    row[list(chosen)] = True
    rows.append(row)
  return np.asarray(rows)


def permutation_p(x: np.ndarray, y: np.ndarray, splits: np.ndarray) -> np.ndarray:
  """Exact two-sided permutation p of mean(x) - mean(y), for a batch of draws.

  Args:
    x: f64[D, n1]; y: f64[D, n2]; splits: _splits(n1, n2).
  Returns:
    f64[D]: #{labellings with |difference| >= observed} / #labellings.
  """
  n1 = x.shape[1]
  n2 = y.shape[1]
  pooled = np.concatenate([x, y], axis=1)  # [D, n]
  sums = pooled @ splits.T.astype(np.float64)  # [D, L] group-1 sums
  total = pooled.sum(axis=1, keepdims=True)
  diffs = np.abs(sums / n1 - (total - sums) / n2)
  observed = np.abs(x.mean(axis=1) - y.mean(axis=1))[:, None]
  return np.mean(diffs >= observed - 1e-12, axis=1)


def permutation_power(
    effect: float, n: int, alpha: float = ALPHA, draws: int = 4000, seed: int = 0
) -> float:
  """Power of the exact two-sided permutation test, n + n runs, effect in SD units."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((draws, n)) + effect
  y = rng.standard_normal((draws, n))
  return float(np.mean(permutation_p(x, y, _splits(n, n)) <= alpha))


def signed_rank_power(
    effect: float, n: int, alpha: float = ALPHA, draws: int = 2000, seed: int = 0
) -> float:
  """Power of the exact one-sided Wilcoxon signed-rank test (median > 0), n paired runs."""
  rng = np.random.default_rng(seed)
  d = rng.standard_normal((draws, n)) + effect
  p = sps.wilcoxon(d, alternative='greater', method='exact', axis=1).pvalue
  return float(np.mean(p <= alpha))


def tost_power(
    margin: float, sd: float, n: int, alpha: float = ALPHA, draws: int = 4000, seed: int = 0
) -> float:
  """P(the TOST of two groups of n rejects |difference| >= margin) when the truth is 0."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((draws, n)) * sd
  y = rng.standard_normal((draws, n)) * sd
  diff = x.mean(1) - y.mean(1)
  se = np.sqrt(x.var(1, ddof=1) / n + y.var(1, ddof=1) / n)
  df = 2 * n - 2
  lower = sps.t.sf((diff + margin) / se, df)  # H0: diff <= -margin
  upper = sps.t.cdf((diff - margin) / se, df)  # H0: diff >= +margin
  return float(np.mean(np.maximum(lower, upper) <= alpha))


def min_detectable(power_fn: Callable[[float], float], target: float = TARGET_POWER) -> float:
  """The smallest effect (to 0.01) at which power_fn(effect) >= target (power rises with it)."""
  lo, hi = 0.0, 6.0
  while hi - lo > 0.01:
    mid = (lo + hi) / 2
    lo, hi = (lo, mid) if power_fn(mid) >= target else (mid, hi)
  return hi


# The pilots' statistics (networks that barely learn; results/seeds8 and results/cpu30):
# (what, difference or mean, its spread, source). Effects are in units of the seed spread.
PILOT_FINDING1 = (
    # step window integration, C10 - C100: difference, pooled sample std, source
    ('ResNet-18, step window', -0.069, math.sqrt((0.071**2 + 0.083**2) / 2), 'seeds8, n = 8 + 8'),
    ('ResNet-18, step window', -0.052, math.sqrt((0.120**2 + 0.082**2) / 2), 'cpu30, n = 3 + 3'),
    ('VGG-16, step window', 0.082, math.sqrt((0.081**2 + 0.136**2) / 2), 'cpu30, n = 3 + 3'),
    ('ResNet-18, expanding', -0.248, math.sqrt((0.272**2 + 0.175**2) / 2), 'seeds8, n = 8 + 8'),
)
# finding 2: the step-window lead (epochs), mean and sample std over the runs where it fired.
PILOT_FINDING2 = ('DSI step window lead (epochs)', 0.89, 5.5, 'cpu30, fired in 9 of 18 runs')


def table(seeds=(5, 6, 8, 10)) -> List[str]:
  """PLAN.md's power table (markdown lines)."""
  lines = [
      '| test | n per group | power at the pilot effect | effect detectable with 80% power |',
      '| --- | --- | --- | --- |',
  ]
  for what, diff, sd, source in PILOT_FINDING1:
    d = abs(diff) / sd
    for n in seeds:
      mde = min_detectable(lambda e, n=n: permutation_power(e, n, draws=1500))
      lines.append(
          f'| F1 exact permutation, {what} ({source}: d = {d:.2f}) | {n} | '
          f'{permutation_power(d, n):.2f} | d = {mde:.2f} ({mde * sd:.3f} in alpha) |'
      )
  what, mean, sd, source = PILOT_FINDING2
  for n in (12, 24):
    mde = min_detectable(lambda e, n=n: signed_rank_power(e, n, draws=800))
    lines.append(
        f'| F2 signed-rank, {what} ({source}: {mean:+.2f} ± {sd:.1f}) | {n} runs | '
        f'{signed_rank_power(mean / sd, n):.2f} | {mde:.2f} SD ({mde * sd:.1f} epochs) |'
    )
  return lines


def tost_table(margin: float, sds=(0.03, 0.05, 0.08), seeds=(5, 6, 8)) -> List[str]:
  """P(TOST at `margin` says "equivalent" when the truth is no difference), per spread."""
  lines = ['| seed spread (alpha) | ' + ' | '.join(f'n = {n}' for n in seeds) + ' |']
  lines.append('| --- |' + ' --- |' * len(seeds))
  for sd in sds:
    row = [f'{tost_power(margin, sd, n):.2f}' for n in seeds]
    lines.append(f'| {sd} | ' + ' | '.join(row) + ' |')
  return lines


def summary() -> Dict[str, float]:
  """The few numbers PLAN.md quotes (smallest exact p of its permutation tests)."""
  return {
      'min_p_two_sided_6_6': 2 / math.comb(12, 6),
      'min_p_two_sided_5_5': 2 / math.comb(10, 5),
  }


if __name__ == '__main__':
  print('\n'.join(table()))
  print()
  print('TOST at margin 0.10 (alpha units), true difference 0:')
  print('\n'.join(tost_table(0.10)))
  print()
  print(summary())
