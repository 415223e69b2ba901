#!/usr/bin/env python
"""Run every bad input of iif-d2's table and write what each one is told.

Each row is a bad input (a counts file, a command line of ``python -m iif_d2.cli`` or
``python -m iif_d2.lvis_eval.fp_analysis``, a config, a checkpoint, a second writer of an
OUTPUT_DIR), the error type it must raise and a fragment its message must hold.
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


def cli(module: str, *args: str, files=None) -> Callable[[str], object]:
    """Run ``module``'s ``main`` on ``args`` ("{tmp}" replaced), after writing ``files``."""

    def run(tmp):
        _write(tmp, files)
        main = importlib.import_module(module).main
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main([a.format(tmp=tmp) for a in args])
            except SystemExit as e:  # argparse's own errors
                code = e.code
        if code != 0:
            raise CLIFailed(code, err.getvalue())
        return code

    return run


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


def dataset_dict_with_string_id(tmp):
    from iif_d2.data.class_stats import count_dataset_dicts

    return count_dataset_dicts([{"annotations": [{"category_id": "1"}]}], 2, source="my_train")


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
LVIS_CSV = "iif_d2://lvis_v1_train.csv"

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
    Row("cli opts, wrong type", cli(C, "--config-file", CONFIG, "MODEL.ROI_HEADS.NUM_CLASSES", "many"), CLIFailed, "Type mismatch"),  # noqa: E501
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
    temporary folder, the repository's path, this process's pid and host, and times."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    for line in lines[1:]:
        if not text.endswith(":"):
            break
        text += " " + line
    text = text.replace(tmp, "<tmp>").replace(ROOT + os.sep, "")
    text = re.sub(r"\(started [^)]*\)", "(started <time>)", text)
    return text.replace(f"pid {os.getpid()}", "pid <pid>").replace(socket.gethostname(), "<host>")


COMMAND = "python dev/bad_input_table.py --write docs/bad_inputs.md"

HEADER = f"""# Bad inputs and their errors

Generated by `{COMMAND}` from the rows of `dev/bad_input_table.py`, which
`tests/test_bad_inputs.py` asserts one by one; the test also fails when this page differs from
what the rows generate. Do not edit it by hand.

Every bad input ends in an error that names the problem and the fix; the command lines
(`python -m iif_d2.cli`, `python -m iif_d2.lvis_eval.fp_analysis`) exit 2 with one line and no
traceback. Loading never runs code: `.pkl`/`.pth` weights are read safely (see
[checkpoints.md](checkpoints.md)) and YAML configs without `!!python` tags. A second run writing
the same `OUTPUT_DIR` is refused (`OUTPUT_DIR/.iif_d2.lock` names the holder's pid and host).
CPU worker processes exit when their launcher dies, and a stalled collective ends with a
message naming the rank after `IIF_D2_DIST_TIMEOUT` seconds (default 1800).

In the messages below `<tmp>` is the folder the row ran in; pids, hosts and times are masked.
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
    for row in ROWS:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                lines.append(table_line(row, tmp))
            except AssertionError as e:
                failed.append(str(e))
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
