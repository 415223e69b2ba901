"""The reference engine: lvis-api (``lvis==0.5.3``) itself."""

import copy

__all__ = ["lvis_api_evaluate"]


def _lvis_from_dict(data: dict):
    import logging

    from lvis import LVIS

    lvis = LVIS.__new__(LVIS)
    lvis.logger = logging.getLogger("lvis.lvis")
    lvis.dataset = data
    lvis._create_index()
    return lvis


def lvis_api_evaluate(gt, results: list, iou_type: str, max_dets: int = 300) -> dict:
    """lvis-api's metrics (fractions, lvis-api's key names).

    Args:
        gt: an LVIS annotation json path or its parsed dict (not modified).
        results: lvis-api's results list (not modified: lvis-api edits a copy).
        iou_type: "bbox" or "segm".
        max_dets: detections kept per image.

    Returns:
        dict of metric name to value (-1 where undefined).
    """
    from lvis import LVIS, LVISEval, LVISResults

    # imported here: iif_d2.utils.compat looks detectron2 (and so torch) up when imported
    from iif_d2.utils.compat import numpy_float_alias

    if not results:
        raise ValueError("lvis-api cannot evaluate an empty results list.")
    lvis_gt = LVIS(gt) if isinstance(gt, str) else _lvis_from_dict(copy.deepcopy(gt))
    with numpy_float_alias():
        res = LVISResults(lvis_gt, copy.deepcopy(results), max_dets=max_dets)
        ev = LVISEval(lvis_gt, res, iou_type)
        ev.params.max_dets = max_dets  # names the AR keys only
        ev.run()
    return {k: float(v) for k, v in ev.results.items()}
