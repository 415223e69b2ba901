"""Paired A/B timing with a same-vs-same control, and its statistics, for dev/benchmark_speed.py
(its tables: :func:`iif_d2.bench.report.speed_markdown`).

Design. After warm-up, each of ``rounds`` rounds times two pairs: the comparison (A, B) and the
control (A, A), the same callable A timed twice. Both pairs alternate their order: A first in
even rounds, second in odd ones (A B, B A, A B, ...), so drift and whichever-runs-first effects
fall on both sides equally. Each round gives a paired ratio B / A and a control ratio A / A.

Statistics, over the rounds' paired ratios:
  median    the ratio reported;
  interval  a distribution-free 95 % interval of the median: the order statistics
            [x_(k), x_(n+1-k)] for the largest k whose binomial coverage,
            1 - 2 P(Binomial(n, 1/2) <= k - 1), is at least 95 % (n = 30: x_(10)..x_(21),
            95.7 %); below 6 rounds no k reaches 95 % and the interval is min..max, its
            smaller coverage stated;
  spread    the 2.5 and 97.5 percentiles of the paired ratios (linear interpolation).
A ratio is "within noise" when its interval overlaps the control's; otherwise it is "faster" or
"slower" than the noise floor the control shows.
"""

import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "round_order",
    "alternating_rounds",
    "median_interval",
    "summarize",
    "verdict",
    "compare_pairs",
    "max_headline",
    "format_row",
]


def round_order(k: int) -> Tuple[int, int]:
    """The order of a pair's two sides in round ``k``: (0, 1) in even rounds, (1, 0) in odd."""
    return (0, 1) if k % 2 == 0 else (1, 0)


def alternating_rounds(
    pairs: Sequence[Tuple[Callable, Callable]],
    rounds: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> List[Tuple[List[float], List[float]]]:
    """Time each pair's two callables in ``rounds`` rounds of alternating order, after warm-up.

    Args:
        pairs: (a, b) callables; every pair is timed once per round, in :func:`round_order`.
        rounds: timed rounds (>= 1).
        warmup: untimed rounds first, in the same order.
        sync: called before reading the clock (``torch.cuda.synchronize`` on a GPU).
        clock: seconds.

    Returns:
        For each pair, (seconds of a per round, seconds of b per round).
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0; got {rounds} and {warmup}.")
    times = [([], []) for _ in pairs]
    for k in range(-warmup, rounds):
        for pair, out in zip(pairs, times):
            for side in round_order(k):
                sync()
                t = clock()
                pair[side]()
                sync()
                if k >= 0:
                    out[side].append(clock() - t)
    return times


def median_interval(xs: Sequence[float], confidence: float = 0.95) -> Tuple[float, float, float]:
    """A distribution-free interval of the median from order statistics (module docstring).

    Returns:
        (low, high, coverage): coverage is the interval's exact probability of holding the median,
        at least ``confidence`` where the sample is large enough (6 or more at 95 %).
    """
    x = sorted(xs)
    n = len(x)
    if n == 0:
        raise ValueError("median_interval needs at least one value; got none.")

    def coverage(k):  # [x_(k), x_(n+1-k)], 1-based
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return x[k - 1], x[n - k], coverage(k)


def summarize(ratios: Sequence[float]) -> Dict[str, object]:
    """Median, its 95 % interval (with coverage) and the 2.5-97.5 % spread of paired ratios."""
    low, high, cov = median_interval(ratios)
    return {
        "median": float(np.median(ratios)),
        "interval": [float(low), float(high)],
        "coverage": cov,
        "spread": [float(v) for v in np.percentile(ratios, [2.5, 97.5])],
    }


def verdict(ratio: Dict[str, object], control: Dict[str, object]) -> str:
    """ "within noise" where the intervals of two :func:`summarize` results overlap, else "slower"
    or "faster" (``ratio``'s interval above or below the control's)."""
    (lo, hi), (clo, chi) = ratio["interval"], control["interval"]
    if lo > chi:
        return "slower"
    if hi < clo:
        return "faster"
    return "within noise"


def compare_pairs(
    name: str,
    labels: Tuple[str, str],
    fns: Tuple[Callable, Callable],
    rounds: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
    headline: bool = True,
) -> Dict[str, object]:
    """Time B against A and A against A (the control) in the same alternating rounds.

    Args:
        name: the row's name.
        labels: names of A (the baseline) and B.
        fns: the callables A and B.
        rounds, warmup, sync: as :func:`alternating_rounds`.
        headline: whether the ratio counts towards the target (False: for information).

    Returns:
        The row: name, labels, headline, median ms of A and B, ``ratio`` and ``control``
        (:func:`summarize` of B / A and of A / A per round) and ``verdict``.
    """
    a, b = fns
    (ta, tb), (ca, ca2) = alternating_rounds([(a, b), (a, a)], rounds, warmup, sync)
    ratio = summarize([y / x for x, y in zip(ta, tb)])
    control = summarize([y / x for x, y in zip(ca, ca2)])
    return {
        "name": name,
        "labels": list(labels),
        "headline": headline,
        "ms": [float(np.median(ta)) * 1e3, float(np.median(tb)) * 1e3],
        "ratio": ratio,
        "control": control,
        "verdict": verdict(ratio, control),
    }


def _interval(s):
    return f"{s['interval'][0]:.3f}-{s['interval'][1]:.3f}"


def format_row(r: Dict[str, object]) -> str:
    """One line of a :func:`compare_pairs` row, for the console."""
    ratio, control = r["ratio"], r["control"]
    return (
        f"{r['name']:<34} {r['labels'][0]} {r['ms'][0]:8.2f} ms  {r['labels'][1]} "
        f"{r['ms'][1]:8.2f} ms  ratio {ratio['median']:.3f} [{_interval(ratio)}]  "
        f"control {control['median']:.3f} [{_interval(control)}]  {r['verdict']}"
    )


def max_headline(rows: Sequence[Dict[str, object]]) -> Optional[Dict[str, object]]:
    """The headline row of the largest median ratio (None without headline rows)."""
    rows = [r for r in rows if r["headline"]]
    return max(rows, key=lambda r: r["ratio"]["median"]) if rows else None
