"""FASA's timetable: :class:`FASAHook` adapts the sampling rates every ``period`` iterations;
:class:`RngStateGatherer` gathers every rank's random generators for the checkpoints;
:class:`RunCheckpointer` saves the periodic and final checkpoints with a bounded retention.

The held-out images and their loader are the data layer's (:mod:`iif_d2.data.heldout`); the
measurement is the model's
(:meth:`iif_d2.modeling.heldout_loss.HeldoutLossMixin.heldout_loss_sums`) and the adaptation the
FASA modules' (:meth:`iif_d2.modeling.fasa.FASA.adapt`). :func:`heldout_class_losses` runs the
model over the held-out loader and reduces the sums over the ranks.
"""

import logging
import os
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.engine import hooks as d2_hooks
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = [
    "FASAHook",
    "RngStateGatherer",
    "RunCheckpointer",
    "fasa_predictors",
    "heldout_class_losses",
]

logger = logging.getLogger(__name__)

KEY = "MODEL.ROI_BOX_HEAD.FASA"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def fasa_predictors(model: nn.Module) -> List[Tuple[int, nn.Module]]:
    """(stage, box predictor) of every box predictor with FASA ([] when the model has none)."""
    heads = getattr(_unwrap(model), "roi_heads", None)
    return heads.fasa_stages() if hasattr(heads, "fasa_stages") else []


def heldout_class_losses(
    model: nn.Module, data_loader, max_batches: Optional[int] = None
) -> List[torch.Tensor]:
    """Held-out classification loss per class, for each FASA box predictor.

    For each batch: ``model.preprocess_image``, ``model.backbone``, then the ROI heads'
    ``heldout_loss_sums``. Per class: its numerator / denominator, i.e. the mean over its
    held-out ground-truth boxes (NaN without any), or with FASA.ADAPTATION_LOSS "authors" the
    loss summed over its sampled RoIs / all sampled RoIs. Sums and counts are all-reduced over
    the ranks (the loader gives each rank its share). Runs without gradients in eval mode, then
    restores the mode.

    Args:
        model: an R-CNN with IIF ROI heads, possibly wrapped in (Distributed)DataParallel.
        data_loader: batches of mapped dicts with ``instances``
            (:func:`iif_d2.data.heldout.build_heldout_loader`).
        max_batches: stop after this many batches per rank (None: the whole loader).

    Returns:
        list of (C,) float32 CPU tensors, one per :func:`fasa_predictors` entry.
    """
    model = _unwrap(model)
    if not fasa_predictors(model):
        return []
    heads, device = model.roi_heads, next(model.parameters()).device
    totals = None
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(data_loader):
                if max_batches is not None and i >= max_batches:
                    break
                if any("instances" not in x for x in batch):
                    raise ValueError(
                        "FASA held-out batches need 'instances' (ground truth): build the "
                        "loader with build_heldout_loader (detectron2's DatasetMapper drops "
                        "them at test time)."
                    )
                images = model.preprocess_image(batch)
                features = model.backbone(images.tensor)
                targets = [x["instances"].to(device) for x in batch]
                sums = heads.heldout_loss_sums(
                    features, targets, images=images, proposal_generator=model.proposal_generator
                )
                totals = sums if totals is None else totals + sums
    finally:
        model.train(training)
    if totals is None:
        totals = torch.zeros(2, len(fasa_predictors(model)), heads.num_classes, device=device)
        totals = totals.double()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    sums, counts = totals.cpu()
    losses = torch.where(counts > 0, sums / counts.clamp(min=1), float("nan")).float()
    return list(losses.unbind(0))


class FASAHook(HookBase):
    """Adapts FASA's sampling rates every ``period`` iterations.

    After iterations ``period - 1``, ``2 period - 1``, ... (not after the last one, where the
    rates would no longer be used), measures :func:`heldout_class_losses` and calls
    ``predictor.fasa.adapt`` for each FASA box predictor, logging ``fasa/mean_rate`` and
    ``fasa/heldout_loss`` (suffixed ``_stage{k}`` with several predictors) to the event
    storage. Runs on every rank (the measurement is a collective). The state lives in the
    FASA buffers: place this hook before the checkpointer so the saved rates are current.
    """

    def __init__(self, period: int, data_loader, max_batches=None):
        """
        Args:
            period: iterations between two adaptations (ADAPT_PERIOD resolved); 0 = never.
            data_loader: the held-out loader, or a function that builds it on first use.
            max_batches: see :func:`heldout_class_losses`.
        """
        if period < 0:
            raise ValueError(
                f"{KEY}.ADAPT_PERIOD {period} must be >= 0 here (the config's -1, one epoch, is "
                "resolved into iterations before training; 0 = never)."
            )
        self.period, self.max_batches = period, max_batches
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
        losses = heldout_class_losses(self.trainer.model, self._data_loader(), self.max_batches)
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


class RngStateGatherer(HookBase):
    """On every rank, on the iterations detectron2's ``PeriodicCheckpointer`` saves at (every
    ``period`` iterations, and the last one), calls ``trainer.gather_rng_states()`` (a
    collective with several ranks; :meth:`iif_d2.engine.trainer.Trainer.gather_rng_states`), so that
    the checkpoint the main rank writes next holds the random generators of all ranks.
    detectron2 gives only the main rank a checkpointer: this hook goes on every rank, right
    before where the checkpointer is (on the main rank) or would be."""

    def __init__(self, period: int):
        """
        Args:
            period: SOLVER.CHECKPOINT_PERIOD.
        """
        self.period = period

    def after_step(self):
        it = self.trainer.iter
        if (self.period and (it + 1) % self.period == 0) or it >= self.trainer.max_iter - 1:
            self.trainer.gather_rng_states()


class RunCheckpointer(d2_hooks.PeriodicCheckpointer):
    """detectron2's ``PeriodicCheckpointer`` (``model_XXXXXXX.pth`` every ``period``
    iterations, ``model_final.pth`` after the last), with two differences:

    * the last iteration writes ``model_final.pth`` only, never also a periodic checkpoint of
      the same weights (detectron2 writes both when ``period`` divides ``MAX_ITER``);
    * ``max_to_keep`` counts every periodic checkpoint in the folder, those written before a
      resume included: after each save (and at the start) only the newest ``max_to_keep`` at or
      before the current iteration stay. ``model_final.pth`` and the checkpoint named by
      ``last_checkpoint`` are never removed. ``max_to_keep`` 0 or None keeps all.
    """

    def __init__(self, checkpointer, period: int, max_to_keep: Optional[int] = None):
        """
        Args:
            checkpointer: an :class:`iif_d2.engine.checkpoint.IIFCheckpointer`.
            period: SOLVER.CHECKPOINT_PERIOD (>= 1).
            max_to_keep: SOLVER.CHECKPOINTS_KEPT (0 or None: all).
        """
        if int(period) < 1:
            raise ValueError(
                f"SOLVER.CHECKPOINT_PERIOD {period} must be >= 1 (iterations between two "
                "checkpoints; set it to MAX_ITER for a final checkpoint only)."
            )
        super().__init__(checkpointer, int(period), max_to_keep=max_to_keep or None)

    def before_train(self):
        super().before_train()
        self.prune(self.trainer.iter)

    def step(self, iteration: int, **kwargs) -> None:
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        last = self.max_iter is not None and iteration >= self.max_iter - 1
        if last:
            self.checkpointer.save(f"{self.file_prefix}_final", **state)
        elif (iteration + 1) % self.period == 0:
            self.checkpointer.save(f"{self.file_prefix}_{iteration:07d}", **state)
            self.prune(iteration)

    def prune(self, iteration: int) -> List[str]:
        """Remove the periodic checkpoints beyond the newest ``max_to_keep`` at or before
        ``iteration``; returns the removed paths."""
        folder = self.checkpointer.save_dir
        if not self.max_to_keep or not folder or not os.path.isdir(folder):
            return []
        keep_named = ""
        named = getattr(self.checkpointer, "_last_checkpoint_name", None)
        if named is not None:
            try:
                keep_named = named() or ""
            except (OSError, ValueError):
                keep_named = ""
        found = []
        for name in os.listdir(folder):
            it = self.checkpointer._iteration(name)
            if it is not None and it != float("inf") and it <= iteration:
                found.append((it, name))
        found.sort()
        removed = []
        for _, name in found[: max(0, len(found) - self.max_to_keep)]:
            if name == keep_named:
                continue
            path = os.path.join(folder, name)
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(path)
        if removed:
            logger.info(
                "Removed %d old periodic checkpoint(s) (SOLVER.CHECKPOINTS_KEPT %d): %s",
                len(removed),
                self.max_to_keep,
                ", ".join(os.path.basename(p) for p in removed),
            )
        return removed
