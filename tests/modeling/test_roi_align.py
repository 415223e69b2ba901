"""MODEL.KERNELS: RoIAlign as matrix products (iif_d2.modeling.roi_align) and the channels-last
R-CNN give the same values as detectron2's kernels, and are refused where the built model
would ignore them."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torchvision.ops import roi_align

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.modeling.config_check import unused_settings
from iif_d2.modeling.roi_align import MatmulROIAlign, axis_weights, separable_roi_align

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules")


def _random_case(g, dtype):
    n, c = int(torch.randint(1, 4, (1,), generator=g)), 3
    h, w = (int(v) for v in torch.randint(1, 20, (2,), generator=g))
    features = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    r = int(torch.randint(1, 30, (1,), generator=g))
    xy = torch.rand(r, 2, generator=g, dtype=dtype) * 60 - 10  # some beyond the map
    wh = torch.rand(r, 2, generator=g, dtype=dtype) * 40
    wh[: r // 4] = 0  # empty boxes: no sample in the adaptive grid
    rois = torch.cat([torch.randint(0, n, (r, 1), generator=g).to(dtype), xy, xy + wh], 1)
    out = tuple(int(v) for v in torch.randint(1, 8, (2,), generator=g))
    return features, rois, out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 3])
def test_separable_roi_align_is_torchvisions(aligned, sampling_ratio):
    """Values and gradients equal torchvision's kernel (float64: to rounding) on random maps
    and RoIs: partly or wholly outside the map, empty, several per image, images without any."""
    g = torch.Generator().manual_seed(7 + sampling_ratio + 10 * aligned)
    for _ in range(25):
        features, rois, out = _random_case(g, torch.float64)
        features.requires_grad_(True)
        scale = float([0.25, 0.5, 1.0][int(torch.randint(0, 3, (1,), generator=g))])
        want = roi_align(features, rois, out, scale, sampling_ratio, aligned)
        got = separable_roi_align(features, rois, out, scale, sampling_ratio, aligned)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        weight = torch.randn(want.shape, generator=g, dtype=torch.float64)
        (grad_want,) = torch.autograd.grad((want * weight).sum(), features)
        (grad_got,) = torch.autograd.grad((got * weight).sum(), features)
        torch.testing.assert_close(grad_got, grad_want, rtol=0, atol=1e-12)


def test_separable_roi_align_float32_and_empty():
    g = torch.Generator().manual_seed(3)
    features, rois, out = _random_case(g, torch.float32)
    want = roi_align(features, rois, out, 0.5, 0, True)
    torch.testing.assert_close(separable_roi_align(features, rois, out, 0.5, 0, True), want)
    empty = separable_roi_align(features, rois[:0], 7, 0.5, 0, True)
    assert empty.shape == (0, features.shape[1], 7, 7)


def test_axis_weights_by_hand():
    """RoIs over aligned coordinates -0.5 .. 2.5 (3 pixels), 2 cells of 1.5, 2 samples each:
    cell 0 samples -0.125 (clamped to 0) and 0.625, cell 1 samples 1.375 and 2.125; on a
    3-pixel axis 2.125 lies past the last pixel and takes its value."""
    start, end = torch.tensor([-0.5]), torch.tensor([2.5])
    w = axis_weights(start, end, 2, 4, 2)[0]
    want = torch.tensor([[0.6875, 0.3125, 0, 0], [0, 0.3125, 0.625, 0.0625]])
    torch.testing.assert_close(w, want)
    w = axis_weights(start, end, 2, 3, 2)[0]
    torch.testing.assert_close(w, torch.tensor([[0.6875, 0.3125, 0], [0, 0.3125, 0.6875]]))
    # the adaptive grid: ceil(1.5) = 2 samples per cell, as above; an empty RoI has none
    torch.testing.assert_close(axis_weights(start, end, 2, 4, 0)[0], want)
    assert axis_weights(start, start, 2, 4, 0).abs().sum() == 0


def _cfg(*opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "mask_rcnn_R_18_FPN_instant_iif.yaml"))
    cfg.merge_from_list(list(opts))
    return resolve_training_set(cfg)


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": (torch.rand(3, 64, 80, generator=g) * 255), "height": 64, "width": 80}
        for _ in range(2)
    ]


@pytest.mark.parametrize("name", ["mask_rcnn", "cascade_mask_rcnn"])
def test_kernels_give_the_same_detections(name):
    """A Mask R-CNN (and a cascade) with MODEL.KERNELS.ROI_ALIGN "matmul" and CHANNELS_LAST
    True, loaded with the weights of the default one, gives the same detections and masks."""
    torch.set_num_threads(1)
    cascade = ["MODEL.ROI_HEADS.NAME", "IIFCascadeROIHeads"] if name == "cascade_mask_rcnn" else []
    if cascade:
        cascade += ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True]
    torch.manual_seed(0)
    plain = build_model(_cfg(*cascade)).eval()
    fast = build_model(
        _cfg(*cascade, "MODEL.KERNELS.ROI_ALIGN", "matmul", "MODEL.KERNELS.CHANNELS_LAST", True)
    ).eval()
    fast.load_state_dict(plain.state_dict())
    poolers = [fast.roi_heads.box_pooler, fast.roi_heads.mask_pooler]
    assert all(type(m) is MatmulROIAlign for p in poolers for m in p.level_poolers)
    conv = fast.backbone.bottom_up.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    with torch.no_grad():
        want, got = plain(_images()), fast(_images())
    for a, b in zip(want, got, strict=True):
        a, b = a["instances"], b["instances"]
        assert len(a) > 0 and len(a) == len(b)
        torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
        assert torch.equal(b.pred_classes, a.pred_classes)
        assert (b.pred_masks != a.pred_masks).float().mean() < 1e-3


def test_training_losses_match_with_the_kernels():
    """One training step's losses are the same with either kernel set (same weights, batch)."""
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    torch.set_num_threads(1)
    batch = _images(1)
    for x in batch:
        inst = Instances((64, 80))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]))
        inst.gt_classes = torch.tensor([1, 5])
        m = torch.zeros(2, 64, 80, dtype=torch.bool)
        m[0, 6:50, 4:40] = True
        m[1, 10:30, 30:70] = True
        inst.gt_masks = BitMasks(m)
        x["instances"] = inst
    losses = {}
    for fast in (False, True):
        opts = ["MODEL.KERNELS.ROI_ALIGN", "matmul", "MODEL.KERNELS.CHANNELS_LAST", True]
        torch.manual_seed(0)
        model = build_model(_cfg(*(opts if fast else []))).train()
        torch.manual_seed(1)  # the same proposal sampling
        with EventStorage(0):
            losses[fast] = {k: v.item() for k, v in model(batch).items()}
    assert losses[True].keys() == losses[False].keys()
    for k in losses[False]:
        assert losses[True][k] == pytest.approx(losses[False][k], rel=1e-4, abs=1e-6), k


def test_bad_kernel_settings_are_errors():
    with pytest.raises(ValueError, match=r"ROI_ALIGN 'fast' is not one of"):
        build_model(_cfg("MODEL.KERNELS.ROI_ALIGN", "fast"))
    with pytest.raises(ValueError, match=r"box_pooler uses \['RoIPool'\].*POOLER_TYPE"):
        build_model(
            _cfg("MODEL.KERNELS.ROI_ALIGN", "matmul", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIPool")
        )
    # settings a model without iif-d2's R-CNN would ignore
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "retinanet_R_18_FPN_instant_iif.yaml"))
    cfg.merge_from_list(["MODEL.KERNELS.ROI_ALIGN", "matmul", "MODEL.KERNELS.CHANNELS_LAST", True])
    cfg = resolve_training_set(cfg)
    problems = unused_settings(cfg, build_model(cfg))
    assert any(
        p.startswith("MODEL.KERNELS.CHANNELS_LAST needs META_ARCHITECTURE") for p in problems
    )
    assert any(p.startswith("MODEL.KERNELS.ROI_ALIGN needs ROI_HEADS.NAME") for p in problems)
