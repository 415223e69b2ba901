#!/usr/bin/env python
"""A trained FCOS's box AP with and without its centre-ness at test.

detectron2's FCOS ranks each point's detections by sqrt(sigmoid(z) * sigmoid(c)), z the class
logit and c the point's centre-ness logit; RetinaNet by sigmoid(z) alone. This tool evaluates
one FCOS checkpoint on the config's test sets twice: as trained, and with every centre-ness held
at 1 (scores sqrt(sigmoid(z)): RetinaNet's ranking), and prints box AP, AP50, AP75, APr, APc and
APf of both. If FCOS without centre-ness falls to RetinaNet's AP, the rescoring is what separates
the two detectors; if it keeps its AP, the gap lies elsewhere.

    python dev/analysis/fcos_centerness.py \\
        --config-file configs/SynthLT-Detection/fcos_R_18_FPN.yaml \\
        MODEL.WEIGHTS output/benchmark/fcos/seed42/model_final.pth

Evaluation outputs go to --output-dir (default output/fcos_centerness).
"""

import argparse
import json
import os

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

METRICS = ("AP", "AP50", "AP75", "APr", "APc", "APf")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="an FCOS config (MODEL.FCOS)")
    p.add_argument("--output-dir", default=os.path.join("output", "fcos_centerness"))
    p.add_argument("--json", default=None, help="also write both evaluations to this file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (MODEL.WEIGHTS ...)")
    return p.parse_args(argv)


def without_centerness(model):
    """``model`` (a built FCOS) scoring every point as if its centre-ness were 1: its test
    predictions' centre-ness logits are replaced by 50 (sigmoid = 1 in float32). Training and
    the class and box predictions are untouched."""
    import torch

    inference = model.forward_inference

    def forward_inference(images, features, predictions):
        logits, deltas, centerness = predictions
        ones = [torch.full_like(c, 50.0) for c in centerness]
        return inference(images, features, [logits, deltas, ones])

    model.forward_inference = forward_inference
    return model


def main(argv=None):
    args = parse_args(argv)
    import iif_d2.data  # noqa: F401  (registers SynthLT)
    from iif_d2.engine.trainer import Trainer, checkpointer_for, setup

    opts = [*args.opts, "OUTPUT_DIR", args.output_dir]
    cfg = setup(argparse.Namespace(config_file=args.config_file, opts=opts, resume=False))
    if "FCOS" not in cfg.MODEL.META_ARCHITECTURE:
        raise SystemExit(
            f"[fcos_centerness] {args.config_file} builds {cfg.MODEL.META_ARCHITECTURE}, not an "
            "FCOS: pass an FCOS config (configs/SynthLT-Detection/fcos_R_18_FPN*.yaml)"
        )
    if not cfg.MODEL.WEIGHTS or not os.path.exists(cfg.MODEL.WEIGHTS):
        raise SystemExit(
            f"[fcos_centerness] MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} is not a file: pass a "
            "trained FCOS checkpoint (e.g. output/benchmark/fcos/seed42/model_final.pth)"
        )
    report = {}
    for name, centre in (("with centre-ness (as trained)", True), ("centre-ness = 1", False)):
        model = Trainer.build_model(cfg)
        checkpointer_for(model, cfg).load(cfg.MODEL.WEIGHTS)
        model = model if centre else without_centerness(model)
        report[name] = Trainer.test(cfg, model)["bbox"]
    print(f"\n{cfg.MODEL.WEIGHTS}: box metrics on {', '.join(cfg.DATASETS.TEST)}")
    print("| scores | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for name, bbox in report.items():
        print(
            f"| {name} | " + " | ".join(f"{bbox.get(m, float('nan')):.1f}" for m in METRICS) + " |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"weights": cfg.MODEL.WEIGHTS, "bbox": report}, f, indent=1)
    return report


if __name__ == "__main__":
    main()
