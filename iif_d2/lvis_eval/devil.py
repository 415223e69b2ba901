"""AP-fixed and AP-pool (Dave et al. 2021, "Evaluating Large-Vocabulary Object Detectors: The
Devil is in the Details").

* AP-fixed: each category's ``dets_per_cat`` (10,000) best detections over the whole dataset,
  no cap per image, then LVIS AP as usual (federated rules, per-category AP averaged).
* AP-pool: the same detections and matching, but precision and recall are computed over the
  pooled detections of a group of categories ("all", "r", "c", "f") ranked together by score,
  so scores must be comparable across categories (calibration matters).

The per-category budget can be kept while detections stream in (:class:`CategoryBudget`: a
running top ``dets_per_cat`` per category, in bounded memory), and both metrics accumulate from
the matches of disjoint sets of images (:func:`ap_fixed_from_matches`,
:func:`ap_pooled_from_matches`), e.g. one per process. :class:`ScoreFloor` is the running
``dets_per_cat``-th best score per class, below which an uncapped inference may drop a
detection before its mask is computed: it cannot be in its class's top.
"""

import numpy as np

from iif_d2.lvis_eval.data import LVISDetections, LVISGroundTruth
from iif_d2.lvis_eval.engine import AREA_LABELS, _accumulate, _mean, accumulate, match, summarize

__all__ = [
    "POOLS",
    "CategoryBudget",
    "ScoreFloor",
    "ap_fixed",
    "ap_fixed_from_matches",
    "ap_pooled",
    "ap_pooled_from_matches",
    "fixed_and_pooled",
    "budget_cutoffs",
    "top_per_category",
    "within_budget",
]

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


def _budget_matches(gt: LVISGroundTruth, dt: LVISDetections, iou_type: str, dets_per_cat: int):
    """:func:`~iif_d2.lvis_eval.engine.match` (no cap per image) of each category's top
    ``dets_per_cat`` detections: what AP-fixed and AP-pool accumulate."""
    return match(gt, _subset(dt, top_per_category(dt, dets_per_cat)), iou_type, max_dets=-1)


def ap_fixed(gt: LVISGroundTruth, dt: LVISDetections, iou_type: str, dets_per_cat=10000):
    """AP-fixed: lvis-api's metrics on each category's top ``dets_per_cat`` detections, with
    no limit per image.

    Returns:
        dict of lvis-api's metric names (``AR@-1`` for the unlimited recall) to fractions.
    """
    return ap_fixed_from_matches(gt, _budget_matches(gt, dt, iou_type, dets_per_cat))


def ap_fixed_from_matches(gt: LVISGroundTruth, m: dict) -> dict:
    """AP-fixed from :func:`~iif_d2.lvis_eval.engine.match` (``max_dets=-1``) of detections
    already within the budget (see :func:`ap_fixed`)."""
    return summarize(accumulate(gt, m, max_dets=-1))


def ap_pooled(gt: LVISGroundTruth, dt: LVISDetections, iou_type: str, dets_per_cat=10000):
    """AP-pool: AP of the detections of each pool of categories ranked together.

    Detections are matched per category as usual (federated rules, no cap per image, each
    category's top ``dets_per_cat``); a pool's ranking breaks score ties by image, then
    category, then input order.

    Returns:
        dict "AP-pool" (all categories), "AP-pool-r", "AP-pool-c", "AP-pool-f" (fractions,
        -1 for a pool without ground truth), over IoU 0.5:0.95, area "all".
    """
    return ap_pooled_from_matches(gt, _budget_matches(gt, dt, iou_type, dets_per_cat))


def ap_pooled_from_matches(gt: LVISGroundTruth, m: dict) -> dict:
    """AP-pool (see :func:`ap_pooled`) from :func:`~iif_d2.lvis_eval.engine.match`
    (``max_dets=-1``) of detections already within the budget."""
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


def fixed_and_pooled(gt: LVISGroundTruth, dt: LVISDetections, iou_type: str, dets_per_cat=10000):
    """AP-fixed (:func:`ap_fixed`'s metrics) and AP-pool (:func:`ap_pooled`'s) from one
    matching of each category's top ``dets_per_cat`` detections (the two functions each match
    them: twice the work).

    Returns:
        (AP-fixed's dict of lvis-api's metric names, AP-pool's dict), fractions.
    """
    m = _budget_matches(gt, dt, iou_type, dets_per_cat)
    return ap_fixed_from_matches(gt, m), ap_pooled_from_matches(gt, m)


def budget_cutoffs(cat, score, order, dets_per_cat: int):
    """Each category's ``dets_per_cat``-th best key (highest score, ties: the lowest
    ``order``), for the categories with at least that many keys: a key is in its category's
    top ``dets_per_cat`` iff it is not below the cutoff.

    Args:
        cat: (N,) category ids.
        score: (N,) scores.
        order: (N,) int, unique: the detections' input order (breaks score ties).
        dets_per_cat: the budget per category.

    Returns:
        (categories (M,) sorted, cutoff scores (M,), cutoff orders (M,)).
    """
    sel = np.lexsort((order, -np.asarray(score, dtype=np.float64), cat))
    cats = cat[sel]
    rank = np.arange(len(sel)) - np.searchsorted(cats, cats, side="left")
    last = sel[rank == dets_per_cat - 1]
    return cat[last], score[last], order[last]


def within_budget(cat, score, order, cutoffs) -> np.ndarray:
    """Whether each key is at least its category's cutoff (:func:`budget_cutoffs`); every
    key of a category without a cutoff is."""
    cut_cat, cut_score, cut_order = cutoffs
    if len(cut_cat) == 0:
        return np.ones(len(cat), dtype=bool)
    pos = np.minimum(np.searchsorted(cut_cat, cat), len(cut_cat) - 1)
    has = cut_cat[pos] == cat
    better = (score > cut_score[pos]) | ((score == cut_score[pos]) & (order <= cut_order[pos]))
    return ~has | better


class CategoryBudget:
    """A running top ``dets_per_cat`` per category of detection keys (category, score, input
    order), in memory bounded by about ``dets_per_cat`` keys per category plus
    ``prune_at``: the keys of detections that can no longer be in their category's top are
    dropped whenever ``prune_at`` new ones have come in.

    Args:
        dets_per_cat: the budget per category (AP-fixed's K, 10,000 for LVIS).
        prune_at: new keys held before a prune.
    """

    def __init__(self, dets_per_cat: int = 10000, prune_at: int = 1 << 21):
        if dets_per_cat <= 0:
            raise ValueError(f"dets_per_cat {dets_per_cat} must be > 0 (10,000 for LVIS).")
        self.dets_per_cat = int(dets_per_cat)
        self.prune_at = int(prune_at)
        self._chunks = []
        self._pending = 0
        self.cutoffs = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def add(self, cat, score, order) -> bool:
        """Add keys (those below their category's current cutoff are dropped at once).

        Returns:
            whether this add pruned (then :attr:`cutoffs` rose: drop what they exclude).
        """
        ok = within_budget(cat, score, order, self.cutoffs)
        cat = np.asarray(cat, dtype=np.int32)[ok]
        score = np.asarray(score, dtype=np.float32)[ok]
        self._chunks.append((cat, score, np.asarray(order, dtype=np.int64)[ok]))
        self._pending += int(ok.sum())
        if self._pending < self.prune_at:
            return False
        self.prune()
        return True

    def keys(self):
        """(category, score, order) of the keys held (all the categories' top ones among
        them)."""
        if not self._chunks:
            return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        if len(self._chunks) > 1:
            self._chunks = [tuple(np.concatenate(x) for x in zip(*self._chunks))]
        return self._chunks[0]

    def prune(self):
        """Recompute the cutoffs from the keys held and drop the keys below them."""
        cat, score, order = self.keys()
        self.cutoffs = budget_cutoffs(cat, score, order, self.dets_per_cat)
        ok = within_budget(cat, score, order, self.cutoffs)
        self._chunks = [(cat[ok], score[ok], order[ok])]
        self._pending = 0


class ScoreFloor:
    """Per class, the ``dets_per_cat``-th best score among the scores offered so far (-inf
    while a class has fewer): AP-fixed's exact per-class threshold for the detections still to
    come. A later detection scoring below its class's floor is beaten by ``dets_per_cat``
    detections already seen, so it cannot be in its class's top ``dets_per_cat`` over the
    dataset and can be dropped; one scoring exactly the floor may tie into the top (the budget
    breaks ties by input order) and must be kept. The authors' inference (Dave et al. 2021,
    ``lvdevil/infer_topk.py``) keeps such a threshold per class with some slack; this one is
    the exact K-th score, refreshed at every :meth:`offer`.

    Memory: ``dets_per_cat`` float32 scores per class seen (48 MB for LVIS' 1,203 classes at
    10,000). An offer costs a partial sort of ``dets_per_cat`` plus the offered scores of each
    class whose floor they can raise.

    Args:
        dets_per_cat: the budget per class (AP-fixed's K).
    """

    def __init__(self, dets_per_cat: int = 10000):
        if dets_per_cat <= 0:
            raise ValueError(f"dets_per_cat {dets_per_cat} must be > 0 (10,000 for LVIS).")
        self.dets_per_cat = int(dets_per_cat)
        self.version = 0  # bumped whenever :attr:`values` changes (a copy elsewhere is stale)
        self.clear()

    def clear(self):
        """Forget every score: every floor back to -inf."""
        self._top = np.full((0, self.dets_per_cat), -np.inf, dtype=np.float32)
        self.values = np.full(0, -np.inf, dtype=np.float32)  # (C,): the floors
        self.offers = 0  # offers since the last clear
        self.version += 1

    def _grow(self, num_classes: int):
        extra = num_classes - len(self.values)
        if extra > 0:
            pad = np.full((extra, self.dets_per_cat), -np.inf, dtype=np.float32)
            self._top = np.concatenate([self._top, pad])
            self.values = np.concatenate([self.values, pad[:, 0]])
            self.version += 1

    def offer(self, classes, scores):
        """Take one batch of scores (e.g. one image's detections) into the floors.

        Args:
            classes: (N,) int class indices (>= 0).
            scores: (N,) scores.
        """
        self.offers += 1
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(classes) == 0:
            return
        if classes.min() < 0:
            raise ValueError(f"ScoreFloor: class index {classes.min()} < 0.")
        self._grow(int(classes.max()) + 1)
        up = scores > self.values[classes]  # only these can raise a floor
        classes, scores = classes[up], scores[up]
        if len(classes) == 0:
            return
        sel = np.lexsort((-scores, classes))
        classes, scores = classes[sel], scores[sel]
        cls, start, count = np.unique(classes, return_index=True, return_counts=True)
        rank = np.arange(len(classes)) - np.repeat(start, count)
        row = np.repeat(np.arange(len(cls)), count)
        take = rank < self.dets_per_cat  # a class's best K of this batch are enough
        width = int(min(count.max(), self.dets_per_cat))
        new = np.full((len(cls), width), -np.inf, dtype=np.float32)
        new[row[take], rank[take]] = scores[take]
        # each row: the class's K best so far and its new ones; after the partition the K
        # largest sit at [width:], the smallest of them (the K-th best) at [width]
        block = np.partition(np.concatenate([self._top[cls], new], axis=1), width, axis=1)
        self._top[cls] = block[:, width:]
        self.values[cls] = block[:, width]
        self.version += 1

    def keep(self, classes, scores) -> np.ndarray:
        """Whether each detection is at or above its class's floor (every one of a class
        never offered is)."""
        classes = np.asarray(classes, dtype=np.int64)
        floor = np.full(len(classes), -np.inf, dtype=np.float32)
        known = classes < len(self.values)
        floor[known] = self.values[classes[known]]
        return np.asarray(scores, dtype=np.float32) >= floor
