"""dev/install_env.py and the Makefile never change an environment the project does not own:
pointed at another one (``VENV=/other/env make test``) set-up checks it read-only, uses it when
it has everything, and otherwise stops with one line naming what is missing."""

import os
import site
import subprocess
import sys

import pytest
from helpers import DEV, ROOT

INSTALL_ENV = os.path.join(DEV, "install_env.py")


def _snapshot(folder):
    """Every path under ``folder`` with its size and modification time."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return out


def _venv(path):
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
        check=True,
    )
    return path


def _install_env(venv):
    return subprocess.run(
        [sys.executable, INSTALL_ENV, "--venv", str(venv)], capture_output=True, text=True,
        cwd=ROOT, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_an_environment_without_detectron2_is_refused_and_left_alone(tmp_path):
    env = _venv(tmp_path / "env")
    before = _snapshot(env)
    r = _install_env(env)
    assert r.returncode == 1
    message = r.stderr.strip()
    assert "\n" not in message, message
    assert "is not this project's .venv" in message and "detectron2" in message
    assert "nothing was changed" in message
    assert _snapshot(env) == before
    # the same through the Makefile: no stamp or anything else written there
    r = subprocess.run(["make", "-s", "install", f"VENV={env}"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)  # fmt: skip
    assert r.returncode != 0 and "lacks detectron2" in r.stderr
    assert _snapshot(env) == before


@pytest.mark.slow
def test_an_environment_with_everything_is_used_as_it_is(tmp_path):
    """An environment that sees this project's packages (detectron2, pytest) and imports
    iif-d2 from the clone: accepted, and nothing in it changes."""
    env = _venv(tmp_path / "env")
    lib = next((env / "lib").iterdir()) / "site-packages"
    (lib / "project_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    before = _snapshot(env)
    r = _install_env(env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "as it is" in r.stdout and "nothing installed or repaired there" in r.stdout
    assert _snapshot(env) == before


def test_a_missing_environment_is_one_line():
    r = _install_env("/nonexistent/env")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "no /nonexistent/env/bin/python" in r.stderr
