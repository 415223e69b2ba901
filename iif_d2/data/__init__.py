"""Datasets shipped with iif-d2: class-count files, SynthLT (a synthetic long-tailed set) and
LVIS-shaped (a synthetic set with LVIS v1's exact per-class counts), in LVIS v1 format,
registered like detectron2's builtins under ``$DETECTRON2_DATASETS`` (default ``./datasets``)
and generated on first use:

* ``synthlt_train`` / ``synthlt_val``: 24 classes, imbalance 150, 497 train / 492 val
  images of 128 px (demo, benchmark);
* ``iif_synthetic_tiny_train`` / ``_val``: 8 classes, 96 px (tests, quick schedules);
* ``fashionlt_train`` / ``fashionlt_val``: 10 classes of real Fashion-MNIST garments, imbalance
  100, 437 train / 352 val images of 128 px (the benchmark on real appearance; needs the
  Fashion-MNIST files, read on first use);
* ``fashionlt_tiny_train`` / ``_val``: the same classes, 96 px, a few images (tests);
* ``lvis_shaped_train`` / ``_val``: 100,170 / 19,809 images, the 1203 classes of LVIS v1 with
  exactly its image and instance counts, 32-128 px (the LVIS-scale rehearsal);
* ``lvis_shaped_mini_train`` / ``_val``: 2,000 / 200 images over the same 1203 classes (many
  with a single training image), for the test suite.
"""

import os

from iif_d2.data.fashion_lt import FashionLTSpec, register_fashion_lt
from iif_d2.data.lvis_shaped import (
    LVIS_SHAPED,
    LVIS_SHAPED_MINI,
    LVISShapedSpec,
    register_lvis_shaped,
)
from iif_d2.data.synthlt import SynthSpec, class_names, register_synthetic_lvis

__all__ = [
    "SynthSpec",
    "FashionLTSpec",
    "FASHIONLT",
    "FASHIONLT_TINY",
    "register_fashion_lt",
    "class_names",
    "register_synthetic_lvis",
    "SYNTHLT",
    "SYNTHLT_TINY",
    "LVISShapedSpec",
    "LVIS_SHAPED",
    "LVIS_SHAPED_MINI",
    "register_lvis_shaped",
]

SYNTHLT = SynthSpec()
SYNTHLT_TINY = SynthSpec(
    num_classes=8, max_images=12, imbalance=6.0, classes_per_image=2.0,
    val_images_per_class=2, image_size=96, distractors=2,
)  # fmt: skip
FASHIONLT = FashionLTSpec()
FASHIONLT_TINY = FashionLTSpec(
    max_images=12, imbalance=6.0, classes_per_image=2.0, val_images_per_class=2,
    image_size=96, min_item=20, max_item=48,
)  # fmt: skip


def _register_builtin():
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    register_synthetic_lvis("synthlt", os.path.join(root, "synthlt"), SYNTHLT)
    register_synthetic_lvis("iif_synthetic_tiny", os.path.join(root, "synthlt_tiny"), SYNTHLT_TINY)
    register_fashion_lt("fashionlt", os.path.join(root, "fashionlt"), FASHIONLT)
    register_fashion_lt("fashionlt_tiny", os.path.join(root, "fashionlt_tiny"), FASHIONLT_TINY)
    register_lvis_shaped("lvis_shaped", os.path.join(root, "lvis_shaped"), LVIS_SHAPED)
    register_lvis_shaped("lvis_shaped_mini", os.path.join(root, "lvis_shaped"), LVIS_SHAPED_MINI)


_register_builtin()
