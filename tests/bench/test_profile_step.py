"""dev/profile_step.py on the instant IIF Mask R-CNN: the step's split and the operator table."""

import os
import re
import subprocess
import sys

import pytest
from helpers import DEV, ROOT

TOOL = os.path.join(DEV, "profile_step.py")
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant_iif.yaml")


@pytest.mark.slow
def test_profile_step_splits_a_step_and_lists_operators():
    cmd = [sys.executable, TOOL, "--config-file", CONFIG, "--threads", "1", "--warmup", "1",
           "--steps", "2", "--profile-steps", "1", "--top", "5"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = re.search(
        r"threads 1, 2 steps: ([\d.]+) s/step wall \(forward ([\d.]+) = \d+%, backward ([\d.]+) "
        r"= \d+%, optimizer ([\d.]+) = \d+%\), ([\d.]+) CPU s/step",
        proc.stdout,
    )
    assert line, proc.stdout[-2000:]
    total, fwd, bwd, opt, cpu = map(float, line.groups())
    assert fwd > 0 and bwd > 0 and abs(fwd + bwd + opt - total) < 2e-3 + 0.01 * total
    assert cpu > 0
    assert "Self CPU" in proc.stdout and "aten::" in proc.stdout  # the profiler's table
    assert "Input Shapes" not in proc.stdout


@pytest.mark.slow
def test_profile_step_by_shape_names_each_convolution():
    cmd = [sys.executable, TOOL, "--config-file", CONFIG, "--threads", "1", "--warmup", "0",
           "--steps", "1", "--profile-steps", "1", "--top", "400", "--by-shape"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Input Shapes" in proc.stdout
    # the ResNet stem's 7x7 kernel (64 x 3 x 7 x 7) appears as a row of its own
    assert re.search(r"convolution\b.*\[64, 3, 7, 7\]", proc.stdout), proc.stdout[-3000:]


def test_profile_step_bad_arguments():
    proc = subprocess.run([sys.executable, TOOL, "--config-file", CONFIG, "--steps", "0"],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2 and "--steps" in proc.stderr
