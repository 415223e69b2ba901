"""Compact LVIS ground truth and detections: numpy arrays and RLE strings, no dict per object."""

import json
import os
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import pycocotools.mask as mask_utils

__all__ = ["LVISDetections", "LVISGroundTruth", "load_json", "mask_areas"]

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
    if os.path.isdir(source):
        raise ValueError(f"{what} file {source} is a directory; give the json file in it.")
    if not os.path.isfile(source):
        raise FileNotFoundError(
            f"{what} file not found: {source} does not exist; pass an existing json file."
        )
    try:
        with open(source) as f:
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
        anns = data["annotations"]
        index = {int(i): k for k, i in enumerate(img_ids)}
        try:
            ann_img = np.array([index[a["image_id"]] for a in anns], dtype=np.int64)
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
        if with_masks:
            heights = {im["id"]: im["height"] for im in images}
            widths = {im["id"]: im["width"] for im in images}
            gt.rles = [
                _to_rle(a["segmentation"], heights[a["image_id"]], widths[a["image_id"]])
                for a in anns
            ]
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
    area for segm. ``rle_counts`` / ``rle_sizes`` hold compressed RLE masks (segm only).
    """

    image_id: np.ndarray  # (N,) int64
    category_id: np.ndarray  # (N,) int64
    score: np.ndarray  # (N,) float64
    area: np.ndarray  # (N,) float64
    bbox: Optional[np.ndarray] = None  # (N, 4) float64 XYWH
    rle_counts: Optional[List[bytes]] = None
    rle_sizes: Optional[np.ndarray] = None  # (N, 2) int64 (height, width)
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
    def from_results(cls, results: list, iou_type: str) -> "LVISDetections":
        """Build from lvis-api's results format (a list of dicts with image_id, category_id,
        score, and bbox (XYWH) and/or segmentation (compressed RLE)).

        As lvis-api's ``LVISResults``: when the first result has a "bbox", areas are box
        ``w * h`` (for segm too); otherwise mask areas, and boxes come from the masks.

        Args:
            results: the list of result dicts.
            iou_type: "bbox" or "segm" (which fields are needed).

        Returns:
            LVISDetections
        """
        if not isinstance(results, list):
            raise ValueError("LVIS results must be a json list of detection objects.")
        field = "'bbox' (or 'segmentation')" if iou_type == "bbox" else "'segmentation'"
        try:
            dets = cls(
                image_id=np.array([r["image_id"] for r in results], dtype=np.int64),
                category_id=np.array([r["category_id"] for r in results], dtype=np.int64),
                score=np.array([r["score"] for r in results], dtype=np.float64),
                area=np.zeros(len(results)),
            )
            if results and "bbox" in results[0]:
                dets.bbox = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
                dets.area = dets.bbox[:, 2] * dets.bbox[:, 3]
            if iou_type == "segm" or dets.bbox is None:
                segs = [r["segmentation"] for r in results]
                dets.rle_counts = [s["counts"] for s in segs]
                dets.rle_sizes = np.array([s["size"] for s in segs], dtype=np.int64).reshape(-1, 2)
                if dets.bbox is None:  # lvis-api: boxes from the masks, mask areas
                    dets.area = mask_areas(segs)
                    if iou_type == "bbox" and segs:
                        dets.bbox = mask_utils.toBbox(segs).astype(np.float64).reshape(-1, 4)
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"LVIS results need image_id, category_id, score and {field} per detection "
                f"(segmentation as compressed RLE); missing or malformed: {e}."
            ) from None
        return dets
