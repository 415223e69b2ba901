#!/usr/bin/env python
"""What differs on FashionLT, measured from the benchmark's runs, and its pictures:

  docs/results/fashionlt_analysis.json   per-class mask AP of softmax and IIF raw (mean, std
                                         and the paired difference over seeds) and the
                                         confusion between look-alike garments, before and
                                         after IIF, and the false positives per image of
                                         each frequency group (rare, common, frequent
                                         classes' detections) of the rows of the FP/img
                                         claims, for the runs recorded before the
                                         benchmark recorded that split (make docs puts
                                         them on docs/benchmarks/fashionlt.md)
  docs/results/fashionlt_per_class_ap.png  per-class mask AP, classes in training frequency
                                         order, softmax vs IIF raw
  docs/results/fashionlt_predictions.png   a few val images: softmax | IIF raw | ground truth

Reads the runs of `python dev/benchmark_synthlt.py --dataset fashionlt` under
output/benchmark_fashionlt (each run's saved LVIS results; the picture also needs the
softmax and IIF raw runs' model_final.pth of --picture-seed; a row of an FP/img claim without
saved results for every seed is left out of the false positives). No training.

    python dev/fashionlt_figures.py [--runs DIR] [--seeds 42 43 ...] [--picture-seed 42]
"""

import argparse
import json
import os
import sys

import numpy as np

from iif_d2.bench.records import REPO
from iif_d2.bench.stats import mean_std, paired_difference
from iif_d2.bench.synthlt_table import FP_ROWS, fp_by_group
from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

RESULTS = os.path.join(REPO, "docs", "results")
ROWS = ("softmax", "iif_raw")
LABELS = {"softmax": "softmax", "iif_raw": "IIF raw"}
# (val garment, look-alike it may be taken for): each rare class against its frequent and
# common look-alikes, and the frequent ones against the rare
LOOK_ALIKES = [
    ("Shirt", "T-shirt/top"), ("Shirt", "Pullover"), ("Shirt", "Coat"),
    ("T-shirt/top", "Shirt"), ("Pullover", "Shirt"),
    ("Coat", "Pullover"), ("Pullover", "Coat"),
    ("Ankle boot", "Sneaker"), ("Ankle boot", "Sandal"), ("Sneaker", "Ankle boot"),
    ("Sandal", "Sneaker"),
]  # fmt: skip
PICTURE_SCORE = 0.3
COMMAND = "python dev/fashionlt_figures.py"


def _results_path(runs_dir, key, seed):
    return os.path.join(runs_dir, key, f"seed{seed}", "inference", "lvis_instances_results.json")


def _results(runs_dir, key, seed):
    path = _results_path(runs_dir, key, seed)
    if not os.path.exists(path):
        sys.exit(
            f"[figures] {path} is missing: run `python dev/benchmark_synthlt.py --dataset "
            f"fashionlt --only {key} --seeds ...` first (or pass --runs / --seeds)"
        )
    with open(path) as f:
        return json.load(f)


def per_class_ap(gt_file, dets):
    """Mask AP (0-100) of each category (in category id order) from LVIS evaluation."""
    from lvis import LVIS, LVISEval, LVISResults

    from iif_d2.utils.compat import numpy_float_alias

    gt = LVIS(gt_file)
    with numpy_float_alias():
        ev = LVISEval(gt, LVISResults(gt, dets, max_dets=300), "segm")
        ev.run()
    precision = ev.eval["precision"]  # (iou thresholds, recall, categories, area ranges)
    out = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k, 0]
        out.append(float(100 * p[p > -1].mean()) if (p > -1).any() else float("nan"))
    return out


def _iou(box, boxes):
    """IoU of one xywh box with an (N, 4) array of xywh boxes."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y1 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter)


def confusion(gt, dets, num_classes):
    """(C, C + 1) shares: row g, column p: of the val garments of class g, the share whose
    best-scoring detection covering them (box IoU >= 0.5) is of class p; last column: none
    covers them."""
    by_image = {}
    for d in dets:
        by_image.setdefault(d["image_id"], []).append(d)
    counts = np.zeros((num_classes, num_classes + 1))
    for a in gt["annotations"]:
        found = by_image.get(a["image_id"], [])
        g = a["category_id"] - 1
        if not found:
            counts[g, -1] += 1
            continue
        boxes = np.array([d["bbox"] for d in found], dtype=float)
        ious = _iou(np.array(a["bbox"], dtype=float), boxes)
        ok = np.nonzero(ious >= 0.5)[0]
        if len(ok) == 0:
            counts[g, -1] += 1
            continue
        best = found[ok[np.argmax([found[i]["score"] for i in ok])]]
        counts[g, best["category_id"] - 1] += 1
    return counts / counts.sum(1, keepdims=True)


def false_positives(runs_dir, seeds, gt):
    """{row: {seed: {"FP/img": .., "FP/img r": .., "FP/img c": .., "FP/img f": ..}}}: the
    benchmark's false positives per val image (score >= its threshold, matched one-to-one at
    IoU 0.5) and their split by the frequency group of the detection's class, for each row of
    :data:`FP_ROWS` with saved results for every seed."""
    from iif_d2.lvis_eval.fp_analysis import DEFAULT_SCORE_THRESH, false_positives_per_image

    out = {}
    for key in FP_ROWS:
        if not all(os.path.exists(_results_path(runs_dir, key, s)) for s in seeds):
            print(f"[figures] {key}: no saved results for every seed, left out of FP/img")
            continue
        out[key] = {}
        for seed in seeds:
            fp = false_positives_per_image(
                gt, _results(runs_dir, key, seed), score_thresh=DEFAULT_SCORE_THRESH
            )
            out[key][str(seed)] = {"FP/img": fp["fp_per_image"], **fp_by_group(fp)}
        print(f"[figures] {key}: false positives by frequency group", flush=True)
    return out


def analyse(runs_dir, seeds, gt_file):
    with open(gt_file) as f:
        gt = json.load(f)
    cats = gt["categories"]
    names = [c["name"] for c in cats]
    C = len(cats)
    ap = {k: [] for k in ROWS}
    conf = {k: [] for k in ROWS}
    for key in ROWS:
        for seed in seeds:
            dets = _results(runs_dir, key, seed)
            ap[key].append(per_class_ap(gt_file, dets))
            conf[key].append(confusion(gt, dets, C))
            print(f"[figures] {key} seed {seed}: per-class AP and confusion", flush=True)
    per_class = []
    for k, c in enumerate(cats):
        row = {"name": c["name"], "frequency": c["frequency"], "image_count": c["image_count"]}
        for key in ROWS:
            m, s = mean_std([ap[key][i][k] for i in range(len(seeds))])
            row[key] = {"mean": m, "std": s}
        row["difference"] = paired_difference(
            [ap["iif_raw"][i][k] for i in range(len(seeds))],
            [ap["softmax"][i][k] for i in range(len(seeds))],
        )
        per_class.append(row)
    per_class.sort(key=lambda r: -r["image_count"])
    mean_conf = {key: np.mean(conf[key], axis=0) for key in ROWS}
    pairs = [
        {"gt": g, "pred": p,
         **{key: float(mean_conf[key][names.index(g), names.index(p)]) for key in ROWS},
         **{f"{key} own": float(mean_conf[key][names.index(g), names.index(g)]) for key in ROWS}}
        for g, p in LOOK_ALIKES
    ]  # fmt: skip
    matrices = {key: mean_conf[key].round(4).tolist() for key in ROWS}
    return per_class, pairs, matrices, names


def per_class_figure(per_class, seeds, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(per_class))
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for i, key in enumerate(ROWS):
        ax.bar(x + (i - 0.5) * 0.4, [r[key]["mean"] for r in per_class], 0.4,
               yerr=[r[key]["std"] for r in per_class], capsize=2, label=LABELS[key])  # fmt: skip
    ax.set_xticks(
        x, [f"{r['name']}\n{r['frequency']}, {r['image_count']} img" for r in per_class],
        fontsize=8,
    )  # fmt: skip
    ax.set_ylabel(f"mask AP, mean ± std over {len(seeds)} seeds")
    ax.set_title("FashionLT val: per-class mask AP, classes by training frequency (left: most)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _val_images(gt, wanted, num):
    """Ids of ``num`` val images, first those holding the ``wanted`` classes (one each)."""
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], set()).add(a["category_id"])
    ids = []
    for cat in wanted:
        ids += [i for i in sorted(by_image) if cat in by_image[i] and i not in ids][:1]
    return ids[:num]


def predictions_figure(runs_dir, seed, gt_file, path, num=4):
    """Rows of val images: softmax | IIF raw | ground truth, drawn by detectron2's Visualizer
    with the models of ``seed`` loaded as tools/visualize.py loads them."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    import iif_d2.data  # noqa: F401  (registers FashionLT)
    from iif_d2.engine.visualize import build_predictor, load_run_config

    with open(gt_file) as f:
        gt = json.load(f)
    rare = [c["id"] for c in gt["categories"] if c["frequency"] == "r"]
    common = [c["id"] for c in gt["categories"] if c["frequency"] == "c"]
    ids = _val_images(gt, rare + common, num)
    dicts = {d["image_id"]: d for d in DatasetCatalog.get("fashionlt_val")}
    meta = MetadataCatalog.get("fashionlt_val")
    predictors = {}
    for key in ROWS:
        weights = os.path.join(runs_dir, key, f"seed{seed}", "model_final.pth")
        if not os.path.exists(weights):
            sys.exit(f"[figures] {weights} is missing: the picture needs the run's model")
        predictors[key] = build_predictor(load_run_config(weights, device="cpu"))
    rows = []
    for image_id in ids:
        record = dicts[image_id]
        bgr = read_image(record["file_name"], format="BGR")
        rgb = bgr[:, :, ::-1]
        panels = []
        for key in ROWS:
            inst = predictors[key](bgr)["instances"].to("cpu")
            inst = inst[inst.scores >= PICTURE_SCORE]
            np.random.seed(0)  # the Visualizer's colours
            vis = Visualizer(rgb, meta, scale=3.0)
            vis.draw_text(f"{LABELS[key]}: {len(inst)}", (4, 4), horizontal_alignment="left",
                          color="white")  # fmt: skip
            panels.append(vis.draw_instance_predictions(inst).get_image())
        np.random.seed(0)
        vis = Visualizer(rgb, meta, scale=3.0)
        vis.draw_text("ground truth", (4, 4), horizontal_alignment="left", color="white")
        panels.append(vis.draw_dataset_dict(record).get_image())
        rows.append(np.concatenate(panels, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, optimize=True)
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--runs",
        default=os.path.join(REPO, "output", "benchmark_fashionlt"),
        help="the benchmark's output folder (default: output/benchmark_fashionlt)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    p.add_argument("--picture-seed", type=int, default=42)
    p.add_argument("--out", default=RESULTS, help="where the files go (default: docs/results)")
    args = p.parse_args(argv)  # fmt: skip

    from detectron2.data import DatasetCatalog, MetadataCatalog

    import iif_d2.data  # noqa: F401  (registers FashionLT)

    try:
        DatasetCatalog.get("fashionlt_val")  # generated once
    except FileNotFoundError as e:
        sys.exit(f"[figures] {e}")
    gt_file = MetadataCatalog.get("fashionlt_val").json_file
    per_class, pairs, matrices, names = analyse(args.runs, args.seeds, gt_file)
    with open(gt_file) as f:
        fps = false_positives(args.runs, args.seeds, json.load(f))
    os.makedirs(args.out, exist_ok=True)
    per_class_figure(per_class, args.seeds, os.path.join(args.out, "fashionlt_per_class_ap.png"))
    ids = predictions_figure(
        args.runs, args.picture_seed, gt_file, os.path.join(args.out, "fashionlt_predictions.png")
    )
    analysis = {
        "seeds": args.seeds, "per_class": per_class, "confusion": pairs,
        "confusion_matrices": {"classes": names, **matrices},
        "picture_seed": args.picture_seed, "picture_score": PICTURE_SCORE,
        "picture_images": ids, "false_positives": fps,
        "command": f"{COMMAND} --seeds {' '.join(map(str, args.seeds))} --picture-seed "
        f"{args.picture_seed}",
    }  # fmt: skip
    with open(os.path.join(args.out, "fashionlt_analysis.json"), "w") as f:
        json.dump(analysis, f, indent=1)
    print(
        f"[figures] written to {args.out}: fashionlt_analysis.json, fashionlt_per_class_ap.png, "
        "fashionlt_predictions.png; `make docs` puts them on docs/benchmarks/fashionlt.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
