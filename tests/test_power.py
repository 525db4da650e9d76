"""analysis/power.py: the exact tests it simulates equal scipy's, and its power behaves."""

import numpy as np
from scipy import stats as sps

from analysis import power


def test_permutation_p_equals_scipys_exact_permutation_test():
  rng = np.random.default_rng(1)
  x, y = rng.normal(0.8, 1, (3, 5)), rng.normal(0, 1, (3, 5))
  ours = power.permutation_p(x, y, power._splits(5, 5))
  for i in range(3):
    ref = sps.permutation_test(
        (x[i], y[i]),
        lambda a, b: np.mean(a) - np.mean(b),
        permutation_type='independent',
        alternative='two-sided',
        n_resamples=np.inf,
    ).pvalue
    np.testing.assert_allclose(ours[i], ref, rtol=1e-12)


def test_power_is_at_most_alpha_without_an_effect_and_grows_with_it():
  assert power.permutation_power(0.0, 6, draws=3000) <= power.ALPHA + 0.01
  assert power.permutation_power(3.0, 6, draws=500) > 0.95
  assert power.signed_rank_power(0.0, 12, draws=1500) <= power.ALPHA + 0.015
  assert power.signed_rank_power(1.5, 12, draws=300) > 0.9
  # TOST: a margin far above the spread says "equivalent" nearly always; one below it never.
  assert power.tost_power(1.0, 0.05, 6, draws=500) > 0.99
  assert power.tost_power(0.01, 0.5, 6, draws=500) < 0.01


def test_min_detectable_finds_the_effect_at_the_target_power():
  mde = power.min_detectable(lambda e: power.permutation_power(e, 6, draws=800))
  assert 1.4 < mde < 2.2  # 80% power for 6 + 6 runs needs d of about 1.8
  assert power.permutation_power(mde, 6, draws=800) >= 0.8
