"""Every YAML merges and builds its model; each header names its paper row; no config takes a
detectron2 model-zoo path with another meaning; no alias files, no ``_BASE_`` chain longer than
4 files; configs/README.md lists every config and agrees with the paper numbers in the headers;
the torchvision and COCO-counts settings are consistent."""

import fnmatch
import glob
import os
import re

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
        return yaml.safe_load(f) or {}


def base_of(name):
    """The config ``name``'s ``_BASE_`` (relative to configs/), or None."""
    base = _read_yaml(name).get("_BASE_")
    return os.path.normpath(os.path.join(os.path.dirname(name), base)) if base else None


def chain(name):
    """``name`` and the files its ``_BASE_`` chain merges, leaf first."""
    files = [name]
    while base_of(files[-1]) is not None:
        files.append(base_of(files[-1]))
        assert len(files) <= len(CONFIGS), f"{name}: _BASE_ cycle {files}"
    return files


def is_alias(name):
    """An alias: a file that holds nothing but a ``_BASE_`` naming another leaf config (a
    deprecated name, say), or whose header calls it one. (A leaf holding only a ``_BASE_`` on its
    ``Base-`` file is its family's baseline, not an alias.)"""
    with open(os.path.join(ROOT, name)) as f:
        if "alias" in f.readline().lower():
            return True
    data = _read_yaml(name) or {}
    return set(data) == {"_BASE_"} and not os.path.basename(data["_BASE_"]).startswith("Base-")


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
    assert len(BASES) >= 8


def test_no_alias_files():
    """Every config trains something of its own: no file only renames another (the deprecated
    ``_1x`` / ``_2x`` LVIS names are gone: configs/README.md names their ``_12e`` / ``_24e``
    successors)."""
    assert not ALIASES
    assert not [c for c in CONFIGS if os.path.basename(c).startswith(("mask_rcnn", "cascade"))
                and c.startswith("LVISv1") and "_2x" in c]  # fmt: skip


def test_no_two_leaves_merge_alike():
    """No leaf duplicates another (a paper row has one config; configs/README.md says which
    duplicates went). A leaf may equal its own ``Base-`` file: that is the family's baseline."""
    seen = {}
    for name in LEAVES:
        dump = _raw_cfg(name).dump()
        assert dump not in seen, f"{name} merges to the same config as {seen.get(dump)}"
        seen[dump] = name


@pytest.mark.parametrize("name", CONFIGS)
def test_base_chain_at_most_four_files(name):
    files = chain(name)
    assert all(f in CONFIGS for f in files[1:]), files
    assert len(files) <= 4, " <- ".join(files)


def test_lvis_one_stage_configs_in_detection_folder():
    """LVIS RetinaNet / FCOS configs live in LVISv1-Detection/, the Mask R-CNN ones beside it."""
    lvis = [c for c in LEAVES if c.startswith("LVISv1")]
    for name in lvis:
        arch = load(name).MODEL.META_ARCHITECTURE
        one_stage = arch in ("IIFRetinaNet", "IIFFCOS")
        assert name.startswith("LVISv1-Detection/") == one_stage, (name, arch)
    assert any(c.startswith("LVISv1-Detection/") for c in lvis)


README = os.path.join(ROOT, "README.md")


def _readme():
    with open(README) as f:
        return f.read()


def test_readme_lists_every_config():
    """configs/README.md links every config (its tables) or names its whole folder in a family
    line (`quick_schedules/*.yaml`); every link resolves."""
    text = _readme()
    links = set(re.findall(r"\]\(([^)#\s]+\.yaml)\)", text))
    families = re.findall(r"`([^`\s/*]+/\*\.yaml)`", text)  # a whole folder: `folder/*.yaml`
    assert links and families
    assert not sorted(links - set(CONFIGS)), "configs/README.md links a missing file"
    missing = [
        c for c in CONFIGS if c not in links and not any(fnmatch.fnmatch(c, g) for g in families)
    ]
    assert not missing, f"add to configs/README.md: {missing}"
    for glob_ in families:
        assert any(fnmatch.fnmatch(c, glob_) for c in CONFIGS), glob_


def test_header_paper_numbers_agree_with_readme():
    """A number a config header gives as the paper's (``20.1 AP``, ``13.3 APr``, ...) is in a
    configs/README.md table row that links that config."""
    rows = [line for line in _readme().splitlines() if line.startswith("|")]
    checked = 0
    for name in LEAVES:
        with open(os.path.join(ROOT, name)) as f:
            header = f.read().split("_BASE_")[0]
        claims = re.findall(r"(\d+\.\d) AP(r|c|f|b)?\b", header)
        if not claims:
            continue
        mine = [r for r in rows if f"]({name})" in r]
        assert mine, f"{name}: its header gives paper numbers; no configs/README.md row links it"
        for number, _ in claims:
            assert any(number in r for r in mine), (name, number, mine)
            checked += 1
    assert checked >= 20


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
            name = f"mask_rcnn_R_50_FPN_12e_{tag}_{variant}.yaml"
            if (tag, variant) == ("iif", "raw"):  # the default variant: the plain _12e_iif leaf
                name = "mask_rcnn_R_50_FPN_12e_iif.yaml"
            cfg = load(f"LVISv1-InstanceSegmentation/{name}")
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
    """LVIS leaves (outside detectron2's paths) name their schedule in epochs, and state it in
    epochs (SOLVER.EPOCH_SCHEDULE, resolved when a run starts)."""
    for name in LEAVES:
        if not name.startswith("LVISv1") or name in COLLIDING:
            continue
        base = os.path.basename(name)
        assert "_1x" not in base and "_2x" not in base, name
        epochs = [int(t[:-1]) for t in base[:-5].split("_") if t[:-1].isdigit() and t[-1] == "e"]
        assert len(epochs) == 1, name
        cfg = load(name)
        assert cfg.SOLVER.EPOCH_SCHEDULE.EPOCHS == epochs[0], name
        steps = cfg.SOLVER.EPOCH_SCHEDULE.STEPS
        assert len(steps) == 2 and 0 < steps[0] < steps[1] < epochs[0], name  # two decays
        rfs = cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
        assert rfs == ("_rfs" in base or "_recipe" in base), name


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
