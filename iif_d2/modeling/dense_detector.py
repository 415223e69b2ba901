"""Long-tail treatments of the sigmoid classifier of detectron2's dense detectors (RetinaNet,
FCOS), docs/method.md §4.

:class:`IIFDenseDetectorMixin` holds the C foreground weights w (no background column in a
sigmoid head) and applies the rule ``MODEL.{RETINANET,FCOS}.IIF.RULE`` asks for:

* "logits": w * z in the focal loss (foreground-matched anchors, or every anchor with
  SCALE_ALL_ANCHORS) and sigmoid(w * z) at inference; APPLY_AT "train" / "test" keeps only one
  of the two (the diagnostic that splits the rule's training and test effects);
* "positive_weight": w_c on the positive term of the focal loss, raw logits at inference;
* "negative_suppression": s_c = min w / w_c on the negative term of class c on anchors matched
  to another class's object, raw logits at inference;

and, with ``MODEL.{RETINANET,FCOS}.EFL.ENABLED``, Equalized Focal Loss (per-class focusing
factors from accumulated gradient ratios), alone or with a rule. Mixed into
:class:`IIFRetinaNet` and :class:`IIFFCOS` before their detectron2 base class.
"""

from typing import List, Optional

import torch

from iif_d2.config import refuse_deprecated_keys
from iif_d2.modeling.class_weights import iif_weights_from_config
from iif_d2.modeling.sigmoid_losses import (
    EFL_SCALE_FACTOR,
    RULES,
    efl_gammas,
    efl_gradient_magnitudes,
    long_tail_focal_loss,
    negative_suppression_weights,
)

__all__ = ["APPLY_AT", "IIFDenseDetectorMixin"]

# MODEL.{RETINANET,FCOS}.IIF.APPLY_AT (RULE "logits"): where w * z replaces z
APPLY_AT = ("both", "train", "test")


_NORMALIZER = "loss_normalizer_ema"  # the buffer that holds ``loss_normalizer``


class IIFDenseDetectorMixin:
    """IIF weights, the focal-loss treatments and test-time logit scaling for a
    ``DenseDetector`` subclass with ``num_classes``, ``focal_loss_alpha``/``_gamma``."""

    # the key of the classification loss in the detector's loss dict
    cls_loss_key = "loss_cls"
    # the starting value of detectron2's loss normaliser (RetinaNet 100, FCOS 300)
    loss_normalizer_init = 100.0

    # detectron2 keeps the EMA of the number of foreground anchors that divides the losses
    # (``loss_normalizer``) in a plain attribute: a checkpoint does not hold it, so a resumed run
    # restarts it from its initial value and trains on another path than the uninterrupted run.
    # Here it lives in a persistent float64 buffer, read and written as the Python float
    # detectron2 computes with (the same arithmetic, bit for bit), and saved with the model.
    @property
    def loss_normalizer(self) -> float:
        buffer = self.__dict__["_buffers"].get(_NORMALIZER)
        if buffer is None:
            raise AttributeError("loss_normalizer")
        return buffer.item()

    @loss_normalizer.setter
    def loss_normalizer(self, value: float) -> None:
        buffer = self.__dict__["_buffers"].get(_NORMALIZER)
        if buffer is None:
            self.register_buffer(_NORMALIZER, torch.tensor(float(value), dtype=torch.float64))
        else:
            buffer.fill_(float(value))

    @classmethod
    def iif_from_config(cls, cfg, head: str, num_classes: int) -> dict:
        """The keyword arguments of ``MODEL.<head>.IIF`` and ``MODEL.<head>.EFL`` (head
        "RETINANET" or "FCOS"), checked; refuses deprecated keys first.

        Raises:
            ValueError: a value out of range, or a key the built model would ignore.
        """
        refuse_deprecated_keys(cfg)
        node = cfg.MODEL[head]
        iif, efl = node.IIF, node.EFL
        prefix = f"MODEL.{head}"
        if iif.RULE not in RULES:
            raise ValueError(f"{prefix}.IIF.RULE {iif.RULE!r}: choose one of {list(RULES)}.")
        if iif.APPLY_AT not in APPLY_AT:
            raise ValueError(
                f"{prefix}.IIF.APPLY_AT {iif.APPLY_AT!r}: choose one of {list(APPLY_AT)}."
            )
        ignored = []
        if not iif.ENABLED:
            ignored += [
                f"{prefix}.IIF.{k} {v!r} needs {prefix}.IIF.ENABLED True"
                for k, v, default in (
                    ("RULE", iif.RULE, "logits"),
                    ("APPLY_AT", iif.APPLY_AT, "both"),
                    ("SCALE_ALL_ANCHORS", iif.SCALE_ALL_ANCHORS, False),
                )
                if v != default
            ]
        elif iif.RULE != "logits":
            if iif.APPLY_AT != "both":
                ignored.append(
                    f"{prefix}.IIF.APPLY_AT {iif.APPLY_AT!r} acts on RULE 'logits' only (RULE "
                    f"{iif.RULE!r} changes the loss alone): set APPLY_AT 'both'"
                )
            if iif.SCALE_ALL_ANCHORS:
                ignored.append(
                    f"{prefix}.IIF.SCALE_ALL_ANCHORS acts on RULE 'logits' only: set it False"
                )
        elif iif.SCALE_ALL_ANCHORS and iif.APPLY_AT == "test":
            ignored.append(
                f"{prefix}.IIF.SCALE_ALL_ANCHORS changes the loss, which APPLY_AT 'test' leaves "
                "plain: set it False or APPLY_AT 'both'/'train'"
            )
        if not efl.ENABLED and efl.SCALE_FACTOR != EFL_SCALE_FACTOR:
            ignored.append(f"{prefix}.EFL.SCALE_FACTOR needs {prefix}.EFL.ENABLED True")
        if ignored:
            raise ValueError(ignored[0] + ".")
        ret = {}
        if iif.ENABLED:
            ret["iif_weights"] = iif_weights_from_config(cfg, num_classes, False, iif)
            ret["iif_rule"] = iif.RULE
            ret["iif_apply_at"] = iif.APPLY_AT
            ret["iif_scale_all_anchors"] = iif.SCALE_ALL_ANCHORS
        if efl.ENABLED:
            gamma = node.FOCAL_LOSS_GAMMA
            if gamma <= 0 or efl.SCALE_FACTOR < 0:
                raise ValueError(
                    f"{prefix}.EFL needs FOCAL_LOSS_GAMMA > 0 (its weighting factor divides by "
                    f"it) and SCALE_FACTOR >= 0; got {gamma} and {efl.SCALE_FACTOR}."
                )
            ret["efl_scale_factor"] = float(efl.SCALE_FACTOR)
        return ret

    def _init_iif(
        self,
        iif_weights: Optional[torch.Tensor],
        scale_all_anchors: bool = False,
        rule: str = "logits",
        apply_at: str = "both",
        efl_scale_factor: Optional[float] = None,
    ):
        """Register the (C,) weights as a non-persistent buffer (None: no IIF), and EFL's
        gradient statistics as persistent buffers (saved with the model: a resumed run goes on
        with them).

        Args:
            iif_weights: (C,) foreground weights, or None.
            scale_all_anchors: RULE "logits": scale every anchor's logits in the loss, not just
                the foreground-matched ones.
            rule: one of :data:`iif_d2.modeling.sigmoid_losses.RULES`.
            apply_at: RULE "logits": "both", "train" (loss only) or "test" (inference only).
            efl_scale_factor: EFL's S, or None for no EFL.
        """
        if rule not in RULES or apply_at not in APPLY_AT:
            raise ValueError(
                f"IIF rule {rule!r} / apply_at {apply_at!r}: choose a rule of {list(RULES)} and "
                f"apply_at of {list(APPLY_AT)}."
            )
        self.iif_scale_all_anchors = scale_all_anchors
        self.iif_rule, self.iif_apply_at = rule, apply_at
        self.efl_scale_factor = efl_scale_factor
        negative = None
        if iif_weights is not None:
            iif_weights = torch.as_tensor(iif_weights, dtype=torch.float32)
            if iif_weights.shape != (self.num_classes,):
                raise ValueError(
                    f"{type(self).__name__} weights must have shape ({self.num_classes},) (no "
                    f"background column in a sigmoid head); got {tuple(iif_weights.shape)}."
                )
            if rule == "negative_suppression":
                negative = negative_suppression_weights(iif_weights)
        self.register_buffer("iif_weights", iif_weights, persistent=False)
        self.register_buffer("iif_negative_weights", negative, persistent=False)
        if efl_scale_factor is not None:
            self.register_buffer("efl_pos_grad", torch.zeros(self.num_classes))
            self.register_buffer("efl_neg_grad", torch.zeros(self.num_classes))
        if _NORMALIZER not in self._buffers:  # detectron2 main sets it at the first step
            self.loss_normalizer = self.loss_normalizer_init

    def _scales_logits(self, at: str) -> bool:
        return (
            self.iif_weights is not None
            and self.iif_rule == "logits"
            and self.iif_apply_at in ("both", at)
        )

    def _custom_cls_loss(self) -> bool:
        return self.efl_scale_factor is not None or (
            self.iif_weights is not None and self.iif_rule != "logits"
        )

    def iif_losses(self, base_losses, anchors, pred_logits, gt_labels, *others):
        """The detector's losses with the treatment: ``base_losses`` (the detectron2 class's
        ``losses``) on the logits the rule gives, then its classification loss replaced by the
        treated focal loss under the same normaliser when a loss treatment is on."""
        if self._scales_logits("train"):
            pred_logits = self.scale_loss_logits(pred_logits, gt_labels)
        losses = base_losses(anchors, pred_logits, gt_labels, *others)
        if self._custom_cls_loss():
            losses[self.cls_loss_key] = self.treated_cls_loss(pred_logits, gt_labels)
        return losses

    def treated_cls_loss(self, pred_logits: List[torch.Tensor], gt_labels) -> torch.Tensor:
        """The focal loss with the rule's weights and EFL's focusing, summed over the non-ignored
        anchors and divided by detectron2's normaliser (the EMA of the positive-anchor count,
        updated by the base class's ``losses`` just before). In training, adds this batch's
        gradient magnitudes to EFL's statistics (summed over processes)."""
        labels = torch.stack(gt_labels)
        logits = torch.cat(pred_logits, dim=1).float()
        valid = labels >= 0
        z, y = logits[valid], labels[valid]
        weights = {
            "positive_weights": self.iif_weights if self.iif_rule == "positive_weight" else None,
            "negative_weights": self.iif_negative_weights,
        }
        efl = {}
        if self.efl_scale_factor is not None:
            gammas, factors = efl_gammas(
                self.efl_pos_grad, self.efl_neg_grad, self.focal_loss_gamma, self.efl_scale_factor
            )
            efl = {"class_gammas": gammas, "class_factors": factors}
        normalizer = self.loss_normalizer
        loss = long_tail_focal_loss(
            z, y, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma, **weights, **efl
        ).sum()
        if efl and self.training:
            pos, neg = efl_gradient_magnitudes(z, y, alpha=self.focal_loss_alpha, **weights, **efl)
            stats = torch.stack([pos, neg]) / normalizer
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(stats)
            self.efl_pos_grad += stats[0]
            self.efl_neg_grad += stats[1]
        return loss / normalizer

    def scale_loss_logits(self, pred_logits: List[torch.Tensor], gt_labels) -> List[torch.Tensor]:
        """The logits the focal loss sees (RULE "logits").

        Args:
            pred_logits: per level (N, R_l, C) class logits.
            gt_labels: per image (R,) matched labels: C = background, -1 = ignored.

        Returns:
            per level (N, R_l, C) fp32 (also under AMP): w * z for the foreground-matched anchors
            (every anchor with ``iif_scale_all_anchors``), z for the others.
        """
        sizes = [x.shape[1] for x in pred_logits]
        logits = torch.cat(pred_logits, dim=1).float()  # (N, R, C)
        scaled = logits * self.iif_weights
        if not self.iif_scale_all_anchors:
            labels = torch.stack(gt_labels)  # (N, R)
            foreground = (labels >= 0) & (labels != self.num_classes)
            scaled = torch.where(foreground[..., None], scaled, logits)
        return list(scaled.split(sizes, dim=1))

    def scale_test_logits(self, logits: List[torch.Tensor]) -> List[torch.Tensor]:
        """w * z at inference.

        Args:
            logits: per level (N, A*C, H, W) head outputs, channel a*C + c (A = 1 for FCOS).

        Returns:
            the same shapes, fp32.
        """
        scaled = []
        for x in logits:
            anchors_per_location = x.shape[1] // self.num_classes
            w = self.iif_weights.repeat(anchors_per_location).view(1, -1, 1, 1)
            scaled.append(x.float() * w)
        return scaled

    def forward_inference(self, images, features, predictions):
        if self._scales_logits("test"):
            logits, *others = predictions  # per level (N, A*C, H, W), channel a*C + c
            predictions = [self.scale_test_logits(logits), *others]
        return super().forward_inference(images, features, predictions)
