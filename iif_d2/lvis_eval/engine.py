"""The fast engine: lvis-api's LVIS evaluation, vectorised, walking only the (image, category)
pairs that hold detections or ground truth.

Every rule of ``lvis==0.5.3`` is kept, quirks included:

* at most ``max_dets`` detections per image, the highest scores (ties: the earlier result);
* objects with area 0 are dropped after that cut (``get_ann_ids`` keeps ``area > 0``): a
  detection with an empty mask never counts, neither does a ground-truth object of area 0;
* federated: a class is evaluated on an image only if present there or in its
  ``neg_category_ids``; unmatched detections of its ``not_exhaustive_category_ids`` are ignored;
* COCO's greedy matching per IoU threshold (ignored ground truth last, best IoU, ties to the
  later object), area ranges on the file's ``area`` for ground truth and the detection's area;
* a ground-truth id of 0 reads as "unmatched" (lvis-api stores matched ids with 0 for none).
"""

import numpy as np
import pycocotools.mask as mask_utils

from iif_d2.lvis_eval.data import LVISDetections, LVISGroundTruth

__all__ = [
    "AREA_RANGES",
    "accumulate",
    "compact",
    "concat_matches",
    "evaluate",
    "match",
    "summarize",
]

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = [[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]]
AREA_LABELS = ["all", "small", "medium", "large"]
_TP, _FP = 1, 2  # per-detection codes; 0 is "ignored"


def _in_keys(keys, table):
    """Whether each key is in the sorted unique ``table``."""
    if len(table) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return table[pos] == keys


def _csr_keys(csr, num_cats, cat_ids):
    """Sorted (image index * K + category index) keys of a per-image CSR of category ids."""
    offsets, values = csr
    img = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    cat = np.searchsorted(cat_ids, values)
    ok = (cat < len(cat_ids)) & (cat_ids[np.minimum(cat, len(cat_ids) - 1)] == values)
    return np.unique(img[ok] * num_cats + cat[ok])


def _cut_per_image(img, score, max_dets):
    """Indices (in input order) of the top ``max_dets`` scores of each image."""
    if max_dets < 0 or len(img) == 0:
        return np.arange(len(img))
    order = np.lexsort((np.arange(len(img)), -score, img))
    sorted_img = img[order]
    starts = np.searchsorted(sorted_img, sorted_img, side="left")
    rank = np.arange(len(order)) - starts
    return np.sort(order[rank < max_dets])


def _prepare(gt: LVISGroundTruth, dt: LVISDetections, max_dets: int):
    """Filter ground truth and detections as lvis-api's ``LVISResults`` and ``_prepare``."""
    num_cats = len(gt.cat_ids)
    d_img = np.searchsorted(gt.img_ids, dt.image_id)
    d_img_c = np.minimum(d_img, len(gt.img_ids) - 1)
    if len(dt) and not np.all(gt.img_ids[d_img_c] == dt.image_id):
        bad = dt.image_id[gt.img_ids[d_img_c] != dt.image_id][0]
        raise ValueError(f"Results hold image_id {bad}, which the ground truth does not have.")
    keep = _cut_per_image(d_img, dt.score, max_dets)
    d_cat = np.searchsorted(gt.cat_ids, dt.category_id[keep])
    known = (d_cat < num_cats) & (
        gt.cat_ids[np.minimum(d_cat, num_cats - 1)] == dt.category_id[keep]
    )
    area = dt.area[keep]
    keep = keep[known & (area > 0) & (area < np.inf)]

    g_keep = np.flatnonzero((gt.ann_area > 0) & (gt.ann_area < np.inf))
    g_cat = np.searchsorted(gt.cat_ids, gt.ann_cat_id[g_keep])
    g_known = (g_cat < num_cats) & (
        gt.cat_ids[np.minimum(g_cat, num_cats - 1)] == gt.ann_cat_id[g_keep]
    )
    g_keep, g_cat = g_keep[g_known], g_cat[g_known]
    g_key = gt.ann_img[g_keep] * num_cats + g_cat

    d_key = d_img[keep] * num_cats + np.searchsorted(gt.cat_ids, dt.category_id[keep])
    present = _in_keys(d_key, np.unique(g_key))
    fed = present | _in_keys(d_key, _csr_keys(gt.neg, num_cats, gt.cat_ids))
    keep, d_key, present = keep[fed], d_key[fed], present[fed]
    nel = _in_keys(d_key, _csr_keys(gt.not_exhaustive, num_cats, gt.cat_ids))
    return keep, d_key, present, nel, g_keep, g_key


def _pair_ious(gt, dt, iou_type, d_idx, d_key, g_idx, g_key):
    """IoU blocks of each (image, category) pair holding both. Detections sorted by key, then
    score (descending), then input order; ground truth by key, then input order.

    Returns:
        list of (detection positions into d_idx, ground-truth positions into g_idx, ious).
    """
    blocks = []
    if len(d_key) == 0:  # no detection survived the filtering
        return blocks
    d_bounds = np.flatnonzero(np.diff(d_key)) + 1
    d_starts = np.concatenate([[0], d_bounds])
    d_ends = np.concatenate([d_bounds, [len(d_key)]])
    g_lo = np.searchsorted(g_key, d_key[d_starts], side="left")
    g_hi = np.searchsorted(g_key, d_key[d_starts], side="right")
    for s, e, gl, gh in zip(d_starts, d_ends, g_lo, g_hi):
        if gh == gl:
            continue
        dets, gts = d_idx[s:e], g_idx[gl:gh]
        if iou_type == "bbox":
            ious = mask_utils.iou(dt.bbox[dets], gt.ann_bbox[gts], [0] * len(gts))
        else:
            ious = mask_utils.iou(dt.rles(dets), [gt.rles[g] for g in gts], [0] * len(gts))
        blocks.append((np.arange(s, e), np.arange(gl, gh), np.asarray(ious, dtype=np.float64)))
    return blocks


def _match_bucket(ious, g_ign, thrs):
    """Greedy matching of a bucket of pairs, all area ranges and thresholds at once.

    Args:
        ious: (P, D, G) IoUs, detections in score order, -1 for padding.
        g_ign: (P, A, G) ground truth ignored per area range (padding: any value), or None
            where every area range ignores all or none of each pair's objects (then ignoring
            changes no match: one lane set, A = 1).
        thrs: (T,) effective thresholds.

    Returns:
        (P, D, A, T) int: matched ground-truth column, -1 for none.
    """
    num_p, num_d, num_g = ious.shape
    num_a = 1 if g_ign is None else g_ign.shape[1]
    if num_g == 1:  # one object: the first detection over the threshold takes it
        hit = ious[:, :, 0, None] >= thrs  # (P, D, T)
        first = np.where(hit.any(axis=1), np.argmax(hit, axis=1), -1)  # (P, T)
        taken = np.arange(num_d)[None, :, None] == first[:, None, :]
        out = np.where(taken, 0, -1)[:, :, None, :]
        return np.broadcast_to(out, (num_p, num_d, num_a, len(thrs)))
    matched = np.zeros((num_p, num_a, len(thrs), num_g), dtype=bool)
    out = np.full((num_p, num_d, num_a, len(thrs)), -1, dtype=np.int64)
    ign = None if g_ign is None else g_ign[:, :, None, :]
    cols = np.arange(num_g)
    for k in range(num_d):
        v = ious[:, k, None, None, :]
        cand = (v >= thrs[None, None, :, None]) & ~matched
        groups = [cand] if ign is None else [cand & ~ign, cand & ign]
        best = []
        for group in groups:  # non-ignored objects first; the best IoU, ties to the later
            vals = np.where(group, v, -np.inf)[..., ::-1]
            best.append((num_g - 1 - np.argmax(vals, axis=-1), group.any(axis=-1)))
        chosen, has = best[0]
        if len(best) == 2:
            chosen = np.where(has, chosen, best[1][0])
            has = has | best[1][1]
        matched |= (cols == chosen[..., None]) & has[..., None]
        out[:, k] = np.where(has, chosen, -1)
    return out


def _match(blocks, g_ign_all, num_dets, thrs):
    """Matched ground-truth positions (into the kept ground truth) per detection and lane."""
    num_a = g_ign_all.shape[1]
    match = np.full((num_dets, num_a, len(thrs)), -1, dtype=np.int32)
    buckets = {}
    for rows, cols, ious in blocks:
        part = np.flatnonzero(ious.max(axis=1) >= thrs.min())  # the others match nothing
        if len(part):
            ign = g_ign_all[cols]
            plain = bool(np.all(ign.all(axis=0) | ~ign.any(axis=0)))
            key = (int(2 ** np.ceil(np.log2(len(part)))), int(2 ** np.ceil(np.log2(len(cols)))))
            buckets.setdefault(key + (plain,), []).append((rows[part], cols, ious[part]))
    for (num_d, num_g, plain), items in buckets.items():
        ious = np.full((len(items), num_d, num_g), -1.0)
        g_ign = None if plain else np.ones((len(items), num_a, num_g), dtype=bool)
        for p, (_, cols, iou) in enumerate(items):
            ious[p, : iou.shape[0], : iou.shape[1]] = iou
            if not plain:
                g_ign[p, :, : len(cols)] = g_ign_all[cols].T
        out = _match_bucket(ious, g_ign, thrs)
        for p, (rows, cols, _) in enumerate(items):
            o = out[p, : len(rows)]
            match[rows] = np.where(o >= 0, cols[np.maximum(o, 0)], -1)
    return match


def _codes(match, g_ign_all, g_ids, d_area, nel):
    """Per detection and lane: 1 true positive, 2 false positive, 0 ignored (lvis-api's
    ``dt_ig`` / ``dt_m`` logic, gt id 0 reading as unmatched)."""
    if match.shape[1] == 1:  # nothing matched (no area/threshold lanes needed)
        dt_m = dt_ig = np.zeros(match.shape, dtype=bool)
    else:
        has = match >= 0
        m = np.maximum(match, 0)
        area_idx = np.arange(len(AREA_RANGES))[None, :, None]
        dt_m = has & (g_ids[m] != 0)
        dt_ig = has & g_ign_all[m, area_idx]
    lo = np.array([r[0] for r in AREA_RANGES])
    hi = np.array([r[1] for r in AREA_RANGES])
    mask = (d_area[:, None] < lo) | (d_area[:, None] > hi) | nel[:, None]
    dt_ig = dt_ig | (~dt_m & mask[:, :, None])
    dt_m = np.broadcast_to(dt_m, dt_ig.shape)
    codes = np.zeros(dt_ig.shape, dtype=np.int8)
    codes[dt_m & ~dt_ig] = _TP
    codes[~dt_m & ~dt_ig] = _FP
    return codes


def _first_reaching(tp_sum, num_gt):
    """lvis-api's ``searchsorted(tp_sum / num_gt, REC_THRS, side="left")`` for all lanes at once.

    ``tp / num_gt >= r`` iff ``tp >= m_r``, ``m_r`` the first count whose quotient (the same
    float division) reaches ``r``; integer counts of lane ``l`` are offset by ``l * (n + 1)``
    so one search serves every lane exactly.

    Args:
        tp_sum: (L, n) int cumulative true positives per lane.
        num_gt: (L,) int ground truth per lane (> 0).

    Returns:
        (L, R) int positions, ``n`` where never reached.
    """
    num_l, n = tp_sum.shape
    reach = {g: np.searchsorted(np.arange(g + 1) / g, REC_THRS, side="left") for g in set(num_gt)}
    m_r = np.stack([reach[g] for g in num_gt])  # (L, R)
    offset = (n + 1) * np.arange(num_l)[:, None]
    flat = (tp_sum + offset).ravel()
    idx = np.searchsorted(flat, (m_r + offset).ravel(), side="left").reshape(num_l, -1)
    return np.minimum(idx - n * np.arange(num_l)[:, None], n)


def _accumulate(codes, d_cat, order, num_gt, num_cats):
    """lvis-api's ``accumulate``: precision (T, R, K, A) and recall (T, K, A), -1 where a
    category has no ground truth in an area range. (``d_cat`` may be any grouping of the
    detections into ``num_cats`` groups, ``num_gt`` counted per group, ``order`` sorted by
    group first.)"""
    num_a, num_t = codes.shape[1], codes.shape[2]
    precision = -np.ones((num_t, len(REC_THRS), num_cats, num_a))
    recall = -np.ones((num_t, num_cats, num_a))
    d_cat = d_cat[order]
    bounds = np.searchsorted(d_cat, np.arange(num_cats + 1))
    for k in np.flatnonzero((num_gt > 0).any(axis=1)):
        areas = np.flatnonzero(num_gt[k] > 0)
        n = bounds[k + 1] - bounds[k]
        if n == 0:
            recall[:, k, areas] = 0
            precision[:, :, k, areas] = 0.0
            continue
        c = codes[order[bounds[k] : bounds[k + 1]]][:, areas].reshape(n, -1).T  # (L, n)
        tp = np.cumsum(c == _TP, axis=1)
        fp_sum = np.cumsum(c == _FP, axis=1).astype(np.float64)
        lane_gt = np.repeat(num_gt[k, areas], num_t)
        tp_sum = tp.astype(np.float64)
        rc_last = tp_sum[:, -1] / lane_gt
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        idx = _first_reaching(tp, lane_gt)
        pr_at = np.where(idx < n, np.take_along_axis(pr, np.minimum(idx, n - 1), axis=1), 0.0)
        recall[:, k, areas] = rc_last.reshape(len(areas), num_t).T
        precision[:, :, k, areas] = pr_at.reshape(len(areas), num_t, -1).transpose(1, 2, 0)
    return precision, recall


def _check(gt, dt, iou_type):
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type {iou_type!r} is not one of 'bbox', 'segm'.")
    if iou_type == "segm" and (gt.rles is None or dt.rle_counts is None):
        raise ValueError("segm evaluation needs masks in both ground truth and detections.")
    if iou_type == "bbox" and dt.bbox is None:
        raise ValueError("bbox evaluation needs detection boxes.")


def match(gt: LVISGroundTruth, dt: LVISDetections, iou_type: str, max_dets: int = 300):
    """lvis-api's ``LVISEval.evaluate``: every kept detection's outcome per area range and IoU
    threshold.

    Returns:
        dict: "codes" (N, A, T) int8 (1 true positive, 2 false positive, 0 ignored), "cat"
        (N,) category index, "img" (N,) image index, "index" (N,) position in ``dt``,
        "score" (N,), "num_gt" (K, A) ground truth counted per category and area range.
    """
    _check(gt, dt, iou_type)
    num_cats = len(gt.cat_ids)
    thrs = np.minimum(IOU_THRS, 1 - 1e-10)
    keep, d_key, present, nel, g_keep, g_key = _prepare(gt, dt, max_dets)
    score = dt.score[keep]

    g_order = np.lexsort((np.arange(len(g_key)), g_key))
    g_keep, g_key = g_keep[g_order], g_key[g_order]
    g_area = gt.ann_area[g_keep]
    lo = np.array([r[0] for r in AREA_RANGES])
    hi = np.array([r[1] for r in AREA_RANGES])
    g_ign = gt.ann_ignore[g_keep][:, None] | (g_area[:, None] < lo) | (g_area[:, None] > hi)
    g_cat = g_key % num_cats
    num_gt = np.stack(
        [np.bincount(g_cat[~g_ign[:, a]], minlength=num_cats) for a in range(len(lo))], axis=1
    )

    d_order = np.lexsort((np.arange(len(keep)), -score, d_key))
    sel = d_order[present[d_order]]
    blocks = _pair_ious(gt, dt, iou_type, keep[sel], d_key[sel], g_keep, g_key)
    d_area = dt.area[keep]
    codes = _codes(np.full((len(keep), 1, 1), -1), g_ign, gt.ann_id[g_keep], d_area, nel)
    codes = np.ascontiguousarray(np.broadcast_to(codes, (len(keep), len(lo), len(thrs))))
    if len(sel):
        match_sel = _match(blocks, g_ign, len(sel), thrs)
        codes[sel] = _codes(match_sel, g_ign, gt.ann_id[g_keep], d_area[sel], nel[sel])
        del match_sel
    return {
        "codes": codes,
        "cat": d_key % num_cats,
        "img": d_key // num_cats,
        "index": keep,
        "score": score,
        "num_gt": num_gt,
    }


def evaluate(gt: LVISGroundTruth, dt: LVISDetections, iou_type: str, max_dets: int = 300):
    """lvis-api's ``LVISEval.evaluate`` + ``accumulate``.

    Args:
        gt: the ground truth (with masks for segm).
        dt: the detections (``bbox`` for bbox, RLEs for segm; ``area`` as lvis-api's).
        iou_type: "bbox" or "segm".
        max_dets: detections kept per image (-1: all).

    Returns:
        dict with "precision" (T, R, K, A), "recall" (T, K, A), "cat_freq" (K,), "max_dets".
    """
    return accumulate(gt, match(gt, dt, iou_type, max_dets), max_dets)


def accumulate(gt: LVISGroundTruth, m: dict, max_dets: int = 300):
    """lvis-api's ``LVISEval.accumulate`` on :func:`match`'s output (or on
    :func:`concat_matches` of the matches of disjoint sets of images).

    Args:
        gt: the ground truth the detections were matched to.
        m: :func:`match`'s dict.
        max_dets: the per-image limit the matching used (reported as ``AR@max_dets``).

    Returns:
        dict with "precision" (T, R, K, A), "recall" (T, K, A), "cat_freq" (K,), "max_dets".
    """
    # lvis-api ranks a category's detections by score, then image, then input order
    order = np.lexsort((m["index"], m["img"], -m["score"], m["cat"]))
    num_cats = len(gt.cat_ids)
    precision, recall = _accumulate(m["codes"], m["cat"], order, m["num_gt"], num_cats)
    return {
        "precision": precision,
        "recall": recall,
        "cat_freq": gt.cat_freq,
        "max_dets": max_dets,
    }


def pack_matches(m: dict) -> dict:
    """:func:`match`'s dict in few bytes, for sending between processes: the outcomes as two
    bit planes (true / false positive per area range and IoU threshold), categories and images
    as int32, scores as float32 where that is exact (a model's float32 scores).

    Returns:
        dict, for :func:`unpack_matches`.
    """
    flat = m["codes"].reshape(len(m["codes"]), int(np.prod(m["codes"].shape[1:])))  # 0 rows too
    score32 = m["score"].astype(np.float32)
    return {
        "shape": m["codes"].shape[1:],
        "tp": np.packbits(flat == _TP, axis=1),
        "fp": np.packbits(flat == _FP, axis=1),
        "cat": m["cat"].astype(np.int32),
        "img": m["img"].astype(np.int32),
        "index": m["index"].astype(np.int64),
        "score": score32 if np.array_equal(score32, m["score"]) else m["score"],
        "num_gt": m["num_gt"],
    }


def unpack_matches(p: dict) -> dict:
    """:func:`pack_matches`'s inverse."""
    lanes = int(np.prod(p["shape"]))
    tp = np.unpackbits(p["tp"], axis=1, count=lanes).astype(bool)
    fp = np.unpackbits(p["fp"], axis=1, count=lanes).astype(bool)
    codes = np.where(tp, _TP, np.where(fp, _FP, 0)).astype(np.int8)
    return {
        "codes": codes.reshape((len(codes),) + tuple(p["shape"])),
        "cat": p["cat"].astype(np.int64),
        "img": p["img"].astype(np.int64),
        "index": p["index"],
        "score": p["score"].astype(np.float64),
        "num_gt": p["num_gt"],
    }


MATCH_FIELDS = ("codes", "cat", "img", "index", "score")


def concat_matches(matches) -> dict:
    """One :func:`match` dict from the matches of disjoint sets of images (the same ground
    truth), e.g. one per process: accumulation needs only each detection's outcome, category,
    image, score and its order within its image (``index``), so the result accumulates exactly
    as the match of all the detections at once.

    Args:
        matches: a non-empty list of :func:`match` dicts.

    Returns:
        dict
    """
    out = {k: np.concatenate([m[k] for m in matches]) for k in MATCH_FIELDS}
    out["num_gt"] = matches[0]["num_gt"]
    return out


def _mean(s):
    return -1 if len(s[s > -1]) == 0 else np.mean(s[s > -1])


def summarize(ev) -> dict:
    """lvis-api's ``summarize`` on :func:`evaluate`'s output: AP, AP50, AP75, APs, APm, APl,
    APr, APc, APf, AR@max_dets, ARs/ARm/ARl@max_dets (fractions, as lvis-api)."""
    freq_groups = [np.flatnonzero(ev["cat_freq"] == g) for g in range(3)]

    def ap(iou_thr=None, area="all", freq=None):
        s = ev["precision"]
        aidx = [AREA_LABELS.index(area)]
        if iou_thr is not None:
            s = s[np.where(iou_thr == IOU_THRS)[0]]
        s = s[:, :, freq_groups[freq], aidx] if freq is not None else s[:, :, :, aidx]
        return _mean(s)

    def ar(area="all"):
        return _mean(ev["recall"][:, :, [AREA_LABELS.index(area)]])

    md = ev["max_dets"]
    res = {
        "AP": ap(),
        "AP50": ap(iou_thr=0.50),
        "AP75": ap(iou_thr=0.75),
        "APs": ap(area="small"),
        "APm": ap(area="medium"),
        "APl": ap(area="large"),
        "APr": ap(freq=0),
        "APc": ap(freq=1),
        "APf": ap(freq=2),
        f"AR@{md}": ar(),
    }
    for area in ("small", "medium", "large"):
        res[f"AR{area[0]}@{md}"] = ar(area)
    return {k: float(v) for k, v in res.items()}


def compact(gt: LVISGroundTruth, dt: LVISDetections, max_dets: int = 300) -> LVISDetections:
    """The detections that bbox or segm evaluation can use, in their order: cut per image,
    federated-filtered, RLE masks kept only where the class is present (elsewhere only their
    area counts). :func:`evaluate` gives the same numbers on the result as on ``dt``.

    Args:
        gt: the ground truth.
        dt: detections with ``bbox`` and, for segm, RLEs and ``mask_area``.
        max_dets: detections kept per image.

    Returns:
        LVISDetections
    """
    masks = dt.rle_counts is not None
    either = dt.area if not masks else np.maximum(dt.area, dt.mask_area)
    probe = LVISDetections(dt.image_id, dt.category_id, dt.score, either)
    keep, _, present, _, _, _ = _prepare(gt, probe, max_dets)  # keep: in input order
    out = LVISDetections(
        dt.image_id[keep], dt.category_id[keep], dt.score[keep], dt.area[keep], dt.bbox[keep]
    )
    if masks:
        need = present & (dt.mask_area[keep] > 0)
        out.mask_area = dt.mask_area[keep]
        out.rle_sizes = dt.rle_sizes[keep]
        out.rle_counts = [dt.rle_counts[k] if n else None for k, n in zip(keep.tolist(), need)]
    return out
