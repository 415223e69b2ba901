#!/usr/bin/env python
"""MODEL.KERNELS: detectron2's kernels vs iif-d2's (RoIAlign as matrix products, channels-last
R-CNN), in the same process, printed as ratios (iif-d2's / detectron2's: below 1 is faster).
Timing, options and report as tools/benchmark.py (paired rounds of alternating order, a
same-vs-same control beside each ratio, tools/timing.py).

  roi_align: one RoIAlign level, forward + backward, torchvision's kernel vs
         iif_d2.modeling.roi_align.separable_roi_align on random RoIs: SynthLT's sizes (128-px images,
         stride-4 map 32 x 32, 64 channels, 4 images x 128 RoIs, 7 x 7 box and 14 x 14 mask
         cells) and LVIS's (an 800 x 1333 image's stride-8 map, 100 x 168, 256 channels, 256
         RoIs, 7 x 7), where the products cost more than the kernel saves (printed for
         information, outside the max ratio).
  model: the SynthLT Mask R-CNN (configs/SynthLT-InstanceSegmentation/mask_rcnn_R_18_FPN_iif
         .yaml, which sets both kernels) against the same config with detectron2's
         (ROI_ALIGN "torchvision", CHANNELS_LAST False), the same parameters: a full SGD step
         on 4 SynthLT training images and inference on 4 validation images. --weights
         (e.g. output/demo/model_final.pth) times a trained model, whose proposals overlap the
         ground truth and so feed the mask head more RoIs than a fresh one's.

    python tools/benchmark_kernels.py [--threads 2] [--repeats 30] [--weights PATH] [--only model]

Writes output/benchmark/speed_kernels.{md,json} (--output-dir).
"""

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

import os
import sys

import torch
from benchmark import REPO, _inputs, _train_and_infer, finish, setup
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torchvision.ops import roi_align

import iif_d2.data  # noqa: F401  (registers SynthLT)
from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.engine.checkpoint import IIFCheckpointer
from iif_d2.modeling.roi_align import separable_roi_align

CONFIG = os.path.join(
    REPO, "configs", "SynthLT-InstanceSegmentation", "mask_rcnn_R_18_FPN_iif.yaml"
)
PLAIN = ["MODEL.KERNELS.ROI_ALIGN", "torchvision", "MODEL.KERNELS.CHANNELS_LAST", False]


def _level(device, images, channels, height, width, rois, image_size, generator):
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
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", device.type, *opts])
    return resolve_training_set(cfg, training=False)


def model_benchmark(device, compare, weights):
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


def _weights_option(parser):
    parser.add_argument(
        "--weights", default="", help="a checkpoint for the model rows (default: fresh models)"
    )


def main():
    args, device, compare, meta = setup(
        __doc__, ("roi_align", "model"), "speed_kernels", _weights_option
    )
    if args.weights and not os.path.isfile(args.weights):
        sys.exit(
            f"error: --weights {args.weights!r} is not a file (e.g. output/demo/model_final.pth)"
        )
    rows = []
    if "roi_align" in args.only:
        rows += roi_align_benchmark(device, compare)
    if "model" in args.only:
        rows += model_benchmark(device, compare, args.weights)
    meta = {**meta, "weights": args.weights or "fresh initialisation"}
    finish(args, meta, rows, "iif-d2's kernels / detectron2's: time")


if __name__ == "__main__":
    main()
