"""dev/benchmark_speed.py: every task starts from the one command and writes its report (a
reduced run: the timings themselves are the command's output, not asserted here)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import DEV, load_dev

SPEED = os.path.join(DEV, "benchmark_speed.py")


def _run_task(task, tmp_path, *args):
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(temp)}
    cmd = [sys.executable, SPEED, "--task", task, "--repeats", "3", "--warmup", "0"]
    cmd += ["--images", "1", "--output-dir", str(tmp_path), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # the configs' resolved class counts went to temporary folders, removed at exit
    assert not [p.name for p in temp.iterdir() if p.name.startswith("iif-d2-benchmark-")]
    return r.stdout


def _check_report(tmp_path, stem, names):
    report = json.load(open(tmp_path / f"{stem}.json"))
    assert report["threads"] == 1 and report["rounds"] == 3 and "cores" in report["machine"]
    assert [r["name"] for r in report["rows"]] == names
    for r in report["rows"]:
        for key in ("ratio", "control"):
            low, high = r[key]["interval"]
            assert low <= r[key]["median"] <= high
            assert r[key]["coverage"] == 0.75  # 3 rounds: min..max
        assert r["verdict"] in ("within noise", "slower", "faster")
    md = open(tmp_path / f"{stem}.md").read()
    assert "control A / A" in md and "- threads: 1" in md
    return report


@pytest.mark.slow
def test_head_task_reduced_run(tmp_path):
    out = _run_task("head", tmp_path, "--only", "head", "fcos", "--threads", "1")
    names = ["head train step", "head inference", "tiny FCOS train step"]
    names += ["tiny FCOS inference (w = 1)", "tiny FCOS inference (real w)"]
    report = _check_report(tmp_path, "speed_head", names)
    assert [r["headline"] for r in report["rows"]] == [True] * 4 + [False]
    assert "max ratio" in out and "(target <= 1.03)" in report["max ratio"]


@pytest.mark.slow
def test_fasa_task_reduced_run(tmp_path):
    _run_task("fasa", tmp_path)
    names = ["head train step", "head, all rates 1", "tiny recipe Mask R-CNN train step"]
    report = _check_report(tmp_path, "speed_fasa", names)
    assert report["sections"] == ["head", "model"]


@pytest.mark.slow
def test_kernels_task_reduced_run(tmp_path):
    """The RoIAlign rows (the LVIS-sized one outside the headline) and the SynthLT model rows,
    each with its control (speed itself is the script's output, not asserted here)."""
    out = _run_task("kernels", tmp_path, "--threads", "1")
    names = [
        "SynthLT box RoIAlign (32 x 32, C 64, 512 RoIs, 7 x 7) fwd + bwd",
        "SynthLT mask RoIAlign (32 x 32, C 64, 128 RoIs, 14 x 14) fwd + bwd",
        "LVIS box RoIAlign (100 x 168, C 256, 256 RoIs, 7 x 7) fwd + bwd",
        "SynthLT Mask R-CNN (fresh), 4 images: train step",
        "SynthLT Mask R-CNN (fresh), 4 images: inference",
    ]
    report = _check_report(tmp_path, "speed_kernels", names)
    assert [r["headline"] for r in report["rows"]] == [True, True, False, True, True]
    assert report["weights"] == "fresh initialisation" and "max ratio" in out
    r = subprocess.run(
        [sys.executable, SPEED, "--task", "kernels", "--weights", "nope.pth"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "--weights 'nope.pth' is not a file" in r.stderr


@pytest.mark.slow
def test_a_paired_run_is_added_to_a_records_file(tmp_path):
    records = tmp_path / "speed.json"
    _run_task("head", tmp_path, "--only", "head", "--record", str(records), "--label", "first")
    (run,) = json.load(open(records))["runs"]
    assert run["label"] == "first" and run["threads"] == 1 and run["kernels"] and run["commit"]
    assert "--task head" in run["command"]
    assert [r["name"] for r in run["rows"]] == ["head train step", "head inference"]


def test_a_record_replaces_the_run_of_its_label(tmp_path):
    speed = load_dev("benchmark_speed")
    path = str(tmp_path / "speed.json")
    for label, rounds in (("first", 1), ("second", 2), ("first", 3)):
        speed.add_speed_record(path, label, "cmd", {"rounds": rounds}, [])
    runs = json.load(open(path))["runs"]
    assert [(r["label"], r["rounds"]) for r in runs] == [("second", 2), ("first", 3)]


@pytest.mark.slow
def test_class_stats_and_checkpoint_tasks(tmp_path):
    r = subprocess.run([sys.executable, SPEED, "--task", "class-stats"], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "100,170 images, 1,270,141 annotations, 1203 classes counted in" in r.stdout
    cmd = [sys.executable, SPEED, "--task", "checkpoint", "--size-mb", "2", "--repeats", "2",
           "--dir", str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ratio atomic / plain" in r.stdout and "file system" in r.stdout
    assert os.listdir(tmp_path) == []  # its temporary folder removed


def test_bad_arguments_name_the_problem(capsys):
    speed = load_dev("benchmark_speed")
    for args, message in (
        (["--task", "head", "--only", "roi_align"], "--task head has head, model"),
        (["--task", "startup", "--record", "x.json"], "--record: only the paired tasks"),
        (["--task", "nope"], "invalid choice"),
        (["--task", "fasa", "--repeats", "0"], "--repeats and --threads must be >= 1"),
    ):
        with pytest.raises(SystemExit) as e:
            speed.main(args)
        said = capsys.readouterr().err + str(e.value.code)
        assert e.value.code not in (0, None) and message in said, (args, said)
