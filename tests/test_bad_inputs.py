"""Every row of dev/bad_input_table.py: the bad input raises the error type it names, with
its message fragment; the command lines exit 2 with one line on stderr and no traceback; and
docs/bad_inputs.md is the page those rows generate."""

import importlib.util
import os
import re

import pytest
from helpers import ROOT

PAGE = os.path.join(ROOT, "docs", "bad_inputs.md")


def _load_table():
    """dev/bad_input_table.py as a module (dev/ holds scripts, not a package)."""
    path = os.path.join(ROOT, "dev", "bad_input_table.py")
    spec = importlib.util.spec_from_file_location("bad_input_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABLE = _load_table()
LINES = {}  # row -> its line of the table, filled by test_bad_input, read by the drift test


@pytest.mark.parametrize("row", TABLE.ROWS, ids=[row.what for row in TABLE.ROWS])
def test_bad_input(row, tmp_path):
    error = TABLE.run_row(row, str(tmp_path))  # raises unless type and fragment are right
    if isinstance(error, TABLE.CLIFailed):
        assert error.code == 2
        assert "Traceback" not in error.stderr
        lines = error.stderr.strip().splitlines()
        if lines[0].startswith("usage:"):  # argparse's own errors: usage, then the error
            lines = lines[-1:]
        # "error: ..." or "<command>: error: ..." (argparse's usage errors, the tools)
        assert len(lines) == 1 and re.match(r"(\S+( -m \S+)?: )?error: ", lines[0]), lines
    LINES[row.what] = TABLE.table_line(row, str(tmp_path), error)


def test_page_is_what_the_rows_generate(tmp_path):
    """docs/bad_inputs.md equals the page the rows generate now (rows not run above in this
    session are run here). Regenerate it with the command in its header."""
    lines = []
    for i, row in enumerate(TABLE.ROWS):
        if row.what not in LINES:
            (tmp_path / str(i)).mkdir()
            LINES[row.what] = TABLE.table_line(row, str(tmp_path / str(i)))
        lines.append(LINES[row.what])
    with open(PAGE, encoding="utf-8") as f:
        committed = f.read()
    expected = TABLE.render(lines)
    assert committed == expected, (
        f"{PAGE} differs from what the rows of dev/bad_input_table.py generate; run "
        f"`{TABLE.COMMAND}`"
    )
    assert TABLE.COMMAND in committed


def test_write_makes_the_page(tmp_path, monkeypatch):
    """--write writes the page of the rows; a folder or a missing folder as PATH is refused."""
    for bad in (tmp_path, tmp_path / "no" / "x.md"):
        with pytest.raises(SystemExit) as e:
            TABLE.main(["--write", str(bad)])
        assert e.value.code == 2
    rows = TABLE.ROWS[:2]
    monkeypatch.setattr(TABLE, "ROWS", rows)
    out = tmp_path / "bad_inputs.md"
    assert TABLE.main(["--write", str(out)]) == 0
    lines = []
    for i, row in enumerate(rows):
        (tmp_path / str(i)).mkdir()
        lines.append(TABLE.table_line(row, str(tmp_path / str(i))))
    assert out.read_text(encoding="utf-8") == TABLE.render(lines)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_rows_are_distinct():
    assert len({row.what for row in TABLE.ROWS}) == len(TABLE.ROWS)


def test_table_line_of_a_multi_line_error(tmp_path):
    error = ValueError(f"The config sets:\n  {tmp_path}/x is bad (started 12:00).\nUse another.")
    line = "The config sets: <tmp>/x is bad (started <time>)."
    assert TABLE.first_line(error, str(tmp_path)) == line


# -- NUM_CLASSES against the training set, for every counts source --------------------------

QUICK = os.path.join(ROOT, "configs", "quick_schedules")


def _quick_cfg(name, tmp_path, *opts):
    from detectron2.config import get_cfg

    from iif_d2 import add_iif_config, resolve_training_set

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(QUICK, name))
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), *opts])
    return resolve_training_set(cfg)


@pytest.mark.parametrize(
    "name, key, opts, error",
    [
        # a user's counts file that fits NUM_CLASSES, both of another dataset (COCO's 80)
        (
            "mask_rcnn_R_18_FPN_instant_iif.yaml",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            ("MODEL.CLASS_COUNTS.SOURCE", "file", "MODEL.CLASS_COUNTS.FILE",
             "iif_d2://coco_train2017.csv", "MODEL.ROI_HEADS.NUM_CLASSES", 80),
            r"NUM_CLASSES is 80, but the training set 'iif_synthetic_tiny_train' has 8 classes "
            r".*set MODEL.ROI_HEADS.NUM_CLASSES 8 \(and MODEL.CLASS_COUNTS.FILE to counts of "
            r"those classes; the counts used now: .*iif_class_stats.json\)",
        ),
        # the counts the resolution wrote (SOURCE "dataset"): 8 classes, the model 10
        (
            "mask_rcnn_R_18_FPN_instant_iif.yaml",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            ("MODEL.ROI_HEADS.NUM_CLASSES", 10),
            r"cover 8 classes, but the model has NUM_CLASSES = 10.*set the model's NUM_CLASSES",
        ),
        # no counts at all (IIF off), more or fewer classes than the dataset's
        (
            "mask_rcnn_R_18_FPN_instant.yaml",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            ("MODEL.ROI_HEADS.NUM_CLASSES", 10),
            r"NUM_CLASSES is 10, but .* has 8 classes .*set MODEL.ROI_HEADS.NUM_CLASSES 8, or",
        ),
        (
            "mask_rcnn_R_18_FPN_instant.yaml",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            ("MODEL.ROI_HEADS.NUM_CLASSES", 5),
            r"NUM_CLASSES is 5, but .* has 8 classes .*set MODEL.ROI_HEADS.NUM_CLASSES 8, or",
        ),
        (
            "retinanet_R_18_FPN_instant_iif.yaml",
            "MODEL.RETINANET.NUM_CLASSES",
            ("MODEL.CLASS_COUNTS.SOURCE", "file", "MODEL.CLASS_COUNTS.FILE",
             "iif_d2://coco_train2017.csv", "MODEL.RETINANET.NUM_CLASSES", 80),
            r"RETINANET.NUM_CLASSES is 80, but .* 8 classes .*set MODEL.RETINANET.NUM_CLASSES 8",
        ),
    ],
)  # fmt: skip
def test_num_classes_other_than_the_training_sets(name, key, opts, error, tmp_path):
    from iif_d2.engine.trainer import Trainer

    cfg = _quick_cfg(name, tmp_path, *opts)
    with pytest.raises(ValueError, match=error):
        Trainer.build_model(cfg)
    good = _quick_cfg(name, tmp_path / "good", key, 8)  # the dataset's class count builds
    Trainer.build_model(good)


def test_category_ids_beyond_num_classes_without_class_names(tmp_path):
    """A dataset registered without thing_classes: its ids are checked when the trainer has
    loaded its dicts."""
    from detectron2.data import DatasetCatalog

    from iif_d2.engine.trainer import Trainer

    train = DatasetCatalog.get("iif_synthetic_tiny_train")
    name = "iif_test_no_class_names"
    DatasetCatalog.register(name, lambda: train)
    try:
        cfg = _quick_cfg(
            "mask_rcnn_R_18_FPN_instant.yaml",
            tmp_path,
            "DATASETS.TRAIN",
            (name,),
            "MODEL.ROI_HEADS.NUM_CLASSES",
            5,
        )
        with pytest.raises(ValueError, match=r"NUM_CLASSES is 5, but .* category ids up to 7"):
            Trainer(cfg)
    finally:
        DatasetCatalog.remove(name)


def test_a_worker_processs_input_error_is_one_line():
    """train_net.py with --num-gpus > 1: an input error a worker raised (reported by
    torch.multiprocessing with the worker's traceback) is printed as its one line."""
    from torch.multiprocessing import ProcessRaisedException

    from iif_d2.train_net import _worker_user_error

    message = "MODEL.ROI_HEADS.NUM_CLASSES is 5, but the training set has 8 classes: set 8."
    worker = (
        "\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call "
        'last):\n  File "iif_d2/train_net.py", line 60, in main\n    raise RunConfigError(str(e))'
        f"\niif_d2.engine.config_files.RunConfigError: {message}\n"
    )
    assert _worker_user_error(ProcessRaisedException(worker, 1, 4242)) == message
    crash = worker.replace("iif_d2.engine.config_files.RunConfigError", "RuntimeError")
    assert _worker_user_error(ProcessRaisedException(crash, 1, 4242)) is None  # a traceback
