"""Every iif-d2 setting a config makes must be used by the model it builds.

:func:`unused_settings` compares a config with the model built from it and names each iif-d2
setting the model would silently ignore (e.g. ``MODEL.ROI_BOX_HEAD.IIF.ENABLED`` with
detectron2's ``StandardROIHeads``, whose box predictor has no IIF), with the component it needs.
:func:`check_settings_used` raises on them; the trainer calls it on every model it builds.
"""

from typing import List

from torch import nn

__all__ = ["check_settings_used", "unused_settings"]


def _derives(module, type_name: str) -> bool:
    """Whether ``module`` is an instance of a class named ``type_name`` (no import needed)."""
    return any(c.__name__ == type_name for c in type(module).__mro__)


def unused_settings(cfg, model: nn.Module) -> List[str]:
    """One message per setting of ``cfg`` that ``model`` does not implement."""
    from .fast_rcnn import IIFFastRCNNOutputLayers

    model = getattr(model, "module", model)
    problems = []
    box = cfg.MODEL.ROI_BOX_HEAD
    predictors = [m for m in model.modules() if isinstance(m, IIFFastRCNNOutputLayers)]
    roi = (
        "ROI_HEADS.NAME IIFStandardROIHeads or IIFCascadeROIHeads (iif-d2's box predictor), "
        f"not {cfg.MODEL.ROI_HEADS.NAME!r}"
    )
    settings = {
        "MODEL.ROI_BOX_HEAD.IIF.ENABLED": box.IIF.ENABLED,
        "MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN.ENABLED": box.ADDITIVE_MARGIN.ENABLED,
        "MODEL.ROI_BOX_HEAD.COSINE.ENABLED": box.COSINE.ENABLED,
        "MODEL.ROI_BOX_HEAD.FASA.ENABLED": box.FASA.ENABLED,
        "MODEL.ROI_BOX_HEAD.IIF.CLS_SCORE_INIT 'constant'": box.IIF.CLS_SCORE_INIT == "constant",
    }
    if not predictors:
        problems += [f"{key} needs {roi}." for key, on in settings.items() if on]
    retinanet, fcos = cfg.MODEL.RETINANET.IIF.ENABLED, cfg.MODEL.FCOS.IIF.ENABLED
    if retinanet and not _derives(model, "IIFRetinaNet"):
        problems.append(
            "MODEL.RETINANET.IIF.ENABLED needs META_ARCHITECTURE 'IIFRetinaNet', not "
            f"{cfg.MODEL.META_ARCHITECTURE!r}."
        )
    if fcos and not _derives(model, "IIFFCOS"):
        problems.append(
            "MODEL.FCOS.IIF.ENABLED needs META_ARCHITECTURE 'IIFFCOS', not "
            f"{cfg.MODEL.META_ARCHITECTURE!r}."
        )
    mask = cfg.MODEL.ROI_MASK_HEAD
    if mask.INFERENCE.MASK_THRESHOLD != 0.5 and not _derives(model, "IIFGeneralizedRCNN"):
        problems.append(
            "MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD needs META_ARCHITECTURE "
            f"'IIFGeneralizedRCNN', not {cfg.MODEL.META_ARCHITECTURE!r}."
        )
    normalized = any(_derives(m, "NormalizedMaskRCNNConvUpsampleHead") for m in model.modules())
    if mask.NORMALIZED.SCALE != 20.0 and not normalized:
        problems.append(
            "MODEL.ROI_MASK_HEAD.NORMALIZED.SCALE needs ROI_MASK_HEAD.NAME "
            f"'NormalizedMaskRCNNConvUpsampleHead', not {mask.NAME!r}."
        )
    loader = cfg.DATALOADER
    if loader.REPEAT_FACTOR.ROUNDING != "stochastic" and (
        loader.SAMPLER_TRAIN != "RepeatFactorTrainingSampler"
    ):
        problems.append(
            "DATALOADER.REPEAT_FACTOR.ROUNDING needs DATALOADER.SAMPLER_TRAIN "
            f"'RepeatFactorTrainingSampler', not {loader.SAMPLER_TRAIN!r}."
        )
    return problems


def check_settings_used(cfg, model: nn.Module):
    """Raise ValueError naming every setting ``model`` would ignore (:func:`unused_settings`)."""
    problems = unused_settings(cfg, model)
    if problems:
        raise ValueError(
            "The config sets what the built model would ignore:\n  "
            + "\n  ".join(problems)
            + "\nUse the component named, or remove the setting."
        )
