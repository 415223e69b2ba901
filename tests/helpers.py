"""Small fixtures shared by several test files (imported as ``helpers``: pytest puts tests/ on
the path)."""

import _thread
import contextlib
import importlib.util
import os
import signal
import sys

import numpy as np
import pycocotools.mask as mask_utils
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
DEV = os.path.join(ROOT, "dev")


def _load_script(path: str, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tool(name: str, module_name: str = None):
    """The user command ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    return _load_script(os.path.join(TOOLS, f"{name}.py"), module_name or name)


def load_dev(name: str, module_name: str = None):
    """The developer script ``dev/<name>.py`` (``name`` may hold a folder: "analysis/...") as
    a module."""
    return _load_script(os.path.join(DEV, f"{name}.py"), module_name or os.path.basename(name))


def focal_loss_by_hand(z, target, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss written out: -alpha_t (1 - p_t)^gamma log p_t, summed."""
    p = torch.sigmoid(z)
    p_t = torch.where(target == 1, p, 1 - p)
    alpha_t = torch.where(target == 1, torch.full_like(z, alpha), torch.full_like(z, 1 - alpha))
    return (-alpha_t * (1 - p_t) ** gamma * torch.log(p_t)).sum()


def tiny_proposals(num_classes, n_per_image=(6, 5)):
    """Proposals on 64x64 images with ground truth boxes and classes in [0, C] (C background)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for n in n_per_image:
        inst = Instances((64, 64))
        xy = torch.rand(n, 2, generator=g) * 32
        wh = torch.rand(n, 2, generator=g) * 24 + 4
        inst.proposal_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_boxes = Boxes(torch.cat([xy + 1, xy + wh - 1], 1))
        inst.gt_classes = torch.randint(0, num_classes + 1, (n,), generator=g)
        out.append(inst)
    return out


def box_features(n=11, dim=16):
    """(n, dim) random RoI features, fixed seed."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(2))


def fp_by_group_case():
    """(ground truth, detections, their false positives per image by the frequency group of
    the detection's class at score >= 0.3): 2 images, one frequent object matched, two rare
    false positives, one common, one frequent below the threshold."""
    gt = lvis_gt_dict([(1, 1, [0, 0, 10, 10])], {1: [2, 3], 2: [1, 2, 3]})
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # matched
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.8},  # rare FP
        {"image_id": 2, "category_id": 3, "bbox": [5, 5, 10, 10], "score": 0.7},  # rare FP
        {"image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10], "score": 0.6},  # common FP
        {"image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.1},  # below 0.3
    ]
    return gt, dets, {"FP/img r": 1.0, "FP/img c": 0.5, "FP/img f": 0.0}


def lvis_gt_dict(gt_boxes, neg, not_exhaustive=None):
    """A small LVIS-format ground truth: 100x100 images ``neg`` (image id -> its
    neg_category_ids), categories 1 "f", 2 "c", 3 "r", and ``gt_boxes`` (image_id, category_id,
    [x, y, w, h]) as annotations."""
    not_exhaustive = not_exhaustive or {}
    return {
        "images": [
            {
                "id": i,
                "width": 100,
                "height": 100,
                "neg_category_ids": neg[i],
                "not_exhaustive_category_ids": not_exhaustive.get(i, []),
            }
            for i in neg
        ],
        "categories": [
            {"id": 1, "name": "a", "frequency": "f"},
            {"id": 2, "name": "b", "frequency": "c"},
            {"id": 3, "name": "c", "frequency": "r"},
        ],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3]}
            for k, (i, c, b) in enumerate(gt_boxes)
        ],
    }


class Mkdir:
    """Unpickling it calls os.mkdir(path): code execution, made visible."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def copy_run(run_dir, dest):
    """A copy of a run folder's model, config and class statistics in ``dest`` (made)."""
    dest.mkdir()
    for name in ("model_final.pth", "config.yaml", "iif_class_stats.json"):
        (dest / name).write_bytes((run_dir / name).read_bytes())
    return dest


def register(name, json_file, gt, evaluator_type="lvis"):
    """Register ``name`` as an evaluation dataset of the LVIS/COCO json ``json_file``."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        json_file=json_file,
        evaluator_type=evaluator_type,
        thing_classes=[c["name"] for c in gt["categories"]],
        thing_dataset_id_to_contiguous_id={c["id"]: k for k, c in enumerate(gt["categories"])},
    )


def model_outputs(gt, dets):
    """(input, output) pairs of each image's detections as a detectron2 model returns them."""
    outputs = []
    for img in gt["images"]:
        sel = np.flatnonzero(dets.image_id == img["id"])
        xyxy = BoxMode.convert(dets.bbox[sel], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
        inst = Instances((img["height"], img["width"]))
        inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32))
        inst.scores = torch.tensor(dets.score[sel], dtype=torch.float32)
        inst.pred_classes = torch.tensor(dets.category_id[sel] - 1)
        masks = mask_utils.decode(dets.rles(sel)).transpose(2, 0, 1)
        inst.pred_masks = torch.tensor(masks, dtype=torch.bool)
        outputs.append(({"image_id": img["id"]}, {"instances": inst}))
    return outputs


def sigint_as_at_a_terminal():
    """SIGINT back to its default in a child process (``preexec_fn``), so that Python raises
    KeyboardInterrupt on it: a suite started in the background (``nohup make test &``) runs
    with SIGINT ignored, which its children inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def ctrl_c_in(function_name: str):
    """Ctrl-C as the main thread enters ``function_name``: SIGINT's KeyboardInterrupt, raised
    by Python's own handler (``_thread.interrupt_main``), where it would be raised mid-run.
    Python's handler is installed for the while: in a suite started in the background SIGINT
    is ignored, and ``interrupt_main`` would do nothing."""

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name == function_name:
            sys.setprofile(None)
            _thread.interrupt_main()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGINT, previous)
