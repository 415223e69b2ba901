"""dev/rehearse.py on the reduced LVIS-shaped set: a decoupled config (and the stage-1 config
it needs, run first) trains one step in train_net.py subprocesses and is evaluated; the rows
hold the report's keys, and the saved class counts equal the mini spec's targets.

The full-size generator's class counts equal lvis_v1_train.csv: tests/test_lvis_shaped.py
(test_full_size_assignment_equals_csv); the full-size rehearsal is ``make rehearse``."""

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import DEV, ROOT, load_dev

TOOL = os.path.join(DEV, "rehearse.py")
KEYS = {
    "config", "started", "completed", "error", "seconds_to_first_iter", "peak_rss_mb",
    "counts_match_csv", "iterations", "epoch_images", "heldout", "evaluated",
}  # fmt: skip


@pytest.fixture(scope="module")
def rehearse():
    return load_dev("rehearse")


def test_leaf_configs_every_non_base_yaml_stage1_first(rehearse):
    folder = os.path.join(ROOT, rehearse.CONFIG_DIR)
    leaves = {f for f in os.listdir(folder) if f.endswith(".yaml") and not f.startswith("Base-")}
    every = [os.path.basename(c) for c in rehearse.leaf_configs(aliases=True)]
    assert set(every) == leaves and len(every) == len(leaves)
    aliases = {n for n in leaves if rehearse.is_alias(n)}
    assert {os.path.basename(c) for c in rehearse.leaf_configs()} == leaves - aliases
    decoupled = [n for n in every if "decoupled" in n]
    assert decoupled
    for n in decoupled:  # each stage 2 after the stage-1 config its MODEL.WEIGHTS names
        stage1 = rehearse.stage1_of(n)
        assert stage1 in leaves and every.index(stage1) < every.index(n)
    only = [os.path.basename(c) for c in rehearse.leaf_configs(["*recipe.yaml"])]
    assert only and all(n.endswith("recipe.yaml") for n in only)


def test_bad_arguments_exit_with_a_message(rehearse):
    with pytest.raises(SystemExit):
        rehearse.parse_args(["--iters", "0"])


@pytest.mark.slow
def test_mini_rehearsal_decoupled_from_its_stage1(tmp_path):
    """Two runs at a time: the decoupled stage 2 starts with its stage 1 free to run beside it,
    so it must wait for the stage-1 checkpoint."""
    out = tmp_path / "report"
    cmd = [
        sys.executable, TOOL, "--mini", "--only", "12e_iif_decoupled.yaml", "--iters", "1",
        "--val-images", "1", "--size", "32", "--threads", "1", "--output", str(out),
        "--jobs", "2",  # stage 2 must wait for the stage-1 run it loads
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "mini" / "rehearsal.json").read_text())
    assert [os.path.basename(r["config"]) for r in rows] == [
        "mask_rcnn_R_50_FPN_12e.yaml",
        "mask_rcnn_R_50_FPN_12e_iif_decoupled.yaml",
    ]
    for r in rows:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["started"] and r["completed"] and r["error"] is None, r
        assert r["iterations"] == 1 and r["evaluated"]
        assert 0 < r["seconds_to_first_iter"] < r["seconds"]
        assert r["peak_rss_mb"] > 200  # torch + detectron2 + a ResNet-50 model
    stage1, stage2 = rows
    assert stage1["counts_match_csv"] is None  # softmax: no class counts used
    assert stage2["counts_match_csv"] is True  # IIF: the 2,000-image set's exact targets
    log = (out / "mini" / "mask_rcnn_R_50_FPN_12e_iif_decoupled" / "log.txt").read_text()
    assert "mask_rcnn_R_50_FPN_12e/model_final.pth" in log  # stage 2 loaded stage 1
    log1 = (out / "mini" / "mask_rcnn_R_50_FPN_12e" / "log.txt").read_text()
    assert "calibrated_backbones" in log1  # stage 1 started from the calibrated backbone
    assert "Decoupled training: only the box classifier is trained" in log
    assert not list((out / "mini").glob("*/*.pth"))  # checkpoints removed
    md = (out / "mini" / "rehearsal.md").read_text()
    assert re.search(r"\| mask_rcnn_R_50_FPN_12e_iif_decoupled.yaml +\| yes +\| yes +\|", md), md


def test_trainer_dicts_are_the_resolutions_load(tmp_path):
    """A training run loads DATASETS.TRAIN once: the resolution returns the dicts it loaded,
    and the trainer's split takes them instead of loading again."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from iif_d2 import add_iif_config
    from iif_d2.data.loader import training_dicts
    from iif_d2.data.training_set import resolve_training_run

    calls = []
    name = "iif_test_counted_tiny_train"

    def load():
        calls.append(name)
        return DatasetCatalog.get("iif_synthetic_tiny_train")

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, load)
    meta = MetadataCatalog.get("iif_synthetic_tiny_train")
    MetadataCatalog.get(name).set(thing_classes=meta.thing_classes)
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_list(["DATASETS.TRAIN", (name,), "MODEL.ROI_HEADS.NUM_CLASSES", 8])
    cfg.merge_from_list(["MODEL.ROI_BOX_HEAD.IIF.ENABLED", True, "OUTPUT_DIR", str(tmp_path)])
    cfg.MODEL.CLASS_COUNTS.SOURCE = "dataset"
    cfg, dicts = resolve_training_run(cfg)
    assert len(calls) == 1 and dicts == DatasetCatalog.get(name) and len(dicts) > 0
    train, heldout = training_dicts(cfg, dicts)
    assert len(calls) == 2 and heldout == [] and train is dicts  # (2: the check above)
    train_again, _ = training_dicts(cfg)  # none given: loaded
    assert len(calls) == 3 and train_again == train
    # the counts are resolved to the saved file: nothing to load, nothing returned
    assert resolve_training_run(cfg)[1] is None and len(calls) == 3
    assert resolve_training_run(cfg, training=False)[1] is None
    DatasetCatalog.remove(name)


def test_calibrated_backbone_keeps_resnet101_features_finite(rehearse):
    """Without pretrained weights ResNet-101's frozen BN normalises nothing (its features reach
    thousands, the loss overflows); the rehearsal's calibrated backbone keeps them near unit
    scale and is a checkpoint of the backbone's own keys."""
    import torch
    from detectron2.modeling import build_backbone

    config = os.path.join(ROOT, rehearse.CONFIG_DIR, "mask_rcnn_R_101_FPN_12e.yaml")
    cfg = rehearse._config(config, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    bottom_up = build_backbone(cfg).bottom_up
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        raw = bottom_up(x)["res5"].std().item()
    ckpt = rehearse.calibrated_backbone(cfg)
    assert all(k.startswith("backbone.bottom_up.") for k in ckpt["model"])
    state = {k[len("backbone.bottom_up.") :]: v for k, v in ckpt["model"].items()}
    bottom_up.load_state_dict(state)  # every key of the backbone, nothing else
    with torch.no_grad():
        calibrated = bottom_up(x)["res5"].std().item()
    assert calibrated < 100 and calibrated < raw / 10, (raw, calibrated)
