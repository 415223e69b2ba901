"""Long-tail treatments of the sigmoid focal loss of dense detectors (docs/method.md §4).

Every function here works on the anchors that enter the classification loss: ``logits`` (M, C)
and ``labels`` (M,) with values in [0, C], C meaning background (ignored anchors removed by the
caller). The sigmoid focal loss of one anchor m and class c, with y = 1 for the matched class,
p = sigmoid(z), p_t = p if y else 1 - p and alpha_t = alpha if y else 1 - alpha, is

    FL(z, y) = -alpha_t (1 - p_t)^gamma log p_t.

:func:`long_tail_focal_loss` multiplies each element by a weight and may give each class its own
gamma:

* positive weights v_c (IIF as the weight of the positive term, RULE "positive_weight"):
  v_c FL on the element (m, c) with y = 1;
* negative weights s_c (RULE "negative_suppression"): s_c FL on the element (m, c) with y = 0
  when anchor m is matched to an object of another class; background anchors keep weight 1;
* Equalized Focal Loss (EFL, Li et al., CVPR 2022): gamma_c = gamma_b + S (1 - g_c) and the
  weighting factor gamma_c / gamma_b on every element of class c, where g_c in [0, 1] is the
  ratio of the accumulated positive to negative gradient magnitudes of class c
  (:func:`efl_gradient_magnitudes`, :func:`efl_gammas`).

With every weight 1 and gamma_c = gamma this is detectron2's (fvcore's) sigmoid focal loss.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "EFL_SCALE_FACTOR",
    "RULES",
    "efl_gammas",
    "efl_gradient_magnitudes",
    "element_weights",
    "long_tail_focal_loss",
    "negative_suppression_weights",
    "one_hot_targets",
]

# MODEL.{RETINANET,FCOS}.IIF.RULE: what the IIF weights w do in the focal loss
RULES = ("logits", "positive_weight", "negative_suppression")
# MODEL.{RETINANET,FCOS}.EFL.SCALE_FACTOR's default: the EFL paper's S
EFL_SCALE_FACTOR = 8.0


def one_hot_targets(labels: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """(M, C) targets of labels in [0, C] (C = background: an all-zero row)."""
    return F.one_hot(labels, num_classes=num_classes + 1)[:, :num_classes].to(dtype)


def negative_suppression_weights(iif_weights: torch.Tensor) -> torch.Tensor:
    """s_c = min_j w_j / w_c: 1 for the class with the smallest IIF weight (the most frequent),
    falling as 1 / w_c with rarity.

    Raises:
        ValueError: a weight <= 0 (the ratio would flip or divide by zero).
    """
    if (iif_weights <= 0).any():
        raise ValueError(
            "IIF RULE 'negative_suppression' needs positive IIF weights (s_c = min w / w_c); "
            "use a VARIANT whose weights are > 0 (e.g. 'raw', 'smooth', 'base10')."
        )
    return iif_weights.min() / iif_weights


def efl_gammas(
    pos_grad: torch.Tensor, neg_grad: torch.Tensor, gamma_b: float, scale: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """EFL's per-class focusing factor gamma_c = gamma_b + S (1 - g_c) and weighting factor
    gamma_c / gamma_b, with g_c = clamp(pos_grad_c / neg_grad_c, 0, 1); g_c = 1 (plain focal
    loss) for a class with no negative gradient recorded yet.

    Returns:
        (gammas, factors), both (C,).
    """
    g = torch.where(
        neg_grad > 0, (pos_grad / neg_grad.clamp(min=1e-12)).clamp(0, 1), torch.ones_like(pos_grad)
    )
    gammas = gamma_b + scale * (1 - g)
    return gammas, gammas / gamma_b


# EFL's per-class exponents below this give the modulating factor 0: (1 - p_t)^gamma_c < 1.8e-35
# would otherwise fall to subnormal floats, which CPUs compute tens of times slower (gamma_c up
# to gamma_b + S = 10 reaches them once p_t > 0.9998), and the elements they weigh add nothing.
_LOG_TINY = -80.0


def _modulating_factor(logits, targets, gamma) -> torch.Tensor:
    """(1 - p_t)^gamma. A scalar gamma (the focal loss's) as fvcore computes it; per-class
    gammas (EFL) as exp(gamma_c * log sigmoid(-(2y - 1) z)), 0 where that is below exp(-80):
    no subnormal floats in the forward or backward pass."""
    if not isinstance(gamma, torch.Tensor):
        p = torch.sigmoid(logits)
        return (1 - (p * targets + (1 - p) * (1 - targets))) ** gamma
    exponent = gamma * F.logsigmoid((1 - 2 * targets) * logits)
    tiny = exponent < _LOG_TINY
    return torch.where(tiny, 0.0, torch.exp(exponent.clamp(min=_LOG_TINY)))


def _focal_elements(logits, targets, alpha: float, gamma) -> torch.Tensor:
    """Elementwise focal loss (M, C); ``gamma`` a float or a (C,) tensor."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = ce * _modulating_factor(logits, targets, gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def element_weights(
    labels: torch.Tensor,
    num_classes: int,
    positive_weights: Optional[torch.Tensor] = None,
    negative_weights: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """(M, C) weights of the IIF rules: v_c on the positive elements, s_c on the negative
    elements of anchors matched to another class's object, 1 elsewhere; None if both are None."""
    if positive_weights is None and negative_weights is None:
        return None
    targets = one_hot_targets(labels, num_classes)
    weight = torch.ones_like(targets)
    if negative_weights is not None:
        foreground = (labels < num_classes)[:, None]
        weight = torch.where(foreground, negative_weights.float().expand_as(weight), weight)
    positive = (
        torch.ones_like(weight)
        if positive_weights is None
        else (positive_weights.float().expand_as(weight))
    )
    return torch.where(targets > 0, positive, weight)


def long_tail_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
    positive_weights: Optional[torch.Tensor] = None,
    negative_weights: Optional[torch.Tensor] = None,
    class_gammas: Optional[torch.Tensor] = None,
    class_factors: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The focal loss with the module's per-class weights, elementwise.

    Args:
        logits: (M, C) class logits (fp32).
        labels: (M,) matched labels in [0, C], C = background.
        alpha, gamma: the focal loss's.
        positive_weights: (C,) v_c on the positive elements, or None (1).
        negative_weights: (C,) s_c on the negative elements of anchors matched to another
            class's object, or None (1).
        class_gammas: (C,) per-class focusing factor replacing ``gamma``, or None.
        class_factors: (C,) per-class factor on every element of the class, or None (1).

    Returns:
        (M, C) losses; their sum is the loss detectron2 normalises.
    """
    num_classes = logits.shape[1]
    targets = one_hot_targets(labels, num_classes, logits.dtype)
    gammas = gamma if class_gammas is None else class_gammas.to(logits)
    loss = _focal_elements(logits, targets, alpha, gammas)
    weight = element_weights(labels, num_classes, positive_weights, negative_weights)
    if weight is not None:
        loss = loss * weight.to(logits)
    if class_factors is not None:
        loss = loss * class_factors.to(logits)
    return loss


@torch.no_grad()
def efl_gradient_magnitudes(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    class_gammas: torch.Tensor,
    class_factors: torch.Tensor,
    positive_weights: Optional[torch.Tensor] = None,
    negative_weights: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per class, the summed |d loss / d z| over the positive and over the negative elements of
    :func:`long_tail_focal_loss` with the same arguments (EFL's gradient statistics), in closed
    form: for q = p_t and an element's constant factor a (alpha_t, EFL's weighting factor, the
    IIF rules' weight), |d a (1 - q)^gamma (-log q) / dz| = a (1 - q)^gamma (gamma q (-log q)
    + 1 - q).

    Returns:
        (pos, neg): (C,) each, in the units of the summed loss (before detectron2's normaliser).
    """
    num_classes = logits.shape[1]
    targets = one_hot_targets(labels, num_classes, logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log q
    q = torch.exp(-ce)
    gammas = class_gammas.to(logits)
    modulating = _modulating_factor(logits, targets, gammas)
    grad = modulating * (gammas * q * ce + 1 - q) * class_factors.to(logits)
    if alpha >= 0:
        grad = grad * (alpha * targets + (1 - alpha) * (1 - targets))
    weight = element_weights(labels, num_classes, positive_weights, negative_weights)
    if weight is not None:
        grad = grad * weight.to(logits)
    return (grad * targets).sum(0), (grad * (1 - targets)).sum(0)
