"""MODEL.HEAD_INIT.SCHEME: the ROI heads' layers initialised as detectron2, the authors' plain-
linear IIF configs or mmdetection 2.x do, once every head is built."""

import math

import torch
from torch import nn

from iif_d2.modeling.mask_head import mmdet_mask_head_init

__all__ = ["HEAD_INITS", "HeadInitMixin", "apply_head_init"]

# MODEL.HEAD_INIT.SCHEME: detectron2's, the authors' plain-linear IIF configs', mmdet 2.x's
HEAD_INITS = ("detectron2", "authors", "mmdet")


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


class HeadInitMixin:
    """ROI heads that apply MODEL.HEAD_INIT.SCHEME (:func:`apply_head_init`) once built."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
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
