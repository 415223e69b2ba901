"""Inverse Image Frequency weights: pure maths, importable without detectron2.

Given per-class frequencies ``f_c`` and a total ``K`` (``p_c = f_c / K``), each variant maps the
frequencies to one multiplicative weight per class (docs/method.md §1, paper Table III):

============  ==========================  =====================================================
variant       weight                      note
============  ==========================  =====================================================
raw           ln(K / f)
smooth        ln((K + 1) / (f + 1)) + 1   the only variant finite for f = 0
relative      ln((K - f) / f)             the authors' configs call it ``prob``
base2         log2(K / f)
base10        log10(K / f)
gombit        -ln(-ln(1 - p))             ~ raw for small p
normit        -Phi^-1(p)                  Phi^-1: standard normal quantile
============  ==========================  =====================================================

IIF takes ``f`` = images containing the class and ``K`` = training images; IOF (the authors'
``*_obj`` variants) takes ``f`` = instances and ``K`` = all instances. Detectors append the
background weight 1.0 at index C, so a background logit is never rescaled.
"""

import math
from typing import Optional, Sequence

import torch

__all__ = [
    "VARIANTS",
    "VARIANT_ALIASES",
    "MARGIN_TYPES",
    "canonical_variant",
    "iif_weights",
    "additive_margins",
]

VARIANTS = ("raw", "smooth", "relative", "base2", "base10", "gombit", "normit")
# Names used by the authors' configs and the paper, accepted as synonyms.
VARIANT_ALIASES = {"prob": "relative", "rel": "relative", "log": "raw"}
_MAX_LISTED = 10


def canonical_variant(variant: str) -> str:
    """Return the canonical name of ``variant`` (aliases resolved, case-insensitive).

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    name = str(variant).strip().lower()
    name = VARIANT_ALIASES.get(name, name)
    if name not in VARIANTS:
        raise ValueError(
            f"Unknown IIF variant {variant!r}. Valid variants: {', '.join(VARIANTS)} "
            f"(aliases: {', '.join(f'{k}={v}' for k, v in VARIANT_ALIASES.items())})."
        )
    return name


def _formula(variant: str, f: torch.Tensor, k: float) -> torch.Tensor:
    if variant == "raw":
        return torch.log(k / f)
    if variant == "smooth":
        return torch.log((k + 1.0) / (f + 1.0)) + 1.0
    if variant == "relative":
        return torch.log((k - f) / f)
    if variant == "base2":
        return torch.log2(k / f)
    if variant == "base10":
        return torch.log10(k / f)
    p = f / k
    if variant == "gombit":
        return -torch.log(-torch.log1p(-p))
    return -torch.special.ndtri(p)  # normit


def _names(idx: torch.Tensor, class_names: Optional[Sequence[str]]) -> str:
    idx = idx.tolist()
    named = class_names is not None and len(class_names) > max(idx)
    shown = [f"{i} ({class_names[i]})" if named else str(i) for i in idx[:_MAX_LISTED]]
    more = f" and {len(idx) - _MAX_LISTED} more" if len(idx) > _MAX_LISTED else ""
    return ", ".join(shown) + more


def iif_weights(
    counts,
    total: float,
    variant: str = "raw",
    *,
    background: bool = True,
    allow_nonpositive: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> torch.Tensor:
    """Turn per-class frequencies into IIF weights.

    Args:
        counts: length-C sequence or tensor of per-class frequencies ``f_c`` (images containing
            the class for IIF, instances for IOF), non-negative.
        total: K. For IIF the number of training images, for IOF the number of instances
            (the authors' released weights; the paper's Eq. 11 uses ``sum(counts)``).
        variant: one of :data:`VARIANTS` (or an alias in :data:`VARIANT_ALIASES`).
        background: append the background weight 1.0 at index C (two-stage detectors).
        allow_nonpositive: accept weights <= 0 (``relative``/``normit`` for classes with
            p >= 0.5, e.g. COCO ``person``); a negative weight flips the sign of a logit.
        class_names: optional names used in error messages.

    Returns:
        float32 tensor of shape (C + 1,) if ``background`` else (C,).

    Raises:
        ValueError: unknown variant; negative counts or counts above ``total``; a zero count
            with a variant that cannot take it; weights <= 0 unless ``allow_nonpositive``.
    """
    variant = canonical_variant(variant)
    f = torch.as_tensor(counts, dtype=torch.float64).flatten()
    k = float(total)
    if f.numel() == 0:
        raise ValueError("IIF weights need at least one class count; got an empty vector.")
    if not math.isfinite(k) or k <= 0:
        raise ValueError(f"IIF total K must be a positive number, got {total!r}.")
    bad = torch.nonzero((f < 0) | (f > k) | ~torch.isfinite(f)).flatten()
    if bad.numel():
        raise ValueError(
            f"Class counts must lie in [0, K={k:g}]; invalid for class(es) "
            f"{_names(bad, class_names)}. Check the counts file or the K (total) it pairs with."
        )
    zero = torch.nonzero(f == 0).flatten()
    if zero.numel() and variant != "smooth":
        raise ValueError(
            f"IIF variant {variant!r} is infinite for classes with zero count: "
            f"{_names(zero, class_names)}. Use VARIANT 'smooth' (finite for f = 0), or remove "
            "these classes from the label space."
        )
    w = _formula(variant, f, k)
    nonfinite = torch.nonzero(~torch.isfinite(w)).flatten()
    if nonfinite.numel():
        raise ValueError(
            f"IIF variant {variant!r} is infinite for class(es) {_names(nonfinite, class_names)}, "
            "whose count equals K. Use 'smooth', or check the counts and K."
        )
    if not allow_nonpositive:
        nonpos = torch.nonzero(w <= 0).flatten()
        if nonpos.numel():
            raise ValueError(
                f"IIF variant {variant!r} gives weights <= 0 (they flip the sign of the logits) "
                f"for class(es) {_names(nonpos, class_names)}, too frequent for it (p = f/K >= "
                "0.5 for relative/normit, >= 1 - 1/e for gombit, = 1 otherwise). 'smooth' is "
                "positive for every count; 'raw', 'base2' and 'base10' for every count below K. "
                "Or set MODEL.ROI_BOX_HEAD.IIF.ALLOW_NONPOSITIVE_WEIGHTS True (CLI: "
                "--allow-nonpositive) to accept them."
            )
    w = w.to(torch.float32)
    if background:
        w = torch.cat([w, w.new_ones(1)])
    return w


MARGIN_TYPES = ("balanced_softmax", "logit_adjustment", "logit_adjustment_posthoc")


def additive_margins(counts, total: float, kind: str, tau: float = 1.0, *, class_names=None):
    """Additive logit margins m (C+1, background 0), the baselines IIF is compared with.

    * ``balanced_softmax``: loss CE(z + m), m_c = ln f_c (Ren et al. 2020), plain z at test.
    * ``logit_adjustment``: loss CE(z + m), m_c = tau * ln p_c (Menon et al. 2021), z at test.
    * ``logit_adjustment_posthoc``: plain loss, scores softmax(z - m) at test.

    The background margin is 0: only foreground logits move, as in the paper's Fig. 1
    comparison. Unlike IIF's positive weights, a margin can push a logit across zero.

    Args:
        counts, total: per-class frequencies f and K (p = f / K), as :func:`iif_weights`.
        kind: one of :data:`MARGIN_TYPES`.
        tau: the logit-adjustment temperature.
        class_names: optional names for error messages.

    Returns:
        float32 tensor of shape (C + 1,).
    """
    if kind not in MARGIN_TYPES:
        raise ValueError(f"Unknown additive margin {kind!r}. Valid: {', '.join(MARGIN_TYPES)}.")
    f = torch.as_tensor(counts, dtype=torch.float64).flatten()
    zero = torch.nonzero(f <= 0).flatten()
    if zero.numel():
        raise ValueError(
            f"Additive margin {kind!r} needs ln f_c, infinite for classes with zero count: "
            f"{_names(zero, class_names)}. Remove them from the label space."
        )
    m = torch.log(f) if kind == "balanced_softmax" else tau * torch.log(f / float(total))
    return torch.cat([m, m.new_zeros(1)]).to(torch.float32)
