"""LVIS and COCO evaluators that work with this environment's libraries.

:class:`FastLVISEvaluator` gives lvis-api's numbers (``TEST.LVIS_EVAL_ENGINE: "fast"``, the
default) in bounded memory; :class:`LVISEvaluator` is detectron2's, running lvis-api itself
(``"lvis-api"``). For AP-fixed's uncapped inference, :func:`score_floors_attached` lends the
fast evaluator's per-class score floors to the R-CNN's ROI heads (:class:`ScoreFloorFilter`),
so that masks are computed only for the detections it can use
(:mod:`iif_d2.evaluation.score_floor`).
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
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth, summarize
from iif_d2.lvis_eval.devil import (
    CategoryBudget,
    ScoreFloor,
    ap_fixed_from_matches,
    ap_pooled_from_matches,
    budget_cutoffs,
    within_budget,
)
from iif_d2.lvis_eval.engine import accumulate, concat_matches, match, pack_matches, unpack_matches
from iif_d2.lvis_eval.report import metrics_tables
from iif_d2.utils.compat import numpy_float_alias

__all__ = [
    "FastLVISEvaluator",
    "LVIS_EVAL_ENGINES",
    "LVISEvaluator",
]

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
    (elsewhere only their area counts). Each rank matches its own images to the ground truth
    (matching is per image and category) and sends only what accumulation needs: each
    detection's outcome per IoU threshold and area range (bit-packed), category, image, score
    and order within its image; the main rank accumulates. Metrics are returned in percent,
    as detectron2's :class:`LVISEvaluator` returns them (-100 where lvis-api's value is
    undefined, -1: no ground truth in that frequency group or area range), and logged as
    detectron2's tables. The results json (detectron2's
    ``lvis_instances_results.json``, ~0.5 GB per 5,000 images) is written only with
    ``save_results_json``; then every prediction is kept and gathered.

    AP-fixed and AP-pool (``fixed_and_pooled``) take each class's ``dets_per_class`` best
    detections over the dataset, no cap per image: a running top per class
    (:class:`~iif_d2.lvis_eval.devil.CategoryBudget`) is kept while images stream in, the ranks'
    tops are merged into one cutoff per class, and each rank matches its detections within it.
    With ``fixed_uncapped`` (the model run without a per-image cap, ``TEST.AP_FIXED``) the
    budget sees every detection of the model, as the paper's; otherwise the standard
    per-image cut. With ``score_floor`` too, the evaluator keeps each class's running
    ``dets_per_class``-th best score on this rank (:attr:`score_floor`,
    :class:`~iif_d2.lvis_eval.devil.ScoreFloor`), which :class:`ScoreFloorFilter` lets the
    R-CNN's ROI heads use to drop, before the mask head, the detections that can reach
    neither the standard cut nor the budget.
    """

    budget_prune_at = 1 << 21  # new budget keys held before a prune (CategoryBudget)

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
        dets_per_class=10000,
        fixed_uncapped=False,
        score_thresh=None,
        score_floor=False,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``json_file`` (LVIS format).
            tasks: ("bbox",), ("segm",) or both; default from the predictions.
            distributed: evaluate across the ranks (each matches its own images).
            output_dir: where the results json goes (with ``save_results_json``).
            max_dets_per_image: detections per image of the standard metrics (default 300).
            save_results_json: write ``lvis_instances_results.json`` to ``output_dir``.
            fixed_and_pooled: also report AP-fixed and AP-pool (Dave et al. 2021:
                :mod:`iif_d2.lvis_eval.devil`).
            dets_per_class: AP-fixed's budget per class over the dataset (the paper's 10,000).
            fixed_uncapped: AP-fixed/AP-pool see all of each image's detections (the model
                must run without a per-image cap); else the standard per-image cut.
            score_thresh: the standard metrics keep only detections scoring above it (the
                standard inference's threshold, when the model ran with a lower one for
                AP-fixed); None: all.
            score_floor: keep the per-class score floor (:attr:`score_floor`) for the
                model's inference to use (``TEST.AP_FIXED.ADAPTIVE_FLOOR``).
        """
        if fixed_uncapped and not fixed_and_pooled:
            raise ValueError("fixed_uncapped needs fixed_and_pooled: it only feeds AP-fixed.")
        if score_floor and not fixed_uncapped:
            raise ValueError(
                "score_floor needs fixed_uncapped: the floor only prunes an uncapped inference "
                "for AP-fixed (TEST.AP_FIXED.ENABLED)."
            )
        self._tasks = tasks
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets = 300 if max_dets_per_image is None else max_dets_per_image
        self._save = bool(save_results_json)
        self._fixed_and_pooled = bool(fixed_and_pooled)
        self._dets_per_class = int(dets_per_class)
        self._fixed_uncapped = bool(fixed_uncapped)
        self._score_thresh = score_thresh
        if self._fixed_and_pooled and self._dets_per_class <= 0:
            raise ValueError(f"dets_per_class {dets_per_class} must be > 0 (10,000 for LVIS).")
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
        self._floor = None
        if score_floor and self._do_evaluation:
            self._floor = ScoreFloor(self._dets_per_class)
        self.reset()

    @property
    def score_floor(self):
        """The per-class score floor of the detections this rank offered to AP-fixed's budget
        (:class:`~iif_d2.lvis_eval.devil.ScoreFloor`, indexed by the model's class), or None
        without ``score_floor``. It serves one inference pass: :meth:`reset` and
        :meth:`evaluate` clear it."""
        return self._floor

    @property
    def standard_cut(self):
        """(detections per image, score threshold or None) of the standard metrics."""
        return self._max_dets, self._score_thresh

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
        self._fixed_parts = []
        self._budget = None
        if self._fixed_and_pooled and self._do_evaluation:
            self._budget = CategoryBudget(self._dets_per_class, self.budget_prune_at)
        # the input order of the detections offered to the budget (it breaks score ties): by
        # rank, then as processed, as in the rank-ordered gather of detectron2's evaluators
        rank = comm.get_rank() if self._distributed else 0
        self._seen = rank << 40
        if self._floor is not None:
            self._floor.clear()

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                raise ValueError(
                    "FastLVISEvaluator evaluates 'instances' only; for proposals set "
                    'TEST.LVIS_EVAL_ENGINE "lvis-api" (detectron2\'s LVISEvaluator).'
                )
            self._compact(inp["image_id"], out["instances"].to("cpu"))

    def _compact(self, image_id, inst):
        """Store one image's predictions as arrays, cut and filtered as lvis-api would; offer
        AP-fixed's candidates to the per-class budget."""
        boxes = inst.pred_boxes.tensor.numpy().astype(np.float32).copy()
        boxes[:, 2:] -= boxes[:, :2]  # XYWH, in float32 as detectron2's BoxMode.convert
        scores = inst.scores.numpy().astype(np.float32)
        classes = inst.pred_classes.numpy()
        cats = self._class_to_cat[classes] if self._class_to_cat is not None else classes + 1
        keep = np.arange(len(scores))
        if self._score_thresh is not None:
            keep = keep[scores > self._score_thresh]
        best = np.lexsort((keep, -scores[keep].astype(np.float64)))
        keep = np.sort(keep[best[: self._max_dets]]) if self._max_dets >= 0 else keep
        filtered = not self._save and self._do_evaluation
        allowed = present = None
        if self._do_evaluation:
            if image_id not in self._allowed:
                raise ValueError(
                    f"Prediction for image_id {image_id}, which {self._json_file} does not "
                    "have: evaluate on the dataset whose annotations the evaluator loaded."
                )
            allowed, present = self._allowed[image_id]
        fixed = None
        if self._budget is not None:
            cand = np.arange(len(scores)) if self._fixed_uncapped else keep
            order = self._seen + cand.astype(np.int64)
            self._seen += len(scores)
            if self._budget.add(cats[cand], scores[cand], order):  # cutoffs rose
                self._fixed_parts = [_within(p, self._budget.cutoffs) for p in self._fixed_parts]
            if self._floor is not None:
                self._floor.offer(classes[cand], scores[cand])
            ok = np.isin(cats[cand], allowed) if self._do_evaluation else np.ones(len(cand), bool)
            ok &= within_budget(cats[cand], scores[cand], order, self._budget.cutoffs)
            fixed, fixed_order = cand[ok], order[ok]
        if filtered:
            keep = keep[np.isin(cats[keep], allowed)]
        has_mask = inst.has("pred_masks")
        counts = {}
        if has_mask:
            mask_area = inst.pred_masks.flatten(1).sum(1).numpy().astype(np.float64)
            encode = keep
            if filtered:  # masks matter where the class is
                encode = keep[np.isin(cats[keep], present) & (mask_area[keep] > 0)]
            if fixed is not None:
                more = fixed[np.isin(cats[fixed], present) & (mask_area[fixed] > 0)]
                encode = np.union1d(encode, more)
            if len(encode):
                masks = inst.pred_masks[torch.as_tensor(encode, dtype=torch.long)].numpy()
                masks = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
                counts = dict(zip(encode.tolist(), (r["counts"] for r in mask_utils.encode(masks))))
        else:
            mask_area = None
        rows = (image_id, boxes, scores, cats, mask_area, counts, tuple(inst.image_size))
        self._parts.append(_part(keep, *rows))
        if fixed is not None and len(fixed):
            part = _part(fixed, *rows)
            part["order"] = fixed_order
            self._fixed_parts.append(part)

    def _gather(self, data):
        """``data`` of every rank (in rank order) on the main rank, None elsewhere."""
        if not self._distributed or comm.get_world_size() == 1:
            return [data]
        parts = comm.gather(data, dst=0)
        return parts if comm.is_main_process() else None

    def _all_gather(self, data):
        if not self._distributed or comm.get_world_size() == 1:
            return [data]
        return comm.all_gather(data)

    def evaluate(self):
        if self._floor is not None:
            self._floor.clear()  # the pass is over; a floor left would prune another's
        if self._distributed:
            comm.synchronize()
        has_mask = all("rle_counts" in p for p in self._parts)
        info = self._all_gather((len(self._parts), has_mask))
        main = not self._distributed or comm.is_main_process()
        if sum(n for n, _ in info) == 0:
            if main:
                logger.warning("[FastLVISEvaluator] Did not receive valid predictions.")
            return {} if main else None
        has_mask = all(m for n, m in info if n)
        tasks = self._tasks or (("bbox", "segm") if has_mask else ("bbox",))
        if "segm" in tasks and not has_mask:
            raise ValueError("segm evaluation needs 'pred_masks' in every image's instances.")
        if self._save and self._output_dir:
            parts = self._gather(self._parts)
            if parts is not None:
                self._write_json(list(itertools.chain(*parts)))
            del parts
        if not self._do_evaluation:
            if main:
                logger.info("Annotations are not available for evaluation.")
            return OrderedDict() if main else None
        if "segm" in tasks and self._gt.rles is None:
            self._gt.rles = LVISGroundTruth.from_json(self._json_file, with_masks=True).rles
        fixed = self._fixed_detections(has_mask) if self._fixed_and_pooled else None
        dets = _concat(self._parts, has_mask) if self._parts else None
        results = OrderedDict()
        for task in sorted(tasks):
            m = self._match_all(dets, task, self._max_dets)
            if main:
                if m is None:
                    results[task] = {k: float("nan") for k in _METRICS}
                else:
                    res = summarize(accumulate(self._gt, m, self._max_dets))
                    results[task] = {k: float(res[k] * 100) for k in _METRICS}
            if self._fixed_and_pooled:
                m = self._match_all(fixed, task, -1)
                if main and m is None:
                    results[task].update({k: float("nan") for k in _FIXED_METRICS})
                elif main:
                    ap = ap_fixed_from_matches(self._gt, m)["AP"]
                    results[task]["AP-fixed"] = float(ap * 100)
                    pooled = ap_pooled_from_matches(self._gt, m)
                    results[task].update({k: float(v * 100) for k, v in pooled.items()})
            if main:
                logger.info(
                    f"Evaluation results for {task} (percent): \n"
                    + metrics_tables(results[task], per_table=len(_METRICS))
                )
        return results if main else None

    def _fixed_detections(self, has_mask):
        """This rank's detections within the dataset-wide per-class budget: the ranks' running
        tops merged on the main rank into one cutoff per class, shared back."""
        keys = self._gather(self._budget.keys())
        cutoffs = None
        if keys is not None:
            cat, score, order = (np.concatenate(x) for x in zip(*keys))
            cutoffs = budget_cutoffs(cat, score, order, self._dets_per_class)
        cutoffs = next(c for c in self._all_gather(cutoffs) if c is not None)
        parts = [_within(p, cutoffs) for p in self._fixed_parts]
        parts = [p for p in parts if len(p["score"])]
        return _concat(parts, has_mask) if parts else None

    def _match_all(self, dets, task, max_dets):
        """Match this rank's detections; the main rank gets every rank's matches as one.

        Returns:
            the concatenated match dict on the main rank (None there if no rank had a
            detection), None elsewhere.
        """
        packed = None
        if dets is not None and len(dets):
            if task == "segm":
                dets = LVISDetections(
                    dets.image_id,
                    dets.category_id,
                    dets.score,
                    area=dets.mask_area,
                    rle_counts=dets.rle_counts,
                    rle_sizes=dets.rle_sizes,
                )
            packed = pack_matches(match(self._gt, dets, task, max_dets))
        gathered = self._gather(packed)
        if gathered is None:
            return None
        matches = [unpack_matches(p) for p in gathered if p is not None]
        return concat_matches(matches) if matches else None

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


_FIXED_METRICS = ("AP-fixed", "AP-pool", "AP-pool-r", "AP-pool-c", "AP-pool-f")


def _part(idx, image_id, boxes, scores, cats, mask_area, counts, size) -> dict:
    """Rows ``idx`` of one image's predictions (RLE counts where encoded, else None)."""
    part = {
        "image_id": image_id,
        "category_id": cats[idx],
        "score": scores[idx],
        "bbox": boxes[idx],
    }
    if mask_area is not None:
        part["mask_area"] = mask_area[idx]
        part["rle_counts"] = [counts.get(k) for k in idx.tolist()]
        part["rle_size"] = size
    return part


def _within(part: dict, cutoffs) -> dict:
    """The rows of a stored AP-fixed part within the per-class budget's cutoffs."""
    ok = within_budget(part["category_id"], part["score"], part["order"], cutoffs)
    if ok.all():
        return part
    out = {k: (v[ok] if isinstance(v, np.ndarray) else v) for k, v in part.items()}
    if "rle_counts" in part:
        out["rle_counts"] = [c for c, o in zip(part["rle_counts"], ok) if o]
    return out


def _concat(parts, has_mask) -> LVISDetections:
    """Per-image parts as one :class:`LVISDetections` (box areas; mask areas in
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
