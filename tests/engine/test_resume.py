"""Exact resume: a ``train_net.py`` run killed (SIGKILL) after a checkpoint and resumed with
``--resume`` ends with the uninterrupted run's weights, bit for bit (CPU, one thread), with
NUM_WORKERS 0 and 2, IIF and FASA on (ROI sampling and FASA draw from torch's generator)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from iif_d2.utils.machine import KERNEL_PINS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant_iif.yaml")
OPTS = [
    "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "4", "SEED", "7", "NUM_THREADS", "1",
    "DATASETS.TEST", "()",
    "MODEL.ROI_BOX_HEAD.FASA.ENABLED", "True",
    "MODEL.ROI_BOX_HEAD.FASA.START_ITER", "2",
    "MODEL.ROI_BOX_HEAD.FASA.ADAPT_PERIOD", "6",
]  # fmt: skip
TIMEOUT_S = 300


def _start(out, *extra, resume=False, workers=0, env=None, config=CONFIG, opts=OPTS):
    args = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config]
    args += ["--resume"] if resume else []
    args += [*opts, "DATALOADER.NUM_WORKERS", str(workers), "OUTPUT_DIR", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    log = open(out.parent / f"{out.name}{'_resumed' if resume else ''}.log", "w")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log
    return proc


def _tail(proc):
    proc.log.flush()
    with open(proc.log.name) as f:
        return "".join(f.readlines()[-30:])


def _finish(proc):
    rc = proc.wait(TIMEOUT_S)
    proc.log.close()
    assert rc == 0, f"{proc.args} exited {rc}:\n{_tail(proc)}"


def _kill_after_checkpoint(proc, out, iteration):
    """SIGKILL ``proc`` as soon as its checkpoint after ``iteration`` iterations is complete
    (``last_checkpoint``, written after the checkpoint, names it)."""
    name = f"model_{iteration - 1:07d}.pth"
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        last = out / "last_checkpoint"
        if last.exists() and last.read_text() == name:
            break
        assert proc.poll() is None, f"the run ended before {name}:\n{_tail(proc)}"
        assert time.monotonic() < deadline, f"no {name} after {TIMEOUT_S} s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.log.close()
    assert not (out / "model_final.pth").exists()


def _weights(out):
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def _same(a, b) -> bool:
    """Equal values, NaN where NaN (FASA's losses of classes not yet measured)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    nan = a.isnan() if a.is_floating_point() else torch.zeros_like(a, dtype=torch.bool)
    return torch.equal(nan, b.isnan() if b.is_floating_point() else nan) and torch.equal(
        a[~nan], b[~nan]
    )


def _assert_equal(a, b):
    assert a.keys() == b.keys()
    differ = [k for k in a if not _same(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ: {differ[:5]}"


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    full, at4, at8 = tmp_path / "full", tmp_path / "killed_at_4", tmp_path / "killed_at_8"
    uninterrupted = _start(full)  # two runs at a time: one per core
    killed = _start(at4)
    _kill_after_checkpoint(killed, at4, 4)
    resumed = _start(at4, resume=True)
    _finish(uninterrupted)
    killed = _start(at8, workers=2)
    _kill_after_checkpoint(killed, at8, 8)
    _finish(resumed)
    _finish(_start(at8, resume=True, workers=2))

    for out, start in ((at4, 4), (at8, 8)):
        log = (out.parent / f"{out.name}_resumed.log").read_text()
        assert f"Starting training from iteration {start}" in log
    expected = _weights(full)
    _assert_equal(_weights(at4), expected)
    _assert_equal(_weights(at8), expected)  # also: 2 workers map what 0 workers map


RETINANET = os.path.join(ROOT, "configs", "quick_schedules", "retinanet_R_18_FPN_instant_iif.yaml")


@pytest.mark.slow
def test_killed_retinanet_resumes_to_the_uninterrupted_weights(tmp_path):
    """RetinaNet resumes bit for bit too: its loss normaliser, an EMA detectron2 keeps outside
    the model's state, is restored (a resumed run restarted it at 100), and its scripted focal
    loss runs unoptimised (TorchScript's optimised graph, used from its second call in a process,
    has other last bits in its gradients: a run resumed at iteration 4 differed by ~1e-8)."""
    full, at4 = tmp_path / "full", tmp_path / "killed_at_4"
    opts = {"config": RETINANET, "opts": [*OPTS[:8], "DATASETS.TEST", "()"]}
    uninterrupted = _start(full, **opts)
    killed = _start(at4, **opts)
    _kill_after_checkpoint(killed, at4, 4)
    _finish(_start(at4, resume=True, **opts))
    _finish(uninterrupted)
    _assert_equal(_weights(at4), _weights(full))


# torch's portable kernels: ATen, oneDNN and MKL held below AVX2
PORTABLE_KERNELS = KERNEL_PINS["default"]


@pytest.mark.slow
def test_same_seed_repeats_only_on_the_same_kernels(tmp_path):
    """The same seed and thread count repeat bit for bit; another kernel set (as on another
    CPU: AVX2 against AVX-512) rounds differently and trains other weights from that seed."""
    short = ("SOLVER.MAX_ITER", "4", "MODEL.ROI_BOX_HEAD.FASA.ENABLED", "False")
    first, again, portable = tmp_path / "first", tmp_path / "again", tmp_path / "portable"
    a, b = _start(first, *short), _start(again, *short)
    _finish(a)
    c = _start(portable, *short, env=PORTABLE_KERNELS)
    _finish(b)
    _finish(c)
    assert "DEFAULT kernels" in (tmp_path / "portable.log").read_text()  # logged beside threads
    reference = _weights(first)
    _assert_equal(_weights(again), reference)
    other = _weights(portable)
    assert any(not _same(other[k], reference[k]) for k in reference)


# -- guards of --resume and --eval-only (no training: fast) ------------------------------------


def _args(out, *opts, resume=True, eval_only=False, config=CONFIG):
    from types import SimpleNamespace

    opts = ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", *opts]
    return SimpleNamespace(
        config_file=config, opts=opts, resume=resume, eval_only=eval_only, num_gpus=1,
        num_machines=1, machine_rank=0, dist_url="auto",
    )  # fmt: skip


def _run_folder(tmp_path, *opts):
    """A run folder as train_net.py leaves it after starting (config.yaml, a checkpoint)."""
    from iif_d2 import resolve_training_set
    from iif_d2.engine.config_files import load_config

    out = tmp_path / "run"
    out.mkdir()
    cfg = resolve_training_set(load_config(_args(out, *opts)))
    (out / "config.yaml").write_text(cfg.dump())
    (out / "model_0000000.pth").write_bytes(b"weights")
    (out / "last_checkpoint").write_text("model_0000000.pth")
    return out


def _snapshot(folder):
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.mark.parametrize(
    "opts, key",
    [
        (("MODEL.ROI_BOX_HEAD.IIF.VARIANT", "base10"), "MODEL.ROI_BOX_HEAD.IIF.VARIANT"),
        (("SOLVER.IMS_PER_BATCH", "4"), "SOLVER.IMS_PER_BATCH"),
        (("SOLVER.MAX_ITER", "1"), "SOLVER.MAX_ITER"),
        (("MODEL.ROI_BOX_HEAD.IIF.ENABLED", "False"), "MODEL.ROI_BOX_HEAD.IIF.ENABLED"),
    ],
)
def test_resume_with_another_config_is_refused_before_writing(tmp_path, opts, key):
    from iif_d2.engine.config_files import RunConfigError
    from iif_d2.engine.trainer import setup

    out = _run_folder(tmp_path)
    before = _snapshot(out)
    with pytest.raises(RunConfigError) as e:
        setup(_args(out, *opts))
    message = str(e.value)
    assert "\n" not in message and f"started with {key} " in message
    assert "another OUTPUT_DIR" in message and str(out / "config.yaml") in message
    assert _snapshot(out) == before  # nothing in the folder was touched


def test_resume_another_config_file_is_refused(tmp_path):
    from iif_d2 import resolve_training_set
    from iif_d2.engine.config_files import RunConfigError, load_config
    from iif_d2.engine.run_folder import check_resume_config

    out = _run_folder(tmp_path)
    softmax = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant.yaml")
    with pytest.raises(RunConfigError, match="MODEL.ROI_BOX_HEAD.IIF.ENABLED"):
        check_resume_config(load_config(_args(out, config=softmax)), resolved=False)
    # what may change on a resume: workers, threads, checkpoint period, evaluation
    same = _args(out, "DATALOADER.NUM_WORKERS", "2", "SOLVER.CHECKPOINT_PERIOD", "7",
                 "TEST.EVAL_PERIOD", "3", "NUM_THREADS", "1")  # fmt: skip
    check_resume_config(resolve_training_set(load_config(same)))
    # a run folder moved elsewhere (its saved files' paths name the old place) resumes too
    moved = tmp_path / "moved"
    os.rename(out, moved)
    check_resume_config(resolve_training_set(load_config(_args(moved)), resume=True))


def test_eval_only_refuses_a_model_that_loaded_no_weights(tmp_path):
    from detectron2.modeling import build_model

    from iif_d2 import resolve_training_set
    from iif_d2.engine.config_files import RunConfigError, load_config
    from iif_d2.engine.run_folder import check_eval_weights
    from iif_d2.engine.trainer import checkpointer_for

    out = tmp_path / "run"
    out.mkdir()
    cfg = resolve_training_set(load_config(_args(out)))
    model = build_model(cfg)
    # empty MODEL.WEIGHTS
    with pytest.raises(RunConfigError, match="set MODEL.WEIGHTS"):
        check_eval_weights(checkpointer_for(model, cfg), cfg, resume=False)
    # --resume with an unreadable checkpoint (and no other): not the config's initialisation
    (out / "model_final.pth").write_bytes(b"truncated")
    (out / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(RunConfigError, match="no readable checkpoint"):
        check_eval_weights(checkpointer_for(model, cfg), cfg, resume=True)
    # a backbone alone (an ImageNet initialisation): the heads would be random
    state = model.state_dict()
    torch.save({"model": {k: v for k, v in state.items() if "backbone" in k}}, out / "bb.pth")
    cfg.MODEL.WEIGHTS = str(out / "bb.pth")
    with pytest.raises(RunConfigError, match=r"holds no weights for \d+ of the model's"):
        check_eval_weights(checkpointer_for(model, cfg), cfg, resume=False)
    # a whole model loads
    torch.save({"model": state}, out / "model_final.pth")
    assert check_eval_weights(checkpointer_for(model, cfg), cfg, resume=True).endswith(
        "model_final.pth"
    )


@pytest.mark.slow
def test_finished_run_resumes_to_its_final_model(tmp_path):
    """Killed while it saved model_final.pth (its last periodic checkpoint written, as
    detectron2 writes one at MAX_ITER - 1): --resume trains nothing and writes model_final.pth
    from that checkpoint; a MAX_ITER below the checkpoint's is refused. The run's files are
    mode 0644, no periodic checkpoint duplicates model_final.pth, a killed save's temporary
    file is removed at the next start."""
    from iif_d2.engine.config_files import RunConfigError
    from iif_d2.engine.trainer import Trainer, setup

    out = tmp_path / "run"
    opts = ("SOLVER.CHECKPOINT_PERIOD", "1", "MODEL.ROI_BOX_HEAD.FASA.ENABLED", "True",
            "DATASETS.TEST", "()")  # fmt: skip
    old_umask = os.umask(0o022)
    try:
        cfg = setup(_args(out, *opts, resume=False))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    finally:
        os.umask(old_umask)
    names = sorted(p.name for p in out.iterdir())
    assert "model_0000000.pth" in names and "model_final.pth" in names
    assert "model_0000001.pth" not in names  # the last iteration: model_final.pth only
    for name in ("model_final.pth", "last_checkpoint", "config.yaml", "iif_class_stats.json",
                 "iif_heldout.json", "model_0000000.pth"):  # fmt: skip
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
    final = _weights(out)

    # the state a kill during the final save leaves (as detectron2's PeriodicCheckpointer saves)
    os.replace(out / "model_final.pth", out / "model_0000001.pth")
    (out / "last_checkpoint").write_text("model_0000001.pth")
    stale = out / ".model_final.pth.999999999.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    cfg = setup(_args(out, *opts))
    assert not stale.exists()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    trainer.train()
    _assert_equal(_weights(out), final)

    # a checkpoint past MAX_ITER: refused (config.yaml gone: the trainer's own check)
    (out / "config.yaml").unlink()
    cfg = setup(_args(out, *opts, "SOLVER.MAX_ITER", "1"))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    with pytest.raises(RunConfigError, match="past SOLVER.MAX_ITER 1"):
        trainer.train()

    # a bare model as the last checkpoint (no iteration, optimizer, schedule): not resumed
    torch.save({"model": final, "iteration": "seven"}, out / "model_0000005.pth")
    (out / "last_checkpoint").write_text("model_0000005.pth")
    (out / "config.yaml").unlink()
    trainer = Trainer(setup(_args(out, *opts)))
    with pytest.raises(RunConfigError, match="holds no trainer state"):
        trainer.resume_or_load(resume=True)

    # --eval-only in the run's folder, with an iif_d2:// config: the run's config.yaml stays
    # as it was; the evaluation's (and its log.txt) go beside its results, in inference/
    (out / "config.yaml").write_text(cfg.dump())
    before = _snapshot(out)["config.yaml"]
    config = "iif_d2://quick_schedules/mask_rcnn_R_18_FPN_instant_iif.yaml"
    evaluate = (*opts, "DATASETS.TEST", "('iif_synthetic_tiny_val',)",
                "TEST.DETECTIONS_PER_IMAGE", "10")  # fmt: skip
    setup(_args(out, *evaluate, resume=False, eval_only=True, config=config))
    assert _snapshot(out)["config.yaml"] == before
    assert "DETECTIONS_PER_IMAGE: 10" in (out / "inference" / "config.yaml").read_text()
    assert (out / "inference" / "log.txt").exists()


@pytest.mark.slow
def test_train_net_one_line_errors(tmp_path):
    """The command: --eval-only without weights, a FIFO or non-UTF-8 last_checkpoint, a
    resume into another config's folder: exit 2, one line on stderr, no traceback."""
    out = _run_folder(tmp_path)
    (out / "last_checkpoint").unlink()
    os.mkfifo(out / "last_checkpoint")
    base = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", CONFIG]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cases = [
        (["--eval-only", "OUTPUT_DIR", str(tmp_path / "e")], "set MODEL.WEIGHTS"),
        (["--resume", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"], "is not a regular file"),
        (["--resume", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "3"], "SOLVER.MAX_ITER 2"),
    ]
    for args, message in cases:
        r = subprocess.run([*base, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)  # fmt: skip
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]
    (out / "last_checkpoint").unlink()
    (out / "last_checkpoint").write_bytes(b"model_\xe9.pth")
    args = [*base, "--resume", "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2"]
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 2 and "is not UTF-8 text" in r.stderr.strip().splitlines()[-1]


def test_stale_temporary_files_are_removed_only_when_their_writer_is_gone(tmp_path):
    from iif_d2.engine.run_folder import remove_stale_temporary_files

    dead = tmp_path / ".model_final.pth.999999999.0123abcd.tmp"
    live = tmp_path / f".model_0000004.pth.{os.getppid()}.89abcdef.tmp"  # a running process
    other = tmp_path / "notes.tmp"  # not a name atomic_write gives
    for path in (dead, live, other):
        path.write_bytes(b"x")
    assert remove_stale_temporary_files(str(tmp_path)) == [str(dead)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


@pytest.mark.parametrize("iteration", ["0", None, 1.5, True, -5])
def test_a_trainer_state_without_an_iteration_number_is_refused(iteration):
    """A checkpoint whose trainer state's iteration is not an iteration number is not resumed
    (detectron2 would add 1 to it: a TypeError, or a run that starts anywhere)."""
    from iif_d2.engine.trainer import Trainer

    with pytest.raises(ValueError, match="is not an iteration number"):
        Trainer.load_state_dict(None, {"iteration": iteration, "hooks": {}})
