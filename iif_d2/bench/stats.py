"""The statistics of the benchmarks: paired differences over seeds with their Student-t
interval, the verdict of a claim, mean and sample standard deviation, and Welch's interval of
the difference of two independent means."""

import math

__all__ = ["mean_std", "paired_difference", "verdict", "welch_difference"]


def paired_difference(a, b, confidence=0.95):
    """Mean of a_i - b_i over paired samples with its two-sided Student-t interval.

    Returns:
        dict: n, mean, std (of the differences, ddof 1), low, high (None for n < 2).

    Raises:
        ValueError: ``a`` and ``b`` differ in length (unpaired samples).
    """
    from scipy import stats

    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "low": None, "high": None}
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def verdict(diff, sign):
    """ "shown" when the interval lies on the claimed side of 0 (``sign`` +1: a > b is the
    claim, -1: a < b), "contradicted" when it lies on the other, "not shown" when it holds 0
    (or there are too few seeds for an interval)."""
    if diff["low"] is None:
        return "not shown (one seed)"
    lo, hi = sign * diff["low"], sign * diff["high"]
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return "shown"
    if hi < 0:
        return "contradicted"
    return "not shown"


def mean_std(values):
    """(mean, sample std) of the non-None values; (None, None) if there are none."""
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def welch_difference(a_mean, a_std, a_n, b_mean, b_std, b_n, confidence=0.95):
    """Mean difference a - b of two independent samples given as (mean, std, n), with its
    two-sided Welch interval: (difference, low, high); the interval is the point itself when
    both stds are 0."""
    from scipy import stats

    va, vb = a_std**2 / a_n, b_std**2 / b_n
    d = a_mean - b_mean
    if va + vb == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va**2 / (a_n - 1) + vb**2 / (b_n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * math.sqrt(va + vb)
    return d, d - half, d + half
