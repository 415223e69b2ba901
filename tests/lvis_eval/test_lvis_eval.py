"""The fast LVIS evaluation against lvis-api (identical metrics), hand-computed cases, the CLI."""

import copy
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from helpers import ctrl_c_in

from iif_d2.bench.synthetic_lvis import make_dataset, to_results
from iif_d2.lvis_eval import LVISDetections, evaluate_results, lvis_api_evaluate
from iif_d2.lvis_eval.__main__ import main
from iif_d2.lvis_eval.fp_analysis import main as fp_main

FREQS = np.array(["r", "c", "f"])[np.random.default_rng(0).integers(0, 3, 30)]


def _case(seed):
    """A randomised LVIS-shaped case: ties, empty masks, images without detections or with
    more than 300, absent classes; some seeds add ignored or zero-area ground truth."""
    gt, dets = make_dataset(
        12,
        FREQS,
        seed=seed,
        gt_per_image=4,
        dets_per_image=lambda r: int(r.choice([0, 12, 40, 305], p=[0.15, 0.4, 0.35, 0.1])),
        num_neg=4,
        empty_mask_frac=0.05,
        score_decimals=2,
        image_sizes=(48, 160),
    )
    rng = np.random.default_rng(1000 + seed)
    for ann in gt["annotations"]:
        if seed % 3 == 1 and rng.random() < 0.15:
            ann["ignore"] = 1
        if seed % 3 == 2 and rng.random() < 0.1:
            ann["area"] = 0.0
    if seed % 4 == 3:  # lvis-api reads a ground-truth id 0 as "unmatched"
        gt["annotations"][0]["id"] = 0
    return gt, dets


@pytest.mark.parametrize("seed", range(20))
def test_identical_to_lvis_api(seed):
    gt, dets = _case(seed)
    for iou_type in ("bbox", "segm"):
        # lvis-api's rules, both variants by seed: segm results with a bbox use box areas;
        # bbox results without one use the masks' boxes and areas
        with_bbox = seed % 2 == 0 if iou_type == "segm" else seed % 5 != 4
        results = to_results(
            dets, with_bbox=with_bbox, with_segm=not with_bbox or iou_type == "segm"
        )
        ref = lvis_api_evaluate(gt, results, iou_type)
        fast = evaluate_results(gt, results, iou_type)
        assert fast.keys() == ref.keys()
        for key in ref:
            assert abs(fast[key] - ref[key]) <= 1e-12, (iou_type, key, fast[key], ref[key])
        assert ref["AP"] > 0  # a case that scores something


def _hand_gt(not_exhaustive=()):
    """One 100x100 image with one 40x40 object of class 1; class 2 is negative, 3 unknown."""
    poly = [[10.0, 10.0, 50.0, 10.0, 50.0, 50.0, 10.0, 50.0]]
    return {
        "images": [
            {
                "id": 7,
                "height": 100,
                "width": 100,
                "neg_category_ids": [2],
                "not_exhaustive_category_ids": list(not_exhaustive),
            }
        ],
        "categories": [{"id": k, "frequency": f} for k, f in ((1, "f"), (2, "c"), (3, "r"))],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "bbox": [10.0, 10.0, 40.0, 40.0],
                "area": 1600.0,
                "segmentation": poly,
            }
        ],
    }


def _det(cat, score, box):
    x, y, w, h = box
    rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], 100, 100)[0]
    rle["counts"] = rle["counts"].decode()
    return {"image_id": 7, "category_id": cat, "score": score, "bbox": box, "segmentation": rle}


@pytest.mark.parametrize("engine", ["fast", "lvis-api"])
def test_hand_computed(engine):
    hit, miss = [10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 30.0, 30.0]
    # a false positive above the true one: precision 1/2 at every recall -> AP 0.5; classes 2
    # (negative, no ground truth) and 3 (unknown to the image) have no AP of their own
    dets = [_det(1, 0.95, miss), _det(1, 0.9, hit), _det(2, 0.99, hit), _det(3, 0.99, hit)]
    res = evaluate_results(_hand_gt(), dets, "bbox", engine)
    assert res["AP"] == pytest.approx(0.5, abs=1e-12)
    assert res["APc"] == -1 and res["APr"] == -1
    # the 30x30 false positive is small, so ignored in the medium range, the object's
    assert res["APm"] == pytest.approx(1.0) and res["APs"] == -1
    # class 1 not exhaustively annotated: its unmatched detection is ignored
    res = evaluate_results(_hand_gt(not_exhaustive=[1]), dets, "bbox", engine)
    assert res["AP"] == pytest.approx(1.0, abs=1e-12)
    # 300 detections per image: the true one, 301st by score, is cut
    many = [_det(1, 0.5, miss) for _ in range(300)] + [_det(1, 0.4, hit)]
    assert evaluate_results(_hand_gt(), many, "bbox", engine)["AP"] == 0
    assert evaluate_results(_hand_gt(), many, "bbox", engine, max_dets=301)["AP"] > 0


@pytest.mark.parametrize("engine", ["fast", "lvis-api"])
def test_empty_masks_are_dropped(engine):
    # lvis-api drops a detection of area 0: an empty mask above the true one costs nothing
    empty = _det(1, 0.99, [60.0, 60.0, 30.0, 30.0])
    empty.pop("bbox")
    zero = mask_utils.encode(np.zeros((100, 100, 1), np.uint8, order="F"))[0]
    empty["segmentation"] = {"size": [100, 100], "counts": zero["counts"].decode()}
    hit = _det(1, 0.9, [10.0, 10.0, 40.0, 40.0])
    hit.pop("bbox")
    assert evaluate_results(_hand_gt(), [empty, hit], "segm", engine)["AP"] == pytest.approx(1.0)


def _write_case(tmp_path, iou_type="bbox"):
    gt, dets = _case(0)
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
    gt_file.write_text(json.dumps(gt))
    res_file.write_text(json.dumps(to_results(dets, with_segm=iou_type == "segm")))
    return gt, dets, str(gt_file), str(res_file)


def test_cli(tmp_path, capsys):
    gt, dets, gt_file, res_file = _write_case(tmp_path)
    out = tmp_path / "metrics.json"
    args = ["--gt", gt_file, "--results", res_file, "--iou-type", "bbox", "--json-out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    # percent, in detectron2's table (create_small_table: a pipe table, three decimals)
    assert "percent" in printed.splitlines()[0]
    assert "|   AP   |" in printed and "|:------:|" in printed
    assert f"| {metrics['AP']:.3f} |" in printed
    ref = lvis_api_evaluate(gt, to_results(dets, with_segm=False), "bbox")
    for key, value in ref.items():
        if value < 0:  # lvis-api's "undefined"
            assert metrics[key] is None
        else:
            assert metrics[key] == pytest.approx(100 * value, abs=1e-10)
    assert main(args[:-2] + ["--engine", "lvis-api"]) == 0
    assert main(args + ["--metric", "pooled"]) == 0
    assert 0 < json.loads(out.read_text())["AP-pool"] <= 100
    assert main(args[:-2] + ["--metric", "fixed", "--engine", "lvis-api"]) == 2


def test_cli_errors(tmp_path, capsys):
    _, _, gt_file, res_file = _write_case(tmp_path)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[{")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"image_id": 1, "score": 0.5}]))
    cases = [
        (["--gt", str(tmp_path / "nope.json"), "--results", res_file], "does not exist"),
        (["--gt", gt_file, "--results", str(bad_json)], "not valid json"),
        (["--gt", gt_file, "--results", str(wrong)], "category_id"),
        (["--gt", res_file, "--results", res_file], "json object"),
    ]
    for engine in ("fast", "lvis-api"):
        for args, message in cases:
            assert main(args + ["--iou-type", "bbox", "--engine", engine]) == 2
            err = capsys.readouterr().err.strip()
            assert message in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit):
        main(["--gt", gt_file, "--results", res_file, "--iou-type", "keypoints"])


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "iif_d2.lvis_eval", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--gt", "--results", "--iou-type", "--engine", "--json-out", "lvis-api"):
        assert option in out


def test_compact_keeps_the_numbers():
    from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth, evaluate, summarize
    from iif_d2.lvis_eval.engine import compact

    gt, dets = _case(5)
    g = LVISGroundTruth.from_dict(gt)
    small = compact(g, dets)
    assert len(small) < len(dets) and any(c is None for c in small.rle_counts)
    for iou_type in ("bbox", "segm"):
        full, part = dets, small
        if iou_type == "segm":
            full, part = (
                LVISDetections(d.image_id, d.category_id, d.score, d.mask_area, None,
                               d.rle_counts, d.rle_sizes)
                for d in (dets, small)
            )  # fmt: skip
        assert summarize(evaluate(g, part, iou_type)) == summarize(evaluate(g, full, iou_type))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_fixed_is_lvis_api_on_top_k_per_category(seed):
    from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth
    from iif_d2.lvis_eval.devil import ap_fixed

    gt, dets = _case(seed)
    results = to_results(dets, with_segm=False)
    by_cat = {}
    for r in results:  # each category's 15 best, no cap per image
        by_cat.setdefault(r["category_id"], []).append(r)
    top = [r for rs in by_cat.values() for r in sorted(rs, key=lambda r: -r["score"])[:15]]
    ref = lvis_api_evaluate(gt, top, "bbox", max_dets=-1)
    fast = ap_fixed(LVISGroundTruth.from_dict(gt), LVISDetections.from_results(results, "bbox"),
                    "bbox", dets_per_cat=15)  # fmt: skip
    assert fast.keys() == ref.keys()
    for key in ref:
        assert abs(fast[key] - ref[key]) <= 1e-12, key


@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_and_pooled_in_one_matching_equal_the_two_functions(seed):
    from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth
    from iif_d2.lvis_eval.devil import ap_fixed, ap_pooled, fixed_and_pooled

    gt, dets = _case(seed)
    g = LVISGroundTruth.from_dict(gt)
    d = LVISDetections.from_results(to_results(dets, with_segm=False), "bbox")
    for k in (5, 10000):  # the budget binding, and not
        fixed, pooled = fixed_and_pooled(g, d, "bbox", dets_per_cat=k)
        assert fixed == ap_fixed(g, d, "bbox", dets_per_cat=k)
        assert pooled == ap_pooled(g, d, "bbox", dets_per_cat=k)
    assert fixed_and_pooled(g, d, "bbox", dets_per_cat=5) != (fixed, pooled)


def _two_image_gt():
    img = {"height": 100, "width": 100, "neg_category_ids": [], "not_exhaustive_category_ids": []}
    box = [10.0, 10.0, 40.0, 40.0]
    return {
        "images": [dict(img, id=1), dict(img, id=2)],
        "categories": [{"id": 1, "frequency": "f"}, {"id": 2, "frequency": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 1600.0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": box, "area": 1600.0},
        ],
    }


def test_ap_pooled_by_hand():
    from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth
    from iif_d2.lvis_eval.devil import ap_fixed, ap_pooled

    hit, miss = [10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 30.0, 30.0]
    results = [
        {"image_id": 1, "category_id": 1, "score": 0.9, "bbox": hit},
        {"image_id": 2, "category_id": 2, "score": 0.8, "bbox": miss},
        {"image_id": 2, "category_id": 2, "score": 0.7, "bbox": hit},
    ]
    gt = LVISGroundTruth.from_dict(_two_image_gt(), with_masks=False)
    dets = LVISDetections.from_results(results, "bbox")
    # per category: AP 1 (class 1) and 1/2 (class 2, its false positive first)
    assert ap_fixed(gt, dets, "bbox")["AP"] == pytest.approx(0.75)
    # pooled ranking TP, FP, TP of 2 objects: precision 1 up to recall 1/2 (51 of the 101
    # recall points), then 2/3
    pooled = ap_pooled(gt, dets, "bbox")
    assert pooled["AP-pool"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert pooled["AP-pool-f"] == pytest.approx(1.0)
    assert pooled["AP-pool-c"] == pytest.approx(0.5)
    assert pooled["AP-pool-r"] == -1
    # ranking class 2's true positive above class 1's changes the pool, not per-class AP
    results[2]["score"] = 0.95
    dets = LVISDetections.from_results(results, "bbox")
    assert ap_fixed(gt, dets, "bbox")["AP"] == pytest.approx(1.0)
    assert ap_pooled(gt, dets, "bbox")["AP-pool"] == pytest.approx(1.0)
    # only the top detection per category: class 2 keeps its true positive alone
    assert ap_pooled(gt, dets, "bbox", dets_per_cat=1)["AP-pool-c"] == pytest.approx(1.0)


def test_no_surviving_detection_gives_zero_ap():
    """Only detections of a class neither present nor negative in their image: AP 0, no crash."""
    from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth, evaluate, summarize

    gt = {
        "images": [{"id": 1, "height": 20, "width": 20, "neg_category_ids": [],
                    "not_exhaustive_category_ids": []}],
        "categories": [{"id": 1, "name": "a", "frequency": "r"},
                       {"id": 2, "name": "b", "frequency": "f"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5],
                         "area": 25, "iscrowd": 0}],
    }  # fmt: skip
    truth = LVISGroundTruth.from_dict(gt, with_masks=False)
    dets = LVISDetections(
        np.array([1]), np.array([2]), np.array([0.9]), np.array([25.0]),
        bbox=np.array([[0.0, 0, 5, 5]]),
    )  # fmt: skip
    assert summarize(evaluate(truth, dets, "bbox"))["AP"] == 0


def test_category_budget_by_hand():
    """A running top 2 per category: ties go to the earlier detection, a prune drops what can
    no longer enter, and later keys below a category's cutoff are refused at once."""
    from iif_d2.lvis_eval.devil import CategoryBudget, budget_cutoffs

    cat = np.array([1, 1, 1, 2, 1])
    score = np.array([0.5, 0.9, 0.5, 0.1, 0.2], dtype=np.float32)
    order = np.arange(5)
    cut_cat, cut_score, cut_order = budget_cutoffs(cat, score, order, 2)
    assert cut_cat.tolist() == [1]  # category 2 has a single key: no cutoff
    assert (float(cut_score[0]), int(cut_order[0])) == (0.5, 0)  # 0.9, then the first 0.5
    budget = CategoryBudget(2, prune_at=3)
    assert budget.add(cat[:2], score[:2], order[:2]) is False
    assert budget.add(cat[2:], score[2:], order[2:]) is True  # 5 pending: pruned
    assert sorted(budget.keys()[2].tolist()) == [0, 1, 3]
    budget.add(np.array([1, 1]), np.array([0.4, 0.6], dtype=np.float32), np.array([5, 6]))
    budget.prune()
    assert sorted(budget.keys()[2].tolist()) == [1, 3, 6]  # 0.4 refused; 0.6 pushed out 0.5
    with pytest.raises(ValueError, match="dets_per_cat 0 must be > 0"):
        CategoryBudget(0)


@pytest.mark.parametrize("seed", [0, 1])
def test_category_budget_streams_the_top_per_category(seed):
    """Keys streamed in small chunks (many prunes) leave exactly top_per_category's set."""
    from iif_d2.lvis_eval import LVISDetections
    from iif_d2.lvis_eval.devil import CategoryBudget, top_per_category

    rng = np.random.default_rng(seed)
    n = 5000
    cat = rng.integers(1, 8, n)
    score = np.round(rng.random(n), 2).astype(np.float32)  # many ties
    expected = top_per_category(
        LVISDetections(np.zeros(n, np.int64), cat, score.astype(np.float64), np.ones(n)), 120
    )
    budget = CategoryBudget(120, prune_at=300)
    for s in range(0, n, 97):
        budget.add(cat[s : s + 97], score[s : s + 97], np.arange(s, min(s + 97, n)))
    budget.prune()
    assert np.array_equal(np.sort(budget.keys()[2]), expected)


def test_matches_of_image_subsets_accumulate_as_one():
    """Matching disjoint sets of images apart (as ranks do) and concatenating the matches
    (packed as sent between ranks) gives the same precision and recall as matching everything
    at once."""
    from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth, engine

    gt_dict, dets = _case(0)
    gt = LVISGroundTruth.from_dict(gt_dict)
    for task in ("bbox", "segm"):
        d = dets if task == "bbox" else LVISDetections(
            dets.image_id, dets.category_id, dets.score, dets.mask_area,
            rle_counts=dets.rle_counts, rle_sizes=dets.rle_sizes,
        )  # fmt: skip
        whole = engine.evaluate(gt, d, task)
        odd = d.image_id % 4 < 2
        parts = []
        nothing = np.zeros(0, dtype=np.int64)  # a rank whose images got no detection
        for sel in (np.flatnonzero(odd), nothing, np.flatnonzero(~odd)):
            sub = LVISDetections(d.image_id[sel], d.category_id[sel], d.score[sel], d.area[sel])
            sub.bbox = None if d.bbox is None else d.bbox[sel]
            if task == "segm":
                sub.rle_counts = [d.rle_counts[i] for i in sel]
                sub.rle_sizes = d.rle_sizes[sel]
            packed = engine.pack_matches(engine.match(gt, sub, task))  # as ranks send it
            parts.append(engine.unpack_matches(packed))
        split = engine.accumulate(gt, engine.concat_matches(parts))
        m = engine.match(gt, d, task)
        m["score"] = m["score"] + 1e-12  # float64 scores survive the packing as they are
        assert np.array_equal(engine.unpack_matches(engine.pack_matches(m))["score"], m["score"])
        assert np.array_equal(split["precision"], whole["precision"])
        assert np.array_equal(split["recall"], whole["recall"])


def _bad_case(tmp_path, results):
    gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
    gt_file.write_text(json.dumps(_hand_gt()))
    res_file.write_text(json.dumps(results).replace('"NaN"', "NaN").replace('"Inf"', "Infinity"))
    return str(gt_file), str(res_file)


def _corrupt(det, counts):
    det = dict(det, segmentation=dict(det["segmentation"], counts=counts))
    return det


_GOOD = [10.0, 10.0, 40.0, 40.0]
_BAD_RESULTS = {
    "nan score": ([_det(1, 0.9, _GOOD), _det(1, "NaN", _GOOD)], "bbox", "results[1]: score nan"),
    "inf score": ([_det(1, "Inf", _GOOD)], "bbox", "results[0]: score inf"),
    "negative score": ([_det(1, 0.9, _GOOD), _det(1, -0.1, _GOOD)], "bbox", "score -0.1"),
    "unknown category": ([_det(1, 0.9, _GOOD), _det(42, 0.5, _GOOD)], "bbox", "category_id 42"),
    "unknown image": ([dict(_det(1, 0.9, _GOOD), image_id=8)], "bbox", "image_id 8"),
    "corrupt rle": ([_det(1, 0.9, _GOOD), _corrupt(_det(1, 0.8, _GOOD), "zz~")], "segm", "[1]"),
    "rle too short": ([_corrupt(_det(1, 0.8, _GOOD), "0d0")], "segm", "not a valid RLE"),
    "rle of another size": (
        [dict(_det(1, 0.9, _GOOD), segmentation={"size": [50, 200], "counts": "0d0"})],
        "segm",
        "size [50, 200] is not image 7's size [100, 100]",
    ),
    "nan box": ([dict(_det(1, 0.9, _GOOD), bbox=[1.0, "NaN", 3.0, 4.0])], "bbox", "bbox"),
    "xyxy box": ([dict(_det(1, 0.9, _GOOD), bbox=[50.0, 50.0, 10.0, -10.0])], "bbox", "XYWH"),
    "string score": ([_det(1, "0.9", _GOOD)], "bbox", "score '0.9' is not a number"),
    # a bool is an int to Python and numpy: among integer ids it would be read as 1
    "bool image id": (
        [_det(1, 0.9, _GOOD), dict(_det(1, 0.8, _GOOD), image_id=True)],
        "bbox",
        "results[1]: image_id True is not an integer",
    ),
    "bool category id": (
        [_det(1, 0.9, _GOOD), _det(True, 0.8, _GOOD)],
        "bbox",
        "results[1]: category_id True is not an integer",
    ),
    "overflowing box": ([dict(_det(1, 0.9, _GOOD), bbox=[1e308] * 4)], "bbox", "overflows: its"),
}


@pytest.mark.parametrize("case", sorted(_BAD_RESULTS))
@pytest.mark.parametrize("engine", ["fast", "lvis-api"])
def test_cli_refuses_bad_results(tmp_path, capsys, case, engine):
    results, iou_type, message = _BAD_RESULTS[case]
    gt_file, res_file = _bad_case(tmp_path, results)
    args = ["--gt", gt_file, "--results", res_file, "--iou-type", iou_type, "--engine", engine]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1, err
    assert message in err and "Traceback" not in err, err
    # the same check for a parsed list
    with pytest.raises(ValueError, match="results\\["):
        evaluate_results(_hand_gt(), json.loads(open(res_file).read()), iou_type)


@pytest.mark.parametrize("engine", ["fast", "lvis-api"])
def test_cli_refuses_overflowing_box_without_a_warning(tmp_path, capsys, engine):
    gt_file, res_file = _bad_case(tmp_path, [dict(_det(1, 0.9, _GOOD), bbox=[1e308] * 4)])
    args = ["--gt", gt_file, "--results", res_file, "--iou-type", "bbox", "--engine", engine]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow RuntimeWarning would fail here
        assert main(args) == 2
    assert "bbox [1e+308, 1e+308, 1e+308, 1e+308] overflows: its x + w" in capsys.readouterr().err


def _bad_gt(gt):
    # an odd number of polygon coordinates (pycocotools reads it silently, AP 100)
    odd = copy.deepcopy(gt)
    odd["annotations"][0]["segmentation"] = [gt["annotations"][0]["segmentation"][0][:-1]]
    lost = copy.deepcopy(gt)
    lost["annotations"][0]["image_id"] = 424242
    return {
        "odd polygon": (odd, "segm", "annotation id 1: segmentation[0] (7 numbers) is not a "),
        "unknown image": (
            lost,
            "bbox",
            "annotation id 1 refers to image_id 424242, which is not among the json's images",
        ),
        "no images": (
            dict(gt, images=[]),
            "bbox",
            "annotation id 1 refers to image_id 7, which is not among the json's images",
        ),
        "overflowing box": (
            dict(gt, annotations=[dict(gt["annotations"][0], bbox=[1e308] * 4)]),
            "bbox",
            "annotation id 1: bbox [1e+308, 1e+308, 1e+308, 1e+308] overflows: its x + w",
        ),
        "bool category": (
            dict(gt, annotations=[dict(gt["annotations"][0], category_id=True)]),
            "bbox",
            "category_id True is not an integer",
        ),
    }


@pytest.mark.parametrize(
    "case", ["odd polygon", "unknown image", "no images", "overflowing box", "bool category"]
)
@pytest.mark.parametrize("engine", ["fast", "lvis-api"])
def test_cli_refuses_bad_ground_truth(tmp_path, capsys, case, engine):
    gt, iou_type, message = _bad_gt(_hand_gt())[case]
    gt_file, res_file = _bad_case(tmp_path, [_det(1, 0.9, _GOOD)])
    with open(gt_file, "w") as f:
        json.dump(gt, f)
    args = ["--gt", gt_file, "--results", res_file, "--iou-type", iou_type, "--engine", engine]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1 and message in err, err


def test_cli_reads_files_with_a_byte_order_mark(tmp_path, capsys):
    gt_file, res_file = _bad_case(tmp_path, [_det(1, 0.9, _GOOD), _det(1, 0.5, [0, 0, 9, 9])])
    for name in (gt_file, res_file):  # as Windows tools write UTF-8: BOM first
        text = open(name).read()
        with open(name, "w", encoding="utf-8-sig") as f:
            f.write(text)
    for engine in ("fast", "lvis-api"):
        args = ["--gt", gt_file, "--results", res_file, "--iou-type", "bbox", "--engine", engine]
        assert main([*args, "--json-out", str(tmp_path / "m.json")]) == 0, capsys.readouterr()
        assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(100)


@pytest.mark.parametrize(
    "option, other",
    [(["--dets-per-cat", "5"], []), (["--max-dets", "5"], ["--metric", "fixed"])],
)
def test_cli_refuses_a_count_the_metric_ignores(tmp_path, capsys, option, other):
    gt_file, res_file = _bad_case(tmp_path, [_det(1, 0.9, _GOOD)])
    args = ["--gt", gt_file, "--results", res_file, "--iou-type", "bbox", *other]
    with pytest.raises(SystemExit) as exit_:
        main(args + option)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert f"{option[0]} applies only with --metric" in err, err
    assert main(args) == 0  # without it


@pytest.mark.parametrize("command", ["lvis_eval", "fp_analysis"])
def test_cli_ctrl_c_prints_one_line(tmp_path, capsys, command):
    """Ctrl-C while the ground truth is read: "interrupted", exit status 130, no traceback."""
    gt_file, res_file = _bad_case(tmp_path, [_det(1, 0.9, _GOOD)])
    args = ["--gt", gt_file, "--results", res_file]
    run = main if command == "lvis_eval" else fp_main
    args += ["--iou-type", "bbox"] if command == "lvis_eval" else []
    with ctrl_c_in("from_dict"):
        assert run(args) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert run(args) == 0  # the same command, not interrupted


@pytest.mark.parametrize(
    "option", [["--max-dets", "0"], ["--max-dets", "-5"], ["--dets-per-cat", "0"]]
)
def test_cli_refuses_non_positive_counts(tmp_path, option):
    _, _, gt_file, res_file = _write_case(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "iif_d2.lvis_eval", "--gt", gt_file, "--results", res_file]
        + ["--iou-type", "bbox", *option],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "must be >= 1" in r.stderr, r.stderr


def test_cli_json_out_never_overwrites_an_input(tmp_path, capsys):
    _, _, gt_file, res_file = _write_case(tmp_path)
    link = tmp_path / "link.json"
    link.symlink_to(res_file)
    before = {f: open(f).read() for f in (gt_file, res_file)}
    for out in (res_file, gt_file, str(link), os.path.join(tmp_path, ".", "res.json")):
        args = ["--gt", gt_file, "--results", res_file, "--iou-type", "bbox", "--json-out", out]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "is the input file" in err and len(err.splitlines()) == 1, err
    hard = tmp_path / "hard.json"
    os.link(res_file, hard)
    args = ["--gt", gt_file, "--results", str(hard), "--iou-type", "bbox", "--json-out", res_file]
    assert main(args) == 2
    assert {f: open(f).read() for f in (gt_file, res_file)} == before
    args[-1] = str(tmp_path)
    assert main(args) == 2 and "is a directory" in capsys.readouterr().err
    # a name ending in '/': writing it would fail after the evaluation
    for out, message in [
        (f"{tmp_path}/new/", f"ends in '/': give a file name; folder {tmp_path}/new does not"),
        (f"{res_file}/", f"ends in '/': give a file name ({res_file}, no '/')"),
    ]:
        args[-1] = out
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert f"--json-out {out} {message}" in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "new")


@pytest.mark.parametrize("reader", ["ijson", "json"])
def test_streamed_results_equal_the_parsed_list(tmp_path, monkeypatch, reader):
    """Both incremental readers (ijson's C parser; the standard library's scanner, forced to
    refill its buffer mid-object, mid-number and between elements) give the arrays of the
    whole-file parse, and the same one-line errors."""
    from iif_d2.lvis_eval import data

    if reader == "json":
        monkeypatch.setattr(data, "_fast_json_objects", lambda path: None)
    else:
        import ijson

        assert ijson.backend == "yajl2_c"  # the C parser is what the reader is measured with
    gt, dets = _case(0)
    results = to_results(dets)
    path = tmp_path / "res.json"
    # pretty-printed, so that whitespace and separators straddle the buffer's edges too
    path.write_text(" \n" + json.dumps(results, indent=1) + "\n ")
    want = LVISDetections.from_results(results, "segm")
    for size in (7, 64, 1000):
        monkeypatch.setattr(data, "_READ_BYTES", size)
        monkeypatch.setattr(data, "CHUNK", 13)
        got = data.read_results(str(path), "segm")
        for key in ("image_id", "category_id", "score", "area", "bbox", "rle_sizes"):
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key))
        assert got.rle_counts == want.rle_counts
    for text, message in (
        ("[", "ends early"),
        ("[{}, ]", "before ']'"),
        ("[1 2]", "expecting ','"),
        ("[] x", "extra data"),
        ("", "empty"),
        ("{}", "json list"),
        ('[{"image_id": 1, "category_id": 1, "score": NaN, "bbox": [1, 2, 3, 4]}]', "score nan"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            data.read_results(str(path), "bbox")


def test_rle_runs_match_pycocotools():
    from iif_d2.lvis_eval.data import rle_runs

    rng = np.random.default_rng(0)
    masks = (rng.random((37, 41, 60)) < rng.random(60)).astype(np.uint8)
    masks[:, :, 0] = 0
    masks[:, :, 1] = 1
    big = mask_utils.encode(np.asfortranarray(np.ones((3000, 2000, 1), np.uint8)))
    rles = mask_utils.encode(np.asfortranarray(masks)) + big
    total, area, bad = rle_runs([r["counts"] for r in rles])
    assert not bad.any()
    np.testing.assert_array_equal(area, mask_utils.area(rles))
    np.testing.assert_array_equal(total, [37 * 41] * 60 + [3000 * 2000])
    _, _, bad = rle_runs([b"zz", b"0d", b"0o", b"a", b"\x80", b"", b"0d0"])
    assert bad.tolist() == [True, True, True, True, True, False, False]


def test_cli_segm_equals_lvis_api(tmp_path):
    """The command keeps only the masks that can meet an IoU (their class present in their
    image) and still gives lvis-api's numbers, with and without boxes in the results."""
    gt, dets = _case(1)
    for with_bbox in (True, False):
        results = to_results(dets, with_bbox=with_bbox)
        gt_file, res_file = tmp_path / "gt.json", tmp_path / "res.json"
        gt_file.write_text(json.dumps(gt))
        res_file.write_text(json.dumps(results))
        out = tmp_path / "m.json"
        args = ["--gt", str(gt_file), "--results", str(res_file), "--json-out", str(out)]
        assert main(args + ["--iou-type", "segm"]) == 0
        ref = lvis_api_evaluate(gt, results, "segm")
        got = json.loads(out.read_text())
        assert ref["AP"] > 0
        for key, value in ref.items():
            assert got[key] == (None if value < 0 else pytest.approx(100 * value, abs=1e-10))


def test_the_depth_limit_reads_strings_cut_anywhere():
    """The results reader's depth limit: brackets, quotes and backslashes inside strings are
    text, also where a read cuts a string (reads of 1 to 13 bytes); the file reads as the
    standard library reads it, and one nested deeper than the limit is refused."""
    import io

    import ijson

    from iif_d2.lvis_eval.data import MAX_JSON_DEPTH, _DepthLimited

    tricky = ['[[{{"', "a\\", '\\"]', "\\\\", "\\\\\\", "[" * 40, "}" * 40, ""]
    dets = [{"image_id": i, "score": 0.5, "segmentation": {"size": [4, 4], "counts": t}}
            for i, t in enumerate(tricky * 3)]  # fmt: skip
    data = json.dumps(dets).encode()
    for size in (1, 2, 3, 5, 7, 13):
        reader = _DepthLimited(io.BytesIO(data), "r.json", "results")
        items = list(ijson.items(reader, "item", use_float=True, buf_size=size))
        assert items == json.loads(data) and reader.depth == 0 and not reader.in_string
    deep = ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)).encode()
    with pytest.raises(ValueError, match=f"more than {MAX_JSON_DEPTH} levels deep"):
        list(ijson.items(_DepthLimited(io.BytesIO(deep), "r.json", "results"), "item"))
