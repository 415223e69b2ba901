"""Building a box predictor reads the counts file once, however many of its parts (IIF,
margins, FASA, calibration) are built on the class counts."""

import os

from detectron2.config import get_cfg
from detectron2.modeling import build_model

import iif_d2.modeling.class_weights as class_weights
from iif_d2 import add_iif_config, resolve_training_set

QUICK = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules")


def test_one_read_of_the_counts_file_per_box_predictor(tmp_path, monkeypatch):
    cfg = add_iif_config(get_cfg())
    cfg.merge_from_file(os.path.join(QUICK, "mask_rcnn_R_18_FPN_instant_recipe.yaml"))
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"])
    cfg.merge_from_list(["MODEL.ROI_BOX_HEAD.CALIBRATION.MODE", "norcal"])  # a third part
    resolve_training_set(cfg)
    reads = []
    real = class_weights.load_counts_file
    monkeypatch.setattr(class_weights, "load_counts_file", lambda p: reads.append(p) or real(p))
    model = build_model(cfg)
    predictor = model.roi_heads.box_predictor
    assert predictor.fasa is not None and predictor.iif_mode == "end_to_end"
    assert reads == [cfg.MODEL.CLASS_COUNTS.FILE]
