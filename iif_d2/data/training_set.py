"""The training-set facts iif-d2's models need, resolved once per run before the model is built.

:func:`resolve_training_set` runs in :func:`iif_d2.engine.trainer.setup` (hence in ``train_net.py``,
``--eval-only`` included) and in the tools, on an unfrozen config:

1. on the main rank only, load the training dicts once (:func:`compute_training_set_facts`);
   count the classes on the **full** training set, before any hold-out (the authors' weights
   are those of all of LVIS v1 train); choose FASA's held-out images
   (:func:`iif_d2.data.heldout.split_heldout`, never a class's last image); compute the epoch
   length of the remaining images;
2. send these facts to every rank (one collective; an error on the main rank is raised on all);
3. write ``OUTPUT_DIR/iif_class_stats.json`` and ``OUTPUT_DIR/iif_heldout.json``;
4. put into the config what the model and hooks read: MODEL.CLASS_COUNTS (SOURCE "file", FILE
   the stats file), DATASETS.HELDOUT.IMAGE_IDS_FILE, and FASA's START_ITER / ADAPT_PERIOD in
   iterations.

The model then only reads the counts file: no dataset load, no collective and no write while it
is built, and the run's saved ``config.yaml`` evaluates without the training annotations.
"""

import dataclasses
import logging
import os
from typing import List, Optional

from iif_d2.calibration import box_counting_dimensions
from iif_d2.data.class_stats import (
    STATS_FILENAME,
    ClassStats,
    box_centres,
    count_dataset_dicts,
    load_counts_file,
)
from iif_d2.data.heldout import (
    HeldoutSplit,
    image_key,
    load_heldout_ids,
    save_heldout_ids,
    split_heldout,
)
from iif_d2.data.loader import (
    epoch_images,
    holds_out,
    iterations_per_epoch,
    loader_dataset_dicts,
)
from iif_d2.utils.io import write_json_atomic

__all__ = [
    "HELDOUT_FILENAME",
    "TrainingSetFacts",
    "compute_class_stats",
    "check_epoch_schedule",
    "check_schedule_opts",
    "compute_training_set_facts",
    "epoch_schedule",
    "needs_class_counts",
    "needs_fractal_dimensions",
    "resolve_training_run",
    "resolve_training_set",
]

logger = logging.getLogger(__name__)
HELDOUT_FILENAME = "iif_heldout.json"
HELDOUT_SEED = 0


@dataclasses.dataclass
class TrainingSetFacts:
    """What :func:`compute_training_set_facts` found.

    Attributes:
        stats: class counts of the full training set, or None when no component needs them.
        heldout: FASA's held-out split, or None when nothing is held out.
        iterations_per_epoch: epoch length of the training images, or None when not needed.
        epoch_images: the images of one epoch (repeats counted), or None when not needed.
    """

    stats: Optional[ClassStats] = None
    heldout: Optional[HeldoutSplit] = None
    iterations_per_epoch: Optional[int] = None
    epoch_images: Optional[float] = None


def needs_class_counts(cfg) -> bool:
    """Whether a component of ``cfg`` is built on class frequencies (IIF, margins, FASA,
    NorCal/FRACAL)."""
    box = cfg.MODEL.ROI_BOX_HEAD
    return bool(
        box.IIF.ENABLED
        or box.ADDITIVE_MARGIN.ENABLED
        or box.FASA.ENABLED
        or box.CALIBRATION.MODE != "off"
        or cfg.MODEL.RETINANET.IIF.ENABLED
        or cfg.MODEL.FCOS.IIF.ENABLED
    )


def needs_fractal_dimensions(cfg) -> bool:
    """Whether ``cfg`` needs the classes' fractal dimensions (FRACAL)."""
    return cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.MODE == "fracal"


def _has_fractal(stats: ClassStats, cfg) -> bool:
    grid = cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.MAX_GRID
    return stats.fractal_dimensions is not None and stats.fractal_max_grid == grid


def _needs_epoch(cfg) -> bool:
    fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
    fasa_epochs = fasa.ENABLED and (fasa.START_ITER < 0 or fasa.ADAPT_PERIOD < 0)
    return bool(fasa_epochs or check_epoch_schedule(cfg))


def check_epoch_schedule(cfg) -> bool:
    """Whether ``cfg`` states its schedule in epochs (SOLVER.EPOCH_SCHEDULE.EPOCHS > 0).

    Raises:
        ValueError: STEPS set without EPOCHS (they would be ignored), or not increasing within
            (0, EPOCHS).
    """
    node = cfg.SOLVER.EPOCH_SCHEDULE
    epochs, steps = node.EPOCHS, tuple(node.STEPS)
    if epochs < 0:
        raise ValueError(f"SOLVER.EPOCH_SCHEDULE.EPOCHS {epochs} must be >= 0 (0: off).")
    if epochs == 0:
        if steps:
            raise ValueError(
                f"SOLVER.EPOCH_SCHEDULE.STEPS {steps} set, but EPOCHS is 0 (off): they would be "
                "ignored; set EPOCHS (e.g. 24) or use SOLVER.STEPS."
            )
        return False
    if any(not 0 < s < epochs for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(
            f"SOLVER.EPOCH_SCHEDULE.STEPS {steps} must increase strictly within (0, EPOCHS "
            f"{epochs}), e.g. (16, 22) of 24."
        )
    return True


def check_schedule_opts(cfg, opts) -> None:
    """Refuse command-line ``opts`` that set SOLVER.MAX_ITER or SOLVER.STEPS for a config whose
    schedule is in epochs: the epochs would replace them.

    Raises:
        ValueError: naming the key and the fix.
    """
    keys = {str(k) for k in list(opts)[::2]} & {"SOLVER.MAX_ITER", "SOLVER.STEPS"}
    if keys and cfg.SOLVER.EPOCH_SCHEDULE.EPOCHS > 0:
        raise ValueError(
            f"{' and '.join(sorted(keys))} given, but the config's schedule is in epochs "
            f"(SOLVER.EPOCH_SCHEDULE.EPOCHS {cfg.SOLVER.EPOCH_SCHEDULE.EPOCHS}), which would "
            "replace it: add SOLVER.EPOCH_SCHEDULE.EPOCHS 0 to train in iterations, or set "
            "SOLVER.EPOCH_SCHEDULE.EPOCHS / STEPS instead."
        )


def epoch_schedule(epochs: int, steps, iterations: int):
    """SOLVER.MAX_ITER and SOLVER.STEPS for ``epochs`` (decay after ``steps``) of ``iterations``
    each."""
    return epochs * iterations, tuple(s * iterations for s in steps)


def _dataset_names(cfg) -> List[str]:
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError(
            "The class counts come from DATASETS.TRAIN, which is empty. Name the training "
            "dataset, or set MODEL.CLASS_COUNTS.SOURCE 'file' with a FILE (e.g. "
            "iif_d2://lvis_v1_train.csv)."
        )
    return names


def _num_classes(names, dicts) -> int:
    """The training dataset's class count: its thing_classes, else the largest id + 1."""
    from detectron2.data import MetadataCatalog

    classes = getattr(MetadataCatalog.get(names[0]), "thing_classes", None)
    if classes:
        return len(classes)
    ids = [a["category_id"] for d in dicts for a in d.get("annotations", ())]
    return max(ids, default=-1) + 1


def compute_class_stats(cfg, dicts=None) -> ClassStats:
    """The class counts MODEL.CLASS_COUNTS names, computed here (no collective, no write);
    for FRACAL also the classes' fractal dimensions, on the boxes of the full training set.

    Args:
        cfg: a config with iif-d2's keys.
        dicts: the loader's dicts of DATASETS.TRAIN, if already loaded (SOURCE "dataset", or
            FRACAL with SOURCE "json").

    Raises:
        ValueError: FRACAL with SOURCE "file" and a file without the fractal dimensions of
            FRACAL.MAX_GRID (e.g. a counts CSV): the message names the fix.
    """
    stats = _class_counts(cfg, dicts)
    if not needs_fractal_dimensions(cfg) or _has_fractal(stats, cfg):
        return stats
    if cfg.MODEL.CLASS_COUNTS.SOURCE == "file":
        from iif_d2.calibration import FRACAL_FIX

        raise ValueError(
            f"{stats.source} holds no fractal_dimensions for "
            f"FRACAL.MAX_GRID {cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.MAX_GRID}. {FRACAL_FIX}"
        )
    names = _dataset_names(cfg)
    dicts = loader_dataset_dicts(cfg) if dicts is None else dicts
    centres, labels = box_centres(dicts, "+".join(names))
    if labels.size and (labels.min() < 0 or labels.max() >= stats.num_classes):
        raise ValueError(
            f"dataset {'+'.join(names)!r}: category ids outside [0, {stats.num_classes}) of "
            f"the class counts of {stats.source}; count the training set FRACAL measures."
        )
    grid = cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.MAX_GRID
    dims = box_counting_dimensions(centres, labels, stats.num_classes, grid)
    return dataclasses.replace(stats, fractal_dimensions=dims.tolist(), fractal_max_grid=grid)


def _class_counts(cfg, dicts=None) -> ClassStats:
    node = cfg.MODEL.CLASS_COUNTS
    if node.SOURCE == "file":
        if not node.FILE:
            raise ValueError(
                "MODEL.CLASS_COUNTS.SOURCE 'file' needs MODEL.CLASS_COUNTS.FILE (a counts "
                "CSV/JSON, e.g. iif_d2://lvis_v1_train.csv or a run's iif_class_stats.json)."
            )
        stats = load_counts_file(node.FILE)
        _check_class_names(stats, cfg, node.FILE)
        return stats
    if node.SOURCE == "json":
        from detectron2.data import MetadataCatalog

        names = _dataset_names(cfg)
        if len(names) != 1:
            raise ValueError(
                "MODEL.CLASS_COUNTS.SOURCE 'json' takes exactly one training dataset; with "
                "several, use SOURCE 'dataset'."
            )
        json_file = getattr(MetadataCatalog.get(names[0]), "json_file", None)
        if not json_file:
            raise ValueError(
                f"Dataset {names[0]!r} has no json_file in its metadata, so "
                "MODEL.CLASS_COUNTS.SOURCE 'json' cannot read it; use 'dataset' or 'file'."
            )
        return load_counts_file(json_file)
    if node.SOURCE != "dataset":
        raise ValueError(
            f"MODEL.CLASS_COUNTS.SOURCE {node.SOURCE!r} is not one of 'dataset', 'json', 'file'."
        )
    from detectron2.data import MetadataCatalog

    names = _dataset_names(cfg)
    dicts = loader_dataset_dicts(cfg) if dicts is None else dicts
    stats = count_dataset_dicts(dicts, _num_classes(names, dicts), "+".join(names))
    stats.class_names = getattr(MetadataCatalog.get(names[0]), "thing_classes", None)
    return stats


def _check_class_names(stats: ClassStats, cfg, path: str) -> None:
    """A counts file whose class names are the training set's in another order, or mostly
    other names: its counts would weight other classes. (A few names may differ: detectron2
    names LVIS classes by their first synonym, e.g. 'horned_cow' for 'bull'.)"""
    from detectron2.data import MetadataCatalog

    names = list(cfg.DATASETS.TRAIN)
    classes = getattr(MetadataCatalog.get(names[0]), "thing_classes", None) if names else None
    counted = stats.class_names
    if not classes or not counted or len(classes) != len(counted):
        return  # no names to compare; a class count that differs is the model's check
    differ = [i for i, (a, b) in enumerate(zip(counted, classes)) if a != b]
    if not differ or (set(counted) != set(classes) and 2 * len(differ) <= len(classes)):
        return
    i = differ[0]
    how = "in another order" if set(counted) == set(classes) else "of other classes"
    raise ValueError(
        f"MODEL.CLASS_COUNTS.FILE {path} counts classes {how} than the training set "
        f"{names[0]!r} (class {i}: {counted[i]!r} there, {classes[i]!r} here): give the counts "
        "of this training set (python -m iif_d2.cli --dataset NAME --save FILE) or "
        "MODEL.CLASS_COUNTS.SOURCE dataset."
    )


def _log_json_counts_beyond_training(stats: ClassStats, dicts, cfg) -> None:
    """SOURCE "json" counts what the json says; log what of it training does not see (the
    annotations and images the training load drops, as detectron2 would), so a user who wants
    counts of what is trained on knows to use SOURCE "dataset"."""
    trained = count_dataset_dicts(dicts, stats.num_classes, "+".join(_dataset_names(cfg)))
    extra = [
        (i, stats.instance_counts[i] - trained.instance_counts[i])
        for i in range(stats.num_classes)
        if stats.instance_counts[i] != trained.instance_counts[i]
        or stats.image_counts[i] != trained.image_counts[i]
    ]
    if extra:
        i, most = max(extra, key=lambda x: abs(x[1]))
        logger.warning(
            "MODEL.CLASS_COUNTS.SOURCE 'json': the counts of %s differ from those of the %d "
            "training images for %d class(es) (most: class %d, %+d instances in the json), as "
            "the training load dropped annotations or images (see above); IIF uses the json's "
            "counts. SOURCE 'dataset' counts what training sees.",
            stats.source,
            len(dicts),
            len(extra),
            i,
            most,
        )


def compute_training_set_facts(cfg, training: bool = True) -> TrainingSetFacts:
    """Everything :func:`resolve_training_set` needs, on this process only: the training dicts
    are loaded at most once; nothing is written.

    Args:
        cfg: a config with iif-d2's keys.
        training: False for evaluation: only the class counts are computed.
    """
    return _compute(cfg, training)[0]


def _compute(cfg, training: bool):
    """:func:`compute_training_set_facts` and the training dicts it loaded (or None)."""
    facts = TrainingSetFacts()
    counts = needs_class_counts(cfg)
    heldout = training and holds_out(cfg) and not cfg.DATASETS.HELDOUT.IMAGE_IDS_FILE
    epoch = training and _needs_epoch(cfg)
    source = cfg.MODEL.CLASS_COUNTS.SOURCE
    fractal = counts and needs_fractal_dimensions(cfg) and source == "json"
    # SOURCE "json" while training: the loaded dicts (the trainer reuses them) tell what of
    # the json's counts training drops
    compare = counts and training and source == "json"
    needs_dicts = heldout or epoch or fractal or compare or (counts and source == "dataset")
    dicts = loader_dataset_dicts(cfg) if needs_dicts else None
    if counts:
        facts.stats = compute_class_stats(cfg, dicts)  # the full training set
    if compare:
        _log_json_counts_beyond_training(facts.stats, dicts, cfg)
    train = dicts
    if heldout:
        node = cfg.DATASETS.HELDOUT
        facts.heldout = split_heldout(dicts, node.FRACTION, node.MAX_IMAGES, HELDOUT_SEED)
        train = facts.heldout.train
    elif epoch and holds_out(cfg):  # ids resolved earlier: the epoch is that of the rest
        ids = load_heldout_ids(cfg.DATASETS.HELDOUT.IMAGE_IDS_FILE)
        train = [d for d in dicts if image_key(d) not in ids]
    if epoch:
        facts.epoch_images = epoch_images(cfg, train)
        facts.iterations_per_epoch = iterations_per_epoch(cfg, train)
    return facts, dicts


def _on_main_rank(fn):
    """``fn()`` on the main rank, its result on every rank; its error raised on every rank."""
    from detectron2.utils import comm

    payload = None
    if comm.is_main_process():
        try:
            payload = (fn(), None)
        except (ValueError, FileNotFoundError, KeyError, OSError) as e:
            payload = (None, e)
    if comm.get_world_size() > 1:
        payload = comm.all_gather(payload)[0]
    result, error = payload
    if error is not None:
        raise error
    return result


def _counts_from_run_folder(cfg) -> Optional[str]:
    """For evaluation: the ``iif_class_stats.json`` beside MODEL.WEIGHTS, if there is one."""
    weights = cfg.MODEL.WEIGHTS
    if not weights or "://" in weights:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), STATS_FILENAME)
    return path if os.path.isfile(path) else None


def _check_resume(path: str, stats: ClassStats):
    if not os.path.isfile(path):
        return
    previous = load_counts_file(path)
    if (previous.image_counts, previous.instance_counts, previous.num_images) != (
        stats.image_counts,
        stats.instance_counts,
        stats.num_images,
    ):
        raise ValueError(
            f"Resuming with other class counts than the run's {path} ({stats.source}): the "
            "IIF weights would change mid-run. Resume with the run's training set, or start a "
            "new OUTPUT_DIR."
        )


def _log(facts: TrainingSetFacts, cfg):
    if facts.stats is not None:
        s = facts.stats
        logger.info(
            "Class statistics from %s (full training set): %d classes, %s images, %d instances.",
            s.source,
            s.num_classes,
            s.num_images,
            sum(s.instance_counts),
        )
    if facts.heldout is not None:
        h = facts.heldout
        msg = f"FASA holds out {len(h.heldout)} of {len(h.train) + len(h.heldout)} images"
        if h.skipped_images:
            msg += (
                f"; {h.skipped_images} drawn images stayed in training because each held the "
                f"last training image of a class (classes {h.protected_classes[:20]}"
                + (" ..." if len(h.protected_classes) > 20 else "")
                + ")"
            )
        logger.info(msg + ".")
    if facts.iterations_per_epoch is not None:
        logger.info(
            "One epoch is %d iterations (%.0f images, repeats counted, at %d per batch).",
            facts.iterations_per_epoch,
            facts.epoch_images,
            cfg.SOLVER.IMS_PER_BATCH,
        )


def resolve_training_set(cfg, training: bool = True, resume: bool = False):
    """Resolve the training-set facts into ``cfg`` (in place; it must not be frozen).

    :func:`resolve_training_run` with the same arguments, without the dicts it loaded.

    Returns:
        cfg
    """
    return resolve_training_run(cfg, training, resume)[0]


def resolve_training_run(cfg, training: bool = True, resume: bool = False):
    """Resolve the training-set facts into ``cfg`` (in place; it must not be frozen), and return
    the training dicts loaded for them, so that the trainer need not load them again
    (``Trainer(cfg, dataset_dicts=dicts)``).

    A collective call in a multi-process job: every rank calls it (``setup`` does).

    Args:
        cfg: a config with iif-d2's keys; OUTPUT_DIR is where the facts are saved.
        training: False for ``--eval-only``: only the class counts, taken from MODEL.WEIGHTS's
            run folder when it holds ``iif_class_stats.json``, else computed.
        resume: the run resumes: its saved class counts must equal the ones computed now.

    Returns:
        (cfg, dicts): ``dicts`` is DATASETS.TRAIN's dicts as
        :func:`~iif_d2.data.loader.loader_dataset_dicts` loaded them, or None where this
        process loaded none (another rank than the main one, evaluation, or facts that need no
        dicts).
    """
    from detectron2.utils import comm

    from iif_d2.config import apply_deprecated_keys

    if cfg.is_frozen():
        raise ValueError("resolve_training_set needs an unfrozen config (call it before freeze).")
    apply_deprecated_keys(cfg)
    counts = cfg.MODEL.CLASS_COUNTS
    if not training and needs_class_counts(cfg) and counts.SOURCE != "file":
        found = _counts_from_run_folder(cfg)
        if (
            found
            and needs_fractal_dimensions(cfg)
            and not _has_fractal(load_counts_file(found), cfg)
        ):
            logger.info("%s holds no fractal dimensions for FRACAL: computing them.", found)
            found = None
        if found:
            logger.info("Class statistics of the run folder of MODEL.WEIGHTS: %s", found)
            counts.SOURCE, counts.FILE = "file", found
    loaded = []  # the main rank's dicts stay in this process: only the facts are gathered

    def compute():
        facts, dicts = _compute(cfg, training)
        loaded.append(dicts if training else None)
        return facts

    facts = _on_main_rank(compute)
    if comm.is_main_process():
        _log(facts, cfg)
    out = cfg.OUTPUT_DIR
    if (facts.stats is not None or facts.heldout is not None) and not out:
        raise ValueError("OUTPUT_DIR is empty: set it; the class statistics are saved there.")
    writer = comm.get_local_rank() == 0  # one writer per machine (OUTPUT_DIR may be local)
    if facts.stats is not None:
        path = os.path.join(out, STATS_FILENAME)
        if resume:
            _check_resume(path, facts.stats)
        if writer and not _same_file(counts.FILE, path):
            write_json_atomic(path, facts.stats.to_dict())
        counts.SOURCE, counts.FILE = "file", path
    if facts.heldout is not None:
        path = os.path.join(out, HELDOUT_FILENAME)
        if writer:
            node = cfg.DATASETS.HELDOUT
            save_heldout_ids(
                path,
                facts.heldout,
                datasets=list(cfg.DATASETS.TRAIN),
                fraction=node.FRACTION,
                max_images=node.MAX_IMAGES,
                seed=HELDOUT_SEED,
            )
        cfg.DATASETS.HELDOUT.IMAGE_IDS_FILE = path
    if facts.iterations_per_epoch is not None:
        _resolve_epoch_schedule(cfg, facts.iterations_per_epoch, log=comm.is_main_process())
        fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
        if fasa.START_ITER < 0:
            fasa.START_ITER = facts.iterations_per_epoch
        if fasa.ADAPT_PERIOD < 0:
            fasa.ADAPT_PERIOD = facts.iterations_per_epoch
    comm.synchronize()
    return cfg, (loaded[0] if loaded else None)


def _resolve_epoch_schedule(cfg, iterations: int, log: bool) -> None:
    """SOLVER.MAX_ITER / STEPS from SOLVER.EPOCH_SCHEDULE, where the config states one."""
    if not check_epoch_schedule(cfg):
        return
    node = cfg.SOLVER.EPOCH_SCHEDULE
    max_iter, steps = epoch_schedule(node.EPOCHS, node.STEPS, iterations)
    if log:
        logger.info(
            "SOLVER.EPOCH_SCHEDULE: %d epochs of %d iterations, decay after epochs %s: "
            "SOLVER.MAX_ITER %d, SOLVER.STEPS %s (were %d, %s).",
            node.EPOCHS,
            iterations,
            tuple(node.STEPS),
            max_iter,
            steps,
            cfg.SOLVER.MAX_ITER,
            tuple(cfg.SOLVER.STEPS),
        )
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = max_iter, steps


def _same_file(a: str, b: str) -> bool:
    return bool(a) and "://" not in a and os.path.exists(b) and os.path.samefile(a, b)
