"""The training dataset dicts as iif-d2's trainer uses them.

One function builds them for the loader, the class statistics and the repeat factors, so that all
three see exactly the same images: detectron2's ``get_detection_dataset_dicts`` with the
loader's filtering, minus the images FASA holds out to measure its per-class loss. The held-out
dicts and the epoch length are kept per process (small), so that the large training dicts are
loaded only where they are needed: by the loader, and once on the main rank for the statistics.
"""

import math
from typing import Dict, List, Tuple

from detectron2.data.build import get_detection_dataset_dicts

__all__ = ["train_dataset_dicts", "heldout_dataset_dicts", "iterations_per_epoch", "holds_out"]

_HELDOUT: Dict[Tuple, List[Dict]] = {}
_EPOCH: Dict[Tuple, int] = {}


def _loader_dicts(cfg, names):
    return get_detection_dataset_dicts(
        list(names),
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def holds_out(cfg) -> bool:
    """Whether FASA removes a held-out slice from DATASETS.TRAIN: FASA on, adapting
    (ADAPT_PERIOD != 0), and no HELDOUT_DATASETS named."""
    fasa = cfg.MODEL.ROI_BOX_HEAD.get("FASA", None)
    return bool(fasa and fasa.ENABLED and fasa.ADAPT_PERIOD != 0 and not fasa.HELDOUT_DATASETS)


def _key(cfg) -> Tuple:
    """Everything the training dicts (and the epoch length) depend on."""
    fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
    return (
        tuple(cfg.DATASETS.TRAIN),
        cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        cfg.MODEL.KEYPOINT_ON,
        cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE,
        cfg.MODEL.LOAD_PROPOSALS,
        tuple(cfg.DATASETS.PROPOSAL_FILES_TRAIN),
        holds_out(cfg),
        fasa.HELDOUT_FRACTION,
        fasa.HELDOUT_MAX_IMAGES,
    )


def train_dataset_dicts(cfg):
    """The dicts of ``DATASETS.TRAIN`` that the training loader uses.

    Args:
        cfg: a config with iif-d2's keys.

    Returns:
        list[dict]: detectron2's dataset dicts after FILTER_EMPTY_ANNOTATIONS (and keypoint
        filtering), without FASA's held-out images when FASA holds out a slice of the training set.
    """
    dicts = _loader_dicts(cfg, cfg.DATASETS.TRAIN)
    if holds_out(cfg):
        from ..hooks import split_heldout

        fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
        dicts, _HELDOUT[_key(cfg)] = split_heldout(
            dicts, fasa.HELDOUT_FRACTION, fasa.HELDOUT_MAX_IMAGES
        )
    return dicts


def heldout_dataset_dicts(cfg):
    """The images on which FASA measures its per-class classification loss.

    Args:
        cfg: a config with iif-d2's keys and ``MODEL.ROI_BOX_HEAD.FASA.ENABLED``.

    Returns:
        list[dict]: ``FASA.HELDOUT_DATASETS`` when set (used whole, nothing is removed from
        training), else the slice of ``DATASETS.TRAIN`` that :func:`train_dataset_dicts` removes.
    """
    fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
    if fasa.HELDOUT_DATASETS:
        return get_detection_dataset_dicts(list(fasa.HELDOUT_DATASETS), filter_empty=True)
    if _key(cfg) not in _HELDOUT:
        train_dataset_dicts(cfg)
    return _HELDOUT[_key(cfg)]


def iterations_per_epoch(cfg) -> int:
    """Iterations of one epoch at SOLVER.IMS_PER_BATCH: one pass over
    :func:`train_dataset_dicts`, each image counted as often as the sampler repeats it (with
    repeat-factor sampling: ceil(r) times, or r on average with stochastic rounding), as the
    authors' epochs count; the unit of FASA's START_ITER / ADAPT_PERIOD = -1.

    Args:
        cfg: a config with iif-d2's keys.

    Returns:
        int: at least 1.
    """
    key = _key(cfg) + (cfg.DATALOADER.SAMPLER_TRAIN, cfg.SOLVER.IMS_PER_BATCH)
    if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
        key += (
            cfg.DATALOADER.REPEAT_THRESHOLD,
            cfg.DATALOADER.REPEAT_SQRT,
            cfg.DATALOADER.REPEAT_FACTOR.ROUNDING,
        )
    if key not in _EPOCH:
        dicts = train_dataset_dicts(cfg)
        images = float(len(dicts))
        if cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
            from ..samplers import repeat_factors

            factors = repeat_factors(
                dicts, cfg.DATALOADER.REPEAT_THRESHOLD, cfg.DATALOADER.REPEAT_SQRT
            )
            ceil = cfg.DATALOADER.REPEAT_FACTOR.ROUNDING == "ceil"
            images = float((factors.ceil() if ceil else factors).sum())
        _EPOCH[key] = max(1, math.ceil(images / cfg.SOLVER.IMS_PER_BATCH))
    return _EPOCH[key]
