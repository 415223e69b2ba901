"""Two CPU processes (gloo): a training step, and class statistics identical on every rank."""

import json
import os
import subprocess
import sys

import torch
from detectron2.config import get_cfg
from detectron2.utils import comm

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.engine import Trainer
from iif_d2.launch import launch

REPO = os.path.join(os.path.dirname(__file__), "..")
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_instant_iif.yaml")


def _worker(output_dir):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["OUTPUT_DIR", output_dir, "SOLVER.MAX_ITER", 2, "TEST.EVAL_PERIOD", 0])
    resolve_training_set(cfg)  # a collective: every rank
    trainer = Trainer(cfg)
    trainer.train()
    weights = trainer.model.module.roi_heads.box_predictor.iif_weights
    gathered = comm.all_gather(weights.tolist())
    params = [p.detach().clone() for p in trainer.model.parameters()]
    same_params = comm.all_gather([float(p.sum()) for p in params])
    if comm.is_main_process():
        with open(os.path.join(output_dir, "ranks.json"), "w") as f:
            json.dump(
                {"weights": gathered, "params": same_params, "world": comm.get_world_size()}, f
            )


def test_two_process_cpu_training(tmp_path):
    launch(_worker, 2, dist_url="auto", args=(str(tmp_path),), backend="gloo")
    with open(tmp_path / "ranks.json") as f:
        ranks = json.load(f)
    assert ranks["world"] == 2
    assert ranks["weights"][0] == ranks["weights"][1]  # identical IIF weights on both ranks
    assert torch.allclose(torch.tensor(ranks["params"][0]), torch.tensor(ranks["params"][1]))
    assert (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "iif_class_stats.json").exists()


def test_train_net_two_processes(tmp_path):
    """The user-facing command: ``train_net.py --num-gpus 2`` on a machine without GPU."""
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--num-gpus", "2"]
    cmd += ["--config-file", CONFIG, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "model_final.pth").exists()
    assert "World size: 2" in (tmp_path / "log.txt").read_text()
