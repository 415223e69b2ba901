"""The registered ROI heads whose box predictors are :class:`IIFFastRCNNOutputLayers`, and the
cascade's IIF inference (the stages' logits averaged before the IIF softmax).

Each head is assembled from one-job mixins: :class:`~iif_d2.modeling.detection_filter.
DetectionFilterMixin` (detections dropped before the mask head at inference),
:class:`~iif_d2.modeling.heldout_loss.HeldoutLossMixin` (FASA's held-out measurement),
:class:`~iif_d2.modeling.head_init.HeadInitMixin` (MODEL.HEAD_INIT.SCHEME) and
:class:`~iif_d2.modeling.roi_align.RoIAlignKernelMixin` (MODEL.KERNELS.ROI_ALIGN).
"""

from typing import List

import torch
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.structures import Instances

from iif_d2.modeling.detection_filter import DetectionFilterMixin
from iif_d2.modeling.fast_rcnn import IIFFastRCNNOutputLayers
from iif_d2.modeling.head_init import HeadInitMixin
from iif_d2.modeling.heldout_loss import HeldoutLossMixin
from iif_d2.modeling.roi_align import RoIAlignKernelMixin

__all__ = ["IIFStandardROIHeads", "IIFCascadeROIHeads"]


def _replace_predictor(cfg, upstream, input_shape, **kwargs) -> IIFFastRCNNOutputLayers:
    """An IIF predictor holding ``upstream``'s freshly initialised parameters.

    Built without drawing from the global RNG, so that every later module (mask head, ...)
    gets the same random initialisation as in detectron2 itself: with IIF off, the model is
    upstream's for the same seed.
    """
    with torch.random.fork_rng(devices=[]):
        predictor = IIFFastRCNNOutputLayers(cfg, input_shape, **kwargs)
    missing, unexpected = predictor.load_state_dict(upstream.state_dict(), strict=False)
    if unexpected or any(not k.startswith("fasa.") for k in missing):  # FASA state starts empty
        raise RuntimeError(f"IIF box predictor: missing {missing}, unexpected {unexpected}.")
    predictor.apply_cls_score_init()
    return predictor


@ROI_HEADS_REGISTRY.register()
class IIFStandardROIHeads(
    DetectionFilterMixin, HeldoutLossMixin, HeadInitMixin, RoIAlignKernelMixin, StandardROIHeads
):
    """:class:`StandardROIHeads` with an :class:`IIFFastRCNNOutputLayers` box predictor (and
    :class:`DetectionFilterMixin`'s filters at inference)."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = _replace_predictor(
            cfg, ret["box_predictor"], ret["box_head"].output_shape
        )
        return ret


@ROI_HEADS_REGISTRY.register()
class IIFCascadeROIHeads(
    DetectionFilterMixin, HeldoutLossMixin, HeadInitMixin, RoIAlignKernelMixin, CascadeROIHeads
):
    """:class:`CascadeROIHeads` with IIF box predictors in every stage.

    Each stage's loss scales its own logits. At inference with IIF on, the stages' *logits* are
    averaged and the IIF softmax is applied once to the average (the authors' code,
    docs/method.md §2); upstream averages the stages' probabilities, which is what runs with
    IIF off. Either way the last stage's detections then pass :class:`DetectionFilterMixin`'s
    filters before the mask head.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [
            _replace_predictor(
                cfg, predictor, head.output_shape, box2box_transform=predictor.box2box_transform
            )
            for head, predictor in zip(ret["box_heads"], ret["box_predictors"], strict=True)
        ]
        return ret

    def _forward_box(self, features, proposals, targets=None):
        if self.training or self.box_predictor[-1].iif_mode == "off":
            return super()._forward_box(features, proposals, targets)
        return self._inference_average_logits(features, proposals)

    def _inference_average_logits(self, features, proposals) -> List[Instances]:
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        logits_sum, prev_boxes = None, None
        for k in range(self.num_cascade_stages):
            if k > 0:
                # empty boxes are kept at inference so the stages' rows stay aligned
                proposals = self._create_proposals_from_boxes(prev_boxes, image_sizes)
            predictions = self._run_stage(features, proposals, k)
            prev_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            logits_sum = predictions[0] if logits_sum is None else logits_sum + predictions[0]
        mean_logits = logits_sum / self.num_cascade_stages
        # the last stage's predictor: its IIF softmax on the averaged logits, its boxes
        instances, _ = self.box_predictor[-1].inference((mean_logits, predictions[1]), proposals)
        return instances
