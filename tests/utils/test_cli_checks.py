"""iif_d2.utils.cli_checks: the path, number and device checks every command shares."""

import argparse
import os

import pytest
import torch

from iif_d2.utils.cli_checks import (
    UsageError,
    check_device,
    check_input_file,
    check_output_file,
    check_output_folder,
    finite_float,
    one_line,
    positive_float,
    positive_int,
)


def test_input_files(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    check_input_file(str(tmp_path / "a.json"), "--gt")
    os.mkfifo(tmp_path / "pipe")  # reading it would block
    for path, match in (
        (tmp_path, r"--gt .* is a directory; give a json file \(a file\)"),
        (tmp_path / "no.json", "does not exist; give a json file"),
        (tmp_path / "pipe", r"is not a regular file \(a pipe or device\?\)"),
        ("/dev/null", "is not a regular file"),
    ):
        with pytest.raises(UsageError, match=match):
            check_input_file(str(path), "--gt", "a json file")


def test_output_files(tmp_path):
    (tmp_path / "in.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "in.json")
    check_output_file(str(tmp_path / "out.json"), "--json-out", [str(tmp_path / "in.json")])
    for path, match in (
        (tmp_path, "is a directory; give a file name, e.g. out.json"),
        (tmp_path / "no" / "o.json", "folder .*no does not exist; create it first"),
        (tmp_path / "in.json" / "o.json", "in.json is a file, not a folder"),
        (tmp_path / "link.json", "is the input file .*in.json; it would be overwritten"),
        ("/dev/null", "/dev/null is not a regular file"),  # atomic writes would replace it
    ):
        with pytest.raises(UsageError, match=match):
            check_output_file(str(path), "--json-out", [str(tmp_path / "in.json")])


def test_output_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "f").write_text("")
    check_output_folder(str(tmp_path / "new" / "deeper"), "--output")  # made when needed
    for path, match in (
        (tmp_path / "f", "is a file; give a folder"),
        (tmp_path / "f" / "sub", "f is a file, not a folder"),
        (tmp_path / "images", "is the input folder"),
    ):
        with pytest.raises(UsageError, match=match):
            check_output_folder(str(path), "--output", [str(tmp_path / "images")])


def test_numbers():
    assert positive_int("3") == 3 and finite_float("-1.5") == -1.5 and positive_float("2") == 2
    bad = [(positive_int, "0"), (positive_int, "1.5"), (finite_float, "nan"),
           (finite_float, "inf"), (positive_float, "0"), (positive_float, "x")]  # fmt: skip
    for parse, text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_devices():
    assert check_device("cpu") == "cpu"
    assert check_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="'tpu' is not a device; use cpu or cuda"):
        check_device("tpu")
    with pytest.raises(UsageError, match="only cpu and cuda"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU is available here; use --device cpu"):
            check_device("cuda")
    else:
        with pytest.raises(UsageError, match="GPU"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def test_one_line():
    assert one_line(KeyError("a 'b'")) == "a 'b'"
    assert one_line(ValueError("first\n  second\n\n")) == "first; second"


def test_a_link_to_nothing_is_named(tmp_path):
    os.symlink(tmp_path / "l1", tmp_path / "l2")
    os.symlink(tmp_path / "l2", tmp_path / "l1")
    with pytest.raises(UsageError, match="--weights .*l1 is a symbolic link to nothing"):
        check_input_file(str(tmp_path / "l1"), "--weights", "a checkpoint")
