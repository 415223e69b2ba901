"""iif-d2: Inverse Image Frequency for long-tailed detection and segmentation on detectron2.

``iif_d2.weights`` is pure torch and imports without detectron2. With detectron2 present,
importing the package applies the compatibility shims first (``iif_d2.compat``), then
registers ``IIFStandardROIHeads``, ``IIFCascadeROIHeads`` (ROI_HEADS_REGISTRY) and
``IIFGeneralizedRCNN`` (META_ARCH_REGISTRY).
"""

import importlib.util

from .weights import VARIANTS, iif_weights

__version__ = "0.1.0"
__all__ = ["VARIANTS", "iif_weights"]

if importlib.util.find_spec("detectron2") is not None:
    from . import (
        compat,  # noqa: F401  (must precede every other detectron2 import)
        data,  # noqa: F401  (registers the synthetic datasets)
    )
    from .class_stats import ClassStats, class_stats_from_config, load_counts_file
    from .config import add_iif_config
    from .fast_rcnn import IIFFastRCNNOutputLayers
    from .rcnn import IIFGeneralizedRCNN
    from .retinanet import IIFRetinaNet
    from .roi_heads import IIFCascadeROIHeads, IIFStandardROIHeads

    __all__ += [
        "ClassStats",
        "class_stats_from_config",
        "load_counts_file",
        "add_iif_config",
        "IIFFastRCNNOutputLayers",
        "IIFGeneralizedRCNN",
        "IIFRetinaNet",
        "IIFStandardROIHeads",
        "IIFCascadeROIHeads",
    ]
