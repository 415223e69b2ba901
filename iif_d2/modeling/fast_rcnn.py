"""``IIFFastRCNNOutputLayers``: detectron2's box predictor with IIF-scaled class logits."""

import logging
from typing import Optional

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from iif_d2.calibration import (
    CALIBRATION_MODES,
    FRACAL_LAMBDA,
    FRACAL_MAX_GRID,
    FRACAL_VARIANT,
    NORCAL_GAMMA,
    calibrated_probs,
)
from iif_d2.config import refuse_deprecated_keys
from iif_d2.modeling.class_weights import (
    additive_margins_from_stats,
    calibration_from_stats,
    checked_class_stats,
    iif_weights_from_stats,
)
from iif_d2.modeling.fasa import FASA
from iif_d2.modeling.layers import CosineLinear
from iif_d2.weights import MARGIN_TYPES

__all__ = ["IIFFastRCNNOutputLayers", "IIF_MODES", "MARGIN_MODES"]

logger = logging.getLogger(__name__)
IIF_MODES = ("off", "end_to_end", "post_process")
MARGIN_MODES = ("off",) + MARGIN_TYPES
CLS_SCORE_INITS = ("default", "constant")
# margin modes that change the logits of the loss (the post-hoc one acts at test only)
_LOSS_MARGIN_MODES = ("balanced_softmax", "logit_adjustment")


def _check_calibration_keys(node) -> None:
    """A CALIBRATION key of another MODE than the one set would be ignored: an error."""
    if node.MODE not in CALIBRATION_MODES:
        raise ValueError(
            f"MODEL.ROI_BOX_HEAD.CALIBRATION.MODE {node.MODE!r} is not one of {CALIBRATION_MODES}."
        )
    unused = [
        f"MODEL.ROI_BOX_HEAD.CALIBRATION.{key}"
        for key, mode, value, default in (
            ("NORCAL.GAMMA", "norcal", node.NORCAL.GAMMA, NORCAL_GAMMA),
            ("FRACAL.LAMBDA", "fracal", node.FRACAL.LAMBDA, FRACAL_LAMBDA),
            ("FRACAL.VARIANT", "fracal", node.FRACAL.VARIANT, FRACAL_VARIANT),
            ("FRACAL.MAX_GRID", "fracal", node.FRACAL.MAX_GRID, FRACAL_MAX_GRID),
        )
        if node.MODE != mode and value != default
    ]
    if unused:
        raise ValueError(
            f"{', '.join(unused)} set, but MODEL.ROI_BOX_HEAD.CALIBRATION.MODE is "
            f"{node.MODE!r}, which ignores it: set the MODE it belongs to, or remove it."
        )


class IIFFastRCNNOutputLayers(FastRCNNOutputLayers):
    """:class:`FastRCNNOutputLayers` whose C+1 class logits z are multiplied by constant
    per-class weights w (background weight 1) before the softmax (docs/method.md §2).

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

    With ``cosine_scale`` s, ``cls_score`` is a :class:`~iif_d2.modeling.layers.CosineLinear`:
    z_c = s * cos(x, W_c) + b_c over all C+1 rows, background included (docs/method.md §3), on which
    IIF, the margins and the cascade act as on the linear logits. It holds detectron2's freshly
    initialised ``cls_score`` parameters (N(0, 0.01^2), bias 0), under the same names.

    With ``fasa`` (:class:`~iif_d2.modeling.fasa.FASA`), every training step updates the per-class
    statistics with the box-head features of the sampled RoIs (synchronised across ranks) and,
    from ``fasa.start_iter`` on, draws virtual features that go through ``cls_score`` with the
    same loss logits (IIF when enabled): ``loss_cls_fasa`` = LOSS_WEIGHT x their mean cross
    entropy (0 while none are drawn), added to the total loss with the other terms.

    With ``calibration_mode`` "norcal" or "fracal" (:mod:`iif_d2.calibration`) the test scores
    are softmax(t + prior) / divisors renormalised over the C+1 entries, t the logits the
    scores would otherwise come from (z, or w * z with end-to-end IIF); the loss is unchanged.
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
        fasa: Optional[FASA] = None,
        calibration_mode: str = "off",
        calibration_prior=None,
        calibration_divisors=None,
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
            fasa: FASA state for this predictor's box-head features, or None.
            calibration_mode: one of :data:`~iif_d2.calibration.CALIBRATION_MODES`.
            calibration_prior: (C+1,) additive logit prior (FRACAL), or None.
            calibration_divisors: (C+1,) score divisors, background 1; required unless the
                calibration is off.
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
        if fasa is not None and getattr(self, "use_sigmoid_ce", False):
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.FASA needs the softmax cross entropy: set "
                "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE False or FASA.ENABLED False."
            )
        self.fasa = fasa
        self._fasa_features = None
        self._init_calibration(calibration_mode, calibration_prior, calibration_divisors)

    def _init_calibration(self, mode: str, prior, divisors):
        if mode not in CALIBRATION_MODES:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.CALIBRATION.MODE {mode!r} is not one of {CALIBRATION_MODES}."
            )
        self.calibration_mode = mode
        if mode == "off":
            return
        if self.iif_mode == "post_process" or self.margin_mode == "logit_adjustment_posthoc":
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.CALIBRATION.MODE {mode!r} is a post-processing of the "
                "trained model's scores, as IIF MODE 'post_process' and the post-hoc logit "
                "adjustment are: use one of them (IIF end_to_end or the loss margins combine)."
            )
        if getattr(self, "use_sigmoid_ce", False) or getattr(self, "use_fed_loss", False):
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.CALIBRATION.MODE {mode!r} calibrates softmax scores: set "
                "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE and USE_FED_LOSS False, or MODE 'off'."
            )
        if divisors is None:
            raise ValueError("Calibration divisors are required (from_config computes them).")
        self.register_buffer("calibration_divisors", self._per_class(divisors), persistent=False)
        if prior is not None:
            self.register_buffer("calibration_prior", self._per_class(prior), persistent=False)
        else:
            self.calibration_prior = None

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
        refuse_deprecated_keys(cfg)
        ret = super().from_config(cfg, input_shape)
        box = cfg.MODEL.ROI_BOX_HEAD
        iif, margin = box.IIF, box.ADDITIVE_MARGIN
        ret["cls_score_init"] = iif.CLS_SCORE_INIT
        if box.COSINE.ENABLED:
            ret["cosine_scale"] = box.COSINE.SCALE
        _check_calibration_keys(box.CALIBRATION)
        if iif.ENABLED and iif.MODE not in IIF_MODES[1:]:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.IIF.MODE {iif.MODE!r} is not one of {IIF_MODES[1:]}; "
                "set IIF.ENABLED False to turn IIF off."
            )
        counted = (iif.ENABLED, margin.ENABLED, box.FASA.ENABLED, box.CALIBRATION.MODE != "off")
        if not any(counted):
            return ret
        # the class counts, read once for every part built on them
        stats = checked_class_stats(cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        if margin.ENABLED:
            ret["margin_mode"] = margin.TYPE
            ret["margins"] = additive_margins_from_stats(stats, cfg)
        if box.FASA.ENABLED:
            ret["fasa"] = cls._build_fasa(cfg, input_shape, stats)
        mode, prior, divisors = calibration_from_stats(stats, box.CALIBRATION)
        ret.update(calibration_mode=mode, calibration_prior=prior, calibration_divisors=divisors)
        if iif.ENABLED:
            ret["iif_mode"] = iif.MODE
            ret["iif_weights"] = iif_weights_from_stats(stats, iif)
        return ret

    @staticmethod
    def _build_fasa(cfg, input_shape, stats) -> FASA:
        node = cfg.MODEL.ROI_BOX_HEAD.FASA
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        dim = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        return FASA(
            num_classes,
            dim,
            stats.instance_counts,
            momentum=node.MOMENTUM,
            loss_weight=node.LOSS_WEIGHT,
            start_iter=node.START_ITER,
            adapt_step=node.ADAPT_STEP,
            clustering=node.CLUSTERING,
            single_instance_variance=node.SINGLE_INSTANCE_VARIANCE,
            clustering_input=node.CLUSTERING_INPUT,
        )

    def forward(self, x):
        if self.fasa is not None and self.training:  # kept for the FASA statistics in losses()
            self._fasa_features = torch.flatten(x, start_dim=1) if x.dim() > 2 else x
        return super().forward(x)

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
            losses = super().losses(predictions, proposals)
        else:
            scores, proposal_deltas = predictions
            losses = super().losses((self.loss_logits(scores), proposal_deltas), proposals)
        if self.fasa is not None and self.training:
            losses["loss_cls_fasa"] = self._fasa_loss(proposals)
        return losses

    def _fasa_loss(self, proposals) -> torch.Tensor:
        """Update the FASA statistics with this step's RoIs; the virtual features' loss."""
        features, self._fasa_features = self._fasa_features, None
        if features is None:
            raise RuntimeError("FASA: losses() needs the features of forward() in training.")
        if proposals:
            labels = cat([p.gt_classes for p in proposals], dim=0)
        else:
            labels = torch.empty(0, dtype=torch.long, device=features.device)
        self.fasa.update(features, labels)
        if not self.fasa.active(get_event_storage().iter):
            return features.new_zeros((), dtype=torch.float32)
        virtual, virtual_labels = self.fasa.sample()
        if virtual.numel() == 0:
            return features.new_zeros((), dtype=torch.float32)
        logits = self.loss_logits(self.cls_score(virtual.to(features.dtype)))
        return self.fasa.loss_weight * F.cross_entropy(logits, virtual_labels)

    def predict_probs(self, predictions, proposals):
        scores, proposal_deltas = predictions
        logits = self._test_logits(scores)
        if self.calibration_mode != "off":
            logits = scores.float() if logits is None else logits
            probs = calibrated_probs(logits, self.calibration_divisors, self.calibration_prior)
            return probs.split([len(p) for p in proposals], dim=0)
        if logits is None:
            return super().predict_probs(predictions, proposals)
        return super().predict_probs((logits, proposal_deltas), proposals)

    def extra_repr(self) -> str:
        fasa = self.fasa is not None
        return (
            f"iif_mode={self.iif_mode}, margin_mode={self.margin_mode}, fasa={fasa}, "
            f"calibration={self.calibration_mode}"
        )
