#!/usr/bin/env python
"""How many positive anchors (or points) each ground-truth box gets from a one-stage detector's
own matcher, on a config's training set.

Builds each config's model (nothing is trained), takes the anchors its anchor generator makes
for the training images' size, and labels them against every training image's boxes with the
model's own rule: RetinaNet's IoU matcher (``MODEL.RETINANET.IOU_THRESHOLDS``, low-quality
matches allowed) or FCOS's centre sampling and per-level size ranges. Prints, per config and
per box size (sqrt of the area), the positives per box (mean, median, 10th percentile), the
share of boxes with a single positive and with none, and the share of all positives on each
pyramid level (which level learns the objects).

    python dev/analysis/count_positives.py \\
        --config-file configs/SynthLT-Detection/retinanet_R_18_FPN.yaml \\
        --config-file configs/SynthLT-Detection/fcos_R_18_FPN.yaml

A dense detector learns each object from its positives: a box with one positive anchor gives
the classifier one example per image where centre sampling gives it several.
"""

import argparse
import json
import os
import sys

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

SIZE_BINS = [(0, 16), (16, 32), (32, 64), (64, float("inf"))]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--config-file", action="append", required=True, help="a RetinaNet or FCOS config (repeat)"
    )
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every config")
    return p.parse_args(argv)


def foreground(model, anchors, boxes):
    """The foreground anchors of one image by ``model``'s own matching rule.

    Args:
        model: a built RetinaNet (has ``anchor_matcher``) or FCOS: detectron2 v0.6's has
            ``match_anchors(anchors, instances)`` (the matched box per anchor, -1 for none),
            current main's ``_match_anchors(boxes, anchors)`` (an (N, R) match quality, 0 where
            an anchor does not match a box); the feature is detected, not the version.
        anchors: list of per-level ``Boxes``.
        boxes: ``Boxes`` of the image's ground truth (N boxes).

    Returns:
        (box, level): LongTensors with one entry per foreground anchor: the ground-truth box it
        is matched to and the pyramid level (index into ``anchors``) it lies on.
    """
    import torch
    from detectron2.structures import Boxes, Instances, pairwise_iou

    if hasattr(model, "match_anchors"):  # FCOS (v0.6): centre sampling + size ranges
        inst = Instances((0, 0), gt_boxes=boxes)
        idx = model.match_anchors(anchors, [inst])[0]
        is_fg = idx >= 0
    elif hasattr(model, "_match_anchors"):  # FCOS (main): the same rule as a match quality
        quality, idx = model._match_anchors(boxes, anchors).max(dim=0)
        is_fg = quality >= 1e-5  # main's label_anchors: below 1e-5 is unmatched
    elif hasattr(model, "anchor_matcher"):  # RetinaNet: IoU matcher
        idx, labels = model.anchor_matcher(pairwise_iou(boxes, Boxes.cat(anchors)))
        is_fg = labels == 1
    else:
        raise ValueError(
            f"{type(model).__name__} has no anchor matcher (anchor_matcher, match_anchors or "
            "_match_anchors): count_positives reads RetinaNet and FCOS models only"
        )
    level_ends = torch.tensor([len(a) for a in anchors]).cumsum(0)
    level = torch.searchsorted(level_ends, torch.nonzero(is_fg)[:, 0], right=True)
    return idx[is_fg], level


def positives_per_box(model, anchors, boxes):
    """LongTensor (N,): how many anchors ``model`` labels foreground for each of ``boxes``."""
    import torch

    return torch.bincount(foreground(model, anchors, boxes)[0], minlength=len(boxes))


def summarise(counts, sizes):
    """Per size bin: boxes, mean / median / 10th-percentile positives, share with 1 and 0."""
    import numpy as np

    out = []
    for lo, hi in [(0, float("inf"))] + SIZE_BINS:
        sel = counts[(sizes >= lo) & (sizes < hi)]
        if len(sel) == 0:
            continue
        out.append(
            {
                "size": "all" if hi == float("inf") and lo == 0 else f"{lo}-{hi:g} px",
                "boxes": int(len(sel)),
                "mean": float(sel.mean()),
                "median": float(np.median(sel)),
                "p10": float(np.percentile(sel, 10)),
                "one": float((sel == 1).mean()),
                "none": float((sel == 0).mean()),
            }
        )
    return out


def level_shares(levels, names):
    """Share of all foreground anchors on each pyramid level, keyed by the level's name."""
    import numpy as np

    counts = np.bincount(levels, minlength=len(names))
    return {name: float(c / max(counts.sum(), 1)) for name, c in zip(names, counts)}


def count_config(config_file, opts):
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, BoxMode

    from iif_d2.engine.trainer import Trainer, setup

    cfg = setup(argparse.Namespace(config_file=config_file, opts=list(opts), resume=False))
    model = Trainer.build_model(cfg).eval()
    size = cfg.INPUT.MAX_SIZE_TRAIN
    counts, sizes, levels = [], [], []
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, size, size))
        anchors = model.anchor_generator([features[f] for f in model.head_in_features])
        for name in cfg.DATASETS.TRAIN:
            for record in DatasetCatalog.get(name):
                if (record["height"], record["width"]) != (size, size):
                    sys.exit(
                        f"[count_positives] {record['file_name']} is "
                        f"{record['width']}x{record['height']}, not {size}x{size}: this tool "
                        "counts anchors for square images of INPUT.MAX_SIZE_TRAIN"
                    )
                xyxy = [
                    BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                    for a in record["annotations"]
                ]
                if not xyxy:
                    continue
                boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32))
                box, level = foreground(model, anchors, boxes)
                counts.append(torch.bincount(box, minlength=len(boxes)).numpy())
                levels.append(level.numpy())
                sizes.append(boxes.area().sqrt().numpy())
    rows = summarise(np.concatenate(counts), np.concatenate(sizes))
    return rows, level_shares(np.concatenate(levels), model.head_in_features)


def main(argv=None):
    args = parse_args(argv)
    import iif_d2.data  # noqa: F401  (registers SynthLT)

    report = {}
    for config_file in args.config_file:
        rows, shares = count_config(config_file, args.opts)
        report[os.path.basename(config_file)] = {"sizes": rows, "levels": shares}
        print(f"\n{config_file}")
        print("| box size | boxes | positives mean | median | 10th pct | one positive | none |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['size']} | {r['boxes']} | {r['mean']:.1f} | {r['median']:.0f} | "
                f"{r['p10']:.0f} | {100 * r['one']:.0f} % | {100 * r['none']:.0f} % |"
            )
        print(
            "positives per level: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in shares.items())
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
