"""IIFRetinaNet: focal loss on w * z for foreground anchors, sigmoid(w * z) at inference, and
exactly detectron2's RetinaNet without weights (or with all-ones weights)."""

import copy
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from helpers import focal_loss_by_hand

from iif_d2 import IIFRetinaNet, add_iif_config, resolve_training_set

CONFIG = os.path.join(
    os.path.dirname(__file__),
    "..",
    "..",
    "configs",
    "quick_schedules",
    "retinanet_R_18_FPN_instant_iif.yaml",
)
C = 8


def _cfg(tmp_path, *opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), *opts])
    return resolve_training_set(cfg)


def _fake_batch():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(1, 5, C, generator=g)]  # one level, 5 anchors
    labels = [torch.tensor([2, C, -1, 5, C])]  # fg 2, bg, ignored, fg 5, bg
    boxes = torch.tensor([[0.0, 0, 10, 10]]).repeat(5, 1)
    return [Boxes(boxes)], logits, labels, [torch.zeros(1, 5, 4)], [boxes]


@pytest.mark.parametrize("scale_all", [False, True])
def test_focal_loss_scaling_by_hand(tmp_path, scale_all):
    model = build_model(_cfg(tmp_path, "MODEL.RETINANET.IIF.SCALE_ALL_ANCHORS", scale_all))
    w = model.iif_weights
    anchors, logits, labels, deltas, gt = _fake_batch()
    with EventStorage():
        loss = model.losses(anchors, logits, labels, deltas, gt)["loss_cls"]
    z = logits[0][0]
    rows = {0: 2, 1: None, 3: 5, 4: None}  # anchor -> fg class (None: background)
    total = 0.0
    for a, cls in rows.items():
        target = torch.zeros(C)
        if cls is not None:
            target[cls] = 1
        scaled = z[a] * w if (cls is not None or scale_all) else z[a]
        total = total + focal_loss_by_hand(scaled, target)
    normalizer = 0.9 * 100 + 0.1 * 2  # detectron2's EMA of the 2 positive anchors
    assert torch.allclose(loss, total / normalizer, rtol=1e-5)


def test_no_weights_and_all_ones_weights_are_upstream_retinanet(tmp_path):
    cfg = _cfg(tmp_path, "MODEL.RETINANET.IIF.ENABLED", False)
    upstream_cfg = cfg.clone()
    upstream_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    torch.manual_seed(0)
    ours = build_model(cfg)
    torch.manual_seed(0)
    upstream = build_model(upstream_cfg)
    assert ours.iif_weights is None
    ours_ones = copy.deepcopy(ours)  # fresh loss-normalizer EMA for each
    ours_ones.iif_weights = torch.ones(C)
    batch = _fake_batch()
    with EventStorage():
        ref = upstream.losses(*batch)
        off = ours.losses(*batch)
        ones = ours_ones.losses(*batch)
    for k in ref:
        assert torch.equal(ref[k], off[k]) and torch.equal(ref[k], ones[k]), k


def test_loss_normalizer_is_saved_with_the_model(tmp_path):
    """detectron2 keeps RetinaNet's EMA loss normaliser outside the state dict, so a resumed run
    restarted it at 100; IIFRetinaNet computes it exactly as detectron2 does and saves it."""
    cfg = _cfg(tmp_path, "MODEL.RETINANET.IIF.ENABLED", False)
    upstream_cfg = cfg.clone()
    upstream_cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    ours, upstream = build_model(cfg), build_model(upstream_cfg)
    assert ours.loss_normalizer == 100.0
    batch = _fake_batch()
    with EventStorage():
        for _ in range(3):
            ours.losses(*batch), upstream.losses(*batch)
    assert ours.loss_normalizer == upstream.loss_normalizer != 100.0
    restored = build_model(cfg)
    restored.load_state_dict(ours.state_dict())
    assert restored.loss_normalizer == ours.loss_normalizer
    with EventStorage():
        assert torch.equal(restored.losses(*batch)["loss_cls"], ours.losses(*batch)["loss_cls"])


def test_inference_weights_follow_the_channel_layout(tmp_path):
    model = build_model(_cfg(tmp_path))
    A = model.anchor_generator.num_cell_anchors[0]
    x = torch.randn(2, A * C, 3, 4)
    (scaled,) = model.scale_test_logits([x])
    assert torch.allclose(
        permute_to_N_HWA_K(scaled, C), permute_to_N_HWA_K(x, C) * model.iif_weights
    )


def test_bad_weights_shape(tmp_path):
    kwargs = IIFRetinaNet.from_config(_cfg(tmp_path, "MODEL.RETINANET.IIF.ENABLED", False))
    with pytest.raises(ValueError, match="no background"):
        IIFRetinaNet(**dict(kwargs, iif_weights=torch.ones(81)))


def test_train_step_and_inference(tmp_path):
    from iif_d2.engine.trainer import Trainer

    cfg = _cfg(tmp_path, "SOLVER.MAX_ITER", 2)
    trainer = Trainer(cfg)
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.storage.latest()["total_loss"][0]))
    results = Trainer.test(cfg, trainer.model)
    assert {"AP", "APr", "APc", "APf"} <= set(results["bbox"])


def test_group_norm_head_builds_on_every_detectron2(tmp_path):
    """RETINANET.NORM "GN" (detectron2 v0.6 cannot build it from the string): 32-group GroupNorm
    after every tower conv; the default (no norm) stays upstream's plain head."""
    model = build_model(_cfg(tmp_path, "MODEL.RETINANET.NORM", "GN"))
    for tower in (model.head.cls_subnet, model.head.bbox_subnet):
        norms = [m for m in tower if isinstance(m, torch.nn.GroupNorm)]
        convs = [m for m in tower if isinstance(m, torch.nn.Conv2d)]
        assert len(norms) == len(convs) > 0
        assert all(n.num_groups == 32 and n.num_channels == c.out_channels
                   for n, c in zip(norms, convs))  # fmt: skip
    plain = build_model(_cfg(tmp_path / "plain"))
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.head.modules())


@pytest.mark.parametrize("apply_at", ["train", "test"])
def test_apply_at_keeps_the_scaling_on_one_side(tmp_path, apply_at):
    """APPLY_AT "train": the loss of the default rule, raw logits at inference; "test": the plain
    loss, w * z at inference."""
    both = build_model(_cfg(tmp_path))
    model = build_model(_cfg(tmp_path, "MODEL.RETINANET.IIF.APPLY_AT", apply_at))
    plain = copy.deepcopy(model)
    plain.iif_weights = None
    batch = _fake_batch()
    with EventStorage():
        got = model.losses(*batch)["loss_cls"]
        want = (both if apply_at == "train" else plain).losses(*batch)["loss_cls"]
    assert torch.equal(got, want)
    assert model._scales_logits("test") == (apply_at == "test")


def test_positive_weight_and_negative_suppression_losses_by_hand(tmp_path):
    anchors, logits, labels, deltas, gt = _fake_batch()
    z = logits[0][0]
    rows = {0: 2, 1: None, 3: 5, 4: None}  # anchor -> fg class (None: background)
    normalizer = 0.9 * 100 + 0.1 * 2
    for rule in ("positive_weight", "negative_suppression"):
        model = build_model(_cfg(tmp_path, "MODEL.RETINANET.IIF.RULE", rule))
        w = model.iif_weights
        s = w.min() / w
        with EventStorage():
            loss = model.losses(anchors, logits, labels, deltas, gt)["loss_cls"]
        total = 0.0
        for a, cls in rows.items():
            for c in range(C):
                y = torch.tensor([1.0 if c == cls else 0.0])
                term = focal_loss_by_hand(z[a, c : c + 1], y)
                if rule == "positive_weight" and c == cls:
                    term = term * w[c]
                if rule == "negative_suppression" and cls is not None and c != cls:
                    term = term * s[c]
                total = total + term
        assert torch.allclose(loss, total / normalizer, rtol=1e-5), rule
        # inference keeps the raw logits
        assert not model._scales_logits("test")


def test_efl_statistics_grow_and_are_saved(tmp_path):
    cfg = _cfg(tmp_path, "MODEL.RETINANET.IIF.ENABLED", False, "MODEL.RETINANET.EFL.ENABLED", True)
    model = build_model(cfg)
    assert model.iif_weights is None and model.efl_scale_factor == 8.0
    batch = _fake_batch()
    with EventStorage():
        first = model.losses(*batch)["loss_cls"]  # no statistics yet: the plain focal loss
        assert (model.efl_pos_grad > 0).any() and (model.efl_neg_grad > 0).all()
        second = model.losses(*batch)["loss_cls"]
    plain = build_model(_cfg(tmp_path, "MODEL.RETINANET.IIF.ENABLED", False))
    with EventStorage():
        assert torch.allclose(first, plain.losses(*batch)["loss_cls"])
    assert not torch.allclose(first, second)
    assert {"efl_pos_grad", "efl_neg_grad"} <= set(model.state_dict())
    model.eval()
    before = model.efl_neg_grad.clone()
    with EventStorage():
        model.losses(*batch)
    assert torch.equal(model.efl_neg_grad, before)  # only training updates them


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.RETINANET.IIF.RULE", "weights"], r"IIF.RULE 'weights': choose one of"),
        (["MODEL.RETINANET.IIF.APPLY_AT", "never"], r"IIF.APPLY_AT 'never': choose one of"),
        (["MODEL.RETINANET.IIF.ENABLED", False, "MODEL.RETINANET.IIF.APPLY_AT", "test"],
         r"IIF.APPLY_AT 'test' needs MODEL.RETINANET.IIF.ENABLED True"),
        (["MODEL.RETINANET.IIF.RULE", "positive_weight", "MODEL.RETINANET.IIF.APPLY_AT", "test"],
         r"acts on RULE 'logits' only"),
        (["MODEL.RETINANET.IIF.RULE", "negative_suppression",
          "MODEL.RETINANET.IIF.SCALE_ALL_ANCHORS", True], r"SCALE_ALL_ANCHORS acts on RULE"),
        (["MODEL.RETINANET.IIF.APPLY_AT", "test", "MODEL.RETINANET.IIF.SCALE_ALL_ANCHORS", True],
         r"APPLY_AT 'test' leaves"),
        (["MODEL.RETINANET.EFL.SCALE_FACTOR", 4.0], r"EFL.SCALE_FACTOR needs"),
        (["MODEL.RETINANET.EFL.ENABLED", True, "MODEL.RETINANET.EFL.SCALE_FACTOR", -1.0],
         r"SCALE_FACTOR >= 0"),
        (["MODEL.RETINANET.IIF.RULE", "negative_suppression", "MODEL.RETINANET.IIF.VARIANT",
          "relative", "MODEL.RETINANET.IIF.ALLOW_NONPOSITIVE_WEIGHTS", True],
         r"needs positive IIF weights"),
    ],
)  # fmt: skip
def test_settings_the_model_would_ignore_are_errors(tmp_path, opts, message):
    with pytest.raises(ValueError, match=message) as e:
        build_model(_cfg(tmp_path, *opts))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["MODEL.RETINANET.IIF.ENABLED", "MODEL.RETINANET.EFL.ENABLED"])
def test_long_tail_keys_on_detectron2s_retinanet_are_an_error(tmp_path, key):
    """detectron2's own RetinaNet would ignore IIF and EFL: the config check names the key."""
    from iif_d2.modeling.config_check import check_settings_used

    cfg = _cfg(tmp_path, "MODEL.META_ARCHITECTURE", "RetinaNet", key, True)
    with pytest.raises(ValueError, match=f"{key} needs META_ARCHITECTURE 'IIFRetinaNet'"):
        check_settings_used(cfg, build_model(cfg))
