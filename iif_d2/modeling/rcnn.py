"""``IIFGeneralizedRCNN``: detectron2's R-CNN with a configurable mask binarisation threshold
and, optionally, the channels-last memory format."""

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess

__all__ = ["IIFGeneralizedRCNN"]


@META_ARCH_REGISTRY.register()
class IIFGeneralizedRCNN(GeneralizedRCNN):
    """:class:`GeneralizedRCNN` whose test-time mask threshold is
    ``MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD`` (detectron2 hard-codes 0.5; the paper's
    LVIS recipe uses 0.4). With ``channels_last`` (MODEL.KERNELS.CHANNELS_LAST) its conv
    weights and image batches are channels-last (the same maths, oneDNN's faster layout on
    CPU). With 0.5 and contiguous tensors it is exactly :class:`GeneralizedRCNN`.
    """

    @configurable
    def __init__(self, *, mask_threshold: float = 0.5, channels_last: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
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
        ret["channels_last"] = cfg.MODEL.KERNELS.CHANNELS_LAST
        return ret

    def preprocess_image(self, batched_inputs):
        images = super().preprocess_image(batched_inputs)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

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
