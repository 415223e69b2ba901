"""FashionLT: the declared long tail and LVIS groups, masks inside their boxes, determinism,
detectron2's LVIS loader, the missing-files error, and a few Mask R-CNN steps on the tiny set.
Skipped where the Fashion-MNIST files are absent (Debian's dataset-fashion-mnist)."""

import dataclasses
import filecmp
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_util

from iif_d2.classification import fashion_mnist
from iif_d2.data import FASHIONLT, FASHIONLT_TINY
from iif_d2.data.fashion_lt import (
    LABEL_NAMES,
    class_names,
    ensure_generated,
    load_items,
    train_image_counts,
)
from iif_d2.data.lvis_json import frequency_group

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def _have_files():
    try:
        fashion_mnist.find_fashion_mnist(
            os.path.join(os.environ["DETECTRON2_DATASETS"], "fashion_mnist")
        )
        return True
    except fashion_mnist.FashionMNISTNotFound:
        return False


needs_files = pytest.mark.skipif(
    not _have_files(), reason="Fashion-MNIST files absent (apt-get install dataset-fashion-mnist)"
)


def _load(root):
    out = []
    for split in ("train", "val"):
        with open(os.path.join(root, f"{split}.json")) as f:
            out.append(json.load(f))
    return out


@pytest.fixture(scope="module")
def fashionlt():
    # where fashionlt_train / fashionlt_val are registered: generated once for the suite
    root = os.path.join(os.environ["DETECTRON2_DATASETS"], "fashionlt")
    ensure_generated(FASHIONLT, root)
    return (root, *_load(root))


@pytest.fixture(scope="module")
def tiny():
    root = os.path.join(os.environ["DETECTRON2_DATASETS"], "fashionlt_tiny")
    ensure_generated(FASHIONLT_TINY, root)
    return (root, *_load(root))


def test_names_are_fashion_mnist_labels():
    assert LABEL_NAMES == fashion_mnist.CLASSES
    assert sorted(class_names()) == sorted(fashion_mnist.CLASSES)


def test_declared_profile_has_lvis_groups():
    counts = train_image_counts(FASHIONLT)
    assert counts == [300, 180, 108, 65, 39, 23, 14, 8, 5, 3]
    groups = dict(zip(class_names(), map(frequency_group, counts)))
    # look-alikes fall in different groups: the rare one beside a frequent or common one
    assert groups["Shirt"] == "r" and groups["T-shirt/top"] == "f" and groups["Pullover"] == "c"
    assert groups["Coat"] == "r"
    assert groups["Ankle boot"] == "r" and groups["Sneaker"] == "f" and groups["Sandal"] == "c"


def test_missing_files_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError) as e:
        load_items("train")
    msg = str(e.value)
    assert "\n" not in msg and "dataset-fashion-mnist" in msg
    assert os.path.join(str(tmp_path), "fashion_mnist") in msg


@needs_files
def test_counts_match_the_declared_long_tail(fashionlt):
    _, train, val = fashionlt
    cats = train["categories"]
    assert [c["name"] for c in cats] == class_names()
    assert [c["image_count"] for c in cats] == train_image_counts(FASHIONLT)
    images = {}
    for a in train["annotations"]:
        images.setdefault(a["category_id"], set()).add(a["image_id"])
    assert [len(images[c["id"]]) for c in cats] == train_image_counts(FASHIONLT)
    assert [c["frequency"] for c in cats] == list("fffccccrrr")
    assert [c["instance_count"] for c in cats] == [
        sum(a["category_id"] == c["id"] for a in train["annotations"]) for c in cats
    ]
    assert any(c["instance_count"] > c["image_count"] for c in cats)  # IOF differs from IIF
    per_class = {c["id"]: 0 for c in cats}
    for a in val["annotations"]:
        per_class[a["category_id"]] += 1
    assert min(per_class.values()) >= 50  # stable per-group AP: every class >= 50 val garments
    present = {}
    for a in val["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    for img in val["images"]:  # exhaustively annotated
        assert set(img["neg_category_ids"]) == set(per_class) - present[img["id"]]
        assert img["not_exhaustive_category_ids"] == []


@needs_files
def test_masks_non_empty_and_inside_their_boxes(tiny):
    root, train, val = tiny
    for data in (train, val):
        sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
        for a in data["annotations"]:
            h, w = sizes[a["image_id"]]
            assert a["segmentation"] and a["area"] >= 12
            m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
            ys, xs = np.nonzero(m)
            assert len(ys) > 0
            x0, y0, bw, bh = a["bbox"]
            assert xs.min() >= x0 - 1 and xs.max() <= x0 + bw and ys.min() >= y0 - 1
            assert ys.max() <= y0 + bh
    for img in train["images"] + val["images"]:
        assert os.path.exists(os.path.join(root, *img["coco_url"].split("/")[-2:]))


@needs_files
def test_garments_are_real_pixels_not_flat(tiny):
    from PIL import Image

    root, train, _ = tiny
    img = train["images"][0]
    arr = np.asarray(Image.open(os.path.join(root, "train", "000001.png")).convert("L"))
    a = next(a for a in train["annotations"] if a["image_id"] == img["id"])
    m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], 96, 96)))
    assert arr[m.astype(bool)].std() > 5  # the photo's grey levels, not one colour
    assert arr[~m.astype(bool)].std() > 3  # the background is not uniform


@needs_files
def test_deterministic_from_seed(tmp_path, tiny):
    root, _, _ = tiny
    ensure_generated(FASHIONLT_TINY, str(tmp_path / "a"))
    for split in ("train", "val"):
        assert filecmp.cmp(os.path.join(root, f"{split}.json"), tmp_path / "a" / f"{split}.json")
        names = sorted(os.listdir(tmp_path / "a" / split))
        assert names and names == sorted(os.listdir(os.path.join(root, split)))
        for n in names:
            assert filecmp.cmp(os.path.join(root, split, n), tmp_path / "a" / split / n, False)
    ensure_generated(dataclasses.replace(FASHIONLT_TINY, seed=1), str(tmp_path / "b"))
    assert not filecmp.cmp(tmp_path / "a" / "train.json", tmp_path / "b" / "train.json", False)


@needs_files
def test_loads_through_detectron2_lvis_loader(tiny):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts = DatasetCatalog.get("fashionlt_tiny_train")
    _, train, _ = tiny
    assert len(dicts) == len(train["images"])
    assert sum(len(d["annotations"]) for d in dicts) == len(train["annotations"])
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= set(range(10))
    assert all(os.path.exists(d["file_name"]) for d in dicts)
    meta = MetadataCatalog.get("fashionlt_tiny_val")
    assert meta.evaluator_type == "lvis" and meta.thing_classes == class_names()


@pytest.mark.slow
@needs_files
def test_mask_rcnn_steps_on_tiny(tmp_path, tiny):
    from detectron2.config import get_cfg

    from iif_d2 import add_iif_config, resolve_training_set
    from iif_d2.engine.trainer import Trainer

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(
        os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant_iif.yaml")
    )
    cfg.merge_from_list(
        ["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 3, "DATASETS.TRAIN",
         ("fashionlt_tiny_train",), "DATASETS.TEST", ("fashionlt_tiny_val",),
         "MODEL.ROI_HEADS.NUM_CLASSES", 10]
    )  # fmt: skip
    trainer = Trainer(resolve_training_set(cfg))
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = trainer.storage.latest()
    assert np.isfinite(losses["total_loss"][0]) and losses["loss_mask"][0] > 0
    assert os.path.exists(tmp_path / "model_final.pth")
