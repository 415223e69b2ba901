"""Fashion-MNIST-LT: the profile, the IDX reader, where the files are looked for, and a tiny
training run on real images (skipped where the files are not installed)."""

import gzip
import os

import numpy as np
import pytest
import torch

from iif_d2.classification import fashion_mnist as fm
from iif_d2.classification.adjust import LogitAdjustment
from iif_d2.classification.train import SmallCNN, evaluate, train

PROFILE = [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
HAVE_FILES = fm._files_in(fm.DEBIAN_DIR) is not None
NEEDS_FILES = pytest.mark.skipif(
    not HAVE_FILES, reason=f"Fashion-MNIST not installed (apt-get install {fm.DEBIAN_PACKAGE})"
)


def test_long_tail_profile():
    counts = fm.long_tail_counts()
    assert counts == PROFILE
    assert sum(counts) == 14886 and counts[0] / counts[-1] == 100
    assert fm.long_tail_counts(500, 100, 100)[-1] == 5  # CIFAR-100-LT's ends


def test_long_tail_indices_take_the_first_images_in_file_order():
    labels = torch.tensor([1, 0, 1, 0, 0, 1, 2, 2])
    assert fm.long_tail_indices(labels, [2, 1, 1]).tolist() == [0, 1, 3, 6]
    with pytest.raises(ValueError, match="Class 2 has 2 images"):
        fm.long_tail_indices(labels, [1, 1, 3])


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_set(folder, gz):
    os.makedirs(folder, exist_ok=True)
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    for stem in fm._STEMS.values():
        shape = (6, 28, 28) if "images" in stem else (6,)
        _write_idx(os.path.join(folder, stem + ext), rng.integers(0, 10, shape))


def test_read_idx_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        _write_idx(str(tmp_path / name), arr)
        assert np.array_equal(fm.read_idx(str(tmp_path / name)), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic number"):
        fm.read_idx(str(tmp_path / "bad"))


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    _fake_set(str(tmp_path / "d2" / "fashion_mnist"), gz=True)
    _fake_set(str(tmp_path / "user" / "FashionMNIST" / "raw"), gz=False)  # torchvision layout
    found = fm.find_fashion_mnist(str(tmp_path / "user"), debian_dir=str(tmp_path / "none"))
    assert found["source"].startswith("given folder") and not found["train_images"].endswith(".gz")
    found = fm.find_fashion_mnist(None, debian_dir=str(tmp_path / "none"))
    assert found["source"].startswith("$DETECTRON2_DATASETS")


def test_not_found_is_one_line_naming_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    with pytest.raises(fm.FashionMNISTNotFound) as err:
        fm.find_fashion_mnist(str(tmp_path / "mine"), debian_dir=str(tmp_path / "none"))
    msg = str(err.value)
    assert "\n" not in msg
    for way in ("apt-get install dataset-fashion-mnist", "$DETECTRON2_DATASETS/fashion_mnist"):
        assert way in msg
    assert "--download" in msg and "--data-root" in msg


@NEEDS_FILES
def test_fashion_mnist_lt_from_the_debian_files():
    data = fm.load_fashion_mnist()
    assert torch.bincount(data["train_y"]).tolist() == PROFILE
    assert torch.bincount(data["test_y"]).tolist() == [1000] * 10
    assert data["train_x"].shape == (14886, 1, 28, 28) and float(data["train_x"].max()) <= 1.0
    assert fm.ensure_debian_package().startswith("Fashion-MNIST: found in")


@NEEDS_FILES
def test_tiny_training_run_learns():
    torch.set_num_threads(1)
    files = fm.find_fashion_mnist()
    x = torch.from_numpy(fm.read_idx(files["train_images"])[:600].astype(np.float32) / 255)
    y = torch.from_numpy(fm.read_idx(files["train_labels"])[:600].astype(np.int64))
    tx = torch.from_numpy(fm.read_idx(files["test_images"])[:500].astype(np.float32) / 255)
    ty = torch.from_numpy(fm.read_idx(files["test_labels"])[:500].astype(np.int64))
    counts = torch.bincount(y, minlength=10).tolist()
    adj = LogitAdjustment("iif", counts, strategy="end_to_end", variant="smooth")
    torch.manual_seed(0)
    model = train(SmallCNN(10, 8), x.unsqueeze(1), y, adj, epochs=2, seed=0, batch_size=32)
    with torch.no_grad():
        acc = evaluate(model(tx.unsqueeze(1)), ty, adj, counts)["top1"]
    assert acc > 40.0  # chance is 10 %
