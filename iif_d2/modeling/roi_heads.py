"""ROI heads whose box predictors are :class:`IIFFastRCNNOutputLayers`.

Besides the predictors, the heads hold FASA's held-out measurement
(:meth:`HeldoutLossMixin.heldout_loss_sums`) and apply MODEL.HEAD_INIT.SCHEME, the
initialisation of the box-head FCs, the box regressor and the mask head
(:func:`apply_head_init`), once every head is built. At inference they can drop detections
between the box head and the mask head (:class:`DetectionFilterMixin`): AP-fixed's uncapped
inference then computes masks only for the detections its evaluator can use. With
MODEL.KERNELS.ROI_ALIGN "matmul" their poolers use
:class:`~iif_d2.modeling.roi_align.MatmulROIAlign` (:class:`RoIAlignKernelMixin`).
"""

import contextlib
import functools
import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ROIAlign
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from torch import nn

from iif_d2.modeling.fasa import ADAPTATION_LOSSES, heldout_loss_terms
from iif_d2.modeling.fast_rcnn import IIFFastRCNNOutputLayers
from iif_d2.modeling.mask_head import mmdet_mask_head_init
from iif_d2.modeling.roi_align import MatmulROIAlign

__all__ = [
    "HEAD_INITS",
    "DetectionFilterMixin",
    "RoIAlignKernelMixin",
    "ROI_ALIGN_KERNELS",
    "IIFStandardROIHeads",
    "IIFCascadeROIHeads",
    "apply_head_init",
]

# MODEL.HEAD_INIT.SCHEME: detectron2's, the authors' plain-linear IIF configs', mmdet 2.x's
HEAD_INITS = ("detectron2", "authors", "mmdet")
_FASA = "MODEL.ROI_BOX_HEAD.FASA"
# MODEL.KERNELS.ROI_ALIGN: detectron2's (torchvision's kernel), or iif_d2.modeling.roi_align's
# products
ROI_ALIGN_KERNELS = ("torchvision", "matmul")


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


def _linear_default(fc: nn.Linear):
    """PyTorch's nn.Linear initialisation: weight kaiming_uniform(a = sqrt(5)), i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), then the bias from the same interval."""
    nn.init.kaiming_uniform_(fc.weight, a=math.sqrt(5))
    bound = 1.0 / math.sqrt(fc.in_features) if fc.in_features > 0 else 0.0
    nn.init.uniform_(fc.bias, -bound, bound)


@torch.no_grad()
def _init_box_stage(scheme: str, box_head: nn.Module, predictor: nn.Module):
    """One box head and its predictor's regressor, in the order mmdet 2.x draws them."""
    fcs, convs = getattr(box_head, "fcs", None), getattr(box_head, "conv_norm_relus", None)
    if fcs is None or convs or not fcs:
        raise ValueError(
            f"MODEL.HEAD_INIT.SCHEME {scheme!r} covers detectron2's FastRCNNConvFCHead with FCs "
            "only (ROI_BOX_HEAD.NUM_CONV 0, NUM_FC >= 1), the authors' Shared2FC head; got "
            f"{type(box_head).__name__} with {len(convs or [])} convs. Use 'detectron2'."
        )
    regressor = predictor.bbox_pred
    if scheme == "authors":  # the layers keep the nn.Linear default drawn at construction
        for fc in [*fcs, regressor]:
            _linear_default(fc)
    else:  # mmdet's init_cfg list: Normal(0.001) on fc_reg, then Xavier (normal) on the FCs
        nn.init.normal_(regressor.weight, 0.0, 0.001)
        nn.init.constant_(regressor.bias, 0.0)
        for fc in fcs:
            nn.init.xavier_normal_(fc.weight, gain=1.0)
            nn.init.constant_(fc.bias, 0.0)


def apply_head_init(scheme: str, box_heads, box_predictors, mask_head=None):
    """Re-initialise the ROI heads' layers with ``scheme`` (MODEL.HEAD_INIT.SCHEME).

    "detectron2" changes nothing. "authors" and "mmdet" draw, from the global RNG, in mmdet's
    order: each box stage (its FCs and box regressor), then the mask head
    (:func:`iif_d2.modeling.mask_head.mmdet_mask_head_init`). "authors": FCs and regressor get
    nn.Linear's default (the authors' plain-linear IIF configs set a box-head ``init_cfg`` for
    the classifier only, which turns mmdet's defaults off); "mmdet": regressor N(0, 0.001^2)
    and bias 0, then FCs Xavier normal (gain 1) and bias 0 (mmdet 2.x's defaults, which the
    authors' FASA and recipe configs get). The box classifier is left to
    ROI_BOX_HEAD.IIF.CLS_SCORE_INIT (mmdet's N(0, 0.01^2) is detectron2's default).

    Args:
        scheme: one of :data:`HEAD_INITS`.
        box_heads, box_predictors: the box heads and their predictors, one per stage.
        mask_head: the mask head, or None.
    """
    if scheme not in HEAD_INITS:
        raise ValueError(f"MODEL.HEAD_INIT.SCHEME {scheme!r} is not one of {HEAD_INITS}.")
    if scheme == "detectron2":
        return
    for head, predictor in zip(box_heads, box_predictors, strict=True):
        _init_box_stage(scheme, head, predictor)
    if mask_head is not None:
        mmdet_mask_head_init(mask_head)


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


class RoIAlignKernelMixin:
    """MODEL.KERNELS.ROI_ALIGN: with "matmul", every RoIAlign of the heads' poolers (box, mask,
    keypoint) becomes its :class:`MatmulROIAlign` twin (same arguments, same values)."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        kernel = cfg.MODEL.KERNELS.ROI_ALIGN
        if kernel not in ROI_ALIGN_KERNELS:
            raise ValueError(
                f"MODEL.KERNELS.ROI_ALIGN {kernel!r} is not one of {ROI_ALIGN_KERNELS}."
            )
        if kernel == "matmul":
            for key in ("box_pooler", "mask_pooler", "keypoint_pooler"):
                if ret.get(key) is not None:
                    _use_matmul_roi_align(ret[key], key)
        return ret


def _use_matmul_roi_align(pooler: nn.Module, key: str) -> None:
    levels = list(pooler.level_poolers)
    wrong = sorted({type(m).__name__ for m in levels if type(m) is not ROIAlign})
    if wrong:
        raise ValueError(
            f"MODEL.KERNELS.ROI_ALIGN 'matmul' computes RoIAlign, but the {key} uses {wrong}: "
            "set its POOLER_TYPE to 'ROIAlignV2' (or 'ROIAlign'), or ROI_ALIGN 'torchvision'."
        )
    pooler.level_poolers = nn.ModuleList(MatmulROIAlign.like(m) for m in levels)


class HeldoutLossMixin:
    """FASA's measurement on held-out images, and MODEL.HEAD_INIT.SCHEME, for ROI heads with
    IIF box predictors."""

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
        scheme = cfg.MODEL.HEAD_INIT.SCHEME
        if scheme != "detectron2" and cfg.MODEL.KEYPOINT_ON:
            raise ValueError(
                f"MODEL.HEAD_INIT.SCHEME {scheme!r} has no authors' counterpart for the keypoint "
                "head: use 'detectron2' with MODEL.KEYPOINT_ON."
            )
        heads = ret.get("box_heads", [ret.get("box_head")])
        predictors = ret.get("box_predictors", [ret.get("box_predictor")])
        apply_head_init(scheme, heads, predictors, ret.get("mask_head"))
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


@ROI_HEADS_REGISTRY.register()
class IIFStandardROIHeads(
    DetectionFilterMixin, HeldoutLossMixin, RoIAlignKernelMixin, StandardROIHeads
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
    DetectionFilterMixin, HeldoutLossMixin, RoIAlignKernelMixin, CascadeROIHeads
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
