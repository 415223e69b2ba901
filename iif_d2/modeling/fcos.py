"""``IIFFCOS``: detectron2's FCOS built from a YAML config, with the long-tail treatments of its
sigmoid classifier (:mod:`iif_d2.modeling.dense_detector`).

detectron2 ships :class:`~detectron2.modeling.meta_arch.fcos.FCOS` with a LazyConfig only
(``configs/common/models/fcos.py``). This module adds what a YAML config needs to build the same
model: the backbone builder ``build_fcos_resnet_fpn_backbone`` (BACKBONE_REGISTRY: ResNet-FPN
with P6/P7 computed from P5) and ``IIFFCOS.from_config`` (the keys under ``MODEL.FCOS``).
"""

import math

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead
from torch import nn

from iif_d2.modeling.dense_detector import IIFDenseDetectorMixin

__all__ = ["IIFFCOS", "build_fcos_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet-FPN whose P6 and P7 come from the top FPN level (FCOS, Sec. 2.2 of
    arXiv:2006.09214), as detectron2's FCOS LazyConfig builds it.

    Args:
        cfg: a detectron2 CfgNode (MODEL.RESNETS, MODEL.FPN).
        input_shape: the image's ShapeSpec.

    Returns:
        FPN: levels p3-p7 for FPN.IN_FEATURES res3-res5.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_stride = bottom_up.output_shape()[in_features[-1]].stride
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(
            out_channels, out_channels, in_feature=f"p{int(math.log2(top_stride))}"
        ),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def _group_norm(channels: int) -> nn.GroupNorm:
    """detectron2's "GN" (32 groups), except for the 1-channel probe of detectron2 v0.6's
    RetinaNetHead (``get_norm(norm, 1)``, to log the norm's type), which current torch rejects
    for 32 groups and which builds no layer of the model."""
    return nn.GroupNorm(32 if channels > 1 else 1, channels)


@META_ARCH_REGISTRY.register()
class IIFFCOS(IIFDenseDetectorMixin, FCOS):
    """:class:`FCOS` with the long-tail treatments of ``MODEL.FCOS.IIF`` and ``MODEL.FCOS.EFL``,
    as :class:`~iif_d2.modeling.retinanet.IIFRetinaNet` (docs/method.md §4); with RULE "logits"
    the scores are sqrt(sigmoid(w * z) * sigmoid(centerness)). Without them it is exactly
    :class:`FCOS`.

    Only ``losses`` and ``forward_inference`` are overridden: detectron2 v0.6 and main give them
    the same signatures. Their anchor matching differs (``match_anchors`` vs ``_match_anchors``,
    matched boxes as ``Boxes`` vs tensors, images without boxes supported on main only); this
    class leaves it, and the matched boxes it passes through, to the installed FCOS.
    """

    cls_loss_key = "loss_fcos_cls"
    loss_normalizer_init = 300.0  # detectron2's FCOS

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
            iif_rule, iif_apply_at, iif_scale_all_anchors: MODEL.FCOS.IIF's RULE, APPLY_AT
                and SCALE_ALL_ANCHORS.
            efl_scale_factor: MODEL.FCOS.EFL.SCALE_FACTOR, or None for no EFL.
            kwargs: as :class:`FCOS`.
        """
        super().__init__(**kwargs)
        self._init_iif(iif_weights, iif_scale_all_anchors, iif_rule, iif_apply_at, efl_scale_factor)

    @classmethod
    def from_config(cls, cfg):
        fcos = cfg.MODEL.FCOS
        iif = cls.iif_from_config(cfg, "FCOS", fcos.NUM_CLASSES)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [f for f in fcos.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES {list(fcos.IN_FEATURES)}: {missing} not among the "
                f"backbone's outputs {list(shapes)}."
            )
        if fcos.NUM_CONVS < 1:
            raise ValueError(f"MODEL.FCOS.NUM_CONVS must be >= 1; got {fcos.NUM_CONVS}.")
        input_shape = [shapes[f] for f in fcos.IN_FEATURES]
        head = FCOSHead(
            input_shape=input_shape,
            num_classes=fcos.NUM_CLASSES,
            conv_dims=[input_shape[0].channels] * fcos.NUM_CONVS,
            norm=_group_norm if fcos.HEAD_NORM == "GN" else fcos.HEAD_NORM,
            prior_prob=fcos.PRIOR_PROB,
        )
        ret = {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(fcos.IN_FEATURES),
            "num_classes": fcos.NUM_CLASSES,
            "center_sampling_radius": fcos.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": fcos.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": fcos.FOCAL_LOSS_GAMMA,
            "test_score_thresh": fcos.SCORE_THRESH_TEST,
            "test_topk_candidates": fcos.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": fcos.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }
        return {**ret, **iif}

    def losses(
        self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
    ):
        return self.iif_losses(
            super().losses,
            anchors,
            pred_logits,
            gt_labels,
            pred_anchor_deltas,
            gt_boxes,
            pred_centerness,
        )
