"""SynthLT: deterministic, valid LVIS json, LVIS frequency groups, perfect predictions = AP 100,
and an end-to-end train_net.py run on it."""

import dataclasses
import filecmp
import json
import os
import subprocess
import sys

import pytest
from lvis import LVIS, LVISEval, LVISResults

from iif_d2.data import SYNTHLT, SYNTHLT_TINY
from iif_d2.data.synthlt import class_names, ensure_generated, train_image_counts
from iif_d2.utils.compat import numpy_float_alias

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture(scope="module")
def synthlt():
    # where synthlt_train / synthlt_val are registered: generated once for the whole suite
    root = os.path.join(os.environ["DETECTRON2_DATASETS"], "synthlt")
    ensure_generated(SYNTHLT, root)
    with open(os.path.join(root, "train.json")) as f:
        train = json.load(f)
    with open(os.path.join(root, "val.json")) as f:
        val = json.load(f)
    return root, train, val


def test_deterministic(tmp_path):
    ensure_generated(SYNTHLT_TINY, str(tmp_path / "a"))
    ensure_generated(SYNTHLT_TINY, str(tmp_path / "b"))
    for split in ("train", "val"):
        assert filecmp.cmp(
            tmp_path / "a" / f"{split}.json", tmp_path / "b" / f"{split}.json", False
        )
        names = sorted(os.listdir(tmp_path / "a" / split))
        assert names and names == sorted(os.listdir(tmp_path / "b" / split))
        for n in names:
            assert filecmp.cmp(tmp_path / "a" / split / n, tmp_path / "b" / split / n, False)
    other = dataclasses.replace(SYNTHLT_TINY, seed=1)
    ensure_generated(other, str(tmp_path / "c"))
    assert not filecmp.cmp(tmp_path / "a" / "train.json", tmp_path / "c" / "train.json", False)


def test_cached_and_regenerated_on_spec_change(tmp_path):
    ensure_generated(SYNTHLT_TINY, str(tmp_path))
    stamp = os.path.getmtime(tmp_path / "val.json")
    ensure_generated(SYNTHLT_TINY, str(tmp_path))
    assert os.path.getmtime(tmp_path / "val.json") == stamp  # cached
    ensure_generated(dataclasses.replace(SYNTHLT_TINY, distractors=0), str(tmp_path))
    with open(tmp_path / "val.json") as f:
        assert json.load(f)["info"]["spec"]["distractors"] == 0


def test_json_loads_with_lvis_api(synthlt):
    root, train, val = synthlt
    for split in ("train", "val"):
        api = LVIS(os.path.join(root, f"{split}.json"))
        assert len(api.get_cat_ids()) == SYNTHLT.num_classes
    for img in train["images"] + val["images"]:
        assert {"neg_category_ids", "not_exhaustive_category_ids", "coco_url"} <= set(img)
        assert os.path.exists(os.path.join(root, *img["coco_url"].split("/")[-2:]))
    for a in train["annotations"][:50]:
        assert a["segmentation"] and all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])


def test_long_tail_groups(synthlt):
    _, train, val = synthlt
    cats = train["categories"]
    counts = [c["image_count"] for c in cats]
    assert counts == train_image_counts(SYNTHLT)  # exactly the designed profile
    assert max(counts) / min(counts) >= 100  # imbalance factor
    for c in cats:
        expected = "r" if c["image_count"] <= 10 else "c" if c["image_count"] <= 100 else "f"
        assert c["frequency"] == expected
    groups = [c["frequency"] for c in cats]
    assert min(groups.count(g) for g in "rcf") >= 5  # each group well populated
    assert [c["name"] for c in cats] == class_names(SYNTHLT.num_classes)
    # several instances per image, and IOF differs from IIF
    assert len(train["annotations"]) / len(train["images"]) > 3
    assert any(c["instance_count"] > c["image_count"] for c in cats)


def test_val_has_every_class_exhaustively(synthlt):
    _, _, val = synthlt
    present = {}
    for a in val["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    per_class = {c["id"]: 0 for c in val["categories"]}
    for img in val["images"]:
        pos = present[img["id"]]
        assert set(img["neg_category_ids"]) == set(per_class) - pos  # exhaustive
        assert img["not_exhaustive_category_ids"] == []
        for c in pos:
            per_class[c] += 1
    assert min(per_class.values()) >= SYNTHLT.val_images_per_class - 1  # rare classes included


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_predictions_scores_100(synthlt, iou_type):
    root, _, val = synthlt
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "segmentation": a["segmentation"],
            "score": 1.0,
        }
        for a in val["annotations"]
    ]
    if iou_type == "segm":  # LVISResults wants RLE for masks
        from pycocotools import mask as mask_util

        sizes = {i["id"]: (i["height"], i["width"]) for i in val["images"]}
        for d in dets:
            h, w = sizes[d["image_id"]]
            d["segmentation"] = mask_util.merge(mask_util.frPyObjects(d["segmentation"], h, w))
            d["segmentation"]["counts"] = d["segmentation"]["counts"].decode()
    gt = LVIS(os.path.join(root, "val.json"))
    with numpy_float_alias():
        ev = LVISEval(gt, LVISResults(gt, dets), iou_type)
        ev.run()
    for k in ("AP", "APr", "APc", "APf"):
        assert ev.results[k] == pytest.approx(1.0), k


def test_train_net_end_to_end_on_synthlt(tmp_path):
    config = os.path.join(
        REPO, "configs", "SynthLT-InstanceSegmentation", "mask_rcnn_R_18_FPN_iif.yaml"
    )
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config]
    cmd += ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "2"]
    cmd += ["TEST.DETECTIONS_PER_IMAGE", "10", "OUTPUT_DIR", str(tmp_path)]
    # SynthLT's generator at its tiny size (8 classes, 7 val images): the same code path, and
    # an evaluation in seconds instead of a minute over the 492 val images
    cmd += ["DATASETS.TRAIN", "('iif_synthetic_tiny_train',)", "MODEL.ROI_HEADS.NUM_CLASSES", "8"]
    cmd += ["DATASETS.TEST", "('iif_synthetic_tiny_val',)"]
    cmd += ["TEST.LVIS_EVAL_SAVE_RESULTS", "True"]  # the fast evaluator writes it when asked
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "model_0000001.pth").exists() and (tmp_path / "model_final.pth").exists()
    with open(tmp_path / "inference" / "results.json") as f:
        results = json.load(f)
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "APr", "APc", "APf"} <= set(results[task])
    assert (tmp_path / "inference" / "lvis_instances_results.json").exists()
    assert (tmp_path / "iif_class_stats.json").exists()
