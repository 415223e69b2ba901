"""The per-class weights and margins a model's config asks for, from the run's class counts.

The model reads the counts file that ``MODEL.CLASS_COUNTS`` names once the training-set facts
are resolved (:func:`iif_d2.resolve_training_set`, run by ``iif_d2.engine.trainer.setup``):
building a model loads no dataset, makes no collective call and writes nothing.
"""

from typing import Optional, Tuple

import torch

from iif_d2.calibration import FRACAL_FIX, fracal_divisors, fracal_prior, norcal_divisors
from iif_d2.data.class_stats import ClassStats, load_counts_file
from iif_d2.weights import additive_margins, iif_weights

__all__ = [
    "class_stats_from_config",
    "checked_class_stats",
    "iif_weights_from_config",
    "iif_weights_from_stats",
    "additive_margins_from_stats",
    "calibration_from_stats",
]


def class_stats_from_config(cfg) -> ClassStats:
    """The class counts of ``cfg``'s resolved ``MODEL.CLASS_COUNTS`` (SOURCE "file").

    Raises:
        ValueError: the counts are still to be computed from the dataset (not resolved).
    """
    node = cfg.MODEL.CLASS_COUNTS
    if node.SOURCE != "file":
        raise ValueError(
            f"MODEL.CLASS_COUNTS.SOURCE {node.SOURCE!r} is not resolved into a counts file: "
            "build the config with iif_d2.engine.trainer.setup (train_net.py does) or call "
            "iif_d2.resolve_training_set(cfg) before building the model; or set SOURCE 'file' "
            "with MODEL.CLASS_COUNTS.FILE (e.g. a run's iif_class_stats.json)."
        )
    if not node.FILE:
        raise ValueError(
            "MODEL.CLASS_COUNTS.SOURCE 'file' needs MODEL.CLASS_COUNTS.FILE (a counts CSV/JSON, "
            "e.g. iif_d2://lvis_v1_train.csv or a run's iif_class_stats.json)."
        )
    return load_counts_file(node.FILE)


def checked_class_stats(cfg, num_classes: int) -> ClassStats:
    """:func:`class_stats_from_config`, checked to cover the model's ``num_classes``: read once
    per model part and handed to the builders below."""
    stats = class_stats_from_config(cfg)
    if stats.num_classes != num_classes:
        raise ValueError(
            f"The class counts from {stats.source} cover {stats.num_classes} classes, but the "
            f"model has NUM_CLASSES = {num_classes}. Use counts of the training set the model "
            "is trained on, or set the model's NUM_CLASSES to the dataset's class count."
        )
    return stats


def iif_weights_from_stats(stats: ClassStats, iif, background: bool = True) -> torch.Tensor:
    """IIF weights (C+1 with background, else C) of the IIF config node ``iif`` (VARIANT,
    FREQUENCY, NORMALIZER, ALLOW_NONPOSITIVE_WEIGHTS).

    Raises:
        ValueError: every error of :func:`iif_d2.weights.iif_weights`.
    """
    f, k = stats.frequencies(iif.FREQUENCY, iif.NORMALIZER)
    return iif_weights(
        f,
        k,
        iif.VARIANT,
        background=background,
        allow_nonpositive=iif.ALLOW_NONPOSITIVE_WEIGHTS,
        class_names=stats.class_names,
    )


def iif_weights_from_config(
    cfg, num_classes: int, background: bool = True, iif=None
) -> torch.Tensor:
    """IIF weights of the IIF node ``iif`` (default ``cfg.MODEL.ROI_BOX_HEAD.IIF``; one-stage
    detectors pass ``cfg.MODEL.RETINANET.IIF`` or ``cfg.MODEL.FCOS.IIF``), the counts read
    once.

    Raises:
        ValueError: counts whose length is not ``num_classes``, and every error of
            :func:`iif_d2.weights.iif_weights`.
    """
    iif = cfg.MODEL.ROI_BOX_HEAD.IIF if iif is None else iif
    return iif_weights_from_stats(checked_class_stats(cfg, num_classes), iif, background)


def additive_margins_from_stats(stats: ClassStats, cfg) -> torch.Tensor:
    """Margins (C+1) of ``cfg.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN``, with the FREQUENCY and
    NORMALIZER of ``cfg.MODEL.ROI_BOX_HEAD.IIF``."""
    am, iif = cfg.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN, cfg.MODEL.ROI_BOX_HEAD.IIF
    f, k = stats.frequencies(iif.FREQUENCY, iif.NORMALIZER)
    return additive_margins(f, k, am.TYPE, am.TAU, class_names=stats.class_names)


def calibration_from_stats(
    stats: Optional[ClassStats], node
) -> Tuple[str, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``(mode, prior, divisors)`` of the CALIBRATION node ``node``: for "norcal", (None,
    n_c^GAMMA) with the image counts; for "fracal", (the VARIANT prior of the image
    frequencies, D_c^LAMBDA) with the file's fractal dimensions; for "off", (None, None).

    Raises:
        ValueError: a counts file without fractal dimensions or with another MAX_GRID (FRACAL),
            and the errors of :mod:`iif_d2.calibration`.
    """
    if node.MODE == "off":
        return "off", None, None
    if node.MODE == "norcal":
        return "norcal", None, norcal_divisors(stats.image_counts, node.NORCAL.GAMMA)
    if stats.fractal_dimensions is None:
        raise ValueError(f"{stats.source} holds no fractal_dimensions. {FRACAL_FIX}")
    if stats.fractal_max_grid != node.FRACAL.MAX_GRID:
        raise ValueError(
            f"{stats.source}: fractal dimensions counted up to a {stats.fractal_max_grid}-grid, "
            f"but MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.MAX_GRID = {node.FRACAL.MAX_GRID}. "
            "Recompute them (SOURCE 'dataset' or 'json') or set MAX_GRID to the file's."
        )
    f, k = stats.frequencies("image", "total")
    prior = fracal_prior(f, k, node.FRACAL.VARIANT, class_names=stats.class_names)
    return "fracal", prior, fracal_divisors(stats.fractal_dimensions, node.FRACAL.LAMBDA)
