"""Repeat-factor sampling (LVIS; docs/method.md §3) with detectron2's or the authors' rounding.

r(c) = max(1, sqrt(t / f(c))), f(c) the fraction of the images containing class c;
r(I) = max over the classes of image I. ``DATALOADER.REPEAT_FACTOR.ROUNDING`` picks how r(I)
becomes a count per epoch: "stochastic" (detectron2's ``RepeatFactorTrainingSampler``,
floor(r) plus one with probability r - floor(r)) or "ceil" (the authors': ceil(r) every epoch).
As detectron2, every annotation counts toward f(c), crowd ones included.

:func:`position_batches` turns a rank's share of a sampler's stream into its training batches,
each sample tagged with its position in the shared stream, from any batch on: the stream is a
function of the seed alone, so a resumed run regenerates it and skips the batches already
trained on without reading an image.
"""

import itertools
import logging
import math
from collections import Counter
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from tabulate import tabulate

__all__ = [
    "ROUNDINGS",
    "CeilRepeatFactorTrainingSampler",
    "repeat_factors",
    "repeat_factor_summary",
    "build_train_sampler",
    "position_batches",
]

logger = logging.getLogger(__name__)
ROUNDINGS = ("stochastic", "ceil")
# LVIS frequency groups by training-image count: rare <= 10, common 11-100, frequent > 100.
_GROUPS = (("r", 0, 10), ("c", 11, 100), ("f", 101, math.inf))


class CeilRepeatFactorTrainingSampler(RepeatFactorTrainingSampler):
    """detectron2's ``RepeatFactorTrainingSampler`` with the authors' rounding: every epoch
    holds image I exactly ceil(r(I)) times, in a shuffled order. Seed and sharding by rank are
    detectron2's (seed None: ``comm.shared_random_seed()``)."""

    def _get_epoch_indices(self, generator):
        counts = self._int_part.long() + (self._frac_part > 0).long()
        return torch.repeat_interleave(torch.arange(len(counts)), counts)


def _image_categories(dataset_dicts: Sequence[Dict]):
    """The set of category ids of each image, and the number of images containing each id."""
    cats: List[Set[int]] = [
        {a["category_id"] for a in d.get("annotations", ())} for d in dataset_dicts
    ]
    return cats, Counter(c for s in cats for c in s)


def repeat_factors(dataset_dicts: Sequence[Dict], threshold: float, sqrt: bool = True):
    """Per-image repeat factors r(I), computed on exactly the dicts given.

    Args:
        dataset_dicts: detectron2 dataset dicts (the ones the training loader uses).
        threshold: t, the frequency below which a class is repeated (> 0).
        sqrt: r(c) = max(1, sqrt(t / f(c))) if True, else max(1, t / f(c)).

    Returns:
        torch.Tensor: float32 of length ``len(dataset_dicts)``; 1 for images without
        annotations. Equal to detectron2's ``repeat_factors_from_category_frequency``.
    """
    if not threshold > 0:
        raise ValueError(f"Repeat-factor threshold must be > 0, got {threshold!r}.")
    cats, image_counts = _image_categories(dataset_dicts)
    n = len(dataset_dicts)
    per_class = {}
    for c, k in image_counts.items():
        ratio = threshold / (k / n)
        per_class[c] = max(1.0, math.sqrt(ratio) if sqrt else ratio)
    factors = [max((per_class[c] for c in s), default=1.0) for s in cats]
    return torch.tensor(factors, dtype=torch.float32)


def _epoch_counts(factors: torch.Tensor, rounding: str) -> torch.Tensor:
    """Expected appearances of each image in one epoch."""
    return torch.ceil(factors.double()) if rounding == "ceil" else factors.double()


def repeat_factor_summary(dataset_dicts, factors, threshold, sqrt, rounding) -> str:
    """A table of repeat factors per LVIS frequency group, for the log.

    An image belongs to the group of its rarest class (the one setting r(I)); groups count
    training images on the same dicts (r: <= 10, c: 11-100, f: > 100).

    Args:
        dataset_dicts: the dicts ``factors`` were computed on.
        factors: r(I), from :func:`repeat_factors`.
        threshold, sqrt, rounding: the settings, for the heading.

    Returns:
        str: a heading with the epoch length before and after, and the table.
    """
    cats, image_counts = _image_categories(dataset_dicts)
    per_epoch = _epoch_counts(factors, rounding)
    rarest = [min((image_counts[c] for c in s), default=None) for s in cats]
    rows = []
    for name, lo, hi in _GROUPS + (("no annotations", None, None),):
        if lo is None:
            members = [i for i, k in enumerate(rarest) if k is None]
            num_classes = "-"
        else:
            members = [i for i, k in enumerate(rarest) if k is not None and lo <= k <= hi]
            num_classes = sum(1 for k in image_counts.values() if lo <= k <= hi)
        r = factors[members].double()
        rows.append(
            [name, str(num_classes), str(len(members))]
            + ([f"{r.mean().item():.2f}", f"{r.max().item():.2f}"] if members else ["-", "-"])
            + [f"{per_epoch[members].sum().item():.1f}"]
        )
    table = tabulate(
        rows,
        headers=["group", "#classes", "#images", "mean r(I)", "max r(I)", "images/epoch"],
        tablefmt="pipe",
        stralign="center",
        disable_numparse=True,
    )
    form = "sqrt(t / f)" if sqrt else "t / f"
    return (
        f"Repeat factors r = max(1, {form}), t = {threshold:g}, rounding {rounding!r}: "
        f"epoch of {len(dataset_dicts)} images -> {per_epoch.sum().item():.1f} images.\n{table}"
    )


def build_train_sampler(cfg, dataset_dicts: Sequence[Dict]):
    """The training sampler named by ``DATALOADER.SAMPLER_TRAIN``.

    "TrainingSampler": detectron2's; "RepeatFactorTrainingSampler": factors from
    ``REPEAT_THRESHOLD`` / ``REPEAT_SQRT`` on ``dataset_dicts``, detectron2's sampler
    (ROUNDING "stochastic") or :class:`CeilRepeatFactorTrainingSampler` ("ceil"). The seed is
    ``cfg.SEED`` if >= 0, else detectron2's shared random seed.

    Args:
        cfg: a config with iif-d2's keys (:func:`iif_d2.add_iif_config`).
        dataset_dicts: the dicts the training loader uses.

    Returns:
        the sampler, or None for any other sampler name (detectron2 then builds it).
    """
    loader = cfg.DATALOADER
    seed = cfg.SEED if cfg.SEED >= 0 else None
    if loader.SAMPLER_TRAIN == "TrainingSampler":
        return TrainingSampler(len(dataset_dicts), seed=seed)
    if loader.SAMPLER_TRAIN != "RepeatFactorTrainingSampler":
        return None
    rounding = loader.REPEAT_FACTOR.ROUNDING
    if rounding not in ROUNDINGS:
        raise ValueError(
            f"DATALOADER.REPEAT_FACTOR.ROUNDING {rounding!r} is not one of {ROUNDINGS}."
        )
    threshold = loader.REPEAT_THRESHOLD
    if not threshold > 0:
        raise ValueError(
            f"DATALOADER.REPEAT_THRESHOLD {threshold!r} is not allowed: it must be > 0 "
            "(the LVIS recipe uses 0.001)."
        )
    factors = repeat_factors(dataset_dicts, threshold, loader.REPEAT_SQRT)
    logger.info(
        repeat_factor_summary(dataset_dicts, factors, threshold, loader.REPEAT_SQRT, rounding)
    )
    cls = CeilRepeatFactorTrainingSampler if rounding == "ceil" else RepeatFactorTrainingSampler
    return cls(factors, seed=seed)


def position_batches(
    indices: Iterable[int],
    batch_size: int,
    wide: Optional[Sequence[bool]] = None,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
) -> Iterator[List[Tuple[int, int]]]:
    """One rank's training batches, as lists of (position, dataset index), from batch ``start``.

    Args:
        indices: the rank's share of a sampler's stream (iterating a detectron2 training
            sampler): its item k is item ``k * world_size + rank`` of the shared stream, that
            item's *position*.
        batch_size: images per batch on this rank.
        wide: None: batches of consecutive items. Else, per dataset index, whether the image
            is wider than high: detectron2's aspect-ratio grouping (``AspectRatioGroupedDataset``
            on the stream's order): items go to one of two buckets (wide, not wide), and a
            bucket that holds ``batch_size`` items is the next batch.
        rank, world_size: this rank and the number of ranks.
        start: the first batch yielded; the ones before are computed from the indices alone.

    Returns:
        an iterator of batches (infinite for an infinite sampler).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1.")
    items = ((k * world_size + rank, i) for k, i in enumerate(indices))
    if wide is None:
        items = itertools.islice(items, start * batch_size, None)
        while True:
            batch = list(itertools.islice(items, batch_size))
            if len(batch) < batch_size:
                return
            yield batch
    buckets: Tuple[list, list] = ([], [])
    done = 0
    for item in items:
        bucket = buckets[0 if wide[item[1]] else 1]
        bucket.append(item)
        if len(bucket) == batch_size:
            if done >= start:
                yield list(bucket)
            done += 1
            bucket.clear()
