"""Per-class image and instance counts of a training set, the frequencies IIF is built on:
counting them on detectron2 dataset dicts (:func:`count_dataset_dicts`) and the file formats
they are read from and saved to (:func:`load_counts_file`, :meth:`ClassStats.save`).

Which counts a run uses (``MODEL.CLASS_COUNTS``) is resolved once, before the model is built,
by :func:`iif_d2.data.training_set.resolve_training_set`: counted on the full ``DATASETS.TRAIN``
(crowd annotations skipped, as detectron2's mapper drops them; K = number of images), read from
the training set's LVIS json, or from a counts file; saved as ``OUTPUT_DIR/iif_class_stats.json``.
"""

import csv
import dataclasses
import json
from importlib import resources
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["ClassStats", "count_dataset_dicts", "load_counts_file", "STATS_FILENAME"]

PACKAGE_PREFIX = "iif_d2://"
STATS_FILENAME = "iif_class_stats.json"
FREQUENCIES = ("image", "instance")
NORMALIZERS = ("total", "sum")


@dataclasses.dataclass
class ClassStats:
    """Counts per contiguous class id.

    Attributes:
        image_counts: images containing each class.
        instance_counts: instances of each class.
        num_images: training images (K of IIF), or None when the source does not say.
        class_names: optional names, for messages.
        source: where the counts came from.
    """

    image_counts: List[int]
    instance_counts: List[int]
    num_images: Optional[int] = None
    class_names: Optional[List[str]] = None
    source: str = ""

    def __post_init__(self):
        if len(self.image_counts) != len(self.instance_counts):
            raise ValueError(
                f"{self.source or 'class counts'}: {len(self.image_counts)} image counts but "
                f"{len(self.instance_counts)} instance counts; both need one entry per class."
            )

    @property
    def num_classes(self) -> int:
        return len(self.image_counts)

    def frequencies(self, frequency: str = "image", normalizer: str = "total"):
        """Return ``(f, K)`` for IIF (``frequency="image"``) or IOF (``"instance"``).

        ``normalizer="total"``: K = number of images (IIF) or instances (IOF), as the authors'
        released weights; ``"sum"``: K = sum of f, the paper's Eq. 11.
        """
        if frequency not in FREQUENCIES:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.IIF.FREQUENCY {frequency!r} is not one of {FREQUENCIES}."
            )
        if normalizer not in NORMALIZERS:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.IIF.NORMALIZER {normalizer!r} is not one of {NORMALIZERS}."
            )
        f = self.image_counts if frequency == "image" else self.instance_counts
        if normalizer == "sum" or frequency == "instance":
            return f, sum(f)
        if self.num_images is None:
            raise ValueError(
                f"{self.source}: the number of training images (K of IIF) is unknown. Add a "
                "'# num_images: N' line to the counts file, or set NORMALIZER 'sum'."
            )
        return f, self.num_images

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    def save(self, path: str):
        """Write the statistics as JSON (readable by :func:`load_counts_file`)."""
        from detectron2.utils.file_io import PathManager

        with PathManager.open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)


def count_dataset_dicts(dataset_dicts: Sequence[Dict], num_classes: int, source="") -> ClassStats:
    """Count images and (non-crowd) instances per class on detectron2 dataset dicts.

    Args:
        dataset_dicts: dicts in detectron2's standard format, with contiguous ``category_id``.
        num_classes: C; every category id must lie in [0, C).
        source: a name for messages.

    Returns:
        ClassStats with ``num_images = len(dataset_dicts)``.
    """
    cats: List[int] = []
    lengths = np.zeros(len(dataset_dicts), dtype=np.int64)
    for i, record in enumerate(dataset_dicts):
        before = len(cats)
        cats.extend(a["category_id"] for a in record.get("annotations", ()) if not a.get("iscrowd"))
        lengths[i] = len(cats) - before
    cat = np.asarray(cats, dtype=np.int64)
    if cat.size and (cat.min() < 0 or cat.max() >= num_classes):
        raise ValueError(
            f"{source}: category_id {int(cat.min() if cat.min() < 0 else cat.max())} outside "
            f"[0, {num_classes}); set MODEL.ROI_HEADS.NUM_CLASSES to the dataset's class count."
        )
    image = np.repeat(np.arange(len(dataset_dicts), dtype=np.int64), lengths)
    instance_counts = np.bincount(cat, minlength=num_classes)
    pairs = np.unique(image * num_classes + cat)
    image_counts = np.bincount(pairs % num_classes, minlength=num_classes)
    return ClassStats(
        image_counts.tolist(), instance_counts.tolist(), len(dataset_dicts), source=source
    )


def _resolve(path: str) -> str:
    if path.startswith(PACKAGE_PREFIX):
        return str(resources.files("iif_d2") / "data" / path[len(PACKAGE_PREFIX) :])
    return path


def _read_csv(text: str, source: str) -> ClassStats:
    lines = text.splitlines()
    num_images = None
    for line in lines:
        if line.startswith("#") and ":" in line and line[1:].split(":")[0].strip() == "num_images":
            num_images = int(line.split(":", 1)[1])
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    missing = {"image_count", "instance_count"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(
            f"{source}: counts CSV needs the columns image_count and instance_count "
            f"(missing: {', '.join(sorted(missing))}); one row per class in contiguous-id order."
        )
    for key in ("category_id", "contiguous_id"):
        if rows and key in rows[0]:
            rows.sort(key=lambda r: int(r[key]))
    try:
        image_counts = [int(r["image_count"]) for r in rows]
        instance_counts = [int(r["instance_count"]) for r in rows]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: a count is not an integer ({e}).") from None
    names = [r["name"] for r in rows] if rows and "name" in rows[0] else None
    return ClassStats(image_counts, instance_counts, num_images, names, source)


def _from_coco_like(data: Dict, source: str) -> ClassStats:
    cats = sorted(data["categories"], key=lambda c: c["id"])
    names = [c.get("name", str(c["id"])) for c in cats]
    num_images = len(data.get("images", ())) or None
    if cats and all("image_count" in c and "instance_count" in c for c in cats):  # LVIS
        return ClassStats(
            [c["image_count"] for c in cats],
            [c["instance_count"] for c in cats],
            num_images,
            names,
            source,
        )
    if "annotations" not in data:
        raise ValueError(f"{source}: an LVIS/COCO json needs image_count fields or annotations.")
    index = {c["id"]: i for i, c in enumerate(cats)}
    by_image: Dict[int, List[Dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(
            {"category_id": index[a["category_id"]], "iscrowd": a.get("iscrowd", 0)}
        )
    stats = count_dataset_dicts([{"annotations": v} for v in by_image.values()], len(cats), source)
    return dataclasses.replace(stats, num_images=num_images, class_names=names)


def load_counts_file(path: str) -> ClassStats:
    """Read class counts from a file.

    Accepted: a CSV with ``image_count`` and ``instance_count`` columns (rows in contiguous-id
    order, or sorted by a ``category_id``/``contiguous_id`` column; a ``# num_images: N``
    comment gives K); a JSON written by :meth:`ClassStats.save`; an LVIS json (its
    ``image_count``/``instance_count``) or a COCO json (counted from its annotations).
    ``iif_d2://lvis_v1_train.csv`` and ``iif_d2://coco_train2017.csv`` are shipped.
    """
    from detectron2.utils.file_io import PathManager

    local = _resolve(path)
    if not PathManager.exists(local):
        raise FileNotFoundError(
            f"IIF counts file {path!r} does not exist. Set MODEL.CLASS_COUNTS.FILE to a CSV/JSON "
            "counts file, or use MODEL.CLASS_COUNTS.SOURCE 'dataset'."
        )
    with PathManager.open(local, "r") as f:
        text = f.read()
    if not local.endswith(".json"):
        return _read_csv(text, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    if "stats" in data and "weights" in data:  # written by `python -m iif_d2.cli --save`
        data = data["stats"]
    if "image_counts" in data:
        fields = {f.name for f in dataclasses.fields(ClassStats)}
        return ClassStats(**{k: v for k, v in data.items() if k in fields})
    if "categories" in data:
        return _from_coco_like(data, path)
    raise ValueError(f"{path}: neither an iif-d2 counts JSON nor an LVIS/COCO json.")
