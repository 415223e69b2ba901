"""build_evaluator and FastLVISEvaluator on a tiny LVIS-shaped dataset registered here:
detectron2's LVISEvaluator (lvis-api) gives the same numbers; COCO evaluation runs too."""

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from iif_d2.evaluation import FastLVISEvaluator, LVISEvaluator, build_evaluator
from iif_d2.lvis_eval import lvis_api_evaluate
from iif_d2.lvis_eval.synthetic import make_dataset

FREQS = ["f", "c", "r", "f", "c", "f", "r", "c", "f", "f"]


def _register(name, json_file, gt, evaluator_type="lvis"):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        json_file=json_file,
        evaluator_type=evaluator_type,
        thing_classes=[c["name"] for c in gt["categories"]],
        thing_dataset_id_to_contiguous_id={c["id"]: k for k, c in enumerate(gt["categories"])},
    )


@pytest.fixture(scope="module")
def tiny_lvis(tmp_path_factory):
    """(dataset name, annotation dict, per-image model outputs with boxes and masks)."""
    gt, dets = make_dataset(
        10, FREQS, seed=3, gt_per_image=3, dets_per_image=40, empty_mask_frac=0.05,
        num_neg=3, image_sizes=(40, 72),
    )  # fmt: skip
    json_file = str(tmp_path_factory.mktemp("tiny_lvis") / "val.json")
    with open(json_file, "w") as f:
        json.dump(gt, f)
    _register("iif_test_tiny_lvis", json_file, gt)
    outputs = []
    for img in gt["images"]:
        sel = np.flatnonzero(dets.image_id == img["id"])
        xyxy = BoxMode.convert(dets.bbox[sel], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
        inst = Instances((img["height"], img["width"]))
        inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32))
        inst.scores = torch.tensor(dets.score[sel], dtype=torch.float32)
        inst.pred_classes = torch.tensor(dets.category_id[sel] - 1)
        masks = mask_utils.decode(dets.rles(sel)).transpose(2, 0, 1)
        inst.pred_masks = torch.tensor(masks, dtype=torch.bool)
        outputs.append(({"image_id": img["id"]}, {"instances": inst}))
    return "iif_test_tiny_lvis", gt, outputs


def _run(evaluator, outputs):
    evaluator.reset()
    for inp, out in outputs:
        evaluator.process([inp], [out])
    return evaluator.evaluate()


def test_fast_lvis_evaluator_matches_lvis_api(tiny_lvis, tmp_path):
    name, _, outputs = tiny_lvis
    ref = _run(LVISEvaluator(name, output_dir=str(tmp_path / "ref")), outputs)
    fast = _run(FastLVISEvaluator(name, output_dir=str(tmp_path / "fast")), outputs)
    assert sorted(fast) == sorted(ref) == ["bbox", "segm"]
    for task in ref:
        assert fast[task].keys() == ref[task].keys()
        for key, value in ref[task].items():
            assert abs(fast[task][key] - value) <= 1e-10, (task, key, fast[task][key], value)
    assert ref["segm"]["AP"] > 0
    # the results json is written only when asked
    assert not (tmp_path / "fast").exists()


def test_fast_lvis_evaluator_reports_fixed_and_pooled(tiny_lvis, tmp_path):
    from iif_d2.evaluation import _concat
    from iif_d2.lvis_eval import LVISGroundTruth
    from iif_d2.lvis_eval.devil import ap_fixed

    name, gt, outputs = tiny_lvis
    plain = _run(FastLVISEvaluator(name), outputs)
    both = _run(FastLVISEvaluator(name, fixed_and_pooled=True), outputs)
    for task in ("bbox", "segm"):
        assert {"AP-fixed", "AP-pool", "AP-pool-r", "AP-pool-c", "AP-pool-f"} <= set(both[task])
        assert both[task]["AP"] == plain[task]["AP"]  # the standard metrics are unchanged
        assert 0 <= both[task]["AP-pool"] <= 100
    # the evaluator hands AP-fixed the detections it stored (cut and federated-filtered)
    evaluator = FastLVISEvaluator(name)
    for inp, out in outputs:
        evaluator.process([inp], [out])
    dets = _concat(evaluator._parts, True)
    ground_truth = LVISGroundTruth.from_json(MetadataCatalog.get(name).json_file, False)
    expected = ap_fixed(ground_truth, dets, "bbox")["AP"] * 100
    assert both["bbox"]["AP-fixed"] == pytest.approx(expected, abs=1e-12)


def test_fast_lvis_evaluator_writes_results_when_asked(tiny_lvis, tmp_path):
    name, gt, outputs = tiny_lvis
    evaluator = FastLVISEvaluator(name, output_dir=str(tmp_path), save_results_json=True)
    res = _run(evaluator, outputs)
    with open(tmp_path / "lvis_instances_results.json") as f:
        results = json.load(f)
    assert len(results) == sum(len(out["instances"]) for _, out in outputs)
    assert lvis_api_evaluate(gt, results, "bbox")["AP"] * 100 == pytest.approx(res["bbox"]["AP"])
    for r in results:  # as detectron2: mask areas for segm
        r.pop("bbox")
    assert lvis_api_evaluate(gt, results, "segm")["AP"] * 100 == pytest.approx(res["segm"]["AP"])


def test_build_evaluator_engines(tiny_lvis, tmp_path):
    name = tiny_lvis[0]
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    assert type(build_evaluator(cfg, name)) is FastLVISEvaluator  # before the key exists
    cfg.TEST.LVIS_EVAL_ENGINE = "lvis-api"
    assert type(build_evaluator(cfg, name)) is LVISEvaluator
    cfg.TEST.LVIS_EVAL_ENGINE = "fastest"
    with pytest.raises(ValueError, match="LVIS_EVAL_ENGINE 'fastest'"):
        build_evaluator(cfg, name)


def _ground_truth_as_predictions(evaluator, json_file):
    with open(json_file) as f:
        data = json.load(f)
    evaluator.reset()
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        inst = Instances((img["height"], img["width"]))
        boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] - 1 for a in anns], dtype=torch.long)
        evaluator.process([{"image_id": img["id"]}], [{"instances": inst}])
    return evaluator.evaluate()


@pytest.mark.parametrize("evaluator_type", ["lvis", "coco"])
def test_evaluators_score_ground_truth_100(evaluator_type, tiny_lvis, tmp_path):
    _, gt, _ = tiny_lvis
    gt = json.loads(json.dumps(gt))
    if evaluator_type == "coco":  # COCO annotations carry iscrowd
        for a in gt["annotations"]:
            a["iscrowd"] = 0
    json_file = str(tmp_path / "val.json")
    with open(json_file, "w") as f:
        json.dump(gt, f)
    name = f"iif_test_{evaluator_type}_val"
    _register(name, json_file, gt, evaluator_type)
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_evaluator(cfg, name)
    evaluator._tasks = ("bbox",)  # boxes only: the predictions carry no masks
    results = _ground_truth_as_predictions(evaluator, json_file)
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def test_unknown_evaluator_type():
    MetadataCatalog.get("iif_test_nothing").set(evaluator_type="sem_seg")
    with pytest.raises(ValueError, match="evaluator_type"):
        build_evaluator(get_cfg(), "iif_test_nothing")
