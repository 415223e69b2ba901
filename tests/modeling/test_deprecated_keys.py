"""A deprecated key set directly on a config object (not through train_net's loader) is refused
where the model is built, instead of being silently ignored; apply_deprecated_keys moves it."""

import os

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from iif_d2 import add_iif_config
from iif_d2.config import apply_deprecated_keys

QUICK = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules")


@pytest.mark.parametrize(
    "config, old, new",
    [
        ("mask_rcnn_R_18_FPN_instant_iif.yaml", "ROI_BOX_HEAD", "MODEL.CLASS_COUNTS.SOURCE"),
        ("retinanet_R_18_FPN_instant_iif.yaml", "RETINANET", "MODEL.CLASS_COUNTS.SOURCE"),
        ("fcos_R_18_FPN_instant_iif.yaml", "FCOS", "MODEL.CLASS_COUNTS.SOURCE"),
    ],
)
def test_a_deprecated_key_on_a_config_object_is_refused_or_applied(config, old, new):
    cfg = add_iif_config(get_cfg())
    cfg.merge_from_file(os.path.join(QUICK, config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    cfg.MODEL[old].IIF.COUNTS_SOURCE = "json"  # set in code, after merging
    with pytest.raises(ValueError, match=f"COUNTS_SOURCE = 'json' is a deprecated key.*{new}"):
        build_model(cfg)
    apply_deprecated_keys(cfg)
    assert cfg.MODEL.CLASS_COUNTS.SOURCE == "json"
    assert cfg.MODEL[old].IIF.COUNTS_SOURCE == ""
