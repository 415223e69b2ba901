"""``iif_d2.lvis_eval.tide``: the TIDE-style error breakdown, one hand-made case per error type."""

import numpy as np
import pytest
from helpers import lvis_gt_dict

from iif_d2.bench.synthetic_lvis import make_dataset, to_results
from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth, lvis_api_evaluate
from iif_d2.lvis_eval.fp_analysis import tide_breakdown
from iif_d2.lvis_eval.tide import ERROR_TYPES, tide_errors

# (image_id, category_id, [x, y, w, h]); categories 1 "f", 2 "c", 3 "r"
A, B, C, D = [10, 10, 20, 20], [50, 50, 30, 30], [0, 0, 40, 40], [20, 20, 30, 30]
GT_BOXES = [(1, 1, A), (1, 2, B), (2, 1, C), (3, 3, D)]
NEG = {1: [3], 2: [2], 3: [], 4: [1]}  # image 4 has no object; class 1 is verified absent there


def lvis_gt(not_exhaustive=None):
    return lvis_gt_dict(GT_BOXES, NEG, not_exhaustive)


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def perfect(score=0.9, skip=()):
    return [det(i, c, b, score) for k, (i, c, b) in enumerate(GT_BOXES) if k not in skip]


def run(results, gt=None):
    gt = LVISGroundTruth.from_dict(gt or lvis_gt(), with_masks=False)
    return tide_errors(gt, LVISDetections.from_results(results, "bbox"))


def counts(**nonzero):
    return {t: nonzero.get(t, 0) for t in ERROR_TYPES}


def assert_only(out, etype, delta):
    """Only ``etype`` has a nonzero ΔAP50, equal to ``delta``."""
    for t in ERROR_TYPES:
        assert out["delta_ap50"][t] == pytest.approx(delta if t == etype else 0.0, abs=1e-9), t


def test_no_errors_all_zero():
    # a detection of class 2 in image 3 (neither present nor negative there) is not judged
    out = run([*perfect(), det(3, 2, [0, 0, 10, 10], 0.99)])
    assert out["counts"] == counts()
    assert out["delta_ap50"] == dict.fromkeys(ERROR_TYPES, 0.0)
    assert out["ap50"] == pytest.approx(100.0)
    assert (out["tp"], out["fp"], out["ignored"]) == (4, 0, 0)
    for group in "rcf":
        assert out["by_frequency"][group]["ap50"] == pytest.approx(100.0)
        assert set(out["by_frequency"][group]["delta_ap50"].values()) == {0.0}


def test_classification_error_against_a_box_of_another_class():
    # class 3 is verified absent in image 1 (negative); the detection sits on class 2's box B,
    # which no detection found: fixing relabels it a true positive of class 2
    out = run([*perfect(skip=[1]), det(1, 3, B, 0.95)])
    assert out["counts"] == counts(cls=1)
    # before: class 1 100, class 2 0 (B missed), class 3 50 (the FP outranks its only TP)
    assert out["ap50"] == pytest.approx(50.0)
    assert out["ap50_fixed"]["cls"] == pytest.approx(100.0)
    assert_only(out, "cls", 50.0)
    by_freq = out["by_frequency"]
    assert by_freq["c"]["delta_ap50"]["cls"] == pytest.approx(100.0)
    assert by_freq["r"]["delta_ap50"]["cls"] == pytest.approx(50.0)
    assert by_freq["f"]["delta_ap50"]["cls"] == 0.0


def test_classification_error_on_a_found_box_is_removed_by_its_fix():
    out = run([*perfect(), det(1, 3, B, 0.95)])
    assert out["counts"] == counts(cls=1)
    assert out["ap50"] == pytest.approx(250 / 3)
    assert_only(out, "cls", 50 / 3)


def test_localisation_error():
    # IoU with C: 40 * 16 / 1600 = 0.4; C is otherwise missed, so the fix makes it a TP
    out = run([*perfect(skip=[2]), det(2, 1, [0, 0, 40, 16], 0.95)])
    assert out["counts"] == counts(loc=1)  # C is the error's target: not missed
    # class 1: FP (0.95) then TP (0.9) of 2 boxes: precision 1/2 up to recall 1/2, 51 of 101
    assert out["ap50"] == pytest.approx((0.5 * 51 / 101 * 100 + 200) / 3)
    assert out["ap50_fixed"]["loc"] == pytest.approx(100.0)
    assert_only(out, "loc", 100 - out["ap50"])


def test_both_error():
    # class 3 (negative in image 1) on a box with IoU 30 * 12 / 900 = 0.4 with class 2's B
    out = run([*perfect(), det(1, 3, [50, 50, 30, 12], 0.95)])
    assert out["counts"] == counts(both=1)
    assert_only(out, "both", 100 - 250 / 3)


def test_duplicate_error():
    # class 1: TP 0.9 (image 2), duplicate 0.85 (IoU 0.906 with C), TP 0.5 (image 1):
    # precision 1 up to recall 1/2, then 2/3
    results = [*perfect(skip=[0]), det(1, 1, A, 0.5), det(2, 1, [1, 1, 40, 40], 0.85)]
    out = run(results)
    assert out["counts"] == counts(dupe=1)
    ap_class_1 = (51 + 50 * 2 / 3) / 101 * 100
    assert out["ap50"] == pytest.approx((ap_class_1 + 200) / 3)
    assert_only(out, "dupe", (100 - ap_class_1) / 3)


@pytest.mark.parametrize(
    "background",
    [det(1, 1, [70, 0, 20, 20], 0.95), det(4, 1, [10, 10, 20, 20], 0.95)],
    ids=["no-overlap", "image-without-objects"],
)
def test_background_error(background):
    out = run([*perfect(), background])
    assert out["counts"] == counts(bkg=1)
    # class 1: FP (0.95) above both TPs: precision 2/3 at every recall
    assert_only(out, "bkg", (100 - 200 / 3) / 3)


def test_missed_ground_truth():
    out = run(perfect(skip=[3]))  # nothing detects class 3
    assert out["counts"] == counts(miss=1)
    assert out["ap50"] == pytest.approx(200 / 3)
    assert out["ap50_fixed"]["miss"] == pytest.approx(100.0)  # class 3 leaves the mean
    assert_only(out, "miss", 100 / 3)
    assert out["by_frequency"]["r"]["ap50"] == 0.0
    assert out["by_frequency"]["r"]["delta_ap50"]["miss"] is None  # no rare gt left


def test_not_exhaustive_unmatched_is_ignored():
    out = run([*perfect(), det(1, 1, [70, 0, 20, 20], 0.95)], lvis_gt(not_exhaustive={1: [1]}))
    assert out["counts"] == counts() and out["ignored"] == 1
    assert out["delta_ap50"] == dict.fromkeys(ERROR_TYPES, 0.0)


def test_no_detections():
    out = run([])
    assert out["counts"] == counts(miss=4)
    assert out["ap50"] == 0.0 and (out["tp"], out["fp"]) == (0, 0)


def test_coco_ground_truth_through_fp_analysis():
    gt = lvis_gt()
    for img in gt["images"]:
        del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    for cat in gt["categories"]:
        del cat["frequency"]
    # COCO: every class is judged everywhere, so class 2 on class 3's box D is a cls error
    out = tide_breakdown(gt, [*perfect(), det(3, 2, D, 0.95)])
    assert out["counts"] == counts(cls=1) and out["max_dets"] == 100
    assert "by_frequency" not in out
    assert_only(out, "cls", 100 - 250 / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_case_consistent_with_lvis_api(seed):
    freqs = np.array(["r", "c", "f"])[np.random.default_rng(0).integers(0, 3, 20)]
    gt, dets = make_dataset(
        10, freqs, seed=seed, gt_per_image=4, dets_per_image=40, num_neg=4, with_masks=False
    )
    out = tide_errors(LVISGroundTruth.from_dict(gt, with_masks=False), dets)
    ref = lvis_api_evaluate(gt, to_results(dets, with_segm=False), "bbox")
    assert out["ap50"] == pytest.approx(100 * ref["AP50"], abs=1e-9)
    assert sum(out["counts"][t] for t in ERROR_TYPES[:5]) == out["fp"] > 0
    assert all(out["delta_ap50"][t] >= 0 for t in ERROR_TYPES)
    assert out["counts"]["miss"] > 0 and out["delta_ap50"]["miss"] > 0


def test_localisation_is_checked_before_classification():
    # a class-3 detection: IoU 0.25 with class 3's D, 0.82 with a class-2 box E in image 3
    gt = lvis_gt()
    e = [20, 35, 30, 30]
    gt["annotations"].append({"id": 9, "image_id": 3, "category_id": 2, "bbox": e, "area": 900})
    out = run([*perfect(), det(3, 2, e, 0.9), det(3, 3, [20, 38, 30, 30], 0.95)], gt)
    assert out["counts"] == counts(loc=1)
