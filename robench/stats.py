"""Interval estimates for accuracies."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n, as fractions (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: b examples right only under A, c only
    under B (a binomial test of b out of b + c at 1/2)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5).pvalue)


def paired_diff_ci(both: int, only_a: int, only_b: int, neither: int, z: float = Z95) -> tuple[float, float, float]:
    """Difference p_A - p_B of two paired proportions with Newcombe's (1998, method 10) hybrid score 95%
    interval, all as fractions: (difference, low, high)."""
    n = both + only_a + only_b + neither
    if n == 0:
        return 0.0, -1.0, 1.0
    pa, pb = (both + only_a) / n, (both + only_b) / n
    la, ua = wilson(both + only_a, n, z)
    lb, ub = wilson(both + only_b, n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    d = pa - pb
    low = d - math.sqrt(max(0.0, (pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2))
    high = d + math.sqrt(max(0.0, (ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2))
    return d, max(-1.0, low), min(1.0, high)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for multiple comparisons (same order as given)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        out[i] = running
    return out


def compare_outcomes(a: dict[int, int], b: dict[int, int]) -> dict:
    """Paired comparison of per-example outcomes ({idx: 1 if right}) of A against B on the examples both
    have: the difference in points with Newcombe's 95% interval and the exact McNemar p-value."""
    common = sorted(set(a) & set(b))
    both = sum(1 for i in common if a[i] and b[i])
    only_a = sum(1 for i in common if a[i] and not b[i])
    only_b = sum(1 for i in common if b[i] and not a[i])
    d, lo, hi = paired_diff_ci(both, only_a, only_b, len(common) - both - only_a - only_b)
    return {
        "diff": 100 * d,
        "low": 100 * lo,
        "high": 100 * hi,
        "p": mcnemar_exact(only_a, only_b),
        "n": len(common),
        "only_a": only_a,
        "only_b": only_b,
    }


def unpaired_diff_ci(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """Difference p2 - p1 of two independent proportions with Newcombe's (1998, method 10) hybrid score 95%
    interval, as fractions: (difference, low, high)."""
    p1, p2 = (k1 / n1 if n1 else 0.0), (k2 / n2 if n2 else 0.0)
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p2 - p1
    return (
        d,
        max(-1.0, d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)),
        min(1.0, d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)),
    )


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value for k1 of n1 against k2 of n2 (independent samples)."""
    from scipy.stats import fisher_exact as fe

    return float(fe([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def binom_above(k: int, n: int, rate: float) -> float:
    """One-sided exact binomial p-value that k of n lies above ``rate``: P(X >= k) for X ~ Bin(n, rate)."""
    if k <= 0:
        return 1.0
    from scipy.stats import binom

    return float(binom.sf(k - 1, n, rate))


def t_interval(values: list[float], alpha: float = 0.05) -> tuple[float, float, float, float]:
    """Mean, Student-t (1 - alpha) interval and two-sided p-value (mean 0) of a few values, such as one
    difference per training seed; with one value the interval is unbounded and p is 1."""
    k = len(values)
    mean = sum(values) / k
    if k < 2:
        return mean, -math.inf, math.inf, 1.0
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    if sd == 0:
        return mean, mean, mean, (1.0 if mean == 0 else 0.0)
    se = sd / math.sqrt(k)
    half = float(t.ppf(1 - alpha / 2, k - 1)) * se
    return mean, mean - half, mean + half, float(2 * t.sf(abs(mean) / se, k - 1))
