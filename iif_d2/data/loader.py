"""The training dataset dicts as iif-d2's trainer uses them.

:func:`loader_dataset_dicts` is detectron2's ``get_detection_dataset_dicts`` with the training
loader's filtering; :func:`training_dicts` splits them into the images the loader trains on and
FASA's held-out ones (named by the ids file that :func:`iif_d2.data.training_set.
resolve_training_set` wrote), from one load per process; :func:`iterations_per_epoch` is the
epoch length of the training images.

:class:`ResumableTrainLoader` is detectron2's training loader (``build_detection_train_loader``:
the sampler's stream, aspect-ratio grouping, the mapper's augmentations) with every random
choice a function of (seed, position in the stream): the batches are computed from the
sampler's stream alone (:func:`iif_d2.data.samplers.position_batches`), and each sample is mapped
with the generators seeded from (seed, its position) (:func:`seed_generators`). A resumed run
(:meth:`ResumableTrainLoader.resume`) continues with exactly the batches, images and
augmentations of an uninterrupted one, for any NUM_WORKERS, without reading a skipped image.

One load per training run: the dicts :func:`~iif_d2.data.training_set.resolve_training_run`
loads for a training run are returned to its caller, which passes them to
:func:`training_dicts` (``Trainer(cfg, dataset_dicts=...)``: train_net.py does). At LVIS scale this
saves one load (~30 s) and its memory at every start.
"""

import contextlib
import ctypes
import functools
import itertools
import logging
import math
import os
import random
import signal
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.build import get_detection_dataset_dicts, trivial_batch_collator
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils import data as torchdata

from iif_d2.data.heldout import KEY as HELDOUT_KEY
from iif_d2.data.heldout import image_key, load_heldout_ids
from iif_d2.data.samplers import position_batches
from iif_d2.data.validate import DatasetError, load_checked
from iif_d2.utils.rng import rng_preserved

__all__ = [
    "ResumableTrainLoader",
    "build_resumable_train_loader",
    "holds_out",
    "epoch_images",
    "iterations_per_epoch",
    "loader_dataset_dicts",
    "seed_generators",
    "training_dicts",
]

logger = logging.getLogger(__name__)


def loader_dataset_dicts(cfg, names: Sequence[str] = None) -> List[Dict]:
    """detectron2's dicts of ``names`` (default DATASETS.TRAIN) with the training loader's
    filtering: FILTER_EMPTY_ANNOTATIONS, keypoints, proposals; checked once here
    (:func:`iif_d2.data.validate.validate_dataset_dicts`: broken data is an error, what
    detectron2 drops in training is dropped here, so the class statistics never count it)."""
    names = list(cfg.DATASETS.TRAIN if names is None else names)
    return load_checked(
        lambda: get_detection_dataset_dicts(
            names,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        ),
        names,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        masks=cfg.MODEL.MASK_ON,
    )


def holds_out(cfg) -> bool:
    """Whether FASA removes held-out images from DATASETS.TRAIN: FASA on, adapting
    (ADAPT_PERIOD != 0), and no DATASETS.HELDOUT.NAMES."""
    fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
    return bool(fasa.ENABLED and fasa.ADAPT_PERIOD != 0 and not cfg.DATASETS.HELDOUT.NAMES)


def training_dicts(cfg, dicts: Optional[List[Dict]] = None) -> Tuple[List[Dict], List[Dict]]:
    """The dicts the training loader uses, and FASA's held-out dicts, from one load.

    Args:
        cfg: the run's resolved config.
        dicts: DATASETS.TRAIN's dicts as :func:`loader_dataset_dicts` loaded them for ``cfg``
            (:func:`~iif_d2.data.training_set.resolve_training_run` returns them); None: load them.

    Returns:
        (train, heldout): ``heldout`` is [] without FASA adaptation, the dicts of
        DATASETS.HELDOUT.NAMES when named (nothing removed from training), else the images of
        DATASETS.TRAIN listed in DATASETS.HELDOUT.IMAGE_IDS_FILE, removed from ``train``.
    """
    if dicts is None:
        dicts = loader_dataset_dicts(cfg)
    fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
    if not (fasa.ENABLED and fasa.ADAPT_PERIOD != 0):
        return dicts, []
    if cfg.DATASETS.HELDOUT.NAMES:
        names = list(cfg.DATASETS.HELDOUT.NAMES)
        heldout = load_checked(
            lambda: get_detection_dataset_dicts(names, True),
            names,
            filter_empty=True,
            masks=cfg.MODEL.MASK_ON,
        )
        return dicts, heldout
    path = cfg.DATASETS.HELDOUT.IMAGE_IDS_FILE
    if not path:
        raise ValueError(
            f"FASA holds out training images, but {HELDOUT_KEY}.IMAGE_IDS_FILE is not resolved: "
            "build the config with iif_d2.engine.trainer.setup (train_net.py does) or call "
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


def epoch_images(cfg, train_dicts: Sequence[Dict]) -> float:
    """Images in one epoch: one pass over ``train_dicts`` (the loader's), each image counted as
    often as the sampler repeats it (with repeat-factor sampling: ceil(r) times, or r on average
    with stochastic rounding), as the authors' epochs count.
    """
    loader = cfg.DATALOADER
    if loader.SAMPLER_TRAIN != "RepeatFactorTrainingSampler":
        return float(len(train_dicts))
    from iif_d2.data.samplers import repeat_factors

    factors = repeat_factors(train_dicts, loader.REPEAT_THRESHOLD, loader.REPEAT_SQRT)
    ceil = loader.REPEAT_FACTOR.ROUNDING == "ceil"
    return float((factors.ceil() if ceil else factors).sum())


def iterations_per_epoch(cfg, train_dicts: Sequence[Dict]) -> int:
    """Iterations of one epoch (:func:`epoch_images`) at SOLVER.IMS_PER_BATCH; the unit of
    SOLVER.EPOCH_SCHEDULE and of FASA's START_ITER / ADAPT_PERIOD = -1.

    Returns:
        int: at least 1.
    """
    return max(1, math.ceil(epoch_images(cfg, train_dicts) / cfg.SOLVER.IMS_PER_BATCH))


def seed_generators(seed: int, *position: int) -> None:
    """Seed the global generators a mapper draws from (numpy's, Python's, torch's CPU one, not
    CUDA's; detectron2's augmentations use numpy's) from (``seed``, ``position``): the same
    arguments give the same draws, in any process.

    Args:
        seed: the run's data seed (>= 0).
        position: non-negative integers (a sample's position in the stream, a retry count).
    """
    words = [int(w) for w in np.random.SeedSequence([seed, *position]).generate_state(4)]
    np.random.seed(words[0])
    random.seed(words[1] << 32 | words[2])
    torch.default_generator.manual_seed(words[3] << 32 | words[0])


def _die_with(parent_pid: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ends as soon as the training process does,
    however it ends (Linux: ``PR_SET_PDEATHSIG``). A worker forked from the training process
    shares its open files, OUTPUT_DIR's lock included: a run killed with SIGKILL and resumed
    at once would be refused while its workers lived on."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PDEATHSIG
    if os.getppid() != parent_pid:  # the training process died before the signal was set
        os._exit(1)


class _Batches(torchdata.IterableDataset):
    """The mapped batches of :class:`ResumableTrainLoader`; a DataLoader worker ``w`` of ``n``
    maps batches ``start + w``, ``start + w + n``, ... (the DataLoader yields them in order).
    In the main process (NUM_WORKERS 0), the global generators are restored after each batch
    (once per batch: saving numpy's state costs ~0.1 ms)."""

    def __init__(self, loader: "ResumableTrainLoader"):
        self.loader = loader

    def __iter__(self):
        ld = self.loader
        info = torchdata.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches = ld.batches(ld.start)
        preserved = rng_preserved if info is None else contextlib.nullcontext
        for batch in itertools.islice(batches, worker, None, workers):
            with preserved():
                mapped = [ld.map(position, index) for position, index in batch]
            yield mapped


class ResumableTrainLoader:
    """A training loader whose stream is a function of (seed, position), resumable exactly.

    The batches are those of detectron2's ``build_detection_train_loader`` with NUM_WORKERS 0
    (the sampler's stream, aspect-ratio grouped on it or cut into consecutive batches), for
    every NUM_WORKERS; sample ``p`` of the shared stream is mapped after
    :func:`seed_generators` (seed, p), so its augmentation does not depend on which worker or
    run maps it. Iterating leaves this process's global generators as they were.

    Args:
        dataset_dicts: the training dicts.
        mapper: maps one dict to the model's input (detectron2's ``DatasetMapper``); a None
            result is replaced by another image, drawn from (seed, position, retry).
        sampler: a detectron2 training sampler (an infinite stream of indices, sharded by
            rank, seeded by its ``_seed``).
        batch_size: images per batch on this rank.
        aspect_ratio_grouping: batch wide and high images apart (detectron2's grouping);
            needs "width" and "height" in every dict.
        num_workers: DataLoader worker processes (0: map in this process).
    """

    def __init__(
        self,
        dataset_dicts: Sequence[Dict],
        mapper,
        sampler,
        batch_size: int,
        *,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
    ):
        self.wide = None
        if aspect_ratio_grouping:
            if any("width" not in d or "height" not in d for d in dataset_dicts):
                raise ValueError(
                    "DATALOADER.ASPECT_RATIO_GROUPING needs 'width' and 'height' in every "
                    "training dataset dict; add them, or set ASPECT_RATIO_GROUPING False."
                )
            self.wide = [d["width"] > d["height"] for d in dataset_dicts]
        self.dataset = DatasetFromList(list(dataset_dicts), copy=False)  # serialized, as d2's
        self.mapper, self.sampler = mapper, sampler
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.start = 0

    @property
    def seed(self) -> int:
        """The sampler's seed: the seed of the whole stream."""
        return int(self.sampler._seed)

    def batches(self, start: int = 0):
        """This rank's batches of (position, index) from batch ``start`` (no image read)."""
        return position_batches(
            iter(self.sampler), self.batch_size, self.wide, self.rank, self.world_size, start
        )

    def map(self, position: int, index: int):
        """The mapped dict of the sample at ``position`` of the stream (dataset ``index``); the
        global generators are left seeded for it (:func:`seed_generators`)."""
        for retry in itertools.count():
            seed_generators(self.seed, position, retry)
            record = self.dataset[index]
            try:
                mapped = self.mapper(record)
            except OSError as e:  # PIL: a truncated, unidentified or unreadable image file
                raise DatasetError(
                    f"Training image {record.get('file_name')!r} (image id "
                    f"{record.get('image_id')}) cannot be read ({e}): replace the file or "
                    "remove the image from the dataset."
                ) from e
            if mapped is not None:
                return mapped
            if retry == 3:
                logger.warning("The mapper failed 4 times in a row (last: image %d).", index)
            index = int(np.random.randint(len(self.dataset)))

    def state_dict(self) -> Dict[str, int]:
        """What a resumed run needs besides the iteration: the seed and the number of ranks."""
        return {"seed": self.seed, "world_size": self.world_size}

    def resume(self, start: int, state: Optional[Dict[str, int]] = None):
        """Continue the stream at batch ``start`` (the next iteration), with the seed of
        ``state`` (from :meth:`state_dict`; None: this loader's). Takes effect in the next
        ``iter``."""
        if state is not None:
            if state["world_size"] != self.world_size:
                logger.warning(
                    "Resuming on %d processes a run trained on %d: the data stream is sharded "
                    "otherwise from now on (not the uninterrupted run's).",
                    self.world_size,
                    state["world_size"],
                )
            self.sampler._seed = int(state["seed"])
        self.start = int(start)

    def __iter__(self):
        batches = _Batches(self)
        if self.num_workers == 0:
            yield from batches
            return
        loader = torchdata.DataLoader(
            batches,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=trivial_batch_collator,
            generator=torch.Generator().manual_seed(self.seed),  # not the global generator
            worker_init_fn=functools.partial(_die_with, os.getpid()),
        )
        yield from loader


def build_resumable_train_loader(cfg, dataset_dicts, sampler, mapper=None):
    """:class:`ResumableTrainLoader` with the settings of ``cfg`` (SOLVER.IMS_PER_BATCH over
    the ranks, DATALOADER.ASPECT_RATIO_GROUPING / NUM_WORKERS), detectron2's
    ``DatasetMapper(cfg, True)`` unless ``mapper`` is given."""
    from detectron2.data import DatasetMapper

    total, ranks = cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size()
    if total <= 0 or total % ranks:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {total} must be a positive multiple of the number of "
            f"processes ({ranks})."
        )
    return ResumableTrainLoader(
        dataset_dicts,
        DatasetMapper(cfg, True) if mapper is None else mapper,
        sampler,
        total // ranks,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
