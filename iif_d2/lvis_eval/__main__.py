"""Command line: ``python -m iif_d2.lvis_eval --gt GT.json --results RESULTS.json --iou-type
{bbox,segm} [--engine {fast,lvis-api}] [--json-out OUT.json]``."""

import argparse
import json
import sys
import time

from iif_d2.lvis_eval import ENGINES
from iif_d2.lvis_eval.data import LVISDetections, LVISGroundTruth, load_json
from iif_d2.lvis_eval.reference import lvis_api_evaluate


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m iif_d2.lvis_eval",
        description=(
            "Evaluate LVIS detection/segmentation results with exactly lvis-api's metrics "
            "(AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300 and ARs/ARm/ARl@300): "
            "federated rules, at most --max-dets detections per image (the best scores), "
            "detections with empty masks dropped (lvis-api's rule). For segm, areas are the box "
            "areas when the results carry a 'bbox' (lvis-api's rule), mask areas otherwise."
        ),
    )
    p.add_argument("--gt", required=True, help="LVIS annotation json (e.g. lvis_v1_val.json)")
    p.add_argument(
        "--results",
        required=True,
        help="results json: a list of {image_id, category_id, score, bbox (XYWH) and/or "
        "segmentation (compressed RLE)}",
    )
    p.add_argument("--iou-type", required=True, choices=("bbox", "segm"), help="what to score")
    p.add_argument(
        "--engine",
        default="fast",
        choices=ENGINES,
        help="fast (default): numpy + pycocotools, bounded memory; lvis-api: lvis==0.5.3 itself",
    )
    p.add_argument("--max-dets", type=int, default=300, help="detections per image (default 300)")
    p.add_argument(
        "--metric",
        default="standard",
        choices=("standard", "fixed", "pooled"),
        help="standard (default): LVIS AP; fixed: AP-fixed, pooled: AP-pool (Dave et al. 2021: "
        "each class's --dets-per-cat best detections, no cap per image; fast engine only)",
    )
    p.add_argument("--dets-per-cat", type=int, default=10000, help="for fixed/pooled")
    p.add_argument("--json-out", help="also write the metrics here (lvis-api's key names)")
    return p


def _fast(args, gt_path, results_path):
    """The fast engine, holding the parsed json only until it is converted to arrays."""
    from iif_d2.lvis_eval.devil import ap_fixed, ap_pooled
    from iif_d2.lvis_eval.engine import evaluate, summarize

    results = load_json(results_path, "results")
    dets = LVISDetections.from_results(results, args.iou_type)
    del results
    gt = LVISGroundTruth.from_json(gt_path, with_masks=args.iou_type == "segm")
    if args.metric == "fixed":
        return ap_fixed(gt, dets, args.iou_type, args.dets_per_cat)
    if args.metric == "pooled":
        return ap_pooled(gt, dets, args.iou_type, args.dets_per_cat)
    return summarize(evaluate(gt, dets, args.iou_type, args.max_dets))


def _lvis_api(args):
    if args.metric != "standard":
        raise ValueError(f"--metric {args.metric} runs on the fast engine; drop --engine.")
    gt = load_json(args.gt, "ground truth")
    results = load_json(args.results, "results")
    # lvis-api's own errors are bare asserts and KeyErrors: check the fields first
    LVISGroundTruth.from_dict(gt, with_masks=False)
    LVISDetections.from_results(results, args.iou_type)
    return lvis_api_evaluate(gt, results, args.iou_type, args.max_dets)


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.engine == "fast":
            metrics = _fast(args, args.gt, args.results)
        else:
            metrics = _lvis_api(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    width = max(len(k) for k in metrics)
    print(f"LVIS {args.iou_type} ({args.engine} engine, {args.metric}, {seconds:.1f} s)")
    for key, value in metrics.items():
        print(f"  {key:<{width}}  {value:.4f}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(metrics, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
