"""``IIFFastRCNNOutputLayers``: detectron2's box predictor with IIF-scaled class logits."""

import logging

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import nn

from .class_stats import iif_weights_from_config

__all__ = ["IIFFastRCNNOutputLayers", "IIF_MODES"]

logger = logging.getLogger(__name__)
IIF_MODES = ("off", "end_to_end", "post_process")
CLS_SCORE_INITS = ("default", "constant")


class IIFFastRCNNOutputLayers(FastRCNNOutputLayers):
    """:class:`FastRCNNOutputLayers` whose C+1 class logits z are multiplied by constant
    per-class weights w (background weight 1) before the softmax (METHOD.md §2).

    * ``end_to_end``: loss CE(softmax(w * z), y) and scores softmax(w * z); the gradient is
      dL/dz_i = w_i (q_i - 1[i = y]) (paper Eq. 16).
    * ``post_process``: upstream loss; scores softmax(w * z) at inference only.
    * ``off``: exactly :class:`FastRCNNOutputLayers`.

    The product and the loss are computed in fp32, also under AMP. With detectron2 main's
    ``USE_SIGMOID_CE`` (and federated loss) the same scaled logits feed the sigmoid: the
    foreground logits are scaled, the background column is unused, as upstream.
    ``iif_weights`` is a non-persistent buffer: checkpoints stay loadable by plain detectron2,
    and the weights always follow the config and the saved class statistics.
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        iif_mode: str = "off",
        iif_weights=None,
        cls_score_init: str = "default",
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: as :class:`FastRCNNOutputLayers`.
            iif_mode: one of :data:`IIF_MODES`.
            iif_weights: (C+1,) weights, background last; required unless ``iif_mode="off"``.
            cls_score_init: "default" (detectron2's) or "constant" (weights 0.001, bias 0).
        """
        super().__init__(input_shape, **kwargs)
        if iif_mode not in IIF_MODES:
            raise ValueError(f"IIF MODE {iif_mode!r} is not one of {IIF_MODES}.")
        if cls_score_init not in CLS_SCORE_INITS:
            raise ValueError(f"IIF CLS_SCORE_INIT {cls_score_init!r} not in {CLS_SCORE_INITS}.")
        self.iif_mode = iif_mode
        if iif_mode != "off":
            w = torch.as_tensor(iif_weights, dtype=torch.float32)
            if w.shape != (self.num_classes + 1,):
                raise ValueError(
                    f"iif_weights must have shape ({self.num_classes + 1},) = C+1 with the "
                    f"background weight last; got {tuple(w.shape)}."
                )
            self.register_buffer("iif_weights", w, persistent=False)
        if cls_score_init == "constant":
            nn.init.constant_(self.cls_score.weight, 0.001)
            nn.init.constant_(self.cls_score.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        iif = cfg.MODEL.ROI_BOX_HEAD.IIF
        ret["cls_score_init"] = iif.CLS_SCORE_INIT
        if not iif.ENABLED:
            return ret
        if iif.MODE not in IIF_MODES[1:]:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.IIF.MODE {iif.MODE!r} is not one of {IIF_MODES[1:]}; "
                "set IIF.ENABLED False to turn IIF off."
            )
        ret["iif_mode"] = iif.MODE
        ret["iif_weights"] = iif_weights_from_config(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        return ret

    def scale_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """Return w * z in fp32 (z: (R, C+1) class logits)."""
        return scores.float() * self.iif_weights

    def losses(self, predictions, proposals):
        if self.iif_mode != "end_to_end":
            return super().losses(predictions, proposals)
        scores, proposal_deltas = predictions
        return super().losses((self.scale_logits(scores), proposal_deltas), proposals)

    def predict_probs(self, predictions, proposals):
        if self.iif_mode == "off":
            return super().predict_probs(predictions, proposals)
        scores, proposal_deltas = predictions
        return super().predict_probs((self.scale_logits(scores), proposal_deltas), proposals)

    def extra_repr(self) -> str:
        return f"iif_mode={self.iif_mode}"
