"""The files a run's datasets need, checked before anything starts: a first run without LVIS or
COCO on disk ends in one line naming the missing path, the layout detectron2 expects under
``$DETECTRON2_DATASETS`` and where the data are downloaded, not in a traceback from a worker."""

import os
from typing import Iterable

__all__ = ["DatasetFilesMissing", "check_dataset_files", "EXPECTED_LAYOUT"]

EXPECTED_LAYOUT = (
    "detectron2 expects under $DETECTRON2_DATASETS ({root}): lvis/lvis_v1_{{train,val}}.json "
    "with coco/{{train2017,val2017}}/ images (LVIS v1 from https://www.lvisdataset.org/dataset, "
    "images from https://cocodataset.org/#download), and coco/annotations/instances_"
    "{{train,val}}2017.json for COCO; set DETECTRON2_DATASETS to the folder that holds them"
)


class DatasetFilesMissing(FileNotFoundError):
    """A registered dataset's annotation file or image folder does not exist."""


def _root() -> str:
    return os.path.abspath(os.getenv("DETECTRON2_DATASETS", "datasets"))


def check_dataset_files(names: Iterable[str], key: str) -> None:
    """Check that every dataset in ``names`` is registered and that its ``json_file`` and
    ``image_root`` exist (datasets iif-d2 generates on first use are skipped).

    Args:
        names: registered dataset names (DATASETS.TRAIN or DATASETS.TEST).
        key: the config key they came from, for the message.

    Raises:
        DatasetFilesMissing: one line naming the dataset, the missing path and the fix.
        KeyError: an unregistered name (detectron2's message lists the registered ones).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    registered = set(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            import difflib

            close = difflib.get_close_matches(name, sorted(registered), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "."
            raise DatasetFilesMissing(f"{key} {name!r} is not a registered dataset{hint}")
        meta = MetadataCatalog.get(name)
        if meta.get("generated_on_first_use", False):
            continue
        for attr, exists in (("json_file", os.path.isfile), ("image_root", os.path.isdir)):
            path = meta.get(attr, None)
            if path and "://" not in path and not exists(path):
                raise DatasetFilesMissing(
                    f"{key} {name!r}: {attr} {os.path.abspath(path)} does not exist. "
                    + EXPECTED_LAYOUT.format(root=_root())
                    + "."
                )
