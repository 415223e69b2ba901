"""Fashion-MNIST and its long-tailed version Fashion-MNIST-LT (docs/method.md §5.1).

Fashion-MNIST-LT is built as CIFAR-10-LT (Cui et al., 2019): class i keeps the first
``n_i = int(6000 · 100^(-i/9))`` of its training images in file order (6,000 … 60, 14,886 in
all; imbalance ratio 100), classes in their label order (0 T-shirt/top the most frequent,
9 ankle boot the rarest). The test set is the untouched, balanced 10,000 images. Nothing is
random: every seed sees the same images.

The IDX files are looked for, in order, in: the folder given by the user (the files themselves,
or torchvision's ``<root>/FashionMNIST/raw`` layout), ``$DETECTRON2_DATASETS/fashion_mnist``
(or ``.../FashionMNIST/raw``), the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), and, with ``download=True``, torchvision's download.
"""

import gzip
import logging
import os
import shutil
import subprocess
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "DEBIAN_PACKAGE",
    "FashionMNISTNotFound",
    "ensure_debian_package",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "long_tail_counts",
    "long_tail_indices",
    "read_idx",
]

logger = logging.getLogger(__name__)

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class FashionMNISTNotFound(FileNotFoundError):
    """No Fashion-MNIST IDX files in any of the places looked at."""


def long_tail_counts(n_max: int = 6000, num_classes: int = 10, imbalance: float = 100.0):
    """Per-class image counts of the exponential profile ``int(n_max · imbalance^(-i/(C-1)))``.

    Returns:
        list of C ints, non-increasing, from ``n_max`` to ``n_max / imbalance``.
    """
    if num_classes < 2 or n_max < 1 or imbalance < 1:
        raise ValueError(
            f"Need num_classes >= 2, n_max >= 1, imbalance >= 1; got {num_classes}, {n_max}, "
            f"{imbalance}."
        )
    return [int(n_max * imbalance ** (-i / (num_classes - 1))) for i in range(num_classes)]


def long_tail_indices(labels: Sequence[int], counts: Sequence[int]) -> torch.Tensor:
    """Indices of the first ``counts[c]`` images of each class c, in file order (sorted).

    Raises:
        ValueError: a class has fewer images than asked for.
    """
    labels = torch.as_tensor(labels)
    keep = []
    for c, n in enumerate(counts):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < n:
            raise ValueError(f"Class {c} has {idx.numel()} images, fewer than the {n} asked for.")
        keep.append(idx[:n])
    return torch.cat(keep).sort().values


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a numpy array (its own dtype and shape)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {arr.size} values for shape {shape}.")
    return arr.reshape(shape)


def _files_in(folder: str) -> Optional[dict]:
    """The four IDX paths in ``folder`` (each raw or .gz), or None if any is missing."""
    found = {}
    for key, stem in _STEMS.items():
        for name in (stem, stem + ".gz"):
            if os.path.isfile(os.path.join(folder, name)):
                found[key] = os.path.join(folder, name)
                break
        else:
            return None
    return found


def _candidates(root: Optional[str]) -> List[Tuple[str, str]]:
    places = []
    if root:
        places += [
            ("given folder", root),
            ("given folder", os.path.join(root, "FashionMNIST", "raw")),
        ]
    d2 = os.environ.get("DETECTRON2_DATASETS")
    if d2:
        for sub in ("fashion_mnist", "fashion-mnist", os.path.join("FashionMNIST", "raw")):
            places.append(("$DETECTRON2_DATASETS", os.path.join(d2, sub)))
    places.append(("Debian package", DEBIAN_DIR))
    return places


def find_fashion_mnist(
    root: Optional[str] = None, download: bool = False, debian_dir: Optional[str] = None
) -> dict:
    """Locate the four Fashion-MNIST IDX files.

    Args:
        root: a user-given folder (the files, or torchvision's ``<root>/FashionMNIST/raw``);
            also where torchvision downloads to with ``download``.
        download: let torchvision download the files (into ``root``, or
            ``~/.cache/iif_d2``) when no copy is found.
        debian_dir: override the Debian package's folder (tests).

    Returns:
        dict with keys train_images, train_labels, test_images, test_labels -> paths, and
        "source" naming where they were found.

    Raises:
        FashionMNISTNotFound: one line naming the three ways to get the files.
    """
    places = _candidates(root)
    if debian_dir is not None:
        places = [p if p[0] != "Debian package" else (p[0], debian_dir) for p in places]
    for source, folder in places:
        files = _files_in(folder)
        if files:
            files["source"] = f"{source}: {folder}"
            return files
    if download:
        target = root or os.path.join(os.path.expanduser("~"), ".cache", "iif_d2")
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(target, train=True, download=True)
            FashionMNIST(target, train=False, download=True)
        except Exception as e:  # no network, or torchvision's mirrors down
            logger.warning("torchvision could not download Fashion-MNIST: %s", e)
        files = _files_in(os.path.join(target, "FashionMNIST", "raw"))
        if files:
            files["source"] = f"torchvision download: {target}"
            return files
    looked = ", ".join(folder for _, folder in places)
    raise FashionMNISTNotFound(
        f"Fashion-MNIST IDX files not found (looked in {looked}); get them one of three ways: "
        f"`sudo apt-get install {DEBIAN_PACKAGE}` (Debian/Ubuntu), or put the four "
        "*-idx*-ubyte[.gz] files in a folder passed as --data-root or in "
        "$DETECTRON2_DATASETS/fashion_mnist, or pass --download to let torchvision fetch them."
    )


def load_fashion_mnist(root: Optional[str] = None, download: bool = False, **kwargs) -> dict:
    """Fashion-MNIST-LT training set and the balanced test set, as tensors.

    Args:
        root, download: as :func:`find_fashion_mnist`.
        **kwargs: ``n_max``, ``imbalance`` for :func:`long_tail_counts`.

    Returns:
        dict: ``train_x`` (N, 1, 28, 28) float in [0, 1], ``train_y`` (N,) int64,
        ``test_x``, ``test_y`` (10,000 images), ``counts`` (training images per class),
        ``source`` (where the files were found).
    """
    files = find_fashion_mnist(root, download)
    arrays = {k: read_idx(v) for k, v in files.items() if k != "source"}
    counts = long_tail_counts(num_classes=len(CLASSES), **kwargs)
    train_y = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    keep = long_tail_indices(train_y, counts)

    def images(a):
        return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)

    return {
        "train_x": images(arrays["train_images"][keep.numpy()]),
        "train_y": train_y[keep],
        "test_x": images(arrays["test_images"]),
        "test_y": torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        "counts": counts,
        "source": files["source"],
    }


def ensure_debian_package(run=subprocess.run) -> str:
    """Install the Debian package ``dataset-fashion-mnist`` where root and apt are present.

    For the project's set-up. Never fails: returns one line saying what it did.
    """
    if _files_in(DEBIAN_DIR):
        return f"Fashion-MNIST: found in {DEBIAN_DIR} ({DEBIAN_PACKAGE})."
    if shutil.which("apt-get") is None:
        return (
            "Fashion-MNIST: not installed (no apt-get here); see docs/method.md §5.1 for "
            "--data-root, $DETECTRON2_DATASETS/fashion_mnist or --download."
        )
    if os.geteuid() != 0:
        return f"Fashion-MNIST: not installed (needs root): sudo apt-get install {DEBIAN_PACKAGE}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE]):
        result = run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout or "").strip().splitlines()[-1:]
            return f"Fashion-MNIST: `{' '.join(cmd)}` failed: {' '.join(tail)}"
    if _files_in(DEBIAN_DIR):
        return f"Fashion-MNIST: installed {DEBIAN_PACKAGE} into {DEBIAN_DIR}."
    return f"Fashion-MNIST: {DEBIAN_PACKAGE} installed but no IDX files in {DEBIAN_DIR}."
