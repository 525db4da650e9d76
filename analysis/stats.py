"""Statistics for the study report: two-sample tests, held-out classification, detectors' nulls.

Every function is plain numpy/scipy over small arrays (one value per run), with its rule in the
docstring, so the report can state it next to the result.
"""

import itertools
import math
from typing import Any, Dict, Optional, Sequence

import numpy as np
import scipy.stats

ALPHA = 0.05  # the level every verdict of the report uses
EXACT_MAX_SPLITS = 20_000  # permutation tests enumerate every split up to this many


def _finite(values) -> np.ndarray:
  v = np.asarray(values, np.float64).ravel()
  return v[np.isfinite(v)]


def permutation_pvalue(a, b, num: int = 9999, seed: int = 0) -> tuple:
  """Two-sided permutation test of mean(a) - mean(b).

  Exact (every split of the pooled values into groups of len(a) and len(b)) when there are at
  most EXACT_MAX_SPLITS splits, else `num` random splits with p = (1 + #) / (1 + num). The
  observed split is one of the splits, so p >= 1 / splits: with 2 + 2 runs p >= 1/6, and no
  test at this level can say "different" (the report says so).

  Returns:
    (p, splits, exact).
  """
  a, b = _finite(a), _finite(b)
  pooled = np.concatenate([a, b])
  na, n = len(a), len(a) + len(b)
  observed = abs(a.mean() - b.mean())
  total = math.comb(n, na)
  # A small tolerance: splits equal to the observed one up to round-off count as at least as
  # extreme (the observed split itself must).
  tol = 1e-12 * max(1.0, float(np.abs(pooled).max()))
  if total <= EXACT_MAX_SPLITS:
    hits = 0
    for idx in itertools.combinations(range(n), na):
      mask = np.zeros(n, bool)
      mask[list(idx)] = True
      hits += abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed - tol
    return hits / total, total, True
  rng = np.random.default_rng(seed)
  hits = 0
  for _ in range(num):
    perm = rng.permutation(pooled)
    hits += abs(perm[:na].mean() - perm[na:].mean()) >= observed - tol
  return (1 + hits) / (1 + num), num, False


def two_sample(a, b, small_n: int = 5) -> Dict[str, float]:
  """Difference of means of two groups of runs, with its confidence interval and a test.

  mean, sample std (ddof 1) and n of each group; diff = mean(a) - mean(b); a 95% Welch
  interval (t quantile at the Welch-Satterthwaite df) when both groups have >= 2 values; the
  test is Welch's t when both groups have >= `small_n` values, else the exact permutation test
  of the difference (with fewer, Welch's normal approximation is not to be trusted).

  Returns:
    {'mean_a', 'std_a', 'n_a', 'mean_b', 'std_b', 'n_b', 'diff', 'ci_low', 'ci_high', 'p',
    'test' ('welch' | 'permutation' | 'none'), 'min_p' (smallest p the test can give)}.
  """
  a, b = _finite(a), _finite(b)
  out = {
      'n_a': len(a),
      'n_b': len(b),
      'mean_a': np.nan,
      'mean_b': np.nan,
      'std_a': np.nan,
      'std_b': np.nan,
      'diff': np.nan,
      'ci_low': np.nan,
      'ci_high': np.nan,
      'p': np.nan,
      'test': 'none',
      'min_p': np.nan,
  }
  for name, v in (('a', a), ('b', b)):
    if len(v):
      out[f'mean_{name}'] = float(v.mean())
    if len(v) > 1:
      out[f'std_{name}'] = float(v.std(ddof=1))
  if not (len(a) and len(b)):
    return out
  out['diff'] = out['mean_a'] - out['mean_b']
  if len(a) > 1 and len(b) > 1:
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se > 0:
      df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
      half = float(scipy.stats.t.ppf(0.975, df)) * se
    else:
      half = 0.0
    out['ci_low'], out['ci_high'] = out['diff'] - half, out['diff'] + half
  if len(a) >= small_n and len(b) >= small_n:
    out['p'] = float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)
    out['test'], out['min_p'] = 'welch', 0.0
  elif len(a) + len(b) >= 2:
    p, splits, exact = permutation_pvalue(a, b)
    out['p'], out['test'] = float(p), 'permutation'
    # |diff| is symmetric: a split and its mirror image (when na == nb) are equally extreme.
    out['min_p'] = (2 if len(a) == len(b) else 1) / splits if exact else 1 / (1 + splits)
  return out


# --------------------------------------------------------------------------- held-out classes


def _standardise(train: np.ndarray, test: np.ndarray):
  mean, sd = train.mean(0), train.std(0)
  sd = np.where(sd > 0, sd, 1.0)
  return (train - mean) / sd, (test - mean) / sd


def loo_accuracy(features: np.ndarray, labels: Sequence[str], groups: Sequence) -> float:
  """Leave-one-group-out nearest-centroid accuracy.

  For each group (a seed, or a run), the features of the other groups are standardised (their
  mean and std), each class's centroid is the mean of its training rows, and every held-out row
  is assigned to the nearest centroid. A class with no training row cannot be predicted.

  Args:
    features: f[N, F], one row per run.
    labels: N class labels (e.g. the model).
    groups: N group ids; rows sharing one are held out together.
  """
  x = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  groups = np.asarray(groups)
  correct = 0
  for g in np.unique(groups):
    test = groups == g
    train = ~test
    classes = np.unique(labels[train])
    xtr, xte = _standardise(x[train], x[test])
    centroids = np.stack([xtr[labels[train] == c].mean(0) for c in classes])
    nearest = classes[np.argmin(((xte[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    correct += int(np.sum(nearest == labels[test]))
  return correct / len(labels)


def loo_accuracies(features: np.ndarray, labellings: np.ndarray, groups: Sequence) -> np.ndarray:
  """`loo_accuracy` for many labellings of the same runs at once.

  The standardisation depends only on which rows are held out, not on the labels, so each
  group's standardised rows are computed once and every labelling's centroids come from one
  one-hot product.

  Args:
    features: f[N, F].
    labellings: [P, N] labels (any values; each row one labelling of the N runs).
    groups: N group ids.
  Returns:
    f64[P]: each labelling's leave-one-group-out nearest-centroid accuracy.
  """
  x = np.asarray(features, np.float64)
  classes, codes = np.unique(np.asarray(labellings), return_inverse=True)
  codes = codes.reshape(np.shape(labellings))  # int[P, N]
  groups = np.asarray(groups)
  onehot_all = codes[..., None] == np.arange(len(classes))  # bool[P, N, C]
  correct = np.zeros(codes.shape[0])
  for g in np.unique(groups):
    test = groups == g
    xtr, xte = _standardise(x[~test], x[test])
    onehot = onehot_all[:, ~test].astype(np.float64)  # [P, Ntr, C]
    counts = onehot.sum(1)  # [P, C]
    centroids = np.einsum('pnc,nf->pcf', onehot, xtr) / np.maximum(counts, 1)[..., None]
    dist = ((xte[None, :, None, :] - centroids[:, None]) ** 2).sum(-1)  # [P, Nte, C]
    dist = np.where(counts[:, None, :] > 0, dist, np.inf)  # a class with no training row
    correct += (dist.argmin(-1) == codes[:, test]).sum(1)
  return correct / codes.shape[1]


def _num_labellings(counts) -> int:
  """Distinct assignments of labels with these class sizes to n runs: n! / prod(counts!)."""
  total, left = 1, int(np.sum(counts))
  for c in counts:
    total *= math.comb(left, int(c))
    left -= int(c)
  return total


def _labellings(labels):
  """Every distinct rearrangement of `labels` (class sizes kept), the given one included."""
  classes = np.unique(labels)
  sizes = [int(np.sum(labels == c)) for c in classes]

  def fill(free, k):
    if k == len(classes) - 1:
      yield {classes[k]: free}
      return
    for chosen in itertools.combinations(free, sizes[k]):
      rest = tuple(i for i in free if i not in chosen)
      for tail in fill(rest, k + 1):
        yield {classes[k]: chosen, **tail}

  for assignment in fill(tuple(range(len(labels))), 0):
    out = np.empty(len(labels), dtype=labels.dtype)
    for c, where in assignment.items():
      out[list(where)] = c
    yield out


def classification_test(
    features, labels, groups=None, num: int = 999, seed: int = 0
) -> Dict[str, float]:
  """Held-out accuracy of classifying runs by label, against its permutation distribution.

  The null permutes the labels across runs (keeping the class sizes) and recomputes the
  leave-one-group-out accuracy: over every distinct labelling when there are at most `num` of
  them (exact: p = #{null >= observed} / #labellings, the observed labelling among them),
  otherwise over `num` random ones, p = (1 + #{null >= observed}) / (1 + num). "Distinct" means
  p < ALPHA. groups default to one group per run (leave-one-run-out).

  Returns:
    {'accuracy', 'chance' (the largest class share), 'null_mean', 'p', 'n', 'classes',
    'distinct'}.
  """
  x = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
  # A class needs 2 runs, so that one is left to train on when the other is held out.
  keep = np.isin(labels, [c for c in np.unique(labels) if np.sum(labels == c) >= 2])
  x, labels, groups = x[keep], labels[keep], groups[keep]
  n = len(labels)
  classes = np.unique(labels)
  out = {
      'n': n,
      'classes': len(classes),
      'accuracy': np.nan,
      'chance': np.nan,
      'null_mean': np.nan,
      'p': np.nan,
      'distinct': False,
  }
  counts = np.asarray([np.sum(labels == c) for c in classes])
  if len(classes) < 2 or len(np.unique(groups)) < 3:
    return out
  observed = loo_accuracy(x, labels, groups)
  if _num_labellings(counts) <= num:  # exact: every distinct labelling (the observed one too)
    null = loo_accuracies(x, np.stack(list(_labellings(labels))), groups)
    p = np.sum(null >= observed - 1e-12) / len(null)
  else:
    rng = np.random.default_rng(seed)
    null = loo_accuracies(x, np.stack([rng.permutation(labels) for _ in range(num)]), groups)
    p = (1 + np.sum(null >= observed - 1e-12)) / (1 + num)
  out.update(
      accuracy=observed,
      chance=float(counts.max() / n),
      null_mean=float(null.mean()),
      p=float(p),
      distinct=bool(p < ALPHA),
  )
  return out


def fake_split_min_p(n: int) -> float:
  """The smallest p the classification test can give on n runs split into two fake groups of
  ceil(n/2) and floor(n/2): only the true split (and, with equal groups, its swap) among the
  C(n, ceil(n/2)) labellings scores the perfect accuracy."""
  return (2 if n % 2 == 0 else 1) / math.comb(n, math.ceil(n / 2))


# The fewest runs of one model whose fake split can say "distinct" at all: 7 (1/35). With 4
# to 6 runs the smallest p is 1/3, 1/10 or 1/10, and a control that cannot fail is no control.
FAKE_SPLIT_MIN_RUNS = next(n for n in range(4, 100) if fake_split_min_p(n) < ALPHA)


def fake_groups_control(
    features, labels, model: str, seed: int = 0, num: int = 999
) -> Optional[Dict[str, float]]:
  """The control of the classification test: the runs of one model split into two fake
  groups (alternately by seed order). The answer is known to be "not distinct"; None when the
  model has fewer than FAKE_SPLIT_MIN_RUNS runs, where the test could not say "distinct"
  whatever the data."""
  labels = np.asarray(labels)
  rows = np.flatnonzero(labels == model)
  if len(rows) < FAKE_SPLIT_MIN_RUNS:
    return None
  fake = np.asarray(['A' if i % 2 == 0 else 'B' for i in range(len(rows))])
  return classification_test(np.asarray(features)[rows], fake, num=num, seed=seed)


def shuffled_labels_control(
    features, labels, repeats: int = 100, num: int = 99, seed: int = 0, test=None
) -> Dict[str, float]:
  """The known-"no" control of the classification test on the real runs: the labels are
  shuffled across the runs (class sizes kept), so no label can be predicted, and the whole
  test is rerun `repeats` times with `num` permutations each. A calibrated test says
  "distinct" in at most ALPHA of them; the control fails when a one-sided binomial test finds
  the rate above ALPHA (p < ALPHA). `test` (default classification_test) is the rule tested.

  Returns:
    {'repeats', 'distinct' (how many said distinct), 'rate', 'p', 'passes'}.
  """
  test = classification_test if test is None else test
  x = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  # The classes the test keeps (2 or more runs), so that shuffling keeps their sizes.
  keep = np.isin(labels, [c for c in np.unique(labels) if np.sum(labels == c) >= 2])
  x, labels = x[keep], labels[keep]
  rng = np.random.default_rng(seed)
  said = 0
  for i in range(repeats):
    said += bool(test(x, rng.permutation(labels), num=num, seed=seed + 1 + i)['distinct'])
  p = float(scipy.stats.binomtest(said, repeats, ALPHA, alternative='greater').pvalue)
  return {
      'repeats': repeats,
      'distinct': said,
      'rate': said / repeats,
      'p': p,
      'passes': bool(p >= ALPHA),
  }


# --------------------------------------------------------------------------- detectors


def first_fraction_epoch(values, fraction: float) -> int:
  """First 0-based epoch after the peak at which values <= fraction * peak, or -1 (the
  learning-rate predictor: the schedule has decayed to `fraction` of its peak)."""
  v = np.asarray(values, np.float64)
  if not len(v) or not np.isfinite(v).any():
    return -1
  peak = int(np.nanargmax(v))
  below = np.flatnonzero(v[peak:] <= fraction * v[peak])
  return int(peak + below[0]) if len(below) else -1


def slope_rule_epoch(loss, window: int = 3, rate: float = 0.02) -> int:
  """First 0-based epoch e >= window at which the per-epoch training loss fell by less than
  `rate` (relative) per epoch over the last `window` epochs:
  (loss[e - window] - loss[e]) / (window * loss[e - window]) < rate; -1 if never."""
  v = np.asarray(loss, np.float64)
  for e in range(window, len(v)):
    if np.isfinite(v[e]) and np.isfinite(v[e - window]) and v[e - window] > 0:
      if (v[e - window] - v[e]) / (window * v[e - window]) < rate:
        return e
  return -1


# ------------------------------------------------------ the confirmatory study's tests (PLAN.md)


def welch_tost(a, b, margin: float) -> Dict[str, float]:
  """Equivalence of two means: two one-sided Welch t-tests of H0 diff <= -margin and H0
  diff >= +margin (diff = mean(a) - mean(b)); p = the larger of the two. p < ALPHA says
  |diff| < margin. NaN with fewer than 2 values in a group or no spread."""
  a, b = _finite(a), _finite(b)
  if len(a) < 2 or len(b) < 2:
    return {'p': np.nan, 'diff': np.nan, 'margin': margin}
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se = math.sqrt(va + vb)
  diff = float(a.mean() - b.mean())
  if se == 0:
    return {'p': 0.0 if abs(diff) < margin else 1.0, 'diff': diff, 'margin': margin}
  df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  lower = scipy.stats.t.sf((diff + margin) / se, df)
  upper = scipy.stats.t.cdf((diff - margin) / se, df)
  return {'p': float(max(lower, upper)), 'diff': diff, 'margin': margin}


def one_sample_tost(values, margin: float) -> Dict[str, float]:
  """Equivalence of a mean to 0 within +-margin: two one-sided t-tests; p = the larger."""
  v = _finite(values)
  if len(v) < 2:
    return {'p': np.nan, 'mean': np.nan, 'margin': margin}
  se = v.std(ddof=1) / math.sqrt(len(v))
  mean = float(v.mean())
  if se == 0:
    return {'p': 0.0 if abs(mean) < margin else 1.0, 'mean': mean, 'margin': margin}
  df = len(v) - 1
  lower = scipy.stats.t.sf((mean + margin) / se, df)
  upper = scipy.stats.t.cdf((mean - margin) / se, df)
  return {'p': float(max(lower, upper)), 'mean': mean, 'margin': margin}


def sign_flip_test(
    values, alternative: str = 'two-sided', num: int = 99_999, seed: int = 0
) -> Dict[str, Any]:
  """Sign-flip permutation test of mean(values) = 0 (paired differences, or leads).

  Under H0 each value is as likely to have the other sign. Exact (every one of the 2^n sign
  patterns, p = #{at least as extreme} / 2^n) when 2^n <= num + 1, else `num` random patterns
  with p = (1 + #) / (1 + num). alternative: 'greater' (mean > 0), 'less', or 'two-sided'
  (|mean|).

  Returns:
    {'p', 'mean', 'n', 'exact', 'min_p'}.
  """
  v = _finite(values)
  n = len(v)
  if n == 0:
    return {'p': np.nan, 'mean': np.nan, 'n': 0, 'exact': False, 'min_p': np.nan}
  if alternative not in ('greater', 'less', 'two-sided'):
    raise ValueError(f'alternative={alternative!r}: greater, less or two-sided.')
  observed = v.mean()
  tol = 1e-12 * max(1.0, float(np.abs(v).max()))
  exact = 2**n <= num + 1
  if exact:
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
  else:
    signs = np.random.default_rng(seed).choice(np.asarray([-1.0, 1.0]), size=(num, n))
  means = (signs * v).mean(axis=1)
  if alternative == 'greater':
    hits = np.sum(means >= observed - tol)
  elif alternative == 'less':
    hits = np.sum(means <= observed + tol)
  else:
    hits = np.sum(np.abs(means) >= abs(observed) - tol)
  if exact:
    p = hits / len(signs)
    min_p = (2 if alternative == 'two-sided' else 1) / len(signs)
  else:
    p = (1 + hits) / (1 + num)
    min_p = 1 / (1 + num)
  return {'p': float(p), 'mean': float(observed), 'n': n, 'exact': exact, 'min_p': min_p}


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm-adjusted p-values (family-wise error control), in the input order; NaN stays NaN and
  does not count towards the family size."""
  p = np.asarray(pvalues, np.float64)
  out = np.full(p.shape, np.nan)
  ok = np.flatnonzero(np.isfinite(p))
  m = len(ok)
  running = 0.0
  for rank, i in enumerate(ok[np.argsort(p[ok], kind='stable')]):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
  """One-sided upper confidence bound of a binomial proportion (k successes of n)."""
  if n <= 0:
    return float('nan')
  if k >= n:
    return 1.0
  return float(scipy.stats.beta.ppf(confidence, k + 1, n - k))


def adjusted_group_effect(y, group, covariate) -> Dict[str, float]:
  """OLS y ~ 1 + group + covariate: the group coefficient, its t-test and the covariate's
  collinearity with the group (variance inflation factor 1 / (1 - R^2) of group on covariate).

  group: 0/1 per row (e.g. 1 = CIFAR-10). NaN rows are dropped. NaN results with fewer than 4
  rows or a singular design.
  """
  y, g, c = (np.asarray(x, np.float64) for x in (y, group, covariate))
  ok = np.isfinite(y) & np.isfinite(g) & np.isfinite(c)
  y, g, c = y[ok], g[ok], c[ok]
  out = {'coef': np.nan, 'se': np.nan, 'p': np.nan, 'vif': np.nan, 'n': int(len(y))}
  if len(y) < 4:
    return out
  x = np.stack([np.ones_like(g), g, c], axis=1)
  if np.linalg.matrix_rank(x) < 3:
    return out
  beta, *_ = np.linalg.lstsq(x, y, rcond=None)
  resid = y - x @ beta
  df = len(y) - 3
  sigma2 = resid @ resid / df
  cov = sigma2 * np.linalg.inv(x.T @ x)
  se = math.sqrt(cov[1, 1])
  r = np.corrcoef(g, c)[0, 1]
  out.update(
      coef=float(beta[1]),
      se=se,
      p=float(2 * scipy.stats.t.sf(abs(beta[1] / se), df)) if se > 0 else np.nan,
      vif=float(1 / (1 - r**2)) if abs(r) < 1 else float('inf'),
  )
  return out
