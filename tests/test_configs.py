"""Every YAML merges and builds its model; each header names its paper row; no config takes a
detectron2 model-zoo path with another meaning; deprecated aliases resolve; the torchvision and
COCO-counts settings are consistent."""

import glob
import os

import pytest
import yaml
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from iif_d2 import IIFFastRCNNOutputLayers, add_iif_config, resolve_training_set
from iif_d2.modeling.config_check import check_settings_used
from iif_d2.modeling.layers import CosineConv2d, CosineLinear

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIGS = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "**", "*.yaml"), recursive=True)
)


def _read_yaml(name):
    with open(os.path.join(ROOT, name)) as f:
        return yaml.safe_load(f)


ALIAS_HEADER = "# Deprecated alias of "


def is_alias(name):
    """A deprecated alias: its header says so (and it holds only ``_BASE_``: tested)."""
    with open(os.path.join(ROOT, name)) as f:
        return f.readline().startswith(ALIAS_HEADER)


ALIASES = [c for c in CONFIGS if is_alias(c)]
LEAVES = [c for c in CONFIGS if not os.path.basename(c).startswith("Base-") and c not in ALIASES]
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
    assert len(ALIASES) >= 40


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
            cfg = load(f"LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_12e_{tag}_{variant}.yaml")
            assert cfg.MODEL.ROI_BOX_HEAD.IIF.VARIANT == variant
            assert cfg.MODEL.ROI_BOX_HEAD.IIF.FREQUENCY == freq


# detectron2's YAML model-zoo configs of these families (facebookresearch/detectron2, configs/)
# and their SOLVER.MAX_ITER, resolved through their _BASE_; the LVIS ones use
# RepeatFactorTrainingSampler (t = 0.001), the COCO ones the random TrainingSampler.
DETECTRON2_CONFIGS = {
    "COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml": 90000,
    "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml": 270000,
    "COCO-Detection/faster_rcnn_R_101_DC5_3x.yaml": 270000,
    "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml": 270000,
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml": 90000,
    "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml": 270000,
    "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml": 90000,
    "COCO-Detection/faster_rcnn_R_50_DC5_3x.yaml": 270000,
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml": 90000,
    "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml": 270000,
    "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml": 270000,
    "COCO-Detection/retinanet_R_101_FPN_3x.yaml": 270000,
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml": 90000,
    "COCO-Detection/retinanet_R_50_FPN_3x.yaml": 270000,
    "COCO-Detection/rpn_R_50_C4_1x.yaml": 90000,
    "COCO-Detection/rpn_R_50_FPN_1x.yaml": 90000,
    "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x.yaml": 270000,
    "COCO-InstanceSegmentation/mask_rcnn_R_101_DC5_3x.yaml": 270000,
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml": 270000,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml": 90000,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x.yaml": 270000,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml": 90000,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x.yaml": 270000,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": 90000,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml": 90000,
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml": 270000,
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml": 270000,
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml": 90000,
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": 90000,
    "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml": 90000,
    "LVISv1-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml": 180000,
    "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": 180000,
    "LVISv1-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml": 180000,
}
# the lr steps of those schedules (detectron2 has LazyConfig .py files of some of these names too:
# a .py path never collides with a .yaml one)
DETECTRON2_STEPS = {90000: (60000, 80000), 180000: (120000, 160000), 270000: (210000, 250000)}
COLLIDING = sorted(set(DETECTRON2_CONFIGS) & set(CONFIGS))


def test_detectron2_paths_keep_detectron2_schedule():
    """A config at a detectron2 model-zoo path trains detectron2's schedule and sampler."""
    assert COLLIDING, "the list of detectron2 paths no longer matches any config: update it"
    assert not set(COLLIDING) & set(ALIASES)
    for name in COLLIDING:
        cfg = load(name)
        max_iter = DETECTRON2_CONFIGS[name]
        assert cfg.SOLVER.MAX_ITER == max_iter, name
        assert tuple(cfg.SOLVER.STEPS) == DETECTRON2_STEPS[max_iter], name
        assert cfg.SOLVER.IMS_PER_BATCH == 16, name
        lvis = name.startswith("LVIS")
        sampler = "RepeatFactorTrainingSampler" if lvis else "TrainingSampler"
        assert cfg.DATALOADER.SAMPLER_TRAIN == sampler, name
        if lvis:
            assert cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
            assert cfg.DATALOADER.REPEAT_FACTOR.ROUNDING == "stochastic"  # detectron2's sampler
        iif = cfg.MODEL.ROI_BOX_HEAD.IIF.ENABLED or cfg.MODEL.RETINANET.IIF.ENABLED
        assert iif == name.endswith("_iif.yaml")


def test_lvis_leaves_named_by_epochs():
    """LVIS leaves (outside detectron2's paths) name their schedule in epochs, and mean it."""
    per_epoch = 100170 / 16  # LVIS v1 train images at batch 16
    for name in LEAVES:
        if not name.startswith("LVISv1") or name in COLLIDING:
            continue
        base = os.path.basename(name)
        assert "_1x" not in base and "_2x" not in base, name
        epochs = [int(t[:-1]) for t in base[:-5].split("_") if t[:-1].isdigit() and t[-1] == "e"]
        assert len(epochs) == 1, name
        cfg = load(name)
        assert abs(cfg.SOLVER.MAX_ITER - epochs[0] * per_epoch) < 1, name
        rfs = cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
        assert rfs == ("_rfs" in base or "_recipe" in base), name


@pytest.mark.parametrize("name", ALIASES)
def test_alias_resolves_to_a_config(name):
    assert set(_read_yaml(name)) == {"_BASE_"}, "an alias holds nothing but _BASE_"
    target = os.path.join(os.path.dirname(name), _read_yaml(name)["_BASE_"])
    target = os.path.normpath(target)
    assert target in CONFIGS and target not in ALIASES, (name, target)
    with open(os.path.join(ROOT, name)) as f:
        header = f.readline()
    base = os.path.basename(target)
    assert header == f"{ALIAS_HEADER}{base}; removed in the next release.\n", header
    assert load(name).dump() == load(target).dump()


TORCHVISION = {
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
}


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_torchvision_configs_set_torchvision_inputs():
    """Every config that starts from torchvision weights (or RSB's, a torchvision ResNet)
    sets the four input/stride keys to torchvision's; every other one keeps MSRA's."""
    names = [c for c in LEAVES + BASES if c.startswith("LVISv1") or c.startswith("COCO")]
    tv = [c for c in names if "torchvision" in c or "_rsb" in c]
    assert len(tv) >= 5
    for name in names:
        cfg = load(name)
        if name in tv:
            for key, value in TORCHVISION.items():
                if key == "MODEL.WEIGHTS" and "_rsb" in name:
                    assert value not in cfg.MODEL.WEIGHTS  # the user's converted file
                    continue
                got = _get(cfg, key)
                assert got == pytest.approx(value) if isinstance(value, list) else got == value
            with open(os.path.join(ROOT, name)) as f:
                assert "torchvision" in f.read().split("_BASE_")[0]  # the header says which
        else:
            assert "torchvision" not in cfg.MODEL.WEIGHTS, name
            assert cfg.INPUT.FORMAT == "BGR", name
            assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 == ("X_101" not in name), name


def test_coco_configs_default_to_shipped_counts():
    """COCO configs count K = 118,287 (the authors' counts), said in their base's header."""
    names = [c for c in LEAVES + BASES if c.startswith("COCO")]
    assert len(names) >= 10
    for name in names:
        counts = _raw_cfg(name).MODEL.CLASS_COUNTS
        assert (counts.SOURCE, counts.FILE) == ("file", "iif_d2://coco_train2017.csv"), name
    for name in [c for c in LEAVES if c.startswith("LVISv1")]:
        assert _raw_cfg(name).MODEL.CLASS_COUNTS.FILE in ("", "iif_d2://lvis_v1_train.csv"), name
    for base in [c for c in BASES if c.startswith("COCO")]:
        with open(os.path.join(ROOT, base)) as f:
            assert "K = 118,287" in f.read()


def _raw_cfg(name):
    """The config as shipped (``load`` sets the counts file for speed)."""
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, name))
    return cfg
