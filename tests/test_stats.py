"""The report's statistics on data where the answer is known."""

import math

import numpy as np
import pytest
import scipy.stats

from analysis import stats


def test_exact_permutation_known_answer():
  # 6 splits of {1, 2, 3, 4} into 2 + 2; |diff| = 2 only for {1,2}|{3,4} and its mirror.
  p, splits, exact = stats.permutation_pvalue([1.0, 2.0], [3.0, 4.0])
  assert exact and splits == 6 and p == pytest.approx(2 / 6)
  p, splits, _ = stats.permutation_pvalue([1.0, 2.0, 3.0], [10.0, 11.0, 12.0])
  assert splits == math.comb(6, 3) and p == pytest.approx(2 / 20)
  out = stats.two_sample([1.0, 2.0], [3.0, 4.0])
  assert out['test'] == 'permutation' and out['min_p'] == pytest.approx(2 / 6)


def test_welch_matches_scipy_and_ci_covers():
  rng = np.random.default_rng(0)
  a, b = rng.normal(1.0, 1.0, 8), rng.normal(0.0, 2.0, 7)
  out = stats.two_sample(a, b)
  assert out['test'] == 'welch'
  assert out['p'] == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)
  assert out['std_a'] == pytest.approx(a.std(ddof=1)) and out['n_b'] == 7
  # Coverage of the 95% Welch interval over many draws with a known difference of 0.5.
  trials = 2000
  cover = 0
  for _ in range(trials):
    o = stats.two_sample(rng.normal(0.5, 1.0, 4), rng.normal(0.0, 3.0, 5))
    cover += o['ci_low'] <= 0.5 <= o['ci_high']
  assert abs(cover / trials - 0.95) < 3 * math.sqrt(0.05 * 0.95 / trials)


def test_permutation_calibrated_under_null():
  rng = np.random.default_rng(1)
  trials = 400
  p = np.asarray(
      [stats.two_sample(rng.standard_normal(4), rng.standard_normal(4))['p'] for _ in range(trials)]
  )
  # Exact test: P(p <= 0.1) <= 0.1 (discrete: with 70 splits, p takes multiples of 2/70).
  assert np.mean(p <= 0.1) < 0.1 + 3 * math.sqrt(0.09 / trials)
  assert np.mean(p <= 0.5) > 0.3  # not degenerate


def test_classification_separates_and_control_says_no():
  rng = np.random.default_rng(2)
  labels = np.repeat(['resnet', 'vgg', 'mobilenet'], 4)
  centres = {'resnet': 0.0, 'vgg': 3.0, 'mobilenet': 6.0}
  x = np.stack([rng.normal(centres[c], 0.3, 4) for c in labels])
  out = stats.classification_test(x, labels, num=199)
  assert out['accuracy'] == 1.0 and out['distinct'] and out['p'] < 0.05
  # Same distribution for every label: not distinct.
  same = rng.normal(0, 1, x.shape)
  assert not stats.classification_test(same, labels, num=199)['distinct']
  # Too few runs of one model for a fake split that could say "distinct": no control.
  assert stats.fake_groups_control(x, labels, 'vgg') is None  # 4 vgg runs


def test_fake_groups_control_says_no_on_seeds_and_can_say_yes():
  assert stats.FAKE_SPLIT_MIN_RUNS == 7
  every = {tuple(p) for p in stats._labellings(np.asarray(list('aabbb')))}
  assert len(every) == 10 and all(sorted(p) == list('aabbb') for p in every)
  assert stats.fake_split_min_p(6) == 0.1 and abs(stats.fake_split_min_p(7) - 1 / 35) < 1e-15
  rng = np.random.default_rng(5)
  labels = np.asarray(['resnet'] * 8 + ['vgg'] * 3)
  # Eight seeds of one model from one distribution: the fake split is not distinct.
  x = rng.normal(0, 1, (11, 4))
  control = stats.fake_groups_control(x, labels, 'resnet', num=199)
  assert control is not None and control['n'] == 8 and not control['distinct']
  # The control is not vacuous: if the alternate seeds really differed, it would say so.
  x[:8:2] += 4.0
  shifted = stats.fake_groups_control(x, labels, 'resnet', num=199)
  # 70 labellings of 4 + 4 runs <= 199: the exact test; only the split and its swap score 1.
  assert shifted['distinct'] and shifted['accuracy'] == 1.0 and abs(shifted['p'] - 2 / 70) < 1e-12
  assert stats.fake_groups_control(x[5:], labels[5:], 'resnet') is None  # 3 runs


def test_classification_calibrated_under_null():
  # The false "distinct" rate on data with no label structure stays at the level.
  rng = np.random.default_rng(3)
  labels = np.repeat(['a', 'b'], 4)
  trials = 60
  hits = sum(
      stats.classification_test(rng.standard_normal((8, 4)), labels, num=99, seed=t)['distinct']
      for t in range(trials)
  )
  assert hits / trials < 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_shuffled_labels_control_passes_the_test_and_fails_a_biased_rule():
  # On well-separated runs (3 models x 3 seeds, the study's design) the real test says
  # "distinct", and with the labels shuffled it mostly says no: the control passes.
  rng = np.random.default_rng(4)
  labels = np.repeat(['resnet', 'vgg', 'vit'], 3)
  centres = {'resnet': 0.0, 'vgg': 3.0, 'vit': 6.0}
  x = np.stack([rng.normal(centres[c], 0.3, 4) for c in labels])
  assert stats.classification_test(x, labels, num=199)['distinct']
  control = stats.shuffled_labels_control(x, labels, repeats=40, num=99)
  assert control['passes'] and control['rate'] <= 0.1 and control['repeats'] == 40

  # A rule that says "distinct" whatever the labels (as the old in-sample centroid rule did for
  # two seeds of one model) fails the control.
  def biased(features, shuffled, num, seed):
    del num, seed
    acc = stats.loo_accuracy(features, shuffled, np.arange(len(shuffled)))
    return {'distinct': acc >= 0.0}

  failed = stats.shuffled_labels_control(x, labels, repeats=40, test=biased)
  assert not failed['passes'] and failed['rate'] == 1.0


def test_trivial_predictors():
  lr = np.asarray([0.1, 0.2, 0.4, 0.4, 0.3, 0.2, 0.1])
  assert stats.first_fraction_epoch(lr, 0.5) == 5  # peak 0.4 at epoch 2; 0.2 <= 0.2 at 5
  assert stats.first_fraction_epoch(np.full(5, 0.1), 0.5) == -1  # constant schedule
  loss = np.asarray([2.0, 1.5, 1.2, 1.0, 0.99, 0.985, 0.98])
  # (1.2 - 0.985) / (3 * 1.2) = 0.06; (1.0 - 0.98) / 3 = 0.0067 < 0.02 at epoch 6.
  assert stats.slope_rule_epoch(loss, 3, 0.02) == 6
  assert stats.slope_rule_epoch(loss[:4], 3, 0.02) == -1


def test_held_out_verdict_reports_the_control_also_when_one_model_cannot_be_classified():
  from analysis import finding3

  rng = np.random.default_rng(6)
  labels = np.asarray(['resnet'] * 8)
  x = rng.normal(0, 1, (8, 4))
  result = stats.classification_test(x, labels, num=99)  # one model: no architecture test
  assert not np.isfinite(result['accuracy'])
  control = stats.fake_groups_control(x, labels, 'resnet', num=99)
  text = finding3.HeldOut('CIFAR-10', '', result, {'resnet': control}).verdict()
  assert 'cannot be assessed' in text and 'over 8 runs' in text and '**passes** for 1 of 1' in text


# ------------------------------------------------------ the confirmatory study's tests (PLAN.md)


def test_welch_tost_equals_two_shifted_one_sided_welch_tests():
  rng = np.random.default_rng(3)
  a, b = rng.normal(0.02, 0.05, 6), rng.normal(0.0, 0.04, 6)
  margin = 0.1
  lower = scipy.stats.ttest_ind(a + margin, b, equal_var=False, alternative='greater').pvalue
  upper = scipy.stats.ttest_ind(a - margin, b, equal_var=False, alternative='less').pvalue
  np.testing.assert_allclose(stats.welch_tost(a, b, margin)['p'], max(lower, upper), rtol=1e-12)
  # Far apart groups are not equivalent; identical spreads around one mean are.
  assert stats.welch_tost(a + 1.0, b, margin)['p'] > 0.5
  assert stats.welch_tost(a, a + 1e-3, margin)['p'] < stats.ALPHA


def test_one_sample_tost_equals_two_shifted_one_sample_t_tests():
  v = np.random.default_rng(4).normal(0.2, 1.0, 24)
  lower = scipy.stats.ttest_1samp(v, -1.0, alternative='greater').pvalue
  upper = scipy.stats.ttest_1samp(v, 1.0, alternative='less').pvalue
  np.testing.assert_allclose(stats.one_sample_tost(v, 1.0)['p'], max(lower, upper), rtol=1e-12)


def test_sign_flip_test_is_scipys_exact_one_sample_permutation_test():
  v = np.asarray([1.5, -0.3, 2.0, 0.7, 1.1, -0.2, 0.9])
  for alternative in ('greater', 'less', 'two-sided'):
    ref = scipy.stats.permutation_test(
        (v,), np.mean, permutation_type='samples', alternative=alternative, n_resamples=np.inf
    ).pvalue
    ours = stats.sign_flip_test(v, alternative)
    assert ours['exact']
    np.testing.assert_allclose(ours['p'], ref, rtol=1e-12)
  # Random sign flips (2^24 patterns > num): close to the exact answer.
  w = np.random.default_rng(5).normal(0.3, 1.0, 24)
  exact = stats.sign_flip_test(w, 'greater', num=2**24)['p']
  approx = stats.sign_flip_test(w, 'greater', num=20_000)
  assert not approx['exact'] and abs(approx['p'] - exact) < 0.01
  assert stats.sign_flip_test(np.ones(6), 'two-sided')['p'] == 2 / 64  # its smallest p


def test_holm_adjusts_in_order_and_skips_nan():
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
  out = stats.holm([0.02, np.nan, 0.5])
  assert np.isnan(out[1]) and out[0] == 0.04 and out[2] == 0.5
  np.testing.assert_array_equal(stats.holm([0.6, 0.9]), [1.0, 1.0])  # capped, monotone


def test_clopper_pearson_upper_equals_scipys_exact_interval():
  for k, n in ((0, 12), (5, 12), (6, 12), (11, 12)):
    ref = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.90, method='exact').high
    np.testing.assert_allclose(stats.clopper_pearson_upper(k, n), ref, rtol=1e-10)
  assert stats.clopper_pearson_upper(12, 12) == 1.0


def test_adjusted_group_effect_is_the_frisch_waugh_slope():
  rng = np.random.default_rng(6)
  g = np.repeat([1.0, 0.0], 8)
  c = rng.normal(0, 1, 16) + 0.3 * g
  y = 2 + 0.5 * g + 1.5 * c + rng.normal(0, 0.1, 16)
  out = stats.adjusted_group_effect(y, g, c)
  # Frisch-Waugh: the coefficient of g is the slope of y on g, both residualised on [1, c].
  z = np.stack([np.ones(16), c], 1)
  res = lambda v: v - z @ np.linalg.lstsq(z, v, rcond=None)[0]
  np.testing.assert_allclose(out['coef'], res(g) @ res(y) / (res(g) @ res(g)), rtol=1e-10)
  assert out['p'] < 1e-6 and 1 < out['vif'] < 2
  # A covariate that is the group itself leaves nothing to estimate.
  assert np.isnan(stats.adjusted_group_effect(y, g, g)['coef'])


def test_loo_accuracies_equal_loo_accuracy_per_labelling():
  rng = np.random.default_rng(7)
  x = rng.normal(0, 1, (12, 4)) + np.repeat([[0.0], [1.0], [2.0]], 4, axis=0)
  labels = np.repeat(['a', 'b', 'c'], 4)
  for groups in (np.arange(12), np.tile(np.arange(4), 3)):  # runs, or seeds held out together
    perms = np.stack([labels] + [rng.permutation(labels) for _ in range(40)])
    batched = stats.loo_accuracies(x, perms, groups)
    one_by_one = [stats.loo_accuracy(x, p, groups) for p in perms]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-12)
