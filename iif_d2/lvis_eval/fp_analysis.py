"""False-positive analysis of box detections against an LVIS- or COCO-format ground truth.

python -m iif_d2.lvis_eval.fp_analysis --gt datasets/lvis/lvis_v1_val.json \\
    --results output/inference/lvis_instances_results.json [--score-thresh 0.3] [--json-out f.json]

The results file is a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``, as
detectron2's LVIS/COCO evaluators write it (``lvis_instances_results.json``,
``coco_instances_results.json``); category ids are the ground-truth json's ids. Only boxes are
analysed (a ``segmentation`` key is ignored).

Three measures:

* :func:`false_positives_per_image`: detections above a score threshold (default 0.3, the one
  of the README's FP/img numbers, ``dev/benchmark_synthlt.py``) are matched one-to-one to
  the ground-truth boxes of their class (greedily, by descending score, IoU >= 0.5). Unmatched
  detections are false positives; a duplicate of a matched object is one.
* :func:`delta_ap_fp`: TIDE's dAP_FP, the box AP50 gained when every detection that overlaps no
  ground-truth box of its class at IoU >= 0.5 is removed. Duplicates are not removed.
* :func:`tide_breakdown`: a TIDE-style breakdown of the errors (classification, localisation,
  both, duplicate, background, missed) with the box AP50 that fixing each type gains, under
  LVIS's federated rules (defined in :mod:`iif_d2.lvis_eval.tide`).

For LVIS ground truth whose categories carry a ``frequency``, the first two are also reported
per frequency group (rare "r", common "c", frequent "f"), and the breakdown's gains too. Box
AP50 on LVIS ground truth comes from iif-d2's fast LVIS engine (:mod:`iif_d2.lvis_eval`,
exactly lvis-api's numbers); on COCO ground truth from pycocotools' COCOeval.

The ground truth is LVIS-format when its images carry ``neg_category_ids``. LVIS is federated: a
detection is evaluated only where its class is present in the image or listed as negative there,
and an unmatched detection of a class listed in the image's ``not_exhaustive_category_ids`` is
not penalised. Both rules are applied as lvis-api's ``LVISEval`` applies them. COCO-format
ground truth has no such lists and every detection is evaluated.

At ``score_thresh`` 0 the tp/fp/ignored counts equal those of ``LVISEval``/``COCOeval`` at
IoU 0.5, with one difference: a detection of a class that has no ground-truth box anywhere in
the set is counted as a false positive here, while the evaluators skip such classes (their AP is
undefined).
"""

import contextlib
import io
import logging
import math
import sys
from collections import Counter, defaultdict
from numbers import Integral, Real

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth, evaluate
from iif_d2.lvis_eval.data import FREQUENCIES, load_json
from iif_d2.lvis_eval.engine import compact
from iif_d2.lvis_eval.report import rows_table, small_table
from iif_d2.lvis_eval.tide import ERROR_TYPES, gt_counts, tide_errors
from iif_d2.utils.cli_checks import (
    OneLineParser,
    check_output_file,
    finite_float,
    one_line,
    run_interruptible,
    write_json_output,
)

logger = logging.getLogger(__name__)

_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")
_LVIS_MAX_DETS = 300  # LVIS's official limit of detections per image
_COCO_MAX_DETS = 100  # COCOeval's largest maxDets
# the threshold of the README's published FP/img numbers (dev/benchmark_synthlt.py)
DEFAULT_SCORE_THRESH = 0.3


def load_gt(gt) -> dict:
    """Load and check a ground-truth json (LVIS or COCO format).

    Args:
        gt: a path, or the already loaded dict.

    Returns:
        The dict, with ``images``, ``annotations`` and ``categories`` (not copied).
    """
    data = load_json(gt, "ground-truth")
    if not isinstance(data, dict) or any(
        not isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise ValueError(
            "ground truth must be a json object with lists images/annotations/categories"
        )
    if not data["images"]:
        raise ValueError("ground truth has no images")
    for key in ("images", "categories"):
        for i, item in enumerate(data[key]):
            ident = item.get("id") if isinstance(item, dict) else None
            if isinstance(ident, bool) or not isinstance(ident, int):
                raise ValueError(
                    f"ground-truth {key}[{i}]: id {ident!r} is not an integer; COCO/LVIS ids are "
                    "integers"
                )
    image_ids = {img["id"] for img in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or any(
            k not in ann for k in ("image_id", "category_id", "bbox")
        ):
            raise ValueError(f"ground-truth annotations[{i}] lacks image_id/category_id/bbox")
        for key in ("image_id", "category_id"):
            if not _is_id(ann[key]):
                raise ValueError(
                    f"ground-truth annotations[{i}] (id {ann.get('id')}): {key} {ann[key]!r} is "
                    "not an integer; COCO/LVIS ids are integers"
                )
        if ann["image_id"] not in image_ids:
            raise ValueError(
                f"ground-truth annotation {ann.get('id')} refers to image_id {ann['image_id']}, "
                "which is not among the json's images; add the image or remove the annotation"
            )
        bbox = ann["bbox"]
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(_is_number(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise ValueError(
                f"ground-truth annotations[{i}]: bbox {bbox!r} is not 4 finite numbers "
                "[x, y, w, h] with w, h >= 0"
            )
        if not _box_fits(bbox):
            raise ValueError(f"ground-truth annotations[{i}]: bbox {bbox!r} {_OVERFLOW}")
    return data


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)


def _is_id(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, (bool, np.bool_))


_OVERFLOW = "overflows: its x + w, y + h or area w * h is not a finite number"


def _box_fits(bbox) -> bool:
    """Whether a box of 4 finite numbers has a finite corner x + w, y + h and area w * h."""
    x, y, w, h = (float(v) for v in bbox)
    return math.isfinite(x + w) and math.isfinite(y + h) and math.isfinite(w * h)


def _check_detection(i: int, det) -> dict:
    if not isinstance(det, dict) or any(k not in det for k in _RESULT_KEYS):
        raise ValueError(f"results[{i}] is not a detection with keys {', '.join(_RESULT_KEYS)}")
    bbox, score = det["bbox"], det["score"]
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"results[{i}]: bbox must be [x, y, w, h], got {bbox!r}")
    if not all(_is_number(v) for v in bbox):
        raise ValueError(f"results[{i}]: bbox {bbox!r} must be 4 finite numbers [x, y, w, h]")
    if not _box_fits(bbox):
        raise ValueError(f"results[{i}]: bbox {bbox!r} {_OVERFLOW}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(
            f"results[{i}]: bbox {bbox!r} has a negative width or height; boxes are "
            "[x, y, w, h] (XYWH_ABS), not [x0, y0, x1, y1]"
        )
    if not _is_number(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f"results[{i}]: score {score!r} must be a finite number in [0, 1]")
    for key in ("image_id", "category_id"):
        if not _is_id(det[key]):
            raise ValueError(
                f"results[{i}]: {key} {det[key]!r} is not an integer; give the ground truth's "
                f"{key.split('_')[0]} id"
            )
    return {
        "image_id": det["image_id"],
        "category_id": det["category_id"],
        "bbox": [float(v) for v in bbox],
        "score": float(score),
    }


def load_results(results, gt: dict | None = None) -> list[dict]:
    """Load and check box detections.

    Args:
        results: a path to a results json, or a list of detection dicts.
        gt: if given, image and category ids must be ones of this ground truth.

    Returns:
        New dicts with only ``image_id``, ``category_id``, ``bbox`` and ``score`` (the input is
        never modified).
    """
    data = load_json(results, "results")
    if not isinstance(data, list):
        raise ValueError("results must be a json list of detections")
    dets = [_check_detection(i, d) for i, d in enumerate(data)]
    if gt is not None:
        images = {img["id"] for img in gt["images"]}
        categories = {cat["id"] for cat in gt["categories"]}
        for i, det in enumerate(dets):
            if det["image_id"] not in images:
                raise ValueError(f"results[{i}]: image_id {det['image_id']} is not in the gt")
            if det["category_id"] not in categories:
                raise ValueError(f"results[{i}]: category_id {det['category_id']} is not in the gt")
    return dets


def is_lvis_format(gt: dict) -> bool:
    """Whether ``gt`` is federated LVIS-format: its images carry ``neg_category_ids``.

    Args:
        gt: a loaded ground-truth dict.

    Returns:
        True for LVIS format, False for COCO format. Raises ValueError if only some images
        carry the key.
    """
    flags = {"neg_category_ids" in img for img in gt["images"]}
    if len(flags) > 1:
        raise ValueError("only some ground-truth images have neg_category_ids")
    return flags == {True}


def _federated_sets(gt: dict):
    """Per image: the evaluable category ids (present or negative), the not-exhaustive ones."""
    present = defaultdict(set)
    for ann in gt["annotations"]:
        present[ann["image_id"]].add(ann["category_id"])
    evaluable, not_exhaustive = {}, {}
    for img in gt["images"]:
        evaluable[img["id"]] = present[img["id"]] | set(img["neg_category_ids"])
        not_exhaustive[img["id"]] = set(img.get("not_exhaustive_category_ids", []))
    return evaluable, not_exhaustive


def _gt_boxes(gt: dict) -> dict:
    """(image_id, category_id) -> list of (bbox, iscrowd)."""
    boxes = defaultdict(list)
    for ann in gt["annotations"]:
        boxes[ann["image_id"], ann["category_id"]].append((ann["bbox"], int(ann.get("iscrowd", 0))))
    return boxes


def _box_ious(dets: list[dict], gts: list) -> np.ndarray:
    """IoU (intersection over detection area for crowd boxes, as COCO), shape (dets, gts)."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    det_boxes = np.asarray([d["bbox"] for d in dets], dtype=np.float64)
    gt_boxes = np.asarray([g[0] for g in gts], dtype=np.float64)
    return np.asarray(mask_utils.iou(det_boxes, gt_boxes, [g[1] for g in gts]))


def _match(dets: list[dict], gts: list, iou_thresh: float) -> list[str]:
    """Greedy one-to-one matching of one image and class; dets sorted by descending score.

    Returns per detection "tp", "crowd" (matches only crowd boxes: ignored) or "fp".
    """
    ious = _box_ious(dets, gts)
    crowd = np.array([bool(g[1]) for g in gts], dtype=bool)
    taken = np.zeros(len(gts), dtype=bool)
    statuses = []
    for row in ious:
        free = ~crowd & ~taken & (row >= iou_thresh)
        if free.any():
            taken[int(np.argmax(np.where(free, row, -1.0)))] = True
            statuses.append("tp")
        elif (crowd & (row >= iou_thresh)).any():
            statuses.append("crowd")
        else:
            statuses.append("fp")
    return statuses


def _check_thresholds(score_thresh: float, iou_thresh: float):
    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    if not 0.0 <= score_thresh <= 1.0:
        raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")


def _group_by_image_class(dets: list[dict], federated) -> tuple[dict, int]:
    """Evaluable detections by (image_id, category_id), sorted by descending score (stable),
    and the number of detections left out by LVIS's federated rule."""
    groups, not_evaluable = defaultdict(list), 0
    for det in dets:
        if federated and det["category_id"] not in federated[0][det["image_id"]]:
            not_evaluable += 1
            continue
        groups[det["image_id"], det["category_id"]].append(det)
    for group in groups.values():
        group.sort(key=lambda d: -d["score"])
    return groups, not_evaluable


def frequency_groups(gt: dict) -> dict | None:
    """LVIS frequency group ("r", "c" or "f") of each category id, from the categories'
    ``frequency``; None for COCO-format ground truth or when a category has no valid one.

    Args:
        gt: a loaded ground-truth dict.

    Returns:
        dict category id -> group, or None.
    """
    if not is_lvis_format(gt):
        return None
    groups = {cat["id"]: cat.get("frequency") for cat in gt["categories"]}
    if not all(g in FREQUENCIES for g in groups.values()):
        logger.warning("some categories lack an r/c/f frequency: no per-frequency results")
        return None
    return groups


def _fp_by_group(groups: dict, statuses: list, num_images: int) -> dict:
    """FP/TP counts per frequency group from (category_id, status) pairs."""
    out = {g: {"categories": 0, "fp": 0, "tp": 0} for g in FREQUENCIES}
    for group in groups.values():
        out[group]["categories"] += 1
    for category_id, status in statuses:
        if status in ("fp", "tp"):
            out[groups[category_id]][status] += 1
    for row in out.values():
        row["fp_per_image"] = row["fp"] / num_images
    return out


def false_positives_per_image(
    gt, results, score_thresh=DEFAULT_SCORE_THRESH, iou_thresh=0.5
) -> dict:
    """Count false positives: detections that match no ground truth one-to-one.

    In each image and class, the detections with score >= ``score_thresh`` are matched greedily
    in descending score order to the unmatched ground-truth box of highest IoU >= ``iou_thresh``.
    Unmatched detections are false positives, except (``ignored``): those overlapping a crowd
    box (``iscrowd`` = 1; crowd boxes never count as matched objects), and for LVIS those of a
    class in the image's ``not_exhaustive_category_ids``. For LVIS, detections of a class
    neither present in the image nor in its ``neg_category_ids`` are left out
    (``not_evaluable``).

    Args:
        gt: ground-truth json path or loaded dict (LVIS or COCO format).
        results: results json path or list of detection dicts.
        score_thresh: detections below this score are not considered.
        iou_thresh: IoU a detection needs to match a ground-truth box.

    Returns:
        ``fp_per_image`` (fp / number of gt images), ``fp``, ``tp``, ``ignored``,
        ``not_evaluable``, ``detections`` (= tp + fp + ignored + not_evaluable: all with
        score >= score_thresh), ``images``, ``score_thresh``, ``iou_thresh``; for LVIS ground
        truth whose categories all carry a ``frequency``, ``by_frequency``: per group "r",
        "c", "f" its ``categories``, ``fp``, ``tp`` and ``fp_per_image`` (fp of the group's
        classes / all gt images; the groups' fp add up to ``fp``).
    """
    _check_thresholds(score_thresh, iou_thresh)
    gt = load_gt(gt)
    dets = [d for d in load_results(results, gt) if d["score"] >= score_thresh]
    federated = _federated_sets(gt) if is_lvis_format(gt) else None
    groups, not_evaluable = _group_by_image_class(dets, federated)
    gt_boxes, counts, statuses = _gt_boxes(gt), Counter(), []
    for (image_id, category_id), group in groups.items():
        for status in _match(group, gt_boxes.get((image_id, category_id), []), iou_thresh):
            if status == "crowd" or (
                status == "fp" and federated and category_id in federated[1][image_id]
            ):
                status = "ignored"
            counts[status] += 1
            statuses.append((category_id, status))
    num_images = len(gt["images"])
    out = {
        "fp_per_image": counts["fp"] / num_images,
        "fp": counts["fp"],
        "tp": counts["tp"],
        "ignored": counts["ignored"],
        "not_evaluable": not_evaluable,
        "detections": len(dets),
        "images": num_images,
        "score_thresh": score_thresh,
        "iou_thresh": iou_thresh,
    }
    freq = frequency_groups(gt)
    if freq is not None:
        out["by_frequency"] = _fp_by_group(freq, statuses, num_images)
    return out


def _gt_for_eval(gt: dict, lvis: bool) -> dict:
    """A shallow copy of ``gt`` with what the evaluators need: annotation ids 1..N (0 would read
    as "unmatched"), ``area``, ``iscrowd``; for LVIS ``not_exhaustive_category_ids`` and a
    ``frequency`` ("f" where missing: it only affects APr/APc/APf, not AP50)."""
    anns = [
        {"area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0, **a, "id": i + 1}
        for i, a in enumerate(gt["annotations"])
    ]
    images, categories = gt["images"], gt["categories"]
    if lvis:
        images = [{"not_exhaustive_category_ids": [], **img} for img in images]
        categories = [{**cat, "frequency": cat.get("frequency", "f")} for cat in categories]
    return {**gt, "images": images, "categories": categories, "annotations": anns}


def _coco_as_federated(gt: dict) -> dict:
    """COCO-format ground truth (from :func:`_gt_for_eval`) as an LVIS-format dict the fast
    engine reads: every class verified in every image, crowd boxes as ``ignore`` objects."""
    cat_ids = [cat["id"] for cat in gt["categories"]]
    images = [
        {**img, "neg_category_ids": cat_ids, "not_exhaustive_category_ids": []}
        for img in gt["images"]
    ]
    categories = [{**cat, "frequency": "f"} for cat in gt["categories"]]
    anns = [{**a, "ignore": int(a["iscrowd"])} for a in gt["annotations"]]
    return {**gt, "images": images, "categories": categories, "annotations": anns}


def _detections(dets: list[dict]) -> LVISDetections:
    """Checked detection dicts as the fast engine's arrays (boxes even when there are none)."""
    if not dets:
        empty = np.zeros(0)
        return LVISDetections(empty.astype(np.int64), empty.astype(np.int64), empty, empty,
                              np.zeros((0, 4)))  # fmt: skip
    return LVISDetections.from_results(dets, "bbox")


def _fast_engine_ap50s(gt: dict, dets: list[dict]) -> dict:
    """Box AP50 (fractions, -1 where undefined) of all categories and of each frequency group,
    from the fast LVIS engine (lvis-api's numbers, 300 detections per image)."""
    lvis_gt, dt = LVISGroundTruth.from_dict(gt, with_masks=False), _detections(dets)
    if len(compact(lvis_gt, dt, _LVIS_MAX_DETS)):
        ev = evaluate(lvis_gt, dt, "bbox", _LVIS_MAX_DETS)
        per_cat = ev["precision"][0, :, :, 0]  # IoU 0.5, area "all": (recall points, categories)
    else:  # no detection is evaluated (the engine needs one): AP 0 where there is ground truth
        per_cat = np.where(gt_counts(lvis_gt) > 0, 0.0, -1.0)[None, :]

    def mean(s):
        return float(s[s > -1].mean()) if (s > -1).any() else -1.0

    out = {"all": mean(per_cat)}
    for g, name in enumerate(FREQUENCIES):
        out[name] = mean(per_cat[:, lvis_gt.cat_freq == g])
    return out


def _coco_ap50(gt: dict, dets: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in dets]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[1])


def _ap50s(gt: dict, dets: list[dict], lvis: bool) -> dict:
    """Box AP50 in percent, "all" and (LVIS) per frequency group "r"/"c"/"f": the fast LVIS
    engine (max 300 dets/image) or pycocotools COCOeval (max 100 dets/image). "all" is 0 when
    there are no ground-truth boxes (or, COCO, no detections); a group without ground truth
    is None."""
    if lvis:
        aps = _fast_engine_ap50s(_gt_for_eval(gt, lvis), dets)
    else:
        aps = {"all": _coco_ap50(_gt_for_eval(gt, lvis), dets) if dets else 0.0}
    if aps["all"] < 0:  # the evaluators' -1: no category has a ground-truth box
        logger.warning("AP50 is undefined (no ground-truth boxes); reporting 0.")
        aps["all"] = 0.0
    return {k: (None if v < 0 else 100.0 * v) for k, v in aps.items()}


def box_ap50(gt, results) -> float:
    """Box AP50 of ``results``: the fast LVIS engine (:mod:`iif_d2.lvis_eval`, lvis-api's
    numbers) for LVIS-format gt, else pycocotools COCOeval.

    Args:
        gt: ground-truth json path or loaded dict.
        results: results json path or list of detection dicts.

    Returns:
        AP50 in percent (0 when there are no detections).
    """
    gt = load_gt(gt)
    return _ap50s(gt, load_results(results, gt), is_lvis_format(gt))["all"]


def _background_indices(gt: dict, dets: list[dict], iou_thresh: float) -> set[int]:
    """Indices of the evaluable detections whose IoU with every gt box of their class in their
    image is < iou_thresh. LVIS detections that LVISEval leaves out are kept."""
    federated = _federated_sets(gt) if is_lvis_format(gt) else None
    gt_boxes, groups = _gt_boxes(gt), defaultdict(list)
    for i, det in enumerate(dets):
        if not federated or det["category_id"] in federated[0][det["image_id"]]:
            groups[det["image_id"], det["category_id"]].append(i)
    background = set()
    for key, indices in groups.items():
        ious = _box_ious([dets[i] for i in indices], gt_boxes.get(key, []))
        best = ious.max(axis=1) if ious.shape[1] else np.zeros(len(indices))
        background.update(i for i, iou in zip(indices, best) if iou < iou_thresh)
    return background


def delta_ap_fp(gt, results, iou_thresh=0.5) -> dict:
    """TIDE's dAP_FP: box AP50 gained when every detection that matches no ground truth of its
    class at IoU >= ``iou_thresh`` is removed.

    Not one-to-one: a detection is removed only if its IoU with every ground-truth box of its own
    class in its image (crowd boxes included, by intersection over detection area) is below
    ``iou_thresh``; duplicates stay. For LVIS, detections outside the federated rule are kept
    (lvis-api ignores them, and removing them would only change the 300-per-image cut). AP50
    comes from the fast LVIS engine (lvis-api's numbers) or from COCOeval.

    Args:
        gt: ground-truth json path or loaded dict (LVIS or COCO format).
        results: results json path or list of detection dicts (all scores are used).
        iou_thresh: IoU that counts as matching a ground-truth box.

    Returns:
        ``ap50`` and ``ap50_without_fp`` (percent), ``delta_ap_fp`` (their difference) and
        ``removed`` (the number of detections removed); for LVIS ground truth whose categories
        all carry a ``frequency``, ``by_frequency``: per group "r", "c", "f" the same three
        AP50 numbers over the group's categories (None where the group has no ground truth),
        and the group's ``removed``.
    """
    _check_thresholds(0.0, iou_thresh)
    gt = load_gt(gt)
    dets = load_results(results, gt)
    lvis = is_lvis_format(gt)
    background = _background_indices(gt, dets, iou_thresh)
    kept = [d for i, d in enumerate(dets) if i not in background]
    before = _ap50s(gt, dets, lvis)
    after = _ap50s(gt, kept, lvis) if background else before
    out = {
        "ap50": before["all"],
        "ap50_without_fp": after["all"],
        "delta_ap_fp": after["all"] - before["all"],
        "removed": len(background),
    }
    freq = frequency_groups(gt)
    if freq is not None:
        removed = Counter(freq[dets[i]["category_id"]] for i in background)
        out["by_frequency"] = {
            g: {
                "ap50": before[g],
                "ap50_without_fp": after[g],
                "delta_ap_fp": None if before[g] is None else after[g] - before[g],
                "removed": removed[g],
            }
            for g in FREQUENCIES
        }
    return out


def tide_breakdown(gt, results) -> dict:
    """A TIDE-style error breakdown under LVIS's federated rules: the count of each error type
    and the box AP50 gained by fixing it (:mod:`iif_d2.lvis_eval.tide` defines both).

    COCO-format ground truth is read as LVIS with every class verified in every image, crowd
    boxes as ignored objects (plain IoU, not COCO's intersection over detection area) and at
    most 100 detections per image, so its ``ap50`` can differ from COCOeval's where there are
    crowd boxes.

    Args:
        gt: ground-truth json path or loaded dict (LVIS or COCO format).
        results: results json path or list of detection dicts (all scores are used).

    Returns:
        :func:`~iif_d2.lvis_eval.tide.tide_errors`'s dict (``counts``, ``delta_ap50``,
        ``ap50``, ``ap50_fixed``, ``tp``, ``fp``, ``ignored``; ``by_frequency`` only for LVIS
        ground truth whose categories all carry a ``frequency``), plus ``max_dets``.
    """
    gt = load_gt(gt)
    dets = load_results(results, gt)
    lvis = is_lvis_format(gt)
    eval_gt = _gt_for_eval(gt, lvis)
    max_dets = _LVIS_MAX_DETS if lvis else _COCO_MAX_DETS
    if not lvis:
        eval_gt = _coco_as_federated(eval_gt)
    lvis_gt = LVISGroundTruth.from_dict(eval_gt, with_masks=False)
    out = tide_errors(lvis_gt, _detections(dets), max_dets=max_dets)
    if frequency_groups(gt) is None:
        del out["by_frequency"]
    return {**out, "max_dets": max_dets}


def _parser():
    p = OneLineParser(
        prog="python -m iif_d2.lvis_eval.fp_analysis", description=__doc__.split("\n")[0]
    )
    p.add_argument("--gt", required=True, help="ground-truth json (LVIS or COCO format)")
    p.add_argument("--results", required=True, help="detections json, e.g. lvis_instances_results")
    p.add_argument(
        "--score-thresh",
        type=finite_float,
        default=DEFAULT_SCORE_THRESH,
        help=f"for the FP counts only (default {DEFAULT_SCORE_THRESH}, the README's FP/img)",
    )
    p.add_argument(
        "--iou-thresh", type=finite_float, default=0.5, help="for the FP counts and dAP_FP"
    )
    p.add_argument("--json-out", help="also write all three analyses to this json file")
    return p


def _print_table(gt_path: str, lvis: bool, fp: dict, dap: dict, tide: dict):
    """The three analyses as detectron2's tables; AP50 and its gains in percent."""
    print(f"{gt_path}: {'LVIS' if lvis else 'COCO'} format, {fp['images']} images")
    print(
        f"False positives, one-to-one (score >= {fp['score_thresh']}, IoU >= {fp['iou_thresh']}):"
    )
    keys = ("fp_per_image", "fp", "tp", "ignored", "not_evaluable", "detections")
    print(small_table({k: fp[k] for k in keys}))
    print(f"TIDE dAP_FP, box AP50 in percent (IoU >= {fp['iou_thresh']}, all scores):")
    print(small_table({k: dap[k] for k in ("ap50", "ap50_without_fp", "delta_ap_fp", "removed")}))
    if "by_frequency" in fp:
        print("By LVIS frequency group (FP/image: the group's false positives / all images):")
        keys = ("ap50", "ap50_without_fp", "delta_ap_fp")
        rows = []
        for g in FREQUENCIES:
            f, d = fp["by_frequency"][g], dap["by_frequency"][g]
            rows.append([g, f["categories"], f["fp_per_image"], f["fp"], *(d[k] for k in keys)])
        print(rows_table(["group", "categories", "fp_per_image", "fp", *keys], rows))
    print(
        f"TIDE error types (federated; IoU fg 0.5, bg 0.1; all scores, {tide['max_dets']} "
        f"per image), box AP50 {tide['ap50']:.3f};"
    )
    print("delta_ap50: the AP50 gained by fixing that type (percent):")
    groups = FREQUENCIES if "by_frequency" in tide else ()
    rows = [
        [t, tide["counts"][t], tide["delta_ap50"][t]]
        + [tide["by_frequency"][g]["delta_ap50"][t] for g in groups]
        for t in ERROR_TYPES
    ]
    print(rows_table(["type", "count", "delta_ap50", *(f"delta_ap50_{g}" for g in groups)], rows))


def main(argv=None) -> int:
    """Command line: print the three analyses; exit 2 with a one-line error for a missing or
    malformed file or an unwritable --json-out, 130 with one line after Ctrl-C."""
    return run_interruptible(_main, argv)


def _main(argv) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 <= args.score_thresh <= 1:
        parser.error(f"--score-thresh {args.score_thresh} must lie in [0, 1] (scores are)")
    if not 0 < args.iou_thresh <= 1:
        parser.error(f"--iou-thresh {args.iou_thresh} must lie in (0, 1]")
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.json_out is not None:
            check_output_file(args.json_out, "--json-out", (args.gt, args.results), "metrics.json")
        gt = load_gt(args.gt)
        dets = load_results(args.results, gt)
        fp = false_positives_per_image(gt, dets, args.score_thresh, args.iou_thresh)
        dap = delta_ap_fp(gt, dets, args.iou_thresh)
        tide = tide_breakdown(gt, dets)
        lvis = is_lvis_format(gt)
    except (OSError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    payload = {"false_positives": fp, "delta_ap_fp": dap, "tide_errors": tide}
    if args.json_out is not None and not write_json_output(args.json_out, payload):
        return 2
    _print_table(args.gt, lvis, fp, dap, tide)
    if args.json_out:
        print(f"# saved to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
