"""iif_d2.bench.timing (paired alternating rounds, the statistics of the ratios) on hand-made
samples, and the speed report of iif_d2.bench.report."""

import json
import math
import random
import re
import time

import pytest

from iif_d2.bench import report, timing


def test_round_order_alternates():
    assert [timing.round_order(k) for k in range(4)] == [(0, 1), (1, 0), (0, 1), (1, 0)]


def test_alternating_rounds_order_warmup_and_durations():
    """Every pair is timed once per round, A first in even rounds and second in odd ones, after
    untimed warm-up rounds; each time is the clock's advance during that call."""
    now, calls = [0.0], []

    def fn(label, seconds):
        def call():
            calls.append(label)
            now[0] += seconds

        return call

    a, b = fn("a", 1.0), fn("b", 3.0)
    times = timing.alternating_rounds([(a, b), (a, a)], rounds=3, warmup=1, clock=lambda: now[0])
    # warm-up round -1 is odd: reversed, as round 1
    round_even, round_odd = ["a", "b", "a", "a"], ["b", "a", "a", "a"]
    assert calls == round_odd + round_even + round_odd + round_even
    assert times == [([1.0] * 3, [3.0] * 3), ([1.0] * 3, [1.0] * 3)]


def test_alternating_rounds_rejects_bad_counts():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        timing.alternating_rounds([(int, int)], rounds=0, warmup=1)


def _binomial_coverage(n, k):
    """1 - 2 P(Binomial(n, 1/2) <= k - 1), written out."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n


@pytest.mark.parametrize(
    "n, k",
    [
        (30, 10),  # the textbook 95 % interval of a median of 30: x_(10)..x_(21)
        (9, 2),  # x_(2)..x_(8): 1 - 2 * 10 / 512 = 96.1 %
        (6, 1),  # min..max: 1 - 2 / 64 = 96.9 %; x_(2)..x_(5) would be 78 %
    ],
)
def test_median_interval_order_statistics(n, k):
    values = [float(i) for i in range(1, n + 1)]
    random.Random(0).shuffle(values)
    low, high, coverage = timing.median_interval(values)
    assert (low, high) == (k, n + 1 - k)
    assert coverage == pytest.approx(_binomial_coverage(n, k))
    assert coverage >= 0.95 > _binomial_coverage(n, k + 1)


def test_median_interval_small_samples_state_their_coverage():
    """Below 6 values no interval reaches 95 %: min..max, with its true coverage."""
    assert timing.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)
    assert timing.median_interval([2.0]) == (2.0, 2.0, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        timing.median_interval([])


def test_summarize_and_verdict():
    s = timing.summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert s["median"] == 3.0
    assert s["interval"] == [1.0, 5.0]
    assert s["spread"] == pytest.approx([1.1, 4.9])  # 1 + 0.025 * 4, 5 - 0.025 * 4
    control = {"interval": [0.98, 1.02]}
    assert timing.verdict({"interval": [1.01, 1.05]}, control) == "within noise"
    assert timing.verdict({"interval": [1.03, 1.05]}, control) == "slower"
    assert timing.verdict({"interval": [0.90, 0.97]}, control) == "faster"


def test_compare_pairs_sees_a_real_difference_and_a_flat_control(tmp_path):
    """B sleeps three times as long as A: ratio about 3, "slower"; the control about 1."""
    row = timing.compare_pairs(
        "sleep", ("short", "long"), (lambda: time.sleep(0.002), lambda: time.sleep(0.006)), 7, 1
    )
    assert 2 < row["ratio"]["median"] < 3.5
    assert 0.7 < row["control"]["median"] < 1.4
    assert row["verdict"] == "slower"
    assert row["ms"][0] >= 2 and row["ms"][1] >= 6
    md, js = report.write_speed_report(str(tmp_path / "r"), "T", {"threads": 1}, [row])
    assert re.search(r"\| sleep +\| short / long +\|", open(md).read())
    assert json.load(open(js))["rows"][0]["verdict"] == "slower"
