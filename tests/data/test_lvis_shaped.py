"""LVIS-shaped: exact LVIS v1 class counts (full-size assignment; the reduced set end to end),
valid LVIS json for the lvis API and detectron2's loader, valid polygons, determinism, the
generation lock, and the generate/check tool."""

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import load_dev
from lvis import LVIS
from pycocotools import mask as mask_util

from iif_d2.data.lvis_shaped import (
    LVIS_SHAPED,
    LVIS_SHAPED_MINI,
    LVISShapedSpec,
    assign_classes,
    class_targets,
    dataset_dir,
    generate_lvis_shaped,
    register_lvis_shaped,
)

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
CSV = os.path.join(REPO, "iif_d2", "data", "lvis_v1_train.csv")
TINY = LVISShapedSpec(train_images=300, val_images=30, max_size=64, seed=3)


def read_csv():
    with open(CSV) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    rows.sort(key=lambda r: int(r["category_id"]))
    return rows


def json_counts(data, num_classes=1203):
    ann = np.array([(a["image_id"], a["category_id"] - 1) for a in data["annotations"]])
    pairs = np.unique(ann, axis=0)
    images = np.bincount(pairs[:, 1], minlength=num_classes)
    return images, np.bincount(ann[:, 1], minlength=num_classes), set(ann[:, 0].tolist())


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lvis_shaped"))
    folder = generate_lvis_shaped(root, LVIS_SHAPED_MINI)
    data = {}
    for split in ("train", "val"):
        with open(os.path.join(folder, f"{split}.json")) as f:
            data[split] = json.load(f)
    return root, folder, data


def test_full_size_assignment_equals_csv():
    rows = read_csv()
    images = np.array([int(r["image_count"]) for r in rows])
    instances = np.array([int(r["instance_count"]) for r in rows])
    k, n = class_targets(LVIS_SHAPED, "train")
    assert (k == images).all() and (n == instances).all()
    image, cls, count = assign_classes(k, n, 100_170, np.random.default_rng(0))
    assert len(np.unique(image * 2000 + cls)) == len(image)  # distinct (image, class) pairs
    assert (np.bincount(cls, minlength=1203) == images).all()
    assert (np.bincount(cls, weights=count, minlength=1203) == instances).all()
    assert count.min() >= 1 and count.sum() == 1_270_141
    assert len(np.unique(image)) == 100_170 and image.max() == 100_169  # no empty image
    per_image = np.bincount(image)
    assert per_image.max() > 2 * per_image.mean()  # a spread, not round robin


def test_mini_counts_are_the_targets(mini):
    _, _, data = mini
    rows = read_csv()
    for split, n_images in (("train", 2000), ("val", 200)):
        images, instances, annotated = json_counts(data[split])
        want_images, want_instances = class_targets(LVIS_SHAPED_MINI, split)
        assert (images == want_images).all() and (instances == want_instances).all()
        assert len(data[split]["images"]) == n_images
        assert annotated == {img["id"] for img in data[split]["images"]}  # none empty
        assert images.min() >= 1
    images, instances, _ = json_counts(data["train"])
    assert (images == 1).sum() >= 100  # many one-image classes
    assert images.max() > 30 and instances.max() > images.max()
    cats = data["train"]["categories"]
    assert cats == data["val"]["categories"]
    assert [c["id"] for c in cats] == list(range(1, 1204))
    assert [c["name"] for c in cats] == [r["name"] for r in rows]
    assert [c["frequency"] for c in cats] == [r["frequency"] for r in rows]  # LVIS's groups
    assert [c["image_count"] for c in cats] == images.tolist()
    assert [c["instance_count"] for c in cats] == instances.tolist()
    for c in cats[:5]:
        assert {"synset", "synonyms", "def"} <= set(c) and c["synonyms"][0] == c["name"]


def test_lvis_api_loads(mini):
    _, folder, _ = mini
    for split, n_images in (("train", 2000), ("val", 200)):
        api = LVIS(os.path.join(folder, f"{split}.json"))
        assert len(api.get_cat_ids()) == 1203 and len(api.get_img_ids()) == n_images


def test_detectron2_loader_and_images(mini):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image

    root, folder, data = mini
    register_lvis_shaped("test_lvis_shaped_mini", root, LVIS_SHAPED_MINI)
    meta = MetadataCatalog.get("test_lvis_shaped_mini_val")
    assert meta.evaluator_type == "lvis" and len(meta.thing_classes) == 1203
    assert meta.json_file == os.path.join(folder, "val.json") and meta.image_root == folder
    for split in ("train", "val"):
        dicts = DatasetCatalog.get(f"test_lvis_shaped_mini_{split}")
        assert len(dicts) == len(data[split]["images"])
        by_id = {img["id"]: img for img in data[split]["images"]}
        for d in dicts[:: max(1, len(dicts) // 60)]:
            img = by_id[d["image_id"]]
            # newer detectron2 joins image_root and file_name: the same file
            assert os.path.normpath(d["file_name"]) == os.path.join(folder, img["file_name"])
            assert read_image(d["file_name"], "BGR").shape == (d["height"], d["width"], 3)
            assert d["annotations"] and set(d["neg_category_ids"]) == set(img["neg_category_ids"])
            assert all(0 <= a["category_id"] < 1203 for a in d["annotations"])


def test_polygons_inside_images_with_matching_box_and_area(mini):
    _, _, data = mini
    for split in ("train", "val"):
        sizes = {img["id"]: (img["height"], img["width"]) for img in data[split]["images"]}
        assert min(min(s) for s in sizes.values()) >= 32
        assert max(max(s) for s in sizes.values()) <= 128
        anns = data[split]["annotations"]
        assert all(len(a["segmentation"]) == 1 for a in anns)
        polys = [a["segmentation"][0] for a in anns]
        lengths = np.array([len(p) for p in polys])
        assert lengths.min() >= 6 and (lengths % 2 == 0).all()
        xy = np.concatenate(polys).reshape(-1, 2)  # every vertex, polygon after polygon
        starts = np.concatenate([[0], np.cumsum(lengths // 2)[:-1]])
        owner = np.repeat(np.arange(len(anns)), lengths // 2)
        hw = np.array([sizes[a["image_id"]] for a in anns])[owner]
        assert xy.min() >= 0 and (xy[:, 0] <= hw[:, 1]).all() and (xy[:, 1] <= hw[:, 0]).all()
        low = np.stack([np.minimum.reduceat(xy[:, d], starts) for d in (0, 1)], 1)
        high = np.stack([np.maximum.reduceat(xy[:, d], starts) for d in (0, 1)], 1)
        boxes = np.array([a["bbox"] for a in anns])
        assert np.allclose(boxes, np.concatenate([low, high - low], 1), atol=1e-6)
        following = np.arange(len(xy)) + 1  # the next vertex of the same polygon, cyclically
        following[np.cumsum(lengths // 2) - 1] = starts
        cross = xy[:, 0] * xy[following, 1] - xy[following, 0] * xy[:, 1]
        shoelace = 0.5 * np.abs(np.add.reduceat(cross, starts))
        areas = np.array([a["area"] for a in anns])
        assert np.allclose(areas, shoelace, atol=0.01) and areas.min() > 1
        for a in anns[::97]:  # rasterised, the mask is not empty
            h, w = sizes[a["image_id"]]
            rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))
            assert mask_util.decode(rle).sum() > 0


def test_negative_and_not_exhaustive_lists(mini):
    _, _, data = mini
    for split in ("train", "val"):
        present = {}
        for a in data[split]["annotations"]:
            present.setdefault(a["image_id"], set()).add(a["category_id"])
        n_neg = n_partial = 0
        for img in data[split]["images"]:
            neg, partial = set(img["neg_category_ids"]), set(img["not_exhaustive_category_ids"])
            assert not neg & present[img["id"]] and partial <= present[img["id"]]
            assert neg <= set(range(1, 1204))
            n_neg, n_partial = n_neg + len(neg), n_partial + len(partial)
        assert n_neg > 5 * len(data[split]["images"]) and n_partial > 0


def digest(folder):
    h = hashlib.sha1()
    for parent, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            with open(os.path.join(parent, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_deterministic_locked_and_cached(tmp_path):
    # two processes at once: one generates, the other waits for it
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO); import iif_d2; "
        "from iif_d2.data.lvis_shaped import LVISShapedSpec, generate_lvis_shaped; "
        f"print(generate_lvis_shaped(sys.argv[1], LVISShapedSpec(**{dataclasses.asdict(TINY)})))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "a")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    folder = dataset_dir(str(tmp_path / "a"), TINY)
    assert [out.strip() for out, _ in outputs] == [folder, folder]
    assert sum(err.count("Generating the LVIS-shaped") for _, err in outputs) == 1
    assert sorted(p for p in os.listdir(tmp_path / "a") if not p.endswith(".lock")) == [
        os.path.basename(folder)
    ]  # published by rename, no temporary folder left
    stamp = os.path.getmtime(os.path.join(folder, "train.json"))
    assert generate_lvis_shaped(str(tmp_path / "a"), TINY) == folder  # cached
    assert os.path.getmtime(os.path.join(folder, "train.json")) == stamp
    again = generate_lvis_shaped(str(tmp_path / "b"), TINY)
    assert digest(again) == digest(folder)  # same seed: the same bytes, json and images
    other = generate_lvis_shaped(str(tmp_path / "c"), dataclasses.replace(TINY, seed=4))
    assert other != folder.replace(str(tmp_path / "a"), str(tmp_path / "c"))
    with open(os.path.join(other, "train.json"), "rb") as f1:
        with open(os.path.join(folder, "train.json"), "rb") as f2:
            assert f1.read() != f2.read()


def test_bad_input_errors():
    with pytest.raises(ValueError, match="cannot cover 5 images"):
        assign_classes([1, 2], [1, 2], 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"in \[1, num_images=2\]"):
        assign_classes([3, 1], [3, 1], 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="need >= 1 per image"):
        assign_classes([2, 1], [1, 1], 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_size <= max_size"):
        LVISShapedSpec(min_size=100, max_size=64)
    with pytest.raises(ValueError, match="train_images >= 1"):
        LVISShapedSpec(train_images=0)
    with pytest.raises(ValueError, match="'train' or 'val'"):
        class_targets(LVIS_SHAPED, "test")


def generate_tool():
    return load_dev("generate_lvis_shaped", "generate_lvis_shaped_tool")


def test_tool_reports_ok_mismatch_and_errors(mini, tmp_path, capsys):
    root, folder, data = mini
    tool = generate_tool()
    assert tool.main(["--mini", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "generation: cached" in out and "disk use: 2203 files" in out
    assert "OK: 1203 classes" in out
    # one annotation moved to another class: the tool names the first class that differs
    copy = dataset_dir(str(tmp_path), LVIS_SHAPED_MINI)
    os.makedirs(copy)
    shutil.copy(os.path.join(folder, "spec.json"), copy)
    train = dict(data["train"], annotations=[dict(a) for a in data["train"]["annotations"]])
    moved = train["annotations"][0]
    moved["category_id"] = moved["category_id"] % 1203 + 1
    with open(os.path.join(copy, "train.json"), "w") as f:
        json.dump(train, f)
    assert tool.main(["--mini", "--root", str(tmp_path)]) == 1
    first = min(moved["category_id"], data["train"]["annotations"][0]["category_id"])
    assert f"MISMATCH vs scaled targets: class {first} " in capsys.readouterr().out
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert tool.main(["--mini", "--root", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("generate_lvis_shaped: error:") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        tool.main(["--help"])
    assert e.value.code == 0 and "--mini" in capsys.readouterr().out


def test_lvis_evaluation_scores_ground_truth_100_and_uses_negatives(mini):
    from lvis import LVISEval, LVISResults

    from iif_d2.utils.compat import numpy_float_alias

    _, folder, data = mini
    val = data["val"]
    gt = LVIS(os.path.join(folder, "val.json"))
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"]}
        for a in val["annotations"]
    ]
    present = {(a["image_id"], a["category_id"]) for a in val["annotations"]}
    c, negative = next((c, img["id"]) for img in val["images"] for c in img["neg_category_ids"])
    unverified = next(
        img["id"]
        for img in val["images"]
        if c not in img["neg_category_ids"] and (img["id"], c) not in present
    )
    cats = sorted({c} | {a["category_id"] for a in val["annotations"][:150]})
    assert {gt.cats[k]["frequency"] for k in cats} == {"r", "c", "f"}

    def ap(extra):
        results = [dict(d, score=0.9) for d in dets] + extra
        with numpy_float_alias():
            ev = LVISEval(gt, LVISResults(gt, results), "bbox")
            ev.params.cat_ids = cats
            ev.run()
        return ev.results

    assert all(ap([])[k] == pytest.approx(1.0) for k in ("AP", "APr", "APc", "APf"))
    false = {"category_id": c, "bbox": [1.0, 1.0, 9.0, 9.0], "score": 1.0}
    # a false positive counts only where the class is a verified negative
    assert ap([dict(false, image_id=unverified)])["AP"] == pytest.approx(1.0)
    assert ap([dict(false, image_id=negative)])["AP"] < 1.0
