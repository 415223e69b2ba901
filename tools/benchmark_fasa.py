#!/usr/bin/env python
"""FASA's per-iteration overhead: the same model with and without FASA, in the same process,
printed as ratios (FASA / without). Timing, options and report as tools/benchmark.py (paired
rounds of alternating order, a same-vs-same control beside each ratio, tools/timing.py).

  head:  IIFFastRCNNOutputLayers (end-to-end IIF) at LVIS sizes (C = 1203, 1024-d features,
         512 RoIs per image): forward + loss + backward, without FASA vs with FASA active
         (statistics update of the step's RoIs, sampling, the virtual features' loss); every
         class already seen, rates = the normalised inverse LVIS v1 instance counts (about one
         virtual feature per step, as in training). The "all rates 1" line (1203 virtual
         features per step) is printed for information, outside the max ratio.
  model: the tiny recipe Mask R-CNN of configs/quick_schedules (cosine classifier, normalised
         mask, IOF base10), FASA off vs on (active from the first step), a full SGD step.
Inference is not timed: FASA does nothing at inference.

    python tools/benchmark_fasa.py [--device cuda] [--repeats 30] [--threads 1] [--only head]

Writes output/benchmark/speed_fasa.{md,json} (--output-dir).
"""

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported


import torch
from benchmark import _inputs, _quick_cfg, _train_step, finish, lvis_proposals, setup
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils.events import EventStorage

from iif_d2 import IIFFastRCNNOutputLayers, load_counts_file
from iif_d2.modeling.fasa import FASA


def head_benchmark(device, compare, images):
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


def model_benchmark(device, compare):
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


def main():
    args, device, compare, meta = setup(__doc__, ("head", "model"), "speed_fasa")
    rows = []
    if "head" in args.only:
        rows += head_benchmark(device, compare, args.images)
    if "model" in args.only:
        rows += model_benchmark(device, compare)
    finish(args, meta, rows, "FASA / without: train-step time")


if __name__ == "__main__":
    main()
