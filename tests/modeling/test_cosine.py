"""Cosine box classifier and normalised mask predictor against hand-computed values."""

import math
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, build_detection_train_loader
from detectron2.data.detection_utils import read_image
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead, build_mask_head
from detectron2.utils.events import EventStorage
from helpers import box_features, tiny_proposals
from torch import nn

from iif_d2 import IIFFastRCNNOutputLayers, add_iif_config, resolve_training_set
from iif_d2.modeling.layers import CosineConv2d, CosineLinear
from iif_d2.modeling.mask_head import NormalizedMaskRCNNConvUpsampleHead

C = 4
WEIGHTS = torch.tensor([7.5, 3.25, 1.5, 0.75, 1.0])
R2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------- layers
def _hand_linear():
    layer = CosineLinear(2, 3, scale=2.0)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
        layer.bias.copy_(torch.tensor([0.5, -1.0, 0.0]))
    return layer


def test_cosine_linear_hand_values():
    # x = (3, 4): |x| = 5; rows normalised (1, 0), (0, 1), -(1, 1)/sqrt 2
    out = _hand_linear()(torch.tensor([[3.0, 4.0], [0.0, -2.0]]))
    expected = torch.tensor(
        [
            [2 * 0.6 + 0.5, 2 * 0.8 - 1.0, 2 * (-7 / (5 * R2))],
            [2 * 0.0 + 0.5, 2 * -1.0 - 1.0, 2 * (2 / (2 * R2))],
        ]
    )
    assert torch.allclose(out, expected, atol=1e-6)
    # the norm of x and of the rows is irrelevant
    layer = _hand_linear()
    with torch.no_grad():
        layer.weight.mul_(torch.tensor([[7.0], [0.1], [3.0]]))
    assert torch.allclose(layer(torch.tensor([[30.0, 40.0], [0.0, -0.5]])), expected, atol=1e-6)


def test_cosine_linear_without_bias_and_scale_check():
    layer = CosineLinear(2, 1, scale=10.0, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0]]))
    assert layer.bias is None
    assert torch.allclose(layer(torch.tensor([[1.0, 0.0]])), torch.tensor([[10 / R2]]))
    for bad in (0.0, -8.0):
        with pytest.raises(ValueError, match="scale must be > 0"):
            CosineLinear(2, 1, scale=bad)


def test_zero_vector_gives_bias_and_zero_gradient():
    layer = _hand_linear()
    x = torch.zeros(1, 2, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, layer.bias.detach()[None])
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros(1, 2))
    assert torch.isfinite(layer.weight.grad).all()
    conv = CosineConv2d(2, 2, scale=3.0)
    nn.init.constant_(conv.bias, 0.25)
    y = torch.zeros(1, 2, 2, 2, requires_grad=True)
    conv(y).sum().backward()
    assert torch.equal(conv(y), torch.full((1, 2, 2, 2), 0.25))
    assert torch.equal(y.grad, torch.zeros_like(y))


def test_cosine_conv_hand_values():
    conv = CosineConv2d(2, 2, scale=3.0)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1))
        conv.bias.copy_(torch.tensor([0.1, -0.2]))
    # one image, two pixels: (3, 4) and (0, -2)
    x = torch.tensor([[3.0, 0.0], [4.0, -2.0]]).view(1, 2, 1, 2)
    expected = torch.tensor(
        [[3 * 0.6 + 0.1, 3 * 0.0 + 0.1], [3 * 7 / (5 * R2) - 0.2, 3 * (-1 / R2) - 0.2]]
    ).view(1, 2, 1, 2)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert conv.weight.shape == (2, 2, 1, 1) and conv.bias.shape == (2,)


def test_upstream_state_dicts_load():
    linear = nn.Linear(6, 3)
    cos = CosineLinear(6, 3, scale=8.0)
    cos.load_state_dict(linear.state_dict())
    x = torch.randn(5, 6)
    w = linear.weight / linear.weight.norm(dim=1, keepdim=True)
    expected = 8.0 * (x / x.norm(dim=1, keepdim=True)) @ w.T + linear.bias
    assert torch.allclose(cos(x), expected, atol=1e-5)

    d2conv = Conv2d(6, 3, kernel_size=1)  # detectron2's wrapper, as the mask predictor
    ccos = CosineConv2d(6, 3, scale=20.0)
    ccos.load_state_dict(d2conv.state_dict())
    y = torch.randn(2, 6, 4, 5)
    yn = y / y.norm(dim=1, keepdim=True)
    wn = d2conv.weight.flatten(1) / d2conv.weight.flatten(1).norm(dim=1, keepdim=True)
    expected = 20.0 * torch.einsum("nchw,oc->nohw", yn, wn) + d2conv.bias.view(1, -1, 1, 1)
    assert torch.allclose(ccos(y), expected, atol=1e-4)


def test_fp32_under_autocast():
    layer = _hand_linear()
    conv = CosineConv2d(2, 2, scale=3.0)
    x = torch.tensor([[3.0, 4.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
        cout = conv(x.view(1, 2, 1, 1).bfloat16())
    assert out.dtype == torch.float32 and cout.dtype == torch.float32
    assert torch.allclose(out, layer(x), atol=1e-6)
    assert torch.allclose(cout, conv(x.view(1, 2, 1, 1)), atol=1e-6)


# ------------------------------------------------------------------------- box predictor
def _kwargs(**extra):
    return dict(
        input_shape=ShapeSpec(channels=16),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=C,
        **extra,
    )


def _proposals(n_per_image=(6, 5)):
    return tiny_proposals(C, n_per_image)


def _features(n=11):
    return box_features(n)


def _hand_cosine_logits(predictor, x, scale):
    """s * cos + b in float64 numpy."""
    xn = x.double().numpy()
    w = predictor.cls_score.weight.detach().double().numpy()
    b = predictor.cls_score.bias.detach().double().numpy()
    cos = (xn / np.linalg.norm(xn, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=1, keepdims=True)
    ).T
    return scale * cos + b


def _hand_ce(logits, gt):
    shifted = logits - logits.max(1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return -log_q[np.arange(len(gt)), gt].mean()


def test_cosine_predictor_holds_upstreams_parameters_rng_neutrally():
    torch.manual_seed(0)
    upstream = FastRCNNOutputLayers(**_kwargs())
    after_upstream = torch.get_rng_state()
    torch.manual_seed(0)
    cos = IIFFastRCNNOutputLayers(**_kwargs(cosine_scale=20.0))
    assert torch.equal(torch.get_rng_state(), after_upstream)
    assert isinstance(cos.cls_score, CosineLinear) and cos.cls_score.scale == 20.0
    a, b = upstream.state_dict(), cos.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not isinstance(IIFFastRCNNOutputLayers(**_kwargs()).cls_score, CosineLinear)


def test_cosine_iif_logits_and_loss_by_hand():
    torch.manual_seed(0)
    iif = IIFFastRCNNOutputLayers(
        **_kwargs(iif_mode="end_to_end", iif_weights=WEIGHTS, cosine_scale=8.0)
    )
    with torch.no_grad():  # a non-zero bias, so that it is seen to be kept
        iif.cls_score.bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0, 0.5]))
    x, props = _features(), _proposals()
    scores, deltas = iif(x)
    z = _hand_cosine_logits(iif, x, 8.0)
    assert np.allclose(scores.detach().numpy(), z, atol=1e-5)
    gt = torch.cat([p.gt_classes for p in props]).numpy()
    with EventStorage():
        loss = iif.losses((scores, deltas), props)["loss_cls"]
    assert math.isclose(loss.item(), _hand_ce(WEIGHTS.double().numpy() * z, gt), rel_tol=1e-5)
    probs = torch.cat(iif.predict_probs((scores, deltas), props)).detach().double().numpy()
    q = np.exp(WEIGHTS.double().numpy() * z)
    assert np.allclose(probs, q / q.sum(1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("margin_mode", ["balanced_softmax", "logit_adjustment"])
def test_cosine_with_margins_and_loss_logits(margin_mode):
    m = torch.tensor([1.0, 0.5, -0.5, -2.0, 0.0])
    layer = IIFFastRCNNOutputLayers(
        **_kwargs(margin_mode=margin_mode, margins=m, cosine_scale=20.0)
    )
    x, props = _features(), _proposals()
    scores, deltas = layer(x)
    z = _hand_cosine_logits(layer, x, 20.0)
    assert np.allclose(layer.loss_logits(scores).detach().numpy(), z + m.numpy(), atol=1e-5)
    gt = torch.cat([p.gt_classes for p in props]).numpy()
    with EventStorage():
        loss = layer.losses((scores, deltas), props)["loss_cls"]
    assert math.isclose(loss.item(), _hand_ce(z + m.double().numpy(), gt), rel_tol=1e-5)


def test_loss_logits_per_mode():
    z = torch.randn(3, C + 1).bfloat16()
    e2e = IIFFastRCNNOutputLayers(**_kwargs(iif_mode="end_to_end", iif_weights=WEIGHTS))
    post = IIFFastRCNNOutputLayers(**_kwargs(iif_mode="post_process", iif_weights=WEIGHTS))
    off = IIFFastRCNNOutputLayers(**_kwargs())
    posthoc = IIFFastRCNNOutputLayers(
        **_kwargs(margin_mode="logit_adjustment_posthoc", margins=torch.ones(C + 1))
    )
    assert torch.equal(e2e.loss_logits(z), z.float() * WEIGHTS)
    for layer in (post, off, posthoc):
        out = layer.loss_logits(z)
        assert out.dtype == torch.float32 and torch.equal(out, z.float())


def test_cosine_empty_batch():
    iif = IIFFastRCNNOutputLayers(
        **_kwargs(iif_mode="end_to_end", iif_weights=WEIGHTS, cosine_scale=8.0)
    )
    props = _proposals((0,))
    preds = iif(torch.zeros(0, 16))
    with EventStorage():
        losses = iif.losses(preds, props)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"cosine_scale": 0.0}, "COSINE.SCALE must be > 0; got 0.0"),
        ({"cosine_scale": -8.0}, "COSINE.SCALE must be > 0"),
        ({"cosine_scale": 8.0, "cls_score_init": "constant"}, "CLS_SCORE_INIT 'constant'"),
    ],
)
def test_cosine_bad_arguments(extra, match):
    with pytest.raises(ValueError, match=match):
        IIFFastRCNNOutputLayers(**_kwargs(**extra))


# ----------------------------------------------------------------------------- full models
ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules")
COSINE_OPTS = [
    "MODEL.ROI_BOX_HEAD.COSINE.ENABLED",
    True,
    "MODEL.ROI_BOX_HEAD.COSINE.SCALE",
    8.0,
    "MODEL.ROI_MASK_HEAD.NAME",
    "NormalizedMaskRCNNConvUpsampleHead",
]


def _cfg(name, tmp_path, *opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, name))
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 1, *opts])
    return resolve_training_set(cfg)


# ----------------------------------------------------------------------------- mask head
def _mask_heads(num_classes=C, scale=20.0):
    args = {"input_shape": ShapeSpec(channels=8, height=7, width=7), "conv_dims": [6, 6]}
    torch.manual_seed(0)
    upstream = MaskRCNNConvUpsampleHead(num_classes=num_classes, **args)
    after_upstream = torch.get_rng_state()
    torch.manual_seed(0)
    ours = NormalizedMaskRCNNConvUpsampleHead(num_classes=num_classes, scale=scale, **args)
    assert torch.equal(torch.get_rng_state(), after_upstream)  # RNG-neutral
    return upstream, ours


@pytest.mark.parametrize("num_classes", [C, 1])  # 1: class-agnostic masks
def test_mask_head_is_upstream_with_a_cosine_predictor(num_classes):
    upstream, ours = _mask_heads(num_classes, scale=20.0)
    a, b = upstream.state_dict(), ours.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert list(ours._modules)[-1] == "predictor" and isinstance(ours.predictor, CosineConv2d)
    assert ours.predictor.weight.shape == (num_classes, 6, 1, 1)
    with torch.no_grad():
        ours.predictor.bias.copy_(torch.linspace(-0.5, 0.5, num_classes))
        x = torch.randn(3, 8, 7, 7)
        feats = x
        for name, layer in ours.named_children():  # everything before the predictor
            if name != "predictor":
                feats = layer(feats)
        got = ours.layers(x)
    assert got.shape == (3, num_classes, 14, 14)
    f = feats.double().numpy()
    w = ours.predictor.weight.detach().double().numpy().reshape(num_classes, 6)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    assert (norm == 0).any()  # all-zero pixels after the ReLU: cosine 0, logit = bias
    fn = np.divide(f, norm, out=np.zeros_like(f), where=norm > 0)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    b = ours.predictor.bias.detach().double().numpy()
    expected = 20.0 * np.einsum("nchw,oc->nohw", fn, wn) + b[None, :, None, None]
    assert np.allclose(got.numpy(), expected, atol=1e-4)


def test_mask_head_from_config_and_bad_scale(tmp_path):
    cfg = _cfg("mask_rcnn_R_18_FPN_instant.yaml", tmp_path, *COSINE_OPTS)
    cfg.MODEL.ROI_MASK_HEAD.NORMALIZED.SCALE = 12.5
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    head = build_mask_head(cfg, ShapeSpec(channels=32, height=14, width=14))
    assert isinstance(head, NormalizedMaskRCNNConvUpsampleHead)
    assert head.predictor.scale == 12.5 and head.predictor.out_channels == 1
    cfg.MODEL.ROI_MASK_HEAD.NORMALIZED.SCALE = 0.0
    with pytest.raises(ValueError, match="NORMALIZED.SCALE must be > 0; got 0.0"):
        build_mask_head(cfg, ShapeSpec(channels=32, height=14, width=14))


@pytest.mark.parametrize(
    "name", ["mask_rcnn_R_18_FPN_instant_iif.yaml", "cascade_mask_rcnn_R_18_FPN_instant_iif.yaml"]
)
def test_cosine_model_trains_one_step_and_infers(name, tmp_path):
    # score threshold 0: keep detections, so that masks are predicted at inference
    cfg = _cfg(name, tmp_path, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, *COSINE_OPTS)
    torch.manual_seed(0)
    model = build_model(cfg)
    heads = model.roi_heads
    predictors = heads.box_predictor if "cascade" in name else [heads.box_predictor]
    for p in predictors:  # the roi heads loaded upstream's state dict into the cosine layers
        assert isinstance(p.cls_score, CosineLinear) and p.cls_score.scale == 8.0
        assert p.iif_mode == "end_to_end"
    assert isinstance(heads.mask_head.predictor, CosineConv2d)
    assert heads.mask_head.predictor.scale == 20.0
    before = [p.cls_score.weight.detach().clone() for p in predictors]
    mask_before = heads.mask_head.predictor.weight.detach().clone()

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    batch = next(iter(build_detection_train_loader(cfg)))
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total) and losses["loss_mask"] > 0
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    for p, w in zip(predictors, before, strict=True):
        assert not torch.equal(w, p.cls_score.weight)
    assert not torch.equal(mask_before, heads.mask_head.predictor.weight)

    d = DatasetCatalog.get("iif_synthetic_tiny_val")[0]
    img = torch.as_tensor(read_image(d["file_name"], "BGR").transpose(2, 0, 1).copy())
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": img, "height": 96, "width": 96}])
    inst = out["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (96, 96)
    assert torch.isfinite(inst.scores).all() and (inst.scores <= 1).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_twin_matches_cpu_and_is_fp32_under_autocast():
    layer, conv = _hand_linear(), CosineConv2d(2, 2, scale=3.0)
    x, y = torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.randn(2, 2, 3, 3).half()
    want_x, want_y = layer(x), conv(y.float())  # the same fp16-rounded input
    layer, conv = layer.cuda(), conv.cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        got_x, got_y = layer(x.cuda().half()), conv(y.cuda())
    assert got_x.dtype == got_y.dtype == torch.float32
    assert torch.allclose(got_x.cpu(), want_x, atol=1e-5)
    assert torch.allclose(got_y.cpu(), want_y, atol=1e-5)
