#!/usr/bin/env python
"""IIF vs detectron2's plain models, in the same process: train-step and inference time,
printed as ratios (IIF / plain). Target: <= 1.01 on a GPU, <= 1.03 on CPU.

Timing (tools/timing.py): after warm-up, paired rounds of alternating order (A B, B A, ...),
each also timing A against itself, the same-vs-same control; a row gives the median of the
paired ratios, its 95 % interval (distribution-free, order statistics), their 2.5-97.5 %
spread, the control's median and interval, and "within noise" where the two intervals overlap.
The two models of a pair hold the same parameters. Rows:
  head:  FastRCNNOutputLayers vs IIFFastRCNNOutputLayers (end-to-end), LVIS sizes
         (C = 1203, 1024-d RoI features, 512 RoIs per image): forward + loss + backward;
         forward + scores + boxes (NMS excluded: its input size depends on the scores).
  model: the tiny Mask R-CNN of configs/quick_schedules (softmax vs IIF), a full SGD step
         and inference on the synthetic set.
  dense: the tiny RetinaNet and FCOS of configs/quick_schedules, IIF off vs on, a full SGD step
         and inference on the synthetic set. Train step: the synthetic set's IIF weights (the
         loss costs the same whatever the weights). Inference: IIF with all-ones weights, so
         that the same candidates pass the score threshold and reach NMS as in the plain model
         while IIF's scaling runs in full (with random parameters, how many candidates pass
         depends on the scaled scores, which is not an overhead of IIF); the "real w" line, with
         the synthetic set's weights, is printed for information, outside the max ratio.

    python tools/benchmark.py [--device cuda] [--repeats 30] [--threads 1] [--only head ...]

Writes output/benchmark/speed.{md,json} (--output-dir): the machine, threads, rounds and every
row. The thread count is pinned (torch.set_num_threads, default 1): on a CPU shared with other
jobs, more threads than free cores made steps 10-100 times slower at random here.
"""

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

import argparse
import copy
import os
import tempfile

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import annotations_to_instances, read_image
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from timing import compare_pairs, format_row, max_headline, write_report

from iif_d2 import IIFFastRCNNOutputLayers, add_iif_config, resolve_training_set
from iif_d2.utils.machine import describe_machine

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def comparer(device, rounds, warmup):
    """``compare(name, fns, headline=True)``: :func:`timing.compare_pairs` on ``device`` of the
    two callables of ``fns`` (label -> callable, the baseline first), its row printed."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def compare(name, fns, headline=True):
        row = compare_pairs(name, tuple(fns), tuple(fns.values()), rounds, warmup, sync, headline)
        print(format_row(row), flush=True)
        return row

    return compare


def lvis_proposals(device, images, num_classes, generator, foreground=None):
    """512 random proposals per 800x1333 image with ground truth boxes and classes: uniform over
    the C+1 classes, or the first ``foreground`` of them foreground and the rest background."""
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
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "quick_schedules", name + ".yaml"))
    out = tempfile.mkdtemp(prefix="iif-d2-benchmark-")
    cfg.merge_from_list(["MODEL.DEVICE", device.type, "OUTPUT_DIR", out, *opts])
    return resolve_training_set(cfg, training=False)


def _pair(cfg_a, cfg_b):
    """The models of two configs, the second holding the first's parameters."""
    torch.manual_seed(0)
    a = build_model(cfg_a)
    b = build_model(cfg_b)
    b.load_state_dict(a.state_dict())
    return a, b


def _inputs(dataset="iif_synthetic_tiny_train", n=2):
    """The first ``n`` images of ``dataset`` (default: two of the tiny synthetic set), with
    their ground truth."""
    inputs = []
    for d in DatasetCatalog.get(dataset)[:n]:
        img = torch.as_tensor(read_image(d["file_name"], "BGR").transpose(2, 0, 1).copy())
        inst = annotations_to_instances(d["annotations"], img.shape[1:])
        h, w = img.shape[1:]
        inputs.append({"image": img, "instances": inst, "height": h, "width": w})
    return inputs


def _train_step(model, inputs):
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


def setup(doc, sections, report, add_arguments=None):
    """Parse the shared options (``doc``: the script's docstring, shown in full by --help;
    ``sections``: the choices of --only; ``report``: the file name of the outputs, without
    extension; ``add_arguments(parser)``: a script's own options), pin the thread count and
    print the machine line.

    Returns:
        (args, device, compare, meta): ``compare`` as :func:`comparer`, ``meta`` the report's
        header (machine, device, torch, threads, rounds, warm-up, interval).
    """
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, help=f"cpu or cuda (default: {default})")
    parser.add_argument(
        "--repeats", type=int, default=30, help="timed paired rounds per row (default: 30)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed rounds before them (default: 3)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument(
        "--images", type=int, default=2, help="images per batch, 512 RoIs each (default: 2)"
    )
    parser.add_argument("--only", nargs="+", choices=sections, help="run only these sections")
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument(
        "--output-dir",
        default=os.path.normpath(os.path.join(REPO, "output", "benchmark")),
        help=f"where {report}.md and {report}.json go (default: output/benchmark)",
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error(
            f"--repeats and --threads must be >= 1 and --warmup >= 0; got {args.repeats}, "
            f"{args.threads} and {args.warmup}."
        )
    args.only = args.only or list(sections)
    args.report = report
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""
    meta = {
        "machine": describe_machine(),
        "device": f"{device}{gpu}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.repeats,
        "warmup": args.warmup,
        "sections": args.only,
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
    return args, device, comparer(device, args.repeats, args.warmup), meta


def finish(args, meta, rows, title, target=None):
    """Print the largest headline ratio (against ``target`` if given) and write the report."""
    top = max_headline(rows)
    if top is not None:
        aim = f" (target <= {target})" if target else ""
        meta = {
            **meta,
            "max ratio": f"{top['ratio']['median']:.3f}{aim}, {top['name']}, {top['verdict']}",
        }
        print(f"max ratio {meta['max ratio']}")
    md, js = write_report(os.path.join(args.output_dir, args.report), title, meta, rows)
    print(f"wrote {md} and {js}")


SECTIONS = ("head", "model", "retinanet", "fcos")


def main():
    args, device, compare, meta = setup(__doc__, SECTIONS, "speed")
    rows = []
    if "head" in args.only:
        rows += head_benchmark(device, compare, args.images)
    if "model" in args.only:
        rows += model_benchmark(device, compare)
    for key, title, config, node in (
        ("retinanet", "tiny RetinaNet", "retinanet_R_18_FPN_instant_iif", "RETINANET"),
        ("fcos", "tiny FCOS", "fcos_R_18_FPN_instant_iif", "FCOS"),
    ):
        if key in args.only:
            rows += dense_benchmark(device, compare, title, config, node)
    target = 1.01 if device.type == "cuda" else 1.03
    finish(args, meta, rows, "IIF / plain: train-step and inference time", target)


if __name__ == "__main__":
    main()
