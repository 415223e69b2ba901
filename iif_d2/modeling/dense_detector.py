"""IIF on the sigmoid class logits of detectron2's dense detectors (RetinaNet, FCOS).

:class:`IIFDenseDetectorMixin` holds the C foreground weights w (no background column in a
sigmoid head) and scales the logits (docs/method.md §4): in the focal loss, w * z for the anchors
matched to a foreground box and raw z for the others (the authors' RetinaNet) or w * z for
every anchor; at inference, w * z for every anchor. Mixed into :class:`IIFRetinaNet` and
:class:`IIFFCOS` before their detectron2 base class.
"""

from typing import List, Optional

import torch

__all__ = ["IIFDenseDetectorMixin"]


class IIFDenseDetectorMixin:
    """IIF weights and logit scaling for a ``DenseDetector`` subclass with ``num_classes``."""

    def _init_iif(self, iif_weights: Optional[torch.Tensor], scale_all_anchors: bool):
        """Register the (C,) weights as a non-persistent buffer (None: plain detector).

        Args:
            iif_weights: (C,) foreground weights, or None.
            scale_all_anchors: scale every anchor's logits in the loss, not just the
                foreground-matched ones.
        """
        self.iif_scale_all_anchors = scale_all_anchors
        if iif_weights is not None:
            iif_weights = torch.as_tensor(iif_weights, dtype=torch.float32)
            if iif_weights.shape != (self.num_classes,):
                raise ValueError(
                    f"{type(self).__name__} weights must have shape ({self.num_classes},) (no "
                    f"background column in a sigmoid head); got {tuple(iif_weights.shape)}."
                )
        self.register_buffer("iif_weights", iif_weights, persistent=False)

    def scale_loss_logits(self, pred_logits: List[torch.Tensor], gt_labels) -> List[torch.Tensor]:
        """The logits the focal loss sees.

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
