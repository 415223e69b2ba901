"""The training dataset dicts as iif-d2's trainer uses them.

:func:`loader_dataset_dicts` is detectron2's ``get_detection_dataset_dicts`` with the training
loader's filtering; :func:`training_dicts` splits them into the images the loader trains on and
FASA's held-out ones (named by the ids file that :func:`iif_d2.data.training_set.
resolve_training_set` wrote), from one load per process; :func:`iterations_per_epoch` is the
epoch length of the training images.

One load per training run: the dicts :func:`~iif_d2.data.training_set.resolve_training_set`
loads for a training run are handed over (:func:`hand_over`) to the trainer's
:func:`training_dicts`, which takes them if DATASETS.TRAIN, its registered loaders and the
loader's filter settings are unchanged, else loads again. At LVIS scale this saves one load
(~30 s) and its memory at every start. At most one hand-over is held; :func:`training_dicts`
releases it either way.
"""

import math
from typing import Dict, List, Sequence, Tuple

from detectron2.data.build import get_detection_dataset_dicts

from .heldout import KEY as HELDOUT_KEY
from .heldout import image_key, load_heldout_ids

__all__ = [
    "hand_over",
    "holds_out",
    "iterations_per_epoch",
    "loader_dataset_dicts",
    "training_dicts",
]

_HANDED_OVER: Dict[tuple, List[Dict]] = {}  # at most one entry: _load_key(cfg) -> dicts


def _load_key(cfg) -> tuple:
    """What a load of DATASETS.TRAIN depends on: the names, their registered loader functions
    (a re-registered name loads anew), and the loader's filter settings."""
    from detectron2.data import DatasetCatalog

    names = tuple(cfg.DATASETS.TRAIN)
    loaders = tuple(DatasetCatalog.data.get(n) for n in names)  # not .get(): it would load
    return (
        names,
        loaders,
        bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS),
        cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        tuple(cfg.DATASETS.PROPOSAL_FILES_TRAIN) if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def hand_over(cfg, dicts: List[Dict]):
    """Keep ``dicts`` (loaded by :func:`loader_dataset_dicts` for ``cfg``, unmodified) for
    this process's next :func:`training_dicts` of the same training set; replaces any earlier
    hand-over."""
    _HANDED_OVER.clear()
    _HANDED_OVER[_load_key(cfg)] = dicts


def loader_dataset_dicts(cfg, names: Sequence[str] = None) -> List[Dict]:
    """detectron2's dicts of ``names`` (default DATASETS.TRAIN) with the training loader's
    filtering: FILTER_EMPTY_ANNOTATIONS, keypoints, proposals."""
    return get_detection_dataset_dicts(
        list(cfg.DATASETS.TRAIN if names is None else names),
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def holds_out(cfg) -> bool:
    """Whether FASA removes held-out images from DATASETS.TRAIN: FASA on, adapting
    (ADAPT_PERIOD != 0), and no DATASETS.HELDOUT.NAMES."""
    fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
    return bool(fasa.ENABLED and fasa.ADAPT_PERIOD != 0 and not cfg.DATASETS.HELDOUT.NAMES)


def training_dicts(cfg) -> Tuple[List[Dict], List[Dict]]:
    """The dicts the training loader uses, and FASA's held-out dicts, from one load (the
    dicts handed over by this process's training-set resolution, if any: :func:`hand_over`).

    Returns:
        (train, heldout): ``heldout`` is [] without FASA adaptation, the dicts of
        DATASETS.HELDOUT.NAMES when named (nothing removed from training), else the images of
        DATASETS.TRAIN listed in DATASETS.HELDOUT.IMAGE_IDS_FILE, removed from ``train``.
    """
    dicts = _HANDED_OVER.pop(_load_key(cfg), None)
    _HANDED_OVER.clear()  # a stale hand-over is not kept
    if dicts is None:
        dicts = loader_dataset_dicts(cfg)
    fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
    if not (fasa.ENABLED and fasa.ADAPT_PERIOD != 0):
        return dicts, []
    if cfg.DATASETS.HELDOUT.NAMES:
        return dicts, get_detection_dataset_dicts(list(cfg.DATASETS.HELDOUT.NAMES), True)
    path = cfg.DATASETS.HELDOUT.IMAGE_IDS_FILE
    if not path:
        raise ValueError(
            f"FASA holds out training images, but {HELDOUT_KEY}.IMAGE_IDS_FILE is not resolved: "
            "build the config with iif_d2.engine.setup (train_net.py does) or call "
            "iif_d2.resolve_training_set(cfg) before training."
        )
    ids = load_heldout_ids(path)
    train = [d for d in dicts if image_key(d) not in ids]
    heldout = [d for d in dicts if image_key(d) in ids]
    if len(heldout) != len(ids):
        raise ValueError(
            f"{path} names {len(ids)} held-out images, but {len(heldout)} of them are in "
            f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)}: the training set changed since the "
            "file was written. Delete it and resolve again (start a new OUTPUT_DIR)."
        )
    return train, heldout


def iterations_per_epoch(cfg, train_dicts: Sequence[Dict]) -> int:
    """Iterations of one epoch at SOLVER.IMS_PER_BATCH: one pass over ``train_dicts`` (the
    loader's), each image counted as often as the sampler repeats it (with repeat-factor
    sampling: ceil(r) times, or r on average with stochastic rounding), as the authors' epochs
    count; the unit of FASA's START_ITER / ADAPT_PERIOD = -1.

    Returns:
        int: at least 1.
    """
    images = float(len(train_dicts))
    loader = cfg.DATALOADER
    if loader.SAMPLER_TRAIN == "RepeatFactorTrainingSampler":
        from ..samplers import repeat_factors

        factors = repeat_factors(train_dicts, loader.REPEAT_THRESHOLD, loader.REPEAT_SQRT)
        ceil = loader.REPEAT_FACTOR.ROUNDING == "ceil"
        images = float((factors.ceil() if ceil else factors).sum())
    return max(1, math.ceil(images / cfg.SOLVER.IMS_PER_BATCH))
