"""Long-tail logit adjustments for classifiers: losses on hand-made logits, the strategies."""

import math

import pytest
import torch
import torch.nn.functional as F

from iif_d2.classification.adjust import LogitAdjustment, train_only_classifier
from iif_d2.classification.train import SmallCNN, retrain_classifier
from iif_d2.weights import VARIANTS, iif_weights

COUNTS = [45, 35, 20]  # K = 100
LOGITS = torch.tensor([[2.0, 1.0, -1.0], [0.5, 0.2, 0.4]])
TARGETS = torch.tensor([2, 1])


def _ce(rows, targets):
    """Cross entropy computed by hand, one row at a time."""
    total = 0.0
    for z, y in zip(rows, targets):
        total += -z[y] + math.log(sum(math.exp(v) for v in z))
    return total / len(rows)


def test_end_to_end_loss_equals_hand_computed():
    w = [math.log(101 / (f + 1)) + 1 for f in COUNTS]  # smooth, by hand
    scaled = [[w[c] * float(z[c]) for c in range(3)] for z in LOGITS]
    adj = LogitAdjustment("iif", COUNTS, strategy="end_to_end", variant="smooth")
    assert float(adj.loss(LOGITS, TARGETS)) == pytest.approx(_ce(scaled, TARGETS.tolist()), 1e-6)
    assert torch.allclose(adj.predict(LOGITS), torch.tensor(scaled), atol=1e-6)


def test_weights_of_all_ones_reproduce_cross_entropy():
    plain = F.cross_entropy(LOGITS, TARGETS)
    adj = LogitAdjustment("iif", COUNTS, strategy="end_to_end", variant="raw")
    assert not torch.allclose(adj.loss(LOGITS, TARGETS), plain)
    adj.train_scale.fill_(1.0)
    assert torch.equal(adj.loss(LOGITS, TARGETS), plain)
    assert torch.equal(LogitAdjustment("softmax", COUNTS).loss(LOGITS, TARGETS), plain)
    assert torch.equal(LogitAdjustment("softmax", COUNTS).predict(LOGITS), LOGITS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_post_process_changes_only_inference(variant):
    pp = LogitAdjustment("iif", COUNTS, strategy="post_process", variant=variant)
    e2e = LogitAdjustment("iif", COUNTS, strategy="end_to_end", variant=variant)
    assert torch.equal(pp.loss(LOGITS, TARGETS), F.cross_entropy(LOGITS, TARGETS))
    # post-process of a softmax model == end-to-end inference with the same weights
    assert torch.equal(pp.predict(LOGITS), e2e.predict(LOGITS))
    w = iif_weights(COUNTS, 100, variant, background=False)
    assert torch.allclose(pp.predict(LOGITS), LOGITS * w)


def test_decoupled_stages():
    s1 = LogitAdjustment("iif", COUNTS, strategy="decoupled", stage=1)
    s2 = LogitAdjustment("iif", COUNTS, strategy="decoupled", stage=2)
    e2e = LogitAdjustment("iif", COUNTS, strategy="end_to_end")
    assert torch.equal(s1.loss(LOGITS, TARGETS), F.cross_entropy(LOGITS, TARGETS))
    assert torch.equal(s2.loss(LOGITS, TARGETS), e2e.loss(LOGITS, TARGETS))
    assert torch.equal(s1.predict(LOGITS), s2.predict(LOGITS))


def test_raw_base2_base10_rank_alike_post_process():
    z = torch.randn(50, 3)
    preds = [
        LogitAdjustment("iif", COUNTS, strategy="post_process", variant=v).predict(z).argmax(1)
        for v in ("raw", "base2", "base10")
    ]
    assert torch.equal(preds[0], preds[1]) and torch.equal(preds[0], preds[2])


def test_margin_baselines():
    n = torch.tensor(COUNTS, dtype=torch.float32)
    bs = LogitAdjustment("balanced_softmax", COUNTS)
    la = LogitAdjustment("logit_adjustment", COUNTS, tau=1.0)
    la2 = LogitAdjustment("logit_adjustment", COUNTS, tau=2.0)
    post = LogitAdjustment("logit_adjustment_posthoc", COUNTS, tau=1.5)
    assert torch.allclose(bs.loss(LOGITS, TARGETS), F.cross_entropy(LOGITS + n.log(), TARGETS))
    # ln n and ln p differ by a constant: balanced softmax == logit adjustment with tau 1
    assert torch.allclose(bs.loss(LOGITS, TARGETS), la.loss(LOGITS, TARGETS), atol=1e-6)
    log_p = (n / n.sum()).log()
    assert torch.allclose(la2.loss(LOGITS, TARGETS), F.cross_entropy(LOGITS + 2 * log_p, TARGETS))
    assert torch.equal(bs.predict(LOGITS), LOGITS)
    assert torch.equal(post.loss(LOGITS, TARGETS), F.cross_entropy(LOGITS, TARGETS))
    assert torch.allclose(post.predict(LOGITS), LOGITS - 1.5 * log_p)


def test_decoupled_stage2_trains_only_the_classifier():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, width=4)
    x, y = torch.rand(40, 1, 28, 28), torch.randint(0, 3, (40,))
    model.train()
    model(x)  # move the batch-norm statistics away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adj = LogitAdjustment("iif", COUNTS, strategy="decoupled")
    with torch.no_grad():
        feats = model.eval().features(x)
    retrain_classifier(model, model.fc, feats, y, adj, epochs=3, batch_size=8)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}
    assert all(not p.requires_grad for p in model.features.parameters())


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="Unknown method 'focal'"):
        LogitAdjustment("focal", COUNTS)
    with pytest.raises(ValueError, match="Unknown IIF strategy"):
        LogitAdjustment("iif", COUNTS, strategy="two_stage")
    with pytest.raises(ValueError, match="> 0 for every class"):
        LogitAdjustment("iif", [5, 0, 1])
    with pytest.raises(ValueError, match="not a sub-module"):
        train_only_classifier(SmallCNN(3, 4), torch.nn.Linear(2, 3))
