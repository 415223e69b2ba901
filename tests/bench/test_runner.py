"""iif_d2.bench.runner: the one train_net.py runner of the demo, the SynthLT benchmark and the
rehearsal (its command, the subprocess with its log, time to the first iteration, memory and
time limit, and the progress line)."""

import io
import os
import sys

import pytest

from iif_d2.bench import runner


def test_the_train_net_command():
    cmd = runner.train_net_command("c.yaml", "out", ["SEED", "1"], device="cpu")
    assert cmd == [sys.executable, runner.TRAIN_NET, "--config-file", "c.yaml", "--resume",
                   "OUTPUT_DIR", "out", "MODEL.DEVICE", "cpu", "SEED", "1"]  # fmt: skip
    cmd = runner.train_net_command("c.yaml", "out", eval_only=True, launcher=["wrap.py", "--"])
    assert cmd == [sys.executable, "wrap.py", "--", "--config-file", "c.yaml", "--eval-only",
                   "OUTPUT_DIR", "out"]  # fmt: skip


def test_plain_progress_lines_carry_the_prefix_and_every_update_at_interval_0():
    stream = io.StringIO()
    p = runner.Progress("configs", 3, "config", stream=stream, prefix="[rehearse]", interval=0)
    p.update(1, "a.yaml: ok")
    p.update(2, "b.yaml: FAILED")
    p.close()  # not at the end: the last state is printed once more
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[rehearse] configs 1/3 (33%)") and "a.yaml: ok" in lines[0]
    assert "2/3" in lines[1] and "b.yaml: FAILED" in lines[1] and "ETA" in lines[1]
    assert len(lines) == 3 and "\r" not in stream.getvalue()


@pytest.mark.slow
def test_a_run_logs_its_output_and_times_its_first_iteration(tmp_path):
    code = ("import time; print('Starting training from iteration 0', flush=True); "
            "time.sleep(0.5); print('done')")  # fmt: skip
    seen = []
    log = str(tmp_path / "log.txt")
    res = runner.run_process([sys.executable, "-c", code], log, follower=seen.append, poll_s=0.1)
    assert res.returncode == 0 and not res.timed_out
    assert res.seconds_to_first_iter is not None
    assert 0 < res.seconds_to_first_iter < res.seconds
    assert seen == ["Starting training from iteration 0", "done"]
    assert open(log).read() == "Starting training from iteration 0\ndone\n"
    assert res.peak_rss_mb > 1


@pytest.mark.slow
def test_a_run_past_its_time_limit_is_killed(tmp_path):
    log = str(tmp_path / "log.txt")
    res = runner.run_process(
        [sys.executable, "-c", "import time; time.sleep(60)"], log, timeout=1, poll_s=0.1
    )
    assert res.timed_out and res.returncode != 0 and res.seconds < 30
    assert res.seconds_to_first_iter is None and os.path.exists(log)
