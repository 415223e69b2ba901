#!/usr/bin/env python
"""`make bench`: the speed of iif-d2, one task at a time (``--task``), each in one process with
its baseline, so that a ratio needs no second machine or run.

Paired tasks (iif_d2.bench.timing: after warm-up, paired rounds of alternating order A B, B A,
..., each also timing A against itself, the same-vs-same control; a row gives the median of the
paired ratios B / A, its distribution-free 95 % interval, the 2.5-97.5 % spread, the control's
median and interval, and "within noise" where the two intervals overlap; the two models of a
pair hold the same parameters):

  head     IIF / plain (target <= 1.01 on a GPU, <= 1.03 on CPU). Sections (--only):
           head: FastRCNNOutputLayers vs IIFFastRCNNOutputLayers (end-to-end), LVIS sizes
           (C = 1203, 1024-d RoI features, 512 RoIs per image): forward + loss + backward;
           forward + scores + boxes (NMS excluded: its input size depends on the scores).
           model: the tiny Mask R-CNN of configs/quick_schedules (softmax vs IIF), a full SGD
           step and inference on the synthetic set. retinanet, fcos: the tiny one-stage
           detectors, IIF off vs on, a full SGD step and inference (IIF with all-ones weights,
           so the same candidates reach NMS; the "real w" line, for information, uses the
           synthetic set's weights).
  fasa     FASA / without. head: IIFFastRCNNOutputLayers at LVIS sizes, FASA active (every
           class seen, rates = the normalised inverse LVIS v1 counts; "all rates 1", 1203
           virtual features per step, for information); model: the tiny recipe Mask R-CNN,
           FASA off vs on, a full SGD step. Inference is not timed (FASA does nothing there).
  kernels  iif-d2's kernels / detectron2's (MODEL.KERNELS: RoIAlign as matrix products,
           channels-last R-CNN; below 1 is faster). roi_align: one level, forward + backward,
           at SynthLT's sizes and LVIS's (information); model: the SynthLT Mask R-CNN
           (mask_rcnn_R_18_FPN_iif.yaml) against the same config with detectron2's kernels, a
           full SGD step on 4 training images and inference on 4 validation images
           (--weights: a trained checkpoint, whose proposals feed the mask head more RoIs).

  Each writes OUTPUT/speed_<task>.{md,json} (--output-dir, default output/benchmark): machine,
  kernel set, threads (pinned by torch.set_num_threads, default 1: on a CPU shared with other
  jobs, more threads than free cores made steps 10-100 times slower at random), rounds, rows.
  --record FILE --label TEXT also adds the run to a speed records file (docs/results/
  speed_head.json is the one dev/make_docs.py turns into docs/benchmarks/speed.md).

Other tasks:

  checkpoint   a plain torch.save of a ~90 MB state dict against IIFCheckpointer's atomic save
               (temporary file, fsync, rename, directory fsync, last_checkpoint likewise),
               alternating, after one warm-up each; medians and their ratio. --dir chooses
               where (its file system is printed; on tmpfs fsync is free).
  class-stats  count_dataset_dicts on LVIS v1 train-sized dicts (100,170 images, 1,270,141
               annotations, 1,203 classes), pinned to one core, best of 3 (target < 5 s).
  lvis-eval    LVIS evaluation speed and memory: the fast engine against lvis-api and
               faster-coco-eval (lvis_style=True) on generated LVIS-shaped data with 300
               detections per image, bbox and segm, each engine in its own subprocess (peak
               RSS), alternating. --ranks R adds the R-rank path simulated in one process
               (slowest shard's matching + the main rank's accumulation; "sent MB": packed
               matches against the compact predictions); --fixed-pooled adds AP-fixed and
               AP-pool. --quick: 300 images.
  startup      what a training run does before its model is built, at LVIS scale
               (lvis_shaped_train, the recipe config), each part in a fresh subprocess at
               fractions of the images: load, count, repeat factors, FASA hold-out, the whole
               compute_training_set_facts (target at 100 %: <= 60 s and <= 4 GB on 2 cores)
               and resolve_training_set + the trainer's dicts. The LVIS-shaped set is
               generated under $DETECTRON2_DATASETS/lvis_shaped if missing (4-9 minutes).

    python dev/benchmark_speed.py --task head [--device cuda] [--repeats 30] [--only head]
    python dev/benchmark_speed.py --task kernels --threads 2 --weights output/demo/model_final.pth
    python dev/benchmark_speed.py --task lvis-eval --sizes 19809 --ref-sizes --ranks 2
    python dev/benchmark_speed.py --task startup --fractions 0.1 --json out.json
"""

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

import argparse
import atexit
import copy
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from iif_d2.bench.records import REPO
from iif_d2.bench.report import write_speed_report
from iif_d2.bench.timing import compare_pairs, format_row, max_headline
from iif_d2.utils.machine import cpu_capability, describe_machine

TASKS = ("head", "fasa", "kernels", "checkpoint", "class-stats", "lvis-eval", "startup")
PAIRED = {  # task: (sections of --only, report title, target ratio on cpu / cuda)
    "head": (("head", "model", "retinanet", "fcos"),
             "IIF / plain: train-step and inference time", (1.03, 1.01)),
    "fasa": (("head", "model"), "FASA / without: train-step time", None),
    "kernels": (("roi_align", "model"), "iif-d2's kernels / detectron2's: time", None),
}  # fmt: skip


def run_worker(script_args, env, cwd=REPO):
    """Run this script again in a subprocess with ``script_args``; the json of its last
    ``RESULT`` line (None if it printed none: a step that returns nothing).

    Raises:
        RuntimeError: the subprocess failed; its stderr's end.
    """
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *script_args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0:
        raise RuntimeError(f"{script_args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:]) if lines else None


def print_result(result):
    """A worker's answer to :func:`run_worker`."""
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# paired tasks: head, fasa, kernels
# ---------------------------------------------------------------------------------------------


def comparer(device, rounds, warmup):
    """``compare(name, fns, headline=True)``: :func:`iif_d2.bench.timing.compare_pairs` on
    ``device`` of the two callables of ``fns`` (label -> callable, the baseline first), its row
    printed."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def compare(name, fns, headline=True):
        row = compare_pairs(name, tuple(fns), tuple(fns.values()), rounds, warmup, sync, headline)
        print(format_row(row), flush=True)
        return row

    return compare


def lvis_proposals(device, images, num_classes, generator, foreground=None):
    """512 random proposals per 800x1333 image with ground truth boxes and classes: uniform over
    the C+1 classes, or the first ``foreground`` of them foreground and the rest background."""
    import torch
    from detectron2.structures import Boxes, Instances

    props = []
    for _ in range(images):
        inst = Instances((800, 1333))
        xy = torch.rand(512, 2, generator=generator) * 600
        boxes = torch.cat([xy, xy + torch.rand(512, 2, generator=generator) * 200 + 8], 1)
        inst.proposal_boxes = Boxes(boxes.to(device))
        inst.gt_boxes = Boxes((boxes + 2).to(device))
        high = num_classes + 1 if foreground is None else num_classes
        labels = torch.randint(0, high, (512,), generator=generator)
        if foreground is not None:
            labels[foreground:] = num_classes
        inst.gt_classes = labels.to(device)
        props.append(inst)
    return props


def head_benchmark(device, compare, images):
    import torch
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
    from detectron2.utils.events import EventStorage

    from iif_d2 import IIFFastRCNNOutputLayers

    C, R, D = 1203, 512 * images, 1024
    kwargs = {
        "input_shape": ShapeSpec(channels=D),
        "box2box_transform": Box2BoxTransform(weights=(10, 10, 5, 5)),
        "num_classes": C,
        "test_score_thresh": 1e-4,
        "test_topk_per_image": 300,
    }
    weights = torch.rand(C + 1) * 8 + 3
    weights[-1] = 1
    heads = {
        "softmax": FastRCNNOutputLayers(**kwargs).to(device),
        "iif": IIFFastRCNNOutputLayers(iif_mode="end_to_end", iif_weights=weights, **kwargs).to(
            device
        ),
    }
    heads["iif"].load_state_dict(heads["softmax"].state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(R, D, generator=g).to(device)
    props = lvis_proposals(device, images, C, g)

    def train(head):
        def step():
            with EventStorage():
                head.zero_grad()
                losses = head.losses(head(x), props)
                sum(losses.values()).backward()

        return step

    def infer(head):
        # scores and boxes, not NMS: how many candidates NMS sees depends on the scores
        # themselves (IIF's are more peaked), which is not an overhead of the head
        def run():
            with torch.no_grad():
                predictions = head(x)
                head.predict_probs(predictions, props)
                head.predict_boxes(predictions, props)

        return run

    return [
        compare("head train step", {k: train(h) for k, h in heads.items()}),
        compare("head inference", {k: infer(h) for k, h in heads.items()}),
    ]


def _quick_cfg(name, device, *opts):
    """A quick-schedule config, its class counts resolved into a temporary folder."""
    from detectron2.config import get_cfg

    from iif_d2 import add_iif_config, resolve_training_set

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "quick_schedules", name + ".yaml"))
    out = tempfile.mkdtemp(prefix="iif-d2-benchmark-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # the resolution's files only
    cfg.merge_from_list(["MODEL.DEVICE", device.type, "OUTPUT_DIR", out, *opts])
    return resolve_training_set(cfg, training=False)


def _pair(cfg_a, cfg_b):
    """The models of two configs, the second holding the first's parameters."""
    import torch
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    a = build_model(cfg_a)
    b = build_model(cfg_b)
    b.load_state_dict(a.state_dict())
    return a, b


def _inputs(dataset="iif_synthetic_tiny_train", n=2):
    """The first ``n`` images of ``dataset`` (default: two of the tiny synthetic set), with
    their ground truth."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import annotations_to_instances, read_image

    inputs = []
    for d in DatasetCatalog.get(dataset)[:n]:
        img = torch.as_tensor(read_image(d["file_name"], "BGR").transpose(2, 0, 1).copy())
        inst = annotations_to_instances(d["annotations"], img.shape[1:])
        h, w = img.shape[1:]
        inputs.append({"image": img, "instances": inst, "height": h, "width": w})
    return inputs


def _train_step(model, inputs):
    import torch
    from detectron2.utils.events import EventStorage

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        model.train()
        with EventStorage():
            losses = model(inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    return step


def _inference(model, inputs):
    import torch

    def run():
        with torch.no_grad():
            model.eval()(inputs)

    return run


def _train_and_infer(compare, title, models, inputs, test_inputs=None):
    """A train-step row on ``inputs`` and an inference row on ``test_inputs`` (default: the
    same images)."""
    test_inputs = inputs if test_inputs is None else test_inputs
    return [
        compare(f"{title} train step", {k: _train_step(m, inputs) for k, m in models.items()}),
        compare(f"{title} inference", {k: _inference(m, test_inputs) for k, m in models.items()}),
    ]


def model_benchmark(device, compare):
    softmax, iif = _pair(
        _quick_cfg("mask_rcnn_R_18_FPN_instant", device),
        _quick_cfg("mask_rcnn_R_18_FPN_instant_iif", device),
    )
    models = {"softmax": softmax, "iif": iif}
    return _train_and_infer(compare, "tiny Mask R-CNN", models, _inputs())


def dense_benchmark(device, compare, title, config, node):
    """A one-stage detector, IIF off vs on (see the module docstring).

    Args:
        title: the printed name.
        config: a quick-schedule config with IIF on.
        node: its IIF node under MODEL ("RETINANET", "FCOS").
    """
    plain, iif = _pair(
        _quick_cfg(config, device, f"MODEL.{node}.IIF.ENABLED", False), _quick_cfg(config, device)
    )
    import torch

    ones = copy.deepcopy(iif)
    ones.iif_weights = torch.ones_like(iif.iif_weights)
    inputs = _inputs()
    return [
        compare(
            f"{title} train step",
            {"plain": _train_step(plain, inputs), "iif": _train_step(iif, inputs)},
        ),
        compare(
            f"{title} inference (w = 1)",
            {"plain": _inference(plain, inputs), "iif": _inference(ones, inputs)},
        ),
        compare(
            f"{title} inference (real w)",
            {"plain": _inference(plain, inputs), "iif": _inference(iif, inputs)},
            headline=False,
        ),
    ]


def fasa_head_benchmark(device, compare, images):
    import torch
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.utils.events import EventStorage

    from iif_d2 import IIFFastRCNNOutputLayers, load_counts_file
    from iif_d2.modeling.fasa import FASA

    C, R, D = 1203, 512 * images, 1024
    counts = load_counts_file("iif_d2://lvis_v1_train.csv").instance_counts
    kwargs = {
        "input_shape": ShapeSpec(channels=D),
        "box2box_transform": Box2BoxTransform(weights=(10, 10, 5, 5)),
        "num_classes": C,
        "iif_mode": "end_to_end",
        "iif_weights": torch.cat([torch.rand(C) * 8 + 3, torch.ones(1)]),
    }
    plain = IIFFastRCNNOutputLayers(**kwargs).to(device)
    fasa = IIFFastRCNNOutputLayers(fasa=FASA(C, D, counts, start_iter=0), **kwargs).to(device)
    fasa.load_state_dict(plain.state_dict(), strict=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(R, D, generator=g).abs().to(device)
    seen = torch.randn(2 * C, D, generator=g).abs().to(device)
    fasa.fasa.update(seen, torch.arange(C).repeat(2).to(device))  # every class seen
    # 1/4 foreground, as detectron2's sampler (POSITIVE_FRACTION 0.25)
    props = lvis_proposals(device, images, C, g, foreground=128)

    def train(head):
        def step():
            with EventStorage():
                head.train().zero_grad()
                losses = head.losses(head(x), props)
                sum(losses.values()).backward()

        return step

    row = compare("head train step", {"plain": train(plain), "fasa": train(fasa)})
    fasa.fasa.rates.fill_(1.0)
    rates_1 = compare(
        "head, all rates 1", {"plain": train(plain), "fasa": train(fasa)}, headline=False
    )
    return [row, rates_1]


def fasa_model_benchmark(device, compare):
    import torch
    from detectron2.modeling import build_model

    name = "mask_rcnn_R_18_FPN_instant_recipe"
    off = _quick_cfg(name, device, "MODEL.ROI_BOX_HEAD.FASA.ENABLED", False)
    on = _quick_cfg(name, device, "MODEL.ROI_BOX_HEAD.FASA.START_ITER", 0)
    torch.manual_seed(0)
    with_fasa = build_model(on)
    plain = build_model(off)
    plain.load_state_dict(with_fasa.state_dict(), strict=False)
    inputs = _inputs()
    models = {"plain": _train_step(plain, inputs), "fasa": _train_step(with_fasa, inputs)}
    return [compare("tiny recipe Mask R-CNN train step", models)]


CONFIG = os.path.join(
    REPO, "configs", "SynthLT-InstanceSegmentation", "mask_rcnn_R_18_FPN_iif.yaml"
)
PLAIN = ["MODEL.KERNELS.ROI_ALIGN", "torchvision", "MODEL.KERNELS.CHANNELS_LAST", False]


def _level(device, images, channels, height, width, rois, image_size, generator):
    import torch

    features = torch.randn(images, channels, height, width, generator=generator).to(device)
    xy = torch.rand(rois, 2, generator=generator) * torch.tensor(image_size) * 0.8
    wh = torch.rand(rois, 2, generator=generator) * torch.tensor(image_size) * 0.3 + 4
    index = torch.randint(0, images, (rois, 1), generator=generator).float()
    boxes = torch.cat([index, xy, torch.minimum(xy + wh, torch.tensor(image_size))], 1)
    return features.requires_grad_(True), boxes.to(device)


def _fwd_bwd(fn, features, boxes, out, scale):
    def run():
        features.grad = None
        fn(features, boxes, out, scale, 0, True).sum().backward()

    return run


def roi_align_benchmark(device, compare):
    import torch
    from torchvision.ops import roi_align

    from iif_d2.modeling.roi_align import separable_roi_align

    g = torch.Generator().manual_seed(0)
    cases = [  # (title, images, C, H, W, RoIs, image (w, h), output, scale)
        ("SynthLT box RoIAlign (32 x 32, C 64, 512 RoIs, 7 x 7)", 4, 64, 32, 32, 512,
         (128.0, 128.0), 7, 0.25),
        ("SynthLT mask RoIAlign (32 x 32, C 64, 128 RoIs, 14 x 14)", 4, 64, 32, 32, 128,
         (128.0, 128.0), 14, 0.25),
        ("LVIS box RoIAlign (100 x 168, C 256, 256 RoIs, 7 x 7)", 1, 256, 100, 168, 256,
         (1344.0, 800.0), 7, 0.125),
    ]  # fmt: skip
    rows = []
    for title, n, c, h, w, r, size, out, scale in cases:
        features, boxes = _level(device, n, c, h, w, r, size, g)
        fns = {
            "torchvision": _fwd_bwd(roi_align, features, boxes, out, scale),
            "matmul": _fwd_bwd(separable_roi_align, features, boxes, out, scale),
        }
        rows.append(compare(f"{title} fwd + bwd", fns, headline=not title.startswith("LVIS")))
    return rows


def _synthlt_cfg(device, *opts):
    from detectron2.config import get_cfg

    import iif_d2.data  # noqa: F401  (registers SynthLT)
    from iif_d2 import add_iif_config, resolve_training_set

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", device.type, *opts])
    return resolve_training_set(cfg, training=False)


def kernels_model_benchmark(device, compare, weights):
    import torch
    from detectron2.modeling import build_model

    from iif_d2.engine.checkpoint import IIFCheckpointer

    fast_cfg = _synthlt_cfg(device)
    plain_cfg = _synthlt_cfg(device, *PLAIN)
    torch.manual_seed(0)
    fast, plain = build_model(fast_cfg), build_model(plain_cfg)
    if weights:
        IIFCheckpointer(fast).load(weights)
    plain.load_state_dict(fast.state_dict())
    state = "trained" if weights else "fresh"
    train = _inputs(fast_cfg.DATASETS.TRAIN[0], 4)
    val = _inputs(fast_cfg.DATASETS.TEST[0], 4)
    models = {"detectron2": plain, "iif-d2": fast}
    return _train_and_infer(compare, f"SynthLT Mask R-CNN ({state}), 4 images:", models, train, val)


def paired_task(args):
    """Pin the threads, time the task's sections, print the largest headline ratio and write
    OUTPUT/speed_<task>.{md,json} (and the record, with --record)."""
    import torch

    sections, title, targets = PAIRED[args.task]
    only = args.only or list(sections)
    bad = sorted(set(only) - set(sections))
    if bad:
        sys.exit(f"error: --only {' '.join(bad)}: --task {args.task} has {', '.join(sections)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""
    meta = {
        "machine": describe_machine(),
        "kernels": cpu_capability(),
        "device": f"{device}{gpu}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.repeats,
        "warmup": args.warmup,
        "sections": only,
        "timing": "paired rounds of alternating order (A B, B A, ...) with a same-vs-same "
        "control A / A in the same rounds; ratio = median of the paired ratios; A ms, B ms: "
        "each side's median alone (unpaired, drifts with the machine's load)",
        "interval": "distribution-free 95 % interval of the median (order statistics); "
        "spread: 2.5-97.5 % percentiles of the paired ratios; within noise: the ratio's "
        "interval overlaps the control's",
    }
    print(
        f"{meta['device']}, {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads",
        flush=True,
    )
    compare = comparer(device, args.repeats, args.warmup)
    rows = []
    if args.task == "head":
        if "head" in only:
            rows += head_benchmark(device, compare, args.images)
        if "model" in only:
            rows += model_benchmark(device, compare)
        for key, name, config, node in (
            ("retinanet", "tiny RetinaNet", "retinanet_R_18_FPN_instant_iif", "RETINANET"),
            ("fcos", "tiny FCOS", "fcos_R_18_FPN_instant_iif", "FCOS"),
        ):
            if key in only:
                rows += dense_benchmark(device, compare, name, config, node)
    elif args.task == "fasa":
        if "head" in only:
            rows += fasa_head_benchmark(device, compare, args.images)
        if "model" in only:
            rows += fasa_model_benchmark(device, compare)
    else:
        if "roi_align" in only:
            rows += roi_align_benchmark(device, compare)
        if "model" in only:
            rows += kernels_model_benchmark(device, compare, args.weights)
        meta["weights"] = args.weights or "fresh initialisation"
    top = max_headline(rows)
    if top is not None:
        target = targets and targets[device.type == "cuda"]
        aim = f" (target <= {target})" if target else ""
        meta["max ratio"] = f"{top['ratio']['median']:.3f}{aim}, {top['name']}, {top['verdict']}"
        print(f"max ratio {meta['max ratio']}")
    stem = os.path.join(args.output_dir, f"speed_{args.task.replace('-', '_')}")
    md, js = write_speed_report(stem, title, meta, rows)
    print(f"wrote {md} and {js}")
    if args.record:
        add_speed_record(args.record, args.label, " ".join(["python", *sys.argv]), meta, rows)
        print(f"recorded as {args.label!r} in {args.record}")


def add_speed_record(path, label, command, meta, rows):
    """Add (or replace, by ``label``) one run of a paired task to the speed records file at
    ``path``: ``{"runs": [{"label", "command", "commit", ...meta, "rows"}]}``."""
    from iif_d2.utils.io import write_json_atomic

    runs = []
    if os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)["runs"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    run = {"label": label, "command": command, "commit": commit or "unknown", **meta, "rows": rows}
    runs = [r for r in runs if r["label"] != label] + [run]
    write_json_atomic(path, {"runs": runs})


# ---------------------------------------------------------------------------------------------
# checkpoint, class-stats
# ---------------------------------------------------------------------------------------------


def state_module(size_mb: float):
    """A module of float32 tensors shaped like a ResNet's convs, ``size_mb`` MB in all."""
    import torch
    from torch import nn

    model = nn.Module()
    shapes = [(256, 256, 3, 3), (1024, 256, 1, 1), (256, 1024, 1, 1), (512, 512, 3, 3)]
    remaining, i = int(size_mb * 2**20 / 4), 0
    while remaining > 0:
        shape = shapes[i % len(shapes)]
        numel = min(remaining, shape[0] * shape[1] * shape[2] * shape[3])
        model.register_parameter(f"w{i}", nn.Parameter(torch.randn(numel)))
        remaining -= numel
        i += 1
    return model


def file_system(path: str) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts), or ``"unknown"``."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return "unknown"
    real = os.path.realpath(path)
    best = max(
        (m for m in mounts if real.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return f"{best[1]} (mounted at {best[0]})" if best else "unknown"


def checkpoint_task(args):
    """Plain torch.save against the atomic save, alternating (module docstring)."""
    import torch

    from iif_d2.engine.checkpoint import IIFCheckpointer

    if args.size_mb <= 0:
        sys.exit("error: --size-mb must be > 0")
    torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp(prefix="iif_ckpt_bench_", dir=args.dir)
    try:
        model = state_module(args.size_mb)
        checkpointer = IIFCheckpointer(model, root, save_to_disk=True)
        plain_file = os.path.join(root, "plain.pth")

        def plain(i):
            torch.save({"model": model.state_dict(), "iteration": i}, plain_file)

        def atomic(i):
            checkpointer.save("model_final", iteration=i)

        times = {"plain torch.save": [], "atomic save": []}
        fns = dict(zip(times, (plain, atomic)))
        for fn in fns.values():  # warm-up
            fn(-1)
        for i in range(args.repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(i)
                times[name].append(time.perf_counter() - start)

        size = os.path.getsize(os.path.join(root, "model_final.pth")) / 2**20
        print(
            f"{describe_machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s); file system: {file_system(root)}"
        )
        print(f"checkpoint {size:.1f} MiB, {args.repeats} alternating runs each (medians):")
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, median in medians.items():
            spread = f"min {min(times[name]):.3f} s, max {max(times[name]):.3f} s"
            print(f"  {name:17s} {median:.3f} s  ({spread})")
        ratio = medians["atomic save"] / medians["plain torch.save"]
        print(f"  ratio atomic / plain: {ratio:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def lvis_sized_dicts(seed=0):
    """Dataset dicts with LVIS v1 train's shape (the shipped counts), and the class count."""
    from iif_d2.data.class_stats import load_counts_file

    stats = load_counts_file("iif_d2://lvis_v1_train.csv")
    rng = np.random.default_rng(seed)
    cats = np.repeat(np.arange(stats.num_classes), stats.instance_counts)
    rng.shuffle(cats)
    images = np.sort(rng.integers(0, stats.num_images, size=len(cats)))
    bounds = np.searchsorted(images, np.arange(stats.num_images + 1))
    return [
        {"annotations": [{"category_id": int(c), "bbox": [0, 0, 1, 1]} for c in cats[a:b]]}
        for a, b in zip(bounds[:-1], bounds[1:])
    ], stats.num_classes


def class_stats_task(args):
    """count_dataset_dicts on LVIS-sized dicts, one core, best of 3."""
    from iif_d2.data.class_stats import count_dataset_dicts

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    dicts, num_classes = lvis_sized_dicts()
    n_ann = sum(len(d["annotations"]) for d in dicts)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        stats = count_dataset_dicts(dicts, num_classes)
        best = min(best, time.perf_counter() - t)
    print(
        f"{platform.machine()} {platform.processor() or ''}, 1 core: {len(dicts):,} images, "
        f"{n_ann:,} annotations, {num_classes} classes counted in {best:.2f} s (target < 5 s)"
    )
    assert sum(stats.instance_counts) == n_ann


# ---------------------------------------------------------------------------------------------
# lvis-eval
# ---------------------------------------------------------------------------------------------


CSV = os.path.join(REPO, "iif_d2", "data", "lvis_v1_train.csv")
CHUNK = 500


def _frequencies():
    with open(CSV) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [r["frequency"] for r in rows]


def _generate_lvis(num_images, folder, full_results, seed):
    """Write gt.json, compact.npz (the fast engine's input) and, if asked, lvis-api's results
    jsons, chunk by chunk (bounded memory)."""
    from iif_d2.bench.synthetic_lvis import make_dataset, to_results
    from iif_d2.lvis_eval import LVISGroundTruth
    from iif_d2.lvis_eval.engine import compact

    freqs = _frequencies()
    gt = {"images": [], "annotations": [], "categories": None}
    parts = []
    res_files = {t: open(os.path.join(folder, f"results_{t}.json"), "w") for t in ("bbox", "segm")}
    if full_results:
        for f in res_files.values():
            f.write("[")
    first = True
    for start in range(0, num_images, CHUNK):
        n = min(CHUNK, num_images - start)
        g, dets = make_dataset(n, freqs, seed=seed * 100003 + start)
        offset_img, offset_ann = 2 * start, len(gt["annotations"])
        for im in g["images"]:
            im["id"] += offset_img
        for a in g["annotations"]:
            a["image_id"] += offset_img
            a["id"] += offset_ann
        dets.image_id += offset_img
        gt["images"] += g["images"]
        gt["annotations"] += g["annotations"]
        gt["categories"] = g["categories"]
        parts.append(compact(LVISGroundTruth.from_dict(g, with_masks=False), dets))
        if full_results:
            for task, f in res_files.items():
                res = to_results(dets, with_bbox=task == "bbox", with_segm=task == "segm")
                f.write(("" if first else ",") + json.dumps(res)[1:-1])
            first = False
    for f in res_files.values():
        f.write("]" if full_results else "")
        f.close()
    with open(os.path.join(folder, "gt.json"), "w") as f:
        json.dump(gt, f)
    counts = [c for p in parts for c in p.rle_counts]
    lengths = np.array([-1 if c is None else len(c) for c in counts], dtype=np.int64)
    np.savez(
        os.path.join(folder, "compact.npz"),
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in _FIELDS},
        rle_lengths=lengths,
        rle_blob=np.frombuffer(b"".join(c for c in counts if c is not None), dtype=np.uint8),
    )


REF_AGAINST_LVIS_API = ("fast", "faster-coco-eval")  # compared with lvis-api; fast-R with fast
_FIELDS = ("image_id", "category_id", "score", "area", "bbox", "mask_area", "rle_sizes")


def _load_compact(path):
    from iif_d2.lvis_eval import LVISDetections

    z = np.load(path)
    blob = z["rle_blob"].tobytes()
    ends = np.cumsum(np.maximum(z["rle_lengths"], 0))
    counts = [
        None if n < 0 else blob[e - n : e] for n, e in zip(z["rle_lengths"].tolist(), ends.tolist())
    ]
    dets = LVISDetections(**{k: z[k] for k in _FIELDS if k != "mask_area"}, rle_counts=counts)
    dets.mask_area = z["mask_area"]
    return dets


def _take(dets, idx):
    from iif_d2.lvis_eval import LVISDetections

    out = LVISDetections(dets.image_id[idx], dets.category_id[idx], dets.score[idx], dets.area[idx])
    out.bbox = None if dets.bbox is None else dets.bbox[idx]
    if dets.rle_counts is not None:
        out.rle_counts = [dets.rle_counts[i] for i in idx.tolist()]
        out.rle_sizes = dets.rle_sizes[idx]
    return out


def _compact_bytes(dets, idx):
    """Bytes of the compact predictions the evaluator would gather otherwise (float32 boxes
    and scores, int64 categories, float64 mask areas, RLE strings)."""
    rles = sum(len(dets.rle_counts[i] or b"") for i in idx.tolist())
    return len(idx) * (16 + 4 + 8 + 8) + rles


def _sharded(gt, dets, task, ranks):
    """The distributed path in one process: (seconds, metrics, sent bytes packed, compact)."""
    import pickle

    from iif_d2.lvis_eval import engine

    images = np.unique(dets.image_id)
    bounds = np.linspace(0, len(images), ranks + 1).astype(int)
    sent, compact, shard_seconds = 0, 0, []
    packed = []
    for r in range(ranks):
        idx = np.flatnonzero(np.isin(dets.image_id, images[bounds[r] : bounds[r + 1]]))
        t0 = time.perf_counter()
        packed.append(engine.pack_matches(engine.match(gt, _take(dets, idx), task)))
        shard_seconds.append(time.perf_counter() - t0)
        sent += len(pickle.dumps(packed[-1], protocol=pickle.HIGHEST_PROTOCOL))
        compact += _compact_bytes(dets, idx)
    t0 = time.perf_counter()
    m = engine.concat_matches([engine.unpack_matches(p) for p in packed])
    metrics = engine.summarize(engine.accumulate(gt, m))
    return max(shard_seconds) + time.perf_counter() - t0, metrics, sent, compact


# faster-coco-eval's names for lvis-api's metrics
FCE_KEYS = {
    "AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium",
    "APl": "AP_large", "APr": "APr", "APc": "APc", "APf": "APf",
}  # fmt: skip


def faster_coco_eval_metrics(folder, task):
    """faster-coco-eval's LVIS-style evaluation (``lvis_style=True``, 300 detections) of the
    results json, under lvis-api's metric names. Its ``maxDets`` caps per (image, category),
    lvis-api's per image: the generated results hold exactly 300 per image, so both see the
    same detections."""
    import contextlib
    import io

    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(folder, "gt.json"))
        dt = gt.loadRes(os.path.join(folder, f"results_{task}.json"))
        ev = COCOeval_faster(gt, dt, iouType=task, lvis_style=True, print_function=print)
        ev.params.maxDets = [300]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats_as_dict
    return {k: float(stats[v]) for k, v in FCE_KEYS.items()}


def lvis_worker(engine, folder):
    """Evaluate bbox and segm; print one json line (seconds, metrics, peak RSS)."""
    import torch

    torch.set_num_threads(1)
    out = {"seconds": {}, "metrics": {}, "sent_mb": {}}
    if engine in ("fast", "fast+devil") or engine.startswith("fast-"):
        from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth, evaluate, summarize

        t0 = time.perf_counter()
        gt = LVISGroundTruth.from_json(os.path.join(folder, "gt.json"))
        dets = _load_compact(os.path.join(folder, "compact.npz"))
        load = time.perf_counter() - t0
        for task in ("bbox", "segm"):
            t0 = time.perf_counter()
            d = dets
            if task == "segm":
                d = LVISDetections(
                    dets.image_id, dets.category_id, dets.score, dets.mask_area,
                    rle_counts=dets.rle_counts, rle_sizes=dets.rle_sizes,
                )  # fmt: skip
            if engine == "fast":
                out["metrics"][task] = summarize(evaluate(gt, d, task))
                out["seconds"][task] = time.perf_counter() - t0 + load / 2
                continue
            if engine == "fast+devil":  # AP-fixed and AP-pool (10,000 per class), no standard AP
                from iif_d2.lvis_eval.devil import fixed_and_pooled

                fixed, pooled = fixed_and_pooled(gt, d, task)
                out["metrics"][task] = {"AP-fixed": fixed["AP"], **pooled}
                out["seconds"][task] = time.perf_counter() - t0 + load / 2
                continue
            seconds, out["metrics"][task], sent, compact = _sharded(gt, d, task, int(engine[5:]))
            out["seconds"][task] = seconds + load / 2
            out["sent_mb"][task] = (sent / 2**20, compact / 2**20)
    elif engine == "faster-coco-eval":
        for task in ("bbox", "segm"):
            t0 = time.perf_counter()
            out["metrics"][task] = faster_coco_eval_metrics(folder, task)
            out["seconds"][task] = time.perf_counter() - t0
    else:
        from lvis import LVIS, LVISEval, LVISResults

        from iif_d2.utils.compat import numpy_float_alias

        for task in ("bbox", "segm"):
            t0 = time.perf_counter()
            with numpy_float_alias():
                lvis_gt = LVIS(os.path.join(folder, "gt.json"))
                res = LVISResults(lvis_gt, os.path.join(folder, f"results_{task}.json"))
                ev = LVISEval(lvis_gt, res, task)
                ev.run()
            out["metrics"][task] = {k: float(v) for k, v in ev.results.items()}
            out["seconds"][task] = time.perf_counter() - t0
            del lvis_gt, res, ev
    out["maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print_result(out)


def lvis_eval_task(args):
    """Every engine at every size, each in its own subprocess (module docstring)."""
    if args.worker:
        return lvis_worker(*args.worker)
    if args.generate:
        n, folder, full = args.generate
        return _generate_lvis(int(n), folder, full == "1", args.seed)
    if args.quick:
        args.sizes, args.ref_sizes = [300], [300]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    print(f"hardware: {describe_machine()}; OMP/MKL/torch threads pinned to 1 per process")
    header = (
        f"{'images':>7} {'engine':>16} {'bbox s':>8} {'segm s':>8} {'total s':>8} {'peak GB':>8}"
    )
    print(header + f" {'x faster':>8} {'max |diff|':>10}  (against lvis-api; fast-R: against fast)")
    for n in sorted(set(args.sizes) | set(args.ref_sizes)):
        with tempfile.TemporaryDirectory(prefix="lvis_bench_") as folder:
            with_ref = n in args.ref_sizes
            t0 = time.perf_counter()
            run_worker(
                [
                    "--task",
                    "lvis-eval",
                    "--generate",
                    str(n),
                    folder,
                    "1" if with_ref else "0",
                    "--seed",
                    str(args.seed),
                ],
                env,
            )
            print(f"  (generated {n} images in {time.perf_counter() - t0:.0f} s)", flush=True)
            engines = ["lvis-api", "faster-coco-eval", "fast"] if with_ref else ["fast"]
            engines += [f"fast-{args.ranks}"] if args.ranks > 1 else []
            engines = (engines + (["fast+devil"] if args.fixed_pooled else [])) * args.repeats
            runs = {}
            for engine in engines:  # alternating
                runs.setdefault(engine, []).append(
                    run_worker(["--task", "lvis-eval", "--worker", engine, folder], env)
                )
            best = {e: min(r, key=lambda x: sum(x["seconds"].values())) for e, r in runs.items()}
            for engine, r in best.items():
                total = sum(r["seconds"].values())
                line = (
                    f"{n:>7} {engine:>16} {r['seconds']['bbox']:>8.1f} {r['seconds']['segm']:>8.1f}"
                )
                line += f" {total:>8.1f} {r['maxrss_gb']:>8.2f}"
                ref = best.get("lvis-api") if engine in REF_AGAINST_LVIS_API else best["fast"]
                if engine not in ("lvis-api", "fast+devil") and ref is not None:
                    ratio = sum(ref["seconds"].values()) / total
                    diff = max(
                        abs(r["metrics"][t][k] - ref["metrics"][t][k])
                        for t in ref["metrics"]
                        for k in ref["metrics"][t]
                        if k in r["metrics"][t]  # faster-coco-eval: lvis-api's AP keys
                    )
                    line += f" {ratio:>8.1f} {diff:>10.1e}"
                if r["sent_mb"]:  # the compact predictions serve both tasks: counted once
                    sent = " + ".join(f"{v[0]:.0f} ({t})" for t, v in r["sent_mb"].items())
                    compact = next(iter(r["sent_mb"].values()))[1]
                    line += f"  sent MB {sent}; compact predictions {compact:.0f}"
                if engine == "fast+devil":
                    line += "  " + json.dumps(r["metrics"])
                print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# startup
# ---------------------------------------------------------------------------------------------


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


def _startup_config(config_file: str, train_name: str):
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


def startup_worker(mode: str, config_file: str, subset_json: str, folder: str) -> dict:
    """One measurement in this process: mode "parts" (each step) or "facts" (the whole)."""
    import iif_d2.data  # noqa: F401  (registers lvis_shaped_train)
    from iif_d2.data.class_stats import count_dataset_dicts
    from iif_d2.data.heldout import split_heldout
    from iif_d2.data.loader import loader_dataset_dicts
    from iif_d2.data.samplers import repeat_factor_summary, repeat_factors
    from iif_d2.data.training_set import compute_training_set_facts

    cfg = _startup_config(config_file, _register(subset_json, folder))
    out = {"base_rss_mb": _rss_mb()}

    def step(name, fn):
        t0 = time.perf_counter()
        ret = fn()
        out[name] = {"seconds": time.perf_counter() - t0, "peak_rss_mb": _rss_mb()}
        return ret

    if mode == "start":
        import tempfile

        from iif_d2.data.loader import training_dicts
        from iif_d2.data.training_set import resolve_training_run

        with tempfile.TemporaryDirectory(prefix="iif_startup_run_") as out_dir:
            cfg.OUTPUT_DIR = out_dir
            train = step("start", lambda: training_dicts(*resolve_training_run(cfg))[0])
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


def startup_table(rows) -> str:
    """The start-up rows as a markdown table."""
    from iif_d2.bench.report import markdown_table

    head = ["images", "base MB"] + [f"{p} s" for p in PARTS] + ["peak MB (parts)"]
    head += ["facts s", "facts peak MB", "start s", "start peak MB"]
    body = []
    for r in rows:
        p, f = r["parts"], r["facts"]
        cells = [f"{p['images']:,}", f"{p['base_rss_mb']:.0f}"]
        cells += [f"{p[k]['seconds']:.2f}" for k in PARTS]
        cells += [f"{p['heldout']['peak_rss_mb']:.0f}"]
        cells += [f"{f['facts']['seconds']:.1f}", f"{f['facts']['peak_rss_mb']:.0f}"]
        st = r["start"]["start"]
        cells += [f"{st['seconds']:.1f}", f"{st['peak_rss_mb']:.0f}"]
        body.append(cells)
    return markdown_table(head, body)


def startup_task(args):
    """Each part at each fraction in a fresh subprocess (module docstring)."""
    if args.worker:
        mode, subset, folder = args.worker
        config_file = args.config_file or RECIPE
        if mode == "subsets":  # subset = the work folder
            import torch

            folder = _train_folder()
            paths = write_subsets(sorted(set(args.fractions)), folder, subset)
            res = {"folder": folder, "subsets": paths, "torch": torch.__version__}
        else:
            res = startup_worker(mode, config_file, subset if subset != "-" else "", folder)
        return print_result(res)
    if not all(0 < f <= 1 for f in args.fractions):
        sys.exit("error: --fractions must lie in (0, 1]")
    config_file = args.config_file or RECIPE

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rows = []
    fracs = [str(f) for f in sorted(set(args.fractions))]
    with tempfile.TemporaryDirectory(prefix="iif_startup_") as work:
        # the parent stays small: a child's ru_maxrss starts at its parent's peak
        t0 = time.perf_counter()
        prep = run_worker(
            ["--task", "startup", "--fractions", *fracs, "--worker", "subsets", work, "-"], env
        )
        print(
            f"Start-up benchmark, {config_file} on lvis_shaped_train\n"
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
                row[mode] = run_worker(
                    ["--task", "startup", "--config-file", config_file,
                     "--worker", mode, subset, folder], env,
                )  # fmt: skip
            rows.append(row)
            f = row["facts"]["facts"]
            print(
                f"{frac:.0%}: {row['parts']['images']:,} images, facts {f['seconds']:.1f} s, "
                f"{f['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    print(startup_table(rows))
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


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------

DEFAULTS = {  # per task: --repeats, --threads (None: all cores)
    "checkpoint": (7, 1),
    "lvis-eval": (1, 1),
    "startup": (1, None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS, help="what to time")
    p.add_argument("--device", default=None, help="paired tasks: cpu or cuda (default: cuda "
                   "where there is one)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=None,
                   help="paired tasks: timed rounds per row (30); checkpoint: runs of each save "
                   "(7); lvis-eval: runs per engine and size (1)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=3, help="paired tasks: untimed rounds (3)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, pinned (1; startup: OMP_NUM_THREADS, all cores)",
    )
    p.add_argument("--images", type=int, default=2,
                   help="head and fasa: images per batch, 512 RoIs each (2)")  # fmt: skip
    p.add_argument("--only", nargs="+", metavar="SECTION",
                   help="paired tasks: these sections only (head: head model retinanet fcos; "
                   "fasa: head model; kernels: roi_align model)")  # fmt: skip
    p.add_argument("--weights", default="", help="kernels: a checkpoint for the model rows")
    p.add_argument(
        "--output-dir",
        default=os.path.join(REPO, "output", "benchmark"),
        help="paired tasks: where speed_<task>.{md,json} go (output/benchmark)",
    )
    p.add_argument("--record", metavar="JSON", default=None,
                   help="paired tasks: also add this run to a speed records file, e.g. "
                   "docs/results/speed_head.json (make docs turns it into "
                   "docs/benchmarks/speed.md)")  # fmt: skip
    p.add_argument("--label", default="this tree", help="the run's name in --record")
    p.add_argument("--size-mb", type=float, default=90.0, help="checkpoint: state dict MB (90)")
    p.add_argument("--dir", default=None, help="checkpoint: a temporary directory is made "
                   "(and removed) inside this one (default: the system's)")  # fmt: skip
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000, 19809],
                   help="lvis-eval: images of each generated set")  # fmt: skip
    p.add_argument(
        "--ref-sizes",
        type=int,
        nargs="*",
        default=[500, 2000],
        help="lvis-eval: the sizes lvis-api and faster-coco-eval run at",
    )
    p.add_argument("--seed", type=int, default=0, help="lvis-eval: the generated data's seed")
    p.add_argument("--quick", action="store_true", help="lvis-eval: 300 images, every engine")
    p.add_argument("--ranks", type=int, default=1, help="lvis-eval: also the R-rank path (R > 1)")
    p.add_argument(
        "--fixed-pooled",
        action="store_true",
        help="lvis-eval: also AP-fixed + AP-pool (fast engine), timed apart",
    )
    p.add_argument("--config-file", default=None, help=f"startup: the config ({RECIPE})")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.1, 0.25, 0.5, 1.0],
        help="startup: fractions of the 100,170 training images, in (0, 1]",
    )
    p.add_argument("--json", help="startup: also write the results to this json file")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--generate", nargs=3, metavar=("N", "FOLDER", "FULL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    repeats, threads = DEFAULTS.get(args.task, (30, 1))
    args.repeats = repeats if args.repeats is None else args.repeats
    args.threads = (threads or os.cpu_count()) if args.threads is None else args.threads
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        p.error(
            f"--repeats and --threads must be >= 1 and --warmup >= 0; got {args.repeats}, "
            f"{args.threads} and {args.warmup}."
        )
    if args.device is None and args.task in PAIRED:  # lvis-eval and startup: no torch here
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.task == "kernels" and args.weights and not os.path.isfile(args.weights):
        sys.exit(
            f"error: --weights {args.weights!r} is not a file (e.g. output/demo/model_final.pth)"
        )
    if args.record and args.task not in PAIRED:
        p.error(f"--record: only the paired tasks ({', '.join(PAIRED)}) write records")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.task in PAIRED:
        return paired_task(args)
    task = {"checkpoint": checkpoint_task, "class-stats": class_stats_task,
            "lvis-eval": lvis_eval_task, "startup": startup_task}[args.task]  # fmt: skip
    return task(args)


if __name__ == "__main__":
    sys.exit(main() or 0)
