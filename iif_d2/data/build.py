"""The training dataset dicts as iif-d2's trainer uses them.

One function builds them for the loader, the class statistics and the repeat factors, so that all
three see exactly the same images: detectron2's ``get_detection_dataset_dicts`` with the
loader's filtering, minus the images FASA holds out to measure its per-class loss.
"""

from detectron2.data.build import get_detection_dataset_dicts

__all__ = ["train_dataset_dicts", "heldout_dataset_dicts", "iterations_per_epoch"]


def _loader_dicts(cfg, names):
    return get_detection_dataset_dicts(
        list(names),
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def _holds_out(cfg) -> bool:
    fasa = cfg.MODEL.ROI_BOX_HEAD.get("FASA", None)
    return bool(fasa and fasa.ENABLED and not fasa.HELDOUT_DATASETS)


def train_dataset_dicts(cfg):
    """The dicts of ``DATASETS.TRAIN`` that the training loader uses.

    Args:
        cfg: a config with iif-d2's keys.

    Returns:
        list[dict]: detectron2's dataset dicts after FILTER_EMPTY_ANNOTATIONS (and keypoint
        filtering), without FASA's held-out images when FASA holds out a slice of the training set.
    """
    dicts = _loader_dicts(cfg, cfg.DATASETS.TRAIN)
    if _holds_out(cfg):
        from ..hooks import split_heldout

        fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
        dicts, _ = split_heldout(dicts, fasa.HELDOUT_FRACTION, fasa.HELDOUT_MAX_IMAGES)
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
    from ..hooks import split_heldout

    dicts = _loader_dicts(cfg, cfg.DATASETS.TRAIN)
    return split_heldout(dicts, fasa.HELDOUT_FRACTION, fasa.HELDOUT_MAX_IMAGES)[1]


def iterations_per_epoch(cfg) -> int:
    """Iterations of one pass over :func:`train_dataset_dicts` at SOLVER.IMS_PER_BATCH (repeat
    factors not counted): the epoch of FASA's START_ITER / ADAPT_PERIOD = -1.

    Args:
        cfg: a config with iif-d2's keys.

    Returns:
        int: at least 1.
    """
    return max(1, round(len(train_dataset_dicts(cfg)) / cfg.SOLVER.IMS_PER_BATCH))
