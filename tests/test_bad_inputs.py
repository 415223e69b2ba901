"""Every row of dev/bad_input_table.py: the bad input raises the error type it names, with
its message fragment; the command lines exit 2 with one line on stderr and no traceback; and
docs/bad_inputs.md is the page those rows generate."""

import importlib.util
import json
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


# -- more bad inputs, one per class a second hostile pass found ------------------------------
# Rows of dev/bad_input_table.py's kind (asserted the same way: the error type and fragment;
# a command line exits 2 with one line and no traceback). They are tried here until they join
# its ROWS, whose docs/bad_inputs.md they do not change yet.

Row, CLIFailed, cli, script, fifo, counts = (
    TABLE.Row, TABLE.CLIFailed, TABLE.cli, TABLE.script, TABLE.fifo, TABLE.counts
)  # fmt: skip
QUICK_CONFIG = os.path.join(QUICK, "mask_rcnn_R_18_FPN_instant.yaml")


def train_net(*args, files=None):
    """``python train_net.py ARGS`` in this process (what it checks before launching; "{tmp}"
    replaced, ``files`` written first): raises :class:`CLIFailed` on a non-zero status."""

    def run(tmp):
        import contextlib
        import io

        from iif_d2.train_net import run as train_net_run

        TABLE._write(tmp, files)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = train_net_run([a.format(tmp=tmp) for a in args])
            except SystemExit as e:
                code = e.code
        if code != 0:
            raise CLIFailed(code, err.getvalue())
        return code

    return run


def _quick(*opts, files=None):
    return train_net("--config-file", QUICK_CONFIG, "OUTPUT_DIR", "{tmp}/out", *opts, files=files)


def _diamond(depth=30):
    """Config files each naming the next one twice as _BASE_: 2**depth reads, no cycle."""
    files = {f"d{i}.yaml": f"_BASE_: [d{i + 1}.yaml, d{i + 1}.yaml]\n" for i in range(depth)}
    files[f"d{depth}.yaml"] = "MODEL:\n  DEVICE: cpu\n"
    return files


def _checkpoint(content):
    """Load a checkpoint ``content`` writes into the folder with IIFCheckpointer."""

    def run(tmp):
        from torch import nn

        from iif_d2.engine.checkpoint import IIFCheckpointer

        path = content(tmp)
        return IIFCheckpointer(nn.Linear(2, 2), save_dir=tmp).load(path, checkpointables=[])

    return run


def _nan_state(tmp):
    import torch

    path = os.path.join(tmp, "w.pth")
    torch.save(
        {"model": {"weight": torch.full((2, 2), float("nan")), "bias": torch.zeros(2)}}, path
    )
    return path


def _list_model(tmp):
    import torch

    path = os.path.join(tmp, "w.pth")
    torch.save({"model": [1, 2]}, path)
    return path


def _fifo_weights(tmp):
    path = os.path.join(tmp, "w.pth")
    os.mkfifo(path)
    return path


def lvis_json_duplicate_image_id(tmp):
    """An LVIS json listing image id 1 twice, loaded by detectron2's LVIS loader through the
    training load (the loader would keep one file and give it both images' annotations)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.lvis import load_lvis_json

    from iif_d2.data.loader import loader_dataset_dicts

    ann = {"image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8], "area": 64,
           "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9]]}  # fmt: skip
    image = {"id": 1, "width": 20, "height": 20}
    data = {
        "images": [
            dict(image, coco_url="x/train2017/1.jpg"),
            dict(image, coco_url="x/train2017/2.jpg"),
        ],  # fmt: skip
        "annotations": [dict(ann, id=1), dict(ann, id=2)],
        "categories": TABLE.LVIS_CATS,
    }
    path = os.path.join(tmp, "l.json")
    TABLE._write(tmp, {"l.json": data})
    DatasetCatalog.register("my_lvis_dup", lambda: load_lvis_json(path, tmp))
    MetadataCatalog.get("my_lvis_dup").set(json_file=path, thing_classes=["a"])
    try:
        cfg = TABLE._cfg()
        cfg.DATASETS.TRAIN = ("my_lvis_dup",)
        return loader_dataset_dicts(cfg)
    finally:
        DatasetCatalog.remove("my_lvis_dup")
        MetadataCatalog.remove("my_lvis_dup")


def _png_header(width, height):
    """A 1-bit PNG of ``width`` x ``height`` with no pixel data: PIL reads its size (and
    refuses a decompression bomb) when it opens it."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _with_file(record):
    """``record`` with its (empty) image file made in the row's folder."""

    def make(tmp):
        path = os.path.join(tmp, "1.jpg")
        TABLE._write(tmp, {"1.jpg": b""})
        return dict(record, file_name=path)

    return make


def _read_only(name, content):
    def make(tmp):
        TABLE._write(tmp, {name: content})
        os.chmod(os.path.join(tmp, name), 0o444)

    return make


def _then(prepare, run):
    def both(tmp):
        prepare(tmp)
        return run(tmp)

    return both


C, EV, FP = TABLE.C, TABLE.EV, TABLE.FP
GT, LVIS_GT = TABLE.GT, TABLE.LVIS_GT
EV_ARGS, FP_ARGS, EV_FILES, FP_FILES = TABLE.EV_ARGS, TABLE.FP_ARGS, TABLE.EV_FILES, TABLE.FP_FILES
CSV10 = "# num_images: 10\n" + TABLE.CSV + "1,1,2\n2,3,4\n"
DEEP = "[" * 100000 + "]" * 100000
LVIS_IMAGE = LVIS_GT["images"][0]
LVIS_ANN = LVIS_GT["annotations"][0]

MORE_ROWS = [
    # train_net.py: configs, settings, launch
    Row("config whose _BASE_ tree reads 2**30 files (no cycle)", train_net("--config-file", "{tmp}/d0.yaml", files=_diamond()), CLIFailed, "reads more than 64 config files"),  # noqa: E501
    Row("config with a key given twice", train_net("--config-file", "{tmp}/c.yaml", files={"c.yaml": f"_BASE_: {QUICK_CONFIG}\nSOLVER:\n  MAX_ITER: 5\nSOLVER:\n  BASE_LR: 0.1\n"}), CLIFailed, "key 'SOLVER' appears twice in one mapping (lines 2 and 4)"),  # noqa: E501
    Row("config nested 100,000 levels deep", train_net("--config-file", "{tmp}/c.yaml", files={"c.yaml": "a: " + DEEP + "\n"}), CLIFailed, "nests its values too deeply"),  # noqa: E501
    Row("SOLVER.STEPS `(5, 2)`", _quick("SOLVER.STEPS", "(5, 2)"), CLIFailed, "SOLVER.STEPS (5, 2) must be increasing"),  # noqa: E501
    Row("DATALOADER.NUM_WORKERS `-1`", _quick("DATALOADER.NUM_WORKERS", "-1"), CLIFailed, "DATALOADER.NUM_WORKERS -1 must be >= 0"),  # noqa: E501
    Row("SOLVER.MAX_ITER `0` (training)", _quick("SOLVER.MAX_ITER", "0"), CLIFailed, "training needs at least 1 iteration"),  # noqa: E501
    Row("MODEL.PIXEL_MEAN of one value", _quick("MODEL.PIXEL_MEAN", "[1.0]"), CLIFailed, "need one value per channel of INPUT.FORMAT 'BGR' (3)"),  # noqa: E501
    Row("MODEL.DEVICE `tpu`", _quick("MODEL.DEVICE", "tpu"), CLIFailed, "MODEL.DEVICE 'tpu' is not a device"),  # noqa: E501
    Row("OUTPUT_DIR `/proc/x` (cannot be made)", _quick("OUTPUT_DIR", "/proc/x"), CLIFailed, "OUTPUT_DIR /proc/x cannot be made"),  # noqa: E501
    Row("`--num-gpus 1000` on CPU", train_net("--num-gpus", "1000", "--config-file", QUICK_CONFIG, "OUTPUT_DIR", "{tmp}/o"), CLIFailed, "give --num-gpus"),  # noqa: E501
    Row("`--dist-url garbage`", train_net("--num-gpus", "2", "--dist-url", "garbage", "--config-file", QUICK_CONFIG), CLIFailed, "--dist-url 'garbage' is not tcp://HOST:PORT"),  # noqa: E501
    # checkpoints
    Row("MODEL.WEIGHTS a named pipe", _checkpoint(_fifo_weights), ValueError, "is not a regular file (a pipe or device?)"),  # noqa: E501
    Row("checkpoint with NaN weights", _checkpoint(_nan_state), ValueError, "holds NaN or inf in 1 weight tensor(s) (e.g. weight)"),  # noqa: E501
    Row("checkpoint whose model is a list", _checkpoint(_list_model), ValueError, "holds a list as its model, not a state dict"),  # noqa: E501
    # training data
    Row("training set, an image file that is not there", TABLE.training_set(TABLE._image(1, TABLE._box())), ValueError, "image 1 (images/1.jpg) does not exist"),  # noqa: E501
    Row("training set, a category id beyond the classes", TABLE.training_set(_with_file(TABLE._image(1, TABLE._box(cat=5)))), ValueError, "has category_id 5 (contiguous), but the dataset has 2 classes"),  # noqa: E501
    Row("LVIS training json, one image id twice", lvis_json_duplicate_image_id, ValueError, "image id 1 appears twice in 'images'"),  # noqa: E501
    # python -m iif_d2.cli
    Row("cli `--save` = a `_BASE_` of `--config-file`", cli(C, "--config-file", "{tmp}/c.yaml", "--save", "{tmp}/b.yaml", files={"b.yaml": f"_BASE_: {os.path.join(QUICK, 'mask_rcnn_R_18_FPN_instant_iif.yaml')}\n", "c.yaml": "_BASE_: b.yaml\n"}), CLIFailed, "is the input file"),  # noqa: E501
    Row("cli `--save` a read-only file", _then(_read_only("ro.json", "{}"), cli(C, "--counts-file", "{tmp}/c.csv", "--save", "{tmp}/ro.json", files={"c.csv": CSV10})), CLIFailed, "is a read-only file; it is not replaced"),  # noqa: E501
    Row("cli `--counts-file http://...`", cli(C, "--counts-file", "http://127.0.0.1:9/c.csv"), CLIFailed, "never fetched from the web"),  # noqa: E501
    Row("counts json nested 100,000 levels deep", counts("c.json", DEEP), ValueError, "nests too deeply"),  # noqa: E501
    # python -m iif_d2.lvis_eval and its fp_analysis
    Row("lvis_eval results nested 100,000 levels deep", cli(EV, *EV_ARGS, files={**EV_FILES, "r.json": DEEP}), CLIFailed, "nests json arrays and objects more than 32 levels deep"),  # noqa: E501
    Row("lvis_eval ground truth, one image id twice", cli(EV, *EV_ARGS, files={**EV_FILES, "gt.json": dict(LVIS_GT, images=[LVIS_IMAGE] * 2)}), CLIFailed, "'images': id 1 appears twice"),  # noqa: E501
    Row("lvis_eval ground truth, a NaN box", cli(EV, *EV_ARGS, files={**EV_FILES, "gt.json": json.dumps(dict(LVIS_GT, annotations=[dict(LVIS_ANN, bbox=[0, 0, float("nan"), 5])]))}), CLIFailed, "bbox [0, 0, nan, 5] is not 4 finite numbers"),  # noqa: E501
    Row("lvis_eval ground truth, unknown neg_category_ids", cli(EV, *EV_ARGS, files={**EV_FILES, "gt.json": dict(LVIS_GT, images=[dict(LVIS_IMAGE, neg_category_ids=[42])])}), CLIFailed, "neg_category_ids lists 42"),  # noqa: E501
    Row("lvis_eval `--iou-type segm`, ground truth without masks", cli(EV, *EV_ARGS[:-1], "segm", files=EV_FILES), CLIFailed, "lacks field 'segmentation', needed to evaluate masks"),  # noqa: E501
    Row("lvis_eval `--json-out` a read-only file", _then(_read_only("ro.json", "{}"), cli(EV, *EV_ARGS, "--json-out", "{tmp}/ro.json", files=EV_FILES)), CLIFailed, "is a read-only file"),  # noqa: E501
    Row("fp_analysis ground-truth category id `\"1\"`", cli(FP, *FP_ARGS, files={**FP_FILES, "gt.json": dict(GT, categories=[{"id": "1", "name": "a"}])}), CLIFailed, "categories[0]: id '1' is not an integer"),  # noqa: E501
    # tools/
    Row("visualize `--score-thresh 5`", script("visualize", *TABLE.VIS, "--input", "{tmp}", "--output", "{tmp}/o", "--score-thresh", "5"), CLIFailed, "'5' must lie in [0, 1]"),  # noqa: E501
    Row("visualize, a 30000 x 30000 PNG in `--input`", script("visualize", *TABLE.VIS, "--input", "{tmp}/images", "--output", "{tmp}/o", files=dict(TABLE.RUN, **{"images/big.png": _png_header(30000, 30000)})), CLIFailed, "big.png is too large to decode safely"),  # noqa: E501
    Row("convert, IN a detectron2 checkpoint", _then(lambda tmp: __import__("torch").save({"model": {}, "iteration": 3}, os.path.join(tmp, "in.pth")), script("convert_mmdet_checkpoint", "{tmp}/in.pth", "{tmp}/o.pth")), CLIFailed, "is a detectron2 checkpoint already"),  # noqa: E501
    Row("demo, OUTPUT_DIR among the overrides", script("demo", "--output-dir", "{tmp}/o", "OUTPUT_DIR", "{tmp}/p"), CLIFailed, "OUTPUT_DIR is set by --output-dir"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize("row", MORE_ROWS, ids=[row.what for row in MORE_ROWS])
def test_more_bad_inputs(row, tmp_path):
    error = TABLE.run_row(row, str(tmp_path))
    if isinstance(error, CLIFailed):
        assert error.code == 2
        assert "Traceback" not in error.stderr
        lines = error.stderr.strip().splitlines()
        if lines[0].startswith("usage:"):  # argparse's own errors: usage, then the error
            lines = lines[-1:]
        assert len(lines) == 1 and re.match(r"(\S+( -m \S+)?: )?error: ", lines[0]), lines
    TABLE.table_line(row, str(tmp_path), error)  # a line of the page
    assert row.what not in {r.what for r in TABLE.ROWS}


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
