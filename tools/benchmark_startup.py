#!/usr/bin/env python
"""Start-up cost at LVIS scale: what a training run does before its model is built.

On ``lvis_shaped_train`` (LVIS v1 train's 100,170 images and exact per-class counts) with the
recipe config (default configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_recipe.yaml),
each measured in a fresh subprocess, at fractions of the training images (a seeded random
subset of the images, with their annotations, written once as an LVIS json and registered as
``lvis_shaped_train_<pct>pct`` inside the subprocess; 100% is ``lvis_shaped_train`` itself):

* load: ``iif_d2.data.loader.loader_dataset_dicts`` (detectron2's dicts, the loader's filter);
* count: ``iif_d2.data.class_stats.count_dataset_dicts`` (per-class image and instance counts);
* repeat: ``iif_d2.data.samplers.repeat_factors`` and ``repeat_factor_summary`` (the sampler's);
* heldout: ``iif_d2.data.heldout.split_heldout`` (FASA's hold-out);
* facts: the whole ``iif_d2.data.training_set.compute_training_set_facts`` (load included),
  in its own subprocess, so its peak RSS is its own;
* start: what a training run does before its model is built, in its own subprocess:
  ``resolve_training_set`` (facts, files written) then the trainer's ``training_dicts`` (the
  resolution's load is handed over: no second load).

Peak RSS is the subprocess's ``ru_maxrss`` after each step (monotonic: the parts' column holds
the load's memory too); "base" is the RSS after the imports. The target at 100% is
``facts`` <= 60 s and <= 4 GB on a 2-core machine.

    python tools/benchmark_startup.py                        # 10, 25, 50, 100 %
    python tools/benchmark_startup.py --fractions 0.1 --json out.json
    DETECTRON2_DATASETS=/data python tools/benchmark_startup.py   # where lvis_shaped is

The LVIS-shaped set is generated under $DETECTRON2_DATASETS/lvis_shaped if missing (about
4-9 minutes at full size).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from iif_d2.utils.machine import describe_machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_recipe.yaml"
PARTS = ("load", "count", "repeat", "heldout")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_folder() -> str:
    from iif_d2.data import LVIS_SHAPED
    from iif_d2.data.lvis_shaped import generate_lvis_shaped

    root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "lvis_shaped")
    return generate_lvis_shaped(root, LVIS_SHAPED)


def write_subsets(fractions, folder: str, work: str, seed: int = 0):
    """LVIS jsons of seeded random image subsets of train; {fraction: path} (1.0 excluded)."""
    import numpy as np

    wanted = [f for f in fractions if f < 1]
    if not wanted:
        return {}
    with open(os.path.join(folder, "train.json")) as f:
        data = json.load(f)
    order = np.random.RandomState(seed).permutation(len(data["images"]))
    paths = {}
    for frac in wanted:
        keep = sorted(order[: max(1, round(frac * len(order)))].tolist())
        images = [data["images"][i] for i in keep]
        ids = {d["id"] for d in images}
        sub = dict(data, images=images)
        sub["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
        path = os.path.join(work, f"train_{frac:g}.json")
        with open(path, "w") as f:
            f.write(json.dumps(sub, separators=(",", ":")))
        paths[frac] = path
    return paths


def _config(config_file: str, train_name: str):
    from detectron2.config import get_cfg

    from iif_d2 import add_iif_config
    from iif_d2.config import apply_deprecated_keys

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["DATASETS.TRAIN", (train_name,), "MODEL.WEIGHTS", ""])
    return apply_deprecated_keys(cfg)


def _register(subset_json, folder):
    """Register the subset (or use lvis_shaped_train); the dataset name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.lvis import load_lvis_json

    if not subset_json:
        return "lvis_shaped_train"
    name = "lvis_shaped_train_" + os.path.basename(subset_json)[6:-5].replace(".", "_")
    DatasetCatalog.register(name, lambda: load_lvis_json(subset_json, folder + os.sep))
    MetadataCatalog.get(name).set(
        thing_classes=MetadataCatalog.get("lvis_shaped_train").thing_classes
    )
    return name


def worker(mode: str, config_file: str, subset_json: str, folder: str) -> dict:
    """One measurement in this process: mode "parts" (each step) or "facts" (the whole)."""
    import iif_d2.data  # noqa: F401  (registers lvis_shaped_train)
    from iif_d2.data.class_stats import count_dataset_dicts
    from iif_d2.data.heldout import split_heldout
    from iif_d2.data.loader import loader_dataset_dicts
    from iif_d2.data.samplers import repeat_factor_summary, repeat_factors
    from iif_d2.data.training_set import compute_training_set_facts

    cfg = _config(config_file, _register(subset_json, folder))
    out = {"base_rss_mb": _rss_mb()}

    def step(name, fn):
        t0 = time.perf_counter()
        ret = fn()
        out[name] = {"seconds": time.perf_counter() - t0, "peak_rss_mb": _rss_mb()}
        return ret

    if mode == "start":
        import tempfile

        from iif_d2.data.loader import training_dicts
        from iif_d2.data.training_set import resolve_training_set

        with tempfile.TemporaryDirectory(prefix="iif_startup_run_") as out_dir:
            cfg.OUTPUT_DIR = out_dir
            train = step("start", lambda: (resolve_training_set(cfg), training_dicts(cfg))[1][0])
        out["images"] = len(train)
        return out
    if mode == "facts":
        facts = step("facts", lambda: compute_training_set_facts(cfg))
        out["images"] = facts.stats.num_images
        out["heldout_images"] = len(facts.heldout.heldout) if facts.heldout else 0
        out["iterations_per_epoch"] = facts.iterations_per_epoch
        return out
    loader = cfg.DATALOADER
    dicts = step("load", lambda: loader_dataset_dicts(cfg))
    out["images"] = len(dicts)
    step("count", lambda: count_dataset_dicts(dicts, cfg.MODEL.ROI_HEADS.NUM_CLASSES))

    def repeat():
        factors = repeat_factors(dicts, loader.REPEAT_THRESHOLD, loader.REPEAT_SQRT)
        t = loader.REPEAT_THRESHOLD
        repeat_factor_summary(dicts, factors, t, loader.REPEAT_SQRT, loader.REPEAT_FACTOR.ROUNDING)

    step("repeat", repeat)
    node = cfg.DATASETS.HELDOUT
    step("heldout", lambda: split_heldout(dicts, node.FRACTION, node.MAX_IMAGES, 0))
    return out


def _run(args_list, env) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args_list],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args_list} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def _table(rows) -> str:
    head = ["images", "base MB"] + [f"{p} s" for p in PARTS] + ["peak MB (parts)"]
    head += ["facts s", "facts peak MB", "start s", "start peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p, f = r["parts"], r["facts"]
        cells = [f"{p['images']:,}", f"{p['base_rss_mb']:.0f}"]
        cells += [f"{p[k]['seconds']:.2f}" for k in PARTS]
        cells += [f"{p['heldout']['peak_rss_mb']:.0f}"]
        cells += [f"{f['facts']['seconds']:.1f}", f"{f['facts']['peak_rss_mb']:.0f}"]
        st = r["start"]["start"]
        cells += [f"{st['seconds']:.1f}", f"{st['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default=RECIPE, help=f"the config (default {RECIPE})")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.1, 0.25, 0.5, 1.0],
        help="fractions of the 100,170 training images, in (0, 1] (default 0.1 0.25 0.5 1)",
    )
    p.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS (all cores)"
    )
    p.add_argument("--json", help="also write the results to this json file")
    p.add_argument("--worker", nargs=3, metavar=("MODE", "SUBSET", "FOLDER"), help="internal")
    args = p.parse_args(argv)
    if args.worker:
        mode, subset, folder = args.worker
        if mode == "subsets":  # subset = the work folder
            import torch

            folder = _train_folder()
            paths = write_subsets(sorted(set(args.fractions)), folder, subset)
            res = {"folder": folder, "subsets": paths, "torch": torch.__version__}
        else:
            res = worker(mode, args.config_file, subset if subset != "-" else "", folder)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if not all(0 < f <= 1 for f in args.fractions):
        p.error("--fractions must lie in (0, 1]")

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    rows = []
    fracs = [str(f) for f in sorted(set(args.fractions))]
    with tempfile.TemporaryDirectory(prefix="iif_startup_") as work:
        # the parent stays small: a child's ru_maxrss starts at its parent's peak
        t0 = time.perf_counter()
        prep = _run(["--fractions", *fracs, "--worker", "subsets", work, "-"], env)
        print(
            f"Start-up benchmark, {args.config_file} on lvis_shaped_train\n"
            f"{describe_machine()}, torch {prep['torch']}, OMP_NUM_THREADS={args.threads}\n"
            "subsets written in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        folder, subsets = prep["folder"], {float(k): v for k, v in prep["subsets"].items()}
        for frac in sorted(set(args.fractions)):
            subset = subsets.get(frac, "-")
            row = {"fraction": frac}
            for mode in ("parts", "facts", "start"):
                row[mode] = _run(
                    ["--config-file", args.config_file, "--worker", mode, subset, folder], env
                )
            rows.append(row)
            f = row["facts"]["facts"]
            print(
                f"{frac:.0%}: {row['parts']['images']:,} images, facts {f['seconds']:.1f} s, "
                f"{f['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    print(_table(rows))
    full = [r for r in rows if r["fraction"] == 1.0]
    if full:
        f = full[0]["facts"]["facts"]
        ok = f["seconds"] <= 60 and f["peak_rss_mb"] <= 4096
        print(
            f"100%: compute_training_set_facts {f['seconds']:.1f} s, {f['peak_rss_mb'] / 1024:.2f} "
            f"GB peak RSS: target (<= 60 s, <= 4 GB) {'met' if ok else 'NOT met'}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            payload = {"hardware": describe_machine(), "threads": args.threads, "rows": rows}
            json.dump(payload, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
