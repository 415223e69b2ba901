"""IIFFastRCNNOutputLayers against detectron2's FastRCNNOutputLayers and the paper's maths."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.utils.events import EventStorage
from helpers import box_features, tiny_proposals

from iif_d2 import IIFFastRCNNOutputLayers
from iif_d2.utils.compat import fast_rcnn_supports

C = 4
WEIGHTS = torch.tensor([7.5, 3.25, 1.5, 0.75, 1.0])  # C foreground weights, background 1


def _kwargs(**extra):
    return dict(
        input_shape=ShapeSpec(channels=16),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=C,
        **extra,
    )


def _pair(mode="end_to_end", weights=WEIGHTS, **extra):
    torch.manual_seed(0)
    upstream = FastRCNNOutputLayers(**_kwargs(**extra))
    torch.manual_seed(0)
    iif = IIFFastRCNNOutputLayers(**_kwargs(iif_mode=mode, iif_weights=weights, **extra))
    return upstream, iif


def _proposals(n_per_image=(6, 5)):
    return tiny_proposals(C, n_per_image)


def _features(n=11):
    return box_features(n)


def _losses(module, predictions, proposals):
    with EventStorage():
        return module.losses(predictions, proposals)


@pytest.mark.parametrize("mode", ["off", "end_to_end", "post_process"])
def test_all_ones_weights_reproduce_upstream_exactly(mode):
    upstream, iif = _pair(mode, torch.ones(C + 1))
    x, props = _features(), _proposals()
    p_up, p_iif = upstream(x), iif(x)
    assert torch.equal(p_up[0], p_iif[0]) and torch.equal(p_up[1], p_iif[1])
    l_up, l_iif = _losses(upstream, p_up, props), _losses(iif, p_iif, props)
    assert l_up.keys() == l_iif.keys()
    for k in l_up:
        assert torch.equal(l_up[k], l_iif[k]), k
    for a, b in zip(upstream.predict_probs(p_up, props), iif.predict_probs(p_iif, props)):
        assert torch.equal(a, b)
    (a,), (b,) = upstream.inference(p_up, props)[0][:1], iif.inference(p_iif, props)[0][:1]
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)


def test_off_mode_ignores_weights_and_matches_upstream():
    upstream, iif = _pair("off", None)
    x, props = _features(), _proposals()
    assert not hasattr(iif, "iif_weights")
    for a, b in zip(upstream.predict_probs(upstream(x), props), iif.predict_probs(iif(x), props)):
        assert torch.equal(a, b)


def test_end_to_end_loss_is_ce_of_scaled_logits():
    _, iif = _pair("end_to_end")
    x, props = _features(), _proposals()
    scores, deltas = iif(x)
    gt = torch.cat([p.gt_classes for p in props])
    expected = F.cross_entropy(scores * WEIGHTS, gt)
    assert torch.allclose(_losses(iif, (scores, deltas), props)["loss_cls"], expected)


def test_gradient_is_weighted_softmax_residual():
    """Paper Eq. 16: dL/dz_i = w_i (q_i - 1[i = y]), q = softmax(w * z); mean over RoIs."""
    _, iif = _pair("end_to_end")
    props = _proposals()
    z = torch.randn(11, C + 1, dtype=torch.float32, requires_grad=True)
    deltas = torch.zeros(11, 4 * C)
    _losses(iif, (z, deltas), props)["loss_cls"].backward()
    gt = torch.cat([p.gt_classes for p in props])
    q = torch.softmax(WEIGHTS * z.detach(), dim=1)
    expected = WEIGHTS * (q - F.one_hot(gt, C + 1)) / len(gt)
    assert torch.allclose(z.grad, expected, atol=1e-7)


@pytest.mark.parametrize("mode", ["end_to_end", "post_process"])
def test_scores_are_weighted_softmax_and_sum_to_one(mode):
    _, iif = _pair(mode)
    x, props = _features(), _proposals()
    scores, deltas = iif(x)
    probs = torch.cat(iif.predict_probs((scores, deltas), props))
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)))
    assert torch.allclose(probs, torch.softmax(scores * WEIGHTS, 1))


def test_post_process_trains_like_upstream():
    upstream, iif = _pair("post_process")
    x, props = _features(), _proposals()
    l_up, l_iif = _losses(upstream, upstream(x), props), _losses(iif, iif(x), props)
    for k in l_up:
        assert torch.equal(l_up[k], l_iif[k])


def test_background_keeps_its_logit_sign():
    """A multiplicative weight never flips the sign of a logit (positive weights)."""
    _, iif = _pair("end_to_end")
    z = torch.randn(50, C + 1)
    scaled = iif.scale_logits(z)
    assert torch.equal(torch.sign(scaled), torch.sign(z))
    assert torch.equal(scaled[:, C], z[:, C])


def test_empty_batch():
    _, iif = _pair("end_to_end")
    props = _proposals((0,))
    preds = iif(torch.zeros(0, 16))
    losses = _losses(iif, preds, props)
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.cat(iif.predict_probs(preds, props)).shape == (0, C + 1)


def test_loss_is_fp32_under_autocast():
    _, iif = _pair("end_to_end")
    props = _proposals()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, deltas = iif(_features())
        assert scores.dtype == torch.bfloat16
        scaled = iif.scale_logits(scores)
        loss = _losses(iif, (scores, deltas), props)["loss_cls"]
    assert scaled.dtype == torch.float32 and loss.dtype == torch.float32
    gt = torch.cat([p.gt_classes for p in props])
    assert torch.allclose(loss, F.cross_entropy(scores.float() * WEIGHTS, gt))


def test_weights_are_a_non_persistent_buffer():
    _, iif = _pair("end_to_end")
    assert "iif_weights" in dict(iif.named_buffers())
    assert "iif_weights" not in iif.state_dict()  # checkpoints stay loadable by detectron2


def test_constant_init():
    iif = IIFFastRCNNOutputLayers(
        **_kwargs(iif_mode="end_to_end", iif_weights=WEIGHTS, cls_score_init="constant")
    )
    assert torch.all(iif.cls_score.weight == 0.001) and torch.all(iif.cls_score.bias == 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"iif_mode": "sometimes", "iif_weights": WEIGHTS}, "not one of"),
        ({"iif_mode": "end_to_end", "iif_weights": WEIGHTS[:-1]}, "C\\+1"),
        ({"iif_mode": "end_to_end", "iif_weights": WEIGHTS, "cls_score_init": "x"}, "INIT"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IIFFastRCNNOutputLayers(**_kwargs(**kwargs))


@pytest.mark.skipif(
    not fast_rcnn_supports("use_sigmoid_ce"), reason="detectron2 without USE_SIGMOID_CE (v0.6)"
)
@pytest.mark.parametrize("fed", [False, True])
def test_sigmoid_ce_and_federated_loss_see_scaled_logits(fed):
    extra = {"use_sigmoid_ce": True}
    if fed:
        extra.update(
            use_fed_loss=True,
            get_fed_loss_cls_weights=lambda: torch.ones(C),
            fed_loss_num_classes=C,  # every class kept: deterministic
        )
    upstream, iif = _pair("end_to_end", **extra)
    x, props = _features(), _proposals()
    scores, deltas = iif(x)
    got = _losses(iif, (scores, deltas), props)["loss_cls"]
    want = _losses(upstream, (scores * WEIGHTS, deltas), props)["loss_cls"]
    assert torch.allclose(got, want)
    probs = torch.cat(iif.predict_probs((scores, deltas), props))
    assert torch.allclose(probs, torch.sigmoid(scores * WEIGHTS))


# --------------------------------------------------------------- additive-margin baselines
COUNTS = [40, 10, 4, 1]
K = 50


@pytest.mark.parametrize("kind", ["balanced_softmax", "logit_adjustment"])
def test_margin_in_loss_plain_scores(kind):
    from iif_d2.weights import additive_margins

    m = additive_margins(COUNTS, K, kind, tau=1.0)
    expected_m = [math.log(f) if kind == "balanced_softmax" else math.log(f / K) for f in COUNTS]
    assert torch.allclose(m, torch.tensor([*expected_m, 0.0]))
    upstream, module = _pair("off", None)
    module = IIFFastRCNNOutputLayers(**_kwargs(margin_mode=kind, margins=m))
    module.load_state_dict(upstream.state_dict())
    x, props = _features(), _proposals()
    scores, deltas = module(x)
    gt = torch.cat([p.gt_classes for p in props])
    got = _losses(module, (scores, deltas), props)["loss_cls"]
    assert torch.allclose(got, F.cross_entropy(scores + m, gt))
    for a, b in zip(
        upstream.predict_probs(upstream(x), props), module.predict_probs((scores, deltas), props)
    ):
        assert torch.equal(a, b)  # plain softmax(z) at test


def test_posthoc_logit_adjustment():
    from iif_d2.weights import additive_margins

    m = additive_margins(COUNTS, K, "logit_adjustment_posthoc", tau=0.5)
    assert torch.allclose(m[:-1], 0.5 * torch.log(torch.tensor(COUNTS, dtype=torch.float) / K))
    upstream, _ = _pair("off", None)
    module = IIFFastRCNNOutputLayers(**_kwargs(margin_mode="logit_adjustment_posthoc", margins=m))
    module.load_state_dict(upstream.state_dict())
    x, props = _features(), _proposals()
    preds = module(x)
    l_up, l_m = _losses(upstream, upstream(x), props), _losses(module, preds, props)
    assert torch.equal(l_up["loss_cls"], l_m["loss_cls"])
    probs = torch.cat(module.predict_probs(preds, props))
    assert torch.allclose(probs, torch.softmax(preds[0] - m, 1))


def test_margins_can_flip_a_logit_sign_weights_cannot():
    """The paper's Fig. 1 argument: z + m crosses zero for some z, w * z (w > 0) never does."""
    from iif_d2.weights import additive_margins, iif_weights

    z = torch.tensor([0.5, -0.5, 2.0, 1.0, 0.0])
    m = additive_margins(COUNTS, K, "logit_adjustment")
    w = iif_weights(COUNTS, K, "raw")
    assert (torch.sign(z + m) != torch.sign(z))[:-1].any()
    assert torch.equal(torch.sign(z * w), torch.sign(z))


def test_iif_and_margins_are_exclusive():
    with pytest.raises(ValueError, match="exclusive"):
        IIFFastRCNNOutputLayers(
            **_kwargs(
                iif_mode="end_to_end",
                iif_weights=WEIGHTS,
                margin_mode="balanced_softmax",
                margins=torch.zeros(C + 1),
            )
        )
    with pytest.raises(ValueError, match="not one of"):
        IIFFastRCNNOutputLayers(**_kwargs(margin_mode="focal", margins=torch.zeros(C + 1)))
    from iif_d2.weights import additive_margins

    with pytest.raises(ValueError, match="zero count"):
        additive_margins([3, 0], 5, "balanced_softmax", class_names=["a", "b"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_twin_matches_cpu():
    _, iif = _pair("end_to_end")
    x, props = _features(), _proposals()
    cpu_loss = _losses(iif, iif(x), props)["loss_cls"]
    gpu = iif.cuda()
    gpu_props = [p.to("cuda") for p in props]
    gpu_loss = _losses(gpu, gpu(x.cuda()), gpu_props)["loss_cls"]
    assert gpu.iif_weights.is_cuda
    assert torch.allclose(cpu_loss, gpu_loss.cpu(), atol=1e-5)
