"""Every COCO and LVIS v1 config, tried as a new user would, on CPU: the YAML itself, with only
its data, its pretrained weights (none offline) and its image size swapped, trains one step
through the trainer and runs inference; a config that is another leaf with a deeper ResNet
(R-101, X-101) builds its model, and its leaf trains the step.

COCO configs use the tiny synthetic set (8 classes). LVIS v1 configs use the reduced
LVIS-shaped set (``lvis_shaped_mini``: LVIS v1's 1203 classes and frequency groups, many classes
with a single training image) unchanged, so each one starts on LVIS's class list: its class
counts, repeat factors and FASA hold-out at 1203 classes; inference runs on two val images
(``dev/rehearse.py`` is the full-size check).
"""

import functools
import glob
import itertools
import os
import pickle
import shutil

import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.data.class_stats import load_counts_file
from iif_d2.engine.trainer import Trainer

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")
LEAVES = sorted(
    os.path.relpath(p, ROOT)
    for family in ("COCO-*", "LVISv1-*")
    for p in glob.glob(os.path.join(ROOT, family, "*.yaml"))
    if not os.path.basename(p).startswith("Base-")
)


def _is_alias(name):
    """An alias (e.g. a deprecated name): nothing but a ``_BASE_`` that is another leaf config,
    so it would train exactly as its target. None is shipped (tested)."""
    with open(os.path.join(ROOT, name)) as f:
        data = yaml.safe_load(f) or {}
    return set(data) == {"_BASE_"} and not os.path.basename(data["_BASE_"]).startswith("Base-")


def _backbone_variant(name):
    """The leaf config it is with another backbone, or None: a config whose own keys are only
    MODEL.WEIGHTS, MODEL.PIXEL_MEAN/STD and MODEL.RESNETS over a ``_BASE_`` that is a leaf
    (e.g. an R-101 or X-101 of an R-50 recipe) trains as that leaf does but for its ResNet."""
    with open(os.path.join(ROOT, name)) as f:
        data = yaml.safe_load(f) or {}
    base = data.pop("_BASE_", "")
    own = {"WEIGHTS", "PIXEL_MEAN", "PIXEL_STD", "RESNETS"}
    if set(data) != {"MODEL"} or not set(data["MODEL"]) <= own:
        return None
    if not base or os.path.basename(base).startswith("Base-"):
        return None
    return os.path.normpath(os.path.join(os.path.dirname(name), base))


ALIASES = [n for n in LEAVES if _is_alias(n)]
USER_CONFIGS = [n for n in LEAVES if n not in ALIASES]
# backbone variants build their model (the deeper ResNet); their leaf trains a step
VARIANTS = {n: _backbone_variant(n) for n in USER_CONFIGS if _backbone_variant(n)}
COMMON = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", 1, "SOLVER.MAX_ITER", 1,
    # one iteration, not the LVIS configs' epochs (tests/data/test_epoch_schedule.py and
    # dev/rehearse_schedules.py cover those)
    "SOLVER.EPOCH_SCHEDULE.EPOCHS", 0, "SOLVER.EPOCH_SCHEDULE.STEPS", (),
    "DATALOADER.NUM_WORKERS", 0, "TEST.EVAL_PERIOD", 0,
]  # fmt: skip
TINY = [
    "DATASETS.TRAIN", ("iif_synthetic_tiny_train",), "DATASETS.TEST", ("iif_synthetic_tiny_val",),
    "MODEL.ROI_HEADS.NUM_CLASSES", 8, "MODEL.RETINANET.NUM_CLASSES", 8, "MODEL.FCOS.NUM_CLASSES", 8,
    # COCO configs count on the shipped COCO file: the tiny set's own counts instead
    "MODEL.CLASS_COUNTS.SOURCE", "dataset", "MODEL.CLASS_COUNTS.FILE", "",
    "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128,
    "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128, *COMMON,
]  # fmt: skip
LVIS_TRAIN = "iif_test_lvis_shaped_mini_train"  # lvis_shaped_mini_train, loaded once per session
LVIS_VAL = "iif_test_lvis_shaped_mini_val2"  # the first two images of lvis_shaped_mini_val
# the configs' own class count (1203), score threshold and NMS; 64-px images, and fewer ROIs
# (32 sampled per training image, 50 test proposals, 10 detections: the class-specific mask
# predictor at 1203 classes costs ~1 GFLOP per ROI) so that a config takes seconds on CPU; no
# evaluation inside train() (dev/rehearse.py runs every LVIS config unreduced, evaluation
# included)
LVIS = [
    "DATASETS.TRAIN", (LVIS_TRAIN,), "DATASETS.TEST", (),
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 128,
    "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 128, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "TEST.DETECTIONS_PER_IMAGE", 10,
    *COMMON,
]  # fmt: skip


@functools.lru_cache(maxsize=None)
def _mini_train_pickle() -> bytes:
    return pickle.dumps(DatasetCatalog.get("lvis_shaped_mini_train"))


def _register_lvis():
    """The mini train set (each load a fresh copy of one parse: ~1 s saved per config) and
    two val images, under test names with lvis_shaped_mini's metadata."""
    if LVIS_VAL in DatasetCatalog.list():
        return
    DatasetCatalog.register(LVIS_TRAIN, lambda: pickle.loads(_mini_train_pickle()))
    DatasetCatalog.register(LVIS_VAL, lambda: DatasetCatalog.get("lvis_shaped_mini_val")[:2])
    for name, split in ((LVIS_TRAIN, "train"), (LVIS_VAL, "val")):
        meta = MetadataCatalog.get(f"lvis_shaped_mini_{split}")
        MetadataCatalog.get(name).set(thing_classes=meta.thing_classes)


def _load(name):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, name))
    return cfg


def test_user_configs_found():
    assert len(USER_CONFIGS) >= 50
    # LVIS one-stage configs have their own folder, found by the same family glob
    assert [n for n in USER_CONFIGS if n.startswith("LVISv1-Detection/")]


def test_no_alias_among_user_configs():
    """Every leaf a user can pick trains a config of its own (the deprecated aliases are gone)."""
    assert not ALIASES, ALIASES


@pytest.mark.parametrize("name", USER_CONFIGS)
def test_config_trains_one_step_and_infers(name, tmp_path):
    cfg = _load(name)
    lvis = name.startswith("LVISv1-")
    if lvis:
        _register_lvis()
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), *(LVIS if lvis else TINY)])
    if not lvis and ("relative" in name or "normit" in name):
        # a class of the tiny set is in more than half the images: weight <= 0, refused unless
        # allowed (on LVIS, lvis_shaped_mini included, every class is below one half)
        cfg.MODEL.ROI_BOX_HEAD.IIF.ALLOW_NONPOSITIVE_WEIGHTS = True
    if "decoupled" in name:  # stage 2 starts from a stage-1 checkpoint; none offline
        assert cfg.MODEL.ROI_BOX_HEAD.TRAIN_ONLY_CLASSIFIER
    resolve_training_set(cfg)
    if name in VARIANTS:  # its leaf trains the step: here the deeper ResNet is built
        assert VARIANTS[name] in USER_CONFIGS and VARIANTS[name] not in VARIANTS
        bottom_up = Trainer.build_model(cfg).backbone.bottom_up
        assert len(bottom_up.res4) == {50: 6, 101: 23}[cfg.MODEL.RESNETS.DEPTH]
        return
    if lvis and cfg.MODEL.CLASS_COUNTS.FILE:  # resolved from the full 2,000-image training set
        stats = load_counts_file(cfg.MODEL.CLASS_COUNTS.FILE)
        assert (stats.num_classes, stats.num_images) == (1203, 2000)
        assert min(stats.image_counts) == 1  # one-image classes, as LVIS's rarest
    try:
        trainer = Trainer(cfg)
        trainer.train()
        losses = {k: v[0] for k, v in trainer.storage.latest().items() if k.startswith("loss")}
        assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
        loader = Trainer.build_test_loader(cfg, LVIS_VAL if lvis else cfg.DATASETS.TEST[0])
        model = trainer.model.eval()
        num_classes = 1203 if lvis else 8
        with torch.no_grad():
            for batch in itertools.islice(loader, 2):
                inst = model(batch)[0]["instances"]
                assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
                assert ((inst.pred_classes >= 0) & (inst.pred_classes < num_classes)).all()
    finally:  # the R50/R101/X101 checkpoints (up to 0.4 GB each) would add up to ~20 GB a run
        shutil.rmtree(tmp_path, ignore_errors=True)
