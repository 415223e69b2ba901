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
    ["tools/demo", "dev/benchmark_speed", "dev/benchmark_synthlt", "dev/rehearse_schedules"],
)
def test_tools_help_is_complete_and_quiet(script):
    """--help shows the script's whole description (not a first line cut mid-sentence), and
    detectron2's import prints no torch.jit.script deprecation."""
    path = os.path.join(ROOT, f"{script}.py")
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


def test_package_description_renders_alone():
    """The index page is the package description: no links into the repository."""
    import re

    readme = _pyproject()["readme"]
    with open(os.path.join(ROOT, readme["file"])) as f:
        text = f.read()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all(link.startswith("https://") for link in links), links
    assert len(text.splitlines()) < 60


@pytest.mark.slow
def test_a_wheel_ships_the_configs_and_the_trainer_command(tmp_path):
    """A wheel built from the clone, installed in a new environment (torch and detectron2 seen
    from this one, not iif-d2), finds the recipe config inside the package and starts it: the
    first thing it stops at is LVIS missing from $DETECTRON2_DATASETS, in one line."""
    import glob
    import shutil
    import venv

    # built from a copy: the build writes build/ and *.egg-info beside the sources
    source = tmp_path / "source"
    skip = (
        ".git",
        ".venv",
        "datasets",
        ".datasets",
        "output",
        "build",
        "*.egg-info",
        "__pycache__",
    )
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skip, ".*_cache"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(wheels)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # this environment's packages, but not its editable iif-d2 (.pth files there stay unread)
    ours = [p for p in sys.path if p.endswith("site-packages")]
    with open(os.path.join(site, "outer.pth"), "w") as f:
        f.write("\n".join(ours) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q",
         *glob.glob(str(wheels / "*.whl"))],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    recipe = "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_24e_recipe_torchvision.yaml"
    code = f"from iif_d2 import model_zoo; print(model_zoo.get_config_file({recipe!r}))"
    found = subprocess.run(
        [python, "-c", code],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert found.startswith(site) and os.path.isfile(found)
    run = subprocess.run(
        [str(env_dir / "bin" / "iif-train"), "--config-file", f"iif_d2://{recipe}",
         "MODEL.DEVICE", "cpu"],  # not this machine's GPU (or none): the dataset is tested
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets")},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert "Traceback" not in run.stderr
    assert last.startswith("error: DATASETS.TRAIN 'lvis_v1_train'") and "lvisdataset.org" in last
