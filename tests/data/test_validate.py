"""iif_d2.data.validate: broken training dicts end in an error naming the dataset, the image
and the annotation; what detectron2 drops in training is dropped at load, counted, logged and
left out of the class statistics."""

import copy
import json
import logging
import math
import os

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from iif_d2.config import add_iif_config
from iif_d2.data.class_stats import count_dataset_dicts
from iif_d2.data.loader import loader_dataset_dicts
from iif_d2.data.validate import (
    DatasetError,
    check_image_header,
    is_box,
    validate_dataset_dicts,
)

SQUARE = [1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0, 9.0]


def _ann(bbox=(1, 1, 8, 8), segm=(SQUARE,), cat=0, **kw):
    ann = {"bbox": list(bbox), "bbox_mode": BoxMode.XYWH_ABS, "category_id": cat, **kw}
    if segm is not None:
        ann["segmentation"] = [list(p) for p in segm]
    return ann


def _record(image_id, *anns, size=(20, 20), file_name=None):
    return {
        "file_name": file_name or f"/nowhere/{image_id}.jpg",
        "image_id": image_id,
        "width": size[0],
        "height": size[1],
        "annotations": list(anns),
    }


def _good():
    return [_record(1, _ann(), _ann(cat=1)), _record(2, _ann(cat=1))]


def test_valid_dicts_come_back_unchanged():
    dicts = _good()
    before = copy.deepcopy(dicts)
    assert validate_dataset_dicts(dicts, "d", masks=True, check_images=False) is dicts
    assert dicts == before


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a["segmentation"][0].__setitem__(3, math.nan), "polygon coordinate that is NaN"),
        (lambda a: a["segmentation"][0].__setitem__(0, math.inf), "polygon coordinate that is NaN"),
        (lambda a: a["segmentation"][0].__setitem__(0, "1"), "polygon coordinate that is NaN"),
        (lambda a: a["bbox"].__setitem__(2, math.nan), r"has bbox \[1, 1, nan, 8\]: a box is 4"),
        (lambda a: a["bbox"].__setitem__(0, -math.inf), "a box is 4 finite numbers"),
        (lambda a: a.__setitem__("bbox", [1, 2, 3]), "a box is 4 finite numbers"),
        (lambda a: a.__setitem__("bbox", "1 2 3 4"), "a box is 4 finite numbers"),
        (lambda a: a.pop("bbox"), "has no bbox"),
        (lambda a: a.__setitem__("bbox_mode", BoxMode.XYWH_REL), "absolute mode"),
        (lambda a: a.__setitem__("segmentation", "mask.png"), "segmentation of type str"),
        (lambda a: a.__setitem__("segmentation", [7]), r"segmentation\[0\] of type int"),
        (lambda a: a.__setitem__("segmentation", {"counts": "x", "size": [5, 5]}),
         r"RLE of size \[5, 5\] on an image of \[20, 20\]"),
    ],
)  # fmt: skip
def test_broken_annotations_are_errors(change, match):
    dicts = _good()
    change(dicts[1]["annotations"][0])
    dicts[1]["annotations"][0]["id"] = 77
    with pytest.raises(DatasetError, match=match) as e:
        validate_dataset_dicts(dicts, "my_train", masks=True)
    # one line naming the dataset, the image (id and file) and the annotation
    assert str(e.value).startswith(
        "dataset 'my_train': image 2 (/nowhere/2.jpg): annotations[0] (id 77) "
    )
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "box, ok",
    [([1, 1, 8, 8], True), ((1.0, 1, 8, 8.5), True), ([0, 0, 1], False), ([1, 1, 8, 8, 0], False),
     ([1, math.nan, 8, 8], False), ([1, 1, math.inf, 8], False), ([1, "1", 8, 8], False),
     ("1 1 8 8", False), (None, False)],
)  # fmt: skip
def test_is_box_is_the_training_check(box, ok):
    """is_box (also what the class counts of a COCO/LVIS json check) refuses what training
    refuses."""
    assert is_box(box) is ok
    dicts = _good()
    dicts[1]["annotations"][0]["bbox"] = box
    if ok:
        validate_dataset_dicts(dicts, "my_train", masks=True, check_images=False)
    else:
        with pytest.raises(DatasetError, match="bbox"):
            validate_dataset_dicts(dicts, "my_train", masks=True, check_images=False)


@pytest.mark.parametrize("size", [(1, 20), (20, 0), (-5, 20), ("20", 20), (math.nan, 20)])
def test_images_of_no_size_are_errors(size):
    dicts = _good()
    dicts[0]["width"], dicts[0]["height"] = size
    with pytest.raises(DatasetError, match=r"image 1 \(/nowhere/1.jpg\) is .* pixels .* at least"):
        validate_dataset_dicts(dicts, "d")


def test_an_image_id_for_two_files_is_an_error():
    dicts = _good()
    dicts[1]["image_id"] = 1
    with pytest.raises(DatasetError, match="image id 1 is used by two files, /nowhere/1.jpg and"):
        validate_dataset_dicts(dicts, "d")
    same = _good() + [_good()[0]]  # one image listed twice (a dataset named twice) is fine
    assert validate_dataset_dicts(same, "d", check_images=False) is same


def test_what_detectron2_drops_is_dropped_counted_and_logged(caplog):
    dicts = _good() + [
        _record(
            3,
            _ann(segm=[]),  # "segmentation": []
            _ann(segm=[[1, 1, 5, 5]]),  # a polygon of 2 points
            _ann(bbox=(2, 2, 0, 5)),  # zero width
            _ann(bbox=(5, 5, 2, 2), bbox_mode=BoxMode.XYXY_ABS),  # negative
            _ann(bbox=(30, 1, 5, 5)),  # entirely right of the 20-pixel image
            _ann(bbox=(-3, -3, 6, 6), cat=1),  # partly outside: kept (detectron2 clips it)
            _ann(segm=[[1, 1, 5, 5], SQUARE], cat=1),  # the 2-point polygon goes, the rest stays
            _ann(bbox=(0, 0, math.nan, 1), iscrowd=1),  # crowd: never read by the mapper
        ),
        _record(4, _ann(segm=[])),  # left without annotations: dropped (FILTER_EMPTY on)
    ]
    before = copy.deepcopy(dicts)
    with caplog.at_level(logging.WARNING, logger="iif_d2.data.validate"):
        out = validate_dataset_dicts(dicts, "my_train", masks=True, check_images=False)
    assert dicts == before  # the loader's (maybe cached) dicts are not changed
    assert [r["image_id"] for r in out] == [1, 2, 3]
    anns = out[2]["annotations"]
    assert [a["bbox"] for a in anns] == [[-3, -3, 6, 6], [1, 1, 8, 8], [0, 0, math.nan, 1]]
    assert anns[1]["segmentation"] == [SQUARE]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(
        "dataset 'my_train': dropped 6 annotations (3 without a polygon of >= 3 "
    )
    for text in ("2 with a box of zero or negative width or height (first: image 3 (/nowhere/3.jpg)"
                 " annotations[2])", "1 with a box entirely outside its image",
                 "1 polygons of < 3 points", "1 images left without annotations",
                 "3 images remain"):  # fmt: skip
        assert text in line
    # the statistics are counted on what remains
    stats = count_dataset_dicts(out, 2)
    assert stats.instance_counts == [1, 4] and stats.image_counts == [1, 3]
    # without FILTER_EMPTY_ANNOTATIONS the emptied image stays (detectron2 trains it)
    kept = validate_dataset_dicts(
        dicts, "my_train", filter_empty=False, masks=True, check_images=False
    )
    assert [r["image_id"] for r in kept] == [1, 2, 3, 4] and kept[3]["annotations"] == []


def test_masks_need_a_segmentation_only_with_mask_on():
    dicts = [_record(1, _ann(), _ann(segm=None, cat=1))]
    assert validate_dataset_dicts(dicts, "d", masks=False, check_images=False) is dicts
    out = validate_dataset_dicts(dicts, "d", masks=True, check_images=False)
    assert [a["category_id"] for a in out[0]["annotations"]] == [0]


def test_nothing_left_is_an_error():
    with pytest.raises(DatasetError, match="dropped 1 annotations .*no training image is left"):
        validate_dataset_dicts([_record(1, _ann(bbox=(0, 0, 0, 0)))], "d")


def _png16(path, size=(6, 4)):
    Image.fromarray(np.full(size[::-1], 4000, np.uint16)).save(path)


def test_image_headers(tmp_path):
    _png16(tmp_path / "g16.png")
    assert "16-bit grayscale PNG" in check_image_header(str(tmp_path / "g16.png"))
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert check_image_header(str(tmp_path / "rgb.png"), (6, 4)) is None
    assert "is 6 x 4 pixels, but the dataset says 5 x 4" in check_image_header(
        str(tmp_path / "rgb.png"), (5, 4)
    )
    Image.fromarray(np.zeros((4, 6), np.float32)).save(tmp_path / "f.tif")
    assert "PIL mode 'F'" in check_image_header(str(tmp_path / "f.tif"))
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "rgb.tif")
    assert check_image_header(str(tmp_path / "rgb.tif")) is None
    assert "does not exist" in check_image_header(str(tmp_path / "missing.png"))
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block: refused without opening it
    assert "is not a regular file" in check_image_header(str(tmp_path / "pipe.png"))
    # in the dicts: one line naming the dataset, the image and the fix
    dicts = [_record(1, _ann(), size=(6, 4), file_name=str(tmp_path / "g16.png"))]
    dicts[0]["annotations"][0]["bbox"] = [0, 0, 3, 3]
    with pytest.raises(DatasetError, match=r"image 1 \(.*g16.png\) is a 16-bit .* 8-bit RGB"):
        validate_dataset_dicts(dicts, "d")
    assert validate_dataset_dicts(dicts, "d", check_images=False) is dicts


def _cfg(name, mask_on=True):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.MODEL.MASK_ON = mask_on
    return cfg


def _with_files(dicts, folder):
    """``dicts`` with their images made in ``folder`` (a JPEG file name is checked to exist)."""
    for record in dicts:
        record["file_name"] = str(folder / os.path.basename(record["file_name"]))
        (folder / os.path.basename(record["file_name"])).write_bytes(b"")
    return dicts


def test_the_loader_checks_once_and_the_statistics_agree(tmp_path):
    """loader_dataset_dicts (every training run's and the statistics' load) drops what
    detectron2 drops, so the counts of SOURCE 'dataset' exclude it."""
    from iif_d2.data.training_set import compute_class_stats

    name = "iif_test_validate_drops"
    dicts = _good() + [_record(3, _ann(bbox=(2, 2, 0, 0), cat=0), _ann(cat=1))]
    dicts = _with_files(dicts, tmp_path)
    DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    try:
        loaded = loader_dataset_dicts(_cfg(name))
        assert [len(r["annotations"]) for r in loaded] == [2, 1, 1]
        stats = compute_class_stats(_cfg(name))
        assert stats.instance_counts == [1, 3] and stats.image_counts == [1, 3]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_the_lvis_loaders_assertion_names_the_annotation(tmp_path):
    """detectron2's LVIS loader asserts on an empty segmentation while loading: an error naming
    the json, the annotation id and the fix."""
    from detectron2.data.datasets.lvis import load_lvis_json

    data = {
        "images": [{"id": 1, "width": 20, "height": 20, "coco_url": "x/train2017/1.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8],
             "segmentation": [SQUARE], "area": 64},
            {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8],
             "segmentation": [], "area": 64},
        ],
        "categories": [{"id": 1, "name": "a", "image_count": 1, "instance_count": 2}],
    }  # fmt: skip
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    name = "iif_test_validate_lvis"
    DatasetCatalog.register(name, lambda: load_lvis_json(str(path), str(tmp_path)))
    MetadataCatalog.get(name).set(json_file=str(path))
    try:
        with pytest.raises(DatasetError, match=r"annotation id 9 \(image 1\) has segmentation "
                           r"\[\]; fix or remove that annotation"):  # fmt: skip
            loader_dataset_dicts(_cfg(name))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
