"""The LVIS recipe end to end on CPU: FASA inside a trained model (loss, adaptation, resume,
two processes), the headline YAML trained and evaluated on the tiny synthetic set."""

import json
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import HookBase
from detectron2.utils import comm

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.engine.launch import launch
from iif_d2.engine.trainer import Trainer
from iif_d2.modeling.fasa import FASA, initial_rates

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
RECIPE = os.path.join(ROOT, "quick_schedules", "mask_rcnn_R_18_FPN_instant_recipe.yaml")
FASA_STATE = ("mean", "var", "seen", "rates", "prev_loss", "num_adaptations")


def _cfg(path, output_dir, *opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["OUTPUT_DIR", str(output_dir), *opts])
    return resolve_training_set(cfg)


def _same(a, b) -> bool:
    """Exactly equal, NaN (a class never measured) equal to NaN."""
    if a.is_floating_point():
        a, b = a.nan_to_num(-1.0), b.nan_to_num(-1.0)
    return torch.equal(a, b)


def _fasa(model) -> FASA:
    model = getattr(model, "module", model)
    return model.roi_heads.box_predictor.fasa


def test_recipe_trains_with_fasa_and_adapts_rates(tmp_path):
    cfg = _cfg(RECIPE, tmp_path)  # FASA from iteration 2, adaptation after iterations 1, 3
    trainer = Trainer(cfg)
    fasa = _fasa(trainer.model)
    initial = fasa.rates.clone()
    fasa.rates.fill_(1.0)  # every seen class draws a virtual feature at every step
    trainer.train()
    losses = {it: v for v, it in trainer.storage.history("loss_cls_fasa").values()}
    assert [losses[i] for i in (0, 1)] == [0.0, 0.0]  # no virtual features before START_ITER
    assert all(losses[i] > 0 for i in range(2, cfg.SOLVER.MAX_ITER))
    assert int(fasa.num_adaptations) == 2
    assert torch.isfinite(fasa.prev_loss).any()
    assert fasa.seen.any() and torch.isfinite(fasa.var).all()
    # the initial rates are the normalised inverse instance counts of the training dicts
    stats = json.loads((tmp_path / "iif_class_stats.json").read_text())
    assert torch.allclose(initial, initial_rates(stats["instance_counts"]).float())
    assert trainer.storage.history("fasa/mean_rate").values()
    results = Trainer.test(cfg, trainer.model)  # one test set: its results directly
    assert set(results) >= {"bbox", "segm"}


class _Crash(HookBase):
    def after_step(self):
        if self.trainer.iter == 4:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_restores_fasa_state_exactly(tmp_path):
    cfg = _cfg(RECIPE, tmp_path)  # checkpoint after iteration 2: one adaptation done
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([_Crash()])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    saved = torch.load(tmp_path / "model_0000002.pth", map_location="cpu", weights_only=False)
    prefix = "roi_heads.box_predictor.fasa."
    assert all(prefix + k in saved["model"] for k in FASA_STATE)
    assert int(saved["model"][prefix + "num_adaptations"]) == 1

    resumed = Trainer(cfg)
    fresh = _fasa(resumed.model)
    assert not fresh.seen.any()
    resumed.resume_or_load(resume=True)
    for k in FASA_STATE:
        assert _same(getattr(fresh, k), torch.as_tensor(saved["model"][prefix + k])), k
    assert fresh.start_iter == 2
    resumed.train()
    assert int(fresh.num_adaptations) == 2


def _two_rank_worker(output_dir):
    cfg = _cfg(RECIPE, output_dir, "SOLVER.MAX_ITER", 3)
    trainer = Trainer(cfg)
    trainer.train()
    fasa = _fasa(trainer.model)
    state = {k: getattr(fasa, k).double().tolist() for k in FASA_STATE}
    gathered = comm.all_gather(state)
    if comm.is_main_process():
        with open(os.path.join(output_dir, "fasa_ranks.json"), "w") as f:
            json.dump({"ranks": gathered, "world": comm.get_world_size()}, f)


def test_fasa_state_identical_on_two_processes(tmp_path):
    launch(_two_rank_worker, 2, dist_url="auto", args=(str(tmp_path),), backend="gloo")
    data = json.loads((tmp_path / "fasa_ranks.json").read_text())
    assert data["world"] == 2
    a, b = data["ranks"]
    assert sum(a["seen"]) > 0 and a["num_adaptations"] == 1.0
    for k in FASA_STATE:
        assert _same(torch.tensor(a[k]), torch.tensor(b[k])), k


@pytest.mark.parametrize(
    "name",
    [
        "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_24e_recipe.yaml",
        "LVISv1-InstanceSegmentation/cascade_mask_rcnn_R_50_FPN_24e_recipe.yaml",
    ],
)
def test_headline_config_trains_and_evaluates(name, tmp_path):
    """The LVIS YAML itself (R50, FASA, RFS, cosine, normalised mask, test settings), on the
    tiny synthetic set instead of LVIS: 2 iterations from scratch, then LVIS evaluation."""
    tiny = ["DATASETS.TRAIN", ("iif_synthetic_tiny_train",), "DATASETS.TEST",
            ("iif_synthetic_tiny_val",), "MODEL.ROI_HEADS.NUM_CLASSES", 8, "MODEL.WEIGHTS", "",
            "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2,
            "SOLVER.EPOCH_SCHEDULE.EPOCHS", 0, "SOLVER.EPOCH_SCHEDULE.STEPS", (),
            "DATALOADER.NUM_WORKERS", 0, "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN",
            160, "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 160,
            "MODEL.ROI_BOX_HEAD.FASA.START_ITER", 1, "MODEL.ROI_BOX_HEAD.FASA.ADAPT_PERIOD", 1,
            "DATASETS.HELDOUT.FRACTION", 0.2]  # fmt: skip
    cfg = _cfg(os.path.join(ROOT, name), tmp_path, *tiny)
    assert cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.3 and cfg.TEST.DETECTIONS_PER_IMAGE == 300
    assert cfg.MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD == 0.4
    trainer = Trainer(cfg)
    trainer.train()
    predictors = trainer.model.roi_heads.box_predictor
    predictors = predictors if isinstance(predictors, torch.nn.ModuleList) else [predictors]
    for p in predictors:  # later cascade stages may have no positive RoI yet after 2 steps
        assert p.cls_score.scale == 8.0 and p.fasa is not None and p.iif_mode == "end_to_end"
    assert predictors[0].fasa.seen.any()
    results = Trainer.test(cfg, trainer.model)  # after 2 steps from scratch: maybe no boxes
    assert "bbox" in results
