"""``python -m iif_d2.cli``: weights and counts from files and registered datasets."""

import json
import os
import subprocess
import sys

import pytest
from helpers import ctrl_c_in, sigint_as_at_a_terminal

from iif_d2.cli import main


def test_counts_file_prints_weights(capsys):
    assert main(["--counts-file", "iif_d2://lvis_v1_train.csv", "--variant", "raw"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split("\t") == ["0", "aerosol_can", "64", "109", "7.3557"]
    assert lines[-1].split("\t")[1:] == ["__background__", "", "", "1.0000"]


def test_iof_and_save(tmp_path, capsys):
    out = tmp_path / "w.json"
    args = ["--counts-file", "iif_d2://lvis_v1_train.csv", "--variant", "base10"]
    assert main([*args, "--frequency", "instance", "--save", str(out)]) == 0
    data = json.loads(out.read_text())
    assert round(data["weights"]["base10"][0], 4) == 4.0664
    assert data["stats"]["num_images"] == 100170 and len(data["weights"]["base10"]) == 1204


def test_all_variants_of_registered_dataset(capsys):
    assert main(["--dataset", "iif_synthetic_tiny_train", "--all-variants"]) == 0
    header = capsys.readouterr().out.splitlines()[1].split("\t")
    assert header[4:] == [
        f"{v}-{f}"
        for f in ("IIF", "IOF")
        for v in ("raw", "smooth", "relative", "base2", "base10", "gombit", "normit")
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--counts-file", "iif_d2://coco_train2017.csv", "--variant", "normit"], "person"),
        (["--counts-file", "iif_d2://coco_train2017.csv", "--variant", "cubic"], "Valid variants"),
        (["--counts-file", "/no/such/file.csv"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_message(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--all-variants", "--variant", "base10"],
            "--variant base10 and --all-variants exclude each other",
        ),
        (
            ["--all-variants", "--frequency", "instance", "--allow-nonpositive"],
            "--frequency instance and --allow-nonpositive and --all-variants exclude each other",
        ),
        (["--save", "w.json/"], "--save w.json/ ends in '/': give a file name (w.json, no '/')"),
        (["--save", "new/"], "--save new/ ends in '/': give a file name; folder new does not"),
    ],
)
def test_ignored_settings_and_folder_names_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--counts-file", "iif_d2://coco_train2017.csv", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: {message}"), captured.err
    assert captured.err.count("\n") == 1 and os.listdir(tmp_path) == []


def test_yaml_config_as_counts_file_is_named(capsys):
    config = "configs/quick_schedules/Base-instant.yaml"
    assert main(["--counts-file", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --counts-file {config} looks like a YAML config; pass it ")
    assert "with --config-file" in err and err.count("\n") == 1


def test_ctrl_c_prints_one_line(capsys):
    """Ctrl-C while the counts are read: "interrupted", exit status 130, no traceback."""

    with ctrl_c_in("load_counts_file"):
        assert main(["--counts-file", "iif_d2://coco_train2017.csv"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.slow
def test_ctrl_c_while_importing_prints_one_line():
    """The command's handler, installed before detectron2's imports (seconds): SIGINT at any
    point gives "interrupted" and exit status 130, no traceback."""
    code = (
        "import os, signal, time\n"
        "from iif_d2.utils.cli_checks import interrupt_exits_quietly\n"
        "interrupt_exits_quietly()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(60)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        preexec_fn=sigint_as_at_a_terminal,
    )  # fmt: skip
    assert (r.returncode, r.stderr, r.stdout) == (130, "interrupted\n", "")


def test_config_file_settings(capsys):
    cfg = "configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_12e_iof_base10.yaml"
    opts = ["MODEL.CLASS_COUNTS.SOURCE", "file"]
    opts += ["MODEL.CLASS_COUNTS.FILE", "iif_d2://lvis_v1_train.csv"]
    assert main(["--config-file", cfg, *opts]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("4.0664")


def test_command_exits_2_with_one_line_and_keeps_the_save_file(tmp_path):
    """``python -m iif_d2.cli``: a bad argument is one line on stderr (no traceback), exit 2,
    and an existing --save file is not touched."""
    out = tmp_path / "w.json"
    out.write_text("previous")
    cmd = [sys.executable, "-m", "iif_d2.cli", "--dataset", "no_such_dataset"]
    r = subprocess.run([*cmd, "--save", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --dataset 'no_such_dataset'")
    assert out.read_text() == "previous"


def test_save_is_atomic_and_round_trips(tmp_path, capsys):
    out = tmp_path / "w.json"
    assert main(["--counts-file", "iif_d2://coco_train2017.csv", "--save", str(out)]) == 0
    assert os.listdir(tmp_path) == ["w.json"]  # no temporary file left
    from iif_d2.data.class_stats import load_counts_file

    assert load_counts_file(str(out)).num_images == 118287


def test_save_onto_the_input_is_refused(tmp_path, capsys, monkeypatch):
    """--save naming the --counts-file (or the --config-file), also through a symlink or a
    relative path: exit 2, one line, the input unchanged."""
    counts = tmp_path / "counts.csv"
    counts.write_text("id,name,image_count,instance_count\n1,a,2,3\n2,b,1,1\n")
    before = counts.read_text()
    (tmp_path / "link.csv").symlink_to(counts)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    for save in (str(counts), "link.csv", "./counts.csv"):
        assert main(["--counts-file", str(counts), "--save", save]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is the input" in err
    config = tmp_path / "c.yaml"
    config.write_text("MODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 2\n")
    assert main(["--config-file", "c.yaml", "--save", str(config)]) == 2
    assert counts.read_text() == before and sorted(os.listdir(tmp_path)) == [
        "c.yaml",
        "counts.csv",
        "link.csv",
    ]


def test_config_file_goes_through_the_checked_loader(tmp_path, capsys):
    """--config-file: a _BASE_ web address is never fetched, a YAML list is refused."""
    cases = {
        "url.yaml": ("_BASE_: http://127.0.0.1:9/base.yaml\n", "never fetched"),
        "list.yaml": ("- MODEL\n", "not a mapping of config keys"),
        "tag.yaml": ("MODEL: !!python/object/apply:os.system ['true']\n", "python/object/apply"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["--config-file", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --config-file ") and message in err and err.count("\n") == 1
