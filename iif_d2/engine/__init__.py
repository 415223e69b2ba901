"""Training: detectron2's ``DefaultTrainer`` with the training-set facts resolved once
(:func:`setup`), a resumable loader, FASA's timetable, safe checkpoints and multi-process launch.
Importing it registers iif-d2's components (:mod:`iif_d2.modeling`)."""

from iif_d2.engine.config_files import load_config
from iif_d2.engine.trainer import (
    Trainer,
    checkpointer_for,
    freeze_all_but_box_classifier,
    setup,
    setup_run,
)

__all__ = [
    "Trainer",
    "checkpointer_for",
    "freeze_all_but_box_classifier",
    "load_config",
    "setup",
    "setup_run",
]
