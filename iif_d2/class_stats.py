"""Per-class image and instance counts of a training set: the frequencies IIF is built on.

Sources (``MODEL.ROI_BOX_HEAD.IIF.COUNTS_SOURCE``):

* ``dataset``: counted on the dataset dicts of ``DATASETS.TRAIN`` exactly as the trainer's loader
  gets them (``iif_d2.data.build.train_dataset_dicts``: the same filtering, FASA's held-out
  images removed); crowd annotations are skipped, as detectron2's mapper drops them; K = number
  of those images.
* ``json``: the ``image_count``/``instance_count`` fields of the training set's LVIS json.
* ``file``: a counts file (see :func:`load_counts_file`).

Statistics are computed once per process, on the main rank only, sent to every rank, and saved
as ``OUTPUT_DIR/iif_class_stats.json``.
"""

import csv
import dataclasses
import json
import logging
import os
from importlib import resources
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .weights import additive_margins, iif_weights

__all__ = [
    "ClassStats",
    "count_dataset_dicts",
    "load_counts_file",
    "class_stats_from_config",
    "iif_weights_from_config",
    "additive_margins_from_config",
]

logger = logging.getLogger(__name__)
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
            f"IIF counts file {path!r} does not exist. Set MODEL.ROI_BOX_HEAD.IIF.COUNTS_FILE to "
            "a CSV/JSON counts file, or use COUNTS_SOURCE 'dataset'."
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


def _compute(cfg, iif, num_classes: int) -> ClassStats:
    if iif.COUNTS_SOURCE == "file":
        if not iif.COUNTS_FILE:
            raise ValueError(
                "IIF COUNTS_SOURCE 'file' needs MODEL.ROI_BOX_HEAD.IIF.COUNTS_FILE (a counts "
                "CSV/JSON, e.g. iif_d2://lvis_v1_train.csv or a run's iif_class_stats.json)."
            )
        return load_counts_file(iif.COUNTS_FILE)
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError(
            "IIF counts come from DATASETS.TRAIN, which is empty. Name the training dataset, "
            "or set COUNTS_SOURCE 'file' with a COUNTS_FILE (e.g. iif_d2://lvis_v1_train.csv)."
        )
    if iif.COUNTS_SOURCE == "json":
        from detectron2.data import MetadataCatalog

        if len(names) != 1:
            raise ValueError(
                "IIF COUNTS_SOURCE 'json' takes exactly one training dataset; with several, "
                "use COUNTS_SOURCE 'dataset'."
            )
        json_file = getattr(MetadataCatalog.get(names[0]), "json_file", None)
        if not json_file:
            raise ValueError(
                f"Dataset {names[0]!r} has no json_file in its metadata, so IIF COUNTS_SOURCE "
                "'json' cannot read it; use COUNTS_SOURCE 'dataset' or 'file'."
            )
        return load_counts_file(json_file)
    if iif.COUNTS_SOURCE != "dataset":
        raise ValueError(
            f"IIF COUNTS_SOURCE {iif.COUNTS_SOURCE!r} is not one of 'dataset', 'json', 'file'."
        )
    from detectron2.data import MetadataCatalog

    from .data.build import train_dataset_dicts

    dicts = train_dataset_dicts(cfg)
    stats = count_dataset_dicts(dicts, num_classes, "+".join(names))
    stats.class_names = getattr(MetadataCatalog.get(names[0]), "thing_classes", None)
    return stats


_CACHE: Dict[tuple, ClassStats] = {}


def _cache_key(cfg, iif, num_classes: int) -> tuple:
    """Everything the counts depend on (a re-registered dataset name is not detected)."""
    from .data.build import holds_out

    return (
        iif.COUNTS_SOURCE,
        iif.COUNTS_FILE,
        tuple(cfg.DATASETS.TRAIN),
        cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        num_classes,
        cfg.MODEL.KEYPOINT_ON,
        cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE,
        cfg.MODEL.LOAD_PROPOSALS,
        tuple(cfg.DATASETS.PROPOSAL_FILES_TRAIN),
        holds_out(cfg),  # FASA's held-out images are not counted
        cfg.MODEL.ROI_BOX_HEAD.FASA.HELDOUT_FRACTION,
        cfg.MODEL.ROI_BOX_HEAD.FASA.HELDOUT_MAX_IMAGES,
    )


def _compute_on_main_rank(cfg, iif, num_classes: int) -> ClassStats:
    """Compute on rank 0 and send to all ranks; an error on rank 0 is raised on every rank."""
    from detectron2.utils import comm

    payload = None
    if comm.is_main_process():
        try:
            payload = (_compute(cfg, iif, num_classes), None)
        except (ValueError, FileNotFoundError, KeyError, OSError) as e:
            payload = (None, e)
    if comm.get_world_size() > 1:
        payload = comm.all_gather(payload)[0]
    stats, error = payload
    if error is not None:
        raise error
    return stats


def class_stats_from_config(cfg, iif=None, num_classes=None) -> ClassStats:
    """Class statistics for ``cfg``: computed once per process on the main rank, identical on
    every rank, and saved to ``OUTPUT_DIR/iif_class_stats.json``.

    Args:
        cfg: the config.
        iif: the IIF config node with the counts keys (default MODEL.ROI_BOX_HEAD.IIF).
        num_classes: C (default MODEL.ROI_HEADS.NUM_CLASSES).

    In a multi-process job this is a collective call: every rank must make it (as every rank
    builds the model); the result is cached per process.

    Returns:
        a copy of the cached statistics.
    """
    from detectron2.utils import comm

    iif = cfg.MODEL.ROI_BOX_HEAD.IIF if iif is None else iif
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES if num_classes is None else num_classes
    key = _cache_key(cfg, iif, num_classes)
    computed = key not in _CACHE
    if computed:
        _CACHE[key] = _compute_on_main_rank(cfg, iif, num_classes)
        stats = _CACHE[key]
        logger.info(
            "IIF class statistics from %s: %d classes, %s images, %d instances.",
            stats.source,
            stats.num_classes,
            stats.num_images,
            sum(stats.instance_counts),
        )
    stats = dataclasses.replace(_CACHE[key])
    path = os.path.join(cfg.OUTPUT_DIR, STATS_FILENAME) if cfg.OUTPUT_DIR else None
    # written once per run and output folder (every box predictor of a cascade asks)
    if comm.is_main_process() and path and (computed or not os.path.exists(path)):
        try:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            stats.save(path)
        except OSError as e:
            logger.warning("Could not save IIF class statistics to %s: %s", cfg.OUTPUT_DIR, e)
    return stats


def _checked_frequencies(cfg, num_classes: int, iif):
    stats = class_stats_from_config(cfg, iif, num_classes)
    if stats.num_classes != num_classes:
        raise ValueError(
            f"IIF class counts from {stats.source} cover {stats.num_classes} classes, but the "
            f"model has NUM_CLASSES = {num_classes}. Use counts of the training set the model "
            "is trained on, or fix MODEL.ROI_HEADS.NUM_CLASSES."
        )
    f, k = stats.frequencies(iif.FREQUENCY, iif.NORMALIZER)
    return f, k, stats.class_names


def iif_weights_from_config(
    cfg, num_classes: int, background: bool = True, iif=None
) -> torch.Tensor:
    """IIF weights (C+1 with background, else C) of the IIF node ``iif`` (default
    ``cfg.MODEL.ROI_BOX_HEAD.IIF``; one-stage detectors pass ``cfg.MODEL.RETINANET.IIF``).

    Raises:
        ValueError: counts whose length is not ``num_classes``, and every error of
            :func:`iif_d2.weights.iif_weights`.
    """
    iif = cfg.MODEL.ROI_BOX_HEAD.IIF if iif is None else iif
    f, k, names = _checked_frequencies(cfg, num_classes, iif)
    return iif_weights(
        f,
        k,
        iif.VARIANT,
        background=background,
        allow_nonpositive=iif.ALLOW_NONPOSITIVE_WEIGHTS,
        class_names=names,
    )


def additive_margins_from_config(cfg, num_classes: int) -> torch.Tensor:
    """Margins (C+1) of ``cfg.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN``, from IIF's class counts."""
    am = cfg.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN
    f, k, names = _checked_frequencies(cfg, num_classes, cfg.MODEL.ROI_BOX_HEAD.IIF)
    return additive_margins(f, k, am.TYPE, am.TAU, class_names=names)
