"""Datasets shipped with iif-d2: class-count files and a synthetic long-tailed LVIS-format set."""

from .synthetic import make_synthetic_lvis, register_synthetic_lvis

__all__ = ["make_synthetic_lvis", "register_synthetic_lvis"]


def _register_builtin():
    """Register the synthetic sets under ``$DETECTRON2_DATASETS`` (default ``./datasets``),
    generated on first use, like detectron2's builtin datasets."""
    import os

    root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "iif_synthetic_tiny")
    common = {"num_classes": 8, "imbalance": 10.0, "image_size": 96}
    register_synthetic_lvis(
        "iif_synthetic_tiny_train", root, split="train", num_images=24, seed=0, **common
    )
    register_synthetic_lvis(
        "iif_synthetic_tiny_val", root, split="val", num_images=8, seed=1, **common
    )


_register_builtin()
