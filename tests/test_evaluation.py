"""build_evaluator: LVIS and COCO evaluation run here (numpy 2, no compiled COCO eval on v0.6)."""

import json

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from iif_d2.evaluation import build_evaluator


def _ground_truth_as_predictions(evaluator, json_file):
    with open(json_file) as f:
        data = json.load(f)
    evaluator.reset()
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        inst = Instances((img["height"], img["width"]))
        boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] - 1 for a in anns])
        evaluator.process([{"image_id": img["id"]}], [{"instances": inst}])
    return evaluator.evaluate()


@pytest.mark.parametrize("evaluator_type", ["lvis", "coco"])
def test_evaluators_score_ground_truth_100(evaluator_type, tmp_path):
    from detectron2.config import get_cfg

    DatasetCatalog.get("iif_synthetic_tiny_val")  # generated on first use
    meta = MetadataCatalog.get("iif_synthetic_tiny_val")
    json_file = meta.json_file
    if evaluator_type == "coco":  # a COCO-format copy: COCO annotations carry iscrowd
        with open(json_file) as f:
            data = json.load(f)
        for a in data["annotations"]:
            a["iscrowd"] = 0
        json_file = str(tmp_path / "coco_val.json")
        with open(json_file, "w") as f:
            json.dump(data, f)
    name = f"iif_test_{evaluator_type}_val"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: DatasetCatalog.get("iif_synthetic_tiny_val"))
        num = len(meta.thing_classes)
        MetadataCatalog.get(name).set(
            json_file=json_file,
            evaluator_type=evaluator_type,
            thing_classes=meta.thing_classes,
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(num)},
        )
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_evaluator(cfg, name)
    evaluator._tasks = ("bbox",)  # boxes only: the predictions carry no masks
    results = _ground_truth_as_predictions(evaluator, json_file)
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def test_unknown_evaluator_type(tmp_path):
    from detectron2.config import get_cfg

    MetadataCatalog.get("iif_test_nothing").set(evaluator_type="sem_seg")
    cfg = get_cfg()
    with pytest.raises(ValueError, match="evaluator_type"):
        build_evaluator(cfg, "iif_test_nothing")
