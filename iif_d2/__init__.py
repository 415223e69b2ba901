"""iif-d2: Inverse Image Frequency for long-tailed detection and segmentation on detectron2.

``import iif_d2`` is light: :mod:`iif_d2.weights` is pure torch, and the other public names are
imported on first use. :func:`add_iif_config` adds iif-d2's config keys and registers its
components with detectron2's registries (:mod:`iif_d2.register`): ``IIFStandardROIHeads``,
``IIFCascadeROIHeads`` (ROI_HEADS_REGISTRY), ``IIFGeneralizedRCNN``, ``IIFRetinaNet``,
``IIFFCOS`` (META_ARCH_REGISTRY), ``NormalizedMaskRCNNConvUpsampleHead``
(ROI_MASK_HEAD_REGISTRY), ``build_fcos_resnet_fpn_backbone`` (BACKBONE_REGISTRY) and the
SynthLT datasets. Importing any of those classes from ``iif_d2`` registers them too.
"""

import importlib

from .weights import VARIANTS, iif_weights

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_LAZY = {
    "ClassStats": "class_stats",
    "load_counts_file": "class_stats",
    "add_iif_config": "config",
    "resolve_training_set": "data.training_set",
    "FASA": "fasa",
    "IIFFastRCNNOutputLayers": "fast_rcnn",
    "IIFFCOS": "fcos",
    "NormalizedMaskRCNNConvUpsampleHead": "mask_head",
    "IIFGeneralizedRCNN": "rcnn",
    "IIFRetinaNet": "retinanet",
    "IIFStandardROIHeads": "roi_heads",
    "IIFCascadeROIHeads": "roi_heads",
}
__all__ = ["VARIANTS", "iif_weights", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'iif_d2' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
