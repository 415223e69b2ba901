"""A TIDE-style breakdown of box detection errors under LVIS's federated rules.

After Bolya et al. 2020, "TIDE: A General Toolbox for Identifying Object Detection Errors",
with their thresholds: foreground IoU ``t_f = 0.5``, background IoU ``t_b = 0.1``.

**Which detections are judged.** Exactly those lvis-api's box evaluation judges at IoU 0.5,
area "all" (the fast engine's :func:`~iif_d2.lvis_eval.engine.match`): the 300 best scores per
image; a detection of class c on image i only where c is present in i or listed in its
``neg_category_ids``; detections of area 0 dropped. A detection matched (lvis-api's greedy
one-to-one matching per image and class) to a ground-truth box of its class is a true positive;
an unmatched detection of a class in the image's ``not_exhaustive_category_ids``, or one matched
only to an ``ignore`` object, is ignored, as lvis-api does. Every other detection is a false
positive and gets exactly one type.

**Types of a false positive d** of class c in image i. ``s`` is d's largest IoU with a
ground-truth box of class c in i, ``o`` its largest IoU with a box of another class in i (boxes
of area 0 and ``ignore`` objects do not count; every other box of the image counts for ``o``:
it is there whether or not c is verified in i). The first rule that holds gives the type
(TIDE's order):

1. ``bkg`` (background): image i has no ground-truth box that counts;
2. ``loc`` (localisation): ``t_b <= s < t_f``; its target is that box of class c;
3. ``cls`` (classification): ``o >= t_f``; its target is that box of the other class;
4. ``dupe`` (duplicate): ``s >= t_f`` (that box was taken by a higher-scoring detection);
5. ``bkg``: ``max(s, o) <= t_b``;
6. ``both`` (classification and localisation): the rest (``s < t_b < o < t_f``).

**Missed ground truth** (``miss``): a non-ignored box that no detection matched and that is not
the target of a ``loc`` or ``cls`` error while still free (TIDE: the error would recover it).

**Oracles** (each type fixed alone, the others left as they are; AP50 recomputed, percent):

* ``cls``: among the ``cls`` errors whose target box is free, the highest-scoring one per box
  becomes a true positive of the box's class; the other ``cls`` errors are removed;
* ``loc``: the same with ``loc`` errors, which stay in their own class;
* ``both``, ``dupe``, ``bkg``: those detections are removed;
* ``miss``: the missed boxes leave the ground truth (their class's count drops).

``delta_ap50[type]`` is the AP50 after the fix minus the AP50 before (never negative). AP50 is
lvis-api's box AP at IoU 0.5, area "all": 101-point interpolated precision per category, the
mean over categories with ground truth (TIDE's main table also uses AP at IoU 0.5). With no
errors every count and every ``delta_ap50`` is 0.

Differences from the TIDE package: the judged set and the matching are lvis-api's (federated,
per class, 300 detections per image), not TIDE's approximation with ignore regions; ``s`` at
exactly ``t_f`` is a duplicate (TIDE: localisation; both fixes remove it); the best error per
box is chosen among the errors of the type being fixed (TIDE shares one choice between ``cls``
and ``loc``, so a ``loc`` error can block a ``cls`` fix).
"""

import numpy as np
import pycocotools.mask as mask_utils

from iif_d2.lvis_eval.data import FREQUENCIES, LVISDetections, LVISGroundTruth
from iif_d2.lvis_eval.engine import AREA_LABELS, AREA_RANGES, IOU_THRS, _accumulate, compact, match

__all__ = ["BG_THRESH", "ERROR_TYPES", "POS_THRESH", "gt_counts", "tide_errors"]

POS_THRESH = 0.5  # TIDE's foreground IoU t_f (lvis-api's first IoU threshold)
BG_THRESH = 0.1  # TIDE's background IoU t_b
ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")
_CLS, _LOC, _BOTH, _DUPE, _BKG = range(5)  # indices into ERROR_TYPES; -1: not an error


def _kept_gt(gt: LVISGroundTruth):
    """Ground truth the engine keeps (area > 0 and finite, known category), sorted by image
    then input order: (annotation indices, category indices, ignored at area "all")."""
    num_cats = len(gt.cat_ids)
    pos = np.searchsorted(gt.cat_ids, gt.ann_cat_id)
    known = (pos < num_cats) & (gt.cat_ids[np.minimum(pos, num_cats - 1)] == gt.ann_cat_id)
    area = gt.ann_area
    keep = np.flatnonzero((area > 0) & (area < np.inf) & known)
    keep = keep[np.lexsort((keep, gt.ann_img[keep]))]
    lo, hi = AREA_RANGES[AREA_LABELS.index("all")]
    ignored = gt.ann_ignore[keep] | (area[keep] < lo) | (area[keep] > hi)
    return keep, pos[keep], ignored


def gt_counts(gt: LVISGroundTruth) -> np.ndarray:
    """Ground-truth objects per category that lvis-api counts at area "all" (the engine's
    ``num_gt``).

    Args:
        gt: the ground truth.

    Returns:
        (K,) int64, in ``gt.cat_ids`` order.
    """
    _, g_cat, g_ign = _kept_gt(gt)
    return np.bincount(g_cat[~g_ign], minlength=len(gt.cat_ids)).astype(np.int64)


def _match(gt: LVISGroundTruth, dt: LVISDetections, max_dets: int) -> dict:
    """The engine's :func:`match` at area "all", IoU 0.5; also when no detection survives its
    filters (the engine needs one)."""
    a, t = AREA_LABELS.index("all"), int(np.flatnonzero(np.isclose(IOU_THRS, POS_THRESH))[0])
    if len(dt) and len(compact(gt, dt, max_dets)):
        m = match(gt, dt, "bbox", max_dets)
        return {**m, "codes": m["codes"][:, a, t], "num_gt": m["num_gt"][:, a]}
    empty = np.zeros(0, dtype=np.int64)
    return {
        "codes": np.zeros(0, dtype=np.int8),
        "cat": empty,
        "img": empty,
        "index": empty,
        "score": np.zeros(0),
        "num_gt": gt_counts(gt),
    }


def _greedy(ious, same, g_ign):
    """lvis-api's greedy matching at POS_THRESH of one image's detections (score order), per
    class: non-ignored boxes first, the best IoU, ties to the later box.

    Returns:
        (D,) matched column or -1.
    """
    cand = same & (ious >= POS_THRESH)
    taken = np.zeros(ious.shape[1], dtype=bool)
    out = np.full(ious.shape[0], -1)
    for r in np.flatnonzero(cand.any(axis=1)):
        free = cand[r] & ~taken
        for group in (free & ~g_ign, free & g_ign):
            if group.any():
                vals = np.where(group, ious[r], -np.inf)[::-1]
                out[r] = len(vals) - 1 - int(np.argmax(vals))
                taken[out[r]] = True
                break
    return out


def _classify(ious, same, g_ign, fp_rows):
    """Types and targets (columns, -1 for none) of the false positives ``fp_rows``."""
    if not len(g_ign):  # no ground truth in the image
        return np.full(len(fp_rows), _BKG), np.full(len(fp_rows), -1)
    valid = ~g_ign[None, :]
    s_iou = np.where(same[fp_rows] & valid, ious[fp_rows], 0.0)
    o_iou = np.where(~same[fp_rows] & valid, ious[fp_rows], 0.0)
    s_arg, o_arg = s_iou.argmax(axis=1), o_iou.argmax(axis=1)
    rows = np.arange(len(fp_rows))
    s, o = s_iou[rows, s_arg], o_iou[rows, o_arg]
    kind = np.select(
        [
            ~valid.any(),
            (s >= BG_THRESH) & (s < POS_THRESH),
            o >= POS_THRESH,
            s >= POS_THRESH,
            np.maximum(s, o) <= BG_THRESH,
        ],
        [_BKG, _LOC, _CLS, _DUPE, _BKG],
        _BOTH,
    )
    target = np.select([kind == _LOC, kind == _CLS], [s_arg, o_arg], -1)
    return kind, target


def _ap50(cat, score, img, index, tp, num_gt):
    """lvis-api's AP50 (area "all") of data points, in percent; per-category APs (-1: no gt)."""
    codes = np.where(tp, 1, 2).astype(np.int8)[:, None, None]
    order = np.lexsort((index, img, -score, cat))
    precision, _ = _accumulate(codes, cat, order, num_gt[:, None], len(num_gt))
    per_cat = np.array([p.mean() if (p > -1).all() else -1.0 for p in precision[0, :, :, 0].T])
    valid = per_cat > -1
    return (100.0 * float(per_cat[valid].mean()) if valid.any() else 0.0), per_cat


def _group_ap(per_cat, cat_freq):
    """Mean AP50 (percent) of each frequency group's categories with ground truth (None if
    there are none)."""
    out = {}
    for g, name in enumerate(FREQUENCIES):
        vals = per_cat[(cat_freq == g) & (per_cat > -1)]
        out[name] = 100.0 * float(vals.mean()) if len(vals) else None
    return out


def _judge(gt: LVISGroundTruth, dt: LVISDetections, m: dict):
    """Per kept detection: error type (-1 if none) and target (kept-gt position, -1); per kept
    gt: matched by a true positive."""
    g_keep, g_cat, g_ign = _kept_gt(gt)
    g_bounds = np.searchsorted(gt.ann_img[g_keep], np.arange(len(gt.img_ids) + 1))
    code = m["codes"]
    kind = np.full(len(code), -1)
    target = np.full(len(code), -1)
    used = np.zeros(len(g_keep), dtype=bool)
    order = np.lexsort((m["index"], -m["score"], m["img"]))
    d_bounds = np.searchsorted(m["img"][order], np.arange(len(gt.img_ids) + 1))
    for i in np.flatnonzero(np.diff(d_bounds)):
        rows = order[d_bounds[i] : d_bounds[i + 1]]
        cols = np.arange(g_bounds[i], g_bounds[i + 1])
        boxes = gt.ann_bbox[g_keep[cols]]
        ious = np.asarray(
            mask_utils.iou(dt.bbox[m["index"][rows]], boxes, [0] * len(cols)), dtype=np.float64
        ).reshape(len(rows), len(cols))
        same = m["cat"][rows][:, None] == g_cat[cols][None, :]
        col = _greedy(ious, same, g_ign[cols])
        hit = col >= 0
        tp = np.zeros(len(rows), dtype=bool)
        tp[hit] = ~g_ign[cols][col[hit]] & (gt.ann_id[g_keep[cols][col[hit]]] != 0)
        if not np.array_equal(tp, code[rows] == 1):
            raise RuntimeError(f"TIDE matching disagrees with the engine on image {i}.")
        used[cols[col[hit & tp]]] = True
        fp_rows = np.flatnonzero(code[rows] == 2)
        if len(fp_rows):
            k, t = _classify(ious, same, g_ign[cols], fp_rows)
            kind[rows[fp_rows]] = k
            target[rows[fp_rows]] = np.where(
                t >= 0, cols[np.maximum(t, 0)] if len(cols) else -1, -1
            )
    return kind, target, used, g_cat, g_ign


def _fix_targets(kind, target, used, score, img, index, etype):
    """Positions of the errors of ``etype`` that become true positives: the best-scoring one
    (ties: the earlier image, then result) per free target box."""
    cand = np.flatnonzero((kind == etype) & (target >= 0))
    cand = cand[~used[target[cand]]]
    cand = cand[np.lexsort((index[cand], img[cand], -score[cand]))]
    _, first = np.unique(target[cand], return_index=True)
    return cand[first]


def tide_errors(gt: LVISGroundTruth, dt: LVISDetections, max_dets: int = 300) -> dict:
    """TIDE-style error counts and the AP50 each fix would gain (see the module docstring).

    Args:
        gt: the ground truth (boxes only needed).
        dt: the detections, with ``bbox``.
        max_dets: detections kept per image (the 300 of LVIS).

    Returns:
        dict: ``counts`` (type -> number; ``miss`` counts boxes), ``delta_ap50`` (type ->
        percent), ``ap50`` (percent, lvis-api's box AP50), ``ap50_fixed`` (type -> percent),
        ``by_frequency`` (group "r"/"c"/"f" -> ``ap50`` and ``delta_ap50`` per type, None where a
        group has no category with ground truth), and the judged detections' ``tp``, ``fp``,
        ``ignored``.
    """
    if dt.bbox is None and len(dt):
        raise ValueError("the TIDE breakdown needs detection boxes (bbox).")
    m = _match(gt, dt, max_dets)
    kind, target, used, g_cat, g_ign = _judge(gt, dt, m)
    code, num_gt = m["codes"], m["num_gt"].astype(np.int64)
    judged = code != 0
    cat, score, img, index = m["cat"], m["score"], m["img"], m["index"]
    tp = code == 1

    def ap(sel, cats=cat, tps=tp, ngt=num_gt):
        return _ap50(cats[sel], score[sel], img[sel], index[sel], tps[sel], ngt)

    base, base_cat = ap(judged)
    targeted = np.zeros(len(used), dtype=bool)
    for etype in (_CLS, _LOC):
        sel = (kind == etype) & (target >= 0)
        targeted[target[sel][~used[target[sel]]]] = True
    missed = ~used & ~g_ign & ~targeted
    counts = {name: int((kind == k).sum()) for k, name in enumerate(ERROR_TYPES[:5])}
    counts["miss"] = int(missed.sum())

    fixed, fixed_cat = {}, {}
    for k, name in enumerate(ERROR_TYPES[:5]):
        keep = judged & (kind != k)
        cats, tps = cat, tp
        if k in (_CLS, _LOC):
            fix = _fix_targets(kind, target, used, score, img, index, k)
            keep[fix] = True
            tps = tp.copy()
            tps[fix] = True
            if k == _CLS:
                cats = cat.copy()
                cats[fix] = g_cat[target[fix]]
        fixed[name], fixed_cat[name] = ap(keep, cats, tps)
    ngt = num_gt - np.bincount(g_cat[missed], minlength=len(num_gt))
    fixed["miss"], fixed_cat["miss"] = ap(judged, ngt=ngt)

    by_freq = {
        g: {"ap50": v, "delta_ap50": {}} for g, v in _group_ap(base_cat, gt.cat_freq).items()
    }
    for name in ERROR_TYPES:
        for group, after in _group_ap(fixed_cat[name], gt.cat_freq).items():
            before = by_freq[group]["ap50"]
            delta = None if before is None or after is None else after - before
            by_freq[group]["delta_ap50"][name] = delta
    return {
        "counts": counts,
        "delta_ap50": {name: fixed[name] - base for name in ERROR_TYPES},
        "ap50": base,
        "ap50_fixed": fixed,
        "by_frequency": by_freq,
        "tp": int(tp.sum()),
        "fp": int((code == 2).sum()),
        "ignored": int((code == 0).sum()),
    }
