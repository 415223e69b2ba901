"""LVIS and COCO evaluators that work with this environment's libraries.

:class:`FastLVISEvaluator` gives lvis-api's numbers (``TEST.LVIS_EVAL_ENGINE: "fast"``, the
default) in bounded memory; :class:`LVISEvaluator` is detectron2's, running lvis-api itself
(``"lvis-api"``).
"""

import itertools
import json
import logging
import os
from collections import OrderedDict

import numpy as np
import pycocotools.mask as mask_utils
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .compat import HAS_COMPILED_OPS, numpy_float_alias
from .lvis_eval import LVISDetections, LVISGroundTruth, evaluate, summarize
from .lvis_eval.devil import ap_fixed, ap_pooled

__all__ = ["FastLVISEvaluator", "LVIS_EVAL_ENGINES", "LVISEvaluator", "build_evaluator"]

logger = logging.getLogger(__name__)

LVIS_EVAL_ENGINES = ("fast", "lvis-api")
_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


class LVISEvaluator(_D2LVISEvaluator):
    """detectron2's :class:`LVISEvaluator`, runnable with numpy >= 1.24 (``lvis==0.5.3`` uses
    ``np.float``, provided only while this evaluates)."""

    def evaluate(self):
        with numpy_float_alias():
            return super().evaluate()


class FastLVISEvaluator(DatasetEvaluator):
    """LVIS bbox/segm evaluation with exactly lvis-api's metrics, in bounded memory.

    Each image's predictions are cut to the ``max_dets_per_image`` best scores (as lvis-api)
    and kept only for the classes the federated rules evaluate on that image (present, or in
    its ``neg_category_ids``), as arrays; masks are RLE-encoded only where a class is present
    (elsewhere only their area counts). Ranks gather these compact arrays. The results json
    (detectron2's ``lvis_instances_results.json``, ~0.5 GB per 5,000 images) is written only with
    ``save_results_json``; then every prediction is kept.
    """

    def __init__(
        self,
        dataset_name,
        tasks=None,
        distributed=True,
        output_dir=None,
        *,
        max_dets_per_image=None,
        save_results_json=False,
        fixed_and_pooled=False,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``json_file`` (LVIS format).
            tasks: ("bbox",), ("segm",) or both; default from the predictions.
            distributed: gather every rank's predictions to the main process.
            output_dir: where the results json goes (with ``save_results_json``).
            max_dets_per_image: detections per image (default 300, LVIS's).
            save_results_json: write ``lvis_instances_results.json`` to ``output_dir``.
            fixed_and_pooled: also report AP-fixed and AP-pool (Dave et al. 2021:
                :mod:`iif_d2.lvis_eval.devil`) on the same detections (10,000 per class).
        """
        self._tasks = tasks
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = 300 if max_dets_per_image is None else max_dets_per_image
        self._save = bool(save_results_json)
        self._fixed_and_pooled = bool(fixed_and_pooled)
        self._metadata = MetadataCatalog.get(dataset_name)
        self._json_file = PathManager.get_local_path(self._metadata.json_file)
        self._gt = LVISGroundTruth.from_json(self._json_file, with_masks=False)
        self._do_evaluation = len(self._gt.ann_id) > 0
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if mapping:
            self._class_to_cat = np.zeros(max(mapping.values()) + 1, dtype=np.int64)
            for cat_id, cls in mapping.items():
                self._class_to_cat[cls] = cat_id
        else:
            self._class_to_cat = None
        self._allowed = self._federated_classes()
        self.reset()

    def _federated_classes(self):
        """Per image id: (category ids evaluated there, category ids present there)."""
        gt = self._gt
        ok = (gt.ann_area > 0) & (gt.ann_area < np.inf)
        present = {}
        for img, cat in zip(gt.ann_img[ok].tolist(), gt.ann_cat_id[ok].tolist()):
            present.setdefault(img, set()).add(cat)
        offsets, values = gt.neg
        out = {}
        for i, img_id in enumerate(gt.img_ids.tolist()):
            pos = np.array(sorted(present.get(i, ())), dtype=np.int64)
            allowed = np.union1d(pos, values[offsets[i] : offsets[i + 1]])
            out[img_id] = (np.intersect1d(allowed, gt.cat_ids), pos)
        return out

    def reset(self):
        self._parts = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                raise ValueError(
                    "FastLVISEvaluator evaluates 'instances' only; for proposals set "
                    'TEST.LVIS_EVAL_ENGINE "lvis-api" (detectron2\'s LVISEvaluator).'
                )
            self._parts.append(self._compact(inp["image_id"], out["instances"].to("cpu")))

    def _compact(self, image_id, inst):
        """One image's predictions as arrays, cut and filtered as lvis-api would."""
        boxes = inst.pred_boxes.tensor.numpy().astype(np.float32).copy()
        boxes[:, 2:] -= boxes[:, :2]  # XYWH, in float32 as detectron2's BoxMode.convert
        scores = inst.scores.numpy().astype(np.float32)
        classes = inst.pred_classes.numpy()
        cats = self._class_to_cat[classes] if self._class_to_cat is not None else classes + 1
        order = np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))
        keep = np.sort(order[: self._max_dets]) if self._max_dets >= 0 else np.arange(len(order))
        has_mask = inst.has("pred_masks")
        if has_mask:
            mask_area = inst.pred_masks.flatten(1).sum(1).numpy().astype(np.float64)
        if not self._save and self._do_evaluation:
            if image_id not in self._allowed:
                raise ValueError(
                    f"Prediction for image_id {image_id}, which {self._json_file} does not "
                    "have: evaluate on the dataset whose annotations the evaluator loaded."
                )
            allowed, present = self._allowed[image_id]
            keep = keep[np.isin(cats[keep], allowed)]
        part = {
            "image_id": image_id,
            "category_id": cats[keep],
            "score": scores[keep],
            "bbox": boxes[keep],
        }
        if has_mask:
            part["mask_area"] = mask_area[keep]
            encode = keep
            if not self._save and self._do_evaluation:  # masks matter where the class is
                encode = keep[np.isin(cats[keep], present) & (mask_area[keep] > 0)]
            counts = {}
            if len(encode):
                masks = inst.pred_masks[torch.as_tensor(encode, dtype=torch.long)].numpy()
                masks = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
                counts = dict(zip(encode.tolist(), (r["counts"] for r in mask_utils.encode(masks))))
            part["rle_counts"] = [counts.get(k) for k in keep.tolist()]
            part["rle_size"] = tuple(inst.image_size)
        return part

    def _gather(self):
        if not self._distributed:
            return self._parts
        comm.synchronize()
        parts = comm.gather(self._parts, dst=0)
        return list(itertools.chain(*parts)) if comm.is_main_process() else None

    def evaluate(self):
        parts = self._gather()
        if parts is None:
            return None
        if len(parts) == 0:
            logger.warning("[FastLVISEvaluator] Did not receive valid predictions.")
            return {}
        has_mask = all("rle_counts" in p for p in parts)
        tasks = self._tasks or (("bbox", "segm") if has_mask else ("bbox",))
        if "segm" in tasks and not has_mask:
            raise ValueError("segm evaluation needs 'pred_masks' in every image's instances.")
        if self._save and self._output_dir:
            self._write_json(parts)
        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return OrderedDict()
        dets = _concat(parts, has_mask)
        if "segm" in tasks and self._gt.rles is None:
            self._gt.rles = LVISGroundTruth.from_json(self._json_file, with_masks=True).rles
        results = OrderedDict()
        for task in sorted(tasks):
            if task == "segm":
                dets_task = LVISDetections(
                    dets.image_id,
                    dets.category_id,
                    dets.score,
                    area=dets.mask_area,
                    rle_counts=dets.rle_counts,
                    rle_sizes=dets.rle_sizes,
                )
            else:
                dets_task = dets
            if len(dets_task) == 0:
                results[task] = {m: float("nan") for m in _METRICS}
                continue
            res = summarize(evaluate(self._gt, dets_task, task, self._max_dets))
            results[task] = {m: float(res[m] * 100) for m in _METRICS}
            if self._fixed_and_pooled:
                results[task]["AP-fixed"] = float(ap_fixed(self._gt, dets_task, task)["AP"] * 100)
                pooled = ap_pooled(self._gt, dets_task, task)
                results[task].update({k: float(v * 100) for k, v in pooled.items()})
            logger.info(f"Evaluation results for {task}: {results[task]}")
        return results

    def _write_json(self, parts):
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, "lvis_instances_results.json")
        logger.info(f"Saving results to {path}")
        with PathManager.open(path, "w") as f:
            f.write("[")
            first = True
            for p in parts:
                for k in range(len(p["score"])):
                    r = {
                        "image_id": p["image_id"],
                        "category_id": int(p["category_id"][k]),
                        "bbox": [float(v) for v in p["bbox"][k]],
                        "score": float(p["score"][k]),
                    }
                    if "rle_counts" in p:
                        r["segmentation"] = {
                            "size": list(p["rle_size"]),
                            "counts": p["rle_counts"][k].decode(),
                        }
                    f.write(("" if first else ",") + json.dumps(r))
                    first = False
            f.write("]")


def _concat(parts, has_mask) -> LVISDetections:
    """The gathered per-image parts as one :class:`LVISDetections` (box areas; mask areas in
    ``mask_area``)."""
    lengths = [len(p["score"]) for p in parts]
    bbox = np.concatenate([p["bbox"] for p in parts]).astype(np.float64).reshape(-1, 4)
    dets = LVISDetections(
        image_id=np.repeat([p["image_id"] for p in parts], lengths).astype(np.int64),
        category_id=np.concatenate([p["category_id"] for p in parts]).astype(np.int64),
        score=np.concatenate([p["score"] for p in parts]).astype(np.float64),
        area=bbox[:, 2] * bbox[:, 3],
        bbox=bbox,
    )
    if has_mask:
        dets.mask_area = np.concatenate([p["mask_area"] for p in parts])
        dets.rle_counts = [c for p in parts for c in p["rle_counts"]]
        dets.rle_sizes = np.repeat([p["rle_size"] for p in parts], lengths, axis=0).reshape(-1, 2)
    return dets


def build_evaluator(cfg, dataset_name: str, output_folder: str = None):
    """The LVIS or COCO evaluator for a registered dataset, by its ``evaluator_type``.

    LVIS: :class:`FastLVISEvaluator` unless ``TEST.LVIS_EVAL_ENGINE`` is "lvis-api"
    (detectron2's evaluator running lvis-api); ``TEST.LVIS_EVAL_SAVE_RESULTS`` (default off)
    makes the fast one write the results json too.

    Args:
        cfg: the config (OUTPUT_DIR, TEST.DETECTIONS_PER_IMAGE, TEST.LVIS_EVAL_ENGINE).
        dataset_name: a registered dataset with ``evaluator_type`` "lvis" or "coco".
        output_folder: where predictions are written (default ``OUTPUT_DIR/inference``).

    Returns:
        DatasetEvaluator
    """
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    max_dets = cfg.TEST.DETECTIONS_PER_IMAGE
    if evaluator_type == "lvis":
        engine = cfg.TEST.get("LVIS_EVAL_ENGINE", "fast")
        if engine not in LVIS_EVAL_ENGINES:
            raise ValueError(
                f"TEST.LVIS_EVAL_ENGINE {engine!r} is not one of {LVIS_EVAL_ENGINES}: 'fast' "
                "(lvis-api's metrics in bounded memory) or 'lvis-api' (lvis-api itself)."
            )
        if engine == "lvis-api":
            return LVISEvaluator(
                dataset_name, output_dir=output_folder, max_dets_per_image=max_dets
            )
        return FastLVISEvaluator(
            dataset_name,
            output_dir=output_folder,
            max_dets_per_image=max_dets,
            save_results_json=cfg.TEST.get("LVIS_EVAL_SAVE_RESULTS", False),
            fixed_and_pooled=cfg.TEST.get("LVIS_EVAL_FIXED_POOLED", False),
        )
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
