"""Per-class image and instance counts of a training set, the frequencies IIF is built on:
counting them on detectron2 dataset dicts (:func:`count_dataset_dicts`) and the file formats
they are read from and saved to (:func:`load_counts_file`, :meth:`ClassStats.save`).

Which counts a run uses (``MODEL.CLASS_COUNTS``) is resolved once, before the model is built,
by :func:`iif_d2.data.training_set.resolve_training_set`: counted on the full ``DATASETS.TRAIN``
(crowd annotations skipped, as detectron2's mapper drops them; K = number of images), read from
the training set's LVIS json, or from a counts file; saved as ``OUTPUT_DIR/iif_class_stats.json``.

Every count is checked wherever it comes from (:class:`ClassStats` checks itself): a
non-negative integer of at most :data:`MAX_COUNT`, no class in more images than it has
instances, none in more images than the training set has. Errors name the file and the entry.
"""

import csv
import dataclasses
import json
import logging
import math
import os
import re
from importlib import resources
from numbers import Integral, Real
from typing import Dict, List, Optional, Sequence

import numpy as np

from iif_d2.data.validate import is_box

__all__ = [
    "ClassStats",
    "box_centres",
    "count_dataset_dicts",
    "load_counts_file",
    "STATS_FILENAME",
]

logger = logging.getLogger(__name__)
PACKAGE_PREFIX = "iif_d2://"
STATS_FILENAME = "iif_class_stats.json"
FREQUENCIES = ("image", "instance")
NORMALIZERS = ("total", "sum")
MAX_COUNT = 10**12  # far above any dataset; larger values are corrupt files
_FIX = "Each count is a whole number of images or instances, 0 <= n <= 10**12."


def _count(value, where: str) -> int:
    """``value`` as a count (int, or a float without fraction), else a ValueError at ``where``."""
    ok = isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))
    if not ok and isinstance(value, Real) and not isinstance(value, (bool, np.bool_)):
        ok = math.isfinite(value) and float(value).is_integer()
    if not ok or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{where}: {value!r} is not a count. {_FIX}")
    return int(value)


def _counts(values, where: str) -> List[int]:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{where}: expected a list of counts, got {type(values).__name__}.")
    return [_count(v, f"{where}[{i}]") for i, v in enumerate(values)]


@dataclasses.dataclass
class ClassStats:
    """Counts per contiguous class id, checked on construction.

    Attributes:
        image_counts: images containing each class.
        instance_counts: instances of each class.
        num_images: training images (K of IIF), or None when the source does not say.
        class_names: optional names, for messages.
        source: where the counts came from.
        fractal_dimensions: optional box-counting dimension of each class's box centres
            (FRACAL), each a positive finite number; None when not computed.
        fractal_max_grid: the finest grid they were counted on; set with them.

    Raises:
        ValueError: a count that is not a non-negative integer, lists of different lengths,
            a class in more images than it has instances or than ``num_images``.
    """

    image_counts: List[int]
    instance_counts: List[int]
    num_images: Optional[int] = None
    class_names: Optional[List[str]] = None
    source: str = ""
    fractal_dimensions: Optional[List[float]] = None
    fractal_max_grid: Optional[int] = None

    def __post_init__(self):
        src = self.source or "class counts"
        self.image_counts = _counts(self.image_counts, f"{src}: image_counts")
        self.instance_counts = _counts(self.instance_counts, f"{src}: instance_counts")
        if len(self.image_counts) != len(self.instance_counts):
            raise ValueError(
                f"{src}: {len(self.image_counts)} image counts but "
                f"{len(self.instance_counts)} instance counts; both need one entry per class."
            )
        if self.num_images is not None:
            self.num_images = _count(self.num_images, f"{src}: num_images")
        names = self.class_names
        if names is not None and (
            not isinstance(names, (list, tuple))
            or len(names) != len(self.image_counts)
            or not all(isinstance(n, str) for n in names)
        ):
            raise ValueError(
                f"{src}: class_names must be {len(self.image_counts)} strings, one per class "
                "(or null)."
            )
        for i, (img, ins) in enumerate(zip(self.image_counts, self.instance_counts)):
            name = f" ({names[i]})" if names else ""
            if img > ins:
                raise ValueError(
                    f"{src}: class {i}{name} is in {img} images but has only {ins} instances; "
                    "an image with a class holds at least one instance of it. Swapped columns?"
                )
            if self.num_images is not None and img > self.num_images:
                raise ValueError(
                    f"{src}: class {i}{name} is in {img} images, more than the "
                    f"{self.num_images} training images (num_images)."
                )
        self._check_fractal(src)

    def _check_fractal(self, src: str):
        dims, grid = self.fractal_dimensions, self.fractal_max_grid
        if (dims is None) != (grid is None):
            raise ValueError(
                f"{src}: fractal_dimensions and fractal_max_grid go together (both or null); "
                "recompute the file with iif_d2.resolve_training_set."
            )
        if dims is None:
            return
        ok_grid = isinstance(grid, Integral) and not isinstance(grid, bool) and grid >= 2
        if not ok_grid:
            raise ValueError(f"{src}: fractal_max_grid {grid!r} is not an integer >= 2.")
        self.fractal_max_grid = int(grid)
        if not isinstance(dims, (list, tuple)) or len(dims) != self.num_classes:
            raise ValueError(
                f"{src}: fractal_dimensions must be a list of {self.num_classes} numbers, one "
                "per class."
            )
        for i, d in enumerate(dims):
            good = isinstance(d, Real) and not isinstance(d, (bool, np.bool_))
            if not good or not math.isfinite(d) or d <= 0:
                raise ValueError(
                    f"{src}: fractal_dimensions[{i}] = {d!r} is not a positive finite number."
                )
        self.fractal_dimensions = [float(d) for d in dims]

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
        if self.num_images == 0:
            raise ValueError(
                f"{self.source}: num_images is 0, but IIF's K is the number of training images "
                "(at least 1); give the training set's image count."
            )
        return f, self.num_images

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    def save(self, path: str):
        """Write the statistics as JSON (readable by :func:`load_counts_file`)."""
        from detectron2.utils.file_io import PathManager

        with PathManager.open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)


def _category_ids(dataset_dicts, source: str) -> tuple:
    """The non-crowd category ids of all annotations, and the number per image."""
    cats: List[int] = []
    lengths = np.zeros(len(dataset_dicts), dtype=np.int64)
    for i, record in enumerate(dataset_dicts):
        before = len(cats)
        try:
            cats.extend(
                a["category_id"] for a in record.get("annotations", ()) if not a.get("iscrowd")
            )
        except (KeyError, AttributeError, TypeError):
            raise ValueError(
                f"dataset {source!r}: record {i} ({record.get('file_name', 'no file_name')}) "
                "has an annotation that is not a dict with a category_id; fix the dataset's "
                "loader (detectron2's standard dataset format)."
            ) from None
        lengths[i] = len(cats) - before
    if set(map(type, cats)) - {int, np.int64, np.int32}:
        bad = next(c for c in cats if type(c) not in (int, np.int64, np.int32))
        raise ValueError(
            f"dataset {source!r}: category_id {bad!r} ({type(bad).__name__}) is not an integer; "
            "detectron2 dataset dicts hold contiguous integer ids in [0, NUM_CLASSES)."
        )
    return np.asarray(cats, dtype=np.int64), lengths


def count_dataset_dicts(dataset_dicts: Sequence[Dict], num_classes: int, source="") -> ClassStats:
    """Count images and (non-crowd) instances per class on detectron2 dataset dicts.

    Args:
        dataset_dicts: dicts in detectron2's standard format, with contiguous ``category_id``.
        num_classes: C; every category id must lie in [0, C).
        source: the dataset's name, for messages.

    Returns:
        ClassStats with ``num_images = len(dataset_dicts)``.

    Raises:
        ValueError: naming the dataset, for an annotation without an integer category id or
            one outside [0, C).
    """
    cat, lengths = _category_ids(dataset_dicts, source)
    if cat.size and (cat.min() < 0 or cat.max() >= num_classes):
        raise ValueError(
            f"dataset {source!r}: category_id {int(cat.min() if cat.min() < 0 else cat.max())} "
            f"outside [0, {num_classes}); set MODEL.ROI_HEADS.NUM_CLASSES to the dataset's "
            "class count."
        )
    image = np.repeat(np.arange(len(dataset_dicts), dtype=np.int64), lengths)
    instance_counts = np.bincount(cat, minlength=num_classes)
    pairs = np.unique(image * num_classes + cat)
    image_counts = np.bincount(pairs % num_classes, minlength=num_classes)
    return ClassStats(
        image_counts.tolist(), instance_counts.tolist(), len(dataset_dicts), source=source
    )


def box_centres(dataset_dicts: Sequence[Dict], source: str = ""):
    """The centres of the non-crowd boxes, divided by their image's width and height.

    Args:
        dataset_dicts: detectron2 dataset dicts with ``width``, ``height`` and annotations with
            ``bbox`` / ``bbox_mode`` and contiguous ``category_id``.
        source: the dataset's name, for messages.

    Returns:
        ``(centres, labels)``: (N, 2) float64 (x, y) and (N,) int64 class ids.

    Raises:
        ValueError: naming the record, for a record without a positive width and height or a
            box in a mode detectron2 cannot convert to absolute XYXY.
    """
    from detectron2.structures import BoxMode

    centres, labels = [], []
    for i, record in enumerate(dataset_dicts):
        anns = [a for a in record.get("annotations", ()) if not a.get("iscrowd")]
        if not anns:
            continue
        w, h = record.get("width"), record.get("height")
        if not (isinstance(w, Real) and isinstance(h, Real) and w > 0 and h > 0):
            raise ValueError(
                f"dataset {source!r}: record {i} ({record.get('file_name', 'no file_name')}) "
                "has no positive width/height; FRACAL normalises box centres by the image "
                "size. Add them in the dataset's loader (detectron2's standard format)."
            )
        for a in anns:
            try:
                x0, y0, x1, y1 = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
            except (KeyError, AssertionError, TypeError, ValueError) as e:
                raise ValueError(
                    f"dataset {source!r}: record {i}: a box that cannot be converted to "
                    f"absolute XYXY ({e!r}); use detectron2's absolute box modes."
                ) from None
            centres.append(((x0 + x1) / (2.0 * w), (y0 + y1) / (2.0 * h)))
            labels.append(a["category_id"])
    return (
        np.asarray(centres, dtype=np.float64).reshape(-1, 2),
        np.asarray(labels, dtype=np.int64),
    )


def _resolve(path: str) -> str:
    if re.match(r"(?i)(https?|ftp)://", path):
        raise ValueError(
            f"{path}: counts files are read from local files, never fetched from the web; "
            "download it, check it, and give its local path."
        )
    if path.startswith(PACKAGE_PREFIX):
        name = path[len(PACKAGE_PREFIX) :]
        if not re.fullmatch(r"[\w.-]+", name) or name.startswith("."):
            raise FileNotFoundError(
                f"IIF counts file {path!r}: iif_d2:// names a counts file shipped with the "
                "package (iif_d2://lvis_v1_train.csv, iif_d2://coco_train2017.csv), not a path."
            )
        return str(resources.files("iif_d2") / "data" / name)
    return path


def _csv_int(text, where: str) -> int:
    try:
        return _count(int(str(text).strip()), where)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {text!r} is not a count. {_FIX}") from None


def _csv_order(rows: List[Dict], source: str) -> List[Dict]:
    """Rows in contiguous-id order: by ``contiguous_id`` (0..C-1), else by unique integer
    ``category_id``, else as written."""
    for key in ("contiguous_id", "category_id"):
        if rows and key in rows[0]:
            ids = []
            for r in rows:
                try:
                    ids.append(int(r[key]))
                except (TypeError, ValueError):
                    raise ValueError(
                        f"{source}: line {r['_line']}: {key} {r[key]!r} is not an integer."
                    ) from None
            seen: Dict[int, int] = {}
            for i, r in zip(ids, rows):
                if i in seen:
                    raise ValueError(
                        f"{source}: {key} {i} on lines {seen[i]} and {r['_line']}; each class "
                        "needs exactly one row."
                    )
                seen[i] = r["_line"]
            if key == "contiguous_id" and sorted(ids) != list(range(len(ids))):
                raise ValueError(
                    f"{source}: contiguous_id must be 0..{len(ids) - 1} (one row per class); "
                    f"missing {sorted(set(range(len(ids))) - set(ids))[:10]}."
                )
            return [r for _, r in sorted(zip(ids, rows), key=lambda t: t[0])]
    return rows


def _read_csv(text: str, source: str) -> ClassStats:
    lines = text.splitlines()
    header = next((line for line in lines if line.strip() and not line.startswith("#")), "")
    if "," not in header and re.match(r"\s*[A-Za-z_][\w.]*\s*:(\s|$)", header):
        raise ValueError(
            f"{source} looks like a YAML config ({header.strip()!r}), not a counts CSV with "
            "image_count and instance_count columns; a config is passed with --config-file."
        )
    num_images = None
    for n, line in enumerate(lines, 1):
        if line.startswith("#") and ":" in line and line[1:].split(":")[0].strip() == "num_images":
            num_images = _csv_int(line.split(":", 1)[1], f"{source}: line {n}: num_images")
    body = [(n, line) for n, line in enumerate(lines, 1) if not line.startswith("#")]
    reader = csv.DictReader(line for _, line in body)
    rows = []
    for r in reader:
        r["_line"] = body[reader.line_num - 1][0]
        if None in r or None in r.values():
            raise ValueError(
                f"{source}: line {r['_line']} has {'more' if None in r else 'fewer'} fields than "
                "the header; one value per column."
            )
        rows.append(r)
    header = set(reader.fieldnames or ())
    missing = {"image_count", "instance_count"} - header
    if missing:
        raise ValueError(
            f"{source}: counts CSV needs the columns image_count and instance_count "
            f"(missing: {', '.join(sorted(missing))}); one row per class in contiguous-id order."
        )
    if not rows:
        raise ValueError(f"{source}: the counts CSV has a header but no class rows.")
    rows = _csv_order(rows, source)
    image_counts = [_csv_int(r["image_count"], f"{source}: line {r['_line']}") for r in rows]
    instance_counts = [_csv_int(r["instance_count"], f"{source}: line {r['_line']}") for r in rows]
    names = [r["name"] for r in rows] if "name" in header else None
    return ClassStats(image_counts, instance_counts, num_images, names, source)


def _coco_categories(data: Dict, source: str) -> List[Dict]:
    cats = data["categories"]
    if not isinstance(cats, list) or not cats:
        raise ValueError(f"{source}: 'categories' must be a non-empty list.")
    seen = set()
    for i, c in enumerate(cats):
        cid = c.get("id") if isinstance(c, dict) else None
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise ValueError(f"{source}: categories[{i}] has no integer 'id' (got {cid!r}).")
        if cid in seen:
            raise ValueError(
                f"{source}: category id {cid} appears twice in 'categories'; ids must be unique."
            )
        seen.add(cid)
    return sorted(cats, key=lambda c: c["id"])


def _lvis_counts(cats: List[Dict], source: str):
    image_counts, instance_counts = [], []
    for c in cats:
        where = f"{source}: category id {c['id']}"
        image_counts.append(_count(c["image_count"], f"{where}: image_count"))
        instance_counts.append(_count(c["instance_count"], f"{where}: instance_count"))
    return image_counts, instance_counts


def _annotation_groups(data: Dict, index: Dict[int, int], image_ids, source: str):
    """Annotations per image with contiguous category ids; those of unknown images dropped
    (detectron2's COCO loader never sees them) and counted."""
    anns = data["annotations"]
    if not isinstance(anns, list):
        raise ValueError(f"{source}: 'annotations' must be a list.")
    by_image: Dict = {}
    dropped = 0
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            raise ValueError(f"{source}: annotations[{i}] lacks image_id or category_id.")
        cid = a["category_id"]
        if isinstance(cid, bool) or cid not in index:
            raise ValueError(
                f"{source}: annotations[{i}] (id {a.get('id')}) has category_id {cid!r}, which "
                "is not in 'categories'; add the category or remove the annotation."
            )
        try:
            unknown = image_ids is not None and a["image_id"] not in image_ids
        except TypeError:
            raise ValueError(f"{source}: annotations[{i}]: image_id {a['image_id']!r}.") from None
        if unknown:
            dropped += 1
            continue
        if not a.get("iscrowd") and "bbox" in a and not is_box(a["bbox"]):
            raise ValueError(
                f"{source}: annotations[{i}] (id {a.get('id')}) has bbox {repr(a['bbox'])[:60]}: a "
                "box is 4 finite numbers [x, y, w, h]; fix or remove the annotation."
            )
        by_image.setdefault(a["image_id"], []).append(
            {"category_id": index[cid], "iscrowd": a.get("iscrowd", 0)}
        )
    if dropped:
        logger.warning(
            "%s: %d of %d annotations refer to image ids missing from 'images'; they are not "
            "counted (detectron2's loader drops them too).",
            source,
            dropped,
            len(anns),
        )
    return list(by_image.values()), dropped


def _image_ids(images: List, source: str) -> set:
    """The ids of 'images'; an error for an entry without one, or an id used twice (the COCO
    and LVIS APIs keep one image per id and attach both images' annotations to it)."""
    ids, seen = set(), 0
    try:
        for seen, img in enumerate(images):
            image_id = img["id"]
            if image_id in ids:
                name = img.get("file_name") or img.get("coco_url")
                raise ValueError(
                    f"{source}: image id {image_id!r} appears twice in 'images' "
                    f"(images[{seen}]{f', {name}' if name else ''}); "
                    "detectron2 would attach both images' annotations to one file. Give each "
                    "image a unique id (and its annotations that image_id)."
                )
            ids.add(image_id)
    except (TypeError, KeyError, AttributeError):
        raise ValueError(
            f"{source}: images[{seen}] has no usable 'id'; every entry of 'images' needs a "
            "unique integer id."
        ) from None
    return ids


def _check_lvis_counts(stats: ClassStats, counted: ClassStats, cats: List[Dict], source: str):
    """An LVIS json's image_count / instance_count against what its annotations hold."""
    pairs = zip(stats.image_counts, counted.image_counts, stats.instance_counts,
                counted.instance_counts)  # fmt: skip
    for c, (img, img_ann, ins, ins_ann) in enumerate(pairs):
        if (img, ins) != (img_ann, ins_ann):
            raise ValueError(
                f"{source}: category id {cats[c]['id']} ({cats[c].get('name', '?')}) has "
                f"image_count {img} and instance_count {ins}, but the file's annotations put it "
                f"in {img_ann} images with {ins_ann} instances. Recompute image_count and "
                "instance_count from the annotations, or count the training set itself "
                "(MODEL.CLASS_COUNTS.SOURCE 'dataset')."
            )


def _from_coco_like(data: Dict, source: str) -> ClassStats:
    cats = _coco_categories(data, source)
    names = [str(c.get("name", c["id"])) for c in cats]
    images = data.get("images") or None
    if images is not None and not isinstance(images, list):
        raise ValueError(f"{source}: 'images' must be a list.")
    num_images = len(images) if images else None
    image_ids = _image_ids(images, source) if images else None
    lvis = all("image_count" in c and "instance_count" in c for c in cats)
    if lvis:
        stats = ClassStats(*_lvis_counts(cats, source), num_images, names, source)
        if not data.get("annotations"):
            return stats
    elif "annotations" not in data:
        raise ValueError(
            f"{source}: an LVIS/COCO json needs image_count and instance_count on every "
            "category (LVIS) or an 'annotations' list (COCO)."
        )
    index = {c["id"]: i for i, c in enumerate(cats)}
    groups, _ = _annotation_groups(data, index, image_ids, source)
    counted = count_dataset_dicts([{"annotations": v} for v in groups], len(cats), source)
    if not lvis and not (num_images or counted.num_images):
        raise ValueError(
            f"{source}: no image to count: 'images' is empty or missing and no annotation "
            "names an image of it; give the training json with its images and annotations."
        )
    if lvis:
        _check_lvis_counts(stats, counted, cats, source)
        return stats
    return ClassStats(
        counted.image_counts, counted.instance_counts, num_images or counted.num_images, names,
        source,
    )  # fmt: skip


def _from_iif_json(data: Dict, source: str) -> ClassStats:
    fields = {f.name for f in dataclasses.fields(ClassStats)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(
            f"{source}: unknown keys {sorted(unknown)} in an iif-d2 counts JSON (expected "
            f"{sorted(fields)}); write it with ClassStats.save or python -m iif_d2.cli --save."
        )
    checked = ClassStats(**dict(data, source=source))  # errors name this file
    return dataclasses.replace(checked, source=data.get("source") or source)


def load_counts_file(path: str) -> ClassStats:
    """Read class counts from a file.

    Accepted: a CSV with ``image_count`` and ``instance_count`` columns (rows in contiguous-id
    order, or sorted by a ``contiguous_id`` column (0..C-1) or a ``category_id`` column (unique
    integers); a ``# num_images: N`` comment gives K); a JSON written by :meth:`ClassStats.save`
    or ``python -m iif_d2.cli --save``; an LVIS json (its ``image_count``/``instance_count``,
    which must agree with its annotations where it has them) or a COCO json (counted from its
    annotations; annotations of image ids missing from ``images`` are dropped, as detectron2's
    loader drops them, and their number is logged as a warning; an unknown category id or an
    image id used twice is an error). ``iif_d2://lvis_v1_train.csv`` and
    ``iif_d2://coco_train2017.csv`` are shipped.

    Raises:
        FileNotFoundError: no such file, or a directory.
        ValueError: naming the file and the entry, for any count or id that is not valid.
    """
    from detectron2.utils.file_io import PathManager

    local = _resolve(path)
    if not PathManager.exists(local) or PathManager.isdir(local):
        what = "is a directory" if PathManager.exists(local) else "does not exist"
        raise FileNotFoundError(
            f"IIF counts file {path!r} {what}. Set MODEL.CLASS_COUNTS.FILE to a CSV/JSON "
            "counts file, or use MODEL.CLASS_COUNTS.SOURCE 'dataset'."
        )
    if "://" not in local and not os.path.isfile(local):  # a pipe would block the read
        raise FileNotFoundError(
            f"IIF counts file {path!r} is not a regular file (a pipe or device?); give a "
            "CSV/JSON counts file."
        )
    try:
        with PathManager.open(local, "r") as f:
            text = f.read()
        text = text[1:] if text.startswith("\ufeff") else text  # a byte-order mark
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (expected a counts CSV or JSON).") from None
    if not text.strip():
        raise ValueError(
            f"{path} is empty; give a counts CSV (columns image_count, instance_count) or JSON."
        )
    if not local.endswith(".json"):
        return _read_csv(text, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    except RecursionError:
        raise ValueError(f"{path}: its JSON nests too deeply to be a counts file.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a counts JSON is an object, not a {type(data).__name__}.")
    if "stats" in data and "weights" in data:  # written by `python -m iif_d2.cli --save`
        data = data["stats"]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: 'stats' must be an object (python -m iif_d2.cli --save).")
    if "image_counts" in data:
        return _from_iif_json(data, path)
    if "categories" in data:
        return _from_coco_like(data, path)
    raise ValueError(f"{path}: neither an iif-d2 counts JSON nor an LVIS/COCO json.")
