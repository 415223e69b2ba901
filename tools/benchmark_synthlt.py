#!/usr/bin/env python
"""`make benchmark`: softmax vs additive margins vs IIF on SynthLT (the paper's Fig. 1 question),
over several seeds, with every claim tested by a paired difference.

The same model and schedule trained with: softmax, IIF raw, IOF base10, balanced softmax and
logit adjustment in the loss; post-process IIF and post-hoc logit adjustment evaluate the softmax
model, as do the training-free calibrations NorCal (Pan et al. 2021) and FRACAL (Alexandridis et
al. 2025). Then the paper's Table XV components added one by one to IOF base10 (cosine
classifier + normalised mask, FASA, repeat-factor sampling, test settings = the full recipe),
and the one-stage detectors RetinaNet and FCOS without and with IIF (box AP only). Every row is
trained once per seed (SEED = 42, 43, ...: 42 is the configs' seed, so the "IIF raw" row's first
seed is `make demo`'s run); a post-process row evaluates its source row's model of the same seed.
Each run goes through train_net.py with a pinned intra-op thread count (NUM_THREADS), so a rerun
on the same thread count repeats it; a finished run is reused, an interrupted one resumed.

Reported per row: mean ± std over seeds of mask AP, APr, APc, APf, AP-fixed and AP-pool (Dave et
al. 2021), box AP and APr, false positives per image at a score threshold, dAP_FP (box AP50
gained when every detection that matches no ground truth of its class at IoU >= 0.5 is removed)
and the training speed. Per claim of the paper: the paired difference over seeds (same seed, same
data order) with a 95 % Student-t confidence interval; a claim whose interval includes 0 is "not
shown", one whose interval lies on the other side is "contradicted".

Writes OUTPUT/benchmark.md, OUTPUT/benchmark.json (every run, the means, the claims) and
OUTPUT/benchmark.png (error bars: ± one std).

    python tools/benchmark_synthlt.py [--quick] [--seeds N] [--jobs J] [--only KEY ...]
        [--output-dir DIR] [train_net.py config overrides]
"""

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from iif_d2.utils.machine import KERNEL_PINS, resolve_kernel_pin
from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

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
    # training-free calibrations of the softmax model, beside post-process IIF
    ("norcal", "NorCal (post-hoc)", f"{SEG}/mask_rcnn_R_18_FPN_norcal.yaml", "softmax"),
    ("fracal", "FRACAL (post-hoc)", f"{SEG}/mask_rcnn_R_18_FPN_fracal.yaml", "softmax"),
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
METHOD_CONFIGS = {m[0]: m[2] for m in METHODS}
# The paper's claims as paired differences: (claim, row a, row b, metric, +1 if a > b is the
# claim, -1 if a < b is). FP/img and dAP_FP: fewer is better.
CLAIMS = [
    ("IIF raises APr over softmax", "iif_raw", "softmax", "APr", +1),
    ("IIF raises AP over softmax", "iif_raw", "softmax", "AP", +1),
    ("IIF: fewer FP/img than balanced softmax", "iif_raw", "balanced", "FP/img", -1),
    ("IIF: lower dAP_FP than balanced softmax", "iif_raw", "balanced", "dAP_FP", -1),
    ("IIF: fewer FP/img than logit adj. (loss)", "iif_raw", "la_loss", "FP/img", -1),
    ("IIF: lower dAP_FP than logit adj. (loss)", "iif_raw", "la_loss", "dAP_FP", -1),
    ("IIF: fewer FP/img than logit adj. (post-hoc)", "iif_raw", "la_posthoc", "FP/img", -1),
    ("IIF: lower dAP_FP than logit adj. (post-hoc)", "iif_raw", "la_posthoc", "dAP_FP", -1),
    ("end-to-end IIF beats post-process IIF (AP)", "iif_raw", "iif_post", "AP", +1),
    ("NorCal raises APr over softmax", "norcal", "softmax", "APr", +1),
    ("FRACAL raises APr over softmax", "fracal", "softmax", "APr", +1),
    ("end-to-end IIF beats NorCal (AP)", "iif_raw", "norcal", "AP", +1),
    ("end-to-end IIF beats FRACAL (AP)", "iif_raw", "fracal", "AP", +1),
    ("the recipe beats IIF alone (AP)", "recipe", "iif_raw", "AP", +1),
    ("cos + norm. mask over IOF base10 (AP)", "cos_norm", "iof_base10", "AP", +1),
    ("FASA over cos + norm. mask (AP)", "cos_norm_fasa", "cos_norm", "AP", +1),
    ("RFS over FASA (AP)", "cos_norm_fasa_rfs", "cos_norm_fasa", "AP", +1),
    ("test settings over RFS (AP)", "recipe", "cos_norm_fasa_rfs", "AP", +1),
    ("IIF on RetinaNet (box AP)", "retinanet_iif", "retinanet", "APbox", +1),
    ("IIF on FCOS (box AP)", "fcos_iif", "fcos", "APbox", +1),
]  # fmt: skip
# --quick: two trained rows (softmax, IIF raw) and the post-hoc methods on the softmax model,
# on a shorter schedule: under an hour on 2 CPU cores
QUICK_ROWS = ["softmax", "iif_raw", "iif_post", "la_posthoc", "norcal", "fracal"]
QUICK = ["SOLVER.MAX_ITER", "400", "SOLVER.STEPS", "(320,)", "SOLVER.WARMUP_ITERS", "50"]
FIRST_SEED = 42  # the configs' SEED
COLUMNS = ["AP", "APr", "APc", "APf", "AP-fixed", "AP-pool", "APbox", "APr box", "FP/img",
           "dAP_FP", "train s/it"]  # fmt: skip


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def paired_difference(a, b, confidence=0.95):
    """Mean of a_i - b_i over paired samples with its two-sided Student-t interval.

    Returns:
        dict: n, mean, std (of the differences, ddof 1), low, high (None for n < 2).
    """
    from scipy import stats

    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "low": None, "high": None}
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def verdict(diff, sign):
    """ "shown" when the interval lies on the claimed side of 0, "contradicted" when it lies on
    the other, "not shown" when it holds 0 (or there are too few seeds for an interval)."""
    if diff["low"] is None:
        return "not shown (one seed)"
    lo, hi = sign * diff["low"], sign * diff["high"]
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return "shown"
    if hi < 0:
        return "contradicted"
    return "not shown"


def mean_std(values):
    """(mean, sample std) of the non-None values; (None, None) if there are none."""
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def welch_difference(a_mean, a_std, a_n, b_mean, b_std, b_n, confidence=0.95):
    """Mean difference a - b of two independent samples given as (mean, std, n), with its
    two-sided Welch interval: (difference, low, high); the interval is the point itself when
    both stds are 0."""
    from scipy import stats

    va, vb = a_std**2 / a_n, b_std**2 / b_n
    d = a_mean - b_mean
    if va + vb == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va**2 / (a_n - 1) + vb**2 / (b_n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * math.sqrt(va + vb)
    return d, d - half, d + half


def compare_tables(rows, claims, reference):
    """This run's table against a reference report (another run's benchmark.json, e.g. the
    README's copy in docs/): per row and metric the difference of the means with its 95 %
    Welch interval (consistent when it holds 0), and the claims whose verdict changed.

    Returns:
        (cells: list of dicts key, metric, mean, reference, low, high, consistent;
         verdicts: list of (claim, reference verdict, this verdict) that differ)
    """
    ref_rows = {r["key"]: r for r in reference["rows"]}
    cells = []
    for row in rows:
        ref = ref_rows.get(row["key"])
        if ref is None:
            continue
        for c in COLUMNS:
            if c == "train s/it" or row[c] is None or ref.get(c) is None:
                continue
            d, low, high = welch_difference(
                row[c], row[c + " std"], len(row["seeds"]),
                ref[c], ref[c + " std"], len(ref["seeds"]),
            )  # fmt: skip
            cells.append({"key": row["key"], "method": row["method"], "metric": c,
                          "mean": row[c], "reference": ref[c], "difference": d, "low": low,
                          "high": high, "consistent": low <= 0 <= high})  # fmt: skip
    ref_verdicts = {c["claim"]: c["verdict"] for c in reference["claims"]}
    verdicts = [
        (c["claim"], ref_verdicts[c["claim"]], c["verdict"])
        for c in claims
        if ref_verdicts.get(c["claim"], c["verdict"]) != c["verdict"]
    ]
    return cells, verdicts


TIMINGS = ("train s/it", "run (s)")  # differ between any two runs; every other metric repeats


def identical_runs(runs, reference):
    """Which runs (row, seed) of this run and a reference report give every metric but the
    timings to the last bit: the same seed, thread count and kernels repeat a run exactly.

    Returns:
        (identical: list of (key, seed), different: list of (key, seed)), over the runs in both.
    """
    same, other = [], []
    for key, by_seed in runs.items():
        for seed, metrics in by_seed.items():
            ref = reference.get("runs", {}).get(key, {}).get(str(seed))
            if ref is None:
                continue
            equal = all(metrics.get(m) == v for m, v in ref.items() if m not in TIMINGS)
            (same if equal else other).append((key, seed))
    return same, other


def comparison_text(cells, verdicts, reference_path, identical=None):
    """The comparison as markdown: a summary line, the cells that are not consistent, the
    changed verdicts; with ``identical`` (from ``identical_runs``), how many runs repeat the
    reference's bit for bit."""
    bad = [c for c in cells if not c["consistent"]]
    lines = [
        f"Against {reference_path}: {len(cells) - len(bad)} of {len(cells)} cells consistent "
        "(the 95 % Welch interval of the difference of the means holds 0).",
        "",
    ]
    if identical is not None:
        same, other = identical
        lines += [
            f"{len(same)} of {len(same) + len(other)} runs in both repeat the reference's "
            "metrics bit for bit (all but the timings)"
            + (f"; differ: {', '.join(f'{k} seed {s}' for k, s in other)}" if other else "")
            + ".",
            "",
        ]
    if bad:
        lines += ["| method | metric | this run | reference | difference | 95 % CI |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {c['method']} | {c['metric']} | {c['mean']:.2f} | {c['reference']:.2f} | "
                  f"{c['difference']:+.2f} | [{c['low']:+.2f}, {c['high']:+.2f}] |"
                  for c in bad]  # fmt: skip
        lines.append("")
    lines += [f"Verdict changed: {claim}: {ref} -> {now}" for claim, ref, now in verdicts]
    lines += [] if verdicts else ["Every claim's verdict is the reference's."]
    return "\n".join(lines) + "\n"


def run_dir(out_root, key, seed):
    return os.path.join(out_root, key, f"seed{seed}")


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
    from iif_d2.lvis_eval.fp_analysis import delta_ap_fp, false_positives_per_image

    results = os.path.join(out, "inference", "lvis_instances_results.json")
    fp = false_positives_per_image(gt_file, results, score_thresh=score_thresh)
    return fp["fp_per_image"], delta_ap_fp(gt_file, results)["delta_ap_fp"]


def config_chain(config):
    """``config`` and every file its ``_BASE_`` chain includes, the config first."""
    import yaml

    chain = [os.path.abspath(config)]
    while True:
        with open(chain[-1]) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        if not base:
            return chain
        path = os.path.abspath(os.path.join(os.path.dirname(chain[-1]), os.path.expanduser(base)))
        if path in chain:
            sys.exit(f"[benchmark] {config}: its _BASE_ chain includes {path} twice")
        chain.append(path)


def config_digest(*configs):
    """SHA-256 (first 16 hex digits) of the text of ``configs`` and of their ``_BASE_`` chains:
    a run recorded before one of those files changed is another run."""
    import hashlib

    h = hashlib.sha256()
    for config in configs:
        for path in config_chain(config):
            with open(path, "rb") as f:
                h.update(os.path.relpath(path, REPO).encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()[:16]


def run_plan(key, seed, config, weights_of, out_root, opts):
    """Where one (row, seed) runs, its train_net.py overrides and its stamp (what makes two runs
    the same run: config, the text of its files (and of the source row's, for a row evaluating
    another row's model), overrides; the source model's path relative to ``out_root``)."""
    out = run_dir(out_root, key, seed)
    opts = ["SEED", str(seed), "TEST.LVIS_EVAL_SAVE_RESULTS", "True",
            "TEST.LVIS_EVAL_FIXED_POOLED", "True", *opts]  # fmt: skip
    sources = [config] + ([METHOD_CONFIGS[weights_of]] if weights_of else [])
    stamp = {"config": os.path.relpath(config, REPO), "config_sha256": config_digest(*sources),
             "opts": list(opts)}  # fmt: skip
    if weights_of:
        weights = os.path.join(run_dir(out_root, weights_of, seed), "model_final.pth")
        opts = ["MODEL.WEIGHTS", weights, *opts]
        stamp["opts"] = ["MODEL.WEIGHTS", os.path.relpath(weights, out_root), *stamp["opts"]]
    return out, opts, stamp


def _relative_weights(stamp, out_root):
    """``stamp`` with an absolute MODEL.WEIGHTS made relative to ``out_root`` (stamps written
    before they named the source model relatively still match their run)."""
    opts = list(stamp.get("opts", []))
    if opts[:1] == ["MODEL.WEIGHTS"] and len(opts) > 1 and os.path.isabs(opts[1]):
        opts[1] = os.path.relpath(opts[1], out_root)
    return {**stamp, "opts": opts}


def finished_metrics(out, stamp):
    """The metrics of a finished run in ``out`` with this stamp, else None."""
    try:
        with open(os.path.join(out, "benchmark_run.json")) as f:
            done = json.load(f)
        out_root = os.path.dirname(os.path.dirname(os.path.abspath(out)))
        return done["metrics"] if _relative_weights(done["stamp"], out_root) == stamp else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_records(path):
    """A records file (``--records``): {(key, seed): record}; {} if it does not exist yet.

    Each record holds the run's stamp, metrics, machine and torch version. A records file lets a
    benchmark be run in parts, on different days or clones: a run whose stamp is recorded is
    read back, not repeated."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            data = json.load(f)
            return {(r["key"], int(r["seed"])): r for r in data["runs"]}
        except (ValueError, KeyError, TypeError) as e:
            sys.exit(
                f"[benchmark] {path} is not a records file ({e!r}): it holds "
                '{"runs": [{"key", "seed", "stamp", "metrics", ...}]}; pass another --records '
                "path or move this file away"
            )


def save_records(path, new):
    """Add the ``new`` records to the file at ``path``, keeping every run already there (also
    those another benchmark command added while this one ran); sorted by row and seed, written
    atomically (a killed command leaves the old file) under a lock (two commands at once)."""
    import fcntl

    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # the folder: the file itself is replaced
        records = {**load_records(path), **new}
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"runs": [records[k] for k in sorted(records)]}, f, indent=1)
        os.replace(tmp, path)
    finally:
        os.close(folder)  # releases the lock


def recorded_metrics(records, key, seed, stamp):
    r = records.get((key, seed))
    return r["metrics"] if r is not None and r["stamp"] == stamp else None


def run_one(key, seed, config, weights_of, out_root, opts, gt_file, score_thresh, progress):
    """Train (or evaluate) one row at one seed; return its metrics.

    A run whose stamp (the same command) and results exist is read back, not repeated."""
    from demo import demo_config, run_train_net

    out, opts, stamp = run_plan(key, seed, config, weights_of, out_root, opts)
    done = finished_metrics(out, stamp)
    if done is not None:
        return done
    max_iter = None if weights_of else demo_config(opts, config).SOLVER.MAX_ITER
    t = time.time()
    res = run_train_net(
        out, opts, f"{key} seed {seed}", eval_only=bool(weights_of), max_iter=max_iter,
        config=config, progress=progress,
    )  # fmt: skip
    wall = time.time() - t
    fp, dap = fp_stats(out, gt_file, score_thresh)
    segm, bbox = res.get("segm", {}), res["bbox"]
    metrics = {
        "AP": segm.get("AP"), "APr": segm.get("APr"), "APc": segm.get("APc"),
        "APf": segm.get("APf"), "AP-fixed": segm.get("AP-fixed", bbox.get("AP-fixed")),
        "AP-pool": segm.get("AP-pool", bbox.get("AP-pool")), "APbox": bbox["AP"],
        "APr box": bbox["APr"], "FP/img": fp, "dAP_FP": dap,
        "train s/it": None if weights_of else train_seconds_per_iter(out), "run (s)": wall,
    }  # fmt: skip
    with open(os.path.join(out, "benchmark_run.json"), "w") as f:
        json.dump({"stamp": stamp, "metrics": metrics}, f, indent=1)
    return metrics


def from_records(methods, seeds, out_root, opts, records):
    """The (row, seed) runs the records answer: {(key, seed): metrics}.

    A run that is neither recorded nor finished in ``out_root`` is run; if it evaluates another
    row's model and that model is not in ``out_root``, the source row is trained again too (a
    record keeps metrics, not models)."""
    found, finished = {}, set()
    for key, _, config, weights_of in methods:
        for seed in seeds:
            out, _, stamp = run_plan(key, seed, config, weights_of, out_root, opts)
            if finished_metrics(out, stamp) is not None:
                finished.add((key, seed))
                continue
            metrics = recorded_metrics(records, key, seed, stamp)
            if metrics is not None:
                found[(key, seed)] = metrics
    for key, _, _, weights_of in methods:
        for seed in seeds:
            if not weights_of or (key, seed) in found or (key, seed) in finished:
                continue
            if not os.path.exists(
                os.path.join(run_dir(out_root, weights_of, seed), "model_final.pth")
            ):
                found.pop((weights_of, seed), None)
    return found


def record_runs(records, methods, runs, out_root, opts, machine, kernels):
    """Add ``runs`` not yet in ``records`` (or recorded with another stamp) to them, with this
    machine, CPU kernel set and torch version; return the machines of the runs in ``runs``."""
    import torch

    machines = set()
    for key, _, config, weights_of in methods:
        for seed, metrics in runs.get(key, {}).items():
            _, _, stamp = run_plan(key, seed, config, weights_of, out_root, opts)
            if recorded_metrics(records, key, seed, stamp) is None:
                records[(key, seed)] = {
                    "key": key, "seed": seed, "stamp": stamp, "metrics": metrics,
                    "machine": machine, "kernels": kernels, "torch": torch.__version__,
                }  # fmt: skip
            machines.add(records[(key, seed)]["machine"])
    return machines


def record_kernels(record):
    """The CPU kernel set a record's run used (older records name it only in their machine)."""
    if record.get("kernels"):
        return record["kernels"]
    found = re.search(r"\((\w+) kernels\)", record.get("machine", ""))
    return found.group(1) if found else "unknown"


def mixed_kernel_rows(records, runs):
    """{row: kernel sets} of the rows whose recorded seeds ran on more than one CPU kernel set:
    such a row's runs repeat bit for bit only each on its own kernel set."""
    mixed = {}
    for key, by_seed in runs.items():
        kernels = {record_kernels(records[(key, s)]) for s in by_seed if (key, s) in records}
        if len(kernels) > 1:
            mixed[key] = sorted(kernels)
    return mixed


def run_all(methods, seeds, out_root, opts, gt_file, score_thresh, jobs, records=None):
    """Every (row, seed), trained rows first (a post-process row needs its source's model), at
    most ``jobs`` at a time; prints one line per finished run with an ETA. Runs the ``records``
    answer are read from them.

    Returns:
        {key: {seed: metrics}}.
    """
    known = from_records(methods, seeds, out_root, opts, records or {})
    phases = [[m for m in methods if not m[3]], [m for m in methods if m[3]]]
    total = sum(len(p) for p in phases) * len(seeds)
    runs, finished, t0 = {}, 0, time.time()

    def one(method, seed):
        key, _, config, weights_of = method
        if (key, seed) in known:
            return key, seed, known[(key, seed)]
        return (
            key,
            seed,
            run_one(
                key, seed, config, weights_of, out_root, opts, gt_file, score_thresh, jobs == 1
            ),
        )

    for phase in phases:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(one, m, s) for m in phase for s in seeds]
            for fut in futures:
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


# the band's metrics per task: {name in results.json: column of the benchmark's rows}
BAND_COLUMNS = {
    "segm": {"AP": "AP", "APr": "APr", "APc": "APc", "APf": "APf"},
    "bbox": {"AP": "APbox", "APr": "APr box"},
}


def demo_band(runs, seeds, threads, machine):
    """``make demo``'s band: mean and std over seeds of the "IIF raw" row (the demo's config),
    per task and metric, as tools/demo.py reads it (docs/demo_band.json)."""
    metrics = {
        task: {k: list(mean_std([runs["iif_raw"][s][col] for s in seeds]))
               for k, col in cols.items()}
        for task, cols in BAND_COLUMNS.items()
    }  # fmt: skip
    return {"seeds": seeds, "threads": threads, "machine": machine, "metrics": metrics,
            "command": f"python tools/benchmark_synthlt.py --only iif_raw --seeds {len(seeds)} "
            f"--threads {threads} --write-band"}  # fmt: skip


def _fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def summarise(methods, runs, seeds):
    """Rows (mean, std per column) and claims (paired differences) from the runs."""
    rows = []
    for key, label, _, weights_of in methods:
        row = {"key": key, "method": label, "evaluates": weights_of, "seeds": seeds}
        for c in COLUMNS:
            row[c], row[c + " std"] = mean_std([runs[key][s][c] for s in seeds])
        rows.append(row)
    claims = []
    for claim, a, b, metric, sign in CLAIMS:
        if a not in runs or b not in runs:
            continue
        va = [runs[a][s][metric] for s in seeds]
        vb = [runs[b][s][metric] for s in seeds]
        if None in va or None in vb:
            continue
        diff = paired_difference(va, vb)
        claims.append(
            {"claim": claim, "a": a, "b": b, "metric": metric, "sign": sign, **diff,
             "verdict": verdict(diff, sign)}
        )  # fmt: skip
    return rows, claims


def write_report(rows, claims, runs, out_root, header):
    def cell(r, c):
        digits = 2 if c in ("FP/img", "train s/it") else 1
        if r[c] is None:
            return "–"
        return f"{r[c]:.{digits}f} ± {r[c + ' std']:.{digits}f}"

    lines = [header, "", "| method | " + " | ".join(COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    lines += [f"| {r['method']} | " + " | ".join(cell(r, c) for c in COLUMNS) + " |" for r in rows]
    if claims:
        lines += ["", "| claim | metric | a − b (mean over seeds) | 95 % CI | verdict |",
                  "|---|---|---|---|---|"]  # fmt: skip
    for c in claims:
        ci = "–" if c["low"] is None else f"[{c['low']:+.2f}, {c['high']:+.2f}]"
        lines.append(f"| {c['claim']} | {c['metric']} | {c['mean']:+.2f} | {ci} | {c['verdict']} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(out_root, exist_ok=True)  # a table read back from records trains nothing here
    with open(os.path.join(out_root, "benchmark.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_root, "benchmark.json"), "w") as f:
        json.dump({"header": header, "rows": rows, "claims": claims, "runs": runs}, f, indent=1)
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
        mean = [r[k] or 0.0 for r in rows]
        err = [r[k + " std"] or 0.0 for r in rows]
        ax1.bar(x + (i - 1.5) * 0.2, mean, 0.2, yerr=err, capsize=2, label=k)
    ax1.set_xticks(x, names, rotation=30, ha="right")
    ax1.set_ylabel("mask AP, mean ± std over seeds (0 = box-only)")
    ax1.legend()
    ax2.bar(x, [r["FP/img"] for r in rows], yerr=[r["FP/img std"] for r in rows], capsize=3,
            color="tab:red")  # fmt: skip
    ax2.set_xticks(x, names, rotation=30, ha="right")
    ax2.set_ylabel("false positives / image, mean ± std")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        "output/benchmark_quick)",
    )  # fmt: skip
    parser.add_argument(
        "--score-thresh", type=float, default=0.3,
        help="score threshold of the false positives per image (default: 0.3)",
    )  # fmt: skip
    parser.add_argument(
        "--compare", metavar="JSON", default=None,
        help="also compare the table with another run's benchmark.json (e.g. "
        "docs/benchmark_synthlt_quick.json): each cell's difference with its 95 %% interval, "
        "and the claims whose verdict changed; written to comparison.md",
    )  # fmt: skip
    parser.add_argument(
        "--write-band", action="store_true",
        help="also write the IIF raw row's band to docs/demo_band.json (make demo compares "
        "its numbers with it)",
    )  # fmt: skip
    parser.add_argument(
        "--records", metavar="JSON", default=None,
        help="a records file: runs recorded there with the same stamp are read back, not "
        "repeated, and this run's new runs are added (a benchmark in parts: on several days, "
        "clones or machines, or several commands at once; the report names every machine). "
        "The README's full table: docs/benchmark_synthlt_runs.json",
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


def select_methods(only, quick):
    """The rows to run, in table order: ``only`` (or the quick rows) plus the rows whose models
    they evaluate."""
    wanted = set(only or (QUICK_ROWS if quick else [m[0] for m in METHODS]))
    by_key = {m[0]: m for m in METHODS}
    for key in list(wanted):
        while by_key[key][3]:
            key = by_key[key][3]
            wanted.add(key)
    return [m for m in METHODS if m[0] in wanted]


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
    device = _device()
    seeds_n = args.seeds or (5 if device == "cuda" else 3)
    jobs = args.jobs or (1 if device == "cuda" else max(1, (os.cpu_count() or 1) // args.threads))
    seeds = list(range(FIRST_SEED, FIRST_SEED + seeds_n))
    name = "benchmark_quick" if args.quick else "benchmark"
    out_root = os.path.abspath(args.output_dir or os.path.join(REPO, "output", name))
    opts = (QUICK if args.quick else []) + ["NUM_THREADS", str(args.threads)] + list(args.opts)

    from detectron2.data import DatasetCatalog, MetadataCatalog

    import iif_d2.data  # noqa: F401  (registers SynthLT)

    DatasetCatalog.get("synthlt_val")  # generates SynthLT once
    gt_file = MetadataCatalog.get("synthlt_val").json_file
    methods = select_methods(args.only, args.quick)
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
        f"SynthLT val ({val_images} images), {'--quick ' if args.quick else ''}{seeds_n} seeds "
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
    print(write_report(rows, claims, runs, out_root, header))
    if args.compare:
        with open(args.compare) as f:
            reference = json.load(f)
        cells, verdicts = compare_tables(rows, claims, reference)
        text = comparison_text(cells, verdicts, args.compare, identical_runs(runs, reference))
        with open(os.path.join(out_root, "comparison.md"), "w") as f:
            f.write(text)
        print(text)
    if "iif_raw" in runs and not args.quick:
        band = demo_band(runs, seeds, args.threads, describe_machine())
        paths = [os.path.join(out_root, "demo_band.json")]
        paths += [os.path.join(REPO, "docs", "demo_band.json")] if args.write_band else []
        for path in paths:
            with open(path, "w") as f:
                json.dump(band, f, indent=1)
        print(f"[benchmark] make demo's band written to {', '.join(paths)}")
    print(f"[benchmark] written to {out_root}/benchmark.{{md,json,png}}")


if __name__ == "__main__":
    main()
