"""FASA: feature augmentation and sampling adaptation (Zang et al., ICCV 2021; docs/method.md §3).

Pure maths (tested against hand values) and :class:`FASA`, the module that keeps the state: an
EMA of the per-class mean and unbiased variance of the box-head features of positive RoIs, and
the per-class sampling rates s_c adapted from a held-out per-class loss.

* :func:`class_moments`, :func:`moments_to_mean_var`: per-class count, sum, sum of squares of a
  batch, and the batch mean / unbiased variance they give.
* :func:`initial_rates`: s_c proportional to 1 / n_c, normalised to sum 1.
* :func:`adapt_rates`: per cluster, s * (1 - step) when its loss went up, s * (1 + step) when down.

The classes are grouped for the adaptation by :mod:`iif_d2.modeling.clustering`.

The box predictor owns a :class:`FASA`: it calls :meth:`FASA.update` with the features and labels
of its sampled RoIs, and from ``start_iter`` on, :meth:`FASA.sample` for the virtual features it
puts through its classifier (loss weighted ``loss_weight``, averaged over the virtual features).
:class:`iif_d2.engine.hooks.FASAHook` calls :meth:`FASA.adapt` with the held-out per-class losses.
"""

import logging
from typing import Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from iif_d2.modeling.clustering import (
    AUTHORS_AP_SEED,
    affinity_propagation,
    negative_squared_distances,
)

__all__ = [
    "ADAPTATION_LOSSES",
    "CLUSTERINGS",
    "CLUSTERING_INPUTS",
    "SINGLE_INSTANCE_VARIANCES",
    "FASA",
    "adapt_rates",
    "class_moments",
    "heldout_loss_terms",
    "initial_rates",
    "moments_to_mean_var",
]

logger = logging.getLogger(__name__)
CLUSTERINGS = ("affinity_propagation", "none")
# a class with one feature in a batch: keep its variance, or blend a zero in (the authors')
SINGLE_INSTANCE_VARIANCES = ("keep", "authors")
# what affinity propagation clusters: the seen classes' negative squared distances, or (the
# authors') the positive squared distances of every class's mean, unseen classes included
CLUSTERING_INPUTS = ("negative_squared_distances", "authors")
# the held-out loss of a class: the mean over its ground-truth boxes, or (the authors') its
# summed loss over the sampled RoIs divided by the number of all of them
ADAPTATION_LOSSES = ("gt_boxes_class_mean", "authors")
KEY = "MODEL.ROI_BOX_HEAD.FASA"


def class_moments(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class count, sum and sum of squares of a batch of features, in float64.

    Args:
        features: (N, D) features, any float dtype.
        labels: (N,) class ids; only those in [0, C) count (C = background and < 0 are ignored).
        num_classes: C.

    Returns:
        (count (C,) int64, sum (C, D) float64, sum of squares (C, D) float64), on features' device.
    """
    # masks instead of boolean indexing: no host-device synchronisation on a GPU
    labels = labels.to(features.device)
    keep = (labels >= 0) & (labels < num_classes)
    y = torch.where(keep, labels, torch.zeros_like(labels)).long()
    x = torch.where(keep.unsqueeze(1), features.double(), 0.0)
    count = features.new_zeros(num_classes, dtype=torch.float64).index_add_(0, y, keep.double())
    shape = (num_classes, features.shape[1])
    s = features.new_zeros(shape, dtype=torch.float64).index_add_(0, y, x)
    sq = features.new_zeros(shape, dtype=torch.float64).index_add_(0, y, x * x)
    return count.long(), s, sq


def moments_to_mean_var(count: torch.Tensor, s: torch.Tensor, sq: torch.Tensor):
    """Batch mean and unbiased variance from :func:`class_moments`.

    Args:
        count: (C,) instances per class.
        s, sq: (C, D) sums and sums of squares.

    Returns:
        (mean, var), both (C, D) in s's dtype. The mean is NaN where n = 0; the variance is NaN
        where n < 2 (undefined: the sample variance needs two samples), else
        (sq - n * mean^2) / (n - 1), clamped at 0 against rounding.
    """
    n = count.to(s.dtype).unsqueeze(1)
    nan = s.new_tensor(float("nan"))
    mean = torch.where(n > 0, s / n.clamp(min=1), nan)
    var = ((sq - s * mean) / (n - 1).clamp(min=1)).clamp(min=0)
    return mean, torch.where(n > 1, var, nan)


def heldout_loss_terms(
    losses: torch.Tensor, labels: torch.Tensor, num_classes: int, mode: str
) -> torch.Tensor:
    """Numerator and denominator of each class's held-out loss, for one batch of RoIs.

    Summed over batches (and ranks), numerator / denominator is the loss that
    :meth:`FASA.adapt` compares between two rounds (NaN where the denominator is 0):

    * ``"gt_boxes_class_mean"``: the summed loss of the class's RoIs and their number: the
      class's mean loss.
    * ``"authors"``: the summed loss of the class's RoIs and the number of *all* RoIs (every
      class and the background): the released code's ``cum_losses / cum_labels.sum()``, a
      class's mean weighted by its share of the RoIs; 0 for a class without a RoI.

    Args:
        losses: (R,) per-RoI classification losses.
        labels: (R,) their classes in [0, C]; C = background (counted by "authors" only).
        num_classes: C.
        mode: one of :data:`ADAPTATION_LOSSES`.

    Returns:
        (2, C) float64 on losses' device: numerators, then denominators.
    """
    if mode not in ADAPTATION_LOSSES:
        raise ValueError(f"{KEY}.ADAPTATION_LOSS {mode!r} is not one of {ADAPTATION_LOSSES}.")
    labels = labels.to(losses.device).long()
    if labels.numel() and not bool(((labels >= 0) & (labels <= num_classes)).all()):
        raise ValueError(f"heldout_loss_terms: labels must lie in [0, {num_classes}].")
    terms = losses.new_zeros(2, num_classes + 1, dtype=torch.float64)
    terms[0].index_add_(0, labels, losses.detach().double())
    terms[1].index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
    terms = terms[:, :num_classes]
    if mode == "authors":
        terms[1] = float(labels.numel())
    return terms.clone()


def initial_rates(instance_counts) -> torch.Tensor:
    """Initial sampling rates s_c = (1 / n_c) / sum_j (1 / n_j) (docs/method.md §3).

    A class with no training instance gets rate 0 (it is never seen, so never sampled, and the
    adaptation multiplies its rate, which stays 0); the others are normalised among themselves.

    Args:
        instance_counts: (C,) training instances per class, >= 0, not all 0.

    Returns:
        (C,) float64 rates summing to 1.
    """
    n = torch.as_tensor(instance_counts, dtype=torch.float64).flatten()
    if n.numel() == 0 or (n < 0).any() or not (n > 0).any() or not torch.isfinite(n).all():
        raise ValueError(
            f"{KEY}: the instance counts must be finite, >= 0 and not all 0; got {n.tolist()[:10]}"
            f"{' ...' if n.numel() > 10 else ''}."
        )
    inv = torch.where(n > 0, 1.0 / n.clamp(min=1e-300), torch.zeros_like(n))
    return inv / inv.sum()


def adapt_rates(rates, loss_now, loss_prev, clusters, step: float) -> torch.Tensor:
    """FASA's sampling adaptation: one step per cluster of classes.

    For each cluster, the classes measured in both rounds (finite ``loss_now`` and
    ``loss_prev``; NaN = no held-out instance) are summed. If the summed loss went up, every
    class of the cluster gets s * (1 - step); down: s * (1 + step); unchanged, or no class of the
    cluster measured twice: s unchanged. The result is clamped to [0, 1].

    Args:
        rates: (C,) current rates.
        loss_now, loss_prev: (C,) per-class held-out losses, NaN where unmeasured.
        clusters: (C,) int cluster id of each class (any values; equal ids = one cluster).
        step: the adaptation step (0.1: x0.9 / x1.1).

    Returns:
        (C,) float64 new rates, on CPU.
    """
    cpu = {"device": "cpu", "dtype": torch.float64}
    rates, now, prev = (
        torch.as_tensor(t).to(**cpu).flatten() for t in (rates, loss_now, loss_prev)
    )
    _, cluster = torch.unique(torch.as_tensor(clusters).cpu().flatten(), return_inverse=True)
    if not rates.shape == now.shape == prev.shape == cluster.shape:
        raise ValueError(
            f"adapt_rates: rates {tuple(rates.shape)}, losses {tuple(now.shape)} and "
            f"{tuple(prev.shape)}, clusters {tuple(cluster.shape)} must all be (C,)."
        )
    measured = torch.isfinite(now) & torch.isfinite(prev)
    k = int(cluster.max()) + 1 if cluster.numel() else 0
    now_sum = torch.zeros(k, **cpu).index_add_(0, cluster, torch.where(measured, now, 0.0))
    prev_sum = torch.zeros(k, **cpu).index_add_(0, cluster, torch.where(measured, prev, 0.0))
    factor = torch.ones(k, **cpu)
    factor[now_sum > prev_sum] = 1.0 - step
    factor[now_sum < prev_sum] = 1.0 + step
    return (rates * factor[cluster]).clamp(0.0, 1.0)


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _check_range(name, value, lo, hi, lo_open=False, hi_open=False):
    ok = (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{KEY}.{name} {value!r} must lie in {interval}.")


class FASA(nn.Module):
    """The state of FASA for one box predictor, all in persistent buffers (a checkpoint holds
    it and a resumed run restores it exactly; the RNG that :meth:`sample` draws from is not in
    the checkpoint, as detectron2 keeps no RNG state):

    * ``mean``, ``var`` (C, D) float32: EMA of the per-class feature mean and unbiased variance;
    * ``seen`` (C,) bool: classes with statistics;
    * ``rates`` (C,) float32: the sampling rates s_c;
    * ``prev_loss`` (C,) float32: the held-out per-class losses of the last adaptation (NaN
      before the first, and for classes without a held-out instance);
    * ``num_adaptations``: how many times :meth:`adapt` ran.

    :meth:`update` and :meth:`adapt` give the same state on every rank; :meth:`sample` draws
    from each rank's own RNG.
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        instance_counts: Sequence[int],
        momentum: float = 0.1,
        loss_weight: float = 0.1,
        start_iter: int = 0,
        adapt_step: float = 0.1,
        clustering: str = "affinity_propagation",
        single_instance_variance: str = "keep",
        clustering_input: str = "negative_squared_distances",
    ):
        """
        Args:
            num_classes: C, foreground classes.
            feature_dim: D, the box-head feature size.
            instance_counts: (C,) training instances per class, for :func:`initial_rates`.
            momentum: EMA weight m of a new batch (MOMENTUM): stat = (1 - m) stat + m batch.
            loss_weight: weight of the virtual features' loss (LOSS_WEIGHT); read by the
                predictor.
            start_iter: first iteration that draws virtual features (START_ITER); -1 = one
                epoch, unresolved: :func:`iif_d2.resolve_training_set` puts the epoch length into
                the config before the model is built.
            adapt_step: the adaptation step (ADAPT_STEP).
            clustering: one of :data:`CLUSTERINGS` (CLUSTERING).
            single_instance_variance: one of :data:`SINGLE_INSTANCE_VARIANCES`
                (SINGLE_INSTANCE_VARIANCE): what a class with a single feature in a batch does
                to its variance (docs/method.md §9).
            clustering_input: one of :data:`CLUSTERING_INPUTS` (CLUSTERING_INPUT).
        """
        super().__init__()
        if num_classes < 1 or feature_dim < 1:
            raise ValueError(f"FASA: num_classes {num_classes} and feature_dim {feature_dim}.")
        _check_range("MOMENTUM", momentum, 0, 1, lo_open=True)
        _check_range("LOSS_WEIGHT", loss_weight, 0, float("inf"), hi_open=True)
        _check_range("ADAPT_STEP", adapt_step, 0, 1, hi_open=True)
        if start_iter < -1:
            raise ValueError(f"{KEY}.START_ITER {start_iter}: use -1 (one epoch) or an iteration.")
        if clustering not in CLUSTERINGS:
            raise ValueError(f"{KEY}.CLUSTERING {clustering!r} is not one of {CLUSTERINGS}.")
        if single_instance_variance not in SINGLE_INSTANCE_VARIANCES:
            raise ValueError(
                f"{KEY}.SINGLE_INSTANCE_VARIANCE {single_instance_variance!r} is not one of "
                f"{SINGLE_INSTANCE_VARIANCES}."
            )
        if clustering_input not in CLUSTERING_INPUTS:
            raise ValueError(
                f"{KEY}.CLUSTERING_INPUT {clustering_input!r} is not one of {CLUSTERING_INPUTS}."
            )
        self.single_instance_variance = single_instance_variance
        self.clustering_input = clustering_input
        counts = torch.as_tensor(instance_counts).flatten()
        if counts.numel() != num_classes:
            raise ValueError(
                f"{KEY}: {counts.numel()} instance counts for {num_classes} classes "
                "(MODEL.ROI_HEADS.NUM_CLASSES); one count per class is needed."
            )
        self.num_classes, self.feature_dim = num_classes, feature_dim
        self.momentum, self.loss_weight, self.start_iter = momentum, loss_weight, start_iter
        self.adapt_step, self.clustering = adapt_step, clustering
        self.register_buffer("mean", torch.zeros(num_classes, feature_dim))
        self.register_buffer("var", torch.zeros(num_classes, feature_dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("rates", initial_rates(counts).float())
        self.register_buffer("prev_loss", torch.full((num_classes,), float("nan")))
        self.register_buffer("num_adaptations", torch.zeros((), dtype=torch.long))

    def active(self, iteration: int) -> bool:
        """Whether virtual features are drawn at ``iteration``."""
        if self.start_iter < 0:
            raise RuntimeError(
                f"{KEY}.START_ITER is -1 (one epoch), not resolved into iterations: build the "
                "config with iif_d2.engine.trainer.setup (train_net.py does) or call "
                "iif_d2.resolve_training_set(cfg), or set START_ITER explicitly."
            )
        return iteration >= self.start_iter

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor):
        """EMA update of the class statistics with a batch (features are detached).

        In a multi-process run every rank must call this at the same point, also with an empty
        batch: the batch moments are summed over the ranks (two all_reduces: the (C,) counts,
        then the sums and sums of squares of the classes present on any rank), so every rank
        ends with the statistics of the concatenated batch. Then, for each class in the batch:
        at first sight mean / var are the batch's, afterwards stat = (1 - m) stat + m batch.
        A class with a single feature in the batch has no sample variance: its mean is
        updated, its variance kept (0 when it is seen for the first time); with
        ``single_instance_variance="authors"`` a variance of 0 is blended in instead, as the
        authors' code does.

        Args:
            features: (N, D) box-head features (fp32 or fp16 under AMP).
            labels: (N,) their classes, background (C) and < 0 ignored.
        """
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"FASA.update: features {tuple(features.shape)}, expected (N, {self.feature_dim})."
            )
        count, s, sq = class_moments(features.detach(), labels.detach(), self.num_classes)
        count, s, sq = (t.to(self.mean.device) for t in (count, s, sq))
        if _world_size() > 1:
            dist.all_reduce(count)
            present = (count > 0).nonzero().squeeze(1)
            if present.numel():
                rows = torch.cat([s[present], sq[present]], dim=1)
                dist.all_reduce(rows)
                s[present], sq[present] = rows[:, : self.feature_dim], rows[:, self.feature_dim :]
        self._ema(count, s, sq)

    def _ema(self, count, s, sq):
        # on all C rows with masks (no host-device synchronisation); rows of classes absent
        # from the batch get batch weight 0 and keep their values exactly
        present = (count > 0).unsqueeze(1)
        batch_mean, batch_var = moments_to_mean_var(count, s, sq)
        # weight of the batch: 1 at first sight, m afterwards; 0 for an undefined variance
        w = torch.where(self.seen.unsqueeze(1), self.momentum, 1.0).double()
        w = torch.where(present, w, 0.0)
        if self.single_instance_variance == "keep":
            w_var = torch.where((count > 1).unsqueeze(1), w, 0.0)
        else:  # the authors': a single feature contributes the variance 0
            w_var = w
        mean = (1 - w) * self.mean.double() + w * batch_mean.nan_to_num(0.0)
        var = (1 - w_var) * self.var.double() + w_var * batch_var.nan_to_num(0.0)
        self.mean.copy_(mean)
        self.var.copy_(var)
        self.seen |= present.squeeze(1)

    @torch.no_grad()
    def sample(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draw virtual features: u_c ~ U(0, 1) for every class; each seen class with
        u_c < s_c gives one feature mean_c + sqrt(var_c) * eps, eps ~ N(0, I).

        Uses the global torch RNG of the module's device (C uniforms, then M x D normals).

        Returns:
            (features (M, D) float32, labels (M,) int64), M >= 0, on the module's device.
        """
        u = torch.rand(self.num_classes, device=self.rates.device)
        labels = (self.seen & (u < self.rates)).nonzero().squeeze(1)
        eps = torch.randn(labels.numel(), self.feature_dim, device=self.mean.device)
        features = self.mean[labels] + self.var[labels].clamp(min=0).sqrt() * eps
        return features.float(), labels

    def clusters(self) -> torch.Tensor:
        """(C,) cluster id per class: affinity propagation on the seen classes' means
        (negative squared distances, median preference), every unseen class on its own; or
        each class on its own with ``clustering="none"`` (or if no exemplar emerges).

        The authors' code hands sklearn the squared distance itself as a "precomputed"
        similarity (so the farthest classes look the most alike) and clusters the all-zero
        means of unseen classes too; this follows affinity propagation's definition instead.
        ``clustering_input="authors"`` does the former, with their tie-breaking seed (1).
        """
        singletons = torch.arange(self.num_classes)
        if self.clustering == "none":
            return singletons
        if self.clustering_input == "authors":  # positive distances, every class's mean
            distances = -negative_squared_distances(self.mean.cpu())
            labels = affinity_propagation(distances, random_state=AUTHORS_AP_SEED)
            return singletons if (labels < 0).any() else labels
        seen = self.seen.cpu().nonzero().squeeze(1)
        if seen.numel() < 2:
            return singletons
        labels = affinity_propagation(negative_squared_distances(self.mean[seen].cpu()))
        if (labels < 0).any():
            return singletons
        clusters = torch.empty_like(singletons)
        clusters[seen] = labels
        unseen = (~self.seen.cpu()).nonzero().squeeze(1)
        clusters[unseen] = torch.arange(unseen.numel()) + int(labels.max()) + 1  # own ids
        return clusters

    @torch.no_grad()
    def adapt(self, class_losses) -> torch.Tensor:
        """One adaptation of the sampling rates from held-out per-class losses.

        The first call only stores the losses; later calls apply :func:`adapt_rates` to the
        clusters of :meth:`clusters` against the stored losses, then store the new ones.
        Computed on CPU in float64: identical inputs give identical rates on every rank.

        Args:
            class_losses: (C,) mean held-out classification loss per class, NaN where a class
                has no held-out instance.

        Returns:
            (C,) the new rates (float32, on CPU).
        """
        losses = torch.as_tensor(class_losses).detach().to("cpu", torch.float64).flatten()
        if losses.numel() != self.num_classes:
            raise ValueError(f"FASA.adapt: {losses.numel()} losses for {self.num_classes} classes.")
        old = self.rates.detach().cpu().double()
        if int(self.num_adaptations) == 0:
            new, n_clusters = old, 0
        else:
            clusters = self.clusters()
            new = adapt_rates(old, losses, self.prev_loss.cpu(), clusters, self.adapt_step)
            n_clusters = int(torch.unique(clusters).numel())
        self.rates.copy_(new.to(self.rates))
        self.prev_loss.copy_(losses.to(self.prev_loss))
        self.num_adaptations += 1
        logger.info(
            "FASA adaptation %d: %d classes measured, %d clusters; rates up for %d classes, "
            "down for %d; mean rate %.4g.",
            int(self.num_adaptations),
            int(torch.isfinite(losses).sum()),
            n_clusters,
            int((new > old).sum()),
            int((new < old).sum()),
            float(new.mean()),
        )
        return self.rates.detach().cpu().clone()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
            f"momentum={self.momentum}, loss_weight={self.loss_weight}, "
            f"start_iter={self.start_iter}, adapt_step={self.adapt_step}, "
            f"clustering={self.clustering!r}, "
            f"single_instance_variance={self.single_instance_variance!r}, "
            f"clustering_input={self.clustering_input!r}"
        )
