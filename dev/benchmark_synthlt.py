#!/usr/bin/env python
"""`make benchmark`: softmax vs additive margins vs IIF on SynthLT (the paper's Fig. 1 question),
over several seeds, with every claim tested by a paired difference.

The same model and schedule trained with: softmax, IIF raw, IOF base10, balanced softmax and logit
adjustment in the loss; post-process IIF and post-hoc logit adjustment evaluate the softmax model,
as do the training-free calibrations NorCal (Pan et al. 2021) and FRACAL (Alexandridis et al.
2025). Then the paper's Table XV components added one by one to IOF base10 (cosine classifier +
normalised mask, FASA, repeat-factor sampling, test settings = the full recipe; the + RFS model is
also scored with each test setting alone), and the one-stage detectors RetinaNet and FCOS without
and with IIF (box AP only). Every row is trained once per seed (SEED = 42, 43, ...: 42 is the
configs' seed, so the "IIF raw" row's first seed is `make demo`'s run); a post-process row
evaluates its source row's model of the same seed.
Each run goes through train_net.py with a pinned intra-op thread count (NUM_THREADS), so a rerun
on the same thread count repeats it; a finished run is reused, an interrupted one resumed.

Reported per row: mean ± std over seeds of mask AP, APr, APc, APf, AP-fixed and AP-pool (Dave et
al. 2021), box AP and APr, false positives per image at a score threshold, dAP_FP (box AP50
gained when every detection that matches no ground truth of its class at IoU >= 0.5 is removed)
and the training speed. Per claim of the paper: the paired difference over seeds (same seed, same
data order) with a 95 % Student-t confidence interval; a claim whose interval includes 0 is "not
shown", one whose interval lies on the other side is "contradicted".

`--dataset fashionlt` runs the Mask R-CNN rows on FashionLT (real Fashion-MNIST garments,
iif_d2/data/fashion_lt.py) instead, or the rows --only names (one-stage ones too): the same
configs with the dataset's overrides (its train and val sets, 10 classes, on the key of each
row's head), into output/benchmark_fashionlt, recorded in docs/results/fashionlt_runs.json
unless --records names another file.

Writes OUTPUT/benchmark.md, OUTPUT/benchmark.json (every run, the means, the claims) and
OUTPUT/benchmark.png (error bars: ± one std).

    python dev/benchmark_synthlt.py [--dataset synthlt|fashionlt] [--quick] [--seeds N]
        [--jobs J] [--only KEY ...] [--output-dir DIR] [train_net.py config overrides]
"""

import argparse
import json
import os
import platform
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from iif_d2.bench.records import (
    BENCHMARK_DATASETS,
    REPO,
    benchmark_dataset,
    finished_metrics,
    load_records,
    mask_rcnn_rows,
    mixed_kernel_rows,
    save_records,
)
from iif_d2.bench.report import comparison_text, write_synthlt_report
from iif_d2.bench.runner import run_train_net, train_config
from iif_d2.bench.synthlt_table import (
    COLUMNS,
    FIRST_SEED,
    METHODS,
    QUICK,
    QUICK_ROWS,
    compare_tables,
    demo_band,
    fp_by_group,
    from_records,
    identical_runs,
    record_runs,
    run_plan,
    select_methods,
    summarise,
)
from iif_d2.lvis_eval.fp_analysis import (
    DEFAULT_SCORE_THRESH,
    delta_ap_fp,
    false_positives_per_image,
)
from iif_d2.utils.machine import KERNEL_PINS, resolve_kernel_pin
from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def train_seconds_per_iter(out):
    """s/iteration of the run's last training session (its log.txt), None if never trained
    (post-process rows evaluate another row's model)."""
    speed = None
    with open(os.path.join(out, "log.txt")) as f:
        for line in f:
            m = re.search(
                r"Overall training speed: \d+ iterations in \S+ \(([\d.]+) s / it\)", line
            )
            speed = float(m.group(1)) if m else speed
    return speed


def fp_stats(out, gt_file, score_thresh):
    results = os.path.join(out, "inference", "lvis_instances_results.json")
    fp = false_positives_per_image(gt_file, results, score_thresh=score_thresh)
    return fp, delta_ap_fp(gt_file, results)["delta_ap_fp"]


def run_one(key, seed, config, weights_of, out_root, opts, gt_file, score_thresh, progress):
    """Train (or evaluate) one row at one seed; return its metrics.

    A run whose stamp (the same command) and results exist is read back, not repeated."""
    out, opts, stamp = run_plan(key, seed, config, weights_of, out_root, opts)
    done = finished_metrics(out, stamp)
    if done is not None:
        return done
    max_iter = None if weights_of else train_config(config, opts).SOLVER.MAX_ITER
    t = time.time()
    res = run_train_net(
        out, config, opts, f"{key} seed {seed}", eval_only=bool(weights_of), max_iter=max_iter,
        progress=progress, prefix="[benchmark]",
    )  # fmt: skip
    wall = time.time() - t
    fp, dap = fp_stats(out, gt_file, score_thresh)
    segm, bbox = res.get("segm", {}), res["bbox"]
    metrics = {
        "AP": segm.get("AP"), "APr": segm.get("APr"), "APc": segm.get("APc"),
        "APf": segm.get("APf"), "AP-fixed": segm.get("AP-fixed", bbox.get("AP-fixed")),
        "AP-pool": segm.get("AP-pool", bbox.get("AP-pool")), "APbox": bbox["AP"],
        "APr box": bbox["APr"], "APc box": bbox["APc"], "APf box": bbox["APf"],
        "FP/img": fp["fp_per_image"], **fp_by_group(fp), "dAP_FP": dap,
        "train s/it": None if weights_of else train_seconds_per_iter(out), "run (s)": wall,
    }  # fmt: skip
    with open(os.path.join(out, "benchmark_run.json"), "w") as f:
        json.dump({"stamp": stamp, "metrics": metrics}, f, indent=1)
    return metrics


def run_order(methods, seeds):
    """The (row, seed) runs in the order :func:`run_all` submits them: each seed's trained rows,
    the rows evaluating their models one seed later (after the next seed's trained rows)."""
    trained, evaluated = [m for m in methods if not m[3]], [m for m in methods if m[3]]
    order = []
    for i, s in enumerate(seeds):
        order += [(m, s) for m in trained]
        order += [(m, seeds[i - 1]) for m in evaluated] if i else []
    return order + ([(m, seeds[-1]) for m in evaluated] if seeds else [])


def run_all(methods, seeds, out_root, opts, gt_file, score_thresh, jobs, records=None):
    """Every (row, seed), seed by seed (a benchmark cut short leaves its earlier seeds whole:
    their claims paired), at most ``jobs`` at a time, in :func:`run_order` (a post-process row
    one seed late, so that a worker seldom waits for a model still in training); prints one
    line per finished run with an ETA. Runs the ``records`` answer are read from them.

    Returns:
        {key: {seed: metrics}}.
    """
    known = from_records(methods, seeds, out_root, opts, records or {})
    order = run_order(methods, seeds)
    total = len(order)
    runs, finished, t0 = {}, 0, time.time()

    def one(method, seed, source):
        key, _, config, weights_of = method
        if (key, seed) in known:
            return key, seed, known[(key, seed)]
        if source is not None:  # submitted earlier, so already running or done: no deadlock
            source.result()
        return (
            key,
            seed,
            run_one(
                key, seed, config, weights_of, out_root, opts, gt_file, score_thresh, jobs == 1
            ),
        )

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {}
        for m, s in order:  # a source row is submitted before the rows evaluating its model
            futures[(m[0], s)] = pool.submit(one, m, s, futures.get((m[3], s)))
        for fut in futures.values():
            key, seed, metrics = fut.result()
            runs.setdefault(key, {})[seed] = metrics
            finished += 1
            elapsed = time.time() - t0
            eta = elapsed / finished * (total - finished)
            print(
                f"[benchmark] {finished}/{total} done: {key} seed {seed} (mask AP "
                f"{_fmt(metrics['AP'])}, box AP {_fmt(metrics['APbox'])}); "
                f"{elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
                flush=True,
            )
    return runs


def _fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="synthlt", choices=list(BENCHMARK_DATASETS),
        help="what the rows train and evaluate on: synthlt (default; every row) or fashionlt "
        "(real Fashion-MNIST garments; the Mask R-CNN rows unless --only names others, recorded "
        "in docs/results/fashionlt_runs.json by default)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help=f"rows {', '.join(QUICK_ROWS)} on a 400-iteration schedule (under an hour on 2 "
        "CPU cores)",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=int, default=None,
        help="seeds per row (default: 3 on CPU, 5 on a GPU)",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="runs at once (default: the CPU cores / --threads on CPU, 1 on a GPU)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1,
        help="intra-op threads of each run (NUM_THREADS; default 1: the numbers then repeat on "
        "any machine with the same CPU kernel set, whatever its core count)",
    )  # fmt: skip
    parser.add_argument(
        "--kernels", default=None, choices=["native", *KERNEL_PINS],
        help="CPU kernel set of the runs: avx2 (the default where the CPU has it: ATen, oneDNN "
        "and MKL held to AVX2, the README's tables' kernels, so a CPU with AVX-512 or AMX "
        "repeats their runs bit for bit), native (the widest this CPU has: another draw) or "
        "default (torch's portable kernels)",
    )  # fmt: skip
    parser.add_argument(
        "--output-dir", default=None,
        help="where runs and reports go (default: output/benchmark, --quick: "
        "output/benchmark_quick; --dataset fashionlt: output/benchmark_fashionlt[_quick])",
    )  # fmt: skip
    parser.add_argument(
        "--score-thresh", type=float, default=DEFAULT_SCORE_THRESH,
        help=f"score threshold of the false positives per image (default: {DEFAULT_SCORE_THRESH})",
    )  # fmt: skip
    parser.add_argument(
        "--compare", metavar="JSON", default=None,
        help="also compare the table with another run's benchmark.json (e.g. "
        "docs/results/synthlt_quick.json): each cell's difference with its 95 %% interval, "
        "and the claims whose verdict changed; written to comparison.md",
    )  # fmt: skip
    parser.add_argument(
        "--write-band", action="store_true",
        help="also write the IIF raw row's band to docs/results/demo_band.json (make demo compares "
        "its numbers with it)",
    )  # fmt: skip
    parser.add_argument(
        "--records", metavar="JSON", default=None,
        help="a records file: runs recorded there with the same stamp are read back, not "
        "repeated, and this run's new runs are added (a benchmark in parts: on several days, "
        "clones or machines, or several commands at once; the report names every machine). "
        "The README's full table: docs/results/synthlt_runs.json (make docs regenerates the "
        "pages from it)",
    )  # fmt: skip
    keys = [m[0] for m in METHODS]
    parser.add_argument(
        "--only", nargs="+", metavar="KEY", choices=keys,
        help="run only these rows (and the rows they evaluate), of: " + ", ".join(keys),
    )  # fmt: skip
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="train_net.py config overrides: KEY VALUE ..."
    )
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if len(args.opts) % 2:
        sys.exit(f"[benchmark] config overrides come in KEY VALUE pairs; got {args.opts}")
    for name in ("seeds", "jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            sys.exit(f"[benchmark] --{name} must be >= 1")
    try:  # before torch first dispatches here, and inherited by every run
        kernels, env = resolve_kernel_pin(args.kernels)
    except ValueError as e:
        sys.exit(f"[benchmark] --kernels: {e}")
    os.environ.update(env)
    dataset = benchmark_dataset(args.dataset)
    if args.write_band and args.dataset != "synthlt":
        sys.exit("[benchmark] --write-band writes make demo's SynthLT band: drop it or --dataset")
    methods = select_methods(args.only, args.quick)
    if dataset["mask_by_default"] and not args.only:
        methods = mask_rcnn_rows(methods)
    if args.records is None and dataset["default_records"]:
        args.records = os.path.join(REPO, dataset["records"])
    device = _device()
    seeds_n = args.seeds or (5 if device == "cuda" else 3)
    jobs = args.jobs or (1 if device == "cuda" else max(1, (os.cpu_count() or 1) // args.threads))
    seeds = list(range(FIRST_SEED, FIRST_SEED + seeds_n))
    name = dataset["output"] + ("_quick" if args.quick else "")
    out_root = os.path.abspath(args.output_dir or os.path.join(REPO, "output", name))
    opts = (QUICK if args.quick else []) + ["NUM_THREADS", str(args.threads)]
    opts += dataset["opts"] + list(args.opts)

    from detectron2.data import DatasetCatalog, MetadataCatalog

    import iif_d2.data  # noqa: F401  (registers SynthLT and FashionLT)

    try:
        DatasetCatalog.get(dataset["val"])  # generates the set once
    except FileNotFoundError as e:  # FashionLT without the Fashion-MNIST files
        sys.exit(f"[benchmark] {e}")
    gt_file = MetadataCatalog.get(dataset["val"]).json_file
    print(
        f"[benchmark] {len(methods)} rows x {seeds_n} seeds on {device}, {jobs} at a time, "
        f"{args.threads} thread(s) each, {kernels} CPU kernels; output: {out_root}",
        flush=True,
    )
    t0 = time.time()
    records = load_records(args.records)
    loaded = dict(records)
    runs = run_all(methods, seeds, out_root, opts, gt_file, args.score_thresh, jobs, records)
    rows, claims = summarise(methods, runs, seeds)
    import torch

    from iif_d2.utils.machine import cpu_capability, describe_machine

    machines, mixed = {describe_machine()}, {}
    if args.records:
        machines = record_runs(
            records, methods, runs, out_root, opts, describe_machine(), cpu_capability()
        )
        save_records(args.records, {k: r for k, r in records.items() if loaded.get(k) is not r})
        print(f"[benchmark] {len(load_records(args.records))} runs recorded in {args.records}")
        mixed = mixed_kernel_rows(records, runs)
        for key, kernels in mixed.items():
            print(
                f"[benchmark] warning: row {key}'s seeds ran on CPU kernel sets "
                f"{' and '.join(kernels)}; each run repeats only on its own kernel set"
            )

    with open(gt_file) as f:
        val_images = len(json.load(f)["images"])
    run_minutes = sum(
        r.get("run (s)") or 0.0 for by_seed in runs.values() for r in by_seed.values()
    )
    run_minutes /= 60
    header = (
        f"{dataset['title']} val ({val_images} images), {'--quick ' if args.quick else ''}"
        f"{seeds_n} seeds "
        f"({seeds[0]}-{seeds[-1]}), mean ± std; {' + '.join(sorted(machines))}, "
        f"{platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} intra-op thread(s) per run, {jobs} run(s) at "
        f"a time; FP/img at score >= {args.score_thresh}; post-process rows and the recipe row "
        f"evaluate another row's model of the same seed. Wall time {(time.time() - t0) / 60:.0f} "
        f"min (runs found finished are not repeated); the runs' own times add up to "
        f"{run_minutes:.0f} min."
    )
    if mixed:
        header += " Rows whose seeds ran on more than one CPU kernel set (each run repeats only "
        header += "on its own): " + "; ".join(f"{k} ({', '.join(v)})" for k, v in mixed.items())
        header += "."
    print(write_synthlt_report(rows, claims, runs, out_root, header, COLUMNS))
    if args.compare:
        with open(args.compare) as f:
            reference = json.load(f)
        cells, verdicts = compare_tables(rows, claims, reference)
        text = comparison_text(cells, verdicts, args.compare, identical_runs(runs, reference))
        with open(os.path.join(out_root, "comparison.md"), "w") as f:
            f.write(text)
        print(text)
    if "iif_raw" in runs and not args.quick and args.dataset == "synthlt":
        band = demo_band(runs, seeds, args.threads, describe_machine())
        paths = [os.path.join(out_root, "demo_band.json")]
        paths += (
            [os.path.join(REPO, "docs", "results", "demo_band.json")] if args.write_band else []
        )
        for path in paths:
            with open(path, "w") as f:
                json.dump(band, f, indent=1)
        print(f"[benchmark] make demo's band written to {', '.join(paths)}")
    print(f"[benchmark] written to {out_root}/benchmark.{{md,json,png}}")


if __name__ == "__main__":
    main()
