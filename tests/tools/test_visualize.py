"""tools/visualize.py, the command line over iif_d2.engine.visualize (whose drawing is tested
in tests/engine/test_visualize_predictions.py): a run folder with an untrained model's
checkpoint, drawn through the command; its one-line errors; and tools/demo.py's helpers."""

import contextlib
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, Mkdir, copy_run, load_tool
from PIL import Image

from iif_d2 import add_iif_config

TOOL = os.path.join(ROOT, "tools", "visualize.py")


def _tool():
    return load_tool("visualize")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as train_net.py leaves it (config.yaml, iif_class_stats.json, a checkpoint),
    with the weights of the model as built: the command does not care whether it was trained."""
    from detectron2.config import get_cfg

    import iif_d2
    from iif_d2.engine.trainer import Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(
        os.path.join(ROOT, "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_iif.yaml")
    )
    cfg.merge_from_list(["OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu"])
    iif_d2.resolve_training_set(cfg)  # writes iif_class_stats.json, as train_net.py's setup
    model = Trainer.build_model(cfg)
    torch.save({"model": model.state_dict()}, out / "model_final.pth")
    assert (out / "iif_class_stats.json").exists()
    (out / "config.yaml").write_text(cfg.dump())
    return out


def _cli(*args):
    return subprocess.run(
        [sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_command_line(run_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(images / "grey.png")
    r = _cli("--weights", str(run_dir / "model_final.pth"), "--input", str(images),
             "--output", str(tmp_path / "out"), "--scale", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "torch.jit.script" not in r.stderr
    assert Image.open(tmp_path / "out" / "grey.png").size == (160, 64)
    # one-line errors naming the problem
    r = _cli("--weights", str(tmp_path / "missing.pth"), "--dataset", "iif_synthetic_tiny_val",
             "--output", str(tmp_path / "x"))  # fmt: skip
    assert r.returncode != 0 and "missing.pth" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("--weights", str(run_dir / "model_final.pth"), "--dataset", "no_such_set",
             "--output", str(tmp_path / "x"))  # fmt: skip
    assert r.returncode == 2 and "--dataset 'no_such_set' is not a registered dataset" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and len(r.stderr) < 300  # not every name


def _main(tool, *argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = tool.main(list(argv))
    return rc, err.getvalue()


def test_a_python_tag_in_the_run_config_runs_no_code(run_dir, tmp_path):
    """config.yaml beside the checkpoint with a !!python/object/apply tag: a one-line error,
    exit 2, and the tag's call never happens."""
    run = copy_run(run_dir, tmp_path / "run")
    sentinel = tmp_path / "sentinel"
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(f"X: !!python/object/apply:os.mkdir ['{sentinel}']\n{text}")
    rc, err = _main(_tool(), "--weights", str(run / "model_final.pth"),
                    "--dataset", "iif_synthetic_tiny_val",
                    "--output", str(tmp_path / "o"))  # fmt: skip
    assert rc == 2 and "python/object/apply" in err and len(err.strip().splitlines()) == 1
    assert not sentinel.exists() and not (tmp_path / "o").exists()


def test_weights_with_a_payload_are_refused(run_dir, tmp_path):
    """A .pkl whose unpickling would call os.mkdir: exit 2, one line, no directory made."""
    sentinel = tmp_path / "sentinel"
    state = torch.load(run_dir / "model_final.pth", weights_only=True)["model"]
    weights = {k: v.numpy() for k, v in state.items()}
    evil = copy_run(run_dir, tmp_path / "evil") / "model_final.pkl"
    evil.write_bytes(pickle.dumps({"model": weights, "__author__": "x", "p": Mkdir(sentinel)}))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(images / "grey.png")
    rc, err = _main(_tool(), "--weights", str(evil), "--input", str(images),
                    "--output", str(tmp_path / "o"))  # fmt: skip
    assert rc == 2 and "Refusing to load" in err and "mkdir" in err
    assert len(err.strip().splitlines()) == 1
    assert not sentinel.exists()


def test_help_is_complete():
    r = _cli("--help")
    assert r.returncode == 0
    for text in ("--weights", "--config-file", "--dataset", "--input", "--output", "--num",
                 "--score-thresh", "(default: config.yaml", "examples:"):  # fmt: skip
        assert text in r.stdout
    assert r.stderr == ""


# tools/demo.py's progress and checkpoint retention (the demo itself takes minutes: `make demo`)


def _demo():
    return load_tool("demo")


def test_demo_progress_off_a_terminal_is_plain_lines():
    demo = _demo()
    stream = io.StringIO()  # not a terminal
    follower = demo._LogFollower(40, "2/3 IIF")
    lines = [
        "[d2.engine.train_loop]: Starting training from iteration 0",
        "[d2.utils.events]:  eta: 0:00:10  iter: 19  total_loss: 2.5  loss_cls: 1.2",
        "[d2.utils.events]:  eta: 0:00:00  iter: 39  total_loss: 1.25  loss_cls: 0.6",
        "[d2.evaluation.evaluator]: Start inference on 60 batches",
        "[d2.evaluation.evaluator]: Inference done 30/60. Dataloading: 0.0 s/iter.",
        "[d2.evaluation.evaluator]: Total inference time: 0:00:10 (0.2 s / iter per device)",
    ]
    with contextlib.redirect_stdout(stream):
        for line in lines:
            follower.feed(line)
        follower.close()
    out = stream.getvalue()
    assert "\r" not in out
    printed = out.splitlines()
    # the first update of each phase, and each phase's end; the loss of the last update
    assert printed[0].startswith("[demo] 2/3 IIF: training 20/40 (50%)")
    assert "training 40/40 (100%)" in printed[1] and "loss 1.25" in printed[1]
    assert "evaluation, inference 30/60 (50%)" in printed[2] and "ETA" in printed[2]
    assert "inference 60/60 (100%)" in printed[3]
    assert printed[4] == "[demo] 2/3 IIF: evaluation, LVIS metrics ..."


def test_demo_keeps_only_the_final_checkpoint(tmp_path):
    demo = _demo()
    cfg = demo.demo_config(["SOLVER.MAX_ITER", "1000", "SOLVER.CHECKPOINT_PERIOD", "250"])
    opts = demo.checkpoint_opts(cfg, [])
    period = int(opts[opts.index("SOLVER.CHECKPOINT_PERIOD") + 1])
    assert 1000 % period and period > 250  # the last iteration is not saved twice
    assert ("SOLVER.CHECKPOINTS_KEPT" in opts) == ("CHECKPOINTS_KEPT" in cfg.SOLVER)
    assert "SOLVER.CHECKPOINT_PERIOD" not in demo.checkpoint_opts(
        cfg, ["SOLVER.CHECKPOINT_PERIOD", "250"]
    )  # what the user sets stays
    for name in ("model_0000250.pth", "model_0000501.pth", "model_final.pth"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text("model_0000501.pth")
    assert demo.remove_periodic_checkpoints(str(tmp_path)) == 0  # unfinished: resume needs them
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    assert demo.remove_periodic_checkpoints(str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


def test_bad_images_devices_and_paths_are_one_line_errors(run_dir, tmp_path):
    """A truncated, a non-image and a 16-bit image each end in one line naming the file, before
    the model is built and before anything is written; so do a device without a GPU, a folder
    as --weights and an --output inside a file. Exit 2 each time."""
    tool = _tool()
    weights = str(run_dir / "model_final.pth")
    Image.fromarray(np.full((32, 40, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    cases = {
        "cut.jpg": (data[: len(data) // 2], "cut.jpg cannot be read as an image"),
        "text.png": (b"not an image", "text.png cannot be read as an image"),
        "g16.png": (None, "g16.png is a 16-bit grayscale PNG; detectron2 reads images as 8-bit"),
    }
    for name, (content, message) in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        if content is None:
            Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(folder / name)
        else:
            (folder / name).write_bytes(content)
        out = tmp_path / f"out_{name}"
        rc, err = _main(tool, "--weights", weights, "--input", str(folder), "--output", str(out),
                        "--device", "cpu")  # fmt: skip
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    argv = ["--weights", weights, "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    if not torch.cuda.is_available():
        rc, err = _main(tool, *argv, "--device", "cuda")
        assert rc == 2 and "no CUDA GPU is available here; use --device cpu" in err
    rc, err = _main(tool, *argv[2:], "--weights", str(run_dir))
    assert rc == 2 and "is a directory; give a checkpoint" in err
    rc, err = _main(tool, *argv[:4], "--output", str(tmp_path / "a.jpg" / "o"))
    assert rc == 2 and "a.jpg is a file, not a folder" in err


def test_empty_paths_and_ignored_overrides_are_refused(run_dir, tmp_path, monkeypatch):
    """An empty path would be the current folder; OUTPUT_DIR, MODEL.WEIGHTS and MODEL.DEVICE
    overrides would be ignored (--output, --weights, --device set them): exit 2, one line, and
    nothing is written in the current folder."""
    tool = _tool()
    monkeypatch.chdir(tmp_path)
    weights = str(run_dir / "model_final.pth")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(images / "grey.png")
    good = {"--weights": weights, "--input": str(images), "--output": str(tmp_path / "o")}
    for option, value, message in (
        ("--output", "", "--output is empty; give a folder for the PNGs."),
        ("--weights", "", "--weights is empty; give a checkpoint"),
        ("--input", " ", "--input ' ' is blank; give a folder of images."),
        ("--config-file", "", "--config-file is empty; give a YAML config file."),
    ):
        argv = [x for k, v in {**good, option: value}.items() for x in (k, v)]
        rc, err = _main(tool, *argv)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    rc, err = _main(tool, "--weights", weights, "--dataset", "", "--output", "o")
    assert rc == 2 and "--dataset is empty" in err
    argv = [x for kv in good.items() for x in kv]
    for key, message in (
        ("OUTPUT_DIR", "OUTPUT_DIR is not used"),
        ("MODEL.WEIGHTS", "MODEL.WEIGHTS is set by --weights"),
        ("MODEL.DEVICE", "MODEL.DEVICE is set by --device"),
    ):
        rc, err = _main(tool, *argv, "SOLVER.MAX_ITER", "1", key, str(tmp_path / "x" / "run0"))
        assert rc == 2 and message in err and "drop it from the config overrides" in err, err
    assert sorted(os.listdir(tmp_path)) == ["images"]


def test_a_full_disk_names_the_png(run_dir, tmp_path, monkeypatch):
    """No space left while a PNG is written (an OSError without a file name): exit 2 and one
    line naming the PNG, not a bare "[Errno 28]"."""
    import errno

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(images / "grey.png")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "out"
    rc, err = _main(_tool(), "--weights", str(run_dir / "model_final.pth"),
                    "--input", str(images), "--output", str(out), "--device", "cpu")  # fmt: skip
    assert rc == 2 and f"cannot write {out / 'grey.png'}" in err, err
    assert "free some space or choose another output folder" in err
    assert len(err.strip().splitlines()) == 1 and os.listdir(out) == []


def test_demo_refuses_an_empty_output_dir(tmp_path, monkeypatch, capsys):
    """--output-dir "" would train into the current folder over its files: exit 2, one line,
    before anything is written."""
    demo = _demo()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "log.txt").write_text("mine")
    for value, message in (("", "--output-dir is empty"), ("  ", "--output-dir '  ' is blank")):
        with pytest.raises(SystemExit) as e:
            demo.main(["--output-dir", value, "SOLVER.MAX_ITER", "1"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"demo.py: error: {message}; give a folder")
        assert err.count("\n") == 1
    assert os.listdir(tmp_path) == ["log.txt"] and (tmp_path / "log.txt").read_text() == "mine"
