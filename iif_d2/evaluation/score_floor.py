"""AP-fixed's uncapped inference in bounded work: the fast evaluator's per-class score floors
lent to the R-CNN's ROI heads, so that masks are computed only for the detections it can use."""

import contextlib
import logging

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator

from iif_d2.evaluation.lvis_evaluator import FastLVISEvaluator
from iif_d2.lvis_eval.devil import ScoreFloor

__all__ = ["ScoreFloorFilter", "score_floors_attached", "uses_score_floor", "DENSE_DETECTORS"]

logger = logging.getLogger(__name__)


class ScoreFloorFilter:
    """The detections of one image (the R-CNN box head's, before the mask head) that a
    :class:`FastLVISEvaluator` with a score floor can use; the others may be dropped without
    changing any of its metrics.

    Kept: the standard metrics' candidates, i.e. the image's ``max_dets`` best detections
    scoring above ``score_thresh`` (ties: the earlier, as :meth:`FastLVISEvaluator._compact`
    cuts them; a stable sort, so the box head's order is not relied on), and every detection
    scoring at least its class's floor (:class:`~iif_d2.lvis_eval.devil.ScoreFloor`: one
    below it is beaten by K detections this rank has already seen, so it is outside its
    class's top K over the dataset). Boxes so thin that detectron2's ``detector_postprocess``
    may drop them as empty once rescaled are kept and not counted among the best ones: the
    standard cut the evaluator makes after postprocess is then still within the kept ones.
    Filtering keeps the detections' order, and the evaluator's ties follow that order, so
    standard metrics, AP-fixed and AP-pool are unchanged.

    Args:
        floor: the evaluator's :attr:`FastLVISEvaluator.score_floor`.
        max_dets: the standard metrics' detections per image (-1: all).
        score_thresh: the standard metrics' score threshold (None: none).
    """

    # a box narrower or lower than this fraction of its image may be empty after rescaling
    # (float32 rounding moves a coordinate by ~1e-7 of the image size)
    thin_fraction = 1e-4

    def __init__(self, floor: ScoreFloor, max_dets: int, score_thresh=None):
        self.floor = floor
        self.max_dets = int(max_dets)
        # numpy compares float32 scores with the threshold rounded to float32
        self.score_thresh = None if score_thresh is None else float(np.float32(score_thresh))
        self._cache = (None, None)

    def _floors(self, device) -> torch.Tensor:
        key = (self.floor.version, device)
        if self._cache[0] != key:
            self._cache = (key, torch.from_numpy(self.floor.values.copy()).to(device))
        return self._cache[1]

    def standard_candidates(self, instances) -> torch.Tensor:
        """Bool mask: the detections the standard cut may keep (see the class)."""
        scores = instances.scores.float()
        above = torch.ones_like(scores, dtype=torch.bool)
        if self.score_thresh is not None:
            above = scores > self.score_thresh
        if self.max_dets < 0:
            return above
        box = instances.pred_boxes.tensor
        height, width = instances.image_size
        sure = (box[:, 2] - box[:, 0] > self.thin_fraction * width) & (
            box[:, 3] - box[:, 1] > self.thin_fraction * height
        )
        ranked = torch.where(above & sure, scores, torch.full_like(scores, -float("inf")))
        best = torch.sort(ranked, descending=True, stable=True).indices[: self.max_dets]
        out = above & ~sure
        out[best] |= (above & sure)[best]
        return out

    def __call__(self, instances):
        """Bool mask of the detections to keep, or None while the evaluator has seen no image
        since it was reset (every floor is still -inf, or it is another dataset's turn)."""
        if self.floor.offers == 0:
            return None
        scores, classes = instances.scores.float(), instances.pred_classes
        floors = self._floors(scores.device)
        standard = self.standard_candidates(instances)
        if len(floors) == 0:
            return torch.ones_like(standard)
        # a class the floor has not seen yet has none (-inf); no host sync on a GPU
        floor = floors[classes.clamp(max=len(floors) - 1)]
        floor = torch.where(classes < len(floors), floor, torch.full_like(floor, -float("inf")))
        return (scores >= floor) | standard


def _unwrapped_evaluators(evaluators):
    if evaluators is None:
        return []
    return [evaluators] if isinstance(evaluators, DatasetEvaluator) else list(evaluators)


@contextlib.contextmanager
def score_floors_attached(model, evaluators):
    """Within the block, the model's ROI heads drop before the mask head the detections that
    the evaluators' score floors exclude (:class:`ScoreFloorFilter`); detached afterwards,
    also on error. Each evaluator's floor acts only while that evaluator runs (from its first
    image to its :meth:`FastLVISEvaluator.evaluate`), so one model may serve several datasets'
    evaluators in turn, as detectron2's ``DefaultTrainer.test`` runs them.

    Only a :class:`FastLVISEvaluator` with a :attr:`~FastLVISEvaluator.score_floor` that is
    itself one of ``evaluators`` counts (in a ``DatasetEvaluators`` its siblings would lose
    detections). Models without
    :class:`iif_d2.modeling.detection_filter.DetectionFilterMixin` ROI heads (dense detectors,
    upstream's ROI heads) run unchanged.

    Args:
        model: the model (or a DistributedDataParallel of it).
        evaluators: a DatasetEvaluator, a list of them, or None (nothing is attached).
    """
    evaluators = [
        e
        for e in _unwrapped_evaluators(evaluators)
        if isinstance(e, FastLVISEvaluator) and e.score_floor is not None
    ]
    heads = getattr(getattr(model, "module", model), "roi_heads", None)
    if not evaluators or not hasattr(heads, "detection_filters"):
        if evaluators:
            logger.info(
                "AP-fixed score floor unused: the model's ROI heads (%s) drop no detections "
                "before the mask head (iif-d2's IIFStandardROIHeads and IIFCascadeROIHeads do).",
                type(heads).__name__,
            )
        yield
        return
    for e in evaluators:
        e.score_floor.clear()  # a floor left by an interrupted pass must not act
    filters = [ScoreFloorFilter(e.score_floor, *e.standard_cut) for e in evaluators]
    with heads.detection_filters(filters) as stats:
        yield
    n = max(stats["images"], 1)
    logger.info(
        "AP-fixed score floor: %d images, %.1f detections per image from the box head, %.1f "
        "reached the mask head.",
        stats["images"],
        stats["box_detections"] / n,
        stats["mask_detections"] / n,
    )


DENSE_DETECTORS = ("RetinaNet", "IIFRetinaNet", "FCOS", "IIFFCOS")
# ROI heads that take a score floor (iif_d2.modeling.detection_filter.DetectionFilterMixin)
_FLOOR_ROI_HEADS = ("IIFStandardROIHeads", "IIFCascadeROIHeads")


def uses_score_floor(cfg) -> bool:
    """Whether ``cfg``'s AP-fixed inference prunes with a score floor
    (``TEST.AP_FIXED.ENABLED`` and ``ADAPTIVE_FLOOR`` on an R-CNN with iif-d2's ROI heads):
    its evaluators then carry one (see :func:`score_floors_attached`)."""
    node = cfg.TEST.get("AP_FIXED")
    return bool(
        node is not None
        and node.ENABLED
        and node.ADAPTIVE_FLOOR
        and cfg.MODEL.META_ARCHITECTURE not in DENSE_DETECTORS
        and cfg.MODEL.ROI_HEADS.NAME in _FLOOR_ROI_HEADS
    )
