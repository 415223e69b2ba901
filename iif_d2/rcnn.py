"""``IIFGeneralizedRCNN``: detectron2's R-CNN with a configurable mask binarisation threshold."""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess

__all__ = ["IIFGeneralizedRCNN"]


@META_ARCH_REGISTRY.register()
class IIFGeneralizedRCNN(GeneralizedRCNN):
    """:class:`GeneralizedRCNN` whose test-time mask threshold is
    ``MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD`` (detectron2 hard-codes 0.5; the paper's
    LVIS recipe uses 0.4). With 0.5 it is exactly :class:`GeneralizedRCNN`.
    """

    @configurable
    def __init__(self, *, mask_threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= mask_threshold <= 1.0:
            raise ValueError(
                "MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD must lie in [0, 1], got "
                f"{mask_threshold}."
            )
        self.mask_threshold = mask_threshold

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["mask_threshold"] = cfg.MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD
        return ret

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        processed = []
        for result, inputs in zip(results, batched_inputs, strict=True):
            height = inputs.get("height", result.image_size[0])
            width = inputs.get("width", result.image_size[1])
            r = detector_postprocess(result, height, width, mask_threshold=self.mask_threshold)
            processed.append({"instances": r})
        return processed
