"""tools/visualize.py: a tiny IIF model trained one step, then drawn from its run folder alone."""

import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import load_tool
from PIL import Image

import iif_d2
from iif_d2 import add_iif_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TOOL = os.path.join(ROOT, "tools", "visualize.py")


def _tool():
    return load_tool("visualize")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as train_net.py leaves it: config.yaml, iif_class_stats.json, a checkpoint."""
    from detectron2.config import get_cfg

    from iif_d2.engine.trainer import Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(
        os.path.join(ROOT, "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_iif.yaml")
    )
    cfg.merge_from_list(["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", 1])
    iif_d2.resolve_training_set(cfg)  # as train_net.py's setup does
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (out / "model_final.pth").exists() and (out / "iif_class_stats.json").exists()
    # the training set is not needed any more: a config naming a dataset that does not exist
    # still visualises, since the counts come from the run's iif_class_stats.json
    cfg.DATASETS.TRAIN = ("not_registered_train",)
    (out / "config.yaml").write_text(cfg.dump())
    return out


def _panels(path):
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = img.shape
    assert w == 2 * h  # the tiny set's images are square: two square panels side by side
    return img[:, : w // 2], img[:, w // 2 :]


def test_predictions_beside_ground_truth_from_the_run_folder(run_dir, tmp_path):
    tool = _tool()
    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]  # one step: scores are low
    cfg = tool.load_run_config(str(run_dir / "model_final.pth"), opts=opts, device="cpu")
    assert cfg.MODEL.WEIGHTS.endswith("model_final.pth")
    shown = tool.visualize(cfg, str(tmp_path / "all"), dataset="iif_synthetic_tiny_val", num=2,
                           score_thresh=0.0, scale=2.0)  # fmt: skip
    none = tool.visualize(cfg, str(tmp_path / "none"), dataset="iif_synthetic_tiny_val", num=2,
                          score_thresh=1.01, scale=2.0)  # fmt: skip
    assert len(shown) == len(none) == 2
    for a, b in zip(shown, none):
        assert os.path.basename(a) == os.path.basename(b)
        assert Image.open(a).size == (2 * 2 * 96, 2 * 96)  # 96-pixel images at scale 2
        pred, gt = _panels(a)
        pred_none, gt_none = _panels(b)
        assert not np.array_equal(pred, gt)
        assert np.array_equal(gt, gt_none)  # the ground truth does not depend on the threshold
        assert not np.array_equal(pred, pred_none)  # predictions were drawn


def test_counts_come_from_the_run_folder(run_dir):
    tool = _tool()
    cfg = tool.load_run_config(str(run_dir / "model_final.pth"), device="cpu")
    node = cfg.MODEL.CLASS_COUNTS if "CLASS_COUNTS" in cfg.MODEL else cfg.MODEL.ROI_BOX_HEAD.IIF
    keys = ("SOURCE", "FILE") if "CLASS_COUNTS" in cfg.MODEL else ("COUNTS_SOURCE", "COUNTS_FILE")
    assert node[keys[0]] == "file"
    assert node[keys[1]] == os.path.join(str(run_dir), "iif_class_stats.json")


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
    assert r.returncode != 0 and "'no_such_set' is not registered" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


class _Mkdir:
    """Unpickling it calls os.mkdir(path): code execution, made visible."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _copy_run(run_dir, dest):
    dest.mkdir()
    for name in ("model_final.pth", "config.yaml", "iif_class_stats.json"):
        (dest / name).write_bytes((run_dir / name).read_bytes())
    return dest


def _main(tool, *argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = tool.main(list(argv))
    return rc, err.getvalue()


def test_a_python_tag_in_the_run_config_runs_no_code(run_dir, tmp_path):
    """config.yaml beside the checkpoint with a !!python/object/apply tag: a one-line error,
    exit 2, and the tag's call never happens."""
    run = _copy_run(run_dir, tmp_path / "run")
    sentinel = tmp_path / "sentinel"
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(f"X: !!python/object/apply:os.mkdir ['{sentinel}']\n{text}")
    rc, err = _main(_tool(), "--weights", str(run / "model_final.pth"),
                    "--dataset", "iif_synthetic_tiny_val",
                    "--output", str(tmp_path / "o"))  # fmt: skip
    assert rc == 2 and "python/object/apply" in err and len(err.strip().splitlines()) == 1
    assert not sentinel.exists() and not (tmp_path / "o").exists()


def test_weights_are_read_by_the_safe_loaders(run_dir, tmp_path):
    """A .pkl whose unpickling would call os.mkdir is refused (detectron2's checkpointer would
    have run it); a checkpoint that trains none of the model's parameters is refused too."""
    import pickle

    import torch

    tool = _tool()
    sentinel = tmp_path / "sentinel"
    state = torch.load(run_dir / "model_final.pth", weights_only=True)["model"]
    weights = {k: v.numpy() for k, v in state.items()}
    evil = _copy_run(run_dir, tmp_path / "evil") / "model_final.pkl"
    evil.write_bytes(pickle.dumps({"model": weights, "__author__": "x", "p": _Mkdir(sentinel)}))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(images / "grey.png")
    rc, err = _main(tool, "--weights", str(evil), "--input", str(images),
                    "--output", str(tmp_path / "o"))  # fmt: skip
    assert rc == 2 and "Refusing to load" in err and "mkdir" in err
    assert not sentinel.exists()
    # the same arrays without the payload load through the same path
    good = evil.with_name("good.pkl")
    good.write_bytes(pickle.dumps({"model": weights, "__author__": "x"}))
    model = tool._predictor(tool.load_run_config(str(good), device="cpu")).model
    assert all(torch.equal(model.state_dict()[k].cpu(), v) for k, v in state.items())
    # a checkpoint of the backbone alone: refused, not drawn with random heads
    backbone = evil.with_name("backbone.pth")
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("backbone.")}}, backbone)
    with pytest.raises(ValueError, match="holds no weights for .* parameters"):
        tool._predictor(tool.load_run_config(str(backbone), device="cpu"))


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


def test_output_onto_the_input_folder_is_refused(run_dir, tmp_path):
    """--output naming the --input folder (also through a symlink) would replace the images
    of the same name: refused, the images unchanged."""
    tool = _tool()
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(images / "a.png")
    before = (images / "a.png").read_bytes()
    (tmp_path / "link").symlink_to(images)
    cfg = tool.load_run_config(str(run_dir / "model_final.pth"), device="cpu")
    for out in (images, tmp_path / "link"):
        with pytest.raises(ValueError, match="is the --input folder"):
            tool.visualize(cfg, str(out), input_dir=str(images))
    assert (images / "a.png").read_bytes() == before and os.listdir(images) == ["a.png"]
