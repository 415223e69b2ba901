"""``IIFRetinaNet``: detectron2's RetinaNet with IIF-scaled sigmoid class logits."""

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from .class_stats import iif_weights_from_config

__all__ = ["IIFRetinaNet"]


@META_ARCH_REGISTRY.register()
class IIFRetinaNet(RetinaNet):
    """:class:`RetinaNet` whose C class logits z are multiplied by IIF weights w (METHOD.md §4).

    Loss: sigmoid focal loss on w * z for the anchors matched to a foreground box, raw z for the
    negatives (``scale_all_anchors=False``, the authors' RetinaNet) or w * z for every anchor.
    Inference: sigmoid(w * z). Without weights it is exactly :class:`RetinaNet`.
    """

    @configurable
    def __init__(self, *, iif_weights=None, iif_scale_all_anchors: bool = False, **kwargs):
        """
        Args:
            iif_weights: (C,) foreground weights, or None for plain RetinaNet.
            iif_scale_all_anchors: scale the logits of every anchor in the loss.
            kwargs: as :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        self.iif_scale_all_anchors = iif_scale_all_anchors
        if iif_weights is not None:
            iif_weights = torch.as_tensor(iif_weights, dtype=torch.float32)
            if iif_weights.shape != (self.num_classes,):
                raise ValueError(
                    f"IIFRetinaNet weights must have shape ({self.num_classes},) (no background "
                    f"column in a sigmoid head); got {tuple(iif_weights.shape)}."
                )
        self.register_buffer("iif_weights", iif_weights, persistent=False)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        iif = cfg.MODEL.RETINANET.IIF
        if iif.ENABLED:
            num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
            ret["iif_weights"] = iif_weights_from_config(cfg, num_classes, False, iif)
            ret["iif_scale_all_anchors"] = iif.SCALE_ALL_ANCHORS
        return ret

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        if self.iif_weights is None:
            return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        sizes = [x.shape[1] for x in pred_logits]
        logits = torch.cat(pred_logits, dim=1).float()  # (N, R, C), fp32 under AMP
        scaled = logits * self.iif_weights
        if not self.iif_scale_all_anchors:
            labels = torch.stack(gt_labels)  # (N, R): C = background, -1 = ignored
            foreground = (labels >= 0) & (labels != self.num_classes)
            scaled = torch.where(foreground[..., None], scaled, logits)
        scaled_logits = list(scaled.split(sizes, dim=1))
        return super().losses(anchors, scaled_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def forward_inference(self, images, features, predictions):
        if self.iif_weights is None:
            return super().forward_inference(images, features, predictions)
        logits, deltas = predictions  # per level (N, A*C, H, W), channel = a*C + c
        scaled = [x.float() * self._channel_weights(x) for x in logits]
        return super().forward_inference(images, features, [scaled, deltas])

    def _channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        anchors_per_location = x.shape[1] // self.num_classes
        return self.iif_weights.repeat(anchors_per_location).view(1, -1, 1, 1)
