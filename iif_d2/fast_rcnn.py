"""``IIFFastRCNNOutputLayers``: detectron2's box predictor with IIF-scaled class logits."""

import logging
from typing import Optional

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import nn

from .class_stats import additive_margins_from_config, iif_weights_from_config
from .layers import CosineLinear
from .weights import MARGIN_TYPES

__all__ = ["IIFFastRCNNOutputLayers", "IIF_MODES", "MARGIN_MODES"]

logger = logging.getLogger(__name__)
IIF_MODES = ("off", "end_to_end", "post_process")
MARGIN_MODES = ("off",) + MARGIN_TYPES
CLS_SCORE_INITS = ("default", "constant")
# margin modes that change the logits of the loss (the post-hoc one acts at test only)
_LOSS_MARGIN_MODES = ("balanced_softmax", "logit_adjustment")


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
    ``iif_weights`` is a non-persistent buffer, recomputed from the config and the class counts
    whenever the model is built: checkpoints hold only learned parameters.

    The additive baselines (``margin_mode``, see :func:`iif_d2.weights.additive_margins`) add
    a margin m instead: CE(z + m) in the loss (balanced softmax, logit adjustment) or
    softmax(z - m) at test (post-hoc logit adjustment). IIF and margins are exclusive.

    With ``cosine_scale`` s, ``cls_score`` is a :class:`~iif_d2.layers.CosineLinear`:
    z_c = s * cos(x, W_c) + b_c over all C+1 rows, background included (METHOD.md §3), on which
    IIF, the margins and the cascade act as on the linear logits. It holds detectron2's freshly
    initialised ``cls_score`` parameters (N(0, 0.01^2), bias 0), under the same names.
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        iif_mode: str = "off",
        iif_weights=None,
        cls_score_init: str = "default",
        margin_mode: str = "off",
        margins=None,
        cosine_scale: Optional[float] = None,
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: as :class:`FastRCNNOutputLayers`.
            iif_mode: one of :data:`IIF_MODES`.
            iif_weights: (C+1,) weights, background last; required unless ``iif_mode="off"``.
            cls_score_init: "default" (detectron2's) or "constant" (weights 0.001, bias 0).
            margin_mode: one of :data:`MARGIN_MODES`; only with ``iif_mode="off"``.
            margins: (C+1,) additive margins, background last; required unless margins are off.
            cosine_scale: None for detectron2's linear ``cls_score``, or the scale s > 0 of a
                cosine classifier. Excludes ``cls_score_init="constant"``: equal rows would
                give every class the same cosine, and their norm is irrelevant to it.
        """
        super().__init__(input_shape, **kwargs)
        if iif_mode not in IIF_MODES:
            raise ValueError(f"IIF MODE {iif_mode!r} is not one of {IIF_MODES}.")
        if cls_score_init not in CLS_SCORE_INITS:
            raise ValueError(f"IIF CLS_SCORE_INIT {cls_score_init!r} not in {CLS_SCORE_INITS}.")
        if margin_mode not in MARGIN_MODES:
            raise ValueError(f"Additive margin {margin_mode!r} is not one of {MARGIN_MODES}.")
        if iif_mode != "off" and margin_mode != "off":
            raise ValueError(
                "IIF and additive margins are exclusive: set MODEL.ROI_BOX_HEAD.IIF.ENABLED or "
                "MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN.ENABLED, not both."
            )
        if cosine_scale is not None:
            self._use_cosine_cls_score(cosine_scale, cls_score_init)
        self.iif_mode, self.margin_mode = iif_mode, margin_mode
        if iif_mode != "off":
            self.register_buffer("iif_weights", self._per_class(iif_weights), persistent=False)
        if margin_mode != "off":
            self.register_buffer("margins", self._per_class(margins), persistent=False)
        self.cls_score_init = cls_score_init
        self.apply_cls_score_init()

    def _use_cosine_cls_score(self, scale: float, cls_score_init: str):
        """Replace the linear ``cls_score`` by a cosine one holding its parameters."""
        if not scale > 0:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.COSINE.SCALE must be > 0; got {scale!r}.")
        if cls_score_init == "constant":
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.IIF.CLS_SCORE_INIT 'constant' cannot be combined with "
                "MODEL.ROI_BOX_HEAD.COSINE.ENABLED: constant rows make every class's cosine "
                "equal and the cosine ignores their norm. Use CLS_SCORE_INIT 'default'."
            )
        linear = self.cls_score
        with torch.random.fork_rng(devices=[]):  # RNG-neutral: the parameters are replaced
            cosine = CosineLinear(linear.in_features, linear.out_features, scale)
        cosine.load_state_dict(linear.state_dict())
        self.cls_score = cosine

    def apply_cls_score_init(self):
        """Apply ``cls_score_init``: "constant" sets weights 0.001 and bias 0 (the authors')."""
        if self.cls_score_init == "constant":
            nn.init.constant_(self.cls_score.weight, 0.001)
            nn.init.constant_(self.cls_score.bias, 0.0)

    def _per_class(self, values) -> torch.Tensor:
        if values is None:
            raise ValueError(
                "IIF weights / additive margins are required when IIF or ADDITIVE_MARGIN is "
                "enabled: pass iif_weights= / margins= (from_config computes them)."
            )
        v = torch.as_tensor(values, dtype=torch.float32)
        if v.shape != (self.num_classes + 1,):
            raise ValueError(
                f"Per-class IIF weights / margins must have shape ({self.num_classes + 1},) = "
                f"C+1 with the background last; got {tuple(v.shape)}."
            )
        return v

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        iif = cfg.MODEL.ROI_BOX_HEAD.IIF
        ret["cls_score_init"] = iif.CLS_SCORE_INIT
        if cfg.MODEL.ROI_BOX_HEAD.COSINE.ENABLED:
            ret["cosine_scale"] = cfg.MODEL.ROI_BOX_HEAD.COSINE.SCALE
        margin = cfg.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN
        if margin.ENABLED:
            ret["margin_mode"] = margin.TYPE
            ret["margins"] = additive_margins_from_config(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
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

    def loss_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """The fp32 logits the classification loss sees.

        Args:
            scores: (R, C+1) class logits z, as returned by ``forward``.

        Returns:
            (R, C+1) fp32: w * z with end-to-end IIF, z + m with balanced softmax / logit
            adjustment, else z.
        """
        if self.iif_mode == "end_to_end":
            return self.scale_logits(scores)
        if self.margin_mode in _LOSS_MARGIN_MODES:
            return scores.float() + self.margins
        return scores.float()

    def _loss_is_upstream(self) -> bool:
        return self.iif_mode != "end_to_end" and self.margin_mode not in _LOSS_MARGIN_MODES

    def _test_logits(self, scores: torch.Tensor):
        """The logits the scores come from, or None when they are upstream's."""
        if self.iif_mode != "off":
            return self.scale_logits(scores)
        if self.margin_mode == "logit_adjustment_posthoc":
            return scores.float() - self.margins
        return None

    def losses(self, predictions, proposals):
        if self._loss_is_upstream():  # upstream's own computation, bit for bit (also AMP)
            return super().losses(predictions, proposals)
        scores, proposal_deltas = predictions
        return super().losses((self.loss_logits(scores), proposal_deltas), proposals)

    def predict_probs(self, predictions, proposals):
        scores, proposal_deltas = predictions
        logits = self._test_logits(scores)
        if logits is None:
            return super().predict_probs(predictions, proposals)
        return super().predict_probs((logits, proposal_deltas), proposals)

    def extra_repr(self) -> str:
        return f"iif_mode={self.iif_mode}, margin_mode={self.margin_mode}"
