"""Long-tail logit adjustments for a classifier: IIF (three strategies) and the baselines.

Pure torch. Each method is one affine map of the logits, ``a ⊙ z + b``, with one pair
``(a, b)`` used by the training loss and another used at inference (docs/method.md §5):

==========================  ====================  ====================  =========================
method / strategy           training loss         inference             reference
==========================  ====================  ====================  =========================
softmax                     CE(z, y)              z
iif, end_to_end             CE(w ⊙ z, y)          w ⊙ z                 paper Eq. 15, 14
iif, post_process           CE(z, y)              w ⊙ z                 paper Eq. 14
iif, decoupled              stage 1 CE(z, y);     w ⊙ z                 paper §V.B
                            stage 2 CE(w ⊙ z, y),
                            classifier only
balanced_softmax            CE(z + ln n, y)       z                     Ren et al. 2020
logit_adjustment            CE(z + τ ln p, y)     z                     Menon et al. 2021
logit_adjustment_posthoc    CE(z, y)              z − τ ln p            Menon et al. 2021
==========================  ====================  ====================  =========================

``w = iif_weights(n, sum(n), variant, background=False)``: one label per image, so the images
containing class c are its n_c training images and K = Σ n_c (IIF and IOF coincide).
"""

from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import canonical_variant, iif_weights

__all__ = [
    "METHODS",
    "STRATEGIES",
    "LogitAdjustment",
    "set_eval_norm",
    "train_only_classifier",
]

METHODS = ("softmax", "iif", "balanced_softmax", "logit_adjustment", "logit_adjustment_posthoc")
STRATEGIES = ("end_to_end", "post_process", "decoupled")


class LogitAdjustment(nn.Module):
    """The training loss and the inference map of one long-tail method, for any classifier.

    ``loss(logits, targets)`` is the training loss; ``forward(logits)`` (or ``predict``) returns
    the logits to take the argmax/softmax of at inference. With ``stage=1`` a ``decoupled``
    adjustment trains as softmax (the representation stage); ``stage=2`` trains with the IIF
    loss (retrain the classifier with :func:`train_only_classifier`).

    Args:
        method: one of :data:`METHODS`.
        counts: training images per class, length C.
        strategy: for ``iif``, one of :data:`STRATEGIES`.
        variant: for ``iif``, a variant of :data:`iif_d2.weights.VARIANTS`.
        tau: the logit-adjustment temperature τ.
        stage: 1 or 2, for the ``decoupled`` strategy.
    """

    def __init__(
        self,
        method: str = "iif",
        counts: Sequence[float] = (),
        *,
        strategy: str = "end_to_end",
        variant: str = "smooth",
        tau: float = 1.0,
        stage: int = 2,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
        if method == "iif" and strategy not in STRATEGIES:
            raise ValueError(
                f"Unknown IIF strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}."
            )
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}.")
        n = torch.as_tensor(list(counts), dtype=torch.float64).flatten()
        if n.numel() == 0 or bool((n <= 0).any()):
            raise ValueError(
                "counts must list at least one class and be > 0 for every class (training "
                f"images per class); got {n.tolist()}."
            )
        self.method, self.strategy, self.tau = method, strategy, float(tau)
        self.variant = canonical_variant(variant) if method == "iif" else None
        self.stage = stage
        c = n.numel()
        one, zero = torch.ones(c), torch.zeros(c)
        w = iif_weights(n, float(n.sum()), variant, background=False) if method == "iif" else one
        log_p = torch.log(n / n.sum()).float()
        train_scale, train_shift, test_scale, test_shift = one, zero, one, zero
        if method == "iif":
            test_scale = w
            if strategy == "end_to_end" or (strategy == "decoupled" and stage == 2):
                train_scale = w
        elif method == "balanced_softmax":
            train_shift = torch.log(n).float()
        elif method == "logit_adjustment":
            train_shift = self.tau * log_p
        elif method == "logit_adjustment_posthoc":
            test_shift = -self.tau * log_p
        for name, value in (
            ("train_scale", train_scale),
            ("train_shift", train_shift),
            ("test_scale", test_scale),
            ("test_shift", test_shift),
        ):
            self.register_buffer(name, value.float().clone(), persistent=False)

    def train_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits the training loss sees: ``train_scale ⊙ z + train_shift``."""
        return logits.float() * self.train_scale + self.train_shift

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """Cross entropy of the training-time adjusted logits.

        Args:
            logits: (N, C) raw classifier outputs z.
            targets: (N,) class indices.
            reduction: as :func:`torch.nn.functional.cross_entropy`.
        """
        return F.cross_entropy(self.train_logits(logits), targets, reduction=reduction)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Inference logits: ``test_scale ⊙ z + test_shift`` (softmax/argmax of these)."""
        return logits.float() * self.test_scale + self.test_shift

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.predict(logits)

    def extra_repr(self) -> str:
        extra = f", strategy={self.strategy}, variant={self.variant}" if self.variant else ""
        if self.strategy == "decoupled" and self.method == "iif":
            extra += f", stage={self.stage}"
        return f"method={self.method}{extra}, tau={self.tau:g}"


def train_only_classifier(
    model: nn.Module, classifier: nn.Module, *, freeze_norm: bool = True
) -> Iterable[nn.Parameter]:
    """Freeze every parameter of ``model`` except those of ``classifier`` (decoupled stage 2).

    Args:
        model: the whole network.
        classifier: its last layer (e.g. ``model.fc`` of a torchvision ResNet), a sub-module.
        freeze_norm: also keep the normalisation layers' running statistics fixed; call
            :func:`set_eval_norm` after every ``model.train()`` for that.

    Returns:
        the classifier's parameters, to hand to the optimiser.
    """
    own = {id(p) for p in classifier.parameters()}
    if not own:
        raise ValueError(
            "classifier has no parameters; pass the model's last layer, e.g. model.fc."
        )
    if not any(id(p) in own for p in model.parameters()):
        raise ValueError("classifier is not a sub-module of model; pass e.g. model.fc.")
    for p in model.parameters():
        p.requires_grad_(id(p) in own)
    model._iif_freeze_norm = freeze_norm  # read by set_eval_norm
    return list(classifier.parameters())


def set_eval_norm(model: nn.Module, only_if_frozen: Optional[bool] = True) -> nn.Module:
    """Put the batch-norm layers of a model frozen by :func:`train_only_classifier` in eval mode,
    so their running statistics stay those of stage 1. Returns ``model``."""
    if only_if_frozen and not getattr(model, "_iif_freeze_norm", False):
        return model
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model
