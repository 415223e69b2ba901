"""Class statistics: counting, files, config sources, errors."""

import json
import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from iif_d2 import add_iif_config
from iif_d2.data.class_stats import (
    STATS_FILENAME,
    ClassStats,
    count_dataset_dicts,
    load_counts_file,
)
from iif_d2.data.training_set import compute_class_stats, resolve_training_set
from iif_d2.modeling.class_weights import class_stats_from_config, iif_weights_from_config

DICTS = [
    {"annotations": [{"category_id": 0}, {"category_id": 0}, {"category_id": 2}]},
    {"annotations": [{"category_id": 2}, {"category_id": 1, "iscrowd": 1}]},
    {"annotations": [{"category_id": 0}]},
    {"annotations": []},
]


def test_count_dataset_dicts_by_hand():
    s = count_dataset_dicts(DICTS, 4)
    assert s.image_counts == [2, 0, 2, 0]  # class 1 only as a crowd box: not counted
    assert s.instance_counts == [3, 0, 2, 0]
    assert s.num_images == 4


def test_count_rejects_out_of_range_category():
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        count_dataset_dicts(DICTS, 2)


def test_frequencies_and_normalizers():
    s = ClassStats([2, 1], [5, 1], num_images=3)
    assert s.frequencies("image") == ([2, 1], 3)
    assert s.frequencies("image", "sum") == ([2, 1], 3)
    assert s.frequencies("instance") == ([5, 1], 6)
    with pytest.raises(ValueError, match="FREQUENCY"):
        s.frequencies("pixel")
    with pytest.raises(ValueError, match="num_images"):
        ClassStats([1], [1]).frequencies("image")
    with pytest.raises(ValueError, match="one entry per class"):
        ClassStats([1, 2], [1])


def test_shipped_counts_files():
    lvis = load_counts_file("iif_d2://lvis_v1_train.csv")
    assert lvis.num_classes == 1203 and lvis.num_images == 100170
    assert sum(lvis.instance_counts) == 1270141
    assert lvis.class_names[0] == "aerosol_can" and lvis.image_counts[0] == 64
    coco = load_counts_file("iif_d2://coco_train2017.csv")
    assert coco.num_classes == 80 and coco.num_images == 118287
    assert sum(coco.instance_counts) == 860001 and coco.class_names[0] == "person"


def test_csv_json_and_round_trip(tmp_path):
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("# num_images: 9\ncategory_id,image_count,instance_count\n2,1,4\n1,3,3\n")
    s = load_counts_file(str(csv_file))
    assert s.image_counts == [3, 1] and s.instance_counts == [3, 4] and s.num_images == 9
    s.save(str(tmp_path / "s.json"))
    assert load_counts_file(str(tmp_path / "s.json")) == s


def test_lvis_and_coco_json(tmp_path):
    cats = [{"id": 5, "name": "b"}, {"id": 1, "name": "a"}]
    anns = [
        {"image_id": 1, "category_id": 5},
        {"image_id": 1, "category_id": 5},
        {"image_id": 2, "category_id": 1, "iscrowd": 1},
        {"image_id": 2, "category_id": 5},
    ]
    coco = {"images": [{"id": 1}, {"id": 2}, {"id": 3}], "annotations": anns, "categories": cats}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    s = load_counts_file(str(tmp_path / "coco.json"))
    assert s.class_names == ["a", "b"] and s.image_counts == [0, 2] and s.instance_counts == [0, 3]
    assert s.num_images == 3
    lvis_cats = [dict(c, image_count=2 * c["id"], instance_count=3 * c["id"]) for c in cats]
    ten_images = [{"id": i} for i in range(1, 11)]
    lvis = dict(coco, images=ten_images, categories=lvis_cats, annotations=[])
    (tmp_path / "lvis.json").write_text(json.dumps(lvis))
    s = load_counts_file(str(tmp_path / "lvis.json"))
    assert s.image_counts == [2, 10] and s.instance_counts == [3, 15]
    # counts its annotations contradict: an error naming the category; agreeing ones load
    (tmp_path / "lvis.json").write_text(json.dumps(dict(lvis, annotations=anns)))
    with pytest.raises(
        ValueError,
        match=r"category id 1 \(a\) has image_count 2 and "
        r"instance_count 3, but the file's annotations put it in 0 images",
    ):
        load_counts_file(str(tmp_path / "lvis.json"))
    agreeing = [dict(c, image_count=n, instance_count=m) for c, n, m in zip(cats, (2, 1), (3, 1))]
    anns[2]["iscrowd"] = 0
    (tmp_path / "lvis.json").write_text(json.dumps(dict(lvis, annotations=anns,
                                                        categories=agreeing)))  # fmt: skip
    s = load_counts_file(str(tmp_path / "lvis.json"))
    assert s.image_counts == [1, 2] and s.instance_counts == [1, 3]


@pytest.mark.parametrize(
    "content, match",
    [
        ("image_count\n1\n", "instance_count"),
        ("image_count,instance_count\n1,x\n", "line 2.*not a count"),
    ],
)
def test_bad_counts_files(tmp_path, content, match):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_counts_file(str(f))


def test_coco_json_box_that_is_not_4_numbers_is_an_error(tmp_path):
    """As training refuses it (iif_d2.data.validate.is_box): not counted as an instance."""
    anns = [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]},
        {"id": 8, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 1},
        {"id": 9, "image_id": 2, "category_id": 1},  # no box: counted, as before
    ]
    coco = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}], "annotations": anns}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert load_counts_file(str(tmp_path / "coco.json")).instance_counts == [2]
    anns[1]["bbox"] = [0, 0, 1]  # a crowd box: not checked (detectron2 drops crowds first)
    anns[0]["bbox"] = [0, 0, 1]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id 7\) has bbox \[0, 0, 1\]: a box"):
        load_counts_file(str(tmp_path / "coco.json"))


def test_empty_and_yaml_counts_files_are_named(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.csv is empty; give a counts CSV"):
        load_counts_file(str(empty))
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty.csv is empty"):
        load_counts_file(str(empty))
    config = tmp_path / "config.txt"  # a YAML config under another suffix
    config.write_text("# a config\n_BASE_: base.yaml\nMODEL:\n  MASK_ON: True\n")
    with pytest.raises(ValueError, match=r"looks like a YAML config \('_BASE_: base.yaml'\)"):
        load_counts_file(str(config))


def test_missing_counts_file():
    with pytest.raises(FileNotFoundError, match="CLASS_COUNTS.FILE"):
        load_counts_file("/nonexistent/counts.csv")


def _cfg(tmp_path, **counts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.DATASETS.TRAIN = ("iif_synthetic_tiny_train",)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 8
    cfg.MODEL.ROI_BOX_HEAD.IIF.ENABLED = True
    cfg.OUTPUT_DIR = str(tmp_path)
    for k, v in counts.items():
        setattr(cfg.MODEL.CLASS_COUNTS, k, v)
    return cfg


def test_stats_of_registered_dataset_match_its_json(tmp_path):
    cfg = resolve_training_set(_cfg(tmp_path))
    assert cfg.MODEL.CLASS_COUNTS.SOURCE == "file"
    assert cfg.MODEL.CLASS_COUNTS.FILE == os.path.join(tmp_path, STATS_FILENAME)
    s = class_stats_from_config(cfg)
    dicts = DatasetCatalog.get("iif_synthetic_tiny_train")
    with open(MetadataCatalog.get("iif_synthetic_tiny_train").json_file) as f:
        cats = json.load(f)["categories"]
    assert s.num_images == len(dicts)
    assert s.image_counts == [c["image_count"] for c in cats]
    assert s.instance_counts == [c["instance_count"] for c in cats]
    assert s.class_names == MetadataCatalog.get("iif_synthetic_tiny_train").thing_classes
    from_json = compute_class_stats(_cfg(tmp_path, SOURCE="json"))
    assert from_json.image_counts == s.image_counts


def test_model_side_reads_only_a_resolved_file(tmp_path):
    """Building a model never counts a dataset: unresolved counts are an error with the fix."""
    with pytest.raises(ValueError, match="resolve_training_set"):
        class_stats_from_config(_cfg(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, STATS_FILENAME))


def test_deprecated_counts_keys_still_work(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    cfg.MODEL.RETINANET.IIF.COUNTS_SOURCE = "file"
    cfg.MODEL.RETINANET.IIF.COUNTS_FILE = "iif_d2://coco_train2017.csv"
    with caplog.at_level("WARNING", logger="iif_d2.config"):
        resolve_training_set(cfg)
    assert "MODEL.CLASS_COUNTS.FILE" in caplog.text and "deprecated" in caplog.text
    assert class_stats_from_config(cfg).num_images == 118287
    conflicting = _cfg(tmp_path, SOURCE="json")
    conflicting.MODEL.ROI_BOX_HEAD.IIF.COUNTS_SOURCE = "file"
    with pytest.raises(ValueError, match="set only MODEL.CLASS_COUNTS.SOURCE"):
        resolve_training_set(conflicting)


def test_weights_from_config_check_num_classes(tmp_path):
    cfg = _cfg(tmp_path, SOURCE="file", FILE="iif_d2://coco_train2017.csv")
    assert iif_weights_from_config(cfg, 80).shape == (81,)
    with pytest.raises(ValueError, match="NUM_CLASSES = 8"):
        iif_weights_from_config(cfg, 8)


@pytest.mark.parametrize(
    "counts, match",
    [
        ({"SOURCE": "file"}, "CLASS_COUNTS.FILE"),
        ({"SOURCE": "somewhere"}, "not one of"),
    ],
)
def test_bad_config_sources(tmp_path, counts, match):
    with pytest.raises(ValueError, match=match):
        resolve_training_set(_cfg(tmp_path, **counts))


def test_coco_guard_names_person_and_safe_variants(tmp_path):
    cfg = _cfg(tmp_path, SOURCE="file", FILE="iif_d2://coco_train2017.csv")
    cfg.MODEL.ROI_BOX_HEAD.IIF.VARIANT = "normit"
    with pytest.raises(ValueError, match="person.*raw"):
        iif_weights_from_config(cfg, 80)
    cfg.MODEL.ROI_BOX_HEAD.IIF.ALLOW_NONPOSITIVE_WEIGHTS = True
    assert iif_weights_from_config(cfg, 80)[0] < 0


def test_coco_annotations_of_unknown_images_are_dropped_and_counted(tmp_path, caplog):
    """detectron2's COCO loader never sees annotations of images missing from ``images``: the
    counts leave them out too, and a warning says how many."""
    coco = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 3, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3},
            {"id": 2, "image_id": 9, "category_id": 3},
            {"id": 3, "image_id": 9, "category_id": 3},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    with caplog.at_level("WARNING", logger="iif_d2.data.class_stats"):
        s = load_counts_file(str(tmp_path / "coco.json"))
    assert s.image_counts == [1] and s.instance_counts == [1] and s.num_images == 2
    assert "2 of 3 annotations refer to image ids missing" in caplog.text


def test_whole_floats_and_contiguous_ids_are_accepted(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"image_counts": [1.0, 2], "instance_counts": [3, 4.0]}))
    s = load_counts_file(str(f))
    assert s.image_counts == [1, 2] and s.instance_counts == [3, 4]
    assert all(type(c) is int for c in s.image_counts + s.instance_counts)
    c = tmp_path / "c.csv"
    c.write_text("contiguous_id,name,image_count,instance_count\n1,b,2,2\n0,a,1,5\n")
    s = load_counts_file(str(c))
    assert s.class_names == ["a", "b"] and s.instance_counts == [5, 2]


@pytest.mark.parametrize(
    "dicts, match",
    [
        ([{"annotations": [{"category_id": "1"}]}], "dataset 'toy': category_id '1' \\(str\\)"),
        ([{"file_name": "a.jpg", "annotations": [{"bbox": [0, 0, 1, 1]}]}], "record 0 \\(a.jpg\\)"),
        ([{"annotations": [{"category_id": 5}]}], "dataset 'toy': category_id 5 outside"),
    ],
)
def test_count_dataset_dicts_errors_name_the_dataset(dicts, match):
    with pytest.raises(ValueError, match=match):
        count_dataset_dicts(dicts, 2, source="toy")
