"""Training-set facts resolved once before the model is built: class counts of the full training
set, a FASA hold-out that never empties a class, the saved files, ``--eval-only`` without the
training annotations."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from iif_d2 import add_iif_config, iif_weights, resolve_training_set
from iif_d2.data.class_stats import count_dataset_dicts
from iif_d2.data.heldout import split_heldout
from iif_d2.engine.trainer import Trainer

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
RECIPE = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant_recipe.yaml")
ONE_IMAGE = "iif_tiny_one_image_classes_train"
SINGLE = (5, 6, 7)  # the classes that keep exactly one training image


def _one_image_class_dicts():
    """The tiny training set, with classes 5, 6 and 7 left in exactly one image each."""
    dicts = copy.deepcopy(DatasetCatalog.get("iif_synthetic_tiny_train"))
    first = {}  # class -> the one image that keeps it
    for d in dicts:
        anns = []
        for a in d["annotations"]:
            c = a["category_id"]
            if c in SINGLE and first.setdefault(c, d["image_id"]) != d["image_id"]:
                continue
            anns.append(a)
        d["annotations"] = anns
    return [d for d in dicts if d["annotations"]]


@pytest.fixture(scope="module", autouse=True)
def _register():
    if ONE_IMAGE not in DatasetCatalog.list():
        DatasetCatalog.register(ONE_IMAGE, _one_image_class_dicts)
        src = MetadataCatalog.get("iif_synthetic_tiny_train")
        MetadataCatalog.get(ONE_IMAGE).set(
            thing_classes=src.thing_classes, evaluator_type="lvis", json_file=src.json_file
        )


def _recipe(tmp_path, *opts):
    cfg = add_iif_config(get_cfg())
    cfg.merge_from_file(RECIPE)
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", (ONE_IMAGE,)])
    cfg.merge_from_list(["TEST.EVAL_PERIOD", 0, *opts])
    return cfg


def test_heldout_never_takes_a_class_last_image():
    dicts = [{"image_id": i, "annotations": [{"category_id": 0}]} for i in range(10)]
    dicts[4]["annotations"].append({"category_id": 1})  # class 1: one image only
    dicts[7]["annotations"] = [{"category_id": 2}, {"category_id": 2}]  # class 2: one image
    for seed in range(20):
        split = split_heldout(dicts, 0.9, 100, seed=seed)  # wants 9 of 10
        train_classes = {a["category_id"] for d in split.train for a in d["annotations"]}
        assert train_classes == {0, 1, 2}
        assert {4, 7}.isdisjoint(d["image_id"] for d in split.heldout)
        # 9 wanted; images 4 and 7 hold the last image of classes 1 and 2 and stay, so the
        # other 8 go (class 0 keeps image 4)
        assert len(split.heldout) == 8 and split.skipped_images == 2
        assert {1, 2} <= set(split.protected_classes) <= {0, 1, 2}


def test_recipe_starts_on_one_image_classes_with_full_set_weights(tmp_path):
    full = DatasetCatalog.get(ONE_IMAGE)
    counts = count_dataset_dicts(full, 8)
    assert [counts.image_counts[c] for c in SINGLE] == [1, 1, 1]
    # a hold-out as large as the tiny set allows: a plain random draw would empty a class
    cfg = resolve_training_set(
        _recipe(tmp_path, "DATASETS.HELDOUT.FRACTION", 0.6, "SOLVER.MAX_ITER", 3)
    )
    heldout = json.loads((tmp_path / "iif_heldout.json").read_text())
    assert heldout["num_heldout"] > 0 and heldout["skipped_images"] > 0
    trainer = Trainer(cfg)
    train_classes = {a["category_id"] for d in trainer._train_dicts for a in d["annotations"]}
    assert train_classes == set(range(8))  # every class keeps a training image
    assert len(trainer._heldout_dicts) == heldout["num_heldout"]
    # the weights are those of the full training set, before the hold-out
    f = counts.instance_counts  # the recipe: base10 IOF
    expected = iif_weights(f, sum(f), "base10")
    assert torch.equal(trainer.model.roi_heads.box_predictor.iif_weights, expected)
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER


def test_resolution_writes_facts_into_the_config(tmp_path):
    cfg = resolve_training_set(
        _recipe(tmp_path, "MODEL.ROI_BOX_HEAD.FASA.START_ITER", -1, "SOLVER.IMS_PER_BATCH", 2)
    )
    assert cfg.MODEL.CLASS_COUNTS.SOURCE == "file"
    assert cfg.MODEL.CLASS_COUNTS.FILE == str(tmp_path / "iif_class_stats.json")
    assert cfg.DATASETS.HELDOUT.IMAGE_IDS_FILE == str(tmp_path / "iif_heldout.json")
    held = json.loads((tmp_path / "iif_heldout.json").read_text())["num_heldout"]
    images = len(DatasetCatalog.get(ONE_IMAGE)) - held
    # one epoch with ceil repeat factors >= the images without repeats, at batch 2
    assert cfg.MODEL.ROI_BOX_HEAD.FASA.START_ITER >= (images + 1) // 2
    with pytest.raises(ValueError, match="unfrozen"):
        cfg.freeze()
        resolve_training_set(cfg)


def test_resume_with_other_counts_is_an_error(tmp_path):
    resolve_training_set(_recipe(tmp_path))
    other = _recipe(tmp_path, "DATASETS.TRAIN", ("iif_synthetic_tiny_train",))
    with pytest.raises(ValueError, match="other class counts"):
        resolve_training_set(other, resume=True)


def _train_net(*args, env=None):
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)


def test_eval_only_with_saved_config_needs_no_training_annotations(tmp_path):
    out = tmp_path / "run"
    quick = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant_iif.yaml")
    r = _train_net("--config-file", quick, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    saved = out / "config.yaml"
    assert "iif_class_stats.json" in saved.read_text()
    # the training set is no longer registered: a dataset name nobody knows
    r = _train_net(
        "--config-file",
        str(saved),
        "--eval-only",
        "DATASETS.TRAIN",
        "('no_such_training_set',)",
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
        "OUTPUT_DIR",
        str(tmp_path / "eval"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "eval" / "inference" / "results.json").exists()


@pytest.mark.parametrize(
    "opts, needs",
    [
        (["MODEL.ROI_HEADS.NAME", "StandardROIHeads"], "IIFStandardROIHeads"),
        (["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"], "IIFGeneralizedRCNN"),
        (["DATALOADER.SAMPLER_TRAIN", "TrainingSampler"], "RepeatFactorTrainingSampler"),
    ],
)
def test_settings_the_model_would_ignore_are_errors(tmp_path, opts, needs):
    """IIF on upstream StandardROIHeads would train plain softmax: an error instead."""
    cfg = resolve_training_set(_recipe(tmp_path, *opts))
    with pytest.raises(ValueError, match=needs):
        Trainer.build_model(cfg)


def test_checkpoint_for_other_class_count_is_an_error(tmp_path):
    from iif_d2.engine.trainer import checkpointer_for

    quick = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant.yaml")

    def cfg_with(num_classes, *opts):
        cfg = add_iif_config(get_cfg())
        cfg.merge_from_file(quick)
        cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "MODEL.ROI_HEADS.NUM_CLASSES", 8])
        cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", num_classes, *opts])
        return cfg

    small = Trainer.build_model(cfg_with(8))
    checkpointer_for(small, cfg_with(8)).save("eight")
    path = str(tmp_path / "eight.pth")
    other = cfg_with(5)
    model = build_model(other)  # detectron2's: a model for another (5-class) training set
    with pytest.raises(ValueError, match="WEIGHTS_ALLOW_SHAPE_MISMATCH"):
        checkpointer_for(model, other).load(path)
    allowed = cfg_with(5, "MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH", True)
    checkpointer_for(model, allowed).load(path)  # fine-tuning: skipped with a warning


def test_json_counts_beyond_what_training_sees_are_logged(caplog):
    """SOURCE 'json' uses the json's counts; where the training load dropped some of what they
    count, a warning names how many classes differ and points to SOURCE 'dataset'."""
    from iif_d2.data.class_stats import ClassStats
    from iif_d2.data.training_set import _log_json_counts_beyond_training

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.DATASETS.TRAIN = ("my_train",)
    box = {"bbox": [0, 0, 4, 4], "bbox_mode": 1, "category_id": 1}
    dicts = [{"image_id": 1, "annotations": [box]}]  # the json also has a dropped class-1 box
    json_counts = ClassStats([0, 1], [0, 2], 1, ["a", "b"], "l.json")
    with caplog.at_level("WARNING", logger="iif_d2.data.training_set"):
        _log_json_counts_beyond_training(json_counts, dicts, cfg)
    assert "l.json differ from those of the 1 training images for 1 class(es)" in caplog.text
    assert "(most: class 1, +1 instances in the json)" in caplog.text
    caplog.clear()
    same = ClassStats([0, 1], [0, 1], 1, ["a", "b"], "l.json")
    _log_json_counts_beyond_training(same, dicts, cfg)
    assert caplog.text == ""


@pytest.mark.parametrize("how", ["reversed", "another dataset"])
def test_counts_file_of_other_classes_is_an_error(tmp_path, how):
    """A counts file whose class names are the training set's in another order (or mostly
    others) would weight other classes; detectron2's LVIS first-synonym names (one differs
    from the counts' 'name') still pass."""
    src = MetadataCatalog.get("iif_synthetic_tiny_train")
    counts = resolve_training_set(_recipe(tmp_path / "a")).MODEL.CLASS_COUNTS.FILE
    data = json.loads(open(counts).read())
    names = list(src.thing_classes)
    renamed = names[::-1] if how == "reversed" else [f"other_{i}" for i in range(len(names))]
    for new_names, fails in ((renamed, True), ([*names[:-1], "synonym"], False)):
        path = tmp_path / f"{fails}.json"
        path.write_text(json.dumps({**data, "class_names": new_names}))
        cfg = _recipe(tmp_path / "b", "MODEL.CLASS_COUNTS.SOURCE", "file")
        cfg.merge_from_list(["MODEL.CLASS_COUNTS.FILE", str(path)])
        cfg.merge_from_list(["DATASETS.TRAIN", ("iif_synthetic_tiny_train",)])
        cfg.merge_from_list(["MODEL.ROI_BOX_HEAD.FASA.ENABLED", False])
        if fails:
            with pytest.raises(ValueError, match="counts classes (in another order|of other)"):
                resolve_training_set(cfg)
        else:
            resolve_training_set(cfg)
