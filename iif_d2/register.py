"""Registers every iif-d2 component with detectron2's registries: importing the modules that
define them is the registration (detectron2's ``@REGISTRY.register()`` decorators). Imported by
:func:`iif_d2.add_iif_config`."""

from . import data, fcos, mask_head, rcnn, retinanet, roi_heads  # noqa: F401
