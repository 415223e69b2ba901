#!/usr/bin/env python
"""LVIS-scale rehearsal: every LVIS v1 config starts, trains a few steps and evaluates, on the
LVIS-shaped synthetic set (LVIS v1 train's 1203 classes and exact per-class counts).

For each leaf config of configs/LVISv1-InstanceSegmentation/ (every *.yaml not starting with
``Base-``; deprecated aliases, which only name another config, with ``--aliases``),
``train_net.py`` runs in its own subprocess on the YAML itself, with only these swapped: the
datasets (``lvis_shaped_train`` and a val subset; ``--mini``: the 2,000-image
``lvis_shaped_mini_train``), the input size (``--size``), MODEL.WEIGHTS (no pretrained weights
offline: a random backbone whose frozen BatchNorm statistics are calibrated on random images,
one file per backbone, see ``calibrated_backbone``; a decoupled stage 2 loads the checkpoint
this rehearsal made with the stage-1 config its MODEL.WEIGHTS names, which runs first),
SOLVER.MAX_ITER (``--iters``; a schedule stated in epochs is turned off), the device, batch,
loader workers, OUTPUT_DIR, no periodic evaluation or checkpoint. The training's final
evaluation runs on the first ``--val-images`` images of the val split: their LVIS json is
written once and registered as ``rehearsal_val`` inside each subprocess (``--child``), which
then runs train_net.py unchanged.

One row per config, printed and written to ``--output`` (rehearsal.md, rehearsal.json):

* started: the run trained at least one iteration; completed: it trained ``--iters``
  iterations and evaluated; error: the last line of its traceback otherwise;
* seconds_to_first_iter: from the subprocess's start to detectron2's "Starting training"
  (imports, dataset load, class statistics, hold-out, model, loader: everything before the
  first iteration); seconds: the whole run;
* peak_rss_mb: the subprocess's peak resident memory (``os.wait4``'s ``ru_maxrss``);
* iterations: from OUTPUT_DIR/metrics.json;
* counts_match_csv: whether OUTPUT_DIR/iif_class_stats.json (the full training set's counts)
  equals lvis_v1_train.csv (K = 100,170 and every class's image and instance count; with
  ``--mini``, the mini spec's targets); null for configs that use no class counts;
* epoch_images: the repeat-factor summary's epoch length with repeats (log.txt; null without
  repeat-factor sampling); heldout: FASA's held-out image count (iif_heldout.json);
* evaluated: OUTPUT_DIR/inference/results.json was written; detections: how many the model
  returned on the val images (its saved results); bbox_ap / segm_ap: the APs (null where NaN:
  the few-step model detected none of the classes the val images hold).

    python dev/rehearse.py --mini                  # all configs on the 2,000-image set
    python dev/rehearse.py --only recipe           # full size, the recipe configs
    python dev/rehearse.py --mini --only R_50_FPN_1x_iif.yaml --iters 1
    python dev/rehearse.py --jobs 2 --threads 1    # full size, two configs at a time

Torch threads are pinned (OMP_NUM_THREADS = ``--threads``). Checkpoints are deleted after each
run (the stage-1 one after stage 2, the calibrated backbones at the end) unless
``--keep-checkpoints``.
"""

import argparse
import fnmatch
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

from iif_d2.bench.report import markdown_table
from iif_d2.bench.runner import Progress, run_process, train_net_command
from iif_d2.utils.machine import describe_machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join("configs", "LVISv1-InstanceSegmentation")
STAGE1 = "mask_rcnn_R_50_FPN_12e.yaml"  # when a decoupled config's MODEL.WEIGHTS names none
STATS_FILENAME = "iif_class_stats.json"  # iif_d2.data.class_stats.STATS_FILENAME
VAL_NAME = "rehearsal_val"
EPOCH_RE = re.compile(r"epoch of (\d+) images -> ([\d.]+) images")
POLL_S = 0.2
KEYS = (
    "config", "started", "completed", "error", "seconds_to_first_iter", "seconds", "peak_rss_mb",
    "iterations", "counts_match_csv", "epoch_images", "heldout", "evaluated", "detections",
    "bbox_ap", "segm_ap",
)  # fmt: skip


def _yaml(name: str) -> dict:
    import yaml

    with open(os.path.join(ROOT, CONFIG_DIR, name)) as f:
        return yaml.safe_load(f) or {}


def is_alias(name: str) -> bool:
    """Whether a config only names another leaf config (an alias, e.g. a deprecated name:
    nothing but a ``_BASE_`` that is not a ``Base-`` file)."""
    data = _yaml(name)
    return set(data) == {"_BASE_"} and not os.path.basename(data["_BASE_"]).startswith("Base-")


def stage1_of(name: str) -> str:
    """The stage-1 config of a decoupled config: the run folder its MODEL.WEIGHTS names
    (``output/.../<stage-1 config>/model_final.pth``, followed through ``_BASE_``)."""
    seen = set()
    while name and name not in seen:
        seen.add(name)
        data = _yaml(name)
        weights = (data.get("MODEL") or {}).get("WEIGHTS")
        if weights:
            stage1 = os.path.basename(os.path.dirname(weights)) + ".yaml"
            if os.path.isfile(os.path.join(ROOT, CONFIG_DIR, stage1)):
                return stage1
            break
        name = data.get("_BASE_")
        if name and os.sep in name:
            break
    return STAGE1


def leaf_configs(only=None, aliases: bool = False):
    """The leaf LVIS v1 configs (relative to the repository), each stage 1 before its stage 2.

    Args:
        only: optional glob patterns (``*pattern*`` when without a wildcard), any of which
            a config's file name must match.
        aliases: include the deprecated aliases (configs that only name another).
    """
    paths = sorted(glob.glob(os.path.join(ROOT, CONFIG_DIR, "*.yaml")))
    names = [os.path.basename(p) for p in paths if not os.path.basename(p).startswith("Base-")]
    if not aliases:
        names = [n for n in names if not is_alias(n)]
    if only:
        pats = [p if any(c in p for c in "*?[") else f"*{p}*" for p in only]
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in pats)]
    decoupled = [n for n in names if "decoupled" in n]
    stage1 = []
    for n in decoupled:
        s1 = stage1_of(n)
        if s1 not in stage1:
            stage1.append(s1)
    rest = stage1 + [n for n in names if n not in decoupled and n not in stage1]
    return [os.path.join(CONFIG_DIR, n) for n in rest + decoupled]


def _spec(mini: bool):
    from iif_d2.data import LVIS_SHAPED, LVIS_SHAPED_MINI

    return LVIS_SHAPED_MINI if mini else LVIS_SHAPED


def _data_root() -> str:
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "lvis_shaped")


def _prepare(out_root: str, mini: bool, num_images: int) -> dict:
    """In a subprocess (the parent stays small: a child's ``ru_maxrss`` starts at its parent's
    peak): the val subset json and the class counts the training set must have (the CSV at full
    size, the mini spec's targets with ``--mini``), in ``out_root``."""
    import torch

    from iif_d2.data.lvis_shaped import class_targets, generate_lvis_shaped, lvis_classes

    spec = _spec(mini)
    _, images, instances, total = lvis_classes()
    if mini:
        images, instances = class_targets(spec, "train")
        total = spec.train_images
    os.makedirs(out_root, exist_ok=True)
    expected = os.path.join(out_root, "expected_counts.json")
    with open(expected, "w") as f:
        json.dump(
            {
                "num_images": int(total),
                "image_counts": images.tolist(),
                "instance_counts": instances.tolist(),
            },
            f,
        )
    folder = generate_lvis_shaped(_data_root(), spec)
    with open(os.path.join(folder, "val.json")) as f:
        val = json.load(f)
    images = sorted(val["images"], key=lambda d: d["id"])[:num_images]
    ids = {d["id"] for d in images}
    subset = dict(
        val, images=images, annotations=[a for a in val["annotations"] if a["image_id"] in ids]
    )
    path = os.path.join(out_root, f"val_subset_{num_images}.json")
    with open(path, "w") as f:
        json.dump(subset, f, separators=(",", ":"))
    return {
        "val_json": path,
        "image_root": folder + os.sep,
        "expected": expected,
        "torch": torch.__version__,
    }


def _child(argv):
    """``--child VAL_JSON IMAGE_ROOT -- train_net args``: register the val subset, then run
    train_net.py as its ``__main__``."""
    import runpy

    val_json, image_root = argv[0], argv[1]
    rest = argv[3:] if argv[2:3] == ["--"] else argv[2:]
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.lvis import load_lvis_json

    import iif_d2.data  # noqa: F401  (registers lvis_shaped*)

    classes = MetadataCatalog.get("lvis_shaped_val").thing_classes
    DatasetCatalog.register(VAL_NAME, lambda: load_lvis_json(val_json, image_root))
    MetadataCatalog.get(VAL_NAME).set(
        json_file=val_json, image_root=image_root, evaluator_type="lvis", thing_classes=classes
    )
    script = os.path.join(ROOT, "train_net.py")
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")


def calibrated_backbone(cfg, seed: int = 0, images: int = 4, size: int = 128) -> dict:
    """Random backbone weights whose frozen BatchNorm statistics are set from data, as a
    detectron2 checkpoint (``{"model": state_dict}`` of ``backbone.bottom_up``).

    Without pretrained weights a FrozenBatchNorm2d holds mean 0 and variance 1: it normalises
    nothing, and through ResNet-101's 33 blocks the activations grow until the loss overflows
    (FloatingPointError at the second step). Here each frozen BN takes, just before it runs,
    the per-channel mean and variance of its input on ``images`` random images (the
    data-dependent initialisation of LSUV, Mishkin & Matas 2016), so every stage sees unit-scale
    features. Convolutions keep detectron2's random initialisation (seeded).
    """
    import torch
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_backbone

    torch.manual_seed(seed)
    backbone = build_backbone(cfg)
    bottom_up = getattr(backbone, "bottom_up", backbone)

    def set_stats(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)).clamp_min(1e-5))

    handles = [
        m.register_forward_pre_hook(set_stats)
        for m in bottom_up.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (images, 3, size, size), generator=g).float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1)
    with torch.no_grad():
        bottom_up((pixels - mean) / std)
    for h in handles:
        h.remove()
    prefix = "backbone.bottom_up." if bottom_up is not backbone else "backbone."
    return {"model": {prefix + k: v for k, v in bottom_up.state_dict().items()}}


def _config(config: str, opts=()):
    from detectron2.config import get_cfg

    from iif_d2 import add_iif_config
    from iif_d2.config import apply_deprecated_keys

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(config)
    apply_deprecated_keys(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def _calibrate(config: str, out: str, opts) -> None:
    """``--calibrate CONFIG OUT [opts]``: write :func:`calibrated_backbone` of the config."""
    import torch

    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    torch.save(calibrated_backbone(_config(config, opts)), tmp)
    os.replace(tmp, out)


def _merged_yaml(path: str) -> dict:
    """A config file merged over its ``_BASE_`` chain, as plain dicts (no detectron2 import:
    the parent process stays small)."""
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    base = data.pop("_BASE_", None)
    if not base:
        return data
    merged = _merged_yaml(os.path.join(os.path.dirname(path), base))

    def merge(a, b):
        for k, v in b.items():
            a[k] = (
                merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
            )
        return a

    return merge(merged, data)


def _backbone_key(config: str) -> str:
    """What a calibrated backbone depends on: the config's MODEL.RESNETS, BACKBONE and pixel
    statistics (a short hash)."""
    import hashlib

    model = _merged_yaml(os.path.join(ROOT, config)).get("MODEL", {})
    key = json.dumps([model.get(k) for k in ("RESNETS", "BACKBONE", "PIXEL_MEAN", "PIXEL_STD")],
                     sort_keys=True)  # fmt: skip
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def backbone_weights(config: str, out_root: str, env) -> str:
    """The calibrated random backbone for ``config`` (one file per backbone:
    :func:`_backbone_key`), made in a subprocess on first use."""
    out = os.path.join(out_root, "calibrated_backbones", _backbone_key(config) + ".pth")
    if not os.path.isfile(out):
        cmd = [sys.executable, os.path.abspath(__file__), "--calibrate",
               os.path.join(ROOT, config), out, "MODEL.DEVICE", "cpu"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode:
            raise SystemExit(f"Calibrating the backbone of {config} failed:\n{proc.stderr[-3000:]}")
    return out


def _prepare_in_subprocess(out_root: str, mode: str, num_images: int, env) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--prepare", out_root, mode, str(num_images)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"Preparing the val subset failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def overrides(args, weights: str):
    """The config keys the rehearsal swaps (train_net.py's trailing ``opts``)."""
    train = "lvis_shaped_mini_train" if args.mini else "lvis_shaped_train"
    s = args.size
    return [
        "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{VAL_NAME}',)",
        "MODEL.WEIGHTS", weights, "MODEL.DEVICE", args.device,
        "SOLVER.IMS_PER_BATCH", str(args.ims_per_batch), "SOLVER.MAX_ITER", str(args.iters),
        "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", str(10**9),
        "SOLVER.EPOCH_SCHEDULE.EPOCHS", "0", "SOLVER.EPOCH_SCHEDULE.STEPS", "()",  # --iters
        "DATALOADER.NUM_WORKERS", str(args.workers),
        "INPUT.MIN_SIZE_TRAIN", f"({s},)", "INPUT.MAX_SIZE_TRAIN", str(2 * s),
        "INPUT.MIN_SIZE_TEST", str(s), "INPUT.MAX_SIZE_TEST", str(2 * s),
        "TEST.EVAL_PERIOD", "0", "TEST.LVIS_EVAL_SAVE_RESULTS", "True",
    ]  # fmt: skip


def _last_error(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    errors = [x for x in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", x)]
    return (errors or lines or ["(no output)"])[-1][:500]


def _iterations(out_dir: str) -> int:
    path = os.path.join(out_dir, "metrics.json")
    if not os.path.isfile(path):
        return 0
    done = 0
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "total_loss" in row:  # a training row (the evaluation's row has none)
                done = max(done, int(row.get("iteration", -1)) + 1)
    return done


def _counts_match(out_dir: str, expected: dict):
    """Whether the run's saved class statistics equal ``expected``; None without the file."""
    path = os.path.join(out_dir, STATS_FILENAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        stats = json.load(f)  # iif_d2.data.class_stats.ClassStats.to_dict()
    keys = ("num_images", "image_counts", "instance_counts")
    return all(stats.get(k) == expected[k] for k in keys)


def _ap(out_dir: str):
    """(evaluated, detections, bbox AP, segm AP); an AP is None where it is NaN (no detection
    of a class the val images hold, or none at all); detections: the saved results' count."""
    path = os.path.join(out_dir, "inference", "results.json")
    if not os.path.isfile(path):
        return False, None, None, None
    with open(path) as f:
        res = json.load(f)
    detections = None
    saved = os.path.join(out_dir, "inference", "lvis_instances_results.json")
    if os.path.isfile(saved):
        with open(saved) as f:
            detections = len(json.load(f))
    aps = [res.get(task, {}).get("AP") for task in ("bbox", "segm")]
    return True, detections, *(None if ap is None or math.isnan(ap) else ap for ap in aps)


def run_one(args, config: str, out_dir: str, val, expected, weights: str, env) -> dict:
    """Train and evaluate one config in a subprocess; its row."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    launcher = [os.path.abspath(__file__), "--child", val[0], val[1], "--"]
    cmd = train_net_command(
        os.path.join(ROOT, config), out_dir, overrides(args, weights), launcher=launcher
    )
    log_path, console = os.path.join(out_dir, "log.txt"), os.path.join(out_dir, "console.txt")
    res = run_process(cmd, console, env=env, cwd=ROOT, timeout=args.timeout, poll_s=POLL_S)
    text = open(console, errors="replace").read()
    log = open(log_path, errors="replace").read() if os.path.isfile(log_path) else ""
    iters = _iterations(out_dir)
    evaluated, detections, bbox, segm = _ap(out_dir)
    ok = res.returncode == 0 and iters == args.iters and evaluated
    error = None
    if not ok:  # the last line of the traceback, or what is missing
        error = (
            f"timed out after {args.timeout:.0f} s"
            if res.timed_out
            else _last_error(text)
            if res.returncode
            else f"exit 0 but {iters} of {args.iters} iterations"
            + ("" if evaluated else ", no inference/results.json")
        )
    epochs = EPOCH_RE.findall(log)
    heldout = None
    heldout_file = os.path.join(out_dir, "iif_heldout.json")
    if os.path.isfile(heldout_file):
        with open(heldout_file) as f:
            heldout = json.load(f).get("num_heldout")
    return {
        "config": config,
        "started": iters >= 1,
        "completed": ok,
        "error": error,
        "seconds_to_first_iter": None
        if res.seconds_to_first_iter is None
        else round(res.seconds_to_first_iter, 1),
        "seconds": round(res.seconds, 1),
        "peak_rss_mb": round(res.peak_rss_mb, 1),
        "iterations": iters,
        "counts_match_csv": _counts_match(out_dir, expected),
        "epoch_images": float(epochs[-1][1]) if epochs else None,
        "heldout": heldout,
        "evaluated": evaluated,
        "detections": detections,
        "bbox_ap": bbox,
        "segm_ap": segm,
    }


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"
    return str(v)


def markdown(rows, heading: str) -> str:
    """The rows as a markdown table under ``heading``; errors listed below it."""
    head = ["config", "started", "completed", "s to 1st iter", "s total", "peak RSS MB", "iters"]
    head += ["counts = CSV", "epoch (images)", "held out", "evaluated", "detections", "bbox AP"]
    head += ["segm AP"]
    body = [
        [os.path.basename(r["config"])] + [_cell(r[k]) for k in KEYS[1:] if k != "error"]
        for r in rows
    ]
    lines = [heading, "", markdown_table(head, body)]
    errors = [f"* {os.path.basename(r['config'])}: {r['error']}" for r in rows if r["error"]]
    if errors:
        lines += ["", "Errors:", ""] + errors
    return "\n".join(lines) + "\n"


def _note(row) -> str:
    """A finished config's progress note: its name, state, time and memory."""
    state = "ok" if row["completed"] else "started, FAILED" if row["started"] else "FAILED"
    return (
        f"{os.path.basename(row['config'])}: {state} ({row['seconds']:.0f} s, "
        f"{row['peak_rss_mb']:.0f} MB)"
    )


def run_configs(args, configs, stage1, out_root, val, expected, env, heading) -> list:
    """Every config's row (in ``configs``' order), ``args.jobs`` runs at a time: a decoupled
    stage 2 starts once the stage-1 run it loads has finished, and each calibrated backbone
    is made once. The report is rewritten after every run."""
    import concurrent.futures
    import threading

    progress = Progress("configs", len(configs), "config", prefix="[rehearse]", interval=0)
    rows, lock = {}, threading.Lock()
    backbone_locks = {}
    done = {os.path.join(out_root, os.path.splitext(os.path.basename(c))[0]): threading.Event()
            for c in configs}  # fmt: skip

    def one(config):
        name = os.path.splitext(os.path.basename(config))[0]
        out_dir = os.path.join(out_root, name)
        try:
            if config in stage1:
                if stage1[config] in done:
                    done[stage1[config]].wait()
                weights = os.path.join(stage1[config], "model_final.pth")
            else:
                with lock:
                    key_lock = backbone_locks.setdefault(_backbone_key(config), threading.Lock())
                with key_lock:
                    weights = backbone_weights(config, out_root, env)
            row = run_one(args, config, out_dir, val, expected, weights, env)
            if not args.keep_checkpoints and out_dir not in stage1.values():
                for ckpt in glob.glob(os.path.join(out_dir, "*.pth")):
                    os.remove(ckpt)
        finally:
            done[out_dir].set()
        with lock:
            rows[config] = row
            progress.update(len(rows), _note(row))
            ordered = [rows[c] for c in configs if c in rows]
            with open(os.path.join(out_root, "rehearsal.json"), "w") as f:
                json.dump(ordered, f, indent=1)
            with open(os.path.join(out_root, "rehearsal.md"), "w") as f:
                f.write(markdown(ordered, heading))

    # stage-1 configs come before their stage 2 in leaf_configs' order, so a waiting stage 2
    # never holds the last free worker while its stage 1 is still queued behind it
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(one, c) for c in configs]:
            future.result()
    progress.close()
    return [rows[c] for c in configs]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mini", action="store_true", help="lvis_shaped_mini (2,000 train images)")
    p.add_argument("--only", nargs="+", metavar="PATTERN", help="config file-name patterns")
    p.add_argument(
        "--aliases", action="store_true", help="also the deprecated aliases (only a _BASE_)"
    )
    p.add_argument("--iters", type=int, default=2, help="SOLVER.MAX_ITER (default 2)")
    p.add_argument("--val-images", type=int, default=2, help="val images evaluated (default 2)")
    p.add_argument("--size", type=int, default=64, help="MIN_SIZE_*; MAX_SIZE_* = 2x (64)")
    p.add_argument("--ims-per-batch", type=int, default=1, help="SOLVER.IMS_PER_BATCH (1)")
    p.add_argument("--workers", type=int, default=0, help="DATALOADER.NUM_WORKERS (0)")
    p.add_argument("--device", default="cpu", help="MODEL.DEVICE (cpu)")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS (all cores)"
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="configs run at once (1; each with --threads)"
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per config (1800)")
    p.add_argument("--output", default="output/rehearsal", help="report and run folders")
    p.add_argument(
        "--keep-checkpoints", action="store_true", help="keep each run's model_final.pth"
    )
    args = p.parse_args(argv)
    if args.iters < 1 or args.val_images < 1 or args.size < 16 or args.jobs < 1:
        p.error("--iters, --val-images and --jobs must be >= 1 and --size >= 16")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    if argv[:1] == ["--calibrate"]:
        return _calibrate(argv[1], argv[2], argv[3:])
    if argv[:1] == ["--prepare"]:
        res = _prepare(argv[1], argv[2] == "mini", int(argv[3]))
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    args = parse_args(argv)

    configs = leaf_configs(args.only, args.aliases)
    if not configs:
        raise SystemExit(f"No LVIS v1 config matches --only {args.only}.")
    mode = "mini" if args.mini else "full"
    out_root = os.path.abspath(os.path.join(args.output, mode))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    heading = (
        f"## Rehearsal: {len(configs)} LVIS v1 configs on "
        f"{'lvis_shaped_mini' if args.mini else 'lvis_shaped'} ({args.iters} iterations, "
        f"{args.size} px, batch {args.ims_per_batch}, eval on {args.val_images} val images, "
        f"{args.device})\n\n{describe_machine()}, torch {{torch}}, "
        f"OMP_NUM_THREADS={args.threads}, {args.jobs} run(s) at a time"
    )
    t0 = time.perf_counter()
    prep = _prepare_in_subprocess(out_root, mode, args.val_images, env)
    heading = heading.replace("{torch}", prep["torch"])
    print(heading, flush=True)
    print(f"[rehearse] val subset {prep['val_json']} ({time.perf_counter() - t0:.1f} s)")
    val = prep["val_json"], prep["image_root"]
    with open(prep["expected"]) as f:
        expected = json.load(f)
    stage1 = {  # stage-2 config -> the stage-1 checkpoint this rehearsal makes
        c: os.path.join(out_root, os.path.splitext(stage1_of(os.path.basename(c)))[0])
        for c in configs
        if "decoupled" in os.path.basename(c)
    }
    rows = run_configs(args, configs, stage1, out_root, val, expected, env, heading)
    if not args.keep_checkpoints:
        for folder in set(stage1.values()):
            for ckpt in glob.glob(os.path.join(folder, "*.pth")):
                os.remove(ckpt)
        shutil.rmtree(os.path.join(out_root, "calibrated_backbones"), ignore_errors=True)
    print(markdown(rows, heading))
    failed = [r for r in rows if not r["completed"]]
    started = sum(r["started"] for r in rows)
    total = time.perf_counter() - t0
    print(
        f"[rehearse] {started}/{len(rows)} started, {len(rows) - len(failed)} completed, "
        f"{total / 60:.1f} min "
        f"({total / max(1, len(rows)):.0f} s per config); report in {out_root}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main() or 0)
