#!/usr/bin/env python3
"""Create (or reuse) the project's virtual environment and install everything it needs.

Run by ``make test`` / ``make demo``; safe to run again (each step is skipped when done).

Only the project's own environment (``.venv`` in the clone) is ever changed. Pointed at another
environment (``VENV=/my/env make test``), set-up only checks it, read-only: it is used as it is
when detectron2 imports there, iif-d2 imports from this clone and pytest is installed; otherwise
set-up stops with one line naming what is missing and the fix, and changes nothing there.

detectron2 is taken, in this order, from:
  1. a detectron2 already importable in the environment;
  2. its official source (current main), built with ``--no-build-isolation``, when reachable;
  3. the PyPI sdist ``pb1-detectron2==0.6`` (detectron2 v0.6's Python sources), checked against
     its sha256 and installed *without* compiled ops.

Whichever it is, the installed detectron2 is then repaired where it cannot import in this
environment, so that ``import detectron2.engine`` works with or without iif-d2 (see
:func:`repair_detectron2`): a pure-Python ``detectron2/_C.py`` whose every op raises a clear
error is written where the compiled ops are missing, and v0.6's use of ``PIL.Image.LINEAR``
(removed in Pillow 10; the same filter as ``Image.BILINEAR``) is rewritten.
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
# Written as detectron2/_C.py where detectron2 has no compiled ops: every op raises an error
# naming the fix. The informational queries of detectron2.utils.collect_env answer "none".
MISSING_OPS_MODULE = '''\
"""Written by iif-d2's dev/install_env.py: this detectron2 was installed without its
compiled ops (no deformable convolution, no rotated boxes, no C++ COCO evaluation). Calling
one raises MissingCompiledOpError."""

import torch

IIF_D2_PLACEHOLDER = True
_FIX = (
    "Install detectron2 with its compiled ops from its official source: "
    "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'`."
)


class MissingCompiledOpError(RuntimeError):
    """A detectron2 C++/CUDA op was called, but detectron2 was installed without them."""


def _missing(name):
    return MissingCompiledOpError(
        f"detectron2 op `{name}` is a compiled op, and this detectron2 was installed without "
        f"compiled ops. {_FIX}"
    )


def get_compiler_version():
    return "none: detectron2 installed without compiled ops"


def get_cuda_version():
    return "none"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise _missing(name)


# ops reached through torch.ops.detectron2 rather than this module
_LIBRARY = torch.library.Library("detectron2", "DEF")
_LIBRARY.define("nms_rotated(Tensor dets, Tensor scores, float iou) -> Tensor")


def _nms_rotated(dets, scores, iou):
    raise _missing("nms_rotated")


_LIBRARY.impl("nms_rotated", _nms_rotated, "CompositeExplicitAutograd")
'''
# v0.6 uses Image.LINEAR as a default argument; Pillow 10 removed that alias of BILINEAR.
PILLOW_FIXES = {
    "data/transforms/transform.py": ("interp=Image.LINEAR", "interp=Image.BILINEAR"),
}
HAS_OPS_CHECK = "import detectron2._C as C; assert 'IIF_D2_PLACEHOLDER' not in vars(C)"
PURE_PYTHON_SETUP = """\
# Written by iif-d2's dev/install_env.py: detectron2 v0.6 without its C++ extension.
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
    # v0.6 without ops imports only once repaired (repair_detectron2): the package tells
    return succeeds([py, "-c", "import importlib.util as u; assert u.find_spec('detectron2')"])


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


def repair_detectron2(py: Path):
    """Make the installed detectron2 importable here without run-time patching (idempotent)."""
    where = subprocess.run(
        [py, "-c", "import importlib.util as u; print(u.find_spec('detectron2').origin)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    package = Path(where).parent
    compiled = [p for p in package.glob("_C*") if p.suffix in (".so", ".pyd")]
    placeholder = package / "_C.py"
    if not compiled and not placeholder.exists():
        placeholder.write_text(MISSING_OPS_MODULE)
        log(f"wrote {placeholder}: detectron2 has no compiled ops; calling one raises an error.")
    for rel, (old, new) in PILLOW_FIXES.items():
        path = package / rel
        if path.exists() and old in path.read_text():
            path.write_text(path.read_text().replace(old, new))
            log(f"{path}: {old} -> {new} (Pillow >= 10 has no Image.LINEAR)")


def ensure_detectron2(py: Path, allow_official: bool):
    if detectron2_importable(py):
        source = "already installed"
    elif allow_official and install_official(py):
        source = f"official source ({OFFICIAL_SOURCE}, current main)"
    else:
        install_sdist(py)
        source = f"PyPI sdist {SDIST_REQ} (detectron2 v0.6 Python sources, no compiled ops)"
    log(f"detectron2: {source}")
    repair_detectron2(py)
    has_ops = succeeds([py, "-c", HAS_OPS_CHECK])
    if not has_ops:
        log(f"detectron2 has no compiled ops; missing: {FALLBACK_LACKS}.")


# another environment: what must import there (name, check, fix)
FOREIGN_CHECKS = (
    ("detectron2", "import detectron2.engine",
     "install detectron2 there (docs/install.md), or run make without VENV to use .venv"),
    ("iif-d2 from this clone",
     "import os, iif_d2; assert os.path.dirname(os.path.abspath(iif_d2.__file__)) == "
     "os.path.join(os.getcwd(), 'iif_d2'), iif_d2.__file__",
     f"pip install -e '{ROOT}[dev]' there"),
    ("pytest", "import pytest", "pip install pytest there"),
)  # fmt: skip


def is_own(venv: Path) -> bool:
    """Whether ``venv`` is the project's own environment (the only one set-up changes)."""
    return venv.resolve() == (ROOT / ".venv").resolve()


def check_foreign(venv: Path) -> Path:
    """Check another environment read-only (each check imports in a subprocess run from the
    clone); its python if everything imports.

    Raises:
        SystemExit: a one-line message naming what is missing and the fix.
    """
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(
            f"[install_env] VENV={venv}: no {py}; point VENV at a virtual environment, or run "
            "make without VENV to use the project's own .venv (nothing was changed)"
        )
    missing = [
        (name, fix)
        for name, check, fix in FOREIGN_CHECKS
        if subprocess.run([py, "-c", check], cwd=ROOT, capture_output=True).returncode != 0
    ]
    if missing:
        raise SystemExit(
            f"[install_env] VENV={venv} is not this project's .venv and set-up does not change "
            f"it; it lacks {', '.join(n for n, _ in missing)}: "
            + "; ".join(f"{fix}" for _, fix in missing)
            + " (nothing was changed)"
        )
    log(f"using {venv} as it is (not this project's .venv: nothing installed or repaired there)")
    return py


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument(
        "--no-official-source",
        action="store_true",
        help="skip trying detectron2's official source (use the PyPI sdist fallback)",
    )
    args = parser.parse_args()
    if not is_own(args.venv):
        check_foreign(args.venv)
        return
    py = ensure_venv(args.venv)
    ensure_torch(py)
    ensure_detectron2(py, allow_official=not args.no_official_source)
    run([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"])
    ensure_fashion_mnist(py)
    log("environment ready: " + str(args.venv))


def ensure_fashion_mnist(py):
    """Fashion-MNIST's original files (Debian's dataset-fashion-mnist, for the classification
    benchmark and tests) where root and apt are present; says what it did, never fails."""
    code = "from iif_d2.classification.fashion_mnist import ensure_debian_package as f; print(f())"
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=ROOT)
    lines = (out.stdout.strip() or out.stderr.strip() or "no output").splitlines()
    log(lines[-1])


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
