"""The Fashion-MNIST-LT benchmark page: its statistics, its verdicts, and that the committed
page is what the committed records generate."""

import math
import os

import pytest

from iif_d2.classification.report import paired_interval, render_page, verdict
from iif_d2.classification.runner import BENCHMARK_ROWS, load_records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDS = os.path.join(ROOT, "docs", "results", "classification_runs.json")
PAGE = os.path.join(ROOT, "docs", "benchmarks", "classification.md")


def test_paired_interval_hand_computed():
    mean, lo, hi = paired_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303
    assert mean == 2.0
    assert lo == pytest.approx(2 - 4.303 / math.sqrt(3)) and hi == pytest.approx(2 + 4.303 / 3**0.5)
    assert verdict(0.1, 2.0) == "shown" and verdict(-2.0, -0.1) == "contradicted"
    assert verdict(-0.1, 0.1) == "not shown" and verdict(math.nan, math.nan) == "not shown"


def _records(offsets):
    recs = []
    for seed in range(3):
        for i, (method, strategy, variant) in enumerate(BENCHMARK_ROWS):
            top1 = 50.0 + offsets.get((method, strategy, variant), 0.0) + 0.1 * seed * (i % 3)
            rec = {"model": "smallcnn8", "method": method, "strategy": strategy}
            rec.update(variant=variant, tau=1.0, seed=seed, epochs=2, stage2_epochs=20)
            rec.update(threads=1, cpu="CPU X", counts=[6000, 60], train_seconds=1.0, seconds=1.0)
            recs.append(dict(rec, top1=top1, many=top1, medium=top1, few=top1))
    return recs


def test_page_verdicts_follow_the_records():
    page = render_page(_records({("iif", "decoupled", "smooth"): 5.0, ("softmax", None, None): -5}))
    assert "| decoupled IIF beats softmax | Tables V, VII | 3 | +10.00 |" in page
    line = next(li for li in page.splitlines() if li.startswith("| decoupled IIF beats softmax"))
    assert line.endswith("**shown** |")
    line = next(li for li in page.splitlines() if li.startswith("| post-process IIF beats soft"))
    assert line.endswith("**shown** |")  # softmax is 5 lower than every other row
    assert 'smooth is the best decoupled variant": **shown' in page
    assert "CPU X, 1 thread (" in page and "Seeds: 0, 1, 2 (3)" in page


@pytest.mark.skipif(not os.path.exists(RECORDS), reason="no classification records committed")
def test_committed_page_is_generated_from_the_records():
    with open(PAGE) as f:
        assert f.read() == render_page(load_records(RECORDS)), (
            "docs/benchmarks/classification.md is stale: run "
            "`python dev/classify_fashion_mnist.py --from-records`"
        )
