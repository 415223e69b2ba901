"""FASA's timetable: the held-out slice, its per-class loss, and the hook that adapts the rates.

* :func:`split_heldout`: a deterministic slice of the annotated training images.
* :func:`build_heldout_loader`: detectron2's test loader over it, with a mapper that keeps the
  annotations (detectron2's ``DatasetMapper`` drops them when ``is_train=False``, on v0.6 as on
  main).
* :func:`heldout_class_losses`: the per-class classification loss of the ground-truth boxes.
* :class:`FASAHook`: every ``period`` iterations, measures it and calls ``FASA.adapt``.

All tensor work lives in the model and its :class:`~iif_d2.fasa.FASA` modules; the hook keeps
the timetable and feeds the data.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.engine import HookBase
from detectron2.utils.logger import log_first_n
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = [
    "FASAHook",
    "HeldoutDatasetMapper",
    "build_heldout_loader",
    "fasa_predictors",
    "heldout_class_losses",
    "split_heldout",
]

logger = logging.getLogger(__name__)
KEY = "MODEL.ROI_BOX_HEAD.FASA"


def _annotated(d: Dict) -> bool:
    return any(a.get("iscrowd", 0) == 0 for a in d.get("annotations", ()))


def split_heldout(
    dataset_dicts: Sequence[Dict], fraction: float, max_images: int, seed: int = 0
) -> Tuple[List[Dict], List[Dict]]:
    """Hold out a slice of the training images for FASA's per-class loss.

    Among the N images with at least one non-crowd annotation, ``round(fraction * N)`` (half
    up) are drawn, at most ``max_images`` and at least 1 when ``fraction > 0``. The draw uses
    its own fixed ``seed``, not cfg.SEED: a resumed run (or every rank) holds out the same
    images.

    Args:
        dataset_dicts: detectron2 dataset dicts.
        fraction: HELDOUT_FRACTION, in [0, 1).
        max_images: HELDOUT_MAX_IMAGES, >= 1 when ``fraction > 0``.
        seed: the draw's seed.

    Returns:
        (train_dicts, heldout_dicts), both in the original order.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"{KEY}.HELDOUT_FRACTION {fraction!r} must lie in [0, 1).")
    if fraction > 0 and max_images < 1:
        raise ValueError(
            f"{KEY}.HELDOUT_MAX_IMAGES {max_images!r} must be >= 1 when HELDOUT_FRACTION > 0."
        )
    candidates = [i for i, d in enumerate(dataset_dicts) if _annotated(d)]
    n = min(int(np.floor(fraction * len(candidates) + 0.5)), max_images)
    if fraction > 0 and candidates:
        n = max(n, 1)
    order = np.random.RandomState(seed).permutation(len(candidates))
    chosen = {candidates[i] for i in order[:n]}
    train = [d for i, d in enumerate(dataset_dicts) if i not in chosen]
    heldout = [d for i, d in enumerate(dataset_dicts) if i in chosen]
    msg = f"FASA holds out {n} of {len(candidates)} annotated training images."
    log_first_n(logging.INFO, msg, n=1, name=__name__, key="message")
    return train, heldout


class HeldoutDatasetMapper(DatasetMapper):
    """:class:`DatasetMapper` with the test-time resize that keeps the annotations.

    detectron2's mapper (v0.6 and main alike) pops ``annotations`` when ``is_train=False``.
    This one takes the test augmentations of ``DatasetMapper.from_config(cfg, is_train=False)``
    and maps like a training mapper, so each image gets ``instances`` with ``gt_boxes`` and
    ``gt_classes`` (crowd boxes dropped; masks and keypoints not loaded).
    """

    @classmethod
    def from_config(cls, cfg):
        ret = DatasetMapper.from_config(cfg, is_train=False)
        # is_train=True only keeps the annotations: the augmentations are the test ones
        ret.update(is_train=True, use_instance_mask=False, use_keypoint=False)
        return ret


def build_heldout_loader(cfg, heldout_dicts: Sequence[Dict]):
    """detectron2's test loader over the held-out dicts (batch 1; its inference sampler gives
    each rank a share), with :class:`HeldoutDatasetMapper` and DATALOADER.NUM_WORKERS."""
    return build_detection_test_loader(
        dataset=list(heldout_dicts),
        mapper=HeldoutDatasetMapper(cfg),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def fasa_predictors(model: nn.Module) -> List[Tuple[int, nn.Module]]:
    """(stage, box predictor) of every box predictor whose ``fasa`` is not None: one for the
    standard ROI heads, one per stage for cascade; [] when the model has no FASA."""
    heads = getattr(_unwrap(model), "roi_heads", None)
    predictors = getattr(heads, "box_predictor", None)
    if predictors is None:
        return []
    if not isinstance(predictors, nn.ModuleList):
        predictors = [predictors]
    return [(k, p) for k, p in enumerate(predictors) if getattr(p, "fasa", None) is not None]


def _logits(predictor, box_features: torch.Tensor) -> torch.Tensor:
    return predictor.loss_logits(predictor.cls_score(box_features.flatten(1)))


def heldout_class_losses(
    model: nn.Module, data_loader, num_classes: int, max_batches: Optional[int] = None
) -> List[torch.Tensor]:
    """Mean held-out classification loss per class, for each FASA box predictor.

    The RoIs are the ground-truth boxes of the held-out images: ``model.preprocess_image``,
    ``model.backbone``, ``roi_heads.box_pooler`` on ``roi_heads.box_in_features``, the stage's
    box head, ``predictor.cls_score``, then ``predictor.loss_logits`` (the fp32 logits the
    training loss sees, IIF-scaled when enabled) and the cross entropy against
    ``gt_classes``. Per class: the mean over its held-out instances, NaN without any. Sums and
    counts are all-reduced over the ranks (the loader gives each rank its share). Runs without
    gradients in eval mode, then restores the mode.

    Args:
        model: a GeneralizedRCNN, possibly wrapped in (Distributed)DataParallel.
        data_loader: batches of mapped dicts with ``instances`` (:func:`build_heldout_loader`).
        num_classes: C.
        max_batches: stop after this many batches per rank (None: the whole loader).

    Returns:
        list of (C,) float32 CPU tensors, one per :func:`fasa_predictors` entry.
    """
    stages = fasa_predictors(model)
    model = _unwrap(model)
    if not stages:
        return []
    heads = model.roi_heads
    device = next(model.parameters()).device
    totals = torch.zeros(2, len(stages), num_classes, dtype=torch.float64, device=device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(data_loader):
                if max_batches is not None and i >= max_batches:
                    break
                _accumulate(model, heads, stages, batch, totals, device)
    finally:
        model.train(training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    sums, counts = totals.cpu()
    losses = torch.where(counts > 0, sums / counts.clamp(min=1), float("nan")).float()
    return list(losses.unbind(0))


def _accumulate(model, heads, stages, batch, totals, device):
    if any("instances" not in x for x in batch):
        raise ValueError(
            "FASA held-out batches need 'instances' (ground truth): build the loader with "
            "build_heldout_loader (detectron2's DatasetMapper drops them at test time)."
        )
    gt = [x["instances"].to(device) for x in batch]
    classes = torch.cat([g.gt_classes for g in gt]).long()
    if classes.numel() == 0:
        return
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    pooled = heads.box_pooler(
        [features[f] for f in heads.box_in_features], [g.gt_boxes for g in gt]
    )
    for j, (k, predictor) in enumerate(stages):
        head = heads.box_head[k] if isinstance(heads.box_head, nn.ModuleList) else heads.box_head
        ce = F.cross_entropy(_logits(predictor, head(pooled)), classes, reduction="none")
        totals[0, j].index_add_(0, classes, ce.double())
        totals[1, j].index_add_(0, classes, torch.ones_like(ce, dtype=torch.float64))


class FASAHook(HookBase):
    """Adapts FASA's sampling rates every ``period`` iterations.

    After iterations ``period - 1``, ``2 period - 1``, ... (not after the last one, where the
    rates would no longer be used), measures :func:`heldout_class_losses` and calls
    ``predictor.fasa.adapt`` for each FASA box predictor, logging ``fasa/mean_rate`` and
    ``fasa/heldout_loss`` (suffixed ``_stage{k}`` with several predictors) to the event
    storage. Runs on every rank (the measurement is a collective). The state lives in the
    FASA buffers: place this hook before the checkpointer so the saved rates are current.
    """

    def __init__(self, period: int, data_loader, num_classes: int, max_batches=None):
        """
        Args:
            period: iterations between two adaptations (ADAPT_PERIOD resolved); 0 = never.
            data_loader: the held-out loader, or a function that builds it on first use.
            num_classes: C.
            max_batches: see :func:`heldout_class_losses`.
        """
        if period < 0:
            raise ValueError(
                f"{KEY}.ADAPT_PERIOD {period} must be >= 0 here (the config's -1, one epoch, is "
                "resolved into iterations by the trainer; 0 = never)."
            )
        self.period, self.num_classes, self.max_batches = period, num_classes, max_batches
        self._loader = data_loader

    def _data_loader(self):
        if callable(self._loader):
            self._loader = self._loader()
        return self._loader

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self.period and next_iter % self.period == 0 and next_iter < self.trainer.max_iter:
            self.adapt()

    def adapt(self):
        """Measure the held-out losses and adapt every FASA predictor's rates now."""
        stages = fasa_predictors(self.trainer.model)
        if not stages:
            return
        losses = heldout_class_losses(
            self.trainer.model, self._data_loader(), self.num_classes, self.max_batches
        )
        for (k, predictor), loss in zip(stages, losses, strict=True):
            rates = predictor.fasa.adapt(loss)
            suffix = f"_stage{k}" if len(stages) > 1 else ""
            measured = loss[torch.isfinite(loss)]
            storage = self.trainer.storage
            storage.put_scalar(f"fasa/mean_rate{suffix}", float(rates.mean()), smoothing_hint=False)
            if measured.numel():
                storage.put_scalar(
                    f"fasa/heldout_loss{suffix}", float(measured.mean()), smoothing_hint=False
                )
