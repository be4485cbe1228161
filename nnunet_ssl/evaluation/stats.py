"""Statistics over cases: summaries, volume agreement and paired tests.

NaN values (for instance HD95 when exactly one mask is empty) are left out of
every statistic here; the functions report how many values they used.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np


def describe(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, standard deviation, median, quartiles and IQR of the non-NaN values.

    Returns ``n`` (values used) and ``n_nan`` (values left out) too. With no
    values left every statistic is NaN. Quartiles use numpy's default linear
    interpolation; ``std`` is the sample standard deviation (ddof=1).

    Example:
        >>> d = describe([1.0, 2.0, 3.0, 4.0, float("nan")])
        >>> d["median"], d["iqr"], d["n"], d["n_nan"]
        (2.5, 1.5, 4, 1)
    """
    x = np.asarray(values, dtype=float)
    finite = x[~np.isnan(x)]
    out: dict[str, float | int] = {"n": int(finite.size), "n_nan": int(x.size - finite.size)}
    if finite.size == 0:
        out.update(mean=np.nan, std=np.nan, median=np.nan, q1=np.nan, q3=np.nan, iqr=np.nan)
        return out
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    out.update(mean=float(finite.mean()),
               std=float(finite.std(ddof=1)) if finite.size > 1 else np.nan,
               median=float(median), q1=float(q1), q3=float(q3), iqr=float(q3 - q1))
    return out


def icc_3_1(ratings: np.ndarray) -> float:
    """ICC(3,1): two-way mixed effects, consistency, single rater (Shrout & Fleiss 1979).

    ``ratings`` has one row per target (case) and one column per rater (for
    volume agreement: predicted and true volume). With ``n`` targets, ``k``
    raters, the between-targets mean square ``MSR`` and the residual mean square
    ``MSE`` of the two-way ANOVA::

        ICC(3,1) = (MSR - MSE) / (MSR + (k - 1) * MSE)

    Rows with a NaN are dropped. Returns NaN with fewer than two rows or when
    the denominator is zero (all ratings equal).

    Example (Shrout & Fleiss 1979, Table 2):
        >>> r = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
        >>> round(icc_3_1(np.array(r)), 2)
        0.71
    """
    x = np.asarray(ratings, dtype=float)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"ratings must be a 2D array targets x raters with at least 2 raters, got shape {x.shape}")
    x = x[~np.isnan(x).any(axis=1)]
    n, k = x.shape
    if n < 2:
        return float("nan")
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse
    if denom <= 0:
        return float("nan")
    return float((msr - mse) / denom)


def spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int]:
    """Spearman rank correlation ``(rho, p, n)`` over pairs where neither value is NaN.

    NaN ``rho`` and ``p`` with fewer than three pairs or a constant input.

    Example:
        >>> rho, p, n = spearman([1, 2, 3, 4], [10, 20, 30, 45])
        >>> rho, n
        (1.0, 4)
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan"), n
    res = stats.spearmanr(a, b)
    return float(res.statistic), float(res.pvalue), n


def rank_biserial(differences: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (Kerby 2014).

    ``r = (T+ - T-) / (T+ + T-)`` where ``T+`` and ``T-`` are the sums of the
    ranks of ``|d|`` over positive and negative differences. Zero differences
    are dropped, as in the Wilcoxon test. From -1 (every difference negative)
    to +1 (every difference positive); NaN when every difference is zero.

    Example:
        >>> rank_biserial([1.0, 2.0, 3.0, -0.5])
        0.8
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d) & (d != 0)]
    if d.size == 0:
        return float("nan")
    ranks = stats.rankdata(np.abs(d))
    t_plus, t_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((t_plus - t_minus) / (t_plus + t_minus))


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Shapiro-Wilk on ``a - b``, Wilcoxon signed-rank test and rank-biserial effect size.

    Pairs with a NaN on either side are dropped. The Wilcoxon test is
    ``scipy.stats.wilcoxon(a, b)`` with scipy's defaults (two-sided, zero
    differences dropped). When every difference is zero the runs agree
    exactly: ``p_wilcoxon`` is 1.0 and the effect size NaN.

    Returns ``n``, ``mean_diff``, ``median_diff``, ``p_shapiro`` (NaN for
    fewer than three pairs or constant differences), ``w_statistic``,
    ``p_wilcoxon`` and ``rank_biserial``.

    Example:
        >>> res = paired_test([0.9, 0.8, 0.85, 0.7, 0.95], [0.8, 0.7, 0.8, 0.72, 0.9])
        >>> res["n"], res["rank_biserial"]
        (5, 0.8666666666666667)
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    d = a - b
    out: dict[str, float | int] = {
        "n": int(d.size),
        "mean_diff": float(d.mean()) if d.size else float("nan"),
        "median_diff": float(np.median(d)) if d.size else float("nan"),
        "p_shapiro": float("nan"), "w_statistic": float("nan"), "p_wilcoxon": float("nan"),
        "rank_biserial": rank_biserial(d),
    }
    if d.size >= 3 and np.ptp(d) > 0:
        out["p_shapiro"] = float(stats.shapiro(d).pvalue)
    if d.size == 0:
        return out
    if not np.any(d != 0):
        out["w_statistic"], out["p_wilcoxon"] = 0.0, 1.0
        return out
    with warnings.catch_warnings():
        # scipy warns about small samples and about ties; the result is still what it returns.
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(a, b)
    out["w_statistic"], out["p_wilcoxon"] = float(res.statistic), float(res.pvalue)
    return out


def sign_test(differences: Sequence[float], tolerance: float = 0.01) -> dict[str, float | int]:
    """Sign test over paired differences: how many are above ``tolerance``, below ``-tolerance``
    or within it (tied), and the two-sided exact binomial p-value of the untied ones
    (``scipy.stats.binomtest``; 1.0 when all are tied).

    Meant for differences that are independent of each other, e.g. one per seed of an
    experiment, where the test cases of one seed share one training run.

    Example:
        >>> sign_test([0.5, 0.3, 0.0, -0.001, 0.2])
        {'better': 3, 'worse': 0, 'tied': 2, 'p': 0.25}
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    better, worse = int(np.sum(d > tolerance)), int(np.sum(d < -tolerance))
    p = float(stats.binomtest(better, better + worse, 0.5).pvalue) if better + worse else 1.0
    return {"better": better, "worse": worse, "tied": int(d.size) - better - worse, "p": p}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count).

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return [float(round(v, 12)) for v in adjusted]


def significance_mark(p: float) -> str:
    """``***`` for p < 0.001, ``**`` for p < 0.01, ``*`` for p < 0.05, else ``ns``.

    Example:
        >>> significance_mark(0.004)
        '**'
    """
    if p is None or np.isnan(p):
        return "n/a"
    if p < 0.001:
        return "***"
    if p < 0.01:
        return "**"
    if p < 0.05:
        return "*"
    return "ns"
