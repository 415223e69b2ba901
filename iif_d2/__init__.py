"""iif-d2: Inverse Image Frequency for long-tailed detection and segmentation on detectron2.

Layers, each importing only those below it::

    engine/      training: trainer, hooks, checkpoints, launch      (detectron2.engine)
    evaluation/  LVIS/COCO evaluators for detectron2                 (detectron2.evaluation)
    modeling/    the IIF box predictor, heads and detectors; importing it registers them
    data/        training-set facts resolved once, loaders, samplers, built-in datasets
    config.py    add_iif_config: the config keys, one function per node
    weights.py, calibration.py   pure maths (IIF variants, margins, NorCal, FRACAL)
    lvis_eval/   detectron2-free LVIS evaluation (AP, AP-fixed, AP-pool, TIDE, FP analysis)
    utils/       compatibility, machine facts, random state, atomic files

``import iif_d2`` is light: every public name is imported on first use (:mod:`iif_d2.weights`
is pure torch). Taking ``add_iif_config`` or a model class from ``iif_d2`` also imports
:mod:`iif_d2.modeling`, which registers every component with detectron2's registries, so that
``from iif_d2 import add_iif_config`` is all a user script needs before ``build_model``.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access: ``import iif_d2`` alone
# loads neither torch nor detectron2, so the detectron2-free ``iif_d2.lvis_eval`` stays light)
_LAZY = {
    "VARIANTS": "iif_d2.weights",
    "iif_weights": "iif_d2.weights",
    "ClassStats": "iif_d2.data.class_stats",
    "load_counts_file": "iif_d2.data.class_stats",
    "resolve_training_set": "iif_d2.data.training_set",
    "add_iif_config": "iif_d2.config",
    "FASA": "iif_d2.modeling.fasa",
    "IIFFastRCNNOutputLayers": "iif_d2.modeling",
    "IIFFCOS": "iif_d2.modeling",
    "NormalizedMaskRCNNConvUpsampleHead": "iif_d2.modeling",
    "IIFGeneralizedRCNN": "iif_d2.modeling",
    "IIFRetinaNet": "iif_d2.modeling",
    "IIFStandardROIHeads": "iif_d2.modeling",
    "IIFCascadeROIHeads": "iif_d2.modeling",
}
# names whose use builds models from configs: taking them registers the components
_REGISTERS = {"add_iif_config", "FASA"}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        if name in _REGISTERS:
            importlib.import_module("iif_d2.modeling")
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'iif_d2' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
