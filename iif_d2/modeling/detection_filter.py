"""Detections dropped between the box head and the mask head while filters are attached:
AP-fixed's uncapped inference then computes masks only for the detections its evaluator can
use."""

import contextlib
import functools

import torch
from detectron2.structures import Instances

__all__ = ["DetectionFilterMixin"]


class DetectionFilterMixin:
    """ROI heads whose inference can drop detections after the box head (its NMS) and before
    the mask and keypoint heads, while filters are attached (:meth:`detection_filters`).

    AP-fixed's uncapped inference attaches its evaluator's
    :class:`~iif_d2.evaluation.score_floor.ScoreFloorFilter` (``TEST.AP_FIXED.ADAPTIVE_FLOOR``): the
    detections that can enter neither the standard cut nor a class's top K over the dataset
    get no mask, so the mask head and detectron2's full-image mask pasting run for a few per
    image instead of every one above the score threshold. Nothing is assumed about the order
    of the box head's detections. Without filters (the default) the heads are upstream's.
    """

    _detection_filters = ()

    @contextlib.contextmanager
    def detection_filters(self, filters):
        """Attach ``filters`` for the block; detached after it, also on error.

        Each filter maps one image's box-head :class:`Instances` to a bool mask of the
        detections it needs, or to None when it needs nothing yet (its evaluator is not
        running). A detection is kept if an active filter needs it; every detection is kept
        while no filter is active.

        Yields:
            dict of counts over the block: "images", "box_detections" (out of the box head),
            "mask_detections" (kept, passed on to the mask head).
        """
        if self._detection_filters:
            raise RuntimeError(
                "Detection filters are already attached to these ROI heads; leave the "
                "enclosing detection_filters block first."
            )
        stats = {"images": 0, "box_detections": 0, "mask_detections": 0}
        self._detection_filters, self._filter_stats = tuple(filters), stats
        try:
            yield stats
        finally:
            self._detection_filters = ()
            del self._filter_stats

    def _filtered(self, instances: Instances) -> Instances:
        masks = [m for m in (f(instances) for f in self._detection_filters) if m is not None]
        stats = self._filter_stats
        stats["images"] += 1
        stats["box_detections"] += len(instances)
        if masks:
            instances = instances[functools.reduce(torch.logical_or, masks)]
        stats["mask_detections"] += len(instances)
        return instances

    def forward_with_given_boxes(self, features, instances):
        if self._detection_filters:
            instances = [self._filtered(x) for x in instances]
        return super().forward_with_given_boxes(features, instances)
