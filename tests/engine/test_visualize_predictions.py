"""iif_d2.engine.visualize: a tiny IIF model trained one step, then drawn from its run folder
alone (the command line over it: tests/tools/test_visualize.py)."""

import os
import pickle

import numpy as np
import pytest
import torch
from helpers import ROOT, Mkdir, copy_run
from PIL import Image

import iif_d2
from iif_d2 import add_iif_config
from iif_d2.engine.visualize import (
    build_predictor,
    dataset_items,
    load_run_config,
    output_names,
    visualize,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as train_net.py leaves it: config.yaml, iif_class_stats.json, a checkpoint."""
    from detectron2.config import get_cfg

    from iif_d2.engine.trainer import Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(
        os.path.join(ROOT, "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_iif.yaml")
    )
    cfg.merge_from_list(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", 1])
    iif_d2.resolve_training_set(cfg)  # as train_net.py's setup does
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (out / "model_final.pth").exists() and (out / "iif_class_stats.json").exists()
    # the training set is not needed any more: a config naming a dataset that does not exist
    # still visualises, since the counts come from the run's iif_class_stats.json
    cfg.DATASETS.TRAIN = ("not_registered_train",)
    (out / "config.yaml").write_text(cfg.dump())
    return out


def _panels(path):
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = img.shape
    assert w == 2 * h  # the tiny set's images are square: two square panels side by side
    return img[:, : w // 2], img[:, w // 2 :]


def test_predictions_beside_ground_truth_from_the_run_folder(run_dir, tmp_path):
    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # one step: scores are low
    cfg = load_run_config(str(run_dir / "model_final.pth"), opts=opts, device="cpu")
    assert cfg.MODEL.WEIGHTS.endswith("model_final.pth")
    shown = visualize(cfg, str(tmp_path / "all"), dataset="iif_synthetic_tiny_val", num=2,
                           score_thresh=0.0, scale=2.0)  # fmt: skip
    none = visualize(cfg, str(tmp_path / "none"), dataset="iif_synthetic_tiny_val", num=2,
                          score_thresh=1.01, scale=2.0)  # fmt: skip
    assert len(shown) == len(none) == 2
    for a, b in zip(shown, none):
        assert os.path.basename(a) == os.path.basename(b)
        assert Image.open(a).size == (2 * 2 * 96, 2 * 96)  # 96-pixel images at scale 2
        pred, gt = _panels(a)
        pred_none, gt_none = _panels(b)
        assert not np.array_equal(pred, gt)
        assert np.array_equal(gt, gt_none)  # the ground truth does not depend on the threshold
        assert not np.array_equal(pred, pred_none)  # predictions were drawn


def test_counts_come_from_the_run_folder(run_dir):
    cfg = load_run_config(str(run_dir / "model_final.pth"), device="cpu")
    node = cfg.MODEL.CLASS_COUNTS if "CLASS_COUNTS" in cfg.MODEL else cfg.MODEL.ROI_BOX_HEAD.IIF
    keys = ("SOURCE", "FILE") if "CLASS_COUNTS" in cfg.MODEL else ("COUNTS_SOURCE", "COUNTS_FILE")
    assert node[keys[0]] == "file"
    assert node[keys[1]] == os.path.join(str(run_dir), "iif_class_stats.json")


def test_weights_are_read_by_the_safe_loaders(run_dir, tmp_path):
    """A .pkl whose unpickling would call os.mkdir is refused (detectron2's checkpointer would
    have run it); a checkpoint that trains none of the model's parameters is refused too."""
    sentinel = tmp_path / "sentinel"
    state = torch.load(run_dir / "model_final.pth", weights_only=True)["model"]
    weights = {k: v.numpy() for k, v in state.items()}
    evil = copy_run(run_dir, tmp_path / "evil") / "model_final.pkl"
    evil.write_bytes(pickle.dumps({"model": weights, "__author__": "x", "p": Mkdir(sentinel)}))
    with pytest.raises(pickle.UnpicklingError, match="Refusing to load.*mkdir"):
        build_predictor(load_run_config(str(evil), device="cpu"))
    assert not sentinel.exists()
    # the same arrays without the payload load through the same path
    good = evil.with_name("good.pkl")
    good.write_bytes(pickle.dumps({"model": weights, "__author__": "x"}))
    model = build_predictor(load_run_config(str(good), device="cpu")).model
    assert all(torch.equal(model.state_dict()[k].cpu(), v) for k, v in state.items())
    # a checkpoint of the backbone alone: refused, not drawn with random heads
    backbone = evil.with_name("backbone.pth")
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("backbone.")}}, backbone)
    with pytest.raises(ValueError, match="holds no weights for .* parameters"):
        build_predictor(load_run_config(str(backbone), device="cpu"))


def test_output_onto_the_input_folder_is_refused(run_dir, tmp_path):
    """--output naming the --input folder (also through a symlink) would replace the images
    of the same name: refused, the images unchanged."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(images / "a.png")
    before = (images / "a.png").read_bytes()
    (tmp_path / "link").symlink_to(images)
    cfg = load_run_config(str(run_dir / "model_final.pth"), device="cpu")
    for out in (images, tmp_path / "link"):
        with pytest.raises(ValueError, match="is the --input folder"):
            visualize(cfg, str(out), input_dir=str(images))
    assert (images / "a.png").read_bytes() == before and os.listdir(images) == ["a.png"]


def test_images_of_one_stem_are_drawn_to_distinct_pngs(run_dir, tmp_path):
    """a.jpg and a.png in one folder: a_jpg.png and a_png.png (not one over the other); a
    stem of its own keeps its name; two images that would still share a name: an error before
    anything is drawn."""
    images = tmp_path / "images"
    images.mkdir()
    for name, grey in (("a.jpg", 60), ("a.png", 200), ("b.png", 128)):
        Image.fromarray(np.full((32, 32, 3), grey, np.uint8)).save(images / name)
    cfg = load_run_config(str(run_dir / "model_final.pth"), device="cpu")
    out = tmp_path / "out"
    written = visualize(cfg, str(out), input_dir=str(images), num=3, scale=1)
    assert sorted(os.listdir(out)) == ["a_jpg.png", "a_png.png", "b.png"]
    assert sorted(os.path.basename(p) for p in written) == sorted(os.listdir(out))
    # the input panel of each: its own image
    assert _panels(out / "a_jpg.png")[1].mean() < 100 < _panels(out / "a_png.png")[1].mean()
    with pytest.raises(ValueError, match="x/a.jpg and y/a.jpg would both be drawn to a_jpg.png"):
        output_names(["x/a.jpg", "y/a.jpg"])


def test_an_unknown_dataset_names_close_matches_only():
    """Not the list of every registered dataset: up to 3 close names, or how to register one."""
    with pytest.raises(KeyError) as e:
        dataset_items("synthlt_vall", 2)
    message = e.value.args[0]
    assert "'synthlt_vall' is not a registered dataset; did you mean synthlt_val" in message
    assert len(message) < 200 and "coco_2017_train" not in message
    with pytest.raises(KeyError, match="Register it first .* or draw a folder of images"):
        dataset_items("no_such_ds", 2)


def test_a_model_of_another_architecture_is_one_line(run_dir, tmp_path):
    """A RetinaNet config with the Mask R-CNN run's weights: the one-line error of
    build_predictor, without detectron2's many-line listing of the missing keys."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("fvcore.common.checkpoint")
    logger.addHandler(handler)
    config = os.path.join(ROOT, "configs/quick_schedules/retinanet_R_18_FPN_instant_iif.yaml")
    try:
        cfg = load_run_config(str(run_dir / "model_final.pth"), config, device="cpu")
        with pytest.raises(ValueError, match="holds no weights for .* it is not a trained model"):
            build_predictor(cfg)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "not found in the checkpoint" in r.getMessage()]
