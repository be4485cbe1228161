"""Summary statistics, ICC(3,1), Spearman and paired tests against published or independent values."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from nnunet_ssl.evaluation import stats

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; ICC(3,1) = 0.71.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])


@pytest.fixture
def volumes():
    """Predicted and true lesion volumes (mL) of ten cases, fixed numbers."""
    true = np.array([0.0, 1.2, 3.5, 4.1, 7.9, 12.0, 15.5, 22.3, 40.2, 61.0])
    pred = np.array([0.4, 0.9, 4.2, 3.0, 9.1, 10.8, 18.0, 20.1, 35.7, 66.4])
    return pred, true


def test_icc_3_1_shrout_fleiss_published_value():
    assert round(stats.icc_3_1(SHROUT_FLEISS), 2) == 0.71


def test_icc_3_1_two_raters_matches_covariance_formula(volumes):
    # For k = 2 raters ICC(3,1) reduces to 2 cov(x, y) / (var(x) + var(y)).
    pred, true = volumes
    expected = 2 * np.cov(pred, true)[0, 1] / (np.var(pred, ddof=1) + np.var(true, ddof=1))
    assert stats.icc_3_1(np.column_stack([pred, true])) == pytest.approx(expected)
    assert 0.9 < expected < 1.0


def test_icc_3_1_is_consistency_not_absolute_agreement(volumes):
    # A constant offset between raters does not lower a consistency ICC.
    _, true = volumes
    assert stats.icc_3_1(np.column_stack([true + 5.0, true])) == pytest.approx(1.0)


def test_icc_3_1_edge_cases():
    assert math.isnan(stats.icc_3_1(np.array([[1.0, 2.0]])))           # one target
    assert math.isnan(stats.icc_3_1(np.full((4, 2), 3.0)))             # no variance at all
    with_nan = np.array([[1.0, 1.1], [2.0, np.nan], [3.0, 2.9], [4.0, 4.2]])
    assert stats.icc_3_1(with_nan) == pytest.approx(stats.icc_3_1(with_nan[[0, 2, 3]]))
    with pytest.raises(ValueError):
        stats.icc_3_1(np.arange(4.0))


def test_spearman_matches_scipy(volumes):
    pred, true = volumes
    rho, p, n = stats.spearman(pred, true)
    ref = sps.spearmanr(pred, true)
    assert (rho, p, n) == pytest.approx((ref.statistic, ref.pvalue, 10))
    rho_nan, _, n_nan = stats.spearman([1.0, np.nan, 3.0, 4.0], [1.0, 5.0, 2.0, 3.0])
    assert n_nan == 3 and rho_nan == pytest.approx(sps.spearmanr([1, 3, 4], [1, 2, 3]).statistic)
    assert math.isnan(stats.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])[0])


def test_describe_median_iqr_and_nan_handling():
    d = stats.describe([4.0, 1.0, np.nan, 3.0, 2.0, 10.0])
    assert d["n"] == 5 and d["n_nan"] == 1
    assert d["mean"] == pytest.approx(4.0)
    assert d["median"] == 3.0
    assert (d["q1"], d["q3"], d["iqr"]) == (2.0, 4.0, 2.0)
    assert d["std"] == pytest.approx(np.std([4, 1, 3, 2, 10], ddof=1))
    empty = stats.describe([np.nan])
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_rank_biserial_hand_value():
    # |d| ranks: 0.5 -> 1, 1 -> 2, 2 -> 3, 3 -> 4; T+ = 9, T- = 1; zeros are dropped.
    assert stats.rank_biserial([1.0, 2.0, 3.0, -0.5, 0.0]) == pytest.approx(0.8)
    assert stats.rank_biserial([-1.0, -2.0]) == -1.0
    assert math.isnan(stats.rank_biserial([0.0, 0.0]))


def test_paired_test_matches_scipy(volumes):
    pred, true = volumes
    res = stats.paired_test(pred, true)
    ref = sps.wilcoxon(pred, true)
    assert res["n"] == 10
    assert res["p_wilcoxon"] == pytest.approx(ref.pvalue)
    assert res["w_statistic"] == pytest.approx(ref.statistic)
    assert res["p_shapiro"] == pytest.approx(sps.shapiro(pred - true).pvalue)
    assert res["median_diff"] == pytest.approx(np.median(pred - true))
    # effect size agrees with scipy's statistic W = min(T+, T-): |r| = (n(n+1)/2 - 2W) / (n(n+1)/2)
    total = 10 * 11 / 2
    assert abs(res["rank_biserial"]) == pytest.approx((total - 2 * ref.statistic) / total)


def test_paired_test_drops_nan_pairs_and_handles_identical_runs():
    a = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    b = np.array([1.5, np.nan, 3.0, 4.5, 5.2, 7.0])
    res = stats.paired_test(a, b)
    assert res["n"] == 4
    assert res["p_wilcoxon"] == pytest.approx(sps.wilcoxon([1, 4, 5, 6], [1.5, 4.5, 5.2, 7.0]).pvalue)
    same = stats.paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["p_wilcoxon"] == 1.0 and math.isnan(same["rank_biserial"]) and math.isnan(same["p_shapiro"])


def test_holm_and_marks():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = stats.holm([0.2, np.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert [stats.significance_mark(p) for p in (0.0005, 0.005, 0.02, 0.2, float("nan"))] == \
        ["***", "**", "*", "ns", "n/a"]
