"""Checks of the run folder a command resumes or evaluates from: temporary files of a killed
save, the saved ``config.yaml`` against the new config (``--resume``), and the weights
``--eval-only`` loads."""

import logging
import os
import pickle
import re
from typing import Any, Dict, List, Sequence

import yaml

from iif_d2.engine.checkpoint import UntrainedWeightsError
from iif_d2.engine.config_files import RunConfigError

__all__ = ["check_eval_weights", "check_resume_config", "remove_stale_temporary_files"]

logger = logging.getLogger(__name__)

_TMP_FILE = re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp")  # iif_d2.utils.io.atomic_write's


def remove_stale_temporary_files(output_dir: str) -> List[str]:
    """Remove the temporary files of saves that were killed midway (``.NAME.PID.HEX.tmp``, as
    :func:`iif_d2.utils.io.atomic_write` names them) whose process is gone; call it with the
    folder locked (:func:`iif_d2.engine.run_lock.acquire_output_dir`).

    Returns:
        the removed paths.
    """
    removed = []
    if not output_dir or not os.path.isdir(output_dir):
        return removed
    for name in os.listdir(output_dir):
        found = _TMP_FILE.fullmatch(name)
        if found is None or int(found.group(1)) == os.getpid() or _alive(int(found.group(1))):
            continue
        path = os.path.join(output_dir, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(path)
        except FileNotFoundError:
            continue
    if removed:
        logger.info(
            "Removed %d temporary file(s) of an interrupted save: %s",
            len(removed),
            ", ".join(os.path.basename(p) for p in removed),
        )
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # someone else's process: leave its file
    return True


# Keys a resumed run may change: where and how fast it runs, what it logs and how it is
# evaluated, and the initialisation (the checkpoint replaces it). Everything else changes the
# model, the data or the schedule.
_RESUME_MAY_CHANGE = (
    "OUTPUT_DIR",
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",
    "MODEL.KERNELS",
    "DATALOADER.NUM_WORKERS",
    "NUM_THREADS",
    "CUDNN_BENCHMARK",
    "VIS_PERIOD",
    "SEED",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.CHECKPOINTS_KEPT",
    "TEST",
    "DATASETS.TEST",
    "DATASETS.PROPOSAL_FILES_TEST",
    "GLOBAL",
    "VERSION",
)
# Files the training-set resolution names (absolute paths into OUTPUT_DIR, which may have
# moved): not compared; their contents are (the resolution checks the class counts against the
# run's saved ones on a resume; the held-out ids follow from DATASETS.TRAIN and HELDOUT)
_RESOLVED = (
    "MODEL.CLASS_COUNTS.SOURCE",
    "MODEL.CLASS_COUNTS.FILE",
    "DATASETS.HELDOUT.IMAGE_IDS_FILE",
)


def _unresolved(cfg, key: str) -> bool:
    """Whether ``key`` of an unresolved ``cfg`` may still change in the resolution."""
    if key in ("SOLVER.MAX_ITER", "SOLVER.STEPS"):  # from SOLVER.EPOCH_SCHEDULE, if stated
        schedule = cfg.SOLVER.get("EPOCH_SCHEDULE")
        return schedule is not None and schedule.get("EPOCHS", 0) > 0
    if key.startswith("MODEL.ROI_BOX_HEAD.FASA.") and key.endswith(("START_ITER", "ADAPT_PERIOD")):
        return cfg.MODEL.ROI_BOX_HEAD.FASA.get(key.rsplit(".", 1)[1], 0) < 0  # -1: one epoch
    return False


def _flat(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_resume_config(cfg, resolved: bool = True) -> None:
    """Refuse to resume into an OUTPUT_DIR whose saved ``config.yaml`` (the run there) differs
    from ``cfg`` in anything that changes the model, the data or the schedule: resuming would
    continue another run's checkpoint with this config, then overwrite its files.

    Args:
        cfg: this run's config.
        resolved: whether ``cfg``'s training-set facts are resolved (else the keys the
            resolution fills in are not compared yet).

    Raises:
        RunConfigError: naming the first differing key, both values and the fix.
    """
    saved_file = os.path.join(cfg.OUTPUT_DIR, "config.yaml") if cfg.OUTPUT_DIR else ""
    if not saved_file or not os.path.isfile(saved_file):
        return
    fix = (
        "use another OUTPUT_DIR for this config (MODEL.WEIGHTS set to a checkpoint there "
        "to start from it), or resume with the config that run used "
        f"(--config-file {saved_file})"
    )
    try:
        with open(saved_file, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        problem = " ".join(str(e).split())[:200]
        raise RunConfigError(f"--resume: cannot read {saved_file} ({problem}); {fix}.") from None
    if not isinstance(saved, dict):
        raise RunConfigError(f"--resume: {saved_file} is not a saved config; {fix}.")
    old, new = _flat(saved), _flat(yaml.safe_load(cfg.dump()))
    for key, value in new.items():
        if key not in old or _under(key, _RESUME_MAY_CHANGE) or _under(key, _RESOLVED):
            continue
        if not resolved and _unresolved(cfg, key):
            continue
        was = old[key]
        if isinstance(was, (list, tuple)) and isinstance(value, (list, tuple)):
            was, value = list(was), list(value)
        if was != value:
            raise RunConfigError(
                f"--resume: the run in {cfg.OUTPUT_DIR} was started with {key} {was!r}, this "
                f"config has {value!r}; resuming would continue that run with another model "
                f"or schedule. Nothing was changed; {fix}."
            )


def check_eval_weights(checkpointer, cfg, resume: bool) -> str:
    """Load the weights ``--eval-only`` evaluates, or refuse to evaluate an untrained model.

    With ``resume``, the newest readable checkpoint in OUTPUT_DIR; else MODEL.WEIGHTS. An
    error when there is none, or when it leaves some of the model's parameters at their
    initialisation (e.g. MODEL.WEIGHTS is the backbone's ImageNet initialisation).

    Returns:
        the loaded file.

    Raises:
        RunConfigError: naming what is missing and the fix.
    """
    if resume:
        path = checkpointer.get_checkpoint_file()
        if not path:
            raise RunConfigError(
                f"--eval-only --resume: no readable checkpoint in {cfg.OUTPUT_DIR} (see the "
                "warnings above); give the model to evaluate with MODEL.WEIGHTS path.pth."
            )
    else:
        path = cfg.MODEL.WEIGHTS
        if not path:
            raise RunConfigError(
                "--eval-only needs the trained model: set MODEL.WEIGHTS "
                "path/to/model_final.pth (or use --resume to take OUTPUT_DIR's checkpoint)."
            )
    try:
        checkpointer.load_trained(path)
    except UntrainedWeightsError as e:
        raise RunConfigError(
            f"--eval-only: {e}, and evaluating it would report the AP of an untrained detector. "
            "Set MODEL.WEIGHTS to the trained checkpoint (OUTPUT_DIR/model_final.pth)."
        ) from None
    except (
        OSError,
        AssertionError,
        EOFError,
        RuntimeError,
        ValueError,
        pickle.UnpicklingError,
    ) as e:
        message = " ".join(str(e).split())[:300]
        raise RunConfigError(f"--eval-only: cannot read {path}: {message}") from None
    return path
