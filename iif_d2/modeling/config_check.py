"""Every iif-d2 setting a config makes must be used by the model it builds.

:func:`unused_settings` compares a config with the model built from it and names each iif-d2
setting the model would silently ignore (e.g. ``MODEL.ROI_BOX_HEAD.IIF.ENABLED`` with
detectron2's ``StandardROIHeads``, whose box predictor has no IIF), with the component it needs.
:func:`check_settings_used` raises on them; the trainer calls it on every model it builds.
It also raises when the model's class count (ROI_HEADS / RETINANET / FCOS ``NUM_CLASSES``) is
not the training set's (:func:`num_classes_problem`), whatever MODEL.CLASS_COUNTS.SOURCE is.
"""

from typing import Dict, List, Optional, Sequence, Tuple

from torch import nn

__all__ = ["check_settings_used", "num_classes_problem", "training_set_classes", "unused_settings"]


def _derives(module, type_name: str) -> bool:
    """Whether ``module`` is an instance of a class named ``type_name`` (no import needed)."""
    return any(c.__name__ == type_name for c in type(module).__mro__)


def unused_settings(cfg, model: nn.Module) -> List[str]:
    """One message per setting of ``cfg`` that ``model`` does not implement."""
    from iif_d2.modeling.fast_rcnn import IIFFastRCNNOutputLayers

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
        "MODEL.ROI_BOX_HEAD.CALIBRATION.MODE": box.CALIBRATION.MODE != "off",
        "MODEL.ROI_BOX_HEAD.FASA.ADAPTATION_LOSS": box.FASA.ADAPTATION_LOSS
        != "gt_boxes_class_mean",
        "MODEL.HEAD_INIT.SCHEME": cfg.MODEL.HEAD_INIT.SCHEME != "detectron2",
    }
    if not predictors:
        problems += [f"{key} needs {roi}." for key, on in settings.items() if on]
    for node, arch in (("RETINANET", "IIFRetinaNet"), ("FCOS", "IIFFCOS")):
        if _derives(model, arch):
            continue
        keys = cfg.MODEL[node]
        dense = {
            f"MODEL.{node}.IIF.ENABLED": keys.IIF.ENABLED,
            f"MODEL.{node}.EFL.ENABLED": keys.EFL.ENABLED,
        }
        problems += [
            f"{key} needs META_ARCHITECTURE {arch!r}, not {cfg.MODEL.META_ARCHITECTURE!r}."
            for key, on in dense.items()
            if on
        ]
    mask = cfg.MODEL.ROI_MASK_HEAD
    if mask.INFERENCE.MASK_THRESHOLD != 0.5 and not _derives(model, "IIFGeneralizedRCNN"):
        problems.append(
            "MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD needs META_ARCHITECTURE "
            f"'IIFGeneralizedRCNN', not {cfg.MODEL.META_ARCHITECTURE!r}."
        )
    if cfg.MODEL.KERNELS.CHANNELS_LAST and not _derives(model, "IIFGeneralizedRCNN"):
        problems.append(
            "MODEL.KERNELS.CHANNELS_LAST needs META_ARCHITECTURE 'IIFGeneralizedRCNN', not "
            f"{cfg.MODEL.META_ARCHITECTURE!r}."
        )
    matmul = any(_derives(m, "MatmulROIAlign") for m in model.modules())
    if cfg.MODEL.KERNELS.ROI_ALIGN != "torchvision" and not matmul:
        problems.append(f"MODEL.KERNELS.ROI_ALIGN needs {roi}.")
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


def training_set_classes(cfg) -> Optional[Tuple[str, int]]:
    """(name, class count) of the first registered dataset of DATASETS.TRAIN whose metadata
    has ``thing_classes`` (detectron2's data layer sets them; no dataset is loaded), else None.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in cfg.DATASETS.TRAIN:
        if name in DatasetCatalog.list():
            classes = MetadataCatalog.get(name).get("thing_classes", None)
            if classes:
                return name, len(classes)
    return None


def _num_classes_setting(cfg, model: nn.Module) -> Optional[Tuple[str, int]]:
    """(key, value) of the NUM_CLASSES the built model's class head uses; None without one."""
    heads = getattr(model, "roi_heads", None)
    if heads is not None and hasattr(heads, "num_classes"):
        return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if _derives(model, "RetinaNet"):
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    if _derives(model, "FCOS"):
        return "MODEL.FCOS.NUM_CLASSES", cfg.MODEL.FCOS.NUM_CLASSES
    return None


def num_classes_problem(
    cfg, model: nn.Module, dataset_dicts: Optional[Sequence[Dict]] = None
) -> Optional[str]:
    """Why the model's class count does not fit the training set, or None if it does.

    The training set's class count is that of its metadata's ``thing_classes``
    (:func:`training_set_classes`); without any, a category id in ``dataset_dicts`` (when
    given) at or beyond NUM_CLASSES is the problem. With MODEL.CLASS_COUNTS.SOURCE "file",
    the file's counts already have the model's class count (the box predictor checks it), so
    this also catches a counts file of another dataset.

    Args:
        cfg: the config the model was built from.
        model: the built model (possibly wrapped in DistributedDataParallel).
        dataset_dicts: the training dicts, if loaded.
    """
    setting = _num_classes_setting(cfg, getattr(model, "module", model))
    if setting is None:
        return None
    key, n = setting
    known = training_set_classes(cfg)
    if known is None:
        ids = [a["category_id"] for d in dataset_dicts or () for a in d.get("annotations", ())]
        if not ids or max(ids) < n:
            return None
        return (
            f"{key} is {n}, but the training set {tuple(cfg.DATASETS.TRAIN)} has category ids "
            f"up to {max(ids)}: set {key} to its class count (at least {max(ids) + 1})."
        )
    name, classes = known
    if classes == n:
        return None
    fix = f"set {key} {classes}"
    counts = cfg.MODEL.CLASS_COUNTS
    if counts.SOURCE == "file" and counts.FILE:
        fix += (
            " (and MODEL.CLASS_COUNTS.FILE to counts of those classes; the counts used now: "
            f"{counts.FILE})"
        )
    return (
        f"{key} is {n}, but the training set {name!r} has {classes} classes (its "
        f"thing_classes): {fix}, or train on a dataset with {n} classes."
    )


def check_settings_used(cfg, model: nn.Module):
    """Raise ValueError if the model's class count is not the training set's
    (:func:`num_classes_problem`), or naming every setting ``model`` would ignore
    (:func:`unused_settings`)."""
    problem = num_classes_problem(cfg, model)
    if problem:
        raise ValueError(problem)
    problems = unused_settings(cfg, model)
    if problems:
        raise ValueError(
            "The config sets what the built model would ignore:\n  "
            + "\n  ".join(problems)
            + "\nUse the component named, or remove the setting."
        )
