#!/usr/bin/env python
"""`make benchmark`: softmax vs additive margins vs IIF on SynthLT (the paper's Fig. 1 question).

The same model, schedule and seed trained with: softmax, IIF raw, IOF base10, balanced softmax
and logit adjustment in the loss; post-process IIF and post-hoc logit adjustment evaluate the
softmax model. Then the paper's Table XV components added one by one to IOF base10 (cosine
classifier + normalised mask, FASA, repeat-factor sampling, test settings = the full recipe),
and the one-stage detectors RetinaNet and FCOS without and with IIF (box AP only). Each is run
through train_net.py (resuming a finished or interrupted run instead of repeating it).
Reported: mask AP, APr, APc, APf, box AP and APr (LVIS evaluation), false positives per image
at a score threshold, dAP_FP (box AP50 gained when every detection that matches no ground truth
of its class at IoU >= 0.5 is removed), and the training speed (s/iteration of the run's last
training session, from its log.txt; the wall time of this invocation is in the json).

Writes OUTPUT/benchmark.md, OUTPUT/benchmark.json and OUTPUT/benchmark.png.

    python tools/benchmark_synthlt.py [--quick] [--only KEY ...] [--output-dir output/benchmark]
"""

import argparse
import json
import os
import platform
import re
import time

from iif_d2.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = os.path.join(REPO, "configs", "SynthLT-InstanceSegmentation")
DET = os.path.join(REPO, "configs", "SynthLT-Detection")
# (key, label, config, evaluates the weights of)
METHODS = [
    ("softmax", "softmax", f"{SEG}/mask_rcnn_R_18_FPN.yaml", None),
    ("iif_raw", "IIF raw", f"{SEG}/mask_rcnn_R_18_FPN_iif.yaml", None),
    ("iof_base10", "IOF base10", f"{SEG}/mask_rcnn_R_18_FPN_iof_base10.yaml", None),
    ("iif_post", "IIF raw, post-process", f"{SEG}/mask_rcnn_R_18_FPN_iif_postprocess.yaml",
     "softmax"),
    ("balanced", "balanced softmax", f"{SEG}/mask_rcnn_R_18_FPN_balanced_softmax.yaml", None),
    ("la_loss", "logit adj. (loss)", f"{SEG}/mask_rcnn_R_18_FPN_logit_adjustment.yaml", None),
    ("la_posthoc", "logit adj. (post-hoc)",
     f"{SEG}/mask_rcnn_R_18_FPN_logit_adjustment_posthoc.yaml", "softmax"),
    # paper Table XV, step by step on IOF base10, up to the headline recipe
    ("cos_norm", "IOF base10 + cos + norm. mask",
     f"{SEG}/mask_rcnn_R_18_FPN_iof_base10_cos_normmask.yaml", None),
    ("cos_norm_fasa", "  + FASA", f"{SEG}/mask_rcnn_R_18_FPN_iof_base10_cos_normmask_fasa.yaml",
     None),
    ("cos_norm_fasa_rfs", "  + RFS",
     f"{SEG}/mask_rcnn_R_18_FPN_iof_base10_cos_normmask_fasa_rfs.yaml", None),
    ("recipe", "  + test settings = recipe", f"{SEG}/mask_rcnn_R_18_FPN_recipe.yaml",
     "cos_norm_fasa_rfs"),
    # one-stage detectors (box only)
    ("retinanet", "RetinaNet", f"{DET}/retinanet_R_18_FPN.yaml", None),
    ("retinanet_iif", "RetinaNet IIF", f"{DET}/retinanet_R_18_FPN_iif.yaml", None),
    ("fcos", "FCOS", f"{DET}/fcos_R_18_FPN.yaml", None),
    ("fcos_iif", "FCOS IIF", f"{DET}/fcos_R_18_FPN_iif.yaml", None),
]  # fmt: skip
QUICK = ["SOLVER.MAX_ITER", "150", "SOLVER.STEPS", "(120,)", "SOLVER.WARMUP_ITERS", "50"]


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(key, config, weights_of, out_root, opts, label=None):
    """Train (or evaluate) one method, showing its progress; return (results, wall seconds).

    The results json is kept (TEST.LVIS_EVAL_SAVE_RESULTS) for the false-positive analysis."""
    from demo import demo_config, run_train_net

    out = os.path.join(out_root, key)
    opts = ["TEST.LVIS_EVAL_SAVE_RESULTS", "True", *opts]
    if weights_of:
        opts = ["MODEL.WEIGHTS", os.path.join(out_root, weights_of, "model_final.pth"), *opts]
    max_iter = None if weights_of else demo_config(opts, config).SOLVER.MAX_ITER
    t = time.time()
    results = run_train_net(
        out, opts, label or key, eval_only=bool(weights_of), max_iter=max_iter, config=config
    )
    return results, time.time() - t


def train_seconds_per_iter(out_root, key):
    """s/iteration of the run's last training session (its log.txt), None if never trained
    (post-process rows evaluate another row's model)."""
    speed = None
    with open(os.path.join(out_root, key, "log.txt")) as f:
        for line in f:
            m = re.search(
                r"Overall training speed: \d+ iterations in \S+ \(([\d.]+) s / it\)", line
            )
            speed = float(m.group(1)) if m else speed
    return speed


def fp_stats(out_root, key, gt_file, score_thresh):
    from iif_d2.fp_analysis import delta_ap_fp, false_positives_per_image

    results = os.path.join(out_root, key, "inference", "lvis_instances_results.json")
    fp = false_positives_per_image(gt_file, results, score_thresh=score_thresh)
    return fp["fp_per_image"], delta_ap_fp(gt_file, results)["delta_ap_fp"]


def write_report(rows, out_root, header):
    cols = ["AP", "APr", "APc", "APf", "APbox", "APr box", "FP/img", "dAP_FP", "train s/it"]
    lines = [header, "", "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        vals = ["–" if r[c] is None else f"{r[c]:.2f}" if c in ("FP/img", "train s/it")
                else f"{r[c]:.1f}" for c in cols]  # fmt: skip
        lines.append(f"| {r['method']} | " + " | ".join(vals) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_root, "benchmark.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_root, "benchmark.json"), "w") as f:
        json.dump({"header": header, "rows": rows}, f, indent=1)
    _figure(rows, os.path.join(out_root, "benchmark.png"))
    return text


def _figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["method"].strip() for r in rows]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 4.8))
    for i, k in enumerate(["APr", "APc", "APf", "AP"]):
        ax1.bar(x + (i - 1.5) * 0.2, [r[k] or 0.0 for r in rows], 0.2, label=k)
    ax1.set_xticks(x, names, rotation=30, ha="right")
    ax1.set_ylabel("mask AP (SynthLT val; 0 = box-only detector)")
    ax1.legend()
    ax2.bar(x, [r["FP/img"] for r in rows], color="tab:red")
    ax2.set_xticks(x, names, rotation=30, ha="right")
    ax2.set_ylabel("false positives / image")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="150 iterations: minutes on a CPU")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where runs and reports go (default: output/benchmark, --quick: "
        "output/benchmark_quick)",
    )
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=0.3,
        help="score threshold of the false positives per image (default: 0.3)",
    )
    keys = [m[0] for m in METHODS]
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="KEY",
        choices=keys,
        help="run only these rows, of: " + ", ".join(keys),
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="train_net.py config overrides: KEY VALUE ..."
    )
    args = parser.parse_args()
    name = "benchmark_quick" if args.quick else "benchmark"
    out_root = args.output_dir or os.path.join(REPO, "output", name)
    opts = (QUICK if args.quick else []) + list(args.opts)

    from detectron2.data import DatasetCatalog, MetadataCatalog

    import iif_d2.data  # noqa: F401  (registers SynthLT)

    DatasetCatalog.get("synthlt_val")  # generates SynthLT once
    gt_file = MetadataCatalog.get("synthlt_val").json_file
    rows = []
    methods = [m for m in METHODS if not args.only or m[0] in args.only]
    for key, label, config, weights_of in methods:
        print(f"[benchmark] {label} ...", flush=True)
        res, wall = run(key, config, weights_of, out_root, opts, label)
        fp, dap = fp_stats(out_root, key, gt_file, args.score_thresh)
        segm, bbox = res.get("segm", {}), res["bbox"]
        rows.append(
            {"method": label, "AP": segm.get("AP"), "APr": segm.get("APr"),
             "APc": segm.get("APc"), "APf": segm.get("APf"), "APbox": bbox["AP"],
             "APr box": bbox["APr"], "FP/img": fp, "dAP_FP": dap,
             "train s/it": train_seconds_per_iter(out_root, key), "run (s)": wall}
        )  # fmt: skip
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    header = (
        f"SynthLT val, {'--quick ' if args.quick else ''}{device} ({os.cpu_count()} cores, "
        f"{platform.machine()}), torch {torch.__version__}; FP/img at score >= "
        f"{args.score_thresh}; post-process rows and the recipe row evaluate another row's model."
    )
    print(write_report(rows, out_root, header))
    print(f"[benchmark] written to {out_root}/benchmark.{{md,json,png}}")


if __name__ == "__main__":
    main()
