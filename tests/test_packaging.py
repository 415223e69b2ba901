"""Packaging metadata (one version, the license file, dependencies and extras) and the tools'
command lines."""

import ast
import os
import subprocess
import sys
from importlib import metadata

import pytest

import iif_d2

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_version_has_a_single_source():
    assert _pyproject()["version"] == iif_d2.__version__


def test_license_file_is_apache_2():
    project = _pyproject()
    assert project["license"] == "Apache-2.0"
    (name,) = project["license-files"]
    with open(os.path.join(ROOT, name)) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "Copyright 2026 The iif-d2 authors" in text


def test_dependencies_have_no_exact_pins():
    project = _pyproject()
    requirements = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    # exact pins break installs next to other packages; ruff uses ``==X.*``
    assert not [r for r in requirements if "==" in r and not r.endswith(".*")]
    assert "lvis>=0.5.3" in project["dependencies"]
    assert "scikit-learn" in project["optional-dependencies"]["dev"]


def test_installed_metadata_matches_pyproject():
    """The environment's iif-d2 was installed from this pyproject.toml (re-run
    ``pip install -e '.[dev]'`` after changing it)."""
    project = _pyproject()
    meta = metadata.metadata("iif-d2")
    assert meta["Version"] == project["version"]
    assert meta["License-Expression"] == "Apache-2.0"
    assert set(metadata.requires("iif-d2")) >= set(project["dependencies"])


@pytest.mark.parametrize(
    "script",
    ["demo", "benchmark", "benchmark_fasa", "benchmark_class_stats", "benchmark_synthlt"],
)
def test_tools_help_is_complete_and_quiet(script):
    """--help shows the script's whole description (not a first line cut mid-sentence), and
    detectron2's import prints no torch.jit.script deprecation."""
    path = os.path.join(ROOT, "tools", f"{script}.py")
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    r = subprocess.run(
        [sys.executable, path, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    # every line of the docstring's last paragraph is in the help (argparse keeps it verbatim)
    for line in doc.strip().split("\n\n")[-1].splitlines():
        assert line.strip() in r.stdout
