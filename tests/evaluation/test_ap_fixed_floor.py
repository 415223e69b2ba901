"""AP-fixed inference with adaptive per-class score floors: the floor's maths on hand-made
cases, the ROI-head filter's standard cut, and on the project's tiny Mask R-CNN and Cascade
Mask R-CNN the same metrics (every key) and the same detections with the floor as without,
with fewer detections reaching the mask head, the floor detached afterwards."""

import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.engine.trainer import Trainer
from iif_d2.evaluation import ScoreFloorFilter, build_evaluator, uses_score_floor
from iif_d2.lvis_eval.devil import ScoreFloor

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules")
INF = np.inf


def test_floor_is_the_kth_best_score_so_far():
    floor = ScoreFloor(dets_per_cat=2)
    assert floor.offers == 0 and len(floor.values) == 0
    floor.offer([0, 0, 2], [0.5, 0.3, 0.9])
    np.testing.assert_array_equal(floor.values, np.float32([0.3, -INF, -INF]))  # class 2: one score
    floor.offer([0, 2, 2, 2], [0.4, 0.1, 0.8, 0.2])
    np.testing.assert_array_equal(floor.values, np.float32([0.4, -INF, 0.8]))
    floor.offer([0, 1], [0.35, 0.7])  # below class 0's floor: changes nothing
    np.testing.assert_array_equal(floor.values, np.float32([0.4, -INF, 0.8]))
    # ties: the floor is a score, kept (>=), below it dropped; unseen classes keep all
    np.testing.assert_array_equal(
        floor.keep([0, 0, 0, 1, 2, 5], [0.4, 0.39, 0.6, 0.0, 0.8, 0.0]),
        [True, False, True, True, True, True],
    )
    floor.offer([0, 0], [0.5, 0.5])  # two equal scores tie the best: the 2nd best is 0.5
    assert floor.values[0] == np.float32(0.5)
    floor.clear()
    assert floor.offers == 0 and len(floor.values) == 0
    with pytest.raises(ValueError, match="must be > 0"):
        ScoreFloor(0)


def test_floor_matches_the_kth_best_of_everything_offered():
    """Random batches with many ties, some classes with more than K scores in one batch."""
    rng = np.random.default_rng(0)
    k, seen = 5, {}
    floor = ScoreFloor(k)
    for _ in range(40):
        n = rng.integers(0, 30)
        classes = rng.integers(0, 6, n)
        scores = rng.integers(0, 20, n) / 20.0  # coarse: ties everywhere
        floor.offer(classes, scores)
        for c, s in zip(classes.tolist(), np.float32(scores).tolist()):
            seen.setdefault(c, []).append(s)
        for c in range(len(floor.values)):
            top = sorted(seen.get(c, []), reverse=True)
            assert floor.values[c] == (top[k - 1] if len(top) >= k else -INF)
        # exactness: a score below its floor is outside its class's top k of everything
        for c, s in zip(classes.tolist(), np.float32(scores).tolist()):
            if s < floor.values[c]:
                assert sum(v > s for v in seen[c]) >= k


def _instances(scores, classes, boxes=None, size=(100, 100)):
    inst = Instances(size)
    n = len(scores)
    if boxes is None:
        boxes = [[10.0, 10.0, 50.0, 50.0]] * n
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(n, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def test_filter_keeps_the_standard_cut_and_what_reaches_the_floor():
    floor = ScoreFloor(dets_per_cat=1)
    f = ScoreFloorFilter(floor, max_dets=2, score_thresh=0.1)
    # ties at the 2nd best: the earlier one (as the evaluator's lexsort); 0.1 is not above
    inst = _instances([0.5, 0.3, 0.3, 0.3, 0.1, 0.05], [0, 1, 1, 2, 0, 1])
    assert f(inst) is None  # before the evaluator's first image: keep everything
    floor.offer([1], [0.3])  # class 1's top 1 so far is 0.3
    np.testing.assert_array_equal(f.standard_candidates(inst), [1, 1, 0, 0, 0, 0])
    # class 1's at 0.3 tie its floor (kept); classes 0, 2 have no floor yet
    np.testing.assert_array_equal(f(inst), [1, 1, 1, 1, 1, 0])
    floor.offer([0, 2], [0.6, 0.9])
    np.testing.assert_array_equal(f(inst), [1, 1, 1, 0, 0, 0])
    # a box thin enough to vanish in detector_postprocess is kept and does not count among
    # the best two: the evaluator's cut after postprocess is the next one
    boxes = [[10, 10, 50, 50], [10, 10, 10.001, 50], [10, 10, 50, 50], [10, 10, 50, 50]]
    thin = _instances([0.5, 0.45, 0.4, 0.35], [0, 2, 2, 2], boxes)
    np.testing.assert_array_equal(f.standard_candidates(thin), [1, 1, 1, 0])
    assert not f(thin)[3]
    # the threshold as numpy compares it: float32 scores against the float32 threshold
    t = ScoreFloorFilter(floor, max_dets=-1, score_thresh=1e-4)
    at = _instances([np.float32(1e-4), np.nextafter(np.float32(1e-4), 1)], [9, 9])
    scores = at.scores.numpy()
    np.testing.assert_array_equal(t.standard_candidates(at).numpy(), scores > 1e-4)


def quick_cfg(name, tmp_path, k, *opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, name))
    cfg.merge_from_list([
        "OUTPUT_DIR", str(tmp_path), "NUM_THREADS", 1,
        "TEST.AP_FIXED.ENABLED", True, "TEST.DETECTIONS_PER_IMAGE", -1,
        "TEST.AP_FIXED.STANDARD_DETECTIONS_PER_IMAGE", 20, "TEST.AP_FIXED.DETS_PER_CLASS", k,
        *opts,
    ])  # fmt: skip
    return resolve_training_set(cfg)


def _parts_equal(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert p.keys() == q.keys()
        for key in p:
            if isinstance(p[key], np.ndarray):
                np.testing.assert_array_equal(p[key], q[key])
            else:
                assert p[key] == q[key], key


@pytest.mark.parametrize(
    "name", ["mask_rcnn_R_18_FPN_instant_iif.yaml", "cascade_mask_rcnn_R_18_FPN_instant_iif.yaml"]
)
def test_floor_changes_no_metric_and_prunes_the_mask_head(name, tmp_path):
    """Two test sets in one Trainer.test (train, then val: val must not feel train's floor), K
    small enough that the floor binds: every metric, the standard cut's and the budget's
    detections (scores, boxes, mask RLEs) are the same with the floor as without; the mask
    head gets fewer detections."""
    torch.set_num_threads(1)
    datasets = ["DATASETS.TEST", ("iif_synthetic_tiny_train", "iif_synthetic_tiny_val")]
    cfg = quick_cfg(name, tmp_path, 10, *datasets)
    assert uses_score_floor(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    to_mask_head = []
    model.roi_heads.mask_head.register_forward_pre_hook(
        lambda head, args: to_mask_head.append(sum(len(x) for x in args[1]))
    )
    runs = {}
    for floor in (False, True):
        cfg = quick_cfg(name, tmp_path, 10, *datasets, "TEST.AP_FIXED.ADAPTIVE_FLOOR", floor)
        evaluators = [build_evaluator(cfg, d) for d in cfg.DATASETS.TEST]
        assert all((e.score_floor is not None) == floor for e in evaluators)
        to_mask_head.clear()
        results = Trainer.test(cfg, model, evaluators)
        runs[floor] = (results, evaluators, sum(to_mask_head))
        assert model.roi_heads._detection_filters == ()  # detached
    (plain, plain_ev, plain_n), (floored, floored_ev, floored_n) = runs[False], runs[True]
    assert floored == plain  # every key: standard, AP-fixed, AP-pool, both test sets
    assert {"AP", "AP-fixed", "AP-pool", "AP-pool-r"} <= set(
        plain["iif_synthetic_tiny_val"]["bbox"]
    )
    assert plain["iif_synthetic_tiny_val"]["bbox"]["AP-fixed"] > 0
    for a, b in zip(plain_ev, floored_ev):
        _parts_equal(a._parts, b._parts)  # the standard cut
        _parts_equal([vars(a._fixed_detections(True))], [vars(b._fixed_detections(True))])
    assert floored_n < 0.6 * plain_n  # the floor binds: far fewer masks computed


def test_floor_is_detached_after_an_error(tmp_path):
    """An error in the middle of inference (raised from the mask head here) still detaches the
    floor; with the floor off nothing is attached."""
    cfg = quick_cfg("mask_rcnn_R_18_FPN_instant_iif.yaml", tmp_path, 10)
    model = build_model(cfg).eval()
    calls = []

    def fail_second(head, args):
        calls.append(head.__class__)
        assert model.roi_heads._detection_filters != ()  # attached while inference runs
        if len(calls) == 2:
            raise RuntimeError("mask head failed")

    hook = model.roi_heads.mask_head.register_forward_pre_hook(fail_second)
    with pytest.raises(RuntimeError, match="mask head failed"):
        Trainer.test(cfg, model)
    assert model.roi_heads._detection_filters == ()
    hook.remove()
    cfg = quick_cfg(
        "mask_rcnn_R_18_FPN_instant_iif.yaml", tmp_path, 10, "TEST.AP_FIXED.ADAPTIVE_FLOOR", False
    )
    assert not uses_score_floor(cfg)
    hook = model.roi_heads.mask_head.register_forward_pre_hook(
        lambda head, args: calls.append(model.roi_heads._detection_filters)
    )
    calls.clear()
    Trainer.test(cfg, model)
    assert calls and all(c == () for c in calls)


def test_adaptive_floor_setting():
    cfg = get_cfg()
    add_iif_config(cfg)
    assert cfg.TEST.AP_FIXED.ADAPTIVE_FLOOR is True and not uses_score_floor(cfg)
    cfg.TEST.AP_FIXED.ENABLED = True
    cfg.MODEL.ROI_HEADS.NAME = "IIFCascadeROIHeads"
    assert uses_score_floor(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"  # upstream's heads drop nothing
    assert not uses_score_floor(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "IIFStandardROIHeads"
    cfg.MODEL.META_ARCHITECTURE = "IIFRetinaNet"  # dense detectors: no mask head to spare
    assert not uses_score_floor(cfg)
    cfg.TEST.AP_FIXED.ENABLED = False
    cfg.TEST.AP_FIXED.ADAPTIVE_FLOOR = False
    with pytest.raises(ValueError, match="ADAPTIVE_FLOOR set, but TEST.AP_FIXED.ENABLED is off"):
        build_evaluator(cfg, "iif_synthetic_tiny_val")
