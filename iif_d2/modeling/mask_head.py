"""``NormalizedMaskRCNNConvUpsampleHead``: detectron2's mask head with a cosine 1x1 predictor;
:func:`mmdet_mask_head_init`: mmdet 2.x's initialisation of the same layers (MODEL.HEAD_INIT)."""

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
)
from torch import nn

from iif_d2.modeling.layers import CosineConv2d

__all__ = ["NormalizedMaskRCNNConvUpsampleHead", "mmdet_mask_head_init"]


def _kaiming(layer: nn.Module):
    nn.init.kaiming_normal_(layer.weight, a=0, mode="fan_out", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.constant_(layer.bias, 0.0)


@torch.no_grad()
def mmdet_mask_head_init(head: nn.Module):
    """mmdet 2.x's FCNMaskHead initialisation, on a detectron2 mask head, from the global RNG.

    In mmdet's order: each conv as its ConvModule does (Kaiming normal, fan_out, ReLU gain;
    bias 0), then ``FCNMaskHead.init_weights``' deconv and predictor (``conv_logits``, also the
    cosine one) the same way. The predictor's std is then sqrt(2 / C) (0.041 for LVIS's 1,203
    classes), detectron2's 0.001. Convs and deconv get detectron2's distribution, redrawn;
    norm layers keep weight 1 and bias 0.

    Args:
        head: a :class:`MaskRCNNConvUpsampleHead` (or subclass).
    """
    if not isinstance(head, MaskRCNNConvUpsampleHead):
        raise ValueError(
            f"MODEL.HEAD_INIT.SCHEME covers MaskRCNNConvUpsampleHead and its subclasses (mmdet's "
            f"FCNMaskHead); got {type(head).__name__}: use 'detectron2', or that mask head."
        )
    for layer in [*head.conv_norm_relus, head.deconv, head.predictor]:
        _kaiming(layer)


@ROI_MASK_HEAD_REGISTRY.register()
class NormalizedMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """:class:`MaskRCNNConvUpsampleHead` whose ``predictor`` is a
    :class:`~iif_d2.modeling.layers.CosineConv2d`: mask logits ``scale * cos(x_ij, W_c) + b_c``
    with the per-pixel features L2-normalised over the channels (the LVIS recipe's normalised mask
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
