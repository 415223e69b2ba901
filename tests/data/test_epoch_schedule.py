"""SOLVER.EPOCH_SCHEDULE: a schedule in epochs resolved once into SOLVER.MAX_ITER / STEPS, an
epoch counted as the paper's code counts it (after FASA's hold-out, ceil repeat factors)."""

import json
import math
import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.data.training_set import check_schedule_opts

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
RECIPE = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant_recipe.yaml")
TRAIN = "iif_synthetic_tiny_train"


def _cfg(tmp_path, *opts):
    cfg = add_iif_config(get_cfg())
    cfg.merge_from_file(RECIPE)
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", (TRAIN,)])
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", 2, *opts])
    return cfg


def _epochs(tmp_path, epochs, steps=(), *opts):
    """The quick recipe with its schedule in epochs (its SOLVER.MAX_ITER 6 is then replaced)."""
    return _cfg(
        tmp_path,
        *("SOLVER.EPOCH_SCHEDULE.EPOCHS", epochs, "SOLVER.EPOCH_SCHEDULE.STEPS", steps),
        *opts,
    )


def _hand_count(dicts, threshold):
    """Images of one epoch with ceil repeat factors, written out: f(c) is the share of images
    holding class c, r(c) = max(1, sqrt(t / f(c))), r(I) = max over I's classes, ceil(r(I))."""
    classes = [
        {a["category_id"] for a in d["annotations"] if not a.get("iscrowd", 0)} for d in dicts
    ]
    images_of = {}
    for cs in classes:
        for c in cs:
            images_of[c] = images_of.get(c, 0) + 1
    r = {c: max(1.0, math.sqrt(threshold / (n / len(dicts)))) for c, n in images_of.items()}
    return sum(math.ceil(max((r[c] for c in cs), default=1.0)) for cs in classes)


def test_epochs_are_counted_after_the_holdout_with_ceil_repeats(tmp_path):
    cfg = resolve_training_set(_epochs(tmp_path, 3, (2,)))
    held = set(json.loads((tmp_path / "iif_heldout.json").read_text())["image_ids"])
    assert held  # the recipe holds images out for FASA
    train = [d for d in DatasetCatalog.get(TRAIN) if d["annotations"] and d["image_id"] not in held]
    images = _hand_count(train, cfg.DATALOADER.REPEAT_THRESHOLD)
    assert images > len(train)  # rare classes are repeated
    per_epoch = math.ceil(images / 2)
    assert cfg.SOLVER.MAX_ITER == 3 * per_epoch
    assert tuple(cfg.SOLVER.STEPS) == (2 * per_epoch,)
    # FASA's "one epoch" is the same epoch
    fasa = _cfg(tmp_path / "fasa", "MODEL.ROI_BOX_HEAD.FASA.START_ITER", -1)
    assert resolve_training_set(fasa).MODEL.ROI_BOX_HEAD.FASA.START_ITER == per_epoch


def test_without_epochs_the_schedule_is_left_alone(tmp_path):
    cfg = resolve_training_set(_cfg(tmp_path))
    assert cfg.SOLVER.MAX_ITER == 6


def test_the_resolved_schedule_is_saved_with_the_run(tmp_path):
    from iif_d2.engine.trainer import setup

    class Args:
        config_file = RECIPE
        opts = ["OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", (TRAIN,), "MODEL.DEVICE", "cpu",
                "SOLVER.IMS_PER_BATCH", 2, "SOLVER.EPOCH_SCHEDULE.EPOCHS", 2]  # fmt: skip
        eval_only = False
        resume = False
        num_gpus = 1

    cfg = setup(Args())
    saved = add_iif_config(get_cfg())
    saved.merge_from_file(str(tmp_path / "config.yaml"))
    assert saved.SOLVER.MAX_ITER == cfg.SOLVER.MAX_ITER > 6
    # the saved config trains again to the same schedule (its MAX_ITER is the resolved one)
    saved.merge_from_list(["OUTPUT_DIR", str(tmp_path / "again")])
    assert resolve_training_set(saved).SOLVER.MAX_ITER == cfg.SOLVER.MAX_ITER


def test_an_iteration_schedule_on_the_command_line_beside_epochs_is_an_error(tmp_path):
    cfg = _epochs(tmp_path, 3)
    with pytest.raises(ValueError, match="EPOCH_SCHEDULE.EPOCHS 0 to train in iterations"):
        check_schedule_opts(cfg, ["SOLVER.MAX_ITER", "1000", "SEED", "1"])
    check_schedule_opts(cfg, ["SEED", "1"])
    # a config file's MAX_ITER is replaced by the epochs (the quick recipe sets 6)
    assert (
        resolve_training_set(_cfg(tmp_path, "SOLVER.EPOCH_SCHEDULE.EPOCHS", 3)).SOLVER.MAX_ITER > 6
    )


@pytest.mark.parametrize(
    "opts, match",
    [
        (["SOLVER.EPOCH_SCHEDULE.STEPS", (16, 22)], "EPOCHS is 0"),
        ([24, (22, 16)], "increase"),
        ([24, (24,)], "within"),
        ([-1], ">= 0"),
    ],
)
def test_bad_schedules_are_errors(tmp_path, opts, match):
    with pytest.raises(ValueError, match=match):
        resolve_training_set(
            _epochs(tmp_path, *opts) if isinstance(opts[0], int) else _cfg(tmp_path, *opts)
        )


def test_the_rehearsal_resolves_the_recipe_to_24_repeat_counted_epochs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "rehearse_schedules", os.path.join(REPO, "dev", "rehearse_schedules.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from iif_d2.data.lvis_shaped import LVIS_SHAPED_MINI

    dataset = tool.register_layout(LVIS_SHAPED_MINI)
    recipe = "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_24e_recipe.yaml"
    assert recipe in tool.lvis_configs()
    epochs, steps, images, per_epoch, max_iter, solver_steps = tool.resolved_schedule(
        recipe, dataset, str(tmp_path)
    )
    held = set(json.loads((tmp_path / "iif_heldout.json").read_text())["image_ids"])
    train = [d for d in DatasetCatalog.get(dataset) if d["image_id"] not in held]
    assert images == _hand_count(train, 0.001) > len(train)  # LVIS's rare classes repeat
    assert per_epoch == math.ceil(images / 16)
    assert (epochs, steps) == (24, (16, 22))
    assert (max_iter, solver_steps) == (24 * per_epoch, (16 * per_epoch, 22 * per_epoch))
