"""iif-d2: Inverse Image Frequency for long-tailed detection and segmentation on detectron2.

``iif_d2.weights`` is pure torch and imports without detectron2. With detectron2 present,
importing the package applies the compatibility shims first (``iif_d2.compat``), then
registers ``IIFStandardROIHeads``, ``IIFCascadeROIHeads`` (ROI_HEADS_REGISTRY),
``IIFGeneralizedRCNN``, ``IIFRetinaNet``, ``IIFFCOS`` (META_ARCH_REGISTRY),
``NormalizedMaskRCNNConvUpsampleHead`` (ROI_MASK_HEAD_REGISTRY) and
``build_fcos_resnet_fpn_backbone`` (BACKBONE_REGISTRY).
"""

import importlib.util

from .weights import VARIANTS, iif_weights

__version__ = "0.1.0"
__all__ = ["VARIANTS", "iif_weights"]

if importlib.util.find_spec("detectron2") is not None:
    # compat must precede every other detectron2 import; the others register datasets, the
    # FCOS meta-architecture, the normalised mask head and the samplers.
    from . import (  # noqa: F401
        compat,
        data,
        fasa,
        fcos,
        hooks,
        layers,
        mask_head,
        samplers,
    )
    from .class_stats import ClassStats, class_stats_from_config, load_counts_file
    from .config import add_iif_config
    from .fasa import FASA
    from .fast_rcnn import IIFFastRCNNOutputLayers
    from .fcos import IIFFCOS
    from .mask_head import NormalizedMaskRCNNConvUpsampleHead
    from .rcnn import IIFGeneralizedRCNN
    from .retinanet import IIFRetinaNet
    from .roi_heads import IIFCascadeROIHeads, IIFStandardROIHeads

    __all__ += [
        "ClassStats",
        "class_stats_from_config",
        "load_counts_file",
        "add_iif_config",
        "FASA",
        "IIFFastRCNNOutputLayers",
        "IIFFCOS",
        "NormalizedMaskRCNNConvUpsampleHead",
        "IIFGeneralizedRCNN",
        "IIFRetinaNet",
        "IIFStandardROIHeads",
        "IIFCascadeROIHeads",
    ]
