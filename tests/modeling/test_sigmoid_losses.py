"""The focal-loss treatments of iif_d2.modeling.sigmoid_losses on hand-checkable inputs: with
unit weights (and EFL's S = 0) each is the plain focal loss; the positive weight touches the
positives only, negative suppression the other-class negatives only; EFL's closed-form gradient
statistics are autograd's."""

import pytest
import torch
from fvcore.nn import sigmoid_focal_loss
from helpers import focal_loss_by_hand

from iif_d2.modeling.sigmoid_losses import (
    efl_gammas,
    efl_gradient_magnitudes,
    long_tail_focal_loss,
    negative_suppression_weights,
    one_hot_targets,
)

C = 4
LABELS = torch.tensor([0, 2, C, C, 3, 2])  # fg 0, fg 2, bg, bg, fg 3, fg 2


def _logits():
    return torch.randn(len(LABELS), C, generator=torch.Generator().manual_seed(0)) * 3


def _plain(z, labels=LABELS):
    return sigmoid_focal_loss(
        z, one_hot_targets(labels, C), alpha=0.25, gamma=2.0, reduction="none"
    )


def test_unit_weights_and_efl_scale_zero_are_the_focal_loss():
    z = _logits()
    ones = torch.ones(C)
    plain = _plain(z)
    assert torch.allclose(plain.sum(), sum(focal_loss_by_hand(z[i], one_hot_targets(LABELS, C)[i])
                                           for i in range(len(LABELS))))  # fmt: skip
    for kwargs in ({}, {"positive_weights": ones}, {"negative_weights": ones}):
        got = long_tail_focal_loss(z, LABELS, alpha=0.25, gamma=2.0, **kwargs)
        assert torch.allclose(got, plain, atol=1e-7), kwargs
    # EFL with S = 0: gamma_c = gamma_b and factor 1, whatever the statistics
    gammas, factors = efl_gammas(torch.rand(C), torch.rand(C) + 0.1, 2.0, 0.0)
    assert torch.equal(gammas, torch.full((C,), 2.0)) and torch.equal(factors, torch.ones(C))
    got = long_tail_focal_loss(
        z, LABELS, alpha=0.25, gamma=2.0, class_gammas=gammas, class_factors=factors
    )
    assert torch.allclose(got, plain, atol=1e-7)


def test_positive_weight_scales_the_positive_elements_only():
    z, w = _logits(), torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = long_tail_focal_loss(z, LABELS, alpha=0.25, gamma=2.0, positive_weights=w)
    targets = one_hot_targets(LABELS, C)
    plain = _plain(z)
    expected = torch.where(targets > 0, plain * w, plain)
    assert torch.allclose(got, expected)
    assert got[0, 0] == pytest.approx(plain[0, 0].item() * 1.0)
    assert got[4, 3] == pytest.approx(plain[4, 3].item() * 4.0)


def test_negative_suppression_leaves_positives_and_background_anchors():
    z, w = _logits(), torch.tensor([0.5, 1.0, 2.0, 5.0])
    s = negative_suppression_weights(w)
    assert torch.allclose(s, torch.tensor([1.0, 0.5, 0.25, 0.1]))  # min(w) / w_c
    got = long_tail_focal_loss(z, LABELS, alpha=0.25, gamma=2.0, negative_weights=s)
    plain = _plain(z)
    targets = one_hot_targets(LABELS, C)
    background = LABELS == C
    assert torch.allclose(got[targets > 0], plain[targets > 0])  # positives untouched
    assert torch.allclose(got[background], plain[background])  # background anchors untouched
    # anchor 1 (a class-2 object): class 3's negative term x 0.1, class 0's x 1
    assert got[1, 3] == pytest.approx(0.1 * plain[1, 3].item())
    assert got[1, 0] == pytest.approx(plain[1, 0].item())
    with pytest.raises(ValueError, match="positive IIF weights"):
        negative_suppression_weights(torch.tensor([1.0, 0.0, 2.0, 3.0]))


def test_no_subnormal_floats_at_large_gamma():
    """EFL's gamma_c up to 10 on confident elements: (1 - p_t)^gamma below exp(-80) is 0, not a
    subnormal float (slow on CPUs), and the gradient stays finite."""
    z = torch.tensor([[12.0, -12.0], [-30.0, 30.0]], requires_grad=True)
    labels = torch.tensor([0, 2])  # fg 0 (confident right), background (class 1 confident wrong)
    gammas = torch.full((2,), 10.0)
    loss = long_tail_focal_loss(z, labels, alpha=0.25, gamma=2.0, class_gammas=gammas)
    loss.sum().backward()
    tiny = torch.finfo(torch.float32).tiny
    assert ((loss == 0) | (loss.abs() >= tiny)).all()
    assert loss[0, 0] == 0 and loss[0, 1] == 0 and loss[1, 0] == 0 and loss[1, 1] > 1
    assert torch.isfinite(z.grad).all()


def test_efl_gammas_by_hand():
    pos, neg = torch.tensor([1.0, 0.5, 0.0, 3.0]), torch.tensor([2.0, 0.5, 4.0, 0.0])
    gammas, factors = efl_gammas(pos, neg, 2.0, 8.0)
    # g = 0.5, 1, 0 (clamped ratios); no negative gradient yet: 1 (plain focal loss)
    assert torch.allclose(gammas, torch.tensor([6.0, 2.0, 10.0, 2.0]))
    assert torch.allclose(factors, torch.tensor([3.0, 1.0, 5.0, 1.0]))


@pytest.mark.parametrize("rule", [None, "positive", "negative"])
def test_efl_gradient_statistics_are_autograds(rule):
    z = _logits().requires_grad_(True)
    gammas, factors = efl_gammas(torch.rand(C), torch.rand(C) + 0.5, 2.0, 8.0)
    w = torch.tensor([0.5, 1.0, 2.0, 5.0])
    kwargs = {"class_gammas": gammas, "class_factors": factors}
    if rule == "positive":
        kwargs["positive_weights"] = w
    if rule == "negative":
        kwargs["negative_weights"] = negative_suppression_weights(w)
    long_tail_focal_loss(z, LABELS, alpha=0.25, gamma=2.0, **kwargs).sum().backward()
    targets = one_hot_targets(LABELS, C)
    grad = z.grad.abs()
    pos, neg = efl_gradient_magnitudes(z.detach(), LABELS, alpha=0.25, **kwargs)
    assert torch.allclose(pos, (grad * targets).sum(0), rtol=1e-5, atol=1e-7)
    assert torch.allclose(neg, (grad * (1 - targets)).sum(0), rtol=1e-5, atol=1e-7)
