"""build_evaluator and FastLVISEvaluator on a tiny LVIS-shaped dataset registered here:
detectron2's LVISEvaluator (lvis-api) gives the same numbers; COCO evaluation runs too."""

import json
import os

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from helpers import model_outputs, register

from iif_d2.bench.synthetic_lvis import make_dataset
from iif_d2.evaluation import FastLVISEvaluator, LVISEvaluator, build_evaluator
from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth, lvis_api_evaluate

FREQS = ["f", "c", "r", "f", "c", "f", "r", "c", "f", "f"]


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
    register("iif_test_tiny_lvis", json_file, gt)
    return "iif_test_tiny_lvis", gt, model_outputs(gt, dets)


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


def lvis_results(outputs, max_dets=-1, score_thresh=None):
    """lvis-api results of model outputs (boxes as the evaluator converts them), each image
    cut to its ``max_dets`` best above ``score_thresh``, in processing order."""
    results = []
    for inp, out in outputs:
        inst = out["instances"]
        scores = inst.scores.numpy()
        keep = np.arange(len(scores))
        if score_thresh is not None:
            keep = keep[scores[keep] > score_thresh]
        if max_dets >= 0:
            keep = np.sort(keep[np.argsort(-scores[keep], kind="stable")[:max_dets]])
        boxes = inst.pred_boxes.tensor.numpy().copy()
        boxes[:, 2:] -= boxes[:, :2]
        masks = np.asfortranarray(inst.pred_masks.numpy().transpose(1, 2, 0).astype(np.uint8))
        rles = mask_utils.encode(masks)
        for k in keep.tolist():
            results.append({
                "image_id": inp["image_id"],
                "category_id": int(inst.pred_classes[k]) + 1,
                "bbox": [float(v) for v in boxes[k]],
                "score": float(scores[k]),
                "segmentation": {"size": rles[k]["size"], "counts": rles[k]["counts"].decode()},
            })  # fmt: skip
    return results


def _top_per_category(results, k):
    """Each category's ``k`` best results (ties: the earlier), as the paper's script."""
    by_cat = {}
    for r in results:
        by_cat.setdefault(r["category_id"], []).append(r)
    return [r for rs in by_cat.values() for r in sorted(rs, key=lambda r: -r["score"])[:k]]


def _lvis_api(gt, results, task, max_dets):
    if task == "segm":  # as detectron2: mask areas for segm
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    return lvis_api_evaluate(gt, results, task, max_dets=max_dets)


@pytest.mark.parametrize("uncapped", [True, False])
def test_fixed_and_pooled_match_lvis_api_with_a_per_class_budget(uncapped, tiny_lvis):
    """AP-fixed is lvis-api (no cap per image) on each class's 8 best detections over the
    dataset, kept while streaming (pruned every 16 keys); the standard metrics of the same
    pass are lvis-api's on each image's 20 best above 0.2. Uncapped: the budget sees all of
    each image's 40 detections; capped: the standard cut (20 per image, no threshold)."""
    from iif_d2.lvis_eval.devil import ap_pooled

    name, gt, outputs = tiny_lvis
    thresh = 0.2 if uncapped else None
    evaluator = FastLVISEvaluator(
        name, max_dets_per_image=20, fixed_and_pooled=True, dets_per_class=8,
        fixed_uncapped=uncapped, score_thresh=thresh,
    )  # fmt: skip
    evaluator.budget_prune_at = 16
    res = _run(evaluator, outputs)
    assert len(evaluator._budget.keys()[0]) <= 8 * len(gt["categories"]) + 16  # bounded
    standard = lvis_results(outputs, 20, thresh)
    candidates = lvis_results(outputs) if uncapped else lvis_results(outputs, 20)
    top = _top_per_category(candidates, 8)
    assert len(top) < len(candidates)  # the budget binds
    for task in ("bbox", "segm"):
        ref = _lvis_api(gt, standard, task, 20)
        assert abs(res[task]["AP"] - ref["AP"] * 100) <= 1e-10
        assert abs(res[task]["APr"] - ref["APr"] * 100) <= 1e-10
        fixed = _lvis_api(gt, top, task, -1)
        assert abs(res[task]["AP-fixed"] - fixed["AP"] * 100) <= 1e-10, task
        dets = LVISDetections.from_results(
            [{k: v for k, v in r.items() if task == "bbox" or k != "bbox"} for r in candidates],
            task,
        )
        pooled = ap_pooled(LVISGroundTruth.from_dict(gt, with_masks=True), dets, task, 8)
        for key, value in pooled.items():
            assert abs(res[task][key] - value * 100) <= 1e-10, (task, key)
    assert res["bbox"]["AP-fixed"] != res["bbox"]["AP"]


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
    register(name, json_file, gt, evaluator_type)
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


def test_build_evaluator_ap_fixed_options(tiny_lvis, tmp_path):
    from iif_d2 import add_iif_config

    name = tiny_lvis[0]
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    ev = build_evaluator(cfg, name)
    assert not ev._fixed_and_pooled and ev._max_dets == cfg.TEST.DETECTIONS_PER_IMAGE
    cfg.TEST.AP_FIXED.ENABLED = True
    with pytest.raises(ValueError, match="needs the model uncapped.*set it to -1"):
        build_evaluator(cfg, name)  # detectron2's default cap of 100 per image
    cfg.TEST.DETECTIONS_PER_IMAGE = -1
    ev = build_evaluator(cfg, name)
    assert (ev._max_dets, ev._dets_per_class, ev._score_thresh) == (300, 10000, 1e-4)
    assert ev._fixed_and_pooled and ev._fixed_uncapped
    cfg.MODEL.META_ARCHITECTURE = "IIFRetinaNet"  # its -1 would drop a detection
    with pytest.raises(ValueError, match="e.g. 100000"):
        build_evaluator(cfg, name)
    cfg.TEST.DETECTIONS_PER_IMAGE = 100000
    assert build_evaluator(cfg, name)._fixed_uncapped
    cfg.TEST.LVIS_EVAL_ENGINE = "lvis-api"
    with pytest.raises(ValueError, match='need TEST.LVIS_EVAL_ENGINE "fast"'):
        build_evaluator(cfg, name)
    cfg.TEST.LVIS_EVAL_ENGINE = "fast"
    cfg.TEST.AP_FIXED.ENABLED = False
    with pytest.raises(ValueError, match="STANDARD_DETECTIONS_PER_IMAGE.*would be ignored"):
        cfg.TEST.AP_FIXED.STANDARD_DETECTIONS_PER_IMAGE = 100
        build_evaluator(cfg, name)
    cfg.TEST.AP_FIXED.STANDARD_DETECTIONS_PER_IMAGE = 300
    cfg.TEST.AP_FIXED.DETS_PER_CLASS = 500
    with pytest.raises(ValueError, match="DETS_PER_CLASS set"):
        build_evaluator(cfg, name)
    cfg.TEST.LVIS_EVAL_FIXED_POOLED = True  # the budget of AP-fixed on the standard cut
    ev = build_evaluator(cfg, name)
    assert ev._fixed_and_pooled and not ev._fixed_uncapped and ev._dets_per_class == 500


def test_uncapped_rcnn_inference_holds_the_standard_detections():
    """TEST.DETECTIONS_PER_IMAGE -1 (AP-fixed inference) on this project's Mask R-CNN: more
    detections than the cap, and each image's best ones are exactly the capped model's, which
    is what the evaluator's standard cut of the same pass relies on."""
    from detectron2.modeling import build_model

    from iif_d2 import add_iif_config, resolve_training_set

    cfg = get_cfg()
    add_iif_config(cfg)
    repo = os.path.join(os.path.dirname(__file__), "..", "..")
    cfg.merge_from_file(
        os.path.join(repo, "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_iif.yaml")
    )
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", 20])
    resolve_training_set(cfg)
    torch.manual_seed(0)
    capped = build_model(cfg).eval()
    cfg.TEST.DETECTIONS_PER_IMAGE = -1
    uncapped = build_model(cfg).eval()
    uncapped.load_state_dict(capped.state_dict())
    image = {"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)}
    with torch.no_grad():
        few = capped([image])[0]["instances"]
        many = uncapped([image])[0]["instances"]
    assert len(few) == 20 and len(many) > 20
    for field in ("scores", "pred_classes"):
        assert torch.equal(getattr(many, field)[:20], getattr(few, field))
    assert torch.equal(many.pred_boxes.tensor[:20], few.pred_boxes.tensor)
    assert torch.equal(many.pred_masks[:20], few.pred_masks)


def test_fast_lvis_evaluator_logs_percent_tables(tiny_lvis, caplog):
    """The metrics block of the log is detectron2's table (create_small_table), in percent,
    holding the very numbers returned (and so written to metrics.json)."""
    import logging

    from detectron2.utils.logger import create_small_table

    name, _, outputs = tiny_lvis
    with caplog.at_level(logging.INFO, logger="iif_d2.evaluation.lvis_evaluator"):
        res = _run(FastLVISEvaluator(name, fixed_and_pooled=True), outputs)
    text = caplog.text
    for task in ("bbox", "segm"):
        assert f"Evaluation results for {task} (percent):" in text
        standard = {k: v for k, v in res[task].items() if not k.startswith("AP-")}
        fixed = {k: v for k, v in res[task].items() if k.startswith("AP-")}
        assert create_small_table(standard) in text and create_small_table(fixed) in text
    assert 1 < res["segm"]["AP"] <= 100  # percent, not a fraction
