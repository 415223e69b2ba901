"""Real processes: CPU workers die with their launcher, a stalled rank's collective timeout
names the rank, and one OUTPUT_DIR admits one writer (``iif_d2.engine.run_lock``)."""

import os
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from iif_d2.engine.launch import CollectiveTimeoutError, collective_timeout, launch
from iif_d2.engine.run_lock import (
    LOCK_FILENAME,
    OutputDirInUseError,
    OutputDirLock,
    acquire_output_dir,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_LOCK = os.path.join(REPO, "iif_d2", "engine", "run_lock.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO, PYTHONWARNINGS="ignore")


def _alive(pid: int) -> bool:
    """Running (a zombie, never reaped where PID 1 does not reap, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate, seconds: float, what: str):
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


# rank 0 blocks inside a gloo barrier (C++, 30 min timeout) and rank 1 carries on after an
# interrupt: torch's own death signal (SIGINT) stops neither
LAUNCHER = textwrap.dedent(
    """
    import os, sys, time
    import torch.distributed as dist
    from iif_d2.engine.launch import launch

    def work(folder):
        with open(os.path.join(folder, f"{os.getpid()}.pid"), "w") as f:
            f.write("ready")
        if dist.get_rank() == 0:
            dist.barrier()
        while True:
            try:
                time.sleep(120)
            except KeyboardInterrupt:
                pass

    if __name__ == "__main__":
        launch(work, 2, backend="gloo", args=(sys.argv[1],))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.slow
def test_workers_exit_when_launcher_is_killed(tmp_path):
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    pids = tmp_path / "pids"
    pids.mkdir()
    launcher = subprocess.Popen([sys.executable, str(script), str(pids)], env=ENV)
    try:
        _wait_for(lambda: len(os.listdir(pids)) == 2, 25, "two workers to start")
        workers = [int(name.split(".")[0]) for name in os.listdir(pids)]
        assert all(_alive(pid) for pid in workers)  # sleeping for 120 s
    finally:
        launcher.kill()  # SIGKILL: no cleanup in the launcher
        launcher.wait()
    try:
        _wait_for(lambda: not any(_alive(p) for p in workers), 5, f"workers {workers} to exit")
    finally:  # leave no orphan behind when the check fails
        for pid in filter(_alive, workers):
            os.kill(pid, 9)


def _stalled_rank_one():
    if dist.get_rank() == 1:
        time.sleep(20)  # never reaches the barrier in time
    dist.barrier()


@pytest.mark.slow
def test_stalled_rank_times_out_with_its_rank_named():
    start = time.monotonic()
    with pytest.raises(Exception) as e:
        launch(_stalled_rank_one, 2, backend="gloo", timeout=1.5)
    message = str(e.value)
    assert "CollectiveTimeoutError: Rank 0 of 2 waited more than 0:00:01.500000" in message
    assert "another rank did not get there" in message and "IIF_D2_DIST_TIMEOUT" in message
    assert time.monotonic() - start < 18  # rank 1 was stopped, not waited for


def test_collective_timeout_setting(monkeypatch):
    monkeypatch.delenv("IIF_D2_DIST_TIMEOUT", raising=False)
    assert collective_timeout() == timedelta(minutes=30)
    monkeypatch.setenv("IIF_D2_DIST_TIMEOUT", "90")
    assert collective_timeout() == timedelta(seconds=90)
    assert collective_timeout(timedelta(seconds=5)) == timedelta(seconds=5)
    monkeypatch.setenv("IIF_D2_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="IIF_D2_DIST_TIMEOUT = 'soon'"):
        collective_timeout()
    with pytest.raises(ValueError, match="seconds > 0"):
        collective_timeout(0)
    assert not issubclass(CollectiveTimeoutError, ValueError)


HOLDER = textwrap.dedent(
    """
    import importlib.util, sys

    # the module alone (no torch import through the package): a fast start
    spec = importlib.util.spec_from_file_location("run_lock", sys.argv[2])
    run_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_lock)
    run_lock.acquire_output_dir(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes stdin or kills this process
    """
)


def _holder(folder):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), RUN_LOCK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=ENV,
        text=True,
    )
    assert p.stdout.readline().strip() == "locked"
    return p


@pytest.mark.slow
def test_second_writer_is_refused_with_holder_named(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(OutputDirInUseError) as e:
            OutputDirLock(str(tmp_path)).acquire()
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(e.value)
        assert "another OUTPUT_DIR" in str(e.value)
        second = subprocess.run(  # a second process is refused too
            [sys.executable, "-c", HOLDER, str(tmp_path), RUN_LOCK],
            capture_output=True,
            text=True,
            env=ENV,
            stdin=subprocess.DEVNULL,
        )
        assert second.returncode != 0 and f"pid {holder.pid}" in second.stderr
    finally:
        holder.kill()  # no release: the kernel drops the lock of a dead process
        holder.wait()
    with OutputDirLock(str(tmp_path)) as lock:
        assert lock.held and str(os.getpid()) in (tmp_path / LOCK_FILENAME).read_text()
    assert (tmp_path / LOCK_FILENAME).read_text() == ""


def test_lock_within_one_process(tmp_path):
    first = acquire_output_dir(str(tmp_path / "run"))
    assert acquire_output_dir(str(tmp_path / "run")) is first  # setup called twice: fine
    with pytest.raises(OutputDirInUseError, match=f"pid {os.getpid()}"):
        OutputDirLock(str(tmp_path / "run")).acquire()  # another handle is another writer
    first.release()
    assert acquire_output_dir(str(tmp_path / "run")).held
    acquire_output_dir(str(tmp_path / "run")).release()
    with pytest.raises(ValueError, match="OUTPUT_DIR is empty"):
        OutputDirLock("")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_gpus_per_machine": 0}, "give at least one of each"),
        ({"num_gpus_per_machine": 2, "num_machines": 0}, "give at least one of each"),
        ({"num_gpus_per_machine": 2, "num_machines": 2, "machine_rank": 2}, "it is 0 to 1"),
        ({"num_gpus_per_machine": 1, "machine_rank": -1}, "it is 0 to 0"),
    ],
)
def test_launch_refuses_counts_that_do_nothing_or_wait_forever(kwargs, message):
    called = []
    with pytest.raises(ValueError, match=message):
        launch(called.append, backend="gloo", args=(1,), **kwargs)
    assert called == []
