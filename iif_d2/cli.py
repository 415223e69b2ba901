"""Print or save IIF weights and the class counts behind them.

python -m iif_d2.cli --counts-file iif_d2://lvis_v1_train.csv --variant base10 --frequency instance
python -m iif_d2.cli --dataset lvis_v1_train --all-variants
python -m iif_d2.cli --config-file configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_12e_iif.yaml --save w.json
python -m iif_d2.cli --counts-file datasets/lvis/lvis_v1_train.json    # an LVIS or COCO json
"""  # noqa: E501

import argparse
import difflib
import logging
import os
import sys

from iif_d2.utils.cli_checks import interrupt_exits_quietly
from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

if __name__ == "__main__":  # the command (not an import): before detectron2 is imported
    hide_upstream_deprecations()
    interrupt_exits_quietly()  # Ctrl-C during the seconds of detectron2's imports

# isort: split
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from iif_d2.config import add_iif_config  # noqa: E402
from iif_d2.data.class_stats import FREQUENCIES, NORMALIZERS, load_counts_file  # noqa: E402
from iif_d2.data.dataset_files import check_dataset_files  # noqa: E402
from iif_d2.data.training_set import compute_class_stats  # noqa: E402
from iif_d2.utils.cli_checks import (
    OneLineParser,
    UsageError,
    check_input_file,
    check_output_file,
    one_line,
    run_interruptible,
    write_json_output,
)  # noqa: E402,E501
from iif_d2.weights import VARIANTS, canonical_variant, iif_weights  # noqa: E402

# the settings a config gives with --config-file (flag -> its value without one)
_SETTINGS = {"variant": "raw", "frequency": "image", "normalizer": "total"}


class CLIError(UsageError):
    """A bad command-line argument: printed as one line, exit code 2."""


def _parser():
    p = OneLineParser(prog="python -m iif_d2.cli", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--counts-file", help="counts CSV/JSON, or an LVIS/COCO json")
    src.add_argument("--dataset", help="a registered training dataset, counted as the trainer")
    src.add_argument("--config-file", help="take source and IIF settings from a config")
    p.add_argument("--variant", help=f"one of {', '.join(VARIANTS)} (default raw)")
    p.add_argument("--frequency", choices=FREQUENCIES, help="default image")
    p.add_argument("--normalizer", choices=NORMALIZERS, help="default total")
    p.add_argument("--allow-nonpositive", action="store_true")
    p.add_argument("--all-variants", action="store_true", help="a column per variant x IIF/IOF")
    p.add_argument("--save", help="write counts and weights to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (--config-file)")
    return p


def _check_args(args):
    """Errors for arguments that would be ignored or fail only after the work is done."""
    given = [f"--{k}" for k in _SETTINGS if getattr(args, k) is not None]
    given += ["--allow-nonpositive"] if args.allow_nonpositive else []
    if args.config_file and given:
        raise CLIError(
            f"{', '.join(given)} would be ignored: with --config-file the IIF settings come "
            "from the config; override them as opts, e.g. MODEL.ROI_BOX_HEAD.IIF.VARIANT base10."
        )
    if args.opts and not args.config_file:
        raise CLIError(
            f"config overrides {' '.join(args.opts[:2])} ... need --config-file; with "
            "--counts-file or --dataset use --variant/--frequency/--normalizer."
        )
    if args.all_variants:  # every variant, IIF and IOF, weights <= 0 included
        ignored = [f"--{k} {getattr(args, k)}" for k in ("variant", "frequency")]
        ignored = [g for g in ignored if not g.endswith(" None")]
        ignored += ["--allow-nonpositive"] if args.allow_nonpositive else []
        if ignored:
            raise CLIError(
                f"{' and '.join(ignored)} and --all-variants exclude each other: --all-variants "
                "prints every variant for both frequencies (non-positive weights included); "
                "drop one of them."
            )
    for k, default in _SETTINGS.items():
        if getattr(args, k) is None:
            setattr(args, k, default)
    if args.counts_file is not None and args.counts_file.lower().endswith((".yaml", ".yml")):
        raise CLIError(
            f"--counts-file {args.counts_file} looks like a YAML config; pass it with "
            "--config-file (--counts-file takes a counts CSV/JSON or an LVIS/COCO json)."
        )
    if args.counts_file is not None and "://" not in args.counts_file:
        check_input_file(
            args.counts_file, "--counts-file", "a counts CSV/JSON or an LVIS/COCO json"
        )
    if args.config_file is not None:
        check_input_file(args.config_file, "--config-file", "a YAML config file")
    if args.save is not None:
        if not args.save.strip():
            raise CLIError("--save is empty; give a file name, e.g. w.json.")
        check_output_file(args.save, "--save", _inputs(args), "w.json")


def _inputs(args, stats=None):
    """The files the command reads: the counts file, the config and its _BASE_ chain, and the
    counts' source (the counts file or dataset json a config names)."""
    from iif_d2.engine.config_files import RunConfigError, config_tree_files

    inputs = [args.counts_file]
    if args.config_file:
        try:
            inputs += config_tree_files(args.config_file)
        except RunConfigError as e:
            raise CLIError(f"--config-file {one_line(e)}") from None
    if stats is not None and stats.source and os.path.isfile(stats.source):
        inputs.append(stats.source)
    return inputs


def _registered(name: str) -> str:
    names = DatasetCatalog.list()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CLIError(
            f"--dataset {name!r} is not a registered dataset.{hint} Register it (e.g. "
            "detectron2.data.datasets.register_coco_instances) or use --counts-file."
        )
    classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
    if not classes:
        raise CLIError(f"--dataset {name!r} has no thing_classes in its metadata.")
    return classes


def _config(args):
    # the loader every command uses: plain YAML, _BASE_ local and acyclic, never fetched
    from iif_d2.engine.config_files import RunConfigError, load_config_file, merge_overrides

    try:
        cfg = load_config_file(args.config_file)
    except RunConfigError as e:
        raise CLIError(f"--config-file {one_line(e)}") from None
    try:
        return merge_overrides(cfg, args.opts)
    except RunConfigError as e:
        raise CLIError(one_line(e)) from None


def _stats_and_settings(args):
    if args.counts_file:
        return load_counts_file(args.counts_file), vars(args)
    if args.config_file:
        cfg = _config(args)
        iif = cfg.MODEL.ROI_BOX_HEAD.IIF
        settings = {
            "variant": iif.VARIANT,
            "frequency": iif.FREQUENCY,
            "normalizer": iif.NORMALIZER,
            "allow_nonpositive": iif.ALLOW_NONPOSITIVE_WEIGHTS,
        }
    else:
        cfg = get_cfg()
        add_iif_config(cfg)
        cfg.DATASETS.TRAIN = (args.dataset,)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(_registered(args.dataset))
        settings = vars(args)
    if cfg.MODEL.CLASS_COUNTS.SOURCE != "file":  # the dataset's files, before they are read
        check_dataset_files(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    return compute_class_stats(cfg), settings  # the CLI writes only what --save names


def _weights(args, stats, s) -> dict:
    if args.all_variants:
        columns = {
            f"{v}-{'IIF' if fr == 'image' else 'IOF'}": (v, fr)
            for fr in FREQUENCIES
            for v in VARIANTS
        }
    else:
        columns = {canonical_variant(s["variant"]): (s["variant"], s["frequency"])}
    weights = {}
    for name, (variant, frequency) in columns.items():
        f, k = stats.frequencies(frequency, s["normalizer"])
        w = iif_weights(
            f,
            k,
            variant,
            background=True,
            allow_nonpositive=s["allow_nonpositive"] or args.all_variants,
            class_names=stats.class_names,
        )
        weights[name] = w.tolist()
    return weights


def _print_table(stats, weights):
    names = stats.class_names or [str(i) for i in range(stats.num_classes)]
    print(f"# {stats.source}: {stats.num_classes} classes, K(images) = {stats.num_images}")
    print("\t".join(["id", "name", "images", "instances", *weights]))
    for i, name in enumerate([*names, "__background__"]):
        counts = [stats.image_counts[i], stats.instance_counts[i]] if i < len(names) else ["", ""]
        row = [str(i), name, *map(str, counts), *(f"{w[i]:.4f}" for w in weights.values())]
        print("\t".join(row))


def main(argv=None) -> int:
    """Command line: print the weights table; exit 2 with a one-line error for bad input, 130
    with one line after Ctrl-C."""
    return run_interruptible(_main, argv)


def _main(argv) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        _check_args(args)
        stats, s = _stats_and_settings(args)
        weights = _weights(args, stats, s)
    except (ValueError, KeyError, OSError) as e:
        if isinstance(e, OSError) and e.strerror and e.filename:  # a file the dataset names
            e = f"{e.filename}: {e.strerror}; check the dataset's files and DETECTRON2_DATASETS."
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.save:  # before printing: a failed save prints no table that looks like success
        try:  # the counts' source is known now (a config's counts file or dataset json)
            check_output_file(args.save, "--save", _inputs(args, stats), "w.json")
        except ValueError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        payload = {"stats": stats.to_dict(), "weights": weights}
        if not write_json_output(args.save, payload, "--save"):
            return 2
    _print_table(stats, weights)
    if args.save:
        print(f"# saved to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
