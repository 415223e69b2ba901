"""``IIFRetinaNet``: detectron2's RetinaNet with the long-tail treatments of its sigmoid
classifier (:mod:`iif_d2.modeling.dense_detector`)."""

import math

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

from iif_d2.modeling.dense_detector import IIFDenseDetectorMixin

__all__ = ["IIFRetinaNet"]


@META_ARCH_REGISTRY.register()
class IIFRetinaNet(IIFDenseDetectorMixin, RetinaNet):
    """:class:`RetinaNet` with the long-tail treatments of ``MODEL.RETINANET.IIF`` and
    ``MODEL.RETINANET.EFL`` (docs/method.md §4): IIF weights w on the class logits (RULE
    "logits": focal loss on w * z for the foreground-matched anchors, or every anchor with
    SCALE_ALL_ANCHORS, and sigmoid(w * z) at inference), on the positive term of the focal loss
    ("positive_weight") or suppressing the negatives that rare classes get from other classes'
    objects ("negative_suppression"); Equalized Focal Loss. Without them it is exactly
    :class:`RetinaNet`.
    """

    @configurable
    def __init__(
        self,
        *,
        iif_weights=None,
        iif_rule: str = "logits",
        iif_apply_at: str = "both",
        iif_scale_all_anchors: bool = False,
        efl_scale_factor=None,
        **kwargs,
    ):
        """
        Args:
            iif_weights: (C,) foreground weights, or None for no IIF.
            iif_rule, iif_apply_at, iif_scale_all_anchors: MODEL.RETINANET.IIF's RULE,
                APPLY_AT and SCALE_ALL_ANCHORS.
            efl_scale_factor: MODEL.RETINANET.EFL.SCALE_FACTOR, or None for no EFL.
            kwargs: as :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        self._init_iif(iif_weights, iif_scale_all_anchors, iif_rule, iif_apply_at, efl_scale_factor)

    @classmethod
    def from_config(cls, cfg):
        iif = cls.iif_from_config(cfg, "RETINANET", cfg.MODEL.RETINANET.NUM_CLASSES)
        gn_head = cfg.MODEL.RETINANET.NORM == "GN"
        if gn_head:  # built below: detectron2 v0.6 cannot build a GN RetinaNetHead from "GN"
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.RETINANET.NORM = ""
        ret = super().from_config(cfg)
        if gn_head:
            shapes = [ret["backbone"].output_shape()[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
            ret["head"] = RetinaNetHead(cfg, shapes, norm=group_norm)
        return {**ret, **iif}

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        return self.iif_losses(
            super().losses, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )


def group_norm(channels: int) -> nn.GroupNorm:
    """detectron2's "GN" (32 groups) as a callable, for ``RetinaNetHead(norm=...)``.

    detectron2 v0.6's RetinaNetHead probes its norm with one channel (``get_norm(norm, 1)``),
    which ``GroupNorm(32, 1)`` refuses, so ``MODEL.RETINANET.NORM "GN"`` fails to build there;
    detectron2 main probes with 32. With gcd(32, channels) groups the probe builds and every real
    layer (a multiple of 32 channels) gets 32 groups, as "GN" means on both.
    """
    return nn.GroupNorm(math.gcd(32, channels), channels)
