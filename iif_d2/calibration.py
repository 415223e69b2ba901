"""Post-hoc score calibration of a softmax box classifier: NorCal and FRACAL. Pure maths.

Both act on the C+1 class logits t of a trained model at test time only (background last):

* NorCal (Pan et al., NeurIPS 2021): q = softmax(t); q_c <- q_c / n_c^gamma for the C
  foreground classes (n_c: training images of class c), the background kept; q renormalised to
  sum 1 over the C+1 entries.
* FRACAL (Alexandridis et al., CVPR 2025): q = softmax(t + a) with the additive prior
  a_c = w_c(variant) - w(1 / C) (``base10``: log10(K / f_c) - log10(C)) and a_bg = 0; then
  q_c <- q_c / D_c^lambda, with D_c the box-counting (fractal) dimension of class c's box
  centres on the training images and D_bg = 1; q renormalised over the C+1 entries.

:func:`box_counting_dimensions` computes D_c from normalised box centres; where the centres
come from is :func:`iif_d2.data.class_stats.box_centres` (a training-set fact, docs/method.md).
"""

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from iif_d2.weights import canonical_variant, iif_weights

__all__ = [
    "CALIBRATION_MODES",
    "FRACAL_LAMBDA",
    "FRACAL_MAX_GRID",
    "FRACAL_VARIANT",
    "NORCAL_GAMMA",
    "FRACAL_VARIANTS",
    "MIN_FRACTAL_POINTS",
    "box_counting_dimensions",
    "calibrated_probs",
    "fracal_divisors",
    "fracal_prior",
    "norcal_divisors",
]

CALIBRATION_MODES = ("off", "norcal", "fracal")
# Config defaults (MODEL.ROI_BOX_HEAD.CALIBRATION): NorCal's gamma (not a paper value; the
# published code's 0 is the identity), FRACAL's lambda, prior formula and finest grid (the
# authors' fractal_l = 2, variant "base10", 64 grids).
NORCAL_GAMMA = 0.6
FRACAL_LAMBDA = 2.0
FRACAL_VARIANT = "base10"
FRACAL_MAX_GRID = 64
# Variants whose prior w(f) - w(uniform) does not depend on the uniform count chosen.
FRACAL_VARIANTS = ("raw", "base2", "base10")
# A class with fewer box centres gets D = 1 (the authors' convention).
MIN_FRACTAL_POINTS = 4

# how to get the fractal dimensions FRACAL needs, for error messages
FRACAL_FIX = (
    "FRACAL needs each class's fractal dimension, computed from the training boxes: set "
    "MODEL.CLASS_COUNTS.SOURCE 'dataset' or 'json' with the training set registered (a counts "
    "CSV such as iif_d2://lvis_v1_train.csv cannot hold them), or FILE a run's "
    "iif_class_stats.json written for a FRACAL config."
)


def _occupied_cells(centres: np.ndarray, labels: np.ndarray, num_classes: int, d: int):
    """Per class, the cells of a d x d grid over [0, 1]^2 holding at least one centre."""
    cells = np.clip(np.floor(centres * d).astype(np.int64), 0, d - 1)
    keys = labels * (d * d) + cells[:, 1] * d + cells[:, 0]
    occupied = np.bincount(keys, minlength=num_classes * d * d) > 0
    return occupied.reshape(num_classes, d * d).sum(axis=1)


def box_counting_dimensions(
    centres, labels, num_classes: int, max_grid: int = FRACAL_MAX_GRID
) -> np.ndarray:
    """The box-counting dimension of each class's box centres.

    For each grid size d = 1..``max_grid``, N_c(d) is the number of cells of the d x d grid
    over the unit square holding at least one centre of class c (the cell of x is
    floor(x * d), clipped to [0, d - 1]: a centre at 1.0 lies in the last cell). D_c is the
    least-squares slope of ln N_c(d) against ln d over the grid sizes with n_c >= d^2 (n_c: the
    class's centres; finer grids would count each centre alone). A class with fewer than
    :data:`MIN_FRACTAL_POINTS` centres, or a slope below 1, gets D_c = 1, as the authors'
    ``box_dim`` statistic; D_c = 1 also marks the background and absent classes.

    Args:
        centres: (N, 2) box centres (x, y) divided by the image width and height.
        labels: (N,) contiguous class ids in [0, num_classes).
        num_classes: C.
        max_grid: the finest grid, G (the authors' 64).

    Returns:
        (C,) float64 dimensions, each in [1, ~2].

    Raises:
        ValueError: bad shapes, labels outside [0, C), non-finite centres, ``max_grid`` < 2.
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(centres) != len(labels):
        raise ValueError(f"{len(centres)} box centres but {len(labels)} labels.")
    if int(max_grid) != max_grid or max_grid < 2:
        raise ValueError(f"The finest fractal grid must be an integer >= 2; got {max_grid!r}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Box labels must lie in [0, {num_classes}).")
    if not np.isfinite(centres).all():
        raise ValueError("Box centres must be finite (normalised by the image size).")
    sizes = np.arange(1, int(max_grid) + 1)
    counts = np.stack([_occupied_cells(centres, labels, num_classes, d) for d in sizes])
    n = np.bincount(labels, minlength=num_classes)
    dims = np.ones(num_classes, dtype=np.float64)
    log_d = np.log(sizes)
    for c in np.flatnonzero(n >= MIN_FRACTAL_POINTS):
        keep = n[c] >= sizes**2  # d = 1 and 2 always: at least two points
        slope = np.polyfit(log_d[keep], np.log(counts[keep, c]), 1)[0]
        dims[c] = max(1.0, float(slope))
    return dims


def norcal_divisors(image_counts: Sequence[int], gamma: float) -> torch.Tensor:
    """NorCal's (C+1,) divisors n_c^gamma, background 1.

    Raises:
        ValueError: gamma < 0 or not finite; a class with no training image (n_c = 0).
    """
    if not np.isfinite(gamma) or gamma < 0:
        raise ValueError(
            f"MODEL.ROI_BOX_HEAD.CALIBRATION.NORCAL.GAMMA must be >= 0; got {gamma!r}."
        )
    n = torch.as_tensor(image_counts, dtype=torch.float64)
    zero = torch.nonzero(n <= 0).flatten().tolist()
    if zero:
        raise ValueError(
            f"NorCal divides by n_c^gamma, zero for class(es) {zero[:10]} without a training "
            "image; remove them from the label space."
        )
    return torch.cat([n.pow(gamma), n.new_ones(1)]).to(torch.float32)


def fracal_prior(
    frequencies, total: float, variant: str = FRACAL_VARIANT, class_names=None
) -> torch.Tensor:
    """FRACAL's (C+1,) additive logit prior a_c = w_c - w(1 / C), background 0.

    w is the IIF formula ``variant`` (:func:`iif_d2.weights.iif_weights`) of p_c = f_c / K;
    w(1 / C) is its value for a uniform class distribution, so a class as frequent as
    1 / C of K is left unchanged relative to the background.

    Raises:
        ValueError: a variant outside :data:`FRACAL_VARIANTS`, and every error of
            :func:`~iif_d2.weights.iif_weights` (zero counts, counts above K).
    """
    variant = canonical_variant(variant)
    if variant not in FRACAL_VARIANTS:
        raise ValueError(
            f"MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.VARIANT {variant!r} is not one of "
            f"{FRACAL_VARIANTS}."
        )
    w = iif_weights(frequencies, total, variant, background=False, class_names=class_names)
    c = w.numel()
    uniform = iif_weights([1.0], float(c), variant, background=False, allow_nonpositive=True)
    return torch.cat([w - uniform, w.new_zeros(1)])


def fracal_divisors(fractal_dimensions, lam: float) -> torch.Tensor:
    """FRACAL's (C+1,) divisors D_c^lambda, background 1.

    Raises:
        ValueError: lambda < 0 or not finite; a dimension that is not positive and finite.
    """
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.LAMBDA must be >= 0; got {lam!r}.")
    d = torch.as_tensor(fractal_dimensions, dtype=torch.float64).flatten()
    if not (torch.isfinite(d) & (d > 0)).all():
        raise ValueError("FRACAL: every fractal dimension must be a positive finite number.")
    return torch.cat([d.pow(lam), d.new_ones(1)]).to(torch.float32)


def calibrated_probs(
    logits: torch.Tensor, divisors: torch.Tensor, prior: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """softmax(logits + prior) / divisors, renormalised over the C+1 entries (fp32).

    Args:
        logits: (R, C+1) class logits, background last.
        divisors: (C+1,) positive divisors (background 1).
        prior: (C+1,) additive logit offsets, or None for 0.

    Returns:
        (R, C+1) fp32 probabilities, each row summing to 1.
    """
    t = logits.float()
    if prior is not None:
        t = t + prior
    q = F.softmax(t, dim=-1) / divisors
    return q / q.sum(dim=-1, keepdim=True)
