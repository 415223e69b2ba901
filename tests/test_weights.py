"""Tests for ``iif_d2.weights`` (docs/method.md §1).

The reference values are computed independently in plain Python (``math`` and
``statistics.NormalDist``), never with torch.
"""

import csv
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from statistics import NormalDist

import pytest
import torch

from iif_d2.weights import VARIANT_ALIASES, VARIANTS, canonical_variant, iif_weights

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "iif_d2" / "data"
DATASETS = {
    # file name -> (num_images, total instances) as stated in docs/method.md §7
    "lvis_v1_train.csv": (100170, 1270141),
    "coco_train2017.csv": (118287, 860001),
}


def load_counts(filename):
    """Parse a counts file: ``# num_images: N`` comment line, then CSV rows."""
    num_images = None
    data_lines = []
    with open(DATA / filename, newline="") as fh:
        for line in fh:
            if line.startswith("#"):
                key, _, value = line[1:].partition(":")
                if key.strip() == "num_images":
                    num_images = int(value)
                continue
            data_lines.append(line)
    rows = list(csv.DictReader(data_lines))
    assert num_images is not None, f"{filename} has no '# num_images:' line"
    return {
        "num_images": num_images,
        "names": [r["name"] for r in rows],
        "image_count": [int(r["image_count"]) for r in rows],
        "instance_count": [int(r["instance_count"]) for r in rows],
    }


_CACHE = {}


def counts(filename):
    if filename not in _CACHE:
        _CACHE[filename] = load_counts(filename)
    return _CACHE[filename]


def freq_and_total(filename, stat):
    """(f, K) for IIF (image counts, K = images) or IOF (instance counts, K = instances)."""
    c = counts(filename)
    if stat == "iif":
        return c["image_count"], c["num_images"]
    f = c["instance_count"]
    return f, sum(f)


def ref_weight(variant, f, k):
    """Independent plain-Python reference for one class."""
    p = f / k
    if variant == "raw":
        return math.log(k / f)
    if variant == "smooth":
        return math.log((k + 1) / (f + 1)) + 1
    if variant == "relative":
        return math.log((k - f) / f)
    if variant == "base2":
        return math.log2(k / f)
    if variant == "base10":
        return math.log10(k / f)
    if variant == "gombit":
        return -math.log(-math.log(1 - p))
    if variant == "normit":
        return -NormalDist().inv_cdf(p)
    raise AssertionError(f"no reference for {variant}")


# --------------------------------------------------------------------------- data files


@pytest.mark.parametrize("filename", sorted(DATASETS))
def test_counts_files_match_method_totals(filename):
    num_images, num_instances = DATASETS[filename]
    c = counts(filename)
    assert c["num_images"] == num_images
    assert sum(c["instance_count"]) == num_instances
    assert len(c["names"]) == len(c["image_count"]) == len(c["instance_count"])


# --------------------------------------------------------------------------- 1. vs reference


@pytest.mark.parametrize("stat", ["iif", "iof"])
@pytest.mark.parametrize("filename", sorted(DATASETS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_plain_python_reference(variant, filename, stat):
    f, k = freq_and_total(filename, stat)
    expected = [ref_weight(variant, fc, k) for fc in f]
    nonpositive = any(e <= 0 for e in expected)
    # Only COCO IIF relative/normit (person, p = 0.542) have weights <= 0.
    assert nonpositive == (
        filename == "coco_train2017.csv" and stat == "iif" and variant in ("relative", "normit")
    )
    w = iif_weights(f, k, variant, background=False, allow_nonpositive=nonpositive)
    assert w.dtype == torch.float32
    assert w.shape == (len(f),)
    assert w.tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("variant", ["relative", "normit", "prob"])
def test_coco_person_nonpositive_raises(variant):
    c = counts("coco_train2017.csv")
    assert c["names"][0] == "person"
    assert c["image_count"][0] / c["num_images"] == pytest.approx(0.542, abs=1e-3)
    with pytest.raises(ValueError, match=r"person") as excinfo:
        iif_weights(c["image_count"], c["num_images"], variant, class_names=c["names"])
    assert "ALLOW_NONPOSITIVE_WEIGHTS" in str(excinfo.value)
    assert "0 (person)" in str(excinfo.value)


# --------------------------------------------------------------------------- 2. sanity values


@pytest.mark.parametrize(
    ("variant", "stat", "expected"),
    [
        ("raw", "iif", 7.3557),
        ("smooth", "iif", 8.3402),
        ("base10", "iif", 3.1946),
        ("normit", "iif", 3.2209),
        ("base10", "iof", 4.0664),
    ],
)
def test_lvis_aerosol_can_sanity_values(variant, stat, expected):
    c = counts("lvis_v1_train.csv")
    assert c["names"][0] == "aerosol_can"
    assert (c["image_count"][0], c["instance_count"][0]) == (64, 109)
    f, k = freq_and_total("lvis_v1_train.csv", stat)
    w = iif_weights(f, k, variant)
    assert w[0].item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("variant", "stat", "lo", "hi"),
    [("raw", "iif", 3.93, 11.51), ("base10", "iof", 1.40, 6.10)],
)
def test_lvis_weight_ranges(variant, stat, lo, hi):
    f, k = freq_and_total("lvis_v1_train.csv", stat)
    w = iif_weights(f, k, variant, background=False)
    assert round(w.min().item(), 2) == lo
    assert round(w.max().item(), 2) == hi


# --------------------------------------------------------------------------- 3. background


@pytest.mark.parametrize("variant", VARIANTS)
def test_background_column(variant):
    f = [1, 10, 30]
    w = iif_weights(f, 100, variant)
    assert w.dtype == torch.float32
    assert w.shape == (4,)
    assert w[-1].item() == 1.0
    w_fg = iif_weights(f, 100, variant, background=False)
    assert w_fg.dtype == torch.float32
    assert w_fg.shape == (3,)
    assert torch.equal(w[:-1], w_fg)


# --------------------------------------------------------------------------- 4. by hand

# Phi^-1(0.01) and Phi^-1(0.1), standard normal quantiles.
_Z_001 = -2.3263478740408408
_Z_010 = -1.2815515655446004

HAND = {
    "raw": [math.log(100 / 1), math.log(100 / 10), math.log(100 / 50)],
    "smooth": [
        math.log(101 / 2) + 1,
        math.log(101 / 11) + 1,
        math.log(101 / 51) + 1,
    ],
    "relative": [math.log(99 / 1), math.log(90 / 10), 0.0],
    "base2": [math.log2(100), math.log2(10), 1.0],
    "base10": [2.0, 1.0, math.log10(2)],
    "gombit": [
        -math.log(-math.log(0.99)),
        -math.log(-math.log(0.9)),
        -math.log(math.log(2)),
    ],
    "normit": [-_Z_001, -_Z_010, 0.0],
}


def test_hand_table_covers_all_variants():
    assert set(HAND) == set(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_small_example_by_hand(variant):
    # p = 0.5 for the last class: relative and normit give exactly 0 there.
    allow = variant in ("relative", "normit")
    w = iif_weights([1, 10, 50], 100, variant, background=False, allow_nonpositive=allow)
    assert w.tolist() == pytest.approx(HAND[variant], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("variant", ["relative", "normit"])
def test_small_example_half_frequency_is_nonpositive(variant):
    with pytest.raises(ValueError, match=r"2 \(c50\).*ALLOW_NONPOSITIVE_WEIGHTS"):
        iif_weights([1, 10, 50], 100, variant, class_names=["c1", "c10", "c50"])


# --------------------------------------------------------------------------- 5. errors


def test_unknown_variant_lists_valid_ones():
    with pytest.raises(ValueError, match=r"'nope'.*smooth.*normit"):
        iif_weights([1, 2], 10, "nope")
    with pytest.raises(ValueError, match=r"raw.*relative.*base2.*base10.*gombit"):
        canonical_variant("nope")


def test_zero_count_raw_names_class_and_suggests_smooth():
    names = ["zero_cls", "b", "c"]
    with pytest.raises(ValueError, match=r"0 \(zero_cls\).*'smooth'"):
        iif_weights([0, 10, 50], 100, "raw", class_names=names)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "smooth"])
def test_zero_count_rejected_except_smooth(variant):
    with pytest.raises(ValueError, match="zero count"):
        iif_weights([0, 10], 100, variant)


def test_zero_count_smooth_is_finite():
    w = iif_weights([0, 10], 100, "smooth")
    assert torch.isfinite(w).all()
    assert w[0].item() == pytest.approx(math.log(101 / 1) + 1, rel=1e-6)


@pytest.mark.parametrize("bad", [-1, 101])
def test_count_out_of_range_raises(bad):
    with pytest.raises(ValueError, match=r"\[0, K=100\].*1 \(bad_cls\)"):
        iif_weights([5, bad], 100, "smooth", class_names=["ok", "bad_cls"])


def test_nonfinite_count_raises():
    with pytest.raises(ValueError, match=r"\[0, K=100\]"):
        iif_weights([5, float("nan")], 100, "smooth")


@pytest.mark.parametrize("empty", [[], torch.zeros(0)])
def test_empty_counts_raise(empty):
    with pytest.raises(ValueError, match="at least one class"):
        iif_weights(empty, 100, "raw")


@pytest.mark.parametrize("total", [0, -5, float("nan"), float("inf")])
def test_nonpositive_total_raises(total):
    with pytest.raises(ValueError, match="positive"):
        iif_weights([1, 2], total, "raw")


@pytest.mark.parametrize("variant", ["relative", "gombit", "normit"])
@pytest.mark.parametrize("allow", [False, True])
def test_count_equal_total_is_infinite_and_raises(variant, allow):
    """ln(0), -ln(-ln 0) and -Phi^-1(1) are infinite: refused even with allow_nonpositive."""
    with pytest.raises(ValueError, match="infinite"):
        iif_weights([10, 100], 100, variant, allow_nonpositive=allow)


def test_gombit_nonpositive_above_one_minus_inverse_e():
    assert iif_weights([63], 100, "gombit")[0] > 0
    with pytest.raises(ValueError, match="1 - 1/e"):
        iif_weights([64], 100, "gombit")


# --------------------------------------------------------------------------- 6. aliases


@pytest.mark.parametrize("alias", ["prob", "rel", "PROB", "Rel", " prob "])
def test_relative_aliases(alias):
    f = [1, 10, 30]
    assert torch.equal(iif_weights(f, 100, alias), iif_weights(f, 100, "relative"))


def test_alias_table():
    assert VARIANT_ALIASES["prob"] == "relative"
    assert VARIANT_ALIASES["rel"] == "relative"
    assert all(v in VARIANTS for v in VARIANT_ALIASES.values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_names_are_case_insensitive(variant):
    assert canonical_variant(variant.upper()) == variant
    assert canonical_variant(variant.capitalize()) == variant
    f = [1, 10, 30]
    assert torch.equal(iif_weights(f, 100, variant.upper()), iif_weights(f, 100, variant))


# --------------------------------------------------------------------------- 7. gombit ~ raw


def test_gombit_close_to_raw_for_small_p():
    f, k = [1], 10_000  # p = 1e-4
    gombit = iif_weights(f, k, "gombit", background=False).item()
    raw = iif_weights(f, k, "raw", background=False).item()
    assert abs(gombit - raw) < 1e-3


# --------------------------------------------------------------------------- 8. no detectron2

_NO_D2_SCRIPT = textwrap.dedent(
    """
    import sys

    sys.modules["detectron2"] = None  # any "import detectron2" now raises ImportError
    import iif_d2.weights

    w = iif_d2.weights.iif_weights([1, 10], 100, "raw")
    assert w.tolist()[-1] == 1.0, w
    loaded = [m for m in sys.modules if m.startswith("iif_d2.") and m != "iif_d2.weights"]
    assert not loaded, loaded
    print("ok")
    """
)


def test_weights_import_without_detectron2():
    proc = subprocess.run(
        [sys.executable, "-c", _NO_D2_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
