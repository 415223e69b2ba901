"""Datasets shipped with iif-d2: class-count files and SynthLT, a synthetic long-tailed set in
LVIS v1 format, registered like detectron2's builtins under ``$DETECTRON2_DATASETS``
(default ``./datasets``) and generated on first use:

* ``synthlt_train`` / ``synthlt_val``: 24 classes, imbalance 150, 128 px (demo, benchmark);
* ``iif_synthetic_tiny_train`` / ``_val``: 8 classes, 96 px (tests, quick schedules).
"""

import os

from .synthetic import SynthSpec, class_names, register_synthetic_lvis

__all__ = ["SynthSpec", "class_names", "register_synthetic_lvis", "SYNTHLT", "SYNTHLT_TINY"]

SYNTHLT = SynthSpec()
SYNTHLT_TINY = SynthSpec(
    num_classes=8, max_images=12, imbalance=6.0, classes_per_image=2.0,
    val_images_per_class=2, image_size=96, distractors=2,
)  # fmt: skip


def _register_builtin():
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    register_synthetic_lvis("synthlt", os.path.join(root, "synthlt"), SYNTHLT)
    register_synthetic_lvis("iif_synthetic_tiny", os.path.join(root, "synthlt_tiny"), SYNTHLT_TINY)


_register_builtin()
