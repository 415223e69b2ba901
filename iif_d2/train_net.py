"""The trainer command: ``iif-train`` (installed with the package), ``python -m iif_d2.train_net``
and the repository's ``train_net.py`` are this module, with detectron2's ``train_net.py`` flags.

    iif-train --num-gpus 8 --config-file iif_d2://LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_24e_recipe_torchvision.yaml
    iif-train --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    iif-train --config-file CONFIG --resume       # continue from OUTPUT_DIR/last_checkpoint

``--config-file`` takes a path or ``iif_d2://<folder>/<config>.yaml``, a config shipped with the
package (:func:`iif_d2.model_zoo.get_config_file`). Multi-process training also runs on CPU
(gloo): ``--num-gpus 2`` with ``MODEL.DEVICE cpu``. A bad input (config, dataset files,
checkpoint, run folder) ends in one line on stderr and exit status 2.
"""  # noqa: E501

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from iif_d2.data.dataset_files import DatasetFilesMissing, check_dataset_files  # noqa: E402
from iif_d2.data.validate import DatasetError  # noqa: E402
from iif_d2.engine.checkpoint import (  # noqa: E402
    CheckpointLocationError,
    CheckpointReadError,
    CheckpointShapeMismatchError,
)
from iif_d2.engine.config_files import RunConfigError, check_run_config, load_config  # noqa: E402
from iif_d2.engine.launch import launch  # noqa: E402
from iif_d2.engine.run_folder import check_eval_weights, check_resume_config  # noqa: E402
from iif_d2.engine.run_lock import OutputDirInUseError  # noqa: E402
from iif_d2.engine.trainer import Trainer, checkpointer_for, setup_run  # noqa: E402
from iif_d2.utils.cli_checks import INTERRUPTED  # noqa: E402
from iif_d2.utils.io import WriteError  # noqa: E402
from iif_d2.utils.safe_load import UnsafeCheckpointError  # noqa: E402

# errors of the user's input: printed as one line (exit 2), without a traceback
USER_ERRORS = (
    RunConfigError,
    DatasetFilesMissing,
    OutputDirInUseError,
    CheckpointLocationError,
    CheckpointShapeMismatchError,
    CheckpointReadError,
    DatasetError,
    UnsafeCheckpointError,
    WriteError,
)


def main(args):
    # the inputs enter here: the config's resolution, the training data, the class counts,
    # the model built from them and the weights loaded into it. Their errors (ValueErrors
    # naming the problem and the fix) end the run as one line; training's own do not.
    try:
        cfg, dicts = setup_run(args)
        if args.eval_only:
            model = Trainer.build_model(cfg)
            # the checkpoint, or MODEL.WEIGHTS; never a model that loaded nothing
            check_eval_weights(checkpointer_for(model, cfg), cfg, resume=args.resume)
        else:
            trainer = Trainer(cfg, dataset_dicts=dicts)
            trainer.resume_or_load(resume=args.resume)
    except USER_ERRORS:
        raise
    except ValueError as e:
        raise RunConfigError(str(e)) from e
    if args.eval_only:
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            from detectron2.evaluation import verify_results

            verify_results(cfg, results)
        return results
    return trainer.train()


def check_launch_args(args):
    """One-line errors for process counts that would do nothing or wait forever."""
    if args.num_gpus < 1:
        raise RunConfigError(f"--num-gpus {args.num_gpus}: give at least 1 process per machine.")
    if args.num_machines < 1:
        raise RunConfigError(f"--num-machines {args.num_machines}: give at least 1.")
    if not 0 <= args.machine_rank < args.num_machines:
        raise RunConfigError(
            f"--machine-rank {args.machine_rank} with --num-machines {args.num_machines}: the "
            f"rank of this machine is 0 to {args.num_machines - 1}."
        )
    url = args.dist_url
    if url != "auto" and not re.fullmatch(r"tcp://[^\s:/]+:\d{1,5}|file:///\S+|env://", url or ""):
        raise RunConfigError(
            f"--dist-url {url!r} is not tcp://HOST:PORT, file:///PATH or env://; the main "
            "machine's address, e.g. tcp://10.0.0.1:29500 (or auto on one machine)."
        )
    if url.startswith("tcp://") and not 1 <= int(url.rsplit(":", 1)[1]) <= 65535:
        raise RunConfigError(f"--dist-url {url}: the port must be 1 to 65535.")
    if url.startswith("file://"):
        folder = os.path.dirname(url[len("file://") :])
        if not os.path.isdir(folder):
            raise RunConfigError(
                f"--dist-url {url}: the folder {folder} does not exist; the processes meet "
                "through a file in an existing folder that every machine sees."
            )


def check_process_count(args, device: str) -> None:
    """More processes than this machine has GPUs (MODEL.DEVICE cuda) or CPU cores (cpu)."""
    import torch

    if device.startswith("cuda"):
        have, what = torch.cuda.device_count(), "GPU(s)"
    else:
        have, what = os.cpu_count() or 1, "CPU core(s)"
    if args.num_gpus > have:
        raise RunConfigError(
            f"--num-gpus {args.num_gpus} with MODEL.DEVICE {device}: this machine has {have} "
            f"{what}; give --num-gpus {have} or fewer."
        )


def _worker_user_error(error: BaseException):
    """The one-line message of a user error a worker process raised (its last line names the
    exception's class), or None."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return None
    names = {f"{c.__module__}.{c.__name__}" for c in USER_ERRORS}
    kind, _, message = lines[-1].partition(": ")
    return message if kind in names else None


def run(argv=None) -> int:
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        check_launch_args(args)
        cfg = load_config(args)
        # here too: the workers' errors would come with tracebacks
        check_run_config(cfg, training=not args.eval_only)
        check_process_count(args, cfg.MODEL.DEVICE)
        if not args.eval_only:
            check_dataset_files(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        check_dataset_files(cfg.DATASETS.TEST, "DATASETS.TEST")
        if args.resume:
            check_resume_config(cfg, resolved=False)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            backend="gloo" if cfg.MODEL.DEVICE == "cpu" else "auto",
        )
    except USER_ERRORS as e:
        fix = ""
        if isinstance(e, WriteError):  # a checkpoint or a result while training or evaluating
            fix = "; free some space there (--resume continues from the last checkpoint)"
        print(f"error: {' '.join(str(e).split())}{fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: a training run continues from its last checkpoint with --resume.",
            file=sys.stderr,
        )
        return INTERRUPTED
    except Exception as e:  # a worker process's error, reported by torch.multiprocessing
        message = _worker_user_error(e) if type(e).__name__ == "ProcessRaisedException" else None
        if message is None:
            raise
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
