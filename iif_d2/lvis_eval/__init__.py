"""LVIS evaluation with exactly lvis-api's metrics, in bounded time and memory.

Two engines:

* ``"fast"`` (:func:`~iif_d2.lvis_eval.engine.evaluate`): numpy plus pycocotools' C IoU,
  detections held as arrays and RLE strings, walking only the (image, category) pairs that hold
  detections or ground truth;
* ``"lvis-api"`` (:func:`~iif_d2.lvis_eval.reference.lvis_api_evaluate`): ``lvis==0.5.3``, the
  reference.

Both apply lvis-api's rules and quirks (listed in :mod:`iif_d2.lvis_eval.engine`), notably:
detections whose segmentation mask is empty (area 0) are dropped, after the per-image cut to
the 300 highest scores. The functions return lvis-api's fractions (-1 where undefined); the
command line, ``python -m iif_d2.lvis_eval --help``, and the training evaluator report percent
(:mod:`iif_d2.lvis_eval.report`).
"""

from iif_d2.lvis_eval.data import LVISDetections, LVISGroundTruth, read_results
from iif_d2.lvis_eval.engine import evaluate, summarize
from iif_d2.lvis_eval.reference import lvis_api_evaluate

__all__ = [
    "ENGINES",
    "LVISDetections",
    "LVISGroundTruth",
    "evaluate",
    "evaluate_results",
    "lvis_api_evaluate",
    "read_results",
    "summarize",
]

ENGINES = ("fast", "lvis-api")


def evaluate_results(gt, results: list, iou_type: str, engine: str = "fast", max_dets=300):
    """Metrics of lvis-api-format results (fractions, lvis-api's key names).

    Args:
        gt: an LVIS annotation json path or its parsed dict.
        results: lvis-api's results list (dicts with image_id, category_id, score, bbox and/or
            segmentation).
        iou_type: "bbox" or "segm".
        engine: "fast" or "lvis-api".
        max_dets: detections kept per image.

    Returns:
        dict of metric name to value.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {ENGINES}.")
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type {iou_type!r} is not one of 'bbox', 'segm'.")
    if engine == "lvis-api":
        return lvis_api_evaluate(gt, results, iou_type, max_dets)
    load = LVISGroundTruth.from_json if isinstance(gt, str) else LVISGroundTruth.from_dict
    gt = load(gt, with_masks=iou_type == "segm")
    dets = LVISDetections.from_results(results, iou_type, gt)
    return summarize(evaluate(gt, dets, iou_type, max_dets))
