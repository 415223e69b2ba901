"""``IIFRetinaNet``: detectron2's RetinaNet with IIF-scaled sigmoid class logits."""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from .class_weights import iif_weights_from_config
from .dense_detector import IIFDenseDetectorMixin

__all__ = ["IIFRetinaNet"]


@META_ARCH_REGISTRY.register()
class IIFRetinaNet(IIFDenseDetectorMixin, RetinaNet):
    """:class:`RetinaNet` whose C class logits z are multiplied by IIF weights w
    (docs/method.md §4).

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
        self._init_iif(iif_weights, iif_scale_all_anchors)

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
        if self.iif_weights is not None:
            pred_logits = self.scale_loss_logits(pred_logits, gt_labels)
        return super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    def forward_inference(self, images, features, predictions):
        if self.iif_weights is not None:
            logits, deltas = predictions  # per level (N, A*C, H, W), channel = a*C + c
            predictions = [self.scale_test_logits(logits), deltas]
        return super().forward_inference(images, features, predictions)
