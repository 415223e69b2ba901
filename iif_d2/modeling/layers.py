"""Cosine classifiers: the box classifier and the normalised mask predictor of the LVIS recipe.

Both compute ``scale * cos(x, W_c) + b_c`` (docs/method.md §3) and keep nn.Linear's / nn.Conv2d's
parameter names and shapes, so an upstream state dict (detectron2's freshly initialised
``cls_score`` or mask ``predictor``, or a checkpoint) loads into them unchanged. The cosine is
computed in fp32 with autocast disabled, also under AMP, and the output is fp32.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["l2_normalize", "CosineLinear", "CosineConv2d"]


def l2_normalize(x: torch.Tensor, dim: int, eps: float = 1e-12) -> torch.Tensor:
    """``x / ||x||`` along ``dim``, in fp32; a vector of norm <= eps maps to 0 with zero gradient.

    Unlike ``F.normalize`` (gradient 1/eps at 0), an all-zero feature (a ReLU output, say) gets
    cosine 0 with every row, so its logits are the biases, and no gradient at all.

    Args:
        x: any tensor.
        dim: the dimension to normalise over.
        eps: norms at or below it count as zero.

    Returns:
        fp32 tensor of ``x``'s shape.
    """
    x = x.float()
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    nonzero = norm > eps
    safe_norm = torch.where(nonzero, norm, torch.ones_like(norm))
    return torch.where(nonzero, x / safe_norm, torch.zeros_like(x))


def _check_scale(scale: float) -> float:
    if not scale > 0:
        raise ValueError(f"Cosine classifier scale must be > 0; got {scale!r}.")
    return float(scale)


class CosineLinear(nn.Linear):
    """``logits = scale * (x / ||x||) @ (W / ||W_c||).T + b``: a cosine classifier.

    Parameters ``weight`` (out, in) and ``bias`` (out,) as :class:`torch.nn.Linear` (and its
    initialisation); the norm of a row only rescales its gradient, its direction is the class.
    """

    def __init__(self, in_features: int, out_features: int, scale: float, bias: bool = True):
        """
        Args:
            in_features, out_features, bias: as :class:`torch.nn.Linear`.
            scale: the scale s > 0 of the cosine (8 in the IIF recipe, 20 for softmax).
        """
        super().__init__(in_features, out_features, bias=bias)
        self.scale = _check_scale(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            cos = F.linear(l2_normalize(x, dim=-1), l2_normalize(self.weight, dim=1))
            logits = self.scale * cos
            if self.bias is not None:
                logits = logits + self.bias.float()
        return logits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


class CosineConv2d(nn.Conv2d):
    """A 1x1 cosine convolution: per pixel, ``scale * cos(x[:, :, i, j], W_c) + b_c``.

    The features are L2-normalised over the channels at every pixel, each filter over its
    (in, 1, 1) weights. Parameters ``weight`` (out, in, 1, 1) and ``bias`` (out,) as a 1x1
    :class:`torch.nn.Conv2d` (or detectron2's ``Conv2d`` without norm).
    """

    def __init__(self, in_channels: int, out_channels: int, scale: float, bias: bool = True):
        """
        Args:
            in_channels, out_channels, bias: as :class:`torch.nn.Conv2d` with kernel size 1.
            scale: the scale s > 0 of the cosine (20 in the normalised mask head).
        """
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)
        self.scale = _check_scale(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            w = l2_normalize(self.weight.flatten(1), dim=1).view_as(self.weight)
            cos = F.conv2d(l2_normalize(x, dim=1), w)
            logits = self.scale * cos
            if self.bias is not None:
                logits = logits + self.bias.float().view(1, -1, 1, 1)
        return logits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"
