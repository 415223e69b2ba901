"""A small CNN for 28×28 grey images and the training loops of the three IIF strategies.

CPU-sized (docs/method.md §5.2): three 3×3 conv blocks (``width``, 2·width, 4·width channels;
batch norm, ReLU, 2×2 max-pool after the first two), global average pooling, a linear
classifier ``fc``; 6,274 parameters at the benchmark's width 8. SGD, momentum 0.9, weight
decay 5e-4, cosine learning rate from 0.05, batch 128, random horizontal flips. Decoupled
stage 2 retrains ``fc`` alone on the frozen network's features (no augmentation) with the IIF
loss.
"""

import logging
import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from .adjust import LogitAdjustment, train_only_classifier

__all__ = [
    "SHOT_SPLIT",
    "SmallCNN",
    "evaluate",
    "features",
    "retrain_classifier",
    "shot_groups",
    "train",
]

logger = logging.getLogger(__name__)

# training images per class: many > 1000 >= medium >= 200 > few (docs/method.md §5.2)
SHOT_SPLIT = (1000, 200)


class SmallCNN(nn.Module):
    """Three conv blocks and a linear classifier ``fc`` (the torchvision ResNet's name)."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 1):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _cosine_sgd(params, lr: float, steps: int, weight_decay: float):
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
    )
    return opt, sched


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adjustment: LogitAdjustment,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    flip: bool = True,
) -> nn.Module:
    """Train the whole ``model`` with ``adjustment.loss`` (stage 1 / end to end).

    Args:
        model: any classifier returning (N, C) logits.
        x, y: training images (N, ...) and labels (N,).
        adjustment: its ``loss`` is minimised.
        epochs, seed: schedule length; the seed sets the data order and the flips.
        batch_size, lr, weight_decay: SGD settings (cosine schedule, momentum 0.9).
        flip: random horizontal flips of (N, C, H, W) images.

    Returns:
        the trained model, in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(y) / batch_size)
    opt, sched = _cosine_sgd(model.parameters(), lr, steps, weight_decay)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx]
            if flip:
                mask = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(mask.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = adjustment.loss(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        logger.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, total / len(y))
    return model.eval()


@torch.no_grad()
def features(backbone: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Outputs of ``backbone`` (eval mode) on ``x``, batched."""
    backbone.eval()
    return torch.cat([backbone(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def retrain_classifier(
    model: nn.Module,
    classifier: nn.Module,
    feats: torch.Tensor,
    y: torch.Tensor,
    adjustment: LogitAdjustment,
    *,
    epochs: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
) -> nn.Module:
    """Decoupled stage 2: retrain only ``classifier`` with ``adjustment.loss``.

    Every other parameter of ``model`` is frozen (:func:`train_only_classifier`); the
    classifier is trained on ``feats``, the frozen network's features of the training images,
    from its stage-1 weights (paper §V.B: 20 epochs on CIFAR-LT, random sampling).

    Returns:
        ``model`` in eval mode, its classifier retrained.
    """
    params = train_only_classifier(model, classifier)
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    steps = epochs * math.ceil(len(y) / batch_size)
    opt, sched = _cosine_sgd(params, lr, steps, weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            loss = adjustment.loss(classifier(feats[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def shot_groups(counts: Sequence[int], split=SHOT_SPLIT) -> Dict[str, list]:
    """Classes with > split[0] ("many"), split[1]..split[0] ("medium"), < split[1] ("few")
    training images."""
    hi, lo = split
    return {
        "many": [c for c, n in enumerate(counts) if n > hi],
        "medium": [c for c, n in enumerate(counts) if lo <= n <= hi],
        "few": [c for c, n in enumerate(counts) if n < lo],
    }


@torch.no_grad()
def evaluate(
    logits: torch.Tensor,
    y: torch.Tensor,
    adjustment: LogitAdjustment,
    counts: Optional[Sequence[int]] = None,
) -> Dict[str, object]:
    """Top-1 accuracy (%) of ``argmax(adjustment(logits))``, per class and per shot group.

    Returns:
        dict: ``top1``, ``per_class`` (list), and ``many``/``medium``/``few`` (means of the
        per-class accuracies of each group; the test set is balanced) when ``counts`` is given.
    """
    pred = adjustment.predict(logits).argmax(1)
    correct = (pred == y).float()
    num_classes = logits.shape[1]
    per_class = [100.0 * float(correct[y == c].mean()) for c in range(num_classes)]
    out = {"top1": 100.0 * float(correct.mean()), "per_class": per_class}
    if counts is not None:
        for name, cls in shot_groups(counts).items():
            out[name] = sum(per_class[c] for c in cls) / len(cls) if cls else float("nan")
    return out
