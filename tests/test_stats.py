"""o2o_jax.stats against independent computations (scipy, hand-worked cases, theory)."""
import numpy as np
import pytest
import scipy.stats

from o2o_jax import stats


@pytest.mark.parametrize("n", [4, 8, 12, 20, 100])
def test_iqm_matches_scipy_trim_mean_when_n_divisible_by_4(n):
    rng = np.random.default_rng(n)
    x = rng.standard_t(3, size=n) * 10.0
    assert stats.iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25), rel=1e-12)


def test_iqm_fractional_weights_by_hand():
    # n = 9 (textbook example): 2.25 samples trimmed from each end; the 3rd and 7th
    # smallest keep weight 0.75, the middle three weight 1, total weight 4.5.
    x = np.array([17, 1, 13, 3, 9, 5, 15, 7, 11], dtype=float)
    assert stats.iqm(x) == pytest.approx((0.75 * 5 + 7 + 9 + 11 + 0.75 * 13) / 4.5)
    assert stats.iqm(x) == pytest.approx(9.0)
    # Asymmetric n = 6: keep mass [1.5, 4.5] -> weights 0.5, 1, 1, 0.5 on x(2..5).
    y = np.array([100.0, 0.0, 2.0, 3.0, 10.0, -50.0])  # sorted: -50 0 2 3 10 100
    assert stats.iqm(y) == pytest.approx((0.5 * 0 + 2 + 3 + 0.5 * 10) / 3.0)
    # n = 5: keep mass [1.25, 3.75] -> weights 0.75, 1, 0.75 on x(2..4).
    z = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    assert stats.iqm(z) == pytest.approx((0.75 * 2 + 4 + 0.75 * 8) / 2.5)
    # Small n: one value is itself, two values their mean, three: 0.25/1/0.25.
    assert stats.iqm([3.0]) == 3.0
    assert stats.iqm([1.0, 5.0]) == pytest.approx(3.0)
    assert stats.iqm([0.0, 1.0, 10.0]) == pytest.approx((0.25 * 0 + 1 + 0.25 * 10) / 1.5)


def test_iqm_axis_and_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 9))
    np.testing.assert_allclose(stats.iqm(x, axis=1), [stats.iqm(r) for r in x])
    np.testing.assert_allclose(stats.iqm(x, axis=0), [stats.iqm(c) for c in x.T])
    for n in range(1, 13):
        w = stats.iqm_weights(n)
        assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
        np.testing.assert_allclose(w, w[::-1])          # symmetric
    assert np.isnan(stats.iqm([]))


def test_bootstrap_ci_coverage_of_normal_mean():
    """Repeated experiments: the 95% CI of the mean of n=40 normal draws covers the
    true mean about 95% of the time (percentile bootstrap slightly under-covers at
    small n, so the band is 0.95 -0.05/+0.03; 3 s.d. of the MC error is ~0.03)."""
    rng = np.random.default_rng(123)
    true_mean, trials, n = 2.0, 400, 40
    covered = 0
    for t in range(trials):
        x = rng.normal(true_mean, 3.0, size=n)
        lo, hi = stats.bootstrap_ci(x, np.mean, 0.95, num_resamples=1000, seed=t)
        assert lo <= x.mean() <= hi
        covered += lo <= true_mean <= hi
    coverage = covered / trials
    assert 0.90 <= coverage <= 0.98, coverage


def test_bootstrap_ci_width_matches_normal_theory_for_large_sample():
    rng = np.random.default_rng(7)
    n = 2000
    x = rng.normal(0.0, 5.0, size=n)
    lo, hi = stats.bootstrap_ci(x, np.mean, 0.95, num_resamples=5000, seed=1)
    se = x.std(ddof=1) / np.sqrt(n)
    expected = 2 * scipy.stats.norm.ppf(0.975) * se
    assert (hi - lo) == pytest.approx(expected, rel=0.10)
    assert (lo + hi) / 2 == pytest.approx(x.mean(), abs=0.1 * expected)


def test_bootstrap_ci_edge_cases_and_non_vectorised_stat():
    assert stats.bootstrap_ci([4.0]) == (4.0, 4.0)
    lo, hi = stats.bootstrap_ci([])
    assert np.isnan(lo) and np.isnan(hi)
    x = np.arange(10.0)
    # A stat_fn without an `axis` argument falls back to a loop; same seed, same answer
    # as the vectorised median.
    a = stats.bootstrap_ci(x, lambda v: float(np.median(v)), num_resamples=500, seed=3)
    b = stats.bootstrap_ci(x, np.median, num_resamples=500, seed=3)
    assert a == pytest.approx(b)
    with pytest.raises(ValueError):
        stats.bootstrap_ci(x, confidence=1.5)


def test_summarize():
    x = [1.0, 2.0, np.nan, 3.0, 4.0, 100.0]
    s = stats.summarize(x, num_resamples=2000)
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(22.0)
    assert s["iqm"] == pytest.approx(stats.iqm([1, 2, 3, 4, 100]))
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert set(s) == {"mean", "iqm", "ci_low", "ci_high", "n"}


def test_largest_drop_by_hand():
    nan = np.nan
    scores = np.array([
        [50., 48., 45., 52., 30., 60., 61., 62., 63., 64., 65., 10.],   # 20 at index 4;
        [10., 11., 12., 13., 14., 15., 16., 17., 18., 19., 20., 0.],    # never below: 0
        [nan, 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11.],            # no start: NaN
        [40., nan, 35., nan, nan, nan, nan, nan, nan, nan, nan, nan],   # gaps skipped: 5
    ])
    # index 11 lies beyond the window of 10 after the start, so its falls do not count
    np.testing.assert_array_equal(stats.largest_drop(scores, start=0, within=10),
                                  [20., 0., nan, 5.])
    # another start and window: from index 3 over 3..5 (52 -> 30)
    np.testing.assert_array_equal(stats.largest_drop(scores[:1], start=3, within=2), [22.])
    assert np.isnan(stats.largest_drop(np.zeros((2, 1)), start=1)).all()
    # a start with no later point in the window says nothing: NaN, not "never fell"
    assert np.isnan(stats.largest_drop([[5., nan, nan]])).all()
    assert np.isnan(stats.largest_drop(np.zeros((2, 1)))).all()
