"""IIFFCOS: detectron2's FCOS from a YAML config; focal loss on w * z for foreground points,
sqrt(sigmoid(w * z) * sigmoid(ctrness)) at inference, and exactly detectron2's FCOS without
weights (or with all-ones weights)."""

import copy
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import annotations_to_instances, read_image
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers import focal_loss_by_hand

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.modeling.fcos import IIFFCOS

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
QUICK = "quick_schedules/fcos_R_18_FPN_instant_iif.yaml"
C = 8


def _cfg(tmp_path, name=QUICK, *opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, name))
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu", *opts])
    return resolve_training_set(cfg)


# one level of six anchor points (boxes of the stride, 8) and two ground-truth boxes
CENTERS = torch.tensor([[4.0, 4], [12, 12], [28, 28], [50, 50], [80, 80], [4, 50]])
EXPECTED_LABELS = [2, 2, C, 5, C, C]  # inside a box and within 1.5 strides of its centre


def _hand_batch(model):
    """label_anchors on hand-placed points (the version's own gt_boxes format), random logits."""
    anchors = [Boxes(torch.cat([CENTERS - 4, CENTERS + 4], dim=1))]
    gt = Instances((96, 96))
    gt.gt_boxes = Boxes(torch.tensor([[0.0, 0, 20, 20], [40, 40, 60, 60]]))
    gt.gt_classes = torch.tensor([2, 5])
    labels, boxes = model.label_anchors(anchors, [gt])
    assert labels[0].tolist() == EXPECTED_LABELS
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(1, 6, C, generator=g)]
    deltas = [torch.rand(1, 6, 4, generator=g) + 0.5]
    ctrness = [torch.randn(1, 6, 1, generator=g)]
    return anchors, logits, labels, deltas, boxes, ctrness


@pytest.mark.parametrize("scale_all", [False, True])
def test_focal_loss_scaling_by_hand(tmp_path, scale_all):
    model = build_model(_cfg(tmp_path, QUICK, "MODEL.FCOS.IIF.SCALE_ALL_ANCHORS", scale_all))
    w = model.iif_weights
    assert w.shape == (C,) and not torch.allclose(w, torch.ones(C))
    batch = _hand_batch(model)
    with EventStorage():
        loss = model.losses(*batch)["loss_fcos_cls"]
    z = batch[1][0][0]
    total = 0.0
    for a, label in enumerate(EXPECTED_LABELS):
        target = torch.zeros(C)
        if label != C:
            target[label] = 1
        total = total + focal_loss_by_hand(z[a] * w if (label != C or scale_all) else z[a], target)
    normalizer = 0.9 * 300 + 0.1 * 3  # FCOS: EMA from 300 with the 3 positive points
    assert torch.allclose(loss, total / normalizer, rtol=1e-5)


def _inputs(n=2, split="iif_synthetic_tiny_train"):
    inputs = []
    for d in DatasetCatalog.get(split)[:n]:
        img = torch.as_tensor(read_image(d["file_name"], "BGR").transpose(2, 0, 1).copy())
        inst = annotations_to_instances(d["annotations"], img.shape[1:])
        inputs.append({"image": img, "instances": inst, "height": 96, "width": 96})
    return inputs


def test_no_weights_and_all_ones_weights_are_upstream_fcos(tmp_path):
    cfg = _cfg(
        tmp_path, QUICK, "MODEL.FCOS.IIF.ENABLED", False, "MODEL.FCOS.SCORE_THRESH_TEST", 0.0
    )
    torch.manual_seed(0)
    ours = build_model(cfg)
    torch.manual_seed(0)
    upstream = FCOS(**IIFFCOS.from_config(cfg))  # detectron2's class, same arguments
    assert ours.iif_weights is None and type(upstream) is FCOS
    a, b = ours.state_dict(), upstream.state_dict()
    assert a.keys() == b.keys() | {"loss_normalizer_ema"}  # and the saved loss normaliser
    assert all(torch.equal(a[k], b[k]) for k in b)
    ones = copy.deepcopy(ours)  # fresh loss-normalizer EMA for each
    ones.iif_weights = torch.ones(C)
    inputs = _inputs()
    with EventStorage():
        ref, off, one = (m.train()(inputs) for m in (upstream, ours, ones))
    for k in ref:
        assert torch.equal(ref[k], off[k]) and torch.equal(ref[k], one[k]), k
    assert ours.loss_normalizer == upstream.loss_normalizer != 300  # the same EMA, one step on
    batch = _hand_batch(upstream)
    with EventStorage():
        ref, one = upstream.losses(*batch), ones.losses(*batch)
    assert all(torch.equal(ref[k], one[k]) for k in ref)
    with torch.no_grad():
        ref, off, one = (m.eval()(inputs)[0]["instances"] for m in (upstream, ours, ones))
    assert len(ref) > 0
    for x in (off, one):
        assert torch.equal(ref.scores, x.scores) and torch.equal(ref.pred_classes, x.pred_classes)
        assert torch.equal(ref.pred_boxes.tensor, x.pred_boxes.tensor)


def test_images_without_boxes_keep_raw_logits(tmp_path):
    """No foreground point: the IIF loss is the plain loss (negatives keep their raw logits)."""
    if not hasattr(FCOS, "_match_anchors"):  # v0.6's match_anchors reduces over 0 boxes
        pytest.skip("this detectron2's FCOS cannot label images without boxes")
    cfg = _cfg(tmp_path, QUICK)
    ours = build_model(cfg)
    plain = copy.deepcopy(ours)
    plain.iif_weights = None
    empty = Instances((96, 96), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0).long())
    inputs = [{"image": torch.rand(3, 96, 96) * 255, "instances": empty}] * 2
    with EventStorage():
        got, ref = ours.train()(inputs), plain.train()(inputs)
    assert got["loss_fcos_loc"] == 0 and torch.isfinite(got["loss_fcos_cls"])
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_yaml_model_is_detectron2_lazyconfig_fcos():
    """Base-FCOS.yaml builds detectron2's LazyConfig FCOS R50-FPN, parameter for parameter."""
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    try:
        lazy = model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py").model
    except RuntimeError:
        pytest.skip("this detectron2 installs no LazyConfig model zoo")
    cfg = _cfg("", "COCO-Detection/fcos_R_50_FPN_1x.yaml")
    torch.manual_seed(0)
    ours = build_model(cfg)
    torch.manual_seed(0)
    upstream = instantiate(lazy)
    a, b = ours.state_dict(), upstream.state_dict()
    assert a.keys() == b.keys() | {"loss_normalizer_ema"}  # and the saved loss normaliser
    assert all(torch.equal(a[k], b[k]) for k in b)
    frozen = [n for n, p in ours.named_parameters() if not p.requires_grad]
    assert frozen == [n for n, p in upstream.named_parameters() if not p.requires_grad]
    assert str(ours.head) == str(upstream.head) and str(ours.backbone) == str(upstream.backbone)
    for attr in (
        "num_classes",
        "head_in_features",
        "center_sampling_radius",
        "focal_loss_alpha",
        "focal_loss_gamma",
        "test_score_thresh",
        "test_topk_candidates",
        "test_nms_thresh",
        "max_detections_per_image",
    ):
        assert getattr(ours, attr) == getattr(upstream, attr), attr


def test_inference_scales_all_logits(tmp_path):
    opts = ("MODEL.FCOS.SCORE_THRESH_TEST", 0.0, "MODEL.FCOS.NMS_THRESH_TEST", 1.0)
    model = build_model(_cfg(tmp_path, QUICK, *opts)).eval()
    w = model.iif_weights
    inputs = _inputs(1, "iif_synthetic_tiny_val")
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        feats = model.backbone(images.tensor)
        features = [feats[f] for f in model.head_in_features]
        logits, deltas, ctrness = model.head(features)
        # every level, every point and class: sqrt(sigmoid(w * z) * sigmoid(ctrness))
        scores = torch.cat(
            [
                torch.sqrt(torch.sigmoid(z[0] * w[:, None, None]) * torch.sigmoid(c[0])).flatten()
                for z, c in zip(logits, ctrness)
            ]
        )
        (got,) = model.forward_inference(images, features, [logits, deltas, ctrness])
    # no threshold, no suppression: the best max_detections_per_image scores of all points
    k = model.max_detections_per_image
    assert len(got) == k
    assert torch.allclose(got.scores, scores.topk(k).values, atol=1e-6)
    plain = torch.cat(
        [torch.sqrt(z.sigmoid() * c.sigmoid()).flatten() for z, c in zip(logits, ctrness)]
    )
    assert not torch.allclose(got.scores, plain.topk(k).values, atol=1e-3)


def test_bad_weights_shape_and_bad_keys(tmp_path):
    cfg = _cfg(tmp_path, QUICK, "MODEL.FCOS.IIF.ENABLED", False)
    kwargs = IIFFCOS.from_config(cfg)
    with pytest.raises(ValueError, match="no background"):
        IIFFCOS(**dict(kwargs, iif_weights=torch.ones(C + 1)))
    cfg.MODEL.FCOS.IN_FEATURES = ["p2", "p3"]
    with pytest.raises(ValueError, match=r"\['p2'\] not among"):
        build_model(cfg)
    cfg.MODEL.FCOS.IN_FEATURES = ["p3"]
    cfg.MODEL.FCOS.NUM_CONVS = 0
    with pytest.raises(ValueError, match="NUM_CONVS"):
        build_model(cfg)


# the SynthLT one-stage configs (the COCO ones train a step and infer in tests/test_user_configs.py)
NEW_CONFIGS = [
    "SynthLT-Detection/Base-RetinaNet-R18-FPN.yaml",
    "SynthLT-Detection/retinanet_R_18_FPN.yaml",
    "SynthLT-Detection/retinanet_R_18_FPN_iif.yaml",
    "SynthLT-Detection/Base-FCOS-R18-FPN.yaml",
    "SynthLT-Detection/fcos_R_18_FPN.yaml",
    "SynthLT-Detection/fcos_R_18_FPN_iif.yaml",
]


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_config_trains_one_step_and_infers(tmp_path, name):
    """The config's model as it is, on the tiny set (its 8 classes, its class counts)."""
    head = "FCOS" if "FCOS" in name.upper().split("/")[-1] else "RETINANET"
    tiny = ["DATASETS.TRAIN", ("iif_synthetic_tiny_train",), f"MODEL.{head}.NUM_CLASSES", C]
    cfg = _cfg(tmp_path, name, *tiny, "MODEL.CLASS_COUNTS.SOURCE", "dataset")
    node = cfg.MODEL[head]
    model = build_model(cfg)
    assert (model.iif_weights is not None) == node.IIF.ENABLED
    inputs = _inputs()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with EventStorage():
        losses = model.train()(inputs)
    sum(losses.values()).backward()
    optimizer.step()
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        out = model.eval()(inputs)
    assert len(out) == 2 and all(o["instances"].scores.isfinite().all() for o in out)


def test_quick_schedule_trains_and_evaluates(tmp_path):
    from iif_d2.engine.trainer import Trainer

    cfg = _cfg(tmp_path, QUICK, "SOLVER.MAX_ITER", 2)
    trainer = Trainer(cfg)
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.storage.latest()["total_loss"][0]))
    results = Trainer.test(cfg, trainer.model)
    assert {"AP", "APr", "APc", "APf"} <= set(results["bbox"])


@pytest.mark.parametrize(
    "opts",
    [
        ["MODEL.FCOS.IIF.RULE", "positive_weight"],
        ["MODEL.FCOS.IIF.RULE", "negative_suppression"],
        ["MODEL.FCOS.IIF.ENABLED", False, "MODEL.FCOS.EFL.ENABLED", True],
    ],
)
def test_loss_treatments_replace_the_class_loss_only(tmp_path, opts):
    """FCOS's class loss is "loss_fcos_cls": the treatment changes it (EFL from its second
    step), the box and centerness losses stay the plain model's."""
    model = build_model(_cfg(tmp_path, QUICK, *opts))
    plain = build_model(_cfg(tmp_path, QUICK, "MODEL.FCOS.IIF.ENABLED", False))
    batch = _hand_batch(model)
    with EventStorage():
        got = model.losses(*batch)
        got = model.losses(*batch)  # EFL: statistics from the first step
        want = plain.losses(*batch)
        want = plain.losses(*batch)
    assert set(got) == set(want)
    assert not torch.allclose(got["loss_fcos_cls"], want["loss_fcos_cls"])
    for k in ("loss_fcos_loc", "loss_fcos_ctr"):
        assert torch.equal(got[k], want[k]), k
    assert not model._scales_logits("test")


def test_apply_at_test_scales_inference_only(tmp_path):
    model = build_model(_cfg(tmp_path, QUICK, "MODEL.FCOS.IIF.APPLY_AT", "test"))
    plain = build_model(_cfg(tmp_path, QUICK, "MODEL.FCOS.IIF.ENABLED", False))
    batch = _hand_batch(model)
    with EventStorage():
        assert torch.equal(model.losses(*batch)["loss_fcos_cls"],
                           plain.losses(*batch)["loss_fcos_cls"])  # fmt: skip
    assert model._scales_logits("test") and not model._scales_logits("train")
    with pytest.raises(ValueError, match=r"MODEL.FCOS.IIF.RULE 'x': choose one of"):
        build_model(_cfg(tmp_path, QUICK, "MODEL.FCOS.IIF.RULE", "x"))
