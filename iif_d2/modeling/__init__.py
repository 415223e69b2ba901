"""iif-d2's models. Importing this package registers every component with detectron2's
registries, as ``import point_rend`` does for PointRend:

* ``IIFStandardROIHeads``, ``IIFCascadeROIHeads`` (``ROI_HEADS_REGISTRY``);
* ``IIFGeneralizedRCNN``, ``IIFRetinaNet``, ``IIFFCOS`` (``META_ARCH_REGISTRY``);
* ``NormalizedMaskRCNNConvUpsampleHead`` (``ROI_MASK_HEAD_REGISTRY``);
* ``build_fcos_resnet_fpn_backbone`` (``BACKBONE_REGISTRY``);
* and, through :mod:`iif_d2.data`, the built-in datasets (SynthLT, LVIS-shaped).
"""

import iif_d2.data  # noqa: F401  (registers the built-in datasets)
from iif_d2.modeling.fast_rcnn import IIFFastRCNNOutputLayers
from iif_d2.modeling.fcos import IIFFCOS, build_fcos_resnet_fpn_backbone
from iif_d2.modeling.mask_head import NormalizedMaskRCNNConvUpsampleHead
from iif_d2.modeling.rcnn import IIFGeneralizedRCNN
from iif_d2.modeling.retinanet import IIFRetinaNet
from iif_d2.modeling.roi_heads import IIFCascadeROIHeads, IIFStandardROIHeads

__all__ = [
    "IIFCascadeROIHeads",
    "IIFFCOS",
    "IIFFastRCNNOutputLayers",
    "IIFGeneralizedRCNN",
    "IIFRetinaNet",
    "IIFStandardROIHeads",
    "NormalizedMaskRCNNConvUpsampleHead",
    "build_fcos_resnet_fpn_backbone",
]
