#!/usr/bin/env python
"""Draw a trained model's predictions beside the ground truth, one PNG per image.

Each PNG holds two panels: on the left the predictions (boxes, masks, class names and scores
from detectron2's ``Visualizer``) with a score of at least --score-thresh; on the right the
ground truth of a registered dataset (--dataset), or the input image itself for a folder of
images (--input); it is named after the image (a.jpg: a.png; images that share a name but for
the extension keep it: a_jpg.png, a_png.png). A checkpoint and its run folder are enough: the
config defaults to the ``config.yaml`` that train_net.py saved beside the checkpoint, and class
counts that came from the training set are read from the run's ``iif_class_stats.json``
instead, so the training annotations are not needed.

    python tools/visualize.py --weights output/demo/model_final.pth --dataset synthlt_val \\
        --output output/demo/vis --num 8
    python tools/visualize.py --weights RUN/model_final.pth --config-file RUN/config.yaml \\
        --input my_images/ --output vis/ --score-thresh 0.3 [config overrides ...]
"""

import argparse
import os
import pickle
import sys

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

from iif_d2.engine.visualize import (  # noqa: E402 (after the warnings filter)
    build_predictor,
    load_run_config,
    use_run_class_counts,
    visualize,
)
from iif_d2.utils.cli_checks import (  # noqa: E402
    OneLineParser,
    UsageError,
    check_device,
    check_input_file,
    check_not_blank,
    check_output_folder,
    one_line,
    positive_float,
    positive_int,
    unit_float,
)

__all__ = ["build_predictor", "load_run_config", "main", "use_run_class_counts", "visualize"]


def _parser():
    p = OneLineParser(
        prog="visualize.py",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + __doc__.split("\n\n")[2],
    )
    p.add_argument("--weights", required=True, help="checkpoint, e.g. RUN/model_final.pth")
    p.add_argument(
        "--config-file",
        help="the checkpoint's config (default: config.yaml beside the checkpoint)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a registered dataset, e.g. synthlt_val (ground truth)")
    src.add_argument("--input", metavar="DIR", help="a folder of images (no ground truth)")
    p.add_argument("--output", metavar="DIR", required=True, help="folder for the PNGs")
    p.add_argument("--num", type=positive_int, default=8, help="number of images (default: 8)")
    p.add_argument(
        "--score-thresh",
        type=unit_float,
        default=0.5,
        help="draw predictions scoring at least this (default: 0.5)",
    )
    p.add_argument(
        "--scale",
        type=positive_float,
        help="panel size / image size (default: panels of at least 512 pixels)",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ... (as train_net.py)"
    )
    return p


# config overrides the command would ignore: each is an error (what sets it instead)
IGNORED_OVERRIDES = {
    "OUTPUT_DIR": "is not used (nothing is written into a run folder; the PNGs go to --output)",
    "MODEL.WEIGHTS": "is set by --weights",
    "MODEL.DEVICE": "is set by --device",
}


def _check_paths(args) -> str:
    """The input and output paths, the overrides and the device, before anything is loaded;
    returns the device."""
    for value, option, what in (
        (args.weights, "--weights", "a checkpoint, e.g. RUN/model_final.pth"),
        (args.config_file, "--config-file", "a YAML config file"),
        (args.dataset, "--dataset", "a registered dataset, e.g. synthlt_val"),
        (args.input, "--input", "a folder of images"),
        (args.output, "--output", "a folder for the PNGs"),
    ):
        check_not_blank(value, option, what)
    for key in args.opts[::2]:
        if key in IGNORED_OVERRIDES:
            raise UsageError(f"{key} {IGNORED_OVERRIDES[key]}; drop it from the config overrides.")
    check_input_file(args.weights, "--weights", "a checkpoint, e.g. RUN/model_final.pth")
    if args.config_file is not None:
        check_input_file(args.config_file, "--config-file", "a YAML config file")
    if args.input is not None and not os.path.isdir(args.input):
        what = "is a file" if os.path.exists(args.input) else "does not exist"
        raise UsageError(f"--input {args.input} {what}; give a folder of images.")
    check_output_folder(args.output, "--output", [args.input] if args.input else [])
    return check_device(args.device)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        device = _check_paths(args)
        cfg = load_run_config(args.weights, args.config_file, args.opts, device)
        written = visualize(
            cfg,
            args.output,
            dataset=args.dataset,
            input_dir=args.input,
            num=args.num,
            score_thresh=args.score_thresh,
            scale=args.scale,
        )
    except (
        AssertionError,
        KeyError,
        OSError,
        RuntimeError,
        ValueError,
        pickle.UnpicklingError,
    ) as e:
        # AssertionError: yacs's "Non-existent key" in the overrides; KeyError: a dataset that
        # is not registered; OSError: a folder that cannot be made, a file that cannot be
        # written; RuntimeError: torch (e.g. out of memory)
        print(f"visualize.py: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"{len(written)} PNG(s) (prediction | ground truth) written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
