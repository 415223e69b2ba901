"""The training dataset dicts checked once per run, where they are loaded
(:func:`iif_d2.data.loader.loader_dataset_dicts`): every training run and the class statistics
go through that load, so the statistics are counted on the dicts as checked here.

Broken data is an error naming the dataset, the image (id and file) and the annotation
(index, and id where the loader kept it), with the fix:

* a box or polygon coordinate that is NaN, inf or not a number; a box that is not 4 numbers,
  or without an absolute ``bbox_mode``; a segmentation that is neither polygons nor an RLE;
* an image whose ``width``/``height`` is not a number of at least 2 pixels;
* one ``image_id`` for two different files;
* a 16-bit (or 32-bit, float) image: detectron2 reads it as 8-bit RGB, all white
  (PNG headers are read, 32 bytes each; TIFFs through PIL's header; JPEGs are always 8-bit).

What detectron2 itself drops is dropped here, counted, logged in one line and so left out of
the class statistics (detectron2 would drop it only in the mapper, after the statistics had
counted it):

* polygons of fewer than 3 points (``load_coco_json`` drops them), and annotations left
  without a polygon (``"segmentation": []``; with MODEL.MASK_ON also one without any
  segmentation): ``load_coco_json`` ignores such instances;
* boxes of zero or negative width or height, and boxes entirely outside their image: the
  mapper clips boxes to the image and drops the empty ones (``filter_empty_instances``);
* with DATALOADER.FILTER_EMPTY_ANNOTATIONS, images left without a non-crowd annotation.

Crowd annotations are not checked: detectron2's mapper drops them before it reads a box.
detectron2's LVIS loader asserts on a degenerate polygon while loading: :func:`load_checked`
turns that into an error naming the dataset, its json, the annotation and the fix.
"""

import contextlib
import importlib
import logging
import math
import os
import stat
import struct
from numbers import Integral, Real
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "DatasetError",
    "is_box",
    "load_checked",
    "validate_dataset_dicts",
    "check_image_header",
]

logger = logging.getLogger(__name__)

XYXY_ABS, XYWH_ABS, XYWHA_ABS = 0, 1, 4  # detectron2's BoxMode values (an IntEnum)
MIN_SIDE = 2  # pixels
# PIL modes detectron2's read_image converts to 8-bit RGB/BGR correctly
SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK",
                             "YCbCr", "La"})  # fmt: skip
_SEQUENCES = (list, tuple, np.ndarray)
_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*")
_FIX_IMAGE_MODE = (
    "detectron2 reads images as 8-bit and would read it as all white; convert the image to "
    "8-bit RGB or grayscale (e.g. PIL: Image.open(p).point(lambda v: v / 256).convert('L'))"
)


class DatasetError(ValueError):
    """Training data that cannot be trained on as it is; the message names the dataset, the
    image, the annotation and the fix."""


def _short(value) -> str:
    """``repr(value)``, cut to 80 characters (a message stays readable on one line)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _image(record: Dict, i: int) -> str:
    image_id = record.get("image_id")
    where = f"image {_short(image_id)}" if image_id is not None else f"record {i}"
    return f"{where} ({record.get('file_name', 'no file_name')})"


def _annotation(ann: Dict, j: int) -> str:
    return f"annotations[{j}]" + (f" (id {ann['id']!r})" if "id" in ann else "")


def _finite(values) -> bool:
    """Whether every entry is a finite number; False for anything else (one C-level sum: NaN
    and inf propagate, a non-number raises)."""
    try:
        total = sum(values, 0.0)
    except (TypeError, ArithmeticError):  # a non-number; an int too large for a float
        return False
    return math.isfinite(total)


def is_box(box) -> bool:
    """Whether ``box`` is 4 finite numbers: the box check of the training dicts here and of a
    COCO/LVIS json's annotations where the class counts read them
    (:func:`iif_d2.data.class_stats.load_counts_file`)."""
    return isinstance(box, _SEQUENCES) and len(box) == 4 and _finite(box)


def _box(ann: Dict, fail: Callable[[str], None]):
    """The box as absolute (x0, y0, x1, y1), or None for a rotated box (not checked)."""
    box, mode = ann.get("bbox"), ann.get("bbox_mode")
    if box is None:
        fail("has no bbox; every instance annotation needs one (detectron2's standard format)")
    mode = getattr(mode, "value", mode)
    if mode == XYWHA_ABS:
        return None
    if mode not in (XYXY_ABS, XYWH_ABS):
        fail(
            f"has bbox_mode {ann.get('bbox_mode')!r}; training needs an absolute mode "
            "(BoxMode.XYWH_ABS or BoxMode.XYXY_ABS)"
        )
    if not is_box(box):
        fail(
            f"has bbox {_short(box)}: a box is 4 finite numbers; fix or remove the annotation in "
            "the dataset's json (or its loader)"
        )
    x0, y0, a, b = box
    return (x0, y0, x0 + a, y0 + b) if mode == XYWH_ABS else (x0, y0, a, b)


def _polygons(segm, fail: Callable[[str], None]):
    """The polygons of ``segm`` (a list) with >= 3 points, in order; an error for a
    non-finite one."""
    valid = []
    for k, poly in enumerate(segm):
        if not isinstance(poly, _SEQUENCES):
            fail(
                f"has segmentation[{k}] of type {type(poly).__name__}; polygons are lists of "
                "x, y coordinates (COCO format)"
            )
        if not _finite(poly):
            fail(
                f"has a polygon coordinate that is NaN, inf or not a number (segmentation[{k}]); "
                "fix or remove the annotation in the dataset's json (or its loader)"
            )
        if len(poly) >= 6 and len(poly) % 2 == 0:
            valid.append(poly)
    return valid


def _rle(segm: Dict, record: Dict, fail: Callable[[str], None]) -> None:
    size = segm.get("size")
    if "counts" not in segm or not isinstance(size, (list, tuple)) or len(size) != 2:
        fail("has an RLE segmentation without 'counts' and 'size' [height, width]")
    known = record.get("height"), record.get("width")
    if None not in known and list(size) != list(known):
        fail(
            f"has an RLE of size {list(size)} on an image of {list(known)} [height, width]; "
            "encode the mask at the image's size"
        )


def _check_size(record: Dict, i: int, source: str):
    """(width, height) of the record, None where it gives neither; an error for a bad one."""
    if "width" not in record and "height" not in record:
        return None
    w, h = record.get("width"), record.get("height")
    ok = all(isinstance(v, Real) and not isinstance(v, bool) for v in (w, h)) and _finite((w, h))
    if not ok or min(w, h) < MIN_SIDE:
        raise DatasetError(
            f"dataset {source!r}: {_image(record, i)} is {_short(w)} x {_short(h)} pixels "
            f"(width x height); an image needs at least {MIN_SIDE} x {MIN_SIDE}. Fix its width and "
            "height in the dataset's json (they must match the file) or remove the image."
        )
    return w, h


def _check_category_ids(dicts: Sequence[Dict], source: str, num_classes: int) -> None:
    """Every annotation's category_id is a class of the dataset (0..num_classes-1, detectron2's
    contiguous ids): an unknown category in the json would index past the classifier."""
    for i, record in enumerate(dicts):
        for j, ann in enumerate(record.get("annotations") or ()):
            c = ann.get("category_id")
            if c.__class__ is not int or not 0 <= c < num_classes:
                if isinstance(c, Integral) and not isinstance(c, bool) and 0 <= c < num_classes:
                    continue
                raise DatasetError(
                    f"dataset {source!r}: {_image(record, i)}: {_annotation(ann, j)} has "
                    f"category_id {c!r} (contiguous), but the dataset has {num_classes} classes "
                    f"(0..{num_classes - 1}); the annotation's category is not among the json's "
                    "categories: fix or remove it."
                )


def _check_ids(dicts: Sequence[Dict], source: str) -> None:
    files: Dict = {}
    for i, record in enumerate(dicts):
        image_id = record.get("image_id")
        if image_id is None:
            continue
        try:
            other = files.setdefault(image_id, i)
        except TypeError:
            raise DatasetError(
                f"dataset {source!r}: record {i} has image_id {image_id!r}, which is not a "
                "number or a string; give every image a unique integer id."
            ) from None
        if other != i and dicts[other].get("file_name") != record.get("file_name"):
            raise DatasetError(
                f"dataset {source!r}: image id {image_id!r} is used by two files, "
                f"{dicts[other].get('file_name')} and {record.get('file_name')}; image ids "
                "must be unique across DATASETS.TRAIN (give one of them another id, in its "
                "json and its annotations' image_id)."
            )


def check_image_header(path: str, size=None) -> Optional[str]:
    """What is wrong with the image file ``path`` for detectron2's reader, from its header.

    PNG: the 32-byte header (16-bit grayscale is read as all white; the size must be ``size``).
    TIFF: PIL's header (any mode PIL cannot turn into 8-bit RGB). A pipe or device is refused
    (reading it would block). Other formats, and files that are not there (detectron2 says so
    when it reads them), are not checked.

    Args:
        path: the image file.
        size: (width, height) the dataset gives it, or None.

    Returns:
        None, or the problem and its fix in a sentence.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe would block the read
            return "is not a regular file (a pipe or device?); give an image file"
        with open(path, "rb") as f:
            head = f.read(32)
    except FileNotFoundError:
        return _MISSING
    except OSError:
        return None
    if head.startswith(_PNG) and len(head) >= 26 and head[12:16] == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
        if colour == 0 and depth == 16:
            return f"is a 16-bit grayscale PNG; {_FIX_IMAGE_MODE}"
        if size is not None and (width, height) != tuple(size):
            return (
                f"is {width} x {height} pixels, but the dataset says {size[0]} x {size[1]}; "
                "fix width and height in the dataset's json"
            )
        return None
    if head[:4] in _TIFF:
        from PIL import Image

        try:
            with Image.open(path) as image:
                mode = image.mode
        except (OSError, ValueError) as e:
            return f"cannot be read as an image ({e})"
        if mode not in SUPPORTED_MODES:
            return f"has PIL mode {mode!r}; {_FIX_IMAGE_MODE}"
    return None


_MISSING = (
    "does not exist; check the dataset's image folder (DETECTRON2_DATASETS, or the image root "
    "it was registered with) or remove the image from its json"
)


def _check_images(dicts: Sequence[Dict], source: str) -> None:
    """Every image file is there and a regular file (training would stop at the first missing
    one, hours in); the headers of the PNG and TIFF files (by extension: JPEGs are 8-bit by
    format)."""
    for i, record in enumerate(dicts):
        path = record.get("file_name")
        if not isinstance(path, str) or "://" in path:
            continue
        if not path.lower().endswith((".png", ".tif", ".tiff")):
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except FileNotFoundError:
                raise DatasetError(f"dataset {source!r}: {_image(record, i)} {_MISSING}.") from None
            except OSError:
                continue
            if not regular:
                raise DatasetError(
                    f"dataset {source!r}: {_image(record, i)} is not a regular file (a pipe or "
                    "device?); give an image file."
                )
            continue
        size = (record["width"], record["height"]) if "width" in record else None
        problem = check_image_header(path, size)
        if problem:
            raise DatasetError(f"dataset {source!r}: {_image(record, i)} {problem}.")


class _Drops:
    """What was dropped, by reason, with the first example of each."""

    REASONS = {
        "polygon": "without a polygon of >= 3 points",
        "empty_box": "with a box of zero or negative width or height",
        "outside": "with a box entirely outside its image",
    }

    def __init__(self):
        self.count = dict.fromkeys(self.REASONS, 0)
        self.first: Dict[str, str] = {}
        self.images = 0
        self.polygons = 0  # polygons < 3 points removed from annotations that keep others

    def add(self, reason: str, where: str):
        self.count[reason] += 1
        self.first.setdefault(reason, where)

    def __bool__(self):
        return bool(self.images or self.polygons or any(self.count.values()))

    def summary(self, source: str, num_images: int) -> str:
        parts = [
            f"{n} {self.REASONS[r]} (first: {self.first[r]})" for r, n in self.count.items() if n
        ]
        text = f"dataset {source!r}: dropped {sum(self.count.values())} annotations ("
        text += "; ".join(parts) + ")"
        if self.polygons:
            text += f", {self.polygons} polygons of < 3 points from annotations that keep others"
        if self.images:
            text += f" and {self.images} images left without annotations"
        return (
            text + f", as detectron2 drops them in training; {num_images} images remain and "
            "the class statistics count only what remains."
        )


def _check_annotation(ann, j: int, record: Dict, i: int, source: str, masks: bool, size):
    """The careful check of one annotation: (None or the reason to drop it, the annotation to
    keep, the number of polygons < 3 points removed from it).

    Raises:
        DatasetError: naming the dataset, the image, the annotation and the fix.
    """

    def fail(problem):
        raise DatasetError(
            f"dataset {source!r}: {_image(record, i)}: {_annotation(ann, j)} {problem}."
        )

    if not isinstance(ann, dict):
        raise DatasetError(
            f"dataset {source!r}: {_image(record, i)}: annotations[{j}] is a "
            f"{type(ann).__name__}, not a dict (detectron2's standard format)."
        )
    if ann.get("iscrowd", 0):
        return None, ann, 0
    reason, new, removed = None, ann, 0
    box = _box(ann, fail)
    segm = ann.get("segmentation")
    if isinstance(segm, list):
        valid = _polygons(segm, fail)
        if not valid:
            reason = "polygon"
        elif len(valid) < len(segm):
            removed = len(segm) - len(valid)
            new = dict(ann, segmentation=valid)
    elif isinstance(segm, dict):
        _rle(segm, record, fail)
    elif segm is not None:
        fail(
            f"has a segmentation of type {type(segm).__name__}; it is a list of polygons or an "
            "RLE dict (COCO format)"
        )
    elif masks:
        reason = "polygon"
    if reason is None and box is not None:
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            reason = "empty_box"
        elif size is not None and (x0 >= size[0] or y0 >= size[1] or x1 <= 0 or y1 <= 0):
            reason = "outside"
    return reason, new, removed


class _Careful(Exception):
    """The fast path of :func:`_check_record` hands an annotation to the careful one."""


def _check_record(record: Dict, i: int, source: str, masks: bool, drops: _Drops):
    """The record's annotations to keep (the same list when all are kept).

    Each annotation first takes a fast path (a few float operations, one C-level ``sum`` per
    polygon: ~2 us); anything unusual goes to :func:`_check_annotation`, which drops it, keeps
    it or raises.
    """
    if "annotations" not in record:
        return None
    anns = record["annotations"]
    if not isinstance(anns, list):
        raise DatasetError(
            f"dataset {source!r}: {_image(record, i)} has 'annotations' of type "
            f"{type(anns).__name__}; it is a list of dicts (detectron2's standard format)."
        )
    size = _check_size(record, i, source)
    width, height = size if size is not None else (math.inf, math.inf)
    kept = None  # the annotations kept, once one is dropped or changed
    for j, ann in enumerate(anns):
        try:  # the fast path: a usual, valid annotation
            if ann.get("iscrowd", 0):
                if kept is not None:
                    kept.append(ann)
                continue
            x0, y0, a, b = ann["bbox"]
            mode = ann["bbox_mode"]
            total = x0 + y0 + a + b
            if total - total != 0:  # NaN or inf
                raise _Careful
            if mode == XYWH_ABS:
                x1, y1 = x0 + a, y0 + b
            elif mode == XYXY_ABS:
                x1, y1 = a, b
            else:
                raise _Careful
            if x1 <= x0 or y1 <= y0 or x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
                raise _Careful
            segm = ann.get("segmentation")
            if segm.__class__ is list and segm:
                for poly in segm:
                    n = len(poly)
                    total = sum(poly, 0.0)
                    if n < 6 or n & 1 or total - total != 0:
                        raise _Careful
            elif segm is not None or masks:
                raise _Careful
            if kept is not None:
                kept.append(ann)
            continue
        except (_Careful, KeyError, TypeError, ValueError, AttributeError, ArithmeticError):
            pass
        reason, new, removed = _check_annotation(ann, j, record, i, source, masks, size)
        drops.polygons += removed
        if reason is not None:
            drops.add(reason, f"{_image(record, i)} {_annotation(ann, j)}")
        if kept is None and (reason is not None or new is not ann):
            kept = list(anns[:j])
        if kept is not None and reason is None:
            kept.append(new)
    return anns if kept is None else kept


def validate_dataset_dicts(
    dicts: List[Dict],
    source: str,
    filter_empty: bool = True,
    masks: bool = False,
    check_images: bool = True,
) -> List[Dict]:
    """Check the training dicts; drop what detectron2 would drop in training (see the module).

    Args:
        dicts: detectron2 dataset dicts (not changed: a record that loses annotations is
            replaced by a shallow copy in the returned list).
        source: the dataset's name(s), for messages.
        filter_empty: DATALOADER.FILTER_EMPTY_ANNOTATIONS: drop images left without a
            non-crowd annotation.
        masks: MODEL.MASK_ON: an annotation needs a segmentation.
        check_images: read the PNG/TIFF headers (:func:`check_image_header`).

    Returns:
        the dicts to train on and count: ``dicts`` itself when nothing was dropped.

    Raises:
        DatasetError: one line naming the dataset, the image, the annotation and the fix.
    """
    drops = _Drops()
    out = None
    for i, record in enumerate(dicts):
        if not isinstance(record, dict):
            raise DatasetError(
                f"dataset {source!r}: record {i} is a {type(record).__name__}, not a dict "
                "(detectron2's standard dataset format)."
            )
        anns = record.get("annotations")
        kept = _check_record(record, i, source, masks, drops)
        if kept is anns:
            if out is not None:
                out.append(record)
            continue
        if out is None:
            out = list(dicts[:i])
        if filter_empty and not any(not a.get("iscrowd", 0) for a in kept):
            drops.images += 1
            continue
        out.append(dict(record, annotations=kept))
    _check_ids(dicts, source)
    if check_images:
        _check_images(dicts if out is None else out, source)
    if not drops:
        return dicts
    if not out:
        raise DatasetError(
            drops.summary(source, 0).split(", as detectron2")[0]
            + ": no training image is left; fix the annotations."
        )
    logger.warning(drops.summary(source, len(out)))
    return out


def load_checked(load: Callable[[], List[Dict]], names: Sequence[str], **checks) -> List[Dict]:
    """``load()`` (detectron2's ``get_detection_dataset_dicts`` of ``names``) and then
    :func:`validate_dataset_dicts` of what it returns.

    detectron2's loaders assert on data they cannot load (the LVIS loader on a polygon of
    fewer than 3 points or an empty ``segmentation``; any loader on an empty dataset): such an
    AssertionError becomes a :class:`DatasetError` naming the datasets, their json files, the
    first such annotation where it can be found, and the fix.

    Args:
        load: returns the dicts.
        names: the datasets ``load`` loads (DATASETS.TRAIN).
        checks: passed to :func:`validate_dataset_dicts`.
    """
    source = "+".join(names)
    try:
        with _unique_json_image_ids():
            dicts = load()
    except AssertionError as e:
        raise DatasetError(_loader_assertion(names, str(e))) from None
    except _DuplicateImageId as e:
        from detectron2.data import MetadataCatalog

        files = [MetadataCatalog.get(n).get("json_file", None) for n in names]
        where = ", ".join(f for f in files if f) or "its json"
        raise DatasetError(
            f"DATASETS.TRAIN {tuple(names)}: image id {e.args[0]!r} appears twice in 'images' "
            f"of {where} (files {e.args[1]} and {e.args[2]}); detectron2's loader would keep "
            "one of them and attach both images' annotations to it. Give each image a unique "
            "id (and its annotations that image_id)."
        ) from None
    checked = validate_dataset_dicts(dicts, source, **checks)
    num_classes = _class_count(names)
    if num_classes:
        _check_category_ids(checked, source, num_classes)
    return checked


def _class_count(names: Sequence[str]) -> Optional[int]:
    """The datasets' class count (their metadata's thing_classes), None where they do not say
    or disagree."""
    from detectron2.data import MetadataCatalog

    counts = {len(MetadataCatalog.get(n).get("thing_classes", None) or ()) for n in names}
    return counts.pop() if len(counts) == 1 and 0 not in counts else None


class _DuplicateImageId(Exception):
    """One json lists an image id twice (args: the id, and both images' file names)."""


def _image_name(image: Dict) -> str:
    return str(image.get("file_name") or image.get("coco_url") or "?")


@contextlib.contextmanager
def _unique_json_image_ids():
    """While detectron2's COCO and LVIS loaders read their json: an image id listed twice in
    its 'images' is an error (both APIs index images by id, so the loader would silently keep
    one file and give it both images' annotations). Checked on the parsed list: O(images)."""
    patched = []

    def checking(original):
        def create_index(self, *args, **kwargs):
            seen = {}
            for image in (getattr(self, "dataset", None) or {}).get("images") or ():
                if not isinstance(image, dict) or "id" not in image:
                    continue
                try:
                    first = seen.setdefault(image["id"], image)
                except TypeError:  # an id that is not hashable: the loader's own error
                    continue
                if first is not image:
                    raise _DuplicateImageId(image["id"], _image_name(first), _image_name(image))
            orphans = sum(
                1
                for ann in (getattr(self, "dataset", None) or {}).get("annotations") or ()
                if isinstance(ann, dict) and ann.get("image_id") not in seen
            )
            if seen and orphans:
                logger.warning(
                    "%d annotation(s) name an image id that is not in the json's 'images'; "
                    "detectron2's loader drops them (they are neither trained on nor counted).",
                    orphans,
                )
            return original(self, *args, **kwargs)

        return create_index

    for module, cls, method in (("lvis", "LVIS", "_create_index"),
                                ("pycocotools.coco", "COCO", "createIndex")):  # fmt: skip
        try:
            owner = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError):
            continue
        original = owner.__dict__.get(method)
        if original is None:
            continue
        setattr(owner, method, checking(original))
        patched.append((owner, method, original))
    try:
        yield
    finally:
        for owner, method, original in patched:
            setattr(owner, method, original)


def _loader_assertion(names: Sequence[str], message: str) -> str:
    from detectron2.data import MetadataCatalog

    files = [MetadataCatalog.get(n).get("json_file", None) for n in names]
    found = next((hit for f in files if f for hit in [_bad_polygon_in(f)] if hit), None)
    text = f"detectron2 could not load DATASETS.TRAIN {tuple(names)}"
    text += f" ({' '.join(message.split())})" if message.strip() else ""
    if found:
        return f"{text}: {found}; fix or remove that annotation (COCO polygons need >= 3 points)."
    where = ", ".join(f for f in files if f) or "its loader"
    return f"{text}; check the annotations in {where} (empty datasets, polygons < 3 points)."


def _bad_polygon_in(json_file: str) -> Optional[str]:
    """The first annotation of ``json_file`` whose segmentation detectron2's LVIS loader
    refuses (read only on that error path)."""
    import json

    try:
        with open(json_file) as f:
            data = json.load(f)
        for ann in data.get("annotations", ()):
            segm = ann.get("segmentation")
            if isinstance(segm, dict):
                return (
                    f"{json_file}: annotation id {ann.get('id')!r} (image {ann.get('image_id')!r}) "
                    "has an RLE segmentation, which detectron2's LVIS loader cannot read "
                    "(polygons only); give it as polygons, or register the json with "
                    "detectron2's COCO loader"
                )
            if isinstance(segm, list) and (not segm or any(len(p) < 6 or len(p) % 2 for p in segm)):
                return (
                    f"{json_file}: annotation id {ann.get('id')!r} (image {ann.get('image_id')!r}) "
                    f"has segmentation {segm!r:.60}"
                )
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return None
