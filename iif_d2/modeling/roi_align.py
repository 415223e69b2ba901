"""RoIAlign as matrix products: torchvision's ``roi_align`` values, a faster CPU backward on
small feature maps.

RoIAlign's bilinear sampling is separable: every sample point of an output cell is a row
coordinate times a column coordinate, and the cell averages a grid of them, so

    out[r, c, i, j] = sum_{y, x} Wy[r, i, y] * F[b_r, c, y, x] * Wx[r, j, x]

with ``Wy`` (``Wx``) holding, per RoI and output row (column), the averaged bilinear weights of
its sample rows (columns) over the feature map's rows (columns). :func:`axis_weights` builds them
with torchvision's exact rules (the aligned half-pixel offset, the adaptive grid
``ceil(bin size)`` when ``sampling_ratio`` is 0, samples beyond ``[-1, size]`` dropping out,
clamping to the border), and :func:`separable_roi_align` contracts them with each image's
features in two matrix products. The values equal torchvision's up to float rounding; the
backward is matrix products too, multi-threaded, where torchvision's CPU backward is a
single-threaded scatter (a quarter of a SynthLT training step). The products cost
``R * out * H * C * W`` per level, so this pays on small maps (SynthLT's 128-px images: about
2x faster forward + backward, ``dev/benchmark_speed.py --task kernels``) and not on LVIS-sized
ones, where torchvision's kernel stays the choice (``MODEL.KERNELS.ROI_ALIGN``).
"""

import torch
from detectron2.layers import ROIAlign
from torch import nn

__all__ = ["axis_weights", "separable_roi_align", "MatmulROIAlign"]


def axis_weights(
    start: torch.Tensor,
    end: torch.Tensor,
    out: int,
    size: int,
    sampling_ratio: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Averaged bilinear weights of RoIAlign's sample points along one axis.

    Args:
        start, end: (R,) the RoIs' first and last coordinate on this axis, in feature-map
            pixels, offsets already applied (torchvision's ``roi_start``, ``roi_end``).
        out: output cells along the axis.
        size: the feature map's length along the axis.
        sampling_ratio: samples per cell along the axis; 0 = ``ceil(cell length)`` per RoI.
        dtype: the arithmetic's floating type (torchvision computes in the features' one).

    Returns:
        (R, out, size) of ``dtype``: row ``[r, i]`` maps the axis' feature values to cell
        ``i``'s mean over its samples (1 / samples per sample, 0 for samples outside
        ``[-1, size]``).
    """
    start, end = start.to(dtype), end.to(dtype)
    num = start.shape[0]
    bin_size = (end - start) / out
    if sampling_ratio > 0:
        grid = torch.full((num,), sampling_ratio, dtype=torch.long, device=start.device)
    else:
        grid = torch.ceil(bin_size).long()  # may be 0: the cell then has no sample
    k = torch.arange(max(int(grid.max()), 1) if num else 1, device=start.device)
    cells = torch.arange(out, dtype=dtype, device=start.device)
    gridf = grid.to(dtype)[:, None, None]
    coord = (
        start[:, None, None]
        + cells[None, :, None] * bin_size[:, None, None]
        + (k[None, None, :].to(dtype) + 0.5) * bin_size[:, None, None] / gridf.clamp(min=1)
    )
    valid = (k[None, None, :] < grid[:, None, None]) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.long()  # coord >= 0: truncation is floor
    top = low >= size - 1
    low = torch.where(top, torch.full_like(low, size - 1), low)
    coord = torch.where(top, low.to(dtype), coord)
    high = (low + 1).clamp(max=size - 1)
    frac = coord - low.to(dtype)
    share = valid.to(dtype) / gridf.clamp(min=1)
    weights = torch.zeros(num, out, size, dtype=dtype, device=start.device)
    weights.scatter_add_(2, low, (1 - frac) * share)
    weights.scatter_add_(2, high, frac * share)
    return weights


def separable_roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """torchvision's ``roi_align(features, rois, ...)`` computed as matrix products.

    Args:
        features: (N, C, H, W).
        rois: (R, 5) rows ``(batch index, x1, y1, x2, y2)`` in image coordinates.
        output_size: int or (out_h, out_w).
        spatial_scale, sampling_ratio, aligned: as torchvision's ``roi_align``.

    Returns:
        (R, C, out_h, out_w) in ``features``' dtype.
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, c, h, w = features.shape
    result = features.new_zeros(rois.shape[0], c, out_h, out_w)
    if rois.shape[0] == 0:
        return result
    # torchvision's arithmetic: the features' float type (float32 for half and bfloat16)
    dtype = features.dtype if features.dtype == torch.float64 else torch.float32
    rois = rois.detach().to(dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, k] * spatial_scale - offset for k in range(1, 5))
    if not aligned:  # torchvision: a RoI is at least one pixel wide and high
        x2 = x1 + (x2 - x1).clamp(min=1.0)
        y2 = y1 + (y2 - y1).clamp(min=1.0)
    wy = axis_weights(y1, y2, out_h, h, sampling_ratio, dtype).to(features.dtype)
    wx = axis_weights(x1, x2, out_w, w, sampling_ratio, dtype).to(features.dtype)
    image = rois[:, 0].long()
    pieces, where = [], []
    for b in torch.unique(image).tolist():
        idx = (image == b).nonzero().squeeze(1)
        r = idx.numel()
        rows = features[b].permute(1, 0, 2).reshape(h, c * w)  # (H, C*W)
        t = torch.matmul(wy[idx].reshape(r * out_h, h), rows).view(r, out_h * c, w)
        cells = torch.bmm(t, wx[idx].transpose(1, 2))  # (r, out_h * C, out_w)
        pieces.append(cells.view(r, out_h, c, out_w).permute(0, 2, 1, 3))
        where.append(idx)
    return result.index_copy(0, torch.cat(where), torch.cat(pieces))


class MatmulROIAlign(nn.Module):
    """A drop-in for :class:`detectron2.layers.ROIAlign` computed by
    :func:`separable_roi_align` (same arguments, same values up to float rounding)."""

    def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=True):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    @classmethod
    def like(cls, roi_align: nn.Module) -> "MatmulROIAlign":
        """The matrix-product twin of a detectron2 ``ROIAlign`` module."""
        return cls(
            roi_align.output_size,
            roi_align.spatial_scale,
            roi_align.sampling_ratio,
            roi_align.aligned,
        )

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        assert rois.dim() == 2 and rois.size(1) == 5, rois.shape
        return separable_roi_align(
            features, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


# MODEL.KERNELS.ROI_ALIGN: detectron2's (torchvision's kernel), or this module's products
ROI_ALIGN_KERNELS = ("torchvision", "matmul")


class RoIAlignKernelMixin:
    """MODEL.KERNELS.ROI_ALIGN: with "matmul", every RoIAlign of the heads' poolers (box, mask,
    keypoint) becomes its :class:`MatmulROIAlign` twin (same arguments, same values)."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        kernel = cfg.MODEL.KERNELS.ROI_ALIGN
        if kernel not in ROI_ALIGN_KERNELS:
            raise ValueError(
                f"MODEL.KERNELS.ROI_ALIGN {kernel!r} is not one of {ROI_ALIGN_KERNELS}."
            )
        if kernel == "matmul":
            for key in ("box_pooler", "mask_pooler", "keypoint_pooler"):
                if ret.get(key) is not None:
                    _use_matmul_roi_align(ret[key], key)
        return ret


def _use_matmul_roi_align(pooler: nn.Module, key: str) -> None:
    levels = list(pooler.level_poolers)
    wrong = sorted({type(m).__name__ for m in levels if type(m) is not ROIAlign})
    if wrong:
        raise ValueError(
            f"MODEL.KERNELS.ROI_ALIGN 'matmul' computes RoIAlign, but the {key} uses {wrong}: "
            "set its POOLER_TYPE to 'ROIAlignV2' (or 'ROIAlign'), or ROI_ALIGN 'torchvision'."
        )
    pooler.level_poolers = nn.ModuleList(MatmulROIAlign.like(m) for m in levels)
