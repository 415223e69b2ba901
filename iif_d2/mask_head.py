"""``NormalizedMaskRCNNConvUpsampleHead``: detectron2's mask head with a cosine 1x1 predictor."""

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
)

from .layers import CosineConv2d

__all__ = ["NormalizedMaskRCNNConvUpsampleHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class NormalizedMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """:class:`MaskRCNNConvUpsampleHead` whose ``predictor`` is a
    :class:`~iif_d2.layers.CosineConv2d`: mask logits ``scale * cos(x_ij, W_c) + b_c`` with the
    per-pixel features L2-normalised over the channels (the LVIS recipe's normalised mask
    predictor, docs/method.md §3). Select it with MODEL.ROI_MASK_HEAD.NAME; the scale is
    MODEL.ROI_MASK_HEAD.NORMALIZED.SCALE.

    The predictor holds detectron2's freshly initialised one (weights N(0, 0.001^2), bias 0,
    the same draws), so the rest of the model is initialised as upstream's for the same seed.
    Class-agnostic masks (one output channel) work as upstream.
    """

    @configurable
    def __init__(self, input_shape, *, scale: float = 20.0, **kwargs):
        """
        Args:
            input_shape, kwargs: as :class:`MaskRCNNConvUpsampleHead`.
            scale: the scale s > 0 of the cosine.
        """
        if not scale > 0:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.NORMALIZED.SCALE must be > 0; got {scale!r}.")
        super().__init__(input_shape, **kwargs)
        conv = self.predictor
        with torch.random.fork_rng(devices=[]):  # RNG-neutral: the parameters are replaced
            cosine = CosineConv2d(conv.in_channels, conv.out_channels, scale)
        cosine.load_state_dict(conv.state_dict())
        self.predictor = cosine  # same position in the nn.Sequential: still the last layer

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["scale"] = cfg.MODEL.ROI_MASK_HEAD.NORMALIZED.SCALE
        return ret
