"""AP-fixed and AP-pool (Dave et al. 2021, "Evaluating Large-Vocabulary Object Detectors: The
Devil is in the Details").

* AP-fixed: each category's ``dets_per_cat`` (10,000) best detections over the whole dataset,
  no cap per image, then LVIS AP as usual (federated rules, per-category AP averaged).
* AP-pool: the same detections and matching, but precision and recall are computed over the
  pooled detections of a group of categories ("all", "r", "c", "f") ranked together by score,
  so scores must be comparable across categories (calibration matters).
"""

import numpy as np

from .data import LVISDetections, LVISGroundTruth
from .engine import AREA_LABELS, _accumulate, _mean, evaluate, match, summarize

__all__ = ["POOLS", "ap_fixed", "ap_pooled", "top_per_category"]

POOLS = ("all", "r", "c", "f")


def top_per_category(dt: LVISDetections, dets_per_cat: int = 10000) -> np.ndarray:
    """Indices (input order) of each category's ``dets_per_cat`` best scores (ties: the
    earlier detection)."""
    order = np.lexsort((np.arange(len(dt)), -dt.score, dt.category_id))
    cats = dt.category_id[order]
    rank = np.arange(len(order)) - np.searchsorted(cats, cats, side="left")
    return np.sort(order[rank < dets_per_cat])


def _subset(dt: LVISDetections, idx) -> LVISDetections:
    out = LVISDetections(dt.image_id[idx], dt.category_id[idx], dt.score[idx], dt.area[idx])
    if dt.bbox is not None:
        out.bbox = dt.bbox[idx]
    if dt.rle_counts is not None:
        out.rle_counts = [dt.rle_counts[i] for i in idx.tolist()]
        out.rle_sizes = dt.rle_sizes[idx]
    return out


def ap_fixed(gt: LVISGroundTruth, dt: LVISDetections, iou_type: str, dets_per_cat=10000):
    """AP-fixed: lvis-api's metrics on each category's top ``dets_per_cat`` detections, with
    no limit per image.

    Returns:
        dict of lvis-api's metric names (``AR@-1`` for the unlimited recall) to fractions.
    """
    sub = _subset(dt, top_per_category(dt, dets_per_cat))
    return summarize(evaluate(gt, sub, iou_type, max_dets=-1))


def ap_pooled(gt: LVISGroundTruth, dt: LVISDetections, iou_type: str, dets_per_cat=10000):
    """AP-pool: AP of the detections of each pool of categories ranked together.

    Detections are matched per category as usual (federated rules, no cap per image, each
    category's top ``dets_per_cat``); a pool's ranking breaks score ties by image, then
    category, then input order.

    Returns:
        dict "AP-pool" (all categories), "AP-pool-r", "AP-pool-c", "AP-pool-f" (fractions,
        -1 for a pool without ground truth), over IoU 0.5:0.95, area "all".
    """
    sub = _subset(dt, top_per_category(dt, dets_per_cat))
    m = match(gt, sub, iou_type, max_dets=-1)
    a = AREA_LABELS.index("all")
    codes = m["codes"][:, a : a + 1]
    num_gt_cat = m["num_gt"][:, a : a + 1]
    out = {}
    for pool in POOLS:
        if pool == "all":
            group, num_gt = np.zeros(len(m["cat"]), dtype=np.int64), num_gt_cat.sum(0)[None]
        else:
            in_pool = gt.cat_freq == "rcf".index(pool)
            group = np.where(in_pool[m["cat"]], 0, 1)
            num_gt = np.stack([num_gt_cat[in_pool].sum(0), num_gt_cat[~in_pool].sum(0)])
        order = np.lexsort((m["index"], m["cat"], m["img"], -m["score"], group))
        precision, _ = _accumulate(codes, group, order, num_gt, 2 if pool != "all" else 1)
        key = "AP-pool" if pool == "all" else f"AP-pool-{pool}"
        out[key] = float(_mean(precision[:, :, 0, 0]))
    return out
