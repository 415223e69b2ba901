"""tools/rehearse.py on the reduced LVIS-shaped set: the decoupled config (and the stage-1 config
it needs, run first) trains one step in train_net.py subprocesses and is evaluated; the rows
hold the report's keys, and the saved class counts equal the mini spec's targets.

The full-size generator's class counts equal lvis_v1_train.csv: tests/test_lvis_shaped.py
(test_full_size_assignment_equals_csv); the full-size rehearsal is ``make rehearse``."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "rehearse.py")
KEYS = {
    "config", "started", "completed", "error", "seconds_to_first_iter", "peak_rss_mb",
    "counts_match_csv", "iterations", "epoch_images", "heldout", "evaluated",
}  # fmt: skip


@pytest.fixture(scope="module")
def rehearse():
    spec = importlib.util.spec_from_file_location("rehearse", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_leaf_configs_every_non_base_yaml_stage1_first(rehearse):
    every = rehearse.leaf_configs()
    folder = os.path.join(ROOT, rehearse.CONFIG_DIR)
    leaves = {f for f in os.listdir(folder) if f.endswith(".yaml") and not f.startswith("Base-")}
    assert {os.path.basename(c) for c in every} == leaves and len(every) == len(leaves)
    names = [os.path.basename(c) for c in every]
    assert names.index(rehearse.STAGE1) < names.index("mask_rcnn_R_50_FPN_1x_iif_decoupled.yaml")
    only = [os.path.basename(c) for c in rehearse.leaf_configs(["decoupled"])]
    assert only == [rehearse.STAGE1, "mask_rcnn_R_50_FPN_1x_iif_decoupled.yaml"]
    assert [os.path.basename(c) for c in rehearse.leaf_configs(["*recipe.yaml"])] == [
        "cascade_mask_rcnn_R_50_FPN_2x_recipe.yaml",
        "mask_rcnn_R_101_FPN_2x_recipe.yaml",
        "mask_rcnn_R_50_FPN_2x_recipe.yaml",
    ]


def test_bad_arguments_exit_with_a_message(rehearse):
    with pytest.raises(SystemExit):
        rehearse.parse_args(["--iters", "0"])


def test_mini_rehearsal_decoupled_from_its_stage1(tmp_path):
    out = tmp_path / "report"
    cmd = [
        sys.executable, TOOL, "--mini", "--only", "decoupled", "--iters", "1",
        "--val-images", "1", "--size", "32", "--threads", "1", "--output", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "mini" / "rehearsal.json").read_text())
    assert [os.path.basename(r["config"]) for r in rows] == [
        "mask_rcnn_R_50_FPN_1x.yaml",
        "mask_rcnn_R_50_FPN_1x_iif_decoupled.yaml",
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
    log = (out / "mini" / "mask_rcnn_R_50_FPN_1x_iif_decoupled" / "log.txt").read_text()
    assert "mask_rcnn_R_50_FPN_1x/model_final.pth" in log  # stage 2 loaded stage 1
    assert "Decoupled training: only the box classifier is trained" in log
    assert not list((out / "mini").glob("*/*.pth"))  # checkpoints removed
    md = (out / "mini" / "rehearsal.md").read_text()
    assert "| mask_rcnn_R_50_FPN_1x_iif_decoupled.yaml | yes | yes |" in md
