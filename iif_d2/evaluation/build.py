"""``build_evaluator``: the LVIS or COCO evaluator a config asks for, its AP-fixed options
checked against the model's per-image cap."""

import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator

from iif_d2.evaluation.lvis_evaluator import LVIS_EVAL_ENGINES, FastLVISEvaluator, LVISEvaluator
from iif_d2.evaluation.score_floor import DENSE_DETECTORS, uses_score_floor
from iif_d2.utils.compat import has_compiled_ops

__all__ = ["build_evaluator"]


def _ap_fixed_options(cfg, evaluator_type) -> dict:
    """FastLVISEvaluator's AP-fixed arguments from ``TEST.AP_FIXED`` (checked against the
    model's per-image cap); {} where the node is absent (a config without iif-d2's keys)."""
    node = cfg.TEST.get("AP_FIXED")
    if node is None:
        return {}
    fixed_pooled = cfg.TEST.get("LVIS_EVAL_FIXED_POOLED", False)
    if not node.ENABLED:
        unused = [
            f"TEST.AP_FIXED.{k}"
            for k, default in (
                ("STANDARD_DETECTIONS_PER_IMAGE", 300),
                ("STANDARD_SCORE_THRESH", 1e-4),
                ("ADAPTIVE_FLOOR", True),
            )
            if node[k] != default
        ]
        if node.DETS_PER_CLASS != 10000 and not fixed_pooled:
            unused.append("TEST.AP_FIXED.DETS_PER_CLASS")
        if unused:
            raise ValueError(
                f"{', '.join(unused)} set, but TEST.AP_FIXED.ENABLED is off (and "
                "TEST.LVIS_EVAL_FIXED_POOLED for DETS_PER_CLASS): they would be ignored; enable "
                "it or drop them."
            )
        return {"dets_per_class": node.DETS_PER_CLASS}
    if evaluator_type != "lvis":
        raise ValueError(
            f"TEST.AP_FIXED.ENABLED evaluates LVIS datasets; this one's evaluator_type is "
            f"{evaluator_type!r}: turn it off."
        )
    cap, dense = cfg.TEST.DETECTIONS_PER_IMAGE, cfg.MODEL.META_ARCHITECTURE in DENSE_DETECTORS
    standard = node.STANDARD_DETECTIONS_PER_IMAGE
    if (cap == -1 and dense) or (cap != -1 and cap <= max(standard, 0)):
        fix = "a large number, e.g. 100000 (-1 drops one detection)" if dense else "-1"
        raise ValueError(
            f"TEST.AP_FIXED.ENABLED needs the model uncapped, not TEST.DETECTIONS_PER_IMAGE "
            f"{cap} ({cfg.MODEL.META_ARCHITECTURE}): set it to {fix}; the standard metrics "
            f"keep TEST.AP_FIXED.STANDARD_DETECTIONS_PER_IMAGE ({standard}) per image."
        )
    if node.DETS_PER_CLASS <= 0:
        raise ValueError(
            f"TEST.AP_FIXED.DETS_PER_CLASS {node.DETS_PER_CLASS} must be > 0 (10000 for LVIS)."
        )
    return {
        "max_dets_per_image": standard,
        "dets_per_class": node.DETS_PER_CLASS,
        "fixed_uncapped": True,
        "score_thresh": node.STANDARD_SCORE_THRESH,
        "score_floor": uses_score_floor(cfg),
    }


def build_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """The LVIS or COCO evaluator for a registered dataset, by its ``evaluator_type``.

    LVIS: :class:`FastLVISEvaluator` unless ``TEST.LVIS_EVAL_ENGINE`` is "lvis-api"
    (detectron2's evaluator running lvis-api); ``TEST.LVIS_EVAL_SAVE_RESULTS`` (default off)
    makes the fast one write the results json too; ``TEST.LVIS_EVAL_FIXED_POOLED`` adds AP-fixed
    and AP-pool on the standard per-image cut, ``TEST.AP_FIXED.ENABLED`` on the uncapped
    model's detections (the paper's), with the standard metrics from the same pass.

    Args:
        cfg: the config (OUTPUT_DIR, TEST.DETECTIONS_PER_IMAGE, TEST.LVIS_EVAL_*,
            TEST.AP_FIXED).
        dataset_name: a registered dataset with ``evaluator_type`` "lvis" or "coco".
        output_folder: where predictions are written (default ``OUTPUT_DIR/inference``).

    Returns:
        DatasetEvaluator
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    max_dets = cfg.TEST.DETECTIONS_PER_IMAGE
    ap_fixed = _ap_fixed_options(cfg, evaluator_type)
    if evaluator_type == "lvis":
        engine = cfg.TEST.get("LVIS_EVAL_ENGINE", "fast")
        if engine not in LVIS_EVAL_ENGINES:
            raise ValueError(
                f"TEST.LVIS_EVAL_ENGINE {engine!r} is not one of {LVIS_EVAL_ENGINES}: 'fast' "
                "(lvis-api's metrics in bounded memory) or 'lvis-api' (lvis-api itself)."
            )
        fixed_pooled = cfg.TEST.get("LVIS_EVAL_FIXED_POOLED", False)
        if engine == "lvis-api":
            if ap_fixed.get("fixed_uncapped") or fixed_pooled:
                raise ValueError(
                    "TEST.AP_FIXED.ENABLED and TEST.LVIS_EVAL_FIXED_POOLED need "
                    'TEST.LVIS_EVAL_ENGINE "fast"; lvis-api reports only the standard metrics.'
                )
            return LVISEvaluator(
                dataset_name, output_dir=output_folder, max_dets_per_image=max_dets
            )
        if ap_fixed.get("fixed_uncapped"):
            fixed_pooled = True
        else:
            ap_fixed["max_dets_per_image"] = max_dets
        return FastLVISEvaluator(
            dataset_name,
            output_dir=output_folder,
            save_results_json=cfg.TEST.get("LVIS_EVAL_SAVE_RESULTS", False),
            fixed_and_pooled=fixed_pooled,
            **ap_fixed,
        )
    if evaluator_type == "coco":
        # the C++ COCO evaluation is a compiled op; pycocotools' Python one otherwise
        return COCOEvaluator(
            dataset_name,
            output_dir=output_folder,
            max_dets_per_image=max_dets,
            use_fast_impl=has_compiled_ops(),
        )
    raise ValueError(
        f"No evaluator for dataset {dataset_name!r} (evaluator_type {evaluator_type!r}); "
        "iif-d2 evaluates datasets registered with evaluator_type 'lvis' or 'coco'."
    )
