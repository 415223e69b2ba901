"""LVIS and COCO evaluators that work with this environment's libraries."""

import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator

from .compat import HAS_COMPILED_OPS, numpy_float_alias

__all__ = ["LVISEvaluator", "build_evaluator"]


class LVISEvaluator(_D2LVISEvaluator):
    """detectron2's :class:`LVISEvaluator`, runnable with numpy >= 1.24 (``lvis==0.5.3`` uses
    ``np.float``, provided only while this evaluates)."""

    def evaluate(self):
        with numpy_float_alias():
            return super().evaluate()


def build_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """The LVIS or COCO evaluator for a registered dataset, by its ``evaluator_type``.

    Args:
        cfg: the config (for OUTPUT_DIR and TEST.DETECTIONS_PER_IMAGE).
        dataset_name: a registered dataset with ``evaluator_type`` "lvis" or "coco".
        output_folder: where predictions are written (default ``OUTPUT_DIR/inference``).

    Returns:
        DatasetEvaluator
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    max_dets = cfg.TEST.DETECTIONS_PER_IMAGE
    if evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, output_dir=output_folder, max_dets_per_image=max_dets)
    if evaluator_type == "coco":
        # the C++ COCO evaluation is a compiled op; pycocotools' Python one otherwise
        return COCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            max_dets_per_image=max_dets,
            use_fast_impl=HAS_COMPILED_OPS,
        )
    raise ValueError(
        f"No evaluator for dataset {dataset_name!r} (evaluator_type {evaluator_type!r}); "
        "iif-d2 evaluates datasets registered with evaluator_type 'lvis' or 'coco'."
    )
