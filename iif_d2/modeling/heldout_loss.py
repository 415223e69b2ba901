"""FASA's per-class loss on held-out images, measured by the ROI heads: the model work of
FASA's adaptation (the timetable is :class:`iif_d2.engine.hooks.FASAHook`'s)."""

import contextlib
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from torch import nn

from iif_d2.modeling.fasa import ADAPTATION_LOSSES, heldout_loss_terms

__all__ = ["HeldoutLossMixin"]

_FASA = "MODEL.ROI_BOX_HEAD.FASA"


@contextlib.contextmanager
def _training_flag(module: nn.Module):
    """``module.training`` True for the block, its children untouched (no norm statistics
    move): the RPN then proposes with its training top-k."""
    old = module.training
    module.training = True
    try:
        yield module
    finally:
        module.training = old


class HeldoutLossMixin:
    """FASA's measurement on held-out images, for ROI heads with IIF box predictors."""

    @configurable
    def __init__(self, *, fasa_adaptation_loss: str = "gt_boxes_class_mean", **kwargs):
        """
        Args:
            fasa_adaptation_loss: one of :data:`iif_d2.modeling.fasa.ADAPTATION_LOSSES`
                (MODEL.ROI_BOX_HEAD.FASA.ADAPTATION_LOSS): the RoIs and the per-class
                aggregation of :meth:`heldout_loss_sums`.
            kwargs: as the ROI heads' own.
        """
        if fasa_adaptation_loss not in ADAPTATION_LOSSES:
            raise ValueError(
                f"{_FASA}.ADAPTATION_LOSS {fasa_adaptation_loss!r} is not one of "
                f"{ADAPTATION_LOSSES}."
            )
        super().__init__(**kwargs)
        self.fasa_adaptation_loss = fasa_adaptation_loss

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
        if fasa.ADAPTATION_LOSS not in ADAPTATION_LOSSES:
            raise ValueError(
                f"{_FASA}.ADAPTATION_LOSS {fasa.ADAPTATION_LOSS!r} is not one of "
                f"{ADAPTATION_LOSSES}."
            )
        if fasa.ADAPTATION_LOSS != "gt_boxes_class_mean" and not fasa.ENABLED:
            raise ValueError(
                f"{_FASA}.ADAPTATION_LOSS {fasa.ADAPTATION_LOSS!r} needs {_FASA}.ENABLED True; "
                "remove the setting or enable FASA."
            )
        ret["fasa_adaptation_loss"] = fasa.ADAPTATION_LOSS
        return ret

    def fasa_stages(self) -> List[Tuple[int, nn.Module]]:
        """(stage, box predictor) of every box predictor with FASA: one for the standard ROI
        heads, one per stage for cascade; [] without FASA."""
        predictors = self.box_predictor
        if not isinstance(predictors, nn.ModuleList):
            predictors = [predictors]
        return [(k, p) for k, p in enumerate(predictors) if getattr(p, "fasa", None) is not None]

    def _stage(self, k: int):
        if isinstance(self.box_predictor, nn.ModuleList):
            return self.box_head[k], self.box_predictor[k]
        return self.box_head, self.box_predictor

    @torch.no_grad()
    def heldout_loss_sums(
        self,
        features: Dict[str, torch.Tensor],
        targets: List[Instances],
        images=None,
        proposal_generator=None,
    ) -> torch.Tensor:
        """Per FASA stage and class, the numerator and denominator of the held-out
        classification loss (:func:`iif_d2.modeling.fasa.heldout_loss_terms`): the caller sums them
        over batches and ranks, then divides.

        The loss of a RoI is the cross entropy of ``loss_logits`` (the fp32 logits the training
        loss sees, IIF-scaled when enabled) of the stage's ``cls_score`` against its class. The
        RoIs depend on ``fasa_adaptation_loss``:

        * ``"gt_boxes_class_mean"``: the ``gt_boxes`` of ``targets`` (``box_pooler`` on
          ``box_in_features``, the stage's box head); terms: summed loss and count per class.
        * ``"authors"``: the RoIs a training step samples: ``proposal_generator`` with its
          training top-k and ``targets``, then :meth:`label_and_sample_proposals` (ground truth
          appended, BATCH_SIZE_PER_IMAGE RoIs at POSITIVE_FRACTION, drawn from the global RNG);
          a cascade stage k > 0 takes stage k - 1's boxes, non-empty ones, matched and labelled
          as in training. Terms: summed loss per class, and the number of all RoIs,
          background included. The sampler's and the RPN's event scalars go to a private
          storage, not the trainer's.

        Args:
            features: the backbone's feature maps.
            targets: per image, Instances with ``gt_boxes`` and ``gt_classes``.
            images: the ImageList of the batch ("authors" only).
            proposal_generator: the model's RPN ("authors" only).

        Returns:
            (2, S, C) float64: numerators, then denominators; S = len(:meth:`fasa_stages`).
        """
        stages = self.fasa_stages()
        device = next(iter(features.values())).device
        totals = torch.zeros(2, len(stages), self.num_classes, dtype=torch.float64, device=device)
        if not stages:
            return totals
        if self.fasa_adaptation_loss == "authors":
            if images is None or proposal_generator is None:
                raise ValueError(
                    f"{_FASA}.ADAPTATION_LOSS 'authors' samples RoIs from proposals: pass "
                    "images= (the batch's ImageList) and proposal_generator= (model's RPN) to "
                    "heldout_loss_sums."
                )
            return self._sampled_roi_sums(stages, features, targets, images, proposal_generator)
        classes = torch.cat([t.gt_classes for t in targets]).long() if targets else None
        if classes is None or classes.numel() == 0:
            return totals
        pooled = self.box_pooler(
            [features[f] for f in self.box_in_features], [t.gt_boxes for t in targets]
        )
        for j, (k, predictor) in enumerate(stages):
            head, _ = self._stage(k)
            logits = predictor.loss_logits(predictor.cls_score(head(pooled).flatten(1)))
            ce = F.cross_entropy(logits, classes, reduction="none")
            totals[:, j] = heldout_loss_terms(ce, classes, self.num_classes, "gt_boxes_class_mean")
        return totals

    def _sampled_roi_sums(self, stages, features, targets, images, proposal_generator):
        """The "authors" terms of :meth:`heldout_loss_sums`."""
        index = {k: j for j, (k, _) in enumerate(stages)}
        device = next(iter(features.values())).device
        totals = torch.zeros(2, len(stages), self.num_classes, dtype=torch.float64, device=device)
        box_features = [features[f] for f in self.box_in_features]
        image_sizes = [t.image_size for t in targets]
        with EventStorage():
            with _training_flag(proposal_generator):
                proposals, _ = proposal_generator(images, features, targets)
            proposals = self.label_and_sample_proposals(proposals, targets)
            predictions = None
            for k in range(max(index) + 1):
                head, predictor = self._stage(k)
                if k > 0:  # CascadeROIHeads._forward_box in training
                    boxes = self.box_predictor[k - 1].predict_boxes(predictions, proposals)
                    proposals = self._create_proposals_from_boxes(boxes, image_sizes)
                    proposals = [p[p.proposal_boxes.nonempty()] for p in proposals]
                    proposals = self._match_and_label_boxes(proposals, k, targets)
                pooled = self.box_pooler(box_features, [p.proposal_boxes for p in proposals])
                predictions = predictor(head(pooled))
                if k in index:
                    labels = torch.cat([p.gt_classes for p in proposals]).long()
                    logits = predictor.loss_logits(predictions[0])
                    ce = F.cross_entropy(logits, labels, reduction="none")
                    totals[:, index[k]] = heldout_loss_terms(
                        ce, labels, self.num_classes, "authors"
                    )
        return totals
