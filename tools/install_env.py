#!/usr/bin/env python3
"""Create (or reuse) the project's virtual environment and install everything it needs.

Run by ``make test`` / ``make demo``; safe to run again (each step is skipped when done).

detectron2 is taken, in this order, from:
  1. a detectron2 already importable in the environment;
  2. its official source (current main), built with ``--no-build-isolation``, when reachable;
  3. the PyPI sdist ``pb1-detectron2==0.6`` (detectron2 v0.6's Python sources), checked against
     its sha256 and installed *without* compiled ops.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_SOURCE = "https://github.com/facebookresearch/detectron2.git"
SDIST_REQ = "pb1-detectron2==0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# What the sdist fallback lacks, printed so nobody is surprised later.
FALLBACK_LACKS = (
    "deformable convolution, rotated boxes/ROIAlignRotated/NMS-rotated, "
    "and the C++ COCO evaluation (pycocotools' Python evaluation is used instead)"
)
# The sdist's own install_requires, minus black==21.4b2 (only for LazyConfig.save's
# formatting; it does not install on current Pythons) and the Python<3.7 backport.
SDIST_REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "future",
    "pydot",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]
PURE_PYTHON_SETUP = """\
# Written by iif-d2's tools/install_env.py: detectron2 v0.6 without its C++ extension.
from setuptools import find_packages, setup

setup(
    name="pb1-detectron2",
    version="0.6",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    python_requires=">=3.7",
    install_requires={requires!r},
)
"""


def log(msg):
    print(f"[install_env] {msg}", flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def succeeds(cmd, timeout=None):
    try:
        r = subprocess.run(
            [str(c) for c in cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def ensure_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        run([sys.executable, "-m", "venv", venv])
        # detectron2 (v0.6 and main) imports pkg_resources, removed in setuptools 81.
        run([py, "-m", "pip", "install", "-q", "--upgrade", "pip<26", "wheel", "setuptools<81"])
    return py


def ensure_torch(py: Path):
    if succeeds([py, "-c", "import torch, torchvision"]):
        return
    # torch depends on an unbounded setuptools: keep it below 81 (pkg_resources) in the same step
    run([py, "-m", "pip", "install", "torch", "torchvision", "setuptools<81"])


def detectron2_importable(py: Path) -> bool:
    return succeeds([py, "-c", "import detectron2.config"]) or succeeds(
        # v0.6 without ops needs iif_d2.compat's shims to import; the package tells.
        [py, "-c", "import importlib.util as u; assert u.find_spec('detectron2')"]
    )


def install_official(py: Path) -> bool:
    if not succeeds(["git", "ls-remote", OFFICIAL_SOURCE, "HEAD"], timeout=20):
        log("detectron2's official source cannot be reached from here.")
        return False
    try:
        run([py, "-m", "pip", "install", "--no-build-isolation", f"git+{OFFICIAL_SOURCE}"])
    except subprocess.CalledProcessError:
        log("Building detectron2 from its official source failed; falling back.")
        return False
    return True


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def install_sdist(py: Path):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run(
            [py, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            + ["--no-build-isolation", "-d", tmp, SDIST_REQ]
        )
        (archive,) = tmp.glob("*.tar.gz")
        digest = sha256(archive)
        if digest != SDIST_SHA256:
            raise SystemExit(
                f"{archive.name} has sha256 {digest}, expected {SDIST_SHA256}: "
                "refusing to install it. Install detectron2 from its official source instead."
            )
        log(f"{archive.name}: sha256 verified")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp / "src", filter="data")
        (src,) = (tmp / "src").iterdir()
        (src / "setup.py").write_text(PURE_PYTHON_SETUP.format(requires=SDIST_REQUIRES))
        run([py, "-m", "pip", "install", "--no-build-isolation", src])


def ensure_detectron2(py: Path, allow_official: bool):
    if detectron2_importable(py):
        source = "already installed"
    elif allow_official and install_official(py):
        source = f"official source ({OFFICIAL_SOURCE}, current main)"
    else:
        install_sdist(py)
        source = f"PyPI sdist {SDIST_REQ} (detectron2 v0.6 Python sources, no compiled ops)"
    log(f"detectron2: {source}")
    has_ops = succeeds([py, "-c", "import detectron2._C"])
    if not has_ops:
        log(f"detectron2 has no compiled ops; missing: {FALLBACK_LACKS}.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument(
        "--no-official-source",
        action="store_true",
        help="skip trying detectron2's official source (use the PyPI sdist fallback)",
    )
    args = parser.parse_args()
    py = ensure_venv(args.venv)
    ensure_torch(py)
    ensure_detectron2(py, allow_official=not args.no_official_source)
    run([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"])
    log("environment ready: " + str(args.venv))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
