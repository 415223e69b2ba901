"""Every YAML merges and builds its model; each header names its paper row."""

import glob
import os

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from iif_d2 import IIFFastRCNNOutputLayers, add_iif_config, resolve_training_set
from iif_d2.config_check import check_settings_used
from iif_d2.layers import CosineConv2d, CosineLinear

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIGS = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "**", "*.yaml"), recursive=True)
)
LEAVES = [c for c in CONFIGS if not os.path.basename(c).startswith("Base-")]
BASES = [c for c in CONFIGS if os.path.basename(c).startswith("Base-")]
# the shipped train counts, so that no LVIS/COCO json is needed to build a model
COUNTS = {"LVISv1": "iif_d2://lvis_v1_train.csv", "COCO": "iif_d2://coco_train2017.csv"}


def load(name, output_dir=None):
    """The config ``name``; with ``output_dir``, its counts resolved there (SynthLT configs count
    their generated training set)."""
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, name))
    cfg.MODEL.DEVICE = "cpu"
    for prefix, counts in COUNTS.items():
        if name.startswith(prefix):
            cfg.MODEL.CLASS_COUNTS.SOURCE, cfg.MODEL.CLASS_COUNTS.FILE = "file", counts
    if output_dir is None:
        return cfg
    cfg.OUTPUT_DIR = str(output_dir)
    return resolve_training_set(cfg, training=False)


def test_configs_found():
    assert len(LEAVES) >= 33


@pytest.mark.parametrize("name", LEAVES + BASES)
def test_config_builds_model(name, tmp_path):
    cfg = load(name, tmp_path)
    model = build_model(cfg)
    check_settings_used(cfg, model)  # no shipped config sets what its model ignores
    one_stage = {"IIFRetinaNet": cfg.MODEL.RETINANET, "IIFFCOS": cfg.MODEL.FCOS}
    if cfg.MODEL.META_ARCHITECTURE in one_stage:
        node = one_stage[cfg.MODEL.META_ARCHITECTURE]
        assert (model.iif_weights is not None) == node.IIF.ENABLED
        if node.IIF.ENABLED:
            assert model.iif_weights.shape == (node.NUM_CLASSES,)
        return
    if cfg.MODEL.MASK_ON:
        normalized = cfg.MODEL.ROI_MASK_HEAD.NAME == "NormalizedMaskRCNNConvUpsampleHead"
        assert isinstance(model.roi_heads.mask_head.predictor, CosineConv2d) == normalized
    predictors = [m for m in model.modules() if isinstance(m, IIFFastRCNNOutputLayers)]
    assert predictors, "every config uses the IIF box predictor"
    iif = cfg.MODEL.ROI_BOX_HEAD.IIF
    for p in predictors:
        assert p.iif_mode == (iif.MODE if iif.ENABLED else "off")
        if iif.ENABLED:
            assert p.iif_weights.shape == (cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1,)
            assert p.iif_weights[-1] == 1.0
        cosine = cfg.MODEL.ROI_BOX_HEAD.COSINE
        assert isinstance(p.cls_score, CosineLinear) == cosine.ENABLED
        if cosine.ENABLED:
            assert p.cls_score.scale == cosine.SCALE
        assert (p.fasa is not None) == cfg.MODEL.ROI_BOX_HEAD.FASA.ENABLED
        margin = cfg.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN
        assert p.margin_mode == (margin.TYPE if margin.ENABLED else "off")
        if margin.ENABLED:
            assert p.margins[-1] == 0.0


@pytest.mark.parametrize("name", LEAVES)
def test_header_names_paper_row(name):
    with open(os.path.join(ROOT, name)) as f:
        header = f.readline()
    assert header.startswith("#")
    assert any(ref in header for ref in ("Table", "Fig.", "no paper row", "(tests)")), header


def test_variant_leaves_cover_table_xiv():
    from iif_d2.weights import VARIANTS

    for variant in VARIANTS:
        for freq, tag in (("image", "iif"), ("instance", "iof")):
            cfg = load(f"LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_{tag}_{variant}.yaml")
            assert cfg.MODEL.ROI_BOX_HEAD.IIF.VARIANT == variant
            assert cfg.MODEL.ROI_BOX_HEAD.IIF.FREQUENCY == freq
