"""Command line: ``python -m iif_d2.lvis_eval --gt GT.json --results RESULTS.json --iou-type
{bbox,segm} [--engine {fast,lvis-api}] [--json-out OUT.json]``. Metrics in percent."""

import sys
import time

from iif_d2.lvis_eval import ENGINES
from iif_d2.lvis_eval.data import LVISDetections, LVISGroundTruth, load_json, read_results
from iif_d2.lvis_eval.reference import lvis_api_evaluate
from iif_d2.lvis_eval.report import in_percent, metrics_tables
from iif_d2.utils.cli_checks import (
    OneLineParser,
    check_output_file,
    one_line,
    positive_int,
    run_interruptible,
    write_json_output,
)


def _parser():
    p = OneLineParser(
        prog="python -m iif_d2.lvis_eval",
        description=(
            "Evaluate LVIS detection/segmentation results with exactly lvis-api's metrics "
            "(AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300 and ARs/ARm/ARl@300), "
            "printed and saved in percent (undefined: nan): federated rules, at most --max-dets "
            "detections per image (the best scores), detections with empty masks dropped "
            "(lvis-api's rule). For segm, areas are the box areas when the results carry a "
            "'bbox' (lvis-api's rule), mask areas otherwise. The results file is read "
            "incrementally and checked entry by entry."
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
    p.add_argument(
        "--max-dets",
        type=positive_int,
        help="detections per image (default 300; standard metric only)",
    )
    p.add_argument(
        "--metric",
        default="standard",
        choices=("standard", "fixed", "pooled"),
        help="standard (default): LVIS AP; fixed: AP-fixed, pooled: AP-pool (Dave et al. 2021: "
        "each class's --dets-per-cat best detections, no cap per image; fast engine only)",
    )
    p.add_argument(
        "--dets-per-cat", type=positive_int, help="for fixed/pooled only (default 10000)"
    )
    p.add_argument(
        "--json-out",
        help="also write the metrics here (percent, lvis-api's key names, null where undefined)",
    )
    return p


def _fast(args):
    """The fast engine: ground truth first, then the results read incrementally into arrays
    (checked against it), keeping masks only where they can meet an IoU."""
    from iif_d2.lvis_eval.devil import ap_fixed, ap_pooled
    from iif_d2.lvis_eval.engine import evaluate, summarize

    gt = LVISGroundTruth.from_json(args.gt, with_masks=args.iou_type == "segm")
    dets = read_results(args.results, args.iou_type, gt, masks_where_present=True)
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
    # with segm, the ground truth's masks too (lvis-api would read an odd polygon silently)
    gt_arrays = LVISGroundTruth.from_dict(gt, with_masks=args.iou_type == "segm")
    LVISDetections.from_results(results, args.iou_type, gt_arrays)
    return lvis_api_evaluate(gt, results, args.iou_type, args.max_dets)


def _options(parser, args):
    """Refuse a count the chosen metric would ignore; fill in the defaults."""
    if args.metric == "standard" and args.dets_per_cat is not None:
        parser.error(
            "--dets-per-cat applies only with --metric fixed or pooled (AP-fixed, AP-pool); "
            "the standard metric keeps --max-dets per image: drop --dets-per-cat or add --metric."
        )
    if args.metric != "standard" and args.max_dets is not None:
        parser.error(
            f"--max-dets applies only with --metric standard; --metric {args.metric} keeps "
            "--dets-per-cat detections per class and no cap per image: drop --max-dets."
        )
    args.max_dets = 300 if args.max_dets is None else args.max_dets
    args.dets_per_cat = 10000 if args.dets_per_cat is None else args.dets_per_cat


def main(argv=None) -> int:
    """Run the command line; returns the exit status (130 after Ctrl-C, with one line)."""
    return run_interruptible(_main, argv)


def _main(argv) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _options(parser, args)
    start = time.perf_counter()
    try:
        if args.json_out is not None:
            check_output_file(args.json_out, "--json-out", (args.gt, args.results), "metrics.json")
        metrics = _fast(args) if args.engine == "fast" else _lvis_api(args)
        metrics = in_percent(metrics)
    except (OSError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    # undefined metrics as null: strict json readers refuse NaN
    undefined_as_null = {k: (None if v != v else v) for k, v in metrics.items()}
    if args.json_out is not None and not write_json_output(args.json_out, undefined_as_null):
        return 2
    seconds = time.perf_counter() - start
    print(f"LVIS {args.iou_type} ({args.engine} engine, {args.metric}, {seconds:.1f} s), percent:")
    print(metrics_tables(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
