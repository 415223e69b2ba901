"""ROI heads whose box predictors are :class:`IIFFastRCNNOutputLayers`."""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.structures import Instances
from torch import nn

from .fast_rcnn import IIFFastRCNNOutputLayers

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


class HeldoutLossMixin:
    """FASA's measurement on held-out images, for ROI heads with IIF box predictors."""

    def fasa_stages(self) -> List[Tuple[int, nn.Module]]:
        """(stage, box predictor) of every box predictor with FASA: one for the standard ROI
        heads, one per stage for cascade; [] without FASA."""
        predictors = self.box_predictor
        if not isinstance(predictors, nn.ModuleList):
            predictors = [predictors]
        return [(k, p) for k, p in enumerate(predictors) if getattr(p, "fasa", None) is not None]

    @torch.no_grad()
    def heldout_loss_sums(
        self, features: Dict[str, torch.Tensor], targets: List[Instances]
    ) -> torch.Tensor:
        """Per FASA stage and class, the sum and count of the classification loss of the
        ground-truth boxes.

        The RoIs are the ``gt_boxes`` of ``targets``: ``box_pooler`` on ``box_in_features``,
        the stage's box head, ``cls_score``, then ``loss_logits`` (the fp32 logits the training
        loss sees, IIF-scaled when enabled) and the cross entropy against ``gt_classes``.

        Args:
            features: the backbone's feature maps.
            targets: per image, Instances with ``gt_boxes`` and ``gt_classes``.

        Returns:
            (2, S, C) float64: sums, then counts; S = len(:meth:`fasa_stages`).
        """
        stages = self.fasa_stages()
        device = next(iter(features.values())).device
        totals = torch.zeros(2, len(stages), self.num_classes, dtype=torch.float64, device=device)
        classes = torch.cat([t.gt_classes for t in targets]).long() if targets else None
        if not stages or classes is None or classes.numel() == 0:
            return totals
        pooled = self.box_pooler(
            [features[f] for f in self.box_in_features], [t.gt_boxes for t in targets]
        )
        for j, (k, predictor) in enumerate(stages):
            head = self.box_head[k] if isinstance(self.box_head, nn.ModuleList) else self.box_head
            logits = predictor.loss_logits(predictor.cls_score(head(pooled).flatten(1)))
            ce = F.cross_entropy(logits, classes, reduction="none")
            totals[0, j].index_add_(0, classes, ce.double())
            totals[1, j].index_add_(0, classes, torch.ones_like(ce, dtype=torch.float64))
        return totals


@ROI_HEADS_REGISTRY.register()
class IIFStandardROIHeads(HeldoutLossMixin, StandardROIHeads):
    """:class:`StandardROIHeads` with an :class:`IIFFastRCNNOutputLayers` box predictor."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = _replace_predictor(
            cfg, ret["box_predictor"], ret["box_head"].output_shape
        )
        return ret


@ROI_HEADS_REGISTRY.register()
class IIFCascadeROIHeads(HeldoutLossMixin, CascadeROIHeads):
    """:class:`CascadeROIHeads` with IIF box predictors in every stage.

    Each stage's loss scales its own logits. At inference with IIF on, the stages' *logits* are
    averaged and the IIF softmax is applied once to the average (the authors' code,
    docs/method.md §2); upstream averages the stages' probabilities, which is what runs with
    IIF off.
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
