#!/usr/bin/env python
"""Run every bad input of iif-d2's table and write what each one is told.

Each row is a bad input (a counts file, training data, a command line of ``train_net.py``,
``python -m iif_d2.cli``, ``python -m iif_d2.lvis_eval`` (and its ``fp_analysis``) or a
``tools/`` script, a config, a checkpoint, a second writer of an OUTPUT_DIR), the error type it
must raise and a fragment its message must hold.
tests/test_bad_inputs.py asserts every row and checks that docs/bad_inputs.md is what the rows
generate; this script runs the same rows in temporary folders and prints (or, with ``--write``,
writes) that page: a markdown table "bad input | error (first line)". Exit status 1 if a row
does not fail as the table says (nothing is written then).

    python dev/bad_input_table.py                          # print the page
    python dev/bad_input_table.py --write docs/bad_inputs.md
"""

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import re
import socket
import sys
import tempfile
from functools import partial
from typing import Callable, Dict, Optional

SYNTH = "iif_synthetic_tiny_train"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(
    ROOT, "configs", "LVISv1-InstanceSegmentation", "mask_rcnn_R_50_FPN_12e_iif.yaml"
)


class CLIFailed(Exception):
    """A command line's ``main`` returned (or exited with) a non-zero status.

    Attributes:
        code: the exit status.
        stderr: everything it printed on stderr.
    """

    def __init__(self, code, stderr: str):
        lines = [line for line in stderr.splitlines() if line.strip()]
        super().__init__(lines[-1] if lines else f"exit status {code}, nothing on stderr")
        self.code, self.stderr = code, stderr


@dataclasses.dataclass(frozen=True)
class Row:
    """One bad input.

    Attributes:
        what: the bad input, as the README shows it.
        run: does the bad thing in a fresh temporary folder (its only argument).
        error: the exception type it must raise (:class:`CLIFailed` for a command line).
        fragment: text the message must contain ("{tmp}" stands for the folder).
    """

    what: str
    run: Callable[[str], object]
    error: type
    fragment: str


def _write(tmp: str, files: Optional[Dict[str, object]]):
    for name, content in (files or {}).items():
        path = os.path.join(tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        else:
            with open(path, "w") as f:
                f.write(content if isinstance(content, str) else json.dumps(content))


def counts(name: str, content) -> Callable[[str], object]:
    """Load ``content``, written as ``name``, with
    :func:`iif_d2.data.class_stats.load_counts_file`."""

    def run(tmp):
        from iif_d2.data.class_stats import load_counts_file

        _write(tmp, {name: content})
        return load_counts_file(os.path.join(tmp, name))

    return run


def counts_file(path: str) -> Callable[[str], object]:
    """Load ``path`` ("{tmp}" replaced) with :func:`iif_d2.data.class_stats.load_counts_file`."""

    def run(tmp):
        from iif_d2.data.class_stats import load_counts_file

        return load_counts_file(path.format(tmp=tmp))

    return run


def _exit_status(main: Callable, args, tmp: str, files=None) -> int:
    """Call ``main`` on ``args`` ("{tmp}" replaced), after writing ``files``, with its output
    captured: returns 0, or raises :class:`CLIFailed` with its status and stderr."""
    _write(tmp, files)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([a.format(tmp=tmp) for a in args])
        except SystemExit as e:  # argparse's own errors, and the converter's
            code = e.code
    if code != 0:
        raise CLIFailed(code, err.getvalue())
    return code


def cli(module: str, *args: str, files=None) -> Callable[[str], object]:
    """Run ``module``'s ``main`` on ``args`` ("{tmp}" replaced), after writing ``files``."""
    return lambda tmp: _exit_status(importlib.import_module(module).main, args, tmp, files)


def train_net(*args: str, files=None) -> Callable[[str], object]:
    """``python train_net.py ARGS`` in this process, as far as it checks its inputs before
    launching a run ("{tmp}" replaced, ``files`` written first)."""

    def run(tmp):
        from iif_d2.train_net import run as train_net_run

        return _exit_status(train_net_run, args, tmp, files)

    return run


QUICK_CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant.yaml")


def quick(*opts: str, files=None) -> Callable[[str], object]:
    """``python train_net.py`` on the quick-schedule config with ``opts`` (output in the folder)."""
    return train_net("--config-file", QUICK_CONFIG, "OUTPUT_DIR", "{tmp}/out", *opts, files=files)


_SCRIPTS: Dict[str, object] = {}


def script(name: str, *args: str, files=None) -> Callable[[str], object]:
    """Run ``tools/<name>.py``'s ``main`` on ``args`` ("{tmp}" replaced), after writing
    ``files`` (the tools are scripts, loaded from their files once)."""

    def run(tmp):
        if name not in _SCRIPTS:
            spec = importlib.util.spec_from_file_location(
                f"iif_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py")
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _SCRIPTS[name] = module
        return _exit_status(_SCRIPTS[name].main, args, tmp, files)

    return run


def fifo(name: str, run: Callable[[str], object]) -> Callable[[str], object]:
    """``run`` after making a named pipe ``name`` in the folder (reading it would block)."""

    def with_fifo(tmp):
        os.mkfifo(os.path.join(tmp, name))
        return run(tmp)

    return with_fifo


def read_only(name: str, content) -> Callable[[str], None]:
    """Makes ``name`` (``content``) in the folder, read-only."""

    def make(tmp):
        _write(tmp, {name: content})
        os.chmod(os.path.join(tmp, name), 0o444)

    return make


def saved(name: str, content: Callable[[], object]) -> Callable[[str], None]:
    """Makes ``name`` in the folder: ``torch.save`` of what ``content()`` returns then."""

    def make(tmp):
        import torch

        torch.save(content(), os.path.join(tmp, name))

    return make


def then(prepare: Callable[[str], object], run: Callable[[str], object]):
    """``run`` after ``prepare`` (both given the folder)."""

    def both(tmp):
        prepare(tmp)
        return run(tmp)

    return both


def _cfg(**counts_node):
    from detectron2.config import get_cfg

    from iif_d2.config import add_iif_config

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.DATASETS.TRAIN = (SYNTH,)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 8
    cfg.MODEL.ROI_BOX_HEAD.IIF.ENABLED = True
    for key, value in counts_node.items():
        setattr(cfg.MODEL.CLASS_COUNTS, key, value)
    return cfg


def unknown_counts_source(tmp):
    from iif_d2.data.training_set import resolve_training_set

    cfg = _cfg(SOURCE="somewhere")
    cfg.OUTPUT_DIR = tmp
    return resolve_training_set(cfg)


def deprecated_key_conflict(tmp):
    from iif_d2.config import apply_deprecated_keys

    cfg = _cfg(SOURCE="json")
    cfg.MODEL.ROI_BOX_HEAD.IIF.COUNTS_SOURCE = "file"
    return apply_deprecated_keys(cfg)


def iif_on_upstream_roi_heads(tmp, **keys):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_roi_heads

    from iif_d2.modeling.config_check import check_settings_used

    cfg = _cfg()
    cfg.merge_from_list([x for kv in keys.items() for x in kv])
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 1, 16
    heads = build_roi_heads(cfg, {"p2": ShapeSpec(channels=4, stride=4)})
    return check_settings_used(cfg, heads)


def num_classes_mismatch(tmp):
    from iif_d2.modeling.class_weights import iif_weights_from_config

    cfg = _cfg(SOURCE="file", FILE="iif_d2://coco_train2017.csv")
    return iif_weights_from_config(cfg, 8)


def coco_counts_and_classes_on_synthlt(tmp):
    from iif_d2.data.training_set import resolve_training_set
    from iif_d2.engine.trainer import Trainer

    cfg = _cfg(SOURCE="file", FILE="iif_d2://coco_train2017.csv")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.DEVICE, cfg.OUTPUT_DIR = 80, "cpu", tmp
    return Trainer.build_model(resolve_training_set(cfg))


# protocol 0: os.system("true"), the classic payload (plain pickle.load would run it)
PICKLE_PAYLOAD = b"cos\nsystem\n(S'true'\ntR."


def pickle_payload_as_weights(tmp):
    from torch import nn

    from iif_d2.engine.checkpoint import IIFCheckpointer

    path = os.path.join(tmp, "model_final.pkl")
    _write(tmp, {"model_final.pkl": PICKLE_PAYLOAD})
    cfg = _cfg()
    cfg.MODEL.WEIGHTS = path
    return IIFCheckpointer(nn.Linear(2, 2), save_dir=tmp).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )


def checkpoint(name: str) -> Callable[[str], object]:
    """Load the folder's ``name`` as a checkpoint with
    :class:`iif_d2.engine.checkpoint.IIFCheckpointer` (what ``MODEL.WEIGHTS`` goes through)."""

    def run(tmp):
        from torch import nn

        from iif_d2.engine.checkpoint import IIFCheckpointer

        path = os.path.join(tmp, name)
        return IIFCheckpointer(nn.Linear(2, 2), save_dir=tmp).load(path, checkpointables=[])

    return run


def nan_state():
    """A checkpoint's content whose weight is all NaN."""
    import torch

    return {"model": {"weight": torch.full((2, 2), float("nan")), "bias": torch.zeros(2)}}


def dataset_dict_with_string_id(tmp):
    from iif_d2.data.class_stats import count_dataset_dicts

    return count_dataset_dicts([{"annotations": [{"category_id": "1"}]}], 2, source="my_train")


def _box(bbox=(1, 1, 8, 8), segm=((1.0, 1.0, 9.0, 1.0, 9.0, 9.0, 1.0, 9.0),), cat=0):
    ann = {"bbox": list(bbox), "bbox_mode": 1, "category_id": cat}  # 1: BoxMode.XYWH_ABS
    if segm is not None:
        ann["segmentation"] = [list(p) for p in segm]
    return ann


def _image(image_id, *anns, size=(20, 20), file_name=None):
    return {
        "file_name": file_name or f"images/{image_id}.jpg",
        "image_id": image_id,
        "width": size[0],
        "height": size[1],
        "annotations": list(anns),
    }


def training_set(*records, json_file=None) -> Callable[[str], object]:
    """Load ``records`` (built in the row's folder: a callable of it) as the training set
    ``my_train`` through :func:`iif_d2.data.loader.loader_dataset_dicts`, the load every
    training run and the class statistics go through."""

    def run(tmp):
        from detectron2.data import DatasetCatalog, MetadataCatalog

        from iif_d2.data.loader import loader_dataset_dicts

        dicts = [r(tmp) if callable(r) else r for r in records]
        DatasetCatalog.register("my_train", lambda: dicts)
        MetadataCatalog.get("my_train").set(thing_classes=["a", "b"])
        try:
            cfg = _cfg()
            cfg.DATASETS.TRAIN, cfg.MODEL.MASK_ON = ("my_train",), True
            return loader_dataset_dicts(cfg)
        finally:
            DatasetCatalog.remove("my_train")
            MetadataCatalog.remove("my_train")

    return run


def png16(tmp):
    import numpy as np
    from PIL import Image

    path = os.path.join(tmp, "depth.png")
    Image.fromarray(np.full((20, 20), 4000, np.uint16)).save(path)
    return _image(1, _box(), file_name=path)


def with_file(record: dict) -> Callable[[str], dict]:
    """``record`` with an (empty) image file made for it in the row's folder."""

    def make(tmp):
        _write(tmp, {"1.jpg": b""})
        return dict(record, file_name=os.path.join(tmp, "1.jpg"))

    return make


def lvis_training_json(data: dict) -> Callable[[str], object]:
    """Load the LVIS json ``data`` with detectron2's LVIS loader through the training load."""

    def run(tmp):
        from detectron2.data import DatasetCatalog, MetadataCatalog
        from detectron2.data.datasets.lvis import load_lvis_json

        from iif_d2.data.loader import loader_dataset_dicts

        path = os.path.join(tmp, "l.json")
        _write(tmp, {"l.json": data})
        DatasetCatalog.register("my_lvis_train", lambda: load_lvis_json(path, tmp))
        MetadataCatalog.get("my_lvis_train").set(json_file=path, thing_classes=["a"])
        try:
            cfg = _cfg()
            cfg.DATASETS.TRAIN = ("my_lvis_train",)
            return loader_dataset_dicts(cfg)
        finally:
            DatasetCatalog.remove("my_lvis_train")
            MetadataCatalog.remove("my_lvis_train")

    return run


def _lvis_train(images, *annotations) -> dict:
    return {"images": images, "annotations": list(annotations), "categories": LVIS_CATS}


def _lvis_image(image_id, number=None) -> dict:
    url = f"x/train2017/{number or image_id}.jpg"
    return {"id": image_id, "width": 20, "height": 20, "coco_url": url}


def _lvis_ann(ann_id, segmentation=((1, 1, 9, 1, 9, 9, 1, 9),)) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8], "area": 64,
            "segmentation": [list(p) for p in segmentation]}  # fmt: skip


def second_writer(tmp):
    from iif_d2.engine.run_lock import OutputDirLock

    with OutputDirLock(tmp):
        return OutputDirLock(tmp).acquire()


def bad_collective_timeout(tmp):
    from iif_d2.engine.launch import TIMEOUT_ENV, collective_timeout

    before = os.environ.get(TIMEOUT_ENV)
    os.environ[TIMEOUT_ENV] = "soon"
    try:
        return collective_timeout()
    finally:
        if before is None:
            del os.environ[TIMEOUT_ENV]
        else:
            os.environ[TIMEOUT_ENV] = before


def _det(**kw):
    return [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.9, **kw}]


GT = {
    "images": [{"id": 1, "width": 10, "height": 10}],
    "categories": [{"id": 1, "name": "a"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
}
CSV = "category_id,image_count,instance_count\n"
IIF_JSON = {"image_counts": [1, 2], "instance_counts": [3, 4], "num_images": 5}
LVIS_CATS = [{"id": 1, "name": "a", "image_count": 1, "instance_count": 2}]
FP = "iif_d2.lvis_eval.fp_analysis"
FP_FILES = {"gt.json": GT, "r.json": _det()}
FP_ARGS = ("--gt", "{tmp}/gt.json", "--results", "{tmp}/r.json")
C = "iif_d2.cli"
EV = "iif_d2.lvis_eval.__main__"
EV_ARGS = ("--gt", "{tmp}/gt.json", "--results", "{tmp}/r.json", "--iou-type", "bbox")
LVIS_GT = dict(
    GT,
    images=[dict(GT["images"][0], neg_category_ids=[], not_exhaustive_category_ids=[])],
    categories=[dict(LVIS_CATS[0], frequency="r")],
    annotations=[dict(GT["annotations"][0], area=25)],
)
EV_FILES = {"gt.json": LVIS_GT, "r.json": _det()}
RUN = {  # a run folder as far as visualize.py reads it before building the model
    "run/config.yaml": f"_BASE_: {CONFIG}\n",
    "run/model_final.pth": b"weights are read after the images",
}
VIS = ("--weights", "{tmp}/run/model_final.pth", "--device", "cpu")
# half a JPEG: PIL reads its header, then fails on the data
CUT_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c0b"
    "0b0c1912130f141d1a1f1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e3334"
    "32ffc0000b080008000801011100ffc4001f0000010501010101010100000000000000000102030405060708"
    "090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114"
)
LVIS_CSV = "iif_d2://lvis_v1_train.csv"
CSV10 = "# num_images: 10\n" + CSV + "1,1,2\n2,3,4\n"
DEEP = "[" * 100000 + "]" * 100000  # json (and YAML) nested 100,000 levels deep
LVIS_IMAGE, LVIS_ANN = LVIS_GT["images"][0], LVIS_GT["annotations"][0]
# config files each naming the next one twice as _BASE_: 2**30 reads, no cycle
DIAMOND = {f"d{i}.yaml": f"_BASE_: [d{i + 1}.yaml, d{i + 1}.yaml]\n" for i in range(30)}
DIAMOND["d30.yaml"] = "MODEL:\n  DEVICE: cpu\n"


# nested YAML aliases: 10**9 values from 9 lines
ALIAS_BOMB = "MODEL:\n  PIXEL_MEAN:\n    - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
)


def int_state():
    """A checkpoint's content whose parameters are integers (a wrongly converted file)."""
    import torch

    return {"model": {"weight": torch.ones((2, 2), dtype=torch.int32), "bias": torch.zeros(2)}}


def reordered_counts(tmp):
    """Class counts of the tiny training set with its class names reversed, as
    MODEL.CLASS_COUNTS.FILE."""
    from detectron2.data import MetadataCatalog

    from iif_d2 import resolve_training_set

    names = list(MetadataCatalog.get(SYNTH).thing_classes)
    counts = {"image_counts": [1] * len(names), "instance_counts": [1] * len(names)}
    _write(tmp, {"c.json": dict(counts, num_images=5, class_names=names[::-1])})
    cfg = _cfg(SOURCE="file", FILE=os.path.join(tmp, "c.json"))
    cfg.OUTPUT_DIR = tmp
    return resolve_training_set(cfg)


def png_header(width: int, height: int) -> bytes:
    """A 1-bit PNG of ``width`` x ``height`` with no pixel data: PIL reads its size (and
    refuses a decompression bomb) when it opens it."""
    import struct
    import zlib

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


ROWS = [
    # counts files (MODEL.CLASS_COUNTS.FILE, python -m iif_d2.cli --counts-file)
    Row("CSV count `x`", counts("c.csv", CSV + "1,1,x\n"), ValueError, "line 2: 'x' is not a count"),  # noqa: E501
    Row("CSV count `-1`", counts("c.csv", CSV + "1,-1,2\n"), ValueError, "line 2: '-1' is not a count"),  # noqa: E501
    Row("CSV count 10**13", counts("c.csv", CSV + "1,1,10000000000000\n"), ValueError, "<= 10**12"),
    Row("CSV image_count > instance_count", counts("c.csv", CSV + "1,5,2\n"), ValueError, "in 5 images but has only 2 instances"),  # noqa: E501
    Row("CSV image_count > `# num_images`", counts("c.csv", "# num_images: 3\n" + CSV + "1,4,9\n"), ValueError, "more than the 3 training images"),  # noqa: E501
    Row("CSV `# num_images: many`", counts("c.csv", "# num_images: many\n" + CSV + "1,1,1\n"), ValueError, "line 1: num_images"),  # noqa: E501
    Row("CSV category_id twice", counts("c.csv", CSV + "7,1,1\n7,1,1\n"), ValueError, "category_id 7 on lines 2 and 3"),  # noqa: E501
    Row("CSV category_id `a`", counts("c.csv", CSV + "a,1,1\n"), ValueError, "category_id 'a' is not an integer"),  # noqa: E501
    Row("CSV contiguous_id 0, 2", counts("c.csv", "contiguous_id,image_count,instance_count\n0,1,1\n2,1,1\n"), ValueError, "contiguous_id must be 0..1"),  # noqa: E501
    Row("CSV row with an extra field", counts("c.csv", CSV + "1,1,1,1\n"), ValueError, "line 2 has more fields"),  # noqa: E501
    Row("CSV without instance_count", counts("c.csv", "image_count\n1\n"), ValueError, "missing: instance_count"),  # noqa: E501
    Row("CSV header only", counts("c.csv", CSV), ValueError, "no class rows"),
    Row("JSON count `true`", counts("s.json", dict(IIF_JSON, image_counts=[True, 1])), ValueError, "image_counts[0]: True is not a count"),  # noqa: E501
    Row("JSON count 1.5", counts("s.json", dict(IIF_JSON, image_counts=[1.5, 1])), ValueError, "1.5 is not a count"),  # noqa: E501
    Row("JSON count NaN", counts("s.json", '{"image_counts": [NaN], "instance_counts": [1]}'), ValueError, "nan is not a count"),  # noqa: E501
    Row("JSON count null", counts("s.json", dict(IIF_JSON, instance_counts=[None, 4])), ValueError, "instance_counts[0]: None is not a count"),  # noqa: E501
    Row('JSON count `"3"`', counts("s.json", dict(IIF_JSON, instance_counts=["3", 4])), ValueError, "'3' is not a count"),  # noqa: E501
    Row("JSON count `[1]` (nested)", counts("s.json", dict(IIF_JSON, image_counts=[[1], 2])), ValueError, "[1] is not a count"),  # noqa: E501
    Row("JSON 2 image / 1 instance counts", counts("s.json", dict(IIF_JSON, instance_counts=[3])), ValueError, "2 image counts but 1 instance counts"),  # noqa: E501
    Row("JSON unknown key", counts("s.json", dict(IIF_JSON, image_count=[1])), ValueError, "unknown keys ['image_count']"),  # noqa: E501
    Row("JSON num_images -5", counts("s.json", dict(IIF_JSON, num_images=-5)), ValueError, "num_images: -5 is not a count"),  # noqa: E501
    Row("`cli --save` JSON, count -1", counts("w.json", {"stats": dict(IIF_JSON, image_counts=[-1, 1]), "weights": {}}), ValueError, "w.json: image_counts[0]: -1"),  # noqa: E501
    Row("JSON list", counts("s.json", [1, 2]), ValueError, "is an object, not a list"),
    Row("JSON syntax error", counts("s.json", "{"), ValueError, "not valid JSON"),
    Row("counts json nested 100,000 levels deep", counts("c.json", DEEP), ValueError, "nests too deeply"),  # noqa: E501
    Row("LVIS json, category id twice", counts("l.json", {"categories": LVIS_CATS * 2}), ValueError, "category id 1 appears twice"),  # noqa: E501
    Row('LVIS json, image_count `"1"`', counts("l.json", {"categories": [dict(LVIS_CATS[0], image_count="1")]}), ValueError, "category id 1: image_count: '1'"),  # noqa: E501
    Row("COCO json, unknown category_id", counts("c.json", dict(GT, annotations=[dict(GT["annotations"][0], category_id=9)])), ValueError, "annotations[0] (id 1) has category_id 9"),  # noqa: E501
    Row("COCO json, annotation without image_id", counts("c.json", dict(GT, annotations=[{"category_id": 1}])), ValueError, "annotations[0] lacks image_id"),  # noqa: E501
    Row("a folder as counts file", counts_file("{tmp}"), FileNotFoundError, "is a directory"),
    Row("a missing counts file", counts_file("{tmp}/no.csv"), FileNotFoundError, "does not exist"),  # noqa: E501
    Row('dataset dicts with category_id `"1"`', dataset_dict_with_string_id, ValueError, "dataset 'my_train': category_id '1' (str) is not an integer"),  # noqa: E501
    # python -m iif_d2.cli
    Row("cli `--save` a folder", cli(C, "--counts-file", LVIS_CSV, "--save", "{tmp}"), CLIFailed, "is a directory"),  # noqa: E501
    Row("cli `--save` in a missing folder", cli(C, "--counts-file", LVIS_CSV, "--save", "{tmp}/no/w.json"), CLIFailed, "does not exist; create it"),  # noqa: E501
    Row("cli `--save` unwritable (/proc)", cli(C, "--counts-file", LVIS_CSV, "--save", "/proc/w.json"), CLIFailed, "cannot write"),  # noqa: E501
    Row("cli `--dataset` unknown", cli(C, "--dataset", "iif_synthetic_tiny_trian"), CLIFailed, "Did you mean iif_synthetic_tiny_train"),  # noqa: E501
    Row("cli `--config-file` missing", cli(C, "--config-file", "{tmp}/no.yaml"), CLIFailed, "no.yaml does not exist"),  # noqa: E501
    Row("cli `--config-file` a folder", cli(C, "--config-file", "{tmp}"), CLIFailed, "is a directory"),  # noqa: E501
    Row("cli config with a `!!python` tag", cli(C, "--config-file", "{tmp}/evil.yaml", files={"evil.yaml": "MODEL: !!python/object/apply:os.system ['true']\n"}), CLIFailed, "python/object/apply:os.system"),  # noqa: E501
    Row("cli config with an unknown key", cli(C, "--config-file", "{tmp}/u.yaml", files={"u.yaml": "MODEL:\n  FOO: 1\n"}), CLIFailed, "Non-existent config key: MODEL.FOO"),  # noqa: E501
    Row("cli opts without a value", cli(C, "--config-file", CONFIG, "MODEL.ROI_HEADS.NUM_CLASSES"), CLIFailed, "KEY VALUE pairs"),  # noqa: E501
    Row("cli opts, unknown key", cli(C, "--config-file", CONFIG, "MODEL.FOO", "1"), CLIFailed, "Non-existent key: MODEL.FOO"),  # noqa: E501
    Row("cli opts, wrong type", cli(C, "--config-file", CONFIG, "MODEL.ROI_HEADS.NUM_CLASSES", "many"), CLIFailed, "MODEL.ROI_HEADS.NUM_CLASSES takes a value of type int"),  # noqa: E501
    Row("cli opts, a whole section as one value", cli(C, "--config-file", CONFIG, "SOLVER.EPOCH_SCHEDULE", "()"), CLIFailed, "is a section, not a value"),  # noqa: E501
    Row("cli opts without `--config-file`", cli(C, "--counts-file", LVIS_CSV, "MODEL.FOO", "1"), CLIFailed, "need --config-file"),  # noqa: E501
    Row("cli `--variant` with `--config-file`", cli(C, "--config-file", CONFIG, "--variant", "base10"), CLIFailed, "--variant would be ignored"),  # noqa: E501
    Row("cli `--frequency pixel`", cli(C, "--counts-file", LVIS_CSV, "--frequency", "pixel"), CLIFailed, "invalid choice: 'pixel'"),  # noqa: E501
    # python -m iif_d2.lvis_eval.fp_analysis
    Row("fp_analysis `--gt` missing", cli(FP, "--gt", "{tmp}/no.json", "--results", "{tmp}/r.json"), CLIFailed, "ground-truth file not found"),  # noqa: E501
    Row("fp_analysis `--results` a folder", cli(FP, "--gt", "{tmp}/gt.json", "--results", "{tmp}", files=FP_FILES), CLIFailed, "is a directory"),  # noqa: E501
    Row("fp_analysis results not json", cli(FP, *FP_ARGS, files={**FP_FILES, "r.json": "[{"}), CLIFailed, "not valid json"),  # noqa: E501
    Row("fp_analysis score 1.5", cli(FP, *FP_ARGS, files={**FP_FILES, "r.json": _det(score=1.5)}), CLIFailed, "results[0]: score 1.5 must be a finite number in [0, 1]"),  # noqa: E501
    Row("fp_analysis score NaN", cli(FP, *FP_ARGS, files={**FP_FILES, "r.json": '[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]'}), CLIFailed, "score nan"),  # noqa: E501
    Row("fp_analysis bbox with NaN", cli(FP, *FP_ARGS, files={**FP_FILES, "r.json": '[{"image_id": 1, "category_id": 1, "bbox": [0, NaN, 1, 1], "score": 0.5}]'}), CLIFailed, "4 finite numbers"),  # noqa: E501
    Row("fp_analysis bbox width -3", cli(FP, *FP_ARGS, files={**FP_FILES, "r.json": _det(bbox=[9, 0, -3, 5])}), CLIFailed, "negative width or height"),  # noqa: E501
    Row("fp_analysis `--json-out` a folder", cli(FP, *FP_ARGS, "--json-out", "{tmp}", files=FP_FILES), CLIFailed, "is a directory"),  # noqa: E501
    Row("fp_analysis `--json-out` in a missing folder", cli(FP, *FP_ARGS, "--json-out", "{tmp}/no/o.json", files=FP_FILES), CLIFailed, "does not exist; create it"),  # noqa: E501
    Row("fp_analysis `--json-out` = `--results`", cli(FP, *FP_ARGS, "--json-out", "{tmp}/r.json", files=FP_FILES), CLIFailed, "it would be overwritten"),  # noqa: E501
    # python -m iif_d2.cli: paths that are not files, outputs that are devices
    Row("cli `--counts-file` a folder", cli(C, "--counts-file", "{tmp}"), CLIFailed, "is a directory; give a counts CSV/JSON"),  # noqa: E501
    Row("cli `--counts-file` a named pipe", fifo("p", cli(C, "--counts-file", "{tmp}/p")), CLIFailed, "is not a regular file (a pipe or device?)"),  # noqa: E501
    Row("cli `--save /dev/null` (a device)", cli(C, "--counts-file", LVIS_CSV, "--save", "/dev/null"), CLIFailed, "--save /dev/null is not a regular file"),  # noqa: E501
    Row("cli `--save ''`", cli(C, "--counts-file", LVIS_CSV, "--save", ""), CLIFailed, "--save is empty"),  # noqa: E501
    Row("cli `--save` = a `_BASE_` of `--config-file`", cli(C, "--config-file", "{tmp}/c.yaml", "--save", "{tmp}/b.yaml", files={"b.yaml": f"_BASE_: {QUICK_CONFIG}\n", "c.yaml": "_BASE_: b.yaml\n"}), CLIFailed, "is the input file"),  # noqa: E501
    Row("cli `--save` a read-only file", then(read_only("ro.json", "{}"), cli(C, "--counts-file", "{tmp}/c.csv", "--save", "{tmp}/ro.json", files={"c.csv": CSV10})), CLIFailed, "is a read-only file; it is not replaced"),  # noqa: E501
    Row("cli `--all-variants --variant base10`", cli(C, "--counts-file", LVIS_CSV, "--all-variants", "--variant", "base10"), CLIFailed, "--variant base10 and --all-variants exclude each other"),  # noqa: E501
    Row("cli `--counts-file` an empty file", cli(C, "--counts-file", "{tmp}/c.csv", files={"c.csv": ""}), CLIFailed, "is empty"),  # noqa: E501
    Row("cli `--counts-file`, a bbox of 3 numbers", cli(C, "--counts-file", "{tmp}/c.json", files={"c.json": dict(GT, annotations=[dict(GT["annotations"][0], bbox=[0, 0, 1])])}), CLIFailed, "bbox"),  # noqa: E501
    Row("cli `--counts-file http://...`", cli(C, "--counts-file", "http://127.0.0.1:9/c.csv"), CLIFailed, "never fetched from the web"),  # noqa: E501
    # python -m iif_d2.lvis_eval and its fp_analysis
    Row("lvis_eval `--results` a named pipe", fifo("r.json", cli(EV, *EV_ARGS, files={"gt.json": LVIS_GT})), CLIFailed, "is not a regular file (a pipe or device?)"),  # noqa: E501
    Row("lvis_eval `--json-out /dev/null` (a device)", cli(EV, *EV_ARGS, "--json-out", "/dev/null", files=EV_FILES), CLIFailed, "--json-out /dev/null is not a regular file"),  # noqa: E501
    Row("lvis_eval `--json-out` unwritable (/proc)", cli(EV, *EV_ARGS, "--json-out", "/proc/m.json", files=EV_FILES), CLIFailed, "cannot write"),  # noqa: E501
    Row("lvis_eval `--max-dets 0`", cli(EV, *EV_ARGS, "--max-dets", "0", files=EV_FILES), CLIFailed, "argument --max-dets: 0 must be >= 1"),  # noqa: E501
    Row("fp_analysis `--iou-thresh 0`", cli(FP, *FP_ARGS, "--iou-thresh", "0", files=FP_FILES), CLIFailed, "--iou-thresh 0.0 must lie in (0, 1]"),  # noqa: E501
    Row("fp_analysis `--score-thresh nan`", cli(FP, *FP_ARGS, "--score-thresh", "nan", files=FP_FILES), CLIFailed, "'nan' is not a finite number"),  # noqa: E501
    Row("lvis_eval results nested 100,000 levels deep", cli(EV, *EV_ARGS, files={**EV_FILES, "r.json": DEEP}), CLIFailed, "nests json arrays and objects more than 32 levels deep"),  # noqa: E501
    Row("lvis_eval ground truth, one image id twice", cli(EV, *EV_ARGS, files={**EV_FILES, "gt.json": dict(LVIS_GT, images=[LVIS_IMAGE] * 2)}), CLIFailed, "'images': id 1 appears twice"),  # noqa: E501
    Row("lvis_eval ground truth, a NaN box", cli(EV, *EV_ARGS, files={**EV_FILES, "gt.json": json.dumps(dict(LVIS_GT, annotations=[dict(LVIS_ANN, bbox=[0, 0, float("nan"), 5])]))}), CLIFailed, "bbox [0, 0, nan, 5] is not 4 finite numbers"),  # noqa: E501
    Row("lvis_eval ground truth, unknown neg_category_ids", cli(EV, *EV_ARGS, files={**EV_FILES, "gt.json": dict(LVIS_GT, images=[dict(LVIS_IMAGE, neg_category_ids=[42])])}), CLIFailed, "neg_category_ids lists 42"),  # noqa: E501
    Row("lvis_eval `--iou-type segm`, ground truth without masks", cli(EV, *EV_ARGS[:-1], "segm", files=EV_FILES), CLIFailed, "lacks field 'segmentation', needed to evaluate masks"),  # noqa: E501
    Row("lvis_eval `--json-out` a read-only file", then(read_only("ro.json", "{}"), cli(EV, *EV_ARGS, "--json-out", "{tmp}/ro.json", files=EV_FILES)), CLIFailed, "is a read-only file"),  # noqa: E501
    Row("lvis_eval ground truth, a polygon of 5 numbers", cli(EV, *EV_ARGS[:-1], "segm", files={"gt.json": dict(LVIS_GT, annotations=[dict(LVIS_ANN, segmentation=[[1, 1, 9, 1, 9]])]), "r.json": _det(segmentation={"size": [10, 10], "counts": "0Z2"})}), CLIFailed, "segmentation[0] (5 numbers) is not a polygon"),  # noqa: E501
    Row("lvis_eval ground truth, an annotation of an unknown image", cli(EV, *EV_ARGS, files={**EV_FILES, "gt.json": dict(LVIS_GT, annotations=[dict(LVIS_ANN, image_id=424242)])}), CLIFailed, "refers to image_id 424242, which is not among the json's images"),  # noqa: E501
    Row("lvis_eval results, `image_id: true`", cli(EV, *EV_ARGS, files={**EV_FILES, "r.json": _det(image_id=True)}), CLIFailed, "image_id True is not an integer"),  # noqa: E501
    Row("lvis_eval `--dets-per-cat 5` with the standard metric", cli(EV, *EV_ARGS, "--dets-per-cat", "5", files=EV_FILES), CLIFailed, "--dets-per-cat applies only with --metric fixed or pooled"),  # noqa: E501
    Row("fp_analysis ground-truth category id `\"1\"`", cli(FP, *FP_ARGS, files={**FP_FILES, "gt.json": dict(GT, categories=[{"id": "1", "name": "a"}])}), CLIFailed, "categories[0]: id '1' is not an integer"),  # noqa: E501
    # tools/visualize.py, tools/convert_mmdet_checkpoint.py, tools/demo.py
    Row("visualize `--weights` a folder", script("visualize", "--weights", "{tmp}", "--input", "{tmp}", "--output", "{tmp}/o"), CLIFailed, "is a directory; give a checkpoint"),  # noqa: E501
    Row("visualize, a truncated image in `--input`", script("visualize", *VIS, "--input", "{tmp}/images", "--output", "{tmp}/o", files=dict(RUN, **{"images/cut.jpg": CUT_JPEG})), CLIFailed, "cut.jpg cannot be read as an image"),  # noqa: E501
    Row("visualize, a 16-bit PNG in `--input`", lambda tmp: (os.makedirs(f"{tmp}/images"), png16(f"{tmp}/images"), script("visualize", *VIS, "--input", "{tmp}/images", "--output", "{tmp}/o", files=RUN)(tmp)), CLIFailed, "depth.png is a 16-bit grayscale PNG"),  # noqa: E501
    Row("visualize `--output` inside a file", script("visualize", *VIS, "--input", "{tmp}", "--output", "{tmp}/run/config.yaml/o", files=RUN), CLIFailed, "config.yaml is a file, not a folder"),  # noqa: E501
    Row("visualize `--device tpu`", script("visualize", *VIS[:2], "--input", "{tmp}", "--output", "{tmp}/o", "--device", "tpu", files=RUN), CLIFailed, "--device 'tpu' is not a device"),  # noqa: E501
    Row("visualize `--num 0`", script("visualize", *VIS, "--input", "{tmp}", "--output", "{tmp}/o", "--num", "0"), CLIFailed, "argument --num: 0 must be >= 1"),  # noqa: E501
    Row("visualize `--score-thresh 5`", script("visualize", *VIS, "--input", "{tmp}", "--output", "{tmp}/o", "--score-thresh", "5"), CLIFailed, "'5' must lie in [0, 1]"),  # noqa: E501
    Row("visualize, a 30000 x 30000 PNG in `--input`", script("visualize", *VIS, "--input", "{tmp}/images", "--output", "{tmp}/o", files=dict(RUN, **{"images/big.png": png_header(30000, 30000)})), CLIFailed, "big.png is too large to decode safely"),  # noqa: E501
    Row("convert IN a named pipe", fifo("in.pth", script("convert_mmdet_checkpoint", "{tmp}/in.pth", "{tmp}/out.pth")), CLIFailed, "IN <tmp>/in.pth is not a regular file".replace("<tmp>", "{tmp}")),  # noqa: E501
    Row("convert OUT `/dev/null` (a device)", script("convert_mmdet_checkpoint", "{tmp}/in.pth", "/dev/null", files={"in.pth": b"x"}), CLIFailed, "OUT /dev/null is not a regular file"),  # noqa: E501
    Row("convert `--num-classes -3`", script("convert_mmdet_checkpoint", "{tmp}/in.pth", "{tmp}/o.pth", "--num-classes", "-3"), CLIFailed, "argument --num-classes: -3 must be >= 1"),  # noqa: E501
    Row("convert, IN a detectron2 checkpoint", then(saved("in.pth", lambda: {"model": {}, "iteration": 3}), script("convert_mmdet_checkpoint", "{tmp}/in.pth", "{tmp}/o.pth")), CLIFailed, "is a detectron2 checkpoint already"),  # noqa: E501
    Row("demo `--output-dir` a file", script("demo", "--output-dir", "{tmp}/f", files={"f": ""}), CLIFailed, "--output-dir <tmp>/f is a file".replace("<tmp>", "{tmp}")),  # noqa: E501
    Row("demo `--num-vis -1`", script("demo", "--num-vis", "-1"), CLIFailed, "argument --num-vis: -1 must be >= 0"),  # noqa: E501
    Row("visualize, OUTPUT_DIR among the overrides", script("visualize", *VIS, "--input", "{tmp}", "--output", "{tmp}/o", "OUTPUT_DIR", "{tmp}/run", files=RUN), CLIFailed, "OUTPUT_DIR is not used"),  # noqa: E501
    Row("demo `--output-dir ''`", script("demo", "--output-dir", ""), CLIFailed, "--output-dir is empty"),  # noqa: E501
    Row("demo, OUTPUT_DIR among the overrides", script("demo", "--output-dir", "{tmp}/o", "OUTPUT_DIR", "{tmp}/p"), CLIFailed, "OUTPUT_DIR is set by --output-dir"),  # noqa: E501
    # training data, checked once where the training dicts are loaded
    Row("training set, a NaN polygon coordinate", training_set(_image(1, _box(segm=[[1, 1, 9, float("nan"), 9, 9]]))), ValueError, "image 1 (images/1.jpg): annotations[0] has a polygon coordinate that is NaN"),  # noqa: E501
    Row("training set, an inf box", training_set(_image(1, _box(bbox=(0, 0, float("inf"), 4)))), ValueError, "has bbox [0, 0, inf, 4]: a box is 4 finite numbers"),  # noqa: E501
    Row("training set, an image of 1 x 20 pixels", training_set(_image(1, _box(), size=(1, 20))), ValueError, "is 1 x 20 pixels (width x height); an image needs at least 2 x 2"),  # noqa: E501
    Row("training set, one image id for two files", training_set(_image(1, _box()), _image(1, _box(), file_name="images/other.jpg")), ValueError, "image id 1 is used by two files"),  # noqa: E501
    Row("training set, a 16-bit grayscale PNG", training_set(png16), ValueError, "depth.png) is a 16-bit grayscale PNG"),  # noqa: E501
    Row("training set, every box of zero size", training_set(_image(1, _box(bbox=(2, 2, 0, 5)))), ValueError, "no training image is left"),  # noqa: E501
    Row("training set, an image file that is not there", training_set(_image(1, _box())), ValueError, "image 1 (images/1.jpg) does not exist"),  # noqa: E501
    Row("training set, a category id beyond the classes", training_set(with_file(_image(1, _box(cat=5)))), ValueError, "has category_id 5 (contiguous), but the dataset has 2 classes"),  # noqa: E501
    Row('LVIS training json, `"segmentation": []`', lvis_training_json(_lvis_train([_lvis_image(1)], _lvis_ann(7, segmentation=()))), ValueError, "annotation id 7 (image 1) has segmentation []; fix or remove that annotation"),  # noqa: E501
    Row("LVIS training json, one image id twice", lvis_training_json(_lvis_train([_lvis_image(1), _lvis_image(1, 2)], _lvis_ann(1), _lvis_ann(2))), ValueError, "image id 1 appears twice in 'images'"),  # noqa: E501
    Row("LVIS json, image_count its annotations contradict", counts("l.json", {"images": GT["images"], "categories": [dict(LVIS_CATS[0], image_count=1, instance_count=3)], "annotations": GT["annotations"]}), ValueError, "has image_count 1 and instance_count 3, but the file's annotations put it in 1 images with 1 instances"),  # noqa: E501
    Row("COCO json, an image id twice", counts("c.json", dict(GT, images=GT["images"] * 2)), ValueError, "image id 1 appears twice in 'images'"),  # noqa: E501
    # train_net.py: configs, settings, launch (checked before a run starts)
    Row("config whose _BASE_ tree reads 2**30 files (no cycle)", train_net("--config-file", "{tmp}/d0.yaml", files=DIAMOND), CLIFailed, "reads more than 64 config files"),  # noqa: E501
    Row("config with a key given twice", train_net("--config-file", "{tmp}/c.yaml", files={"c.yaml": f"_BASE_: {QUICK_CONFIG}\nSOLVER:\n  MAX_ITER: 5\nSOLVER:\n  BASE_LR: 0.1\n"}), CLIFailed, "key 'SOLVER' appears twice in one mapping (lines 2 and 4)"),  # noqa: E501
    Row("config nested 100,000 levels deep", train_net("--config-file", "{tmp}/c.yaml", files={"c.yaml": "a: " + DEEP + "\n"}), CLIFailed, "nests its values too deeply"),  # noqa: E501
    Row("config of nested YAML aliases (10**9 values)", train_net("--config-file", "{tmp}/c.yaml", files={"c.yaml": ALIAS_BOMB}), CLIFailed, "expands to more than 100000 values"),  # noqa: E501
    Row("config, a section given as a list (`SOLVER: [1, 2]`)", train_net("--config-file", "{tmp}/c.yaml", files={"c.yaml": "SOLVER: [1, 2]\n"}), CLIFailed, "SOLVER is a YAML list; it is a section of keys"),  # noqa: E501
    Row("config, `SOLVER.WARMUP_FACTOR: .nan`", train_net("--config-file", "{tmp}/c.yaml", "OUTPUT_DIR", "{tmp}/o", files={"c.yaml": f"_BASE_: {QUICK_CONFIG}\nSOLVER:\n  WARMUP_FACTOR: .nan\n"}), CLIFailed, "SOLVER.WARMUP_FACTOR nan must be finite"),  # noqa: E501
    Row("`--config-file` that is OUTPUT_DIR's config.yaml", train_net("--config-file", "{tmp}/run/config.yaml", "OUTPUT_DIR", "{tmp}/run", files={"run/config.yaml": f"_BASE_: {QUICK_CONFIG}\n"}), CLIFailed, "is OUTPUT_DIR's config.yaml, which the run replaces"),  # noqa: E501
    Row("SOLVER.GAMMA `-1.0`", quick("SOLVER.GAMMA", "-1.0"), CLIFailed, "SOLVER.GAMMA -1.0 must be > 0"),  # noqa: E501
    Row("SOLVER.MOMENTUM `1.5`", quick("SOLVER.MOMENTUM", "1.5"), CLIFailed, "SOLVER.MOMENTUM 1.5 must be in [0, 1)"),  # noqa: E501
    Row("MODEL.RPN.NMS_THRESH `-0.5`", quick("MODEL.RPN.NMS_THRESH", "-0.5"), CLIFailed, "must be between 0 and 1"),  # noqa: E501
    Row("SOLVER.MAX_ITER `10**30`", quick("SOLVER.MAX_ITER", str(10**30)), CLIFailed, "must be between 0 and 2147483647"),  # noqa: E501
    Row("SEED `2**64`", quick("SEED", str(2**64)), CLIFailed, "must be -1 (a random seed) or 0 to 2**32 - 1"),  # noqa: E501
    Row("DATASETS.TRAIN naming one dataset twice", quick("DATASETS.TRAIN", f"('{SYNTH}', '{SYNTH}')"), CLIFailed, f"DATASETS.TRAIN names {SYNTH} twice"),  # noqa: E501
    Row("`--eval-only` with DATASETS.TEST `()`", train_net("--eval-only", "--config-file", QUICK_CONFIG, "OUTPUT_DIR", "{tmp}/o", "DATASETS.TEST", "()"), CLIFailed, "--eval-only has nothing to evaluate"),  # noqa: E501
    Row("`--dist-url tcp://127.0.0.1:99999`", train_net("--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:99999", "--config-file", QUICK_CONFIG), CLIFailed, "the port must be 1 to 65535"),  # noqa: E501
    Row("`--dist-url` a file in a folder that does not exist", train_net("--num-gpus", "2", "--dist-url", "file:///no/such/folder/f", "--config-file", QUICK_CONFIG), CLIFailed, "the folder /no/such/folder does not exist"),  # noqa: E501
    Row("SOLVER.STEPS `(5, 2)`", quick("SOLVER.STEPS", "(5, 2)"), CLIFailed, "SOLVER.STEPS (5, 2) must be increasing"),  # noqa: E501
    Row("DATALOADER.NUM_WORKERS `-1`", quick("DATALOADER.NUM_WORKERS", "-1"), CLIFailed, "DATALOADER.NUM_WORKERS -1 must be >= 0"),  # noqa: E501
    Row("SOLVER.MAX_ITER `0` (training)", quick("SOLVER.MAX_ITER", "0"), CLIFailed, "training needs at least 1 iteration"),  # noqa: E501
    Row("MODEL.PIXEL_MEAN of one value", quick("MODEL.PIXEL_MEAN", "[1.0]"), CLIFailed, "need one value per channel of INPUT.FORMAT 'BGR' (3)"),  # noqa: E501
    Row("MODEL.DEVICE `tpu`", quick("MODEL.DEVICE", "tpu"), CLIFailed, "MODEL.DEVICE 'tpu' is not a device"),  # noqa: E501
    Row("OUTPUT_DIR `/proc/x` (cannot be made)", quick("OUTPUT_DIR", "/proc/x"), CLIFailed, "OUTPUT_DIR /proc/x cannot be made"),  # noqa: E501
    Row("`--num-gpus 1000` on CPU", train_net("--num-gpus", "1000", "--config-file", QUICK_CONFIG, "OUTPUT_DIR", "{tmp}/o"), CLIFailed, "give --num-gpus"),  # noqa: E501
    Row("`--dist-url garbage`", train_net("--num-gpus", "2", "--dist-url", "garbage", "--config-file", QUICK_CONFIG), CLIFailed, "--dist-url 'garbage' is not tcp://HOST:PORT"),  # noqa: E501
    # configs, checkpoints, runs
    Row("MODEL.CLASS_COUNTS.SOURCE `somewhere`", unknown_counts_source, ValueError, "'somewhere' is not one of 'dataset', 'json', 'file'"),  # noqa: E501
    Row("deprecated ROI_BOX_HEAD.IIF.COUNTS_SOURCE vs CLASS_COUNTS.SOURCE", deprecated_key_conflict, ValueError, "set only MODEL.CLASS_COUNTS.SOURCE"),  # noqa: E501
    Row("IIF.ENABLED with upstream StandardROIHeads", iif_on_upstream_roi_heads, ValueError, "MODEL.ROI_BOX_HEAD.IIF.ENABLED needs ROI_HEADS.NAME IIFStandardROIHeads"),  # noqa: E501
    Row("NorCal with upstream StandardROIHeads", partial(iif_on_upstream_roi_heads, **{"MODEL.ROI_BOX_HEAD.IIF.ENABLED": False, "MODEL.ROI_BOX_HEAD.CALIBRATION.MODE": "norcal"}), ValueError, "MODEL.ROI_BOX_HEAD.CALIBRATION.MODE needs ROI_HEADS.NAME IIFStandardROIHeads"),  # noqa: E501
    Row("HEAD_INIT 'authors' with upstream StandardROIHeads", partial(iif_on_upstream_roi_heads, **{"MODEL.ROI_BOX_HEAD.IIF.ENABLED": False, "MODEL.HEAD_INIT.SCHEME": "authors"}), ValueError, "MODEL.HEAD_INIT.SCHEME needs ROI_HEADS.NAME IIFStandardROIHeads"),  # noqa: E501
    Row("KERNELS.ROI_ALIGN 'matmul' with upstream StandardROIHeads", partial(iif_on_upstream_roi_heads, **{"MODEL.ROI_BOX_HEAD.IIF.ENABLED": False, "MODEL.KERNELS.ROI_ALIGN": "matmul"}), ValueError, "MODEL.KERNELS.ROI_ALIGN needs ROI_HEADS.NAME IIFStandardROIHeads"),  # noqa: E501
    Row("NUM_CLASSES 8, COCO's 80-class counts", num_classes_mismatch, ValueError, "cover 80 classes, but the model has NUM_CLASSES = 8"),  # noqa: E501
    Row("NUM_CLASSES 80 and COCO's counts, 8-class training set", coco_counts_and_classes_on_synthlt, ValueError, "NUM_CLASSES is 80, but the training set 'iif_synthetic_tiny_train' has 8 classes"),  # noqa: E501
    Row("MODEL.WEIGHTS a pickle calling os.system", pickle_payload_as_weights, __import__("pickle").UnpicklingError, "references the Python global 'os.system'"),  # noqa: E501
    Row("MODEL.WEIGHTS a named pipe", fifo("w.pth", checkpoint("w.pth")), ValueError, "is not a regular file (a pipe or device?)"),  # noqa: E501
    Row("checkpoint with NaN weights", then(saved("w.pth", nan_state), checkpoint("w.pth")), ValueError, "holds NaN or inf in 1 weight tensor(s) (e.g. weight)"),  # noqa: E501
    Row("MODEL.WEIGHTS a text file", then(lambda tmp: _write(tmp, {"w.pth": "not a checkpoint\n"}), checkpoint("w.pth")), ValueError, "it is a text file (it starts with 'not a checkpoint"),  # noqa: E501
    Row("MODEL.WEIGHTS an empty file", then(lambda tmp: _write(tmp, {"w.pth": b""}), checkpoint("w.pth")), ValueError, "the file is empty (0 bytes)"),  # noqa: E501
    Row("checkpoint with integer weights", then(saved("w.pth", int_state), checkpoint("w.pth")), ValueError, "the parameter 'weight' holds integers (torch.int32)"),  # noqa: E501
    Row("MODEL.CLASS_COUNTS.FILE of the classes in another order", reordered_counts, ValueError, "counts classes in another order than the training set"),  # noqa: E501
    Row("checkpoint whose model is a list", then(saved("w.pth", lambda: {"model": [1, 2]}), checkpoint("w.pth")), ValueError, "holds a list as its model, not a state dict"),  # noqa: E501
    Row("a second writer of one OUTPUT_DIR", second_writer, RuntimeError, f"is in use by pid {os.getpid()}"),  # noqa: E501
    Row("IIF_D2_DIST_TIMEOUT `soon`", bad_collective_timeout, ValueError, "IIF_D2_DIST_TIMEOUT = 'soon'"),  # noqa: E501
]  # fmt: skip


def run_row(row: Row, tmp: str) -> BaseException:
    """Run ``row`` in the (empty) folder ``tmp``.

    Returns:
        The exception it raised.

    Raises:
        AssertionError: it raised nothing, another type, or a message without the fragment.
    """
    try:
        row.run(tmp)
    except Exception as e:  # noqa: BLE001 (the table checks the type)
        error = e
    else:
        raise AssertionError(f"{row.what}: no error")
    if not isinstance(error, row.error):
        raise AssertionError(f"{row.what}: {type(error).__name__} ({error}), not {row.error}")
    fragment = row.fragment.format(tmp=tmp)
    if fragment not in str(error):
        raise AssertionError(f"{row.what}: {fragment!r} not in {str(error)!r}")
    return error


def first_line(error: BaseException, tmp: str) -> str:
    """The message's first line (joined with the next while it ends with ":"), without the
    temporary folder, the repository's path, this process's pid and host, times, and this
    machine's core or GPU count."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    for line in lines[1:]:
        if not text.endswith(":"):
            break
        text += " " + line
    text = text.replace(tmp, "<tmp>").replace(ROOT + os.sep, "")
    text = re.sub(r"\(started [^)]*\)", "(started <time>)", text)
    # --num-gpus beyond this machine's cores (or GPUs)
    text = re.sub(
        r"has \d+ (CPU core|GPU)\(s\); give --num-gpus \d+",
        r"has <n> \1(s); give --num-gpus <n>",
        text,
    )
    return text.replace(f"pid {os.getpid()}", "pid <pid>").replace(socket.gethostname(), "<host>")


COMMAND = "python dev/bad_input_table.py --write docs/bad_inputs.md"

HEADER = f"""# Bad inputs and their errors

Generated by `{COMMAND}` from the rows of `dev/bad_input_table.py`, which
`tests/test_bad_inputs.py` asserts one by one; the test also fails when this page differs from
what the rows generate. Do not edit it by hand.

Every bad input ends in an error that names the problem and the fix; the command lines
(`train_net.py`, `python -m iif_d2.cli`, `python -m iif_d2.lvis_eval`,
`python -m iif_d2.lvis_eval.fp_analysis`, `tools/visualize.py`,
`tools/convert_mmdet_checkpoint.py`, `tools/demo.py`) exit 2 with one line and no traceback.
Broken training data is refused where the training dicts are loaded, once per run; what
detectron2 drops in training is dropped there, counted and logged instead (see
[datasets.md](datasets.md)). Loading never runs code: `.pkl`/`.pth` weights are read safely (see
[checkpoints.md](checkpoints.md)) and YAML configs without `!!python` tags. A second run writing
the same `OUTPUT_DIR` is refused (`OUTPUT_DIR/.iif_d2.lock` names the holder's pid and host).
CPU worker processes exit when their launcher dies, and a stalled collective ends with a
message naming the rank after `IIF_D2_DIST_TIMEOUT` seconds (default 1800).

In the messages below `<tmp>` is the folder the row ran in; pids, hosts, times and this
machine's core count (`<n>`) are masked.
"""


def table_line(row: Row, tmp: str, error: Optional[BaseException] = None) -> str:
    """The row's line of the table: run ``row`` in the empty folder ``tmp`` (or take the
    ``error`` it already raised there).

    Raises:
        AssertionError: the row did not fail as it says (see :func:`run_row`).
    """
    if error is None:
        error = run_row(row, tmp)
    name = "exit 2" if isinstance(error, CLIFailed) else type(error).__name__
    line = first_line(error, tmp).replace("|", "\\|")
    return f"| {row.what} | {name}: `{line}` |"


def render(lines) -> str:
    """The page: :data:`HEADER`, then the table of ``lines`` (one per row, in row order)."""
    return HEADER + "\n| bad input | error (first line) |\n|---|---|\n" + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--write", metavar="PATH", help="write the page to PATH (docs/bad_inputs.md)"
    )
    args = parser.parse_args(argv)
    if args.write and os.path.isdir(args.write):
        parser.error(
            f"--write {args.write} is a directory; give a file name, e.g. docs/bad_inputs.md"
        )
    if args.write and not os.path.isdir(os.path.dirname(os.path.abspath(args.write))):
        parser.error(f"--write {args.write}: its folder does not exist; create it")
    from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

    hide_upstream_deprecations()
    import logging

    logging.disable(logging.WARNING)  # the table shows the errors, not the logs
    lines, failed = [], []
    try:
        for row in ROWS:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    lines.append(table_line(row, tmp))
                except AssertionError as e:
                    failed.append(str(e))
    finally:  # the caller's logging as it was (a test process goes on)
        logging.disable(logging.NOTSET)
    if failed:
        for message in failed:
            print(f"NOT AS EXPECTED: {message}", file=sys.stderr)
        return 1
    page = render(lines)
    if args.write:
        from iif_d2.utils.io import atomic_write

        atomic_write(args.write, lambda f: f.write(page.encode("utf-8")))
        print(f"wrote {args.write} ({len(lines)} bad inputs)")
    else:
        print(page, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
