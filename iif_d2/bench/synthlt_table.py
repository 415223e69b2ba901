"""The SynthLT benchmark's table: its rows (config, and the row whose model a post-process
row evaluates), the paper's claims as paired differences, the quick variant, where each run goes
and its stamp, which runs the records answer, and the rows, claims and demo band computed from
the runs. ``dev/benchmark_synthlt.py`` runs it; ``dev/make_docs.py`` reads it back from the
records."""

import os

from iif_d2.bench.records import (
    REPO,
    config_digest,
    config_values,
    finished_metrics,
    recorded_metrics,
)
from iif_d2.bench.stats import mean_std, paired_difference, verdict, welch_difference

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
    # where the test settings act: the + RFS model scored with one of them alone
    ("rfs_test_nms", "  RFS, NMS IoU 0.3 alone", f"{SEG}/mask_rcnn_R_18_FPN_rfs_test_nms.yaml",
     "cos_norm_fasa_rfs"),
    ("rfs_test_mask", "  RFS, mask threshold 0.4 alone",
     f"{SEG}/mask_rcnn_R_18_FPN_rfs_test_mask_threshold.yaml", "cos_norm_fasa_rfs"),
    ("rfs_test_top300", "  RFS, 300 detections alone",
     f"{SEG}/mask_rcnn_R_18_FPN_rfs_test_top300.yaml", "cos_norm_fasa_rfs"),
    # one-stage detectors (box only)
    ("retinanet", "RetinaNet", f"{DET}/retinanet_R_18_FPN.yaml", None),
    ("retinanet_iif", "RetinaNet IIF", f"{DET}/retinanet_R_18_FPN_iif.yaml", None),
    # where RetinaNet IIF's loss of AP comes from: its test-time scaling on the plain model,
    # and its trained model scored without the scaling
    ("retinanet_iif_test", "RetinaNet, IIF at test only",
     f"{DET}/retinanet_R_18_FPN_iif_test_only.yaml", "retinanet"),
    ("retinanet_iif_train", "RetinaNet, IIF in training only",
     f"{DET}/retinanet_R_18_FPN_iif_train_only.yaml", "retinanet_iif"),
    # long-tail treatments of the sigmoid focal loss
    ("retinanet_iif_pos", "RetinaNet, IIF positive weight",
     f"{DET}/retinanet_R_18_FPN_iif_positive_weight.yaml", None),
    ("retinanet_iif_neg", "RetinaNet, IIF negative suppression",
     f"{DET}/retinanet_R_18_FPN_iif_negative_suppression.yaml", None),
    ("retinanet_efl", "RetinaNet EFL", f"{DET}/retinanet_R_18_FPN_efl.yaml", None),
    # the recipe's repeat-factor sampler, alone and with the positive-term weight
    ("retinanet_rfs", "RetinaNet + RFS", f"{DET}/retinanet_R_18_FPN_rfs.yaml", None),
    ("retinanet_iif_pos_rfs", "RetinaNet, IIF positive weight + RFS",
     f"{DET}/retinanet_R_18_FPN_iif_positive_weight_rfs.yaml", None),
    ("fcos", "FCOS", f"{DET}/fcos_R_18_FPN.yaml", None),
    ("fcos_iif", "FCOS IIF", f"{DET}/fcos_R_18_FPN_iif.yaml", None),
    ("fcos_iif_pos", "FCOS, IIF positive weight",
     f"{DET}/fcos_R_18_FPN_iif_positive_weight.yaml", None),
    ("fcos_efl", "FCOS EFL", f"{DET}/fcos_R_18_FPN_efl.yaml", None),
]  # fmt: skip
METHOD_CONFIGS = {m[0]: m[2] for m in METHODS}
# the + RFS model scored with one test setting alone (on the benchmark pages, not the README's)
TEST_SETTING_ROWS = tuple(m[0] for m in METHODS if m[0].startswith("rfs_test_"))
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
    ("NMS IoU 0.3 alone over RFS (AP)", "rfs_test_nms", "cos_norm_fasa_rfs", "AP", +1),
    ("mask threshold 0.4 alone over RFS (AP)", "rfs_test_mask", "cos_norm_fasa_rfs", "AP", +1),
    ("300 detections alone over RFS (AP)", "rfs_test_top300", "cos_norm_fasa_rfs", "AP", +1),
    ("IIF on RetinaNet (box AP)", "retinanet_iif", "retinanet", "APbox", +1),
    ("IIF on FCOS (box AP)", "fcos_iif", "fcos", "APbox", +1),
    ("IIF on RetinaNet (box APr)", "retinanet_iif", "retinanet", "APr box", +1),
    ("RetinaNet, IIF at test only (box AP)", "retinanet_iif_test", "retinanet", "APbox", +1),
    ("RetinaNet, IIF at test only (box APr)", "retinanet_iif_test", "retinanet", "APr box",
     +1),
    ("RetinaNet, IIF in training only (box AP)", "retinanet_iif_train", "retinanet", "APbox",
     +1),
    ("RetinaNet, IIF in training only (box APr)", "retinanet_iif_train", "retinanet",
     "APr box", +1),
    ("RetinaNet, IIF positive weight (box AP)", "retinanet_iif_pos", "retinanet", "APbox", +1),
    ("RetinaNet, IIF positive weight (box APr)", "retinanet_iif_pos", "retinanet", "APr box",
     +1),
    ("RetinaNet, IIF negative suppression (box AP)", "retinanet_iif_neg", "retinanet",
     "APbox", +1),
    ("RetinaNet, IIF negative suppression (box APr)", "retinanet_iif_neg", "retinanet",
     "APr box", +1),
    ("RetinaNet EFL (box AP)", "retinanet_efl", "retinanet", "APbox", +1),
    ("RetinaNet EFL (box APr)", "retinanet_efl", "retinanet", "APr box", +1),
    ("RetinaNet + RFS (box AP)", "retinanet_rfs", "retinanet", "APbox", +1),
    ("RetinaNet + RFS (box APr)", "retinanet_rfs", "retinanet", "APr box", +1),
    ("RetinaNet, IIF positive weight + RFS (box AP)", "retinanet_iif_pos_rfs", "retinanet",
     "APbox", +1),
    ("RetinaNet, IIF positive weight + RFS (box APr)", "retinanet_iif_pos_rfs", "retinanet",
     "APr box", +1),
    ("RetinaNet, IIF positive weight + RFS over RFS (box APr)", "retinanet_iif_pos_rfs",
     "retinanet_rfs", "APr box", +1),
    ("FCOS, IIF positive weight (box AP)", "fcos_iif_pos", "fcos", "APbox", +1),
    ("FCOS, IIF positive weight (box APr)", "fcos_iif_pos", "fcos", "APr box", +1),
    ("FCOS EFL (box AP)", "fcos_efl", "fcos", "APbox", +1),
    ("FCOS EFL (box APr)", "fcos_efl", "fcos", "APr box", +1),
]  # fmt: skip
# --quick: two trained rows (softmax, IIF raw) and the post-hoc methods on the softmax model,
# on a shorter schedule: under an hour on 2 CPU cores
QUICK_ROWS = ["softmax", "iif_raw", "iif_post", "la_posthoc", "norcal", "fracal"]
QUICK = ["SOLVER.MAX_ITER", "400", "SOLVER.STEPS", "(320,)", "SOLVER.WARMUP_ITERS", "50"]
FIRST_SEED = 42  # the configs' SEED
COLUMNS = ["AP", "APr", "APc", "APf", "AP-fixed", "AP-pool", "APbox", "APr box", "APc box",
           "APf box", "FP/img", "dAP_FP", "train s/it"]  # fmt: skip


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


def run_dir(out_root, key, seed):
    return os.path.join(out_root, key, f"seed{seed}")


# the class-count key of each one-stage architecture a row builds (the R-CNNs':
# MODEL.ROI_HEADS.NUM_CLASSES)
ONE_STAGE_NUM_CLASSES = {
    "IIFRetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "IIFFCOS": "MODEL.FCOS.NUM_CLASSES",
    "FCOS": "MODEL.FCOS.NUM_CLASSES",
}


def class_count_on_head(config, opts):
    """``opts`` with a dataset's class count, given as MODEL.ROI_HEADS.NUM_CLASSES (a
    benchmark dataset's overrides), set on the key ``config``'s architecture reads: a
    one-stage row (RetinaNet, FCOS) takes it on its head's key."""
    meta = config_values(config).get("MODEL", {}).get("META_ARCHITECTURE")
    key = ONE_STAGE_NUM_CLASSES.get(meta)
    if key is None:
        return list(opts)
    return [key if i % 2 == 0 and o == "MODEL.ROI_HEADS.NUM_CLASSES" else o
            for i, o in enumerate(opts)]  # fmt: skip


def run_plan(key, seed, config, weights_of, out_root, opts):
    """Where one (row, seed) runs, its train_net.py overrides and its stamp (what makes two runs
    the same run: config, the text of its files (and of the source row's, for a row evaluating
    another row's model), overrides; the source model's path relative to ``out_root``)."""
    out = run_dir(out_root, key, seed)
    opts = ["SEED", str(seed), "TEST.LVIS_EVAL_SAVE_RESULTS", "True",
            "TEST.LVIS_EVAL_FIXED_POOLED", "True", *class_count_on_head(config, opts)]  # fmt: skip
    sources = [config] + ([METHOD_CONFIGS[weights_of]] if weights_of else [])
    stamp = {"config": os.path.relpath(config, REPO), "config_sha256": config_digest(*sources),
             "opts": list(opts)}  # fmt: skip
    if weights_of:
        weights = os.path.join(run_dir(out_root, weights_of, seed), "model_final.pth")
        opts = ["MODEL.WEIGHTS", weights, *opts]
        stamp["opts"] = ["MODEL.WEIGHTS", os.path.relpath(weights, out_root), *stamp["opts"]]
    return out, opts, stamp


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


# the band's metrics per task: {name in results.json: column of the benchmark's rows}
BAND_COLUMNS = {
    "segm": {"AP": "AP", "APr": "APr", "APc": "APc", "APf": "APf"},
    "bbox": {"AP": "APbox", "APr": "APr box"},
}


def demo_band(runs, seeds, threads, machine):
    """``make demo``'s band: mean and std over seeds of the "IIF raw" row (the demo's config),
    per task and metric, as tools/demo.py reads it (docs/results/demo_band.json)."""
    metrics = {
        task: {k: list(mean_std([runs["iif_raw"][s][col] for s in seeds]))
               for k, col in cols.items()}
        for task, cols in BAND_COLUMNS.items()
    }  # fmt: skip
    return {"seeds": seeds, "threads": threads, "machine": machine, "metrics": metrics,
            "command": f"python dev/benchmark_synthlt.py --only iif_raw --seeds {len(seeds)} "
            f"--threads {threads} --write-band"}  # fmt: skip


def summarise(methods, runs, seeds):
    """Rows (mean, std per column) and claims (paired differences) from the runs; a row without
    a run for every seed is left out (not measured yet), and so are its claims."""
    rows = []
    for key, label, _, weights_of in methods:
        if any(s not in runs.get(key, {}) for s in seeds):
            continue
        row = {"key": key, "method": label, "evaluates": weights_of, "seeds": seeds}
        for c in COLUMNS:  # a column some seed's record lacks (added later) is not shown
            values = [runs[key][s].get(c) for s in seeds]
            row[c], row[c + " std"] = (None, None) if None in values else mean_std(values)
        rows.append(row)
    claims = []
    for claim, a, b, metric, sign in CLAIMS:
        if any(s not in runs.get(a, {}) or s not in runs.get(b, {}) for s in seeds):
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


# the frequency-group columns of a claim's metric: where a difference comes from. FP/img's:
# the false positives per image of the detections whose class is rare, common, frequent (the
# benchmark records them; for runs recorded before it did, dev/fashionlt_figures.py measures
# them from the saved results)
_MASK_GROUPS, _BOX_GROUPS = ("APr", "APc", "APf"), ("APr box", "APc box", "APf box")
FP_GROUPS = ("FP/img r", "FP/img c", "FP/img f")
# the rows of the FP/img claims, and softmax beside them
FP_ROWS = tuple(
    dict.fromkeys(["softmax", *(k for c in CLAIMS if c[3] == "FP/img" for k in c[1:3])])
)
GROUP_COLUMNS = {
    "AP": _MASK_GROUPS,
    "APr": _MASK_GROUPS,
    "APbox": _BOX_GROUPS,
    "APr box": _BOX_GROUPS,
    "FP/img": FP_GROUPS,
}


def fp_by_group(fp):
    """{FP_GROUPS' column: false positives per image} from
    :func:`iif_d2.lvis_eval.fp_analysis.false_positives_per_image`'s answer ({} for ground
    truth without frequency groups); each column ends with its group's letter."""
    by = fp.get("by_frequency")
    return {col: by[col[-1]]["fp_per_image"] for col in FP_GROUPS} if by else {}


def group_differences(a, b, metric, runs, seeds):
    """Where the difference a − b of ``metric`` comes from: the paired differences over
    ``seeds`` on its frequency-group columns, {column: difference}; {} for a metric without
    groups (dAP_FP) or a column some run lacks."""
    out = {}
    for column in GROUP_COLUMNS.get(metric, ()):
        va = [runs[a][s].get(column) for s in seeds]
        vb = [runs[b][s].get(column) for s in seeds]
        if None in va or None in vb:
            return {}
        out[column] = paired_difference(va, vb)
    return out


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
