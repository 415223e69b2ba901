"""Print or save IIF weights and the class counts behind them.

python -m iif_d2.cli --counts-file iif_d2://lvis_v1_train.csv --variant base10 --frequency instance
python -m iif_d2.cli --dataset lvis_v1_train --all-variants
python -m iif_d2.cli --config-file configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_iif.yaml --save w.json
python -m iif_d2.cli --counts-file datasets/lvis/lvis_v1_train.json    # an LVIS or COCO json
"""  # noqa: E501

import argparse
import json
import logging
import sys

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from .class_stats import FREQUENCIES, NORMALIZERS, load_counts_file
from .config import add_iif_config, apply_deprecated_keys
from .data.training_set import compute_class_stats
from .weights import VARIANTS, canonical_variant, iif_weights


def _parser():
    p = argparse.ArgumentParser(prog="python -m iif_d2.cli", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--counts-file", help="counts CSV/JSON, or an LVIS/COCO json")
    src.add_argument("--dataset", help="a registered training dataset, counted as the trainer")
    src.add_argument("--config-file", help="take source and IIF settings from a config")
    p.add_argument("--variant", default="raw", help=f"one of {', '.join(VARIANTS)}")
    p.add_argument("--frequency", default="image", choices=FREQUENCIES)
    p.add_argument("--normalizer", default="total", choices=NORMALIZERS)
    p.add_argument("--allow-nonpositive", action="store_true")
    p.add_argument("--all-variants", action="store_true", help="a column per variant x IIF/IOF")
    p.add_argument("--save", help="write counts and weights to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (--config-file)")
    return p


def _stats_and_settings(args):
    if args.counts_file:
        return load_counts_file(args.counts_file), vars(args)
    cfg = get_cfg()
    add_iif_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        apply_deprecated_keys(cfg)
        iif = cfg.MODEL.ROI_BOX_HEAD.IIF
        settings = {
            "variant": iif.VARIANT,
            "frequency": iif.FREQUENCY,
            "normalizer": iif.NORMALIZER,
            "allow_nonpositive": iif.ALLOW_NONPOSITIVE_WEIGHTS,
        }
    else:
        cfg.DATASETS.TRAIN = (args.dataset,)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(MetadataCatalog.get(args.dataset).thing_classes)
        settings = vars(args)
    return compute_class_stats(cfg), settings  # the CLI writes only what --save names


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        stats, s = _stats_and_settings(args)
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
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = stats.class_names or [str(i) for i in range(stats.num_classes)]
    print(f"# {stats.source}: {stats.num_classes} classes, K(images) = {stats.num_images}")
    print("\t".join(["id", "name", "images", "instances", *weights]))
    for i, name in enumerate([*names, "__background__"]):
        counts = [stats.image_counts[i], stats.instance_counts[i]] if i < len(names) else ["", ""]
        row = [str(i), name, *map(str, counts), *(f"{w[i]:.4f}" for w in weights.values())]
        print("\t".join(row))
    if args.save:
        with open(args.save, "w") as f:
            json.dump({"stats": stats.to_dict(), "weights": weights}, f, indent=1)
        print(f"# saved to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
