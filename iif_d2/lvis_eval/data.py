"""Compact LVIS ground truth and detections: numpy arrays and RLE strings, no dict per object."""

import gc
import json
import math
import os
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import pycocotools.mask as mask_utils

from iif_d2.utils.io import missing_reason

__all__ = [
    "LVISDetections",
    "LVISGroundTruth",
    "load_json",
    "mask_areas",
    "read_results",
    "rle_runs",
]

FREQUENCIES = ("r", "c", "f")


def load_json(source, what: str):
    """Parse a json file, with one-line errors naming the file and the problem.

    Args:
        source: a path, or an already parsed object (returned as it is).
        what: the file's role in the messages ("results", "ground truth").

    Returns:
        the parsed json.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source
    _check_input(source, what)
    try:
        with open(source, encoding="utf-8-sig") as f:  # a byte-order mark is skipped
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {source} is not valid json ({e}).") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file {source} is not a text (json) file.") from None
    except OSError as e:
        raise ValueError(f"{what} file {source} cannot be read: {e.strerror or e}") from None


def mask_areas(rles) -> np.ndarray:
    """Areas of RLE masks (float64). In chunks: pycocotools 2.0.11's ``area`` fails on lists
    of 256 masks or more."""
    out = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def _csr(lists):
    """Lists of ints as (offsets, values)."""
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.fromiter((v for x in lists for v in x), dtype=np.int64, count=int(offsets[-1]))
    return offsets, values


class _AnnotationError(ValueError):
    """A ground-truth annotation's one-line error, raised inside a comprehension."""


def _image_index(ann: dict, index: dict) -> int:
    """The index of the image an annotation refers to; an error naming the annotation for an
    image id that is not among the file's images (or not an integer)."""
    image_id = ann["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        raise _AnnotationError(
            f"LVIS ground truth annotation id {ann.get('id')}: image_id {image_id!r} is not an "
            "integer; give its image's id."
        )
    if image_id not in index:
        raise _AnnotationError(
            f"LVIS ground truth annotation id {ann.get('id')} refers to image_id {image_id}, "
            "which is not among the json's images; add the image or remove the annotation."
        )
    return index[image_id]


def _checked_segm(ann: dict):
    """An annotation's segmentation; an error naming the annotation for a polygon that is
    not an even number (>= 6) of finite coordinates (pycocotools would rasterise it silently,
    and read one of 4 numbers as a box)."""
    segm = ann["segmentation"]
    if isinstance(segm, list):
        for k, poly in enumerate(segm):
            ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            try:  # one C-level sum: NaN and inf propagate, a non-number raises
                ok = ok and math.isfinite(sum(poly, 0.0))
            except (TypeError, OverflowError):
                ok = False
            if not ok:
                got = f"{len(poly)} numbers" if isinstance(poly, list) else type(poly).__name__
                raise ValueError(
                    f"LVIS ground truth annotation id {ann.get('id')}: segmentation[{k}] "
                    f"({got}) is not a polygon: a polygon is a list of x, y pairs, "
                    "at least 3 of them (finite numbers); fix the annotation file."
                )
    return segm


_OVERFLOW = "overflows: its x + w, y + h or area w * h is not a finite number"


def _finite_boxes(bbox: np.ndarray) -> np.ndarray:
    """Per XYWH box: all 4 numbers finite, and so are its corner x + w, y + h and its area
    w * h (a box of 1e308 numbers overflows them)."""
    with np.errstate(over="ignore", invalid="ignore"):
        corner = bbox[:, :2] + bbox[:, 2:]
        area = bbox[:, 2] * bbox[:, 3]
    return np.isfinite(bbox).all(axis=1) & np.isfinite(corner).all(axis=1) & np.isfinite(area)


def _to_rle(segm, h: int, w: int) -> dict:
    """An annotation's segmentation as compressed RLE (as ``LVIS.ann_to_rle``)."""
    if isinstance(segm, list):  # polygons, merged into one mask
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segm, h, w)
    return segm


@dataclass
class LVISGroundTruth:
    """An LVIS annotation file as arrays.

    Images are sorted by id; categories by id. Annotation fields are aligned arrays;
    ``rles`` (compressed RLE dicts) exist only when loaded with masks.
    """

    img_ids: np.ndarray  # (I,) int64, sorted
    cat_ids: np.ndarray  # (K,) int64, sorted
    cat_freq: np.ndarray  # (K,) int64: 0 rare, 1 common, 2 frequent
    neg: tuple  # CSR (offsets (I+1,), category ids) of neg_category_ids per image
    not_exhaustive: tuple  # CSR of not_exhaustive_category_ids per image
    ann_img: np.ndarray  # (A,) image index
    ann_cat_id: np.ndarray  # (A,) category id
    ann_id: np.ndarray  # (A,) annotation id
    ann_area: np.ndarray  # (A,) float64, the file's "area"
    ann_ignore: np.ndarray  # (A,) bool, the optional "ignore" field
    ann_bbox: np.ndarray  # (A, 4) float64 XYWH
    rles: Optional[List[dict]] = None
    img_sizes: Optional[np.ndarray] = None  # (I, 2) int64 (height, width), where given

    @classmethod
    def from_dict(cls, data: dict, with_masks: bool = True) -> "LVISGroundTruth":
        """Build from a parsed LVIS annotation dict.

        Args:
            data: the json dict (images, categories, annotations).
            with_masks: convert segmentations to RLE (needed for segm evaluation).

        Returns:
            LVISGroundTruth
        """
        if not isinstance(data, dict):
            raise ValueError("LVIS ground truth must be a json object with 'images', 'categories'.")
        for key in ("images", "categories", "annotations"):
            if key not in data:
                raise ValueError(f"LVIS ground truth has no {key!r} list; is this an LVIS file?")
            items = data[key]
            if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
                raise ValueError(
                    f"LVIS ground truth {key!r} must be a list of json objects; is this an "
                    "LVIS file?"
                )
            ids = [x.get("id") for x in items]
            bad = next((i for i in ids if isinstance(i, bool) or not isinstance(i, int)), 0)
            if bad != 0:
                raise ValueError(
                    f"LVIS ground truth {key!r}: id {bad!r} is not an integer; ids are integers."
                )
            if len(set(ids)) != len(ids):
                seen = set()
                twice = next(i for i in ids if i in seen or seen.add(i))
                raise ValueError(
                    f"LVIS ground truth {key!r}: id {twice} appears twice; ids must be unique "
                    "(lvis-api would keep only one of them)."
                )
        images = sorted(data["images"], key=lambda im: im["id"])
        try:
            img_ids = np.array([im["id"] for im in images], dtype=np.int64)
            neg = _csr([im["neg_category_ids"] for im in images])
            nel = _csr([im["not_exhaustive_category_ids"] for im in images])
            cats = sorted(data["categories"], key=lambda c: c["id"])
            cat_freq = np.array([FREQUENCIES.index(c["frequency"]) for c in cats], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"LVIS ground truth image/category lacks field {e}.") from None
        except ValueError:
            raise ValueError("LVIS category 'frequency' must be one of 'r', 'c', 'f'.") from None
        except TypeError:
            raise ValueError(
                "LVIS ground truth: an image's neg_category_ids or not_exhaustive_category_ids "
                "is not a list of category ids."
            ) from None
        known = np.array(sorted(c["id"] for c in cats), dtype=np.int64)
        for field, ids in (("neg_category_ids", neg), ("not_exhaustive_category_ids", nel)):
            listed = ids[1] if isinstance(ids, tuple) else getattr(ids, "indices", None)
            if listed is not None and len(listed) and not np.isin(listed, known).all():
                unknown = np.asarray(listed)[~np.isin(listed, known)][0]
                raise ValueError(
                    f"LVIS ground truth: an image's {field} lists {int(unknown)}, not a category "
                    "id of the file; give the annotation file the categories belong to."
                )
        anns = data["annotations"]
        index = {int(i): k for k, i in enumerate(img_ids)}
        try:
            ann_img = np.array([_image_index(a, index) for a in anns], dtype=np.int64)
            gt = cls(
                img_ids=img_ids,
                cat_ids=np.array([c["id"] for c in cats], dtype=np.int64),
                cat_freq=cat_freq,
                neg=neg,
                not_exhaustive=nel,
                ann_img=ann_img,
                ann_cat_id=np.array([a["category_id"] for a in anns], dtype=np.int64),
                ann_id=np.array([a["id"] for a in anns], dtype=np.int64),
                ann_area=np.array([a["area"] for a in anns], dtype=np.float64),
                ann_ignore=np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool),
                ann_bbox=np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
            )
        except KeyError as e:
            raise ValueError(f"LVIS ground truth annotation lacks field {e}.") from None
        except _AnnotationError as e:
            raise ValueError(str(e)) from None
        except (TypeError, ValueError):
            raise ValueError(
                "LVIS ground truth: an annotation's image_id, category_id, area or bbox is not "
                "a number (bbox: [x, y, w, h])."
            ) from None
        bool_cat = next((a for a in anns if isinstance(a["category_id"], bool)), None)
        if bool_cat is not None:
            raise ValueError(
                f"LVIS ground truth annotation id {bool_cat['id']}: category_id "
                f"{bool_cat['category_id']!r} is not an integer; give its category's id."
            )
        if len(anns) and not np.isin(gt.ann_cat_id, gt.cat_ids).all():
            j = int(np.flatnonzero(~np.isin(gt.ann_cat_id, gt.cat_ids))[0])
            raise ValueError(
                f"LVIS ground truth annotation id {anns[j]['id']}: category_id "
                f"{anns[j]['category_id']} is not in 'categories'."
            )
        bad = ~np.isfinite(gt.ann_bbox).all(axis=1) | (gt.ann_bbox[:, 2:] < 0).any(axis=1)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"LVIS ground truth annotation id {anns[j]['id']}: bbox {anns[j]['bbox']} is not "
                "4 finite numbers [x, y, w, h] with w, h >= 0; fix the annotation file."
            )
        if not _finite_boxes(gt.ann_bbox).all():
            j = int(np.flatnonzero(~_finite_boxes(gt.ann_bbox))[0])
            raise ValueError(
                f"LVIS ground truth annotation id {anns[j]['id']}: bbox {anns[j]['bbox']} "
                f"{_OVERFLOW}; fix the annotation file."
            )
        for im in images:
            for side in ("height", "width"):
                value = im.get(side, 1)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(
                        f"LVIS ground truth image id {im['id']}: {side} {value!r} is not a "
                        "positive integer (pixels)."
                    )
        if all("height" in im and "width" in im for im in images):
            gt.img_sizes = np.array(
                [(im["height"], im["width"]) for im in images], dtype=np.int64
            ).reshape(-1, 2)
        if with_masks:
            heights = {im["id"]: im["height"] for im in images}
            widths = {im["id"]: im["width"] for im in images}
            try:
                gt.rles = [
                    _to_rle(_checked_segm(a), heights[a["image_id"]], widths[a["image_id"]])
                    for a in anns
                ]
            except KeyError as e:
                raise ValueError(
                    f"LVIS ground truth annotation or image lacks field {e}, needed to evaluate "
                    "masks (--iou-type segm); evaluate boxes (--iou-type bbox) or give the "
                    "annotation file with segmentations."
                ) from None
        return gt

    @classmethod
    def from_json(cls, path: str, with_masks: bool = True) -> "LVISGroundTruth":
        """Load an LVIS annotation json file (see :meth:`from_dict`)."""
        return cls.from_dict(load_json(path, "ground truth"), with_masks=with_masks)


@dataclass
class LVISDetections:
    """Detections as aligned arrays, in the order given (the order breaks score ties, as in
    lvis-api).

    ``area`` is what lvis-api uses for area ranges: box ``w * h`` for bbox evaluation, the mask
    area for segm. ``rle_counts`` / ``rle_sizes`` hold compressed RLE masks (segm only; a count
    may be None where the mask can match nothing, see :func:`read_results`).
    """

    image_id: np.ndarray  # (N,) int64
    category_id: np.ndarray  # (N,) int64
    score: np.ndarray  # (N,) float64
    area: np.ndarray  # (N,) float64
    bbox: Optional[np.ndarray] = None  # (N, 4) float64 XYWH
    rle_counts: Optional[List[bytes]] = None
    rle_sizes: Optional[np.ndarray] = None  # (N, 2) int (height, width)
    mask_area: Optional[np.ndarray] = None  # (N,) float64, where known

    def __len__(self):
        return len(self.score)

    def rles(self, index) -> List[dict]:
        """The RLE dicts of detections ``index`` (for pycocotools)."""
        return [
            {"size": [int(h), int(w)], "counts": self.rle_counts[i]}
            for i, (h, w) in zip(index, self.rle_sizes[index])
        ]

    @classmethod
    def from_results(
        cls, results: list, iou_type: str, gt: Optional[LVISGroundTruth] = None
    ) -> "LVISDetections":
        """Build from lvis-api's results format (a list of dicts with image_id, category_id,
        score, and bbox (XYWH) and/or segmentation (compressed RLE)); see
        :func:`read_results`, which also reads a results file incrementally.

        Args:
            results: the list of result dicts.
            iou_type: "bbox" or "segm" (which fields are needed).
            gt: the ground truth, to check image and category ids and mask sizes against.

        Returns:
            LVISDetections
        """
        if not isinstance(results, list):
            raise ValueError("LVIS results must be a json list of detection objects.")
        return read_results(results, iou_type, gt)


# ---------------------------------------------------------------------------------------------
# Results files: read incrementally, checked entry by entry, into the arrays above.

CHUNK = 32768  # detections converted to arrays at a time
_READ_BYTES = 1 << 24  # bytes of the results file read at a time
_RLE_BATCH = 4096  # RLE strings decoded at a time
_BOX_FIX = "boxes are [x, y, w, h] in pixels (detectron2's BoxMode.XYWH_ABS)"
_RLE_FIX = (
    "masks must be compressed RLE of the image's size, as pycocotools.mask.encode writes them "
    "(detectron2's LVIS evaluator does)"
)


def _json_objects(path: str, what: str = "results"):
    """The elements of the json array in file ``path``, one at a time, parsed by the standard
    library's C scanner (``json.JSONDecoder.raw_decode``) from a buffer of ``_READ_BYTES``:
    memory holds one buffer, never the whole document."""
    decoder = json.JSONDecoder()
    space = re.compile(r"\s*")
    sep = re.compile(r"\s*([,\]])\s*")
    with _open_text(path, what) as f:
        buf, pos, done, base = "", 0, False, 0

        def refill():
            nonlocal buf, pos, done, base
            more = _read(f, path, what)
            done = not more
            base += pos
            buf, pos = buf[pos:] + more, 0

        while not done and len(buf) < 1:
            refill()
        pos = space.match(buf).end()
        while pos == len(buf) and not done:
            refill()
            pos = space.match(buf, pos).end()
        if pos == len(buf):
            raise ValueError(f"{what} file {path} is empty; it should be a json list.")
        if buf[pos] != "[":
            raise ValueError(f"LVIS {what} must be a json list of detection objects ({path}).")
        pos += 1
        expect_value = None  # None: a value or "]" may follow; True: a value must follow
        while True:
            if pos + 1 >= len(buf) and not done:
                refill()
                continue
            if pos >= len(buf):
                raise ValueError(f"{what} file {path} is not valid json (it ends early).")
            if buf[pos] in " \t\n\r":
                pos = space.match(buf, pos).end()
                continue
            if buf[pos] == "]" and expect_value is None:
                rest = buf[pos + 1 :].strip() or (_read(f, path, what) or "").strip()
                if rest:
                    raise ValueError(
                        f"{what} file {path} is not valid json (extra data after the list)."
                    )
                return
            try:
                obj, end = decoder.raw_decode(buf, pos)
                if end == len(buf) and not done:
                    raise json.JSONDecodeError("may continue", buf, end)  # a number cut short
            except json.JSONDecodeError as e:
                if not done:
                    refill()
                    continue
                raise ValueError(
                    f"{what} file {path} is not valid json ({e.msg} at character {base + e.pos})."
                ) from None
            yield obj
            pos = end
            while True:  # the separator: "," or "]", whitespace around it
                m = sep.match(buf, pos)
                if m is not None or done or buf[pos:].strip():
                    break
                refill()
            if m is None:
                if done and not buf[pos:].strip():
                    raise ValueError(f"{what} file {path} is not valid json (it ends early).")
                raise ValueError(
                    f"{what} file {path} is not valid json (expecting ',' or ']' at character "
                    f"{base + pos})."
                )
            if m.group(1) == "]":
                pos = m.start(1)
                expect_value = None
            else:
                pos = m.end()
                expect_value = True
                if pos < len(buf) and buf[pos] == "]":
                    raise ValueError(
                        f"{what} file {path} is not valid json (a ',' before ']' at character "
                        f"{base + pos})."
                    )


def _fast_json_objects(path: str, what: str = "results"):
    """The elements of the json array in file ``path``, one at a time, from ijson's C parser
    (yajl2_c): the fastest reader measured (docs/evaluation.md). None where it does not apply
    (no C backend, or the file does not start with "["): then :func:`_json_objects` reads it.
    Raises :class:`_FastReaderFailed` on anything yajl refuses, which includes Python's NaN and
    Infinity, so that the standard reader gives the exact message (or reads the NaN, which the
    checks then name)."""
    try:
        import ijson
    except ImportError:
        return None
    if ijson.backend != "yajl2_c":
        return None
    f = _open_binary(path, what)
    head = f.read(64).lstrip()
    f.seek(0)
    if not head.startswith(b"["):
        f.close()
        return None

    def objects():
        with f:
            try:
                yield from ijson.items(_DepthLimited(f, path, what), "item", use_float=True)
            except ijson.JSONError as e:
                raise _FastReaderFailed(str(e)) from None
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{what} file {path} cannot be read: {e}") from None

    return objects()


# the deepest nesting of json arrays and objects a results file may have (a detection with
# polygons is 4 levels deep): ijson's C builder takes memory quadratic in the depth (a 40 kB
# file of 20,000 nested arrays takes 1 GB), so deeper files are refused before it sees them
MAX_JSON_DEPTH = 32
_BRACKETS = np.zeros(256, np.int8)
_BRACKETS[[ord("["), ord("{")]] = 1
_BRACKETS[[ord("]"), ord("}")]] = -1
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


class _DepthLimited:
    """A binary file whose ``read`` refuses json nested deeper than :data:`MAX_JSON_DEPTH`.
    Brackets inside strings are text: each read marks its strings by the parity of the
    unescaped quotes before each byte (numpy, no Python loop but over quotes that follow a
    backslash), carrying the state of a string a read cuts into the next read."""

    def __init__(self, f, path: str, what: str):
        self.f, self.path, self.what = f, path, what
        self.depth, self.in_string, self.escaped = 0, False, False

    def _quotes(self, arr: np.ndarray) -> np.ndarray:
        """The unescaped quotes of ``arr``: a quote after an odd run of backslashes (counting
        a backslash that ended the previous read) is text."""
        quotes = arr == _QUOTE
        index = np.flatnonzero(quotes)
        after_backslash = index[arr[np.maximum(index - 1, 0)] == _BACKSLASH]
        for i in after_backslash[after_backslash > 0].tolist():  # rare: checked one by one
            run = 1
            while i - run - 1 >= 0 and arr[i - run - 1] == _BACKSLASH:
                run += 1
            run += int(self.escaped and run == i)  # the run starts the read
            quotes[i] = run % 2 == 0
        if self.escaped and quotes[0]:
            quotes[0] = False
        return quotes

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if not data:
            return data
        arr = np.frombuffer(data, np.uint8)
        steps = _BRACKETS[arr]
        at = np.flatnonzero(steps)  # the brackets' positions
        if self.in_string or _QUOTE in data:
            quotes = np.flatnonzero(self._quotes(arr))
            # a bracket is text when an odd number of quotes (and an open string) precede it
            inside = (np.searchsorted(quotes, at) + int(self.in_string)) % 2 == 1
            at = at[~inside]
            was_escaped = self.escaped
            self.in_string = (len(quotes) + int(self.in_string)) % 2 == 1
            run = len(data) - len(data.rstrip(b"\\"))
            run -= int(was_escaped and run == len(data))
            self.escaped = self.in_string and run % 2 == 1
        else:
            self.escaped = False
        if at.size:
            depths = self.depth + np.cumsum(steps[at], dtype=np.int64)
            if depths.max() > MAX_JSON_DEPTH:
                raise ValueError(
                    f"{self.what} file {self.path} nests json arrays and objects more than "
                    f"{MAX_JSON_DEPTH} levels deep; LVIS results are a list of detection "
                    "objects (image_id, category_id, score, bbox, segmentation)."
                )
            self.depth = int(depths[-1])
        return data


class _FastReaderFailed(Exception):
    """ijson refused the file; the standard library's reader reads it again."""


def _open_binary(path, what):
    _open_text(path, what).close()  # the same checks and messages
    return open(path, "rb")


def _check_input(path, what) -> None:
    """A json input that is a directory, a pipe or device (reading it could block), or missing:
    a one-line error."""
    if os.path.isdir(path):
        raise ValueError(f"{what} file {path} is a directory; give the json file in it.")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(
            f"{what} file {path} is not a regular file (a pipe or device?); pass a json file."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{what} file not found: {path} {missing_reason(path)}; pass an existing json file."
        )


def _open_text(path, what):
    _check_input(path, what)
    try:
        return open(path, encoding="utf-8-sig")  # a byte-order mark is skipped
    except OSError as e:
        raise ValueError(f"{what} file {path} cannot be read: {e.strerror or e}") from None


def _read(f, path, what) -> str:
    try:
        return f.read(_READ_BYTES)
    except UnicodeDecodeError:
        raise ValueError(f"{what} file {path} is not a text (json) file.") from None
    except OSError as e:
        raise ValueError(f"{what} file {path} cannot be read: {e.strerror or e}") from None


def _first_bad(*masks) -> Optional[int]:
    """The smallest index flagged in any of the boolean arrays, or None."""
    first = None
    for m in masks:
        hit = np.flatnonzero(m)
        if len(hit) and (first is None or hit[0] < first):
            first = int(hit[0])
    return first


def rle_runs(counts: List[bytes]):
    """Decode compressed RLE count strings (pycocotools' format) to their run totals, all at
    once with numpy, checking them on the way.

    Args:
        counts: compressed RLE strings (bytes).

    Returns:
        (total (N,) int64: pixels the runs cover, area (N,) int64: pixels of the mask (the odd
        runs, as pycocotools' ``area``), bad (N,) bool: not a well-formed string (a character
        outside '0'..'o', a value cut short or too long, a negative or over-long run)).
    """
    n = len(counts)
    lengths = np.fromiter(map(len, counts), dtype=np.int64, count=n)
    total = np.zeros(n, dtype=np.int64)
    area = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    if lengths.sum() == 0:
        return total, area, bad
    c = np.frombuffer(b"".join(counts), dtype=np.uint8).astype(np.int16) - 48
    rle = np.repeat(np.arange(n, dtype=np.int32), lengths)
    bad_char = (c < 0) | (c > 63)
    if bad_char.any():
        bad[rle[bad_char]] = True
        c[bad_char] = 0
    end = (c & 0x20) == 0
    last = np.cumsum(lengths)[lengths > 0] - 1
    bad[rle[last[~end[last]]]] = True  # a value cut short at the string's end
    end[last] = True
    ends = np.flatnonzero(end)
    low = (c & 0x1F).astype(np.int64)
    if len(ends) == len(c):  # every value one character: no shifts
        x = low
        k_end = np.zeros(len(c), dtype=np.int64)
    else:
        starts = np.concatenate([[0], ends[:-1] + 1])
        k = np.arange(len(c)) - np.repeat(starts, ends - starts + 1)
        too_long = k > 6  # 7 characters hold 35 bits; a run holds at most 32
        if too_long.any():
            bad[rle[too_long]] = True
        k = np.minimum(k, 6)
        x = np.add.reduceat(low << (5 * k), starts)
        k_end = k[ends]
    x = x - np.where((c[ends] & 0x10) != 0, np.int64(1) << (5 * (k_end + 1)), 0)
    g_rle = rle[ends]
    per_rle = np.bincount(g_rle, minlength=n)
    m = np.arange(len(x)) - np.repeat(np.cumsum(per_rle) - per_rle, per_rle)
    # run m > 2 is stored as the difference to run m - 2: a cumulative sum along each parity
    for parity in (1, 0):
        sel = np.flatnonzero((m >= 1) & ((m & 1) == parity))
        vals = x[sel]
        cs = np.cumsum(vals)
        head = np.concatenate([[True], g_rle[sel][1:] != g_rle[sel][:-1]])
        first = np.maximum.accumulate(np.where(head, np.arange(len(sel)), 0))
        x[sel] = cs - (cs[first] - vals[first])
    bad_run = (x < 0) | (x >= 1 << 32)
    if bad_run.any():
        bad[g_rle[bad_run]] = True
    total = np.bincount(g_rle, weights=x, minlength=n).astype(np.int64)
    odd = (m & 1) == 1
    area = np.bincount(g_rle[odd], weights=x[odd], minlength=n).astype(np.int64)
    return total, area, bad


class _Reader:
    """Converts result dicts to arrays a chunk at a time, checking each field."""

    def __init__(self, iou_type: str, gt: Optional[LVISGroundTruth], masks_where_present: bool):
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type {iou_type!r} is not one of 'bbox', 'segm'.")
        self.iou_type = iou_type
        self.gt = gt
        self.has_bbox = None  # decided by the first result, as lvis-api
        self.sizes = None
        self.present = None
        if gt is not None:
            self.sizes = getattr(gt, "img_sizes", None)
            if masks_where_present:
                num_cats = len(gt.cat_ids)
                cat = np.searchsorted(gt.cat_ids, gt.ann_cat_id)
                self.present = np.unique(gt.ann_img * num_cats + cat)
        self.parts = []

    def need_masks(self) -> bool:
        return self.iou_type == "segm" or not self.has_bbox

    def add(self, chunk: list, start: int):
        """Convert and check ``chunk`` (results ``start``... of the file)."""
        if self.has_bbox is None and chunk:
            self.has_bbox = isinstance(chunk[0], dict) and "bbox" in chunk[0]
        masks = self.need_masks()
        need = ["image_id", "category_id", "score"] + (["bbox"] if self.has_bbox else [])
        need += ["segmentation"] if masks else []
        for i, r in enumerate(chunk):
            if not isinstance(r, dict) or any(k not in r for k in need):
                what = (
                    "not a json object"
                    if not isinstance(r, dict)
                    else "lacks " + ", ".join(repr(k) for k in need if k not in r)
                )
                raise ValueError(
                    f"results[{start + i}] {what}: LVIS results need image_id, category_id, "
                    f"score and {_fields_text(self.iou_type, self.has_bbox)} per detection."
                )
        image_id = self._ints(chunk, "image_id", start)
        category_id = self._ints(chunk, "category_id", start)
        score = self._floats(chunk, "score", start)
        bad = ~np.isfinite(score) | (score < 0)
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(
                f"results[{start + i}]: score {chunk[i]['score']!r} is not a finite number >= 0; "
                "drop that detection or give its confidence."
            )
        part = {"image_id": image_id, "category_id": category_id, "score": score}
        img_idx = None
        if self.gt is not None:
            img_idx = self._check_ids(chunk, image_id, category_id, start)
        if self.has_bbox:
            bbox = self._boxes(chunk, start)
            part["bbox"] = bbox
            part["area"] = bbox[:, 2] * bbox[:, 3]
        if masks:
            self._masks(chunk, start, part, img_idx)
        self.parts.append(part)

    def _ints(self, chunk, key, start):
        values = [r[key] for r in chunk]
        arr = np.array(values)
        # a bool among ints is read as 0 or 1
        if arr.dtype.kind not in "iu" or arr.ndim != 1 or bool in set(map(type, values)):
            i = next((i for i, v in enumerate(values) if not _is_int(v)), 0)
            raise ValueError(
                f"results[{start + i}]: {key} {values[i]!r} is not an integer; give the "
                f"ground truth's {key.split('_')[0]} id."
            )
        return arr.astype(np.int64)

    def _floats(self, chunk, key, start):
        values = [r[key] for r in chunk]
        arr = np.array(values)
        if arr.dtype.kind not in "iuf" or arr.ndim != 1:
            i = next((i for i, v in enumerate(values) if not _is_number(v)), 0)
            raise ValueError(
                f"results[{start + i}]: {key} {values[i]!r} is not a number; give a finite "
                "number >= 0."
            )
        return arr.astype(np.float64)

    def _boxes(self, chunk, start):
        values = [r["bbox"] for r in chunk]
        try:
            bbox = np.array(values)
            ok = bbox.dtype.kind in "iuf" and bbox.ndim == 2 and bbox.shape[1] == 4
        except ValueError:  # ragged
            ok = False
        if not ok:
            i = next((i for i, b in enumerate(values) if not _is_box(b)), 0)
            raise ValueError(
                f"results[{start + i}]: bbox {_short(values[i])} is not 4 numbers; {_BOX_FIX}."
            )
        bbox = bbox.astype(np.float64)
        bad = ~np.isfinite(bbox).all(axis=1) | (bbox[:, 2] < 0) | (bbox[:, 3] < 0)
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(
                f"results[{start + i}]: bbox {values[i]!r} is not finite with width and height "
                f">= 0; {_BOX_FIX}."
            )
        bad = ~_finite_boxes(bbox)
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(f"results[{start + i}]: bbox {values[i]!r} {_OVERFLOW}; {_BOX_FIX}.")
        return bbox

    def _check_ids(self, chunk, image_id, category_id, start):
        gt = self.gt
        idx = np.minimum(np.searchsorted(gt.img_ids, image_id), max(len(gt.img_ids) - 1, 0))
        bad_img = (gt.img_ids[idx] != image_id) if len(gt.img_ids) else np.ones(len(idx), bool)
        cat = np.minimum(np.searchsorted(gt.cat_ids, category_id), max(len(gt.cat_ids) - 1, 0))
        bad_cat = (gt.cat_ids[cat] != category_id) if len(gt.cat_ids) else bad_img | True
        i = _first_bad(bad_img, bad_cat)
        if i is None:
            return idx
        if bad_img[i]:
            raise ValueError(
                f"results[{start + i}]: image_id {int(image_id[i])} is not an image of the "
                "ground truth; evaluate with the annotation file the results were made for."
            )
        raise ValueError(
            f"results[{start + i}]: category_id {int(category_id[i])} is not a category of the "
            f"ground truth (ids {int(gt.cat_ids[0])}..{int(gt.cat_ids[-1])}); map the model's "
            "classes to the dataset's category ids (detectron2: "
            "thing_dataset_id_to_contiguous_id)."
        )

    def _masks(self, chunk, start, part, img_idx):
        segs = [r["segmentation"] for r in chunk]
        counts, sizes = [], []
        for i, s in enumerate(segs):
            try:
                c, size = s["counts"], s["size"]
                if isinstance(c, str):
                    c = c.encode("ascii")
                ok = isinstance(c, bytes) and _is_size(size)
            except (TypeError, KeyError, UnicodeEncodeError):
                ok = False
            if not ok:
                raise ValueError(
                    f"results[{start + i}]: segmentation {_short(s)} is not a compressed RLE "
                    f"({{'size': [height, width], 'counts': str}}); {_RLE_FIX}."
                )
            counts.append(c)
            sizes.append(size)
        sizes = np.array(sizes, dtype=np.int64).reshape(-1, 2)
        if self.sizes is not None and img_idx is not None:
            wrong = np.any(sizes != self.sizes[img_idx], axis=1)
            if wrong.any():
                i = _first_bad(wrong)
                h, w = self.sizes[img_idx[i]]
                raise ValueError(
                    f"results[{start + i}]: segmentation size {sizes[i].tolist()} is not image "
                    f"{int(part['image_id'][i])}'s size [{h}, {w}] (height, width); {_RLE_FIX}."
                )
        used = np.ones(len(counts), dtype=bool)
        if self.present is not None and img_idx is not None and self.has_bbox:
            # only the masks of classes present in their image meet an IoU; the others' areas
            # are their boxes' (lvis-api's rule): they are neither decoded nor kept
            num_cats = len(self.gt.cat_ids)
            key = img_idx * num_cats + np.searchsorted(self.gt.cat_ids, part["category_id"])
            pos = np.minimum(np.searchsorted(self.present, key), max(len(self.present) - 1, 0))
            used = (self.present[pos] == key) if len(self.present) else ~used
        idx = np.flatnonzero(used)
        # decoded in batches: the decoding's arrays take ~60 bytes per character
        batches = [idx[b : b + _RLE_BATCH] for b in range(0, len(idx), _RLE_BATCH)]
        runs = [rle_runs([counts[i] for i in batch]) for batch in batches]
        total, area, bad = (np.concatenate(r) for r in zip(*runs)) if runs else (idx,) * 3
        bad = bad.astype(bool) | (total != sizes[idx, 0] * sizes[idx, 1])
        if bad.any():
            i = int(idx[_first_bad(bad)])
            raise ValueError(
                f"results[{start + i}]: segmentation counts of size {sizes[i].tolist()} is not a "
                f"valid RLE (corrupt or of another size); {_RLE_FIX}."
            )
        mask_area = np.full(len(counts), np.nan)
        mask_area[idx] = area
        part["mask_area"] = mask_area
        if not self.has_bbox:
            part["area"] = mask_area
            if self.iou_type == "bbox":
                rles = [{"size": s.tolist(), "counts": c} for s, c in zip(sizes, counts)]
                part["bbox"] = _boxes_of(rles)
        if not used.all():
            counts = [c if k else None for c, k in zip(counts, used.tolist())]
        if self.iou_type == "segm":
            part["rle_counts"] = counts
            part["rle_sizes"] = sizes.astype(np.int32)

    def result(self) -> LVISDetections:
        parts = self.parts
        if not parts:
            empty = np.zeros(0)
            dets = LVISDetections(empty.astype(np.int64), empty.astype(np.int64), empty, empty)
            dets.bbox = np.zeros((0, 4))
            if self.iou_type == "segm":
                dets.rle_counts, dets.rle_sizes = [], np.zeros((0, 2), np.int64)
            return dets

        def cat(key):
            return np.concatenate([p[key] for p in parts]) if key in parts[0] else None

        dets = LVISDetections(cat("image_id"), cat("category_id"), cat("score"), cat("area"))
        dets.bbox = cat("bbox")
        dets.mask_area = cat("mask_area")
        if self.iou_type == "segm":
            dets.rle_counts = [c for p in parts for c in p["rle_counts"]]
            dets.rle_sizes = cat("rle_sizes")
        return dets


def _boxes_of(rles) -> np.ndarray:
    out = [mask_utils.toBbox(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(out).astype(np.float64).reshape(-1, 4) if out else np.zeros((0, 4))


def _fields_text(iou_type, has_bbox):
    if iou_type == "segm" or has_bbox is False:
        return "'segmentation' (compressed RLE)" + (" and 'bbox'" if has_bbox else "")
    return "'bbox' (or 'segmentation')"


def _short(value, limit=60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_box(b) -> bool:
    return isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b)


def _is_size(size) -> bool:
    return isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)


def read_results(
    source, iou_type: str, gt: Optional[LVISGroundTruth] = None, masks_where_present=False
) -> LVISDetections:
    """Read lvis-api-format results into :class:`LVISDetections`, checking every entry.

    A path is read incrementally (one buffer of the file and one chunk of parsed results at a
    time, converted to arrays as it goes), so memory holds the arrays, not the json's objects:
    by ijson's C parser where it is installed with it, else (and for what yajl refuses, such as
    Python's NaN) by the standard library's json scanner.
    As lvis-api's ``LVISResults``: when the first result has a "bbox", areas are box ``w * h``
    (for segm too); otherwise mask areas, and boxes come from the masks. Segmentations are
    read only where the evaluation uses them (segm, or bbox without boxes).

    Refused, with the index of the first offending entry: a missing or non-numeric field (a
    bool id too), a score that is NaN, infinite or negative, a box that is not finite,
    overflows (x + w, y + h or w * h) or has a negative width or height, and, with ``gt``, an
    image or category id the ground truth does not have, a mask whose size is not its image's,
    and an RLE whose counts do not decode to exactly ``height * width`` pixels.

    Args:
        source: a results json path, or the parsed list.
        iou_type: "bbox" or "segm".
        gt: the ground truth to check ids and mask sizes against (None: not checked).
        masks_where_present: keep an RLE only where its class has ground truth in its image
            (the only masks an IoU is computed for; elsewhere only the area counts).

    Returns:
        LVISDetections
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        items = _fast_json_objects(path)
        if items is not None:
            try:
                return _consume(_Reader(iou_type, gt, masks_where_present), items)
            except _FastReaderFailed:
                pass  # NaN, Infinity or broken json: the standard reader names the problem
        items = _json_objects(path)
    elif isinstance(source, list):
        items = iter(source)
    else:
        raise ValueError("LVIS results must be a json list of detection objects.")
    return _consume(_Reader(iou_type, gt, masks_where_present), items)


def _consume(reader: _Reader, items) -> LVISDetections:
    """Feed ``items`` to ``reader`` in chunks of :data:`CHUNK`."""
    # the json's objects hold no reference cycles: the cycle collector, triggered again and
    # again by millions of new dicts, would only walk them (a third of the reading time)
    collecting = gc.isenabled()
    gc.disable()
    try:
        start, chunk = 0, []
        for obj in items:
            chunk.append(obj)
            if len(chunk) == CHUNK:
                reader.add(chunk, start)
                start += len(chunk)
                chunk = []
        if chunk:
            reader.add(chunk, start)
    finally:
        if collecting:
            gc.enable()
    return reader.result()
