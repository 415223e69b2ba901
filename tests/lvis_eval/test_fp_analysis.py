"""``iif_d2.lvis_eval.fp_analysis``: one-to-one false positives per image and TIDE's dAP_FP,
by hand."""

import copy
import json
import os
import subprocess
import sys

import pytest
from helpers import lvis_gt_dict

from iif_d2.lvis_eval.fp_analysis import (
    DEFAULT_SCORE_THRESH,
    box_ap50,
    delta_ap_fp,
    false_positives_per_image,
    is_lvis_format,
    main,
)

# (image_id, category_id, [x, y, w, h]) of the ground-truth boxes
GT_BOXES = [
    (1, 1, [10, 10, 20, 20]),
    (1, 2, [50, 50, 30, 30]),
    (2, 1, [0, 0, 40, 40]),
    (3, 3, [20, 20, 30, 30]),
]
NEG = {1: [3], 2: [2], 3: []}  # LVIS: verified absent per image


def lvis_gt(not_exhaustive=None):
    return lvis_gt_dict(GT_BOXES, NEG, not_exhaustive)


def coco_gt(extra_annotations=()):
    gt = lvis_gt()
    for img in gt["images"]:
        del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    for cat in gt["categories"]:
        del cat["frequency"]
    for ann in gt["annotations"]:
        ann["iscrowd"] = 0
    gt["annotations"] += list(extra_annotations)
    return gt


GTS = {"lvis": lvis_gt, "coco": coco_gt}


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def perfect():
    return [det(i, c, b, 0.9) for i, c, b in GT_BOXES]


AP_KEYS = ("ap50", "ap50_without_fp", "delta_ap_fp", "removed")


def core(tide):
    """The overall numbers of a :func:`delta_ap_fp` result."""
    return {k: tide[k] for k in AP_KEYS}


@pytest.mark.parametrize("fmt", GTS)
def test_perfect_detections(fmt):
    gt = GTS[fmt]()
    assert is_lvis_format(gt) == (fmt == "lvis")
    fp = false_positives_per_image(gt, perfect())
    assert (fp["fp"], fp["tp"], fp["detections"], fp["images"]) == (0, 4, 4, 3)
    assert fp["fp_per_image"] == 0.0
    assert core(delta_ap_fp(gt, perfect())) == {
        "ap50": 100.0,
        "ap50_without_fp": 100.0,
        "delta_ap_fp": 0.0,
        "removed": 0,
    }


@pytest.mark.parametrize("fmt", GTS)
def test_background_detection_of_present_class(fmt):
    # ranked below every true positive of class 1: a false positive, but AP50 stays 100
    results = [*perfect(), det(1, 1, [70, 0, 20, 20], 0.3)]
    fp = false_positives_per_image(GTS[fmt](), results)
    assert (fp["fp"], fp["tp"], fp["detections"]) == (1, 4, 5)
    assert fp["fp_per_image"] == pytest.approx(1 / 3)
    tide = delta_ap_fp(GTS[fmt](), results)
    assert (tide["ap50"], tide["ap50_without_fp"], tide["removed"]) == (100.0, 100.0, 1)


def test_non_evaluable_class_is_left_out_for_lvis_only():
    # class 2 is neither present in image 3 nor in its neg_category_ids
    results = [*perfect(), det(3, 2, [60, 60, 20, 20], 0.95)]
    fp = false_positives_per_image(lvis_gt(), results)
    assert (fp["fp"], fp["not_evaluable"], fp["detections"]) == (0, 1, 5)
    assert delta_ap_fp(lvis_gt(), results)["removed"] == 0
    assert box_ap50(lvis_gt(), results) == 100.0

    fp = false_positives_per_image(coco_gt(), results)
    assert (fp["fp"], fp["not_evaluable"], fp["fp_per_image"]) == (1, 0, pytest.approx(1 / 3))
    # class 2: the FP outranks its only TP, precision 1/2 at every recall -> AP50 (100+50+100)/3
    tide = delta_ap_fp(coco_gt(), results)
    assert tide["ap50"] == pytest.approx(250 / 3)
    assert tide["ap50_without_fp"] == pytest.approx(100.0)
    assert tide["delta_ap_fp"] == pytest.approx(50 / 3)
    assert tide["removed"] == 1


@pytest.mark.parametrize("fmt", GTS)
def test_high_scoring_background_fp_lowers_ap50(fmt):
    # class 3 is listed negative in image 1 (LVIS): the FP outranks class 3's only TP
    results = [*perfect(), det(1, 3, [70, 70, 20, 20], 0.95)]
    fp = false_positives_per_image(GTS[fmt](), results)
    assert (fp["fp"], fp["tp"], fp["not_evaluable"]) == (1, 4, 0)
    tide = delta_ap_fp(GTS[fmt](), results)
    assert tide["ap50"] == pytest.approx(250 / 3)
    assert tide["ap50_without_fp"] == pytest.approx(100.0)
    assert tide["delta_ap_fp"] == pytest.approx(50 / 3) and tide["delta_ap_fp"] > 0
    assert tide["removed"] == 1


@pytest.mark.parametrize("fmt", GTS)
def test_duplicate_is_fp_one_to_one_but_not_removed(fmt):
    # IoU with the image-2 box: 39*39 / (1600 + 1600 - 1521) = 0.906
    results = [*perfect(), det(2, 1, [1, 1, 40, 40], 0.8)]
    fp = false_positives_per_image(GTS[fmt](), results)
    assert (fp["fp"], fp["tp"], fp["fp_per_image"]) == (1, 4, pytest.approx(1 / 3))
    assert core(delta_ap_fp(GTS[fmt](), results)) == {
        "ap50": 100.0,
        "ap50_without_fp": 100.0,
        "delta_ap_fp": 0.0,
        "removed": 0,
    }


def test_greedy_matching_by_score_not_list_order():
    # image 2 gets a second class-1 box; the 0.6 detection overlaps both (IoU 0.667 and 0.538),
    # the 0.4 one only the first (IoU 1 and 0.333). By score: 0.6 takes the first box, and 0.4 is
    # left unmatched. In list order both would have matched.
    second = {"id": 99, "image_id": 2, "category_id": 1, "bbox": [20, 0, 40, 40], "iscrowd": 0}
    results = [det(2, 1, [0, 0, 40, 40], 0.4), det(2, 1, [8, 0, 40, 40], 0.6)]
    fp = false_positives_per_image(coco_gt([second]), results)
    assert (fp["fp"], fp["tp"], fp["detections"]) == (1, 1, 2)
    fp = false_positives_per_image(coco_gt([second]), results, score_thresh=0.5)
    assert (fp["fp"], fp["tp"], fp["detections"]) == (0, 1, 1)
    # not one-to-one: both overlap a box of their class, so neither is removed
    assert delta_ap_fp(coco_gt([second]), results)["removed"] == 0


def test_not_exhaustive_class_unmatched_is_ignored():
    results = [*perfect(), det(1, 1, [70, 0, 20, 20], 0.95)]
    gt = lvis_gt(not_exhaustive={1: [1]})
    fp = false_positives_per_image(gt, results)
    assert (fp["fp"], fp["ignored"], fp["tp"], fp["detections"]) == (0, 1, 4, 5)
    # LVISEval does not penalise it either
    assert box_ap50(gt, results) == 100.0


def test_crowd_overlap_is_ignored_coco():
    crowd = {"id": 99, "image_id": 3, "category_id": 3, "bbox": [60, 60, 30, 30], "iscrowd": 1}
    results = [*perfect(), det(3, 3, [62, 62, 25, 25], 0.95)]
    fp = false_positives_per_image(coco_gt([crowd]), results)
    assert (fp["fp"], fp["ignored"], fp["tp"]) == (0, 1, 4)
    tide = delta_ap_fp(coco_gt([crowd]), results)
    assert (tide["ap50"], tide["removed"]) == (100.0, 0)


def test_score_threshold():
    # the default is the README's FP/img threshold (dev/benchmark_synthlt.py --score-thresh)
    assert DEFAULT_SCORE_THRESH == 0.3
    results = [*perfect(), det(1, 1, [70, 0, 20, 20], 0.29)]
    fp = false_positives_per_image(lvis_gt(), results)
    assert (fp["fp"], fp["detections"], fp["score_thresh"]) == (0, 4, 0.3)
    fp = false_positives_per_image(lvis_gt(), results, score_thresh=0.0)
    assert (fp["fp"], fp["detections"]) == (1, 5)
    fp = false_positives_per_image(lvis_gt(), results, score_thresh=0.95)
    assert (fp["fp"], fp["tp"], fp["detections"]) == (0, 0, 0)


@pytest.mark.parametrize("fmt", GTS)
def test_empty_results(fmt):
    fp = false_positives_per_image(GTS[fmt](), [])
    assert (fp["fp"], fp["tp"], fp["detections"], fp["fp_per_image"]) == (0, 0, 0, 0.0)
    assert core(delta_ap_fp(GTS[fmt](), [])) == {
        "ap50": 0.0,
        "ap50_without_fp": 0.0,
        "delta_ap_fp": 0.0,
        "removed": 0,
    }


def test_all_detections_removed():
    results = [det(1, 1, [70, 0, 20, 20], 0.9)]
    assert core(delta_ap_fp(lvis_gt(), results)) == {
        "ap50": 0.0,
        "ap50_without_fp": 0.0,
        "delta_ap_fp": 0.0,
        "removed": 1,
    }


def test_inputs_are_not_modified():
    gt, results = lvis_gt(), [*perfect(), det(1, 3, [70, 70, 20, 20], 0.95)]
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    false_positives_per_image(gt, results)
    delta_ap_fp(gt, results)
    assert gt == gt_before and results == results_before


@pytest.mark.parametrize(
    "results, message",
    [
        ({"image_id": 1}, "json list"),
        ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}], "keys"),
        ([det(1, 1, [0, 0, 1], 0.5)], "bbox"),
        ([det(7, 1, [0, 0, 1, 1], 0.5)], "image_id 7"),
        ([det(1, 9, [0, 0, 1, 1], 0.5)], "category_id 9"),
        # bools are ints to Python: True would be image or category 1
        (
            [det(2, 1, [0, 0, 1, 1], 0.5), det(True, 1, [0, 0, 1, 1], 0.5)],
            r"results\[1\]: image_id",
        ),
        ([det(1, True, [0, 0, 1, 1], 0.5)], "category_id True is not an integer"),
        ([det(1, 1, [1e308] * 4, 0.5)], r"overflows: its x \+ w, y \+ h or area w \* h"),
    ],
)
def test_malformed_results(results, message):
    with pytest.raises(ValueError, match=message):
        false_positives_per_image(lvis_gt(), results)


@pytest.mark.parametrize("fmt", GTS)
def test_annotation_of_an_unknown_image_is_named(fmt):
    gt = GTS[fmt]()
    gt["annotations"][0]["image_id"] = 424242
    with pytest.raises(ValueError, match="annotation 1 refers to image_id 424242, which is not "):
        false_positives_per_image(gt, perfect()[1:])
    gt["annotations"][0]["image_id"] = True
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 1\): image_id True is not an "):
        false_positives_per_image(gt, perfect()[1:])


def test_mixed_gt_format_rejected():
    gt = lvis_gt()
    del gt["images"][0]["neg_category_ids"]
    with pytest.raises(ValueError, match="neg_category_ids"):
        delta_ap_fp(gt, perfect())


def _tables(text: str) -> list:
    """The pipe tables (detectron2's create_small_table format) printed in ``text``, each as
    a list of rows (dicts of header to cell text)."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|:"):
            headers = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(headers, (c.strip() for c in row.strip("|").split("|")))))
            tables.append(rows)
    return tables


def _write(tmp_path, gt, results):
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    return str(gt_path), str(results_path)


def test_cli_prints_and_saves(tmp_path, capsys):
    results = [*perfect(), det(1, 3, [70, 70, 20, 20], 0.95)]
    gt_path, results_path = _write(tmp_path, lvis_gt(), results)
    out = tmp_path / "fp.json"
    assert main(["--gt", gt_path, "--results", results_path, "--json-out", str(out)]) == 0
    out_text = capsys.readouterr().out
    assert "LVIS format, 3 images" in out_text.splitlines()[0]
    fp, dap = _tables(out_text)[:2]
    counts = {"fp": "1", "tp": "4", "ignored": "0", "not_evaluable": "0", "detections": "5"}
    assert fp == [{"fp_per_image": "0.333", **counts}]
    assert dap[0] == {"ap50": "83.333", "ap50_without_fp": "100.000", "delta_ap_fp": "16.667"} | {
        "removed": "1"
    }
    saved = json.loads(out.read_text())
    assert saved["false_positives"]["fp"] == 1 and saved["delta_ap_fp"]["removed"] == 1


def test_cli_score_thresh(tmp_path, capsys):
    gt_path, results_path = _write(tmp_path, coco_gt(), [det(1, 1, [70, 0, 20, 20], 0.2)])
    assert main(["--gt", gt_path, "--results", results_path, "--score-thresh", "0.5"]) == 0
    out_text = capsys.readouterr().out
    fp, dap = _tables(out_text)[:2]
    assert "COCO format" in out_text.splitlines()[0]
    assert fp[0]["fp"] == "0" and dap[0]["removed"] == "1"


def test_cli_missing_file_and_malformed_results(tmp_path, capsys):
    gt_path, results_path = _write(tmp_path, lvis_gt(), {"not": "a list"})
    assert main(["--gt", gt_path, "--results", str(tmp_path / "none.json")]) == 2
    assert "results file not found" in capsys.readouterr().err
    assert main(["--gt", gt_path, "--results", results_path]) == 2
    assert "json list" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["--gt", str(tmp_path / "bad.json"), "--results", results_path]) == 2
    assert "not valid json" in capsys.readouterr().err


def test_boundary_scores_and_boxes_are_accepted():
    """Scores 0 and 1, integers, and zero-width boxes are valid detections."""
    results = [det(1, 1, [10, 10, 20, 20], 1), det(1, 2, [50, 50, 0, 30], 0.0)]
    fp = false_positives_per_image(lvis_gt(), results, score_thresh=0.0)
    assert fp["detections"] == 2 and fp["tp"] == 1 and fp["fp"] == 1


def test_cli_as_a_command_exits_2_with_one_line(tmp_path):
    gt_path, results_path = _write(tmp_path, lvis_gt(), [det(1, 1, [0, 0, 1, 1], 2.0)])
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "iif_d2.lvis_eval.fp_analysis",
            "--gt",
            gt_path,
            "--results",
            results_path,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: results[0]: score 2.0 must be a finite number in [0, 1]"
    ]


def test_failed_json_out_keeps_the_previous_file(tmp_path, capsys):
    gt_path, results_path = _write(tmp_path, lvis_gt(), [det(1, 1, [0, 0, 1, 1], -1)])
    out = tmp_path / "fp.json"
    out.write_text("previous")
    assert main(["--gt", gt_path, "--results", results_path, "--json-out", str(out)]) == 2
    assert out.read_text() == "previous" and capsys.readouterr().out == ""


def test_by_frequency_groups():
    # class 3 ("r") is negative in image 1: a high-scoring FP outranks its only TP; class 1 ("f")
    # gets a low-scoring background FP; class 2 ("c") is perfect
    results = [*perfect(), det(1, 3, [70, 70, 20, 20], 0.95), det(1, 1, [70, 0, 20, 20], 0.5)]
    fp = false_positives_per_image(lvis_gt(), results)
    groups = fp["by_frequency"]
    assert {g: (groups[g]["fp"], groups[g]["tp"]) for g in "rcf"} == {
        "r": (1, 1),
        "c": (0, 1),
        "f": (1, 2),
    }
    assert groups["r"]["fp_per_image"] == pytest.approx(1 / 3) and groups["c"]["categories"] == 1
    assert sum(groups[g]["fp"] for g in "rcf") == fp["fp"] == 2
    tide = delta_ap_fp(lvis_gt(), results)
    assert tide["ap50"] == pytest.approx(250 / 3) and tide["removed"] == 2
    by_freq = tide["by_frequency"]
    assert by_freq["r"]["ap50"] == pytest.approx(50.0)
    assert by_freq["r"]["delta_ap_fp"] == pytest.approx(50.0) and by_freq["r"]["removed"] == 1
    assert by_freq["f"]["ap50"] == pytest.approx(100.0) and by_freq["f"]["removed"] == 1
    assert by_freq["c"]["delta_ap_fp"] == pytest.approx(0.0) and by_freq["c"]["removed"] == 0


def test_by_frequency_absent_for_coco_and_without_frequencies(caplog):
    assert "by_frequency" not in false_positives_per_image(coco_gt(), perfect())
    assert "by_frequency" not in delta_ap_fp(coco_gt(), perfect())
    gt = lvis_gt()
    del gt["categories"][0]["frequency"]
    assert "by_frequency" not in false_positives_per_image(gt, perfect())
    assert "frequency" in caplog.text
    assert delta_ap_fp(gt, perfect())["ap50"] == 100.0


def test_group_without_ground_truth_is_undefined():
    gt = lvis_gt()
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 3]
    by_freq = delta_ap_fp(gt, perfect()[:3])["by_frequency"]
    assert by_freq["r"] == {
        "ap50": None,
        "ap50_without_fp": None,
        "delta_ap_fp": None,
        "removed": 0,
    }
    assert by_freq["f"]["ap50"] == pytest.approx(100.0)


@pytest.mark.parametrize("seed", [0, 3])
def test_ap50_equals_lvis_api(seed):
    import numpy as np

    from iif_d2.bench.synthetic_lvis import make_dataset, to_results
    from iif_d2.lvis_eval import lvis_api_evaluate

    freqs = np.array(["r", "c", "f"])[np.random.default_rng(1).integers(0, 3, 20)]
    gt, dets = make_dataset(
        8, freqs, seed=seed, gt_per_image=4, dets_per_image=30, with_masks=False
    )
    results = [{**r, "score": round(r["score"], 3)} for r in to_results(dets, with_segm=False)]
    ref = lvis_api_evaluate(gt, results, "bbox")
    assert box_ap50(gt, results) == pytest.approx(100 * ref["AP50"], abs=1e-9)
    tide = delta_ap_fp(gt, results)
    assert tide["ap50"] == pytest.approx(100 * ref["AP50"], abs=1e-9)
    assert tide["delta_ap_fp"] > 0 and tide["removed"] > 0


def test_cli_prints_frequency_groups_and_tide_breakdown(tmp_path, capsys):
    results = [*perfect(), det(1, 3, [70, 70, 20, 20], 0.95)]
    gt_path, results_path = _write(tmp_path, lvis_gt(), results)
    out = tmp_path / "fp.json"
    assert main(["--gt", gt_path, "--results", results_path, "--json-out", str(out)]) == 0
    groups, tide = _tables(capsys.readouterr().out)[2:]
    keys = ["group", "categories", "fp_per_image", "fp", "ap50", "ap50_without_fp", "delta_ap_fp"]
    assert groups[0] == dict(zip(keys, ["r", "1", "0.333", "1", "50.000", "100.000", "50.000"]))
    assert groups[1] == dict(zip(keys, ["c", "1", "0.000", "0", "100.000", "100.000", "0.000"]))
    keys = ["type", "count", "delta_ap50", "delta_ap50_r", "delta_ap50_c", "delta_ap50_f"]
    bkg = next(row for row in tide if row["type"] == "bkg")
    cls = next(row for row in tide if row["type"] == "cls")
    assert bkg == dict(zip(keys, ["bkg", "1", "16.667", "50.000", "0.000", "0.000"]))
    assert cls == dict(zip(keys, ["cls", "0", "0.000", "0.000", "0.000", "0.000"]))
    saved = json.loads(out.read_text())
    assert saved["tide_errors"]["counts"]["bkg"] == 1
    assert saved["false_positives"]["by_frequency"]["r"]["fp"] == 1


def test_cli_json_out_never_overwrites_an_input(tmp_path, capsys):
    gt_path, results_path = _write(tmp_path, lvis_gt(), perfect())
    link = tmp_path / "link.json"
    link.symlink_to(gt_path)
    hard = tmp_path / "hard.json"
    os.link(results_path, hard)
    before = {p: open(p).read() for p in (gt_path, results_path)}
    for out in (gt_path, results_path, str(link), str(hard), f"{tmp_path}/./gt.json"):
        assert main(["--gt", gt_path, "--results", results_path, "--json-out", out]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and "is the input file" in captured.err
        assert len(captured.err.strip().splitlines()) == 1
    assert {p: open(p).read() for p in (gt_path, results_path)} == before
