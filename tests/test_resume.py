"""Exact resume: a ``train_net.py`` run killed (SIGKILL) after a checkpoint and resumed with
``--resume`` ends with the uninterrupted run's weights, bit for bit (CPU, one thread), with
NUM_WORKERS 0 and 2, IIF and FASA on (ROI sampling and FASA draw from torch's generator)."""

import os
import signal
import subprocess
import sys
import time

import torch

from iif_d2.utils.machine import KERNEL_PINS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant_iif.yaml")
OPTS = [
    "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "4", "SEED", "7", "NUM_THREADS", "1",
    "DATASETS.TEST", "()",
    "MODEL.ROI_BOX_HEAD.FASA.ENABLED", "True",
    "MODEL.ROI_BOX_HEAD.FASA.START_ITER", "2",
    "MODEL.ROI_BOX_HEAD.FASA.ADAPT_PERIOD", "6",
]  # fmt: skip
TIMEOUT_S = 300


def _start(out, *extra, resume=False, workers=0, env=None):
    args = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", CONFIG]
    args += ["--resume"] if resume else []
    args += [*OPTS, "DATALOADER.NUM_WORKERS", str(workers), "OUTPUT_DIR", str(out), *extra]
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


# torch's portable kernels: ATen, oneDNN and MKL held below AVX2
PORTABLE_KERNELS = KERNEL_PINS["default"]


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
