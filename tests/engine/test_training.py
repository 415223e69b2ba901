"""Training, inference, evaluation, resume and decoupled training on the synthetic set (CPU)."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.modeling import GeneralizedRCNN, build_model

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.engine.trainer import Trainer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules")


def quick_cfg(name, tmp_path, *opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, name))
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 3, *opts])
    return resolve_training_set(cfg)


@pytest.mark.parametrize(
    "name",
    [
        "mask_rcnn_R_18_FPN_instant.yaml",
        "mask_rcnn_R_18_FPN_instant_iif.yaml",
        "cascade_mask_rcnn_R_18_FPN_instant_iif.yaml",
    ],
)
def test_train_then_evaluate(name, tmp_path):
    cfg = quick_cfg(name, tmp_path)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.exists(tmp_path / "model_final.pth")
    latest = trainer.storage.latest()
    assert torch.isfinite(torch.tensor(latest["total_loss"][0]))
    results = Trainer.test(cfg, trainer.model)
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "APr", "APc", "APf"} <= set(results[task])


def _image():
    d = DatasetCatalog.get("iif_synthetic_tiny_val")[0]
    from detectron2.data.detection_utils import read_image

    img = torch.as_tensor(read_image(d["file_name"], "BGR").transpose(2, 0, 1).copy())
    return [{"image": img, "height": 96, "width": 96}]


def test_cascade_inference_averages_logits_then_applies_iif(tmp_path):
    cfg = quick_cfg("cascade_mask_rcnn_R_18_FPN_instant_iif.yaml", tmp_path)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = build_model(cfg).eval()
    heads = model.roi_heads
    with torch.no_grad():
        images = model.preprocess_image(_image())
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        (got,) = heads._forward_box(features, proposals)
        # the same stages, by hand: mean of the stages' logits, then softmax(w * mean)
        feats = [features[f] for f in heads.box_in_features]
        props, logits, pred = proposals, [], None
        for k in range(heads.num_cascade_stages):
            if k:
                boxes = heads.box_predictor[k - 1].predict_boxes(pred, props)
                props = heads._create_proposals_from_boxes(boxes, [p.image_size for p in props])
            pred = heads._run_stage(feats, props, k)
            logits.append(pred[0])
        w = heads.box_predictor[-1].iif_weights
        probs = torch.softmax(w * torch.stack(logits).mean(0), dim=1)
    kept = got.pred_classes.numel()
    assert kept > 0
    # every kept detection's score is one entry of the expected probability matrix
    expected = probs[:, :-1].flatten()
    for s in got.scores:
        assert torch.isclose(expected, s, atol=1e-6).any()


@pytest.mark.parametrize(
    "name, upstream_heads",
    [
        ("mask_rcnn_R_18_FPN_instant.yaml", "StandardROIHeads"),
        ("cascade_mask_rcnn_R_18_FPN_instant_iif.yaml", "CascadeROIHeads"),
    ],
)
def test_iif_off_model_is_upstream_model(name, upstream_heads, tmp_path):
    """Same seed, IIF off: IIF heads + IIFGeneralizedRCNN = detectron2's model, bit for bit."""
    cfg = quick_cfg(name, tmp_path, "MODEL.ROI_BOX_HEAD.IIF.ENABLED", False)
    upstream_cfg = cfg.clone()
    upstream_cfg.merge_from_list(
        ["MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "MODEL.ROI_HEADS.NAME", upstream_heads]
    )
    torch.manual_seed(3)
    ours = build_model(cfg).eval()
    torch.manual_seed(3)
    upstream = build_model(upstream_cfg).eval()
    a, b = ours.state_dict(), upstream.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    inputs = _image()
    with torch.no_grad():
        x, y = ours(inputs)[0]["instances"], upstream(inputs)[0]["instances"]
    assert torch.equal(x.scores, y.scores) and torch.equal(x.pred_masks, y.pred_masks)


def test_mask_threshold(tmp_path):
    cfg = quick_cfg("mask_rcnn_R_18_FPN_instant.yaml", tmp_path)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model = build_model(cfg).eval()
    inputs = _image()
    with torch.no_grad():
        ours = model(inputs)[0]["instances"]
        upstream = GeneralizedRCNN.inference(model, inputs)[0]["instances"]
        model.mask_threshold = 0.0
        loose = model(inputs)[0]["instances"]
    assert len(ours) > 0
    assert torch.equal(ours.pred_masks, upstream.pred_masks)  # 0.5 = detectron2's
    assert loose.pred_masks.sum() >= ours.pred_masks.sum()
    with pytest.raises(ValueError, match="MASK_THRESHOLD"):
        cfg.MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD = 1.5
        build_model(cfg)


class _Crash(HookBase):
    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt("simulated interruption")


def test_interrupted_run_resumes_from_checkpoint(tmp_path):
    cfg = quick_cfg(
        "mask_rcnn_R_18_FPN_instant_iif.yaml",
        tmp_path,
        "SOLVER.MAX_ITER",
        6,
        "SOLVER.CHECKPOINT_PERIOD",
        3,
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([_Crash(at=4)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    checkpoint = tmp_path / "model_0000002.pth"
    assert checkpoint.exists() and not (tmp_path / "model_final.pth").exists()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == saved["iteration"] + 1 == 3
    state = resumed.model.state_dict()
    for k, v in saved["model"].items():
        assert torch.equal(state[k], torch.as_tensor(v)), k
    optimizer = resumed._trainer.optimizer.state_dict()["state"]
    saved_optimizer = saved["trainer"]["_trainer"]["optimizer"]["state"]
    assert optimizer and optimizer.keys() == saved_optimizer.keys()
    for k in optimizer:
        assert torch.equal(optimizer[k]["momentum_buffer"], saved_optimizer[k]["momentum_buffer"])
    resumed.train()
    assert (tmp_path / "model_final.pth").exists()
    assert resumed.iter == cfg.SOLVER.MAX_ITER  # ran iterations 3..5 after the resume


def test_decoupled_trains_only_the_box_classifier(tmp_path):
    cfg = quick_cfg("mask_rcnn_R_18_FPN_instant.yaml", tmp_path / "stage1", "SOLVER.MAX_ITER", 1)
    stage1 = Trainer(cfg)
    stage1.train()
    cfg2 = quick_cfg(
        "mask_rcnn_R_18_FPN_instant_iif.yaml",
        tmp_path / "stage2",
        "MODEL.WEIGHTS",
        str(tmp_path / "stage1" / "model_final.pth"),
        "MODEL.ROI_BOX_HEAD.TRAIN_ONLY_CLASSIFIER",
        True,
        "SOLVER.MAX_ITER",
        2,
    )
    stage2 = Trainer(cfg2)
    stage2.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in stage2.model.state_dict().items()}
    trainable = [n for n, p in stage2.model.named_parameters() if p.requires_grad]
    assert trainable == [
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
    ]
    stage2.train()
    after = stage2.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(trainable)
    stage1 = torch.load(tmp_path / "stage1" / "model_final.pth", weights_only=False)["model"]
    for k, v in stage1.items():  # stage 2 started from the stage-1 weights
        assert torch.equal(before[k], torch.as_tensor(v)), k
