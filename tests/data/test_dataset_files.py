"""A run whose LVIS/COCO files are missing stops before it starts, with one line naming the
path, the layout expected under $DETECTRON2_DATASETS and where to download the data."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from iif_d2.data.dataset_files import DatasetFilesMissing, check_dataset_files


def test_missing_lvis_json_names_path_layout_and_download():
    import detectron2.data.datasets  # noqa: F401  (registers detectron2's LVIS splits)

    with pytest.raises(DatasetFilesMissing) as e:
        check_dataset_files(["lvis_v1_train"], "DATASETS.TRAIN")
    message = str(e.value)
    assert "\n" not in message
    assert "lvis/lvis_v1_train.json does not exist" in message
    assert "$DETECTRON2_DATASETS" in message and "lvisdataset.org" in message


def test_a_misspelt_dataset_is_named_with_the_close_ones():
    with pytest.raises(DatasetFilesMissing, match="did you mean iif_synthetic_tiny_train"):
        check_dataset_files(["iif_synthetic_tiny_trian"], "DATASETS.TRAIN")


def test_present_files_and_generated_sets_pass(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    name = "iif_test_files_present"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(json_file=str(tmp_path / "a.json"), image_root=str(tmp_path))
    check_dataset_files([name, "synthlt_train"], "DATASETS.TEST")
    missing = "iif_test_image_root_missing"
    if missing not in DatasetCatalog.list():
        DatasetCatalog.register(missing, lambda: [])
        MetadataCatalog.get(missing).set(json_file=str(tmp_path / "a.json"), image_root="/no/such")
    with pytest.raises(DatasetFilesMissing, match="image_root /no/such does not exist"):
        check_dataset_files([missing], "DATASETS.TEST")
