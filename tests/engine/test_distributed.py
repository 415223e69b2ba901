"""Two CPU processes (gloo): a training step, and class statistics identical on every rank."""

import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils import comm

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.engine.launch import launch
from iif_d2.engine.trainer import Trainer

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
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


def _lvis_eval_worker(json_file, out_file):
    """Each rank evaluates its contiguous half of the images (as detectron2's
    InferenceSampler shards them); the main rank writes the metrics."""
    from helpers import model_outputs, register

    from iif_d2.evaluation import FastLVISEvaluator

    with open(json_file) as f:
        gt = json.load(f)
    register("iif_test_dist_lvis", json_file, gt)
    outputs = model_outputs(gt, _lvis_detections()[1])
    half = (len(outputs) + 1) // 2
    mine = outputs[:half] if comm.get_rank() == 0 else outputs[half:]
    results = _evaluate_lvis(FastLVISEvaluator, mine)
    assert (results is None) == (not comm.is_main_process())
    if comm.is_main_process():
        with open(out_file, "w") as f:
            json.dump(results, f)


def _lvis_detections():
    from iif_d2.bench.synthetic_lvis import make_dataset

    freqs = ["f", "c", "r", "f", "c", "f", "r", "c", "f", "f"]
    return make_dataset(
        10,
        freqs,
        seed=5,
        gt_per_image=3,
        dets_per_image=40,
        num_neg=3,
        empty_mask_frac=0.05,
        image_sizes=(40, 72),
        score_decimals=2,
    )  # scores of 2 decimals: ties, across ranks too


def _evaluate_lvis(evaluator_class, outputs, distributed=True):
    evaluator = evaluator_class(
        "iif_test_dist_lvis", distributed=distributed, max_dets_per_image=20,
        fixed_and_pooled=True, dets_per_class=8, fixed_uncapped=True, score_thresh=0.2,
    )  # fmt: skip
    evaluator.budget_prune_at = 16
    evaluator.reset()
    for inp, out in outputs:
        evaluator.process([inp], [out])
    return evaluator.evaluate()


def test_lvis_evaluation_two_processes_equals_one(tmp_path):
    """Per-rank matching and the merged per-class budget give exactly the single-process
    metrics (standard, AP-fixed, AP-pool; bbox and segm)."""
    from helpers import model_outputs, register

    from iif_d2.evaluation import FastLVISEvaluator

    gt, dets = _lvis_detections()
    json_file = str(tmp_path / "val.json")
    with open(json_file, "w") as f:
        json.dump(gt, f)
    launch(_lvis_eval_worker, 2, dist_url="auto", args=(json_file, str(tmp_path / "m.json")),
           backend="gloo")  # fmt: skip
    with open(tmp_path / "m.json") as f:
        two = json.load(f)
    register("iif_test_dist_lvis", json_file, gt)
    one = _evaluate_lvis(FastLVISEvaluator, model_outputs(gt, dets), distributed=False)
    assert sorted(two) == ["bbox", "segm"]
    assert two == json.loads(json.dumps(one))
    assert {"AP", "AP-fixed", "AP-pool-f"} <= set(two["segm"]) and two["segm"]["AP"] > 0


def _task_count():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_closing_the_groups_ends_gloos_threads():
    """destroy_process_group alone leaves the default group alive under detectron2's cached
    gloo group, and its threads running into the interpreter's teardown."""
    import torch.distributed as dist

    from iif_d2.engine.launch import _free_port, close_process_groups

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", world_size=1, rank=0
    )
    try:
        # what comm.all_gather uses with more than one rank: the default group, cached
        assert comm._get_global_gloo_group() is dist.group.WORLD
        assert comm._get_global_gloo_group.cache_info().currsize == 1
        running = _task_count()
    finally:
        close_process_groups()
    assert not dist.is_initialized()
    assert comm._get_global_gloo_group.cache_info().currsize == 0
    assert comm._LOCAL_PROCESS_GROUP is None
    assert _task_count() < running  # gloo's threads joined, not left to the interpreter
