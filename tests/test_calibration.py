"""NorCal and FRACAL: the maths against hand-computed values, the box predictor's test scores,
the fractal dimensions as a training-set fact, and the config errors."""

import math
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.utils.events import EventStorage
from helpers import box_features, tiny_proposals

from iif_d2 import IIFFastRCNNOutputLayers, add_iif_config, resolve_training_set
from iif_d2.calibration import (
    box_counting_dimensions,
    calibrated_probs,
    fracal_divisors,
    fracal_prior,
    norcal_divisors,
)
from iif_d2.data.class_stats import STATS_FILENAME, ClassStats, box_centres, load_counts_file

C = 4
ROOT = os.path.join(os.path.dirname(__file__), "..", "configs", "SynthLT-InstanceSegmentation")


def _dims(points, max_grid, num_classes=1):
    pts = np.asarray(points, dtype=np.float64)
    return box_counting_dimensions(pts, np.zeros(len(pts), int), num_classes, max_grid)


def test_box_counting_by_hand():
    # 8 centres on a horizontal line, grids 1 and 2 (n = 8 < 9 drops d = 3 when G = 3):
    # N = (1, 2) -> slope ln2 / ln2 = 1
    line = [(i / 8 + 1 / 16, 0.5) for i in range(8)]
    assert _dims(line, 3)[0] == pytest.approx(1.0)
    # 4 centres in 3 quadrants: N = (1, 3) -> ln 3 / ln 2
    three = [(0.1, 0.1), (0.2, 0.2), (0.9, 0.1), (0.1, 0.9)]
    assert _dims(three, 2)[0] == pytest.approx(math.log(3) / math.log(2))
    # 9 centres of a 3x3 grid: N = (1, 4, 9) over d = (1, 2, 3), exactly N = d^2 -> 2
    grid = [((i + 0.5) / 3, (j + 0.5) / 3) for i in range(3) for j in range(3)]
    assert _dims(grid, 3)[0] == pytest.approx(2.0)
    # a centre at 1.0 lies in the last cell: (0, 0) and (1, 1) -> N = (1, 2), slope 1
    assert _dims([(0.0, 0.0)] * 2 + [(1.0, 1.0)] * 2, 2)[0] == pytest.approx(1.0)


def test_box_counting_conventions_and_known_shapes():
    # all centres in one place: slope 0, clipped to 1; fewer than 4 centres: 1; absent: 1
    pts = np.array([(0.3, 0.3)] * 5 + [(0.5, 0.5)] * 3)
    dims = box_counting_dimensions(pts, np.array([0] * 5 + [1] * 3), 3, 64)
    assert dims.tolist() == [1.0, 1.0, 1.0]
    rng = np.random.RandomState(0)
    line = np.stack([rng.rand(5000), np.full(5000, 0.37)], 1)
    plane = rng.rand(5000, 2)
    both = np.concatenate([line, plane])
    dims = box_counting_dimensions(both, np.repeat([0, 1], 5000), 2, 64)
    assert dims[0] == pytest.approx(1.0, abs=0.05)
    assert dims[1] == pytest.approx(2.0, abs=0.1)


def test_box_counting_errors():
    with pytest.raises(ValueError, match="labels"):
        box_counting_dimensions(np.zeros((2, 2)), np.array([0, 3]), 2)
    with pytest.raises(ValueError, match="finite"):
        box_counting_dimensions(np.full((1, 2), np.nan), np.array([0]), 2)
    with pytest.raises(ValueError, match=">= 2"):
        box_counting_dimensions(np.zeros((1, 2)), np.array([0]), 2, max_grid=1)


def test_norcal_by_hand():
    # zero logits: q = (1/3, 1/3, 1/3); n = (4, 1), gamma 0.5: (1/2, 1, 1) / 2.5
    d = norcal_divisors([4, 1], 0.5)
    assert d.tolist() == [2.0, 1.0, 1.0]
    q = calibrated_probs(torch.zeros(1, 3), d)
    assert q[0].tolist() == pytest.approx([0.2, 0.4, 0.4])
    with pytest.raises(ValueError, match="GAMMA"):
        norcal_divisors([4, 1], -1.0)
    with pytest.raises(ValueError, match="zero"):
        norcal_divisors([4, 0], 0.5)


def test_fracal_by_hand():
    # f = (10, 100) of K = 1000, base10: w = (2, 1), w(1/C) = log10(2); D = (1.5, 2), lambda 2
    prior = fracal_prior([10, 100], 1000)
    a = [2 - math.log10(2), 1 - math.log10(2), 0.0]
    assert prior.tolist() == pytest.approx(a, abs=1e-6)
    d = fracal_divisors([1.5, 2.0], 2.0)
    assert d.tolist() == [2.25, 4.0, 1.0]
    z = torch.tensor([[0.5, -1.0, 2.0]])
    e = [math.exp(zi + ai) / di for zi, ai, di in zip([0.5, -1.0, 2.0], a, [2.25, 4.0, 1.0])]
    expected = [v / sum(e) for v in e]
    assert calibrated_probs(z, d, prior)[0].tolist() == pytest.approx(expected, rel=1e-5)
    raw = fracal_prior([10, 100], 1000, "raw")
    assert raw[:2].tolist() == pytest.approx([math.log(100 / 2), math.log(10 / 2)], rel=1e-6)
    with pytest.raises(ValueError, match="VARIANT"):
        fracal_prior([10, 100], 1000, "smooth")
    with pytest.raises(ValueError, match="positive"):
        fracal_divisors([1.5, 0.0], 2.0)


def _predictor(**extra):
    torch.manual_seed(0)
    return IIFFastRCNNOutputLayers(
        input_shape=ShapeSpec(channels=16),
        box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=C,
        **extra,
    )


DIVISORS = torch.tensor([2.0, 1.5, 1.2, 1.1, 1.0])
PRIOR = torch.tensor([1.2, 0.6, 0.3, -0.1, 0.0])
WEIGHTS = torch.tensor([7.5, 3.25, 1.5, 0.75, 1.0])


@pytest.mark.parametrize("mode,prior", [("norcal", None), ("fracal", PRIOR)])
@pytest.mark.parametrize("iif", [False, True])
def test_predictor_scores_and_unchanged_losses(mode, prior, iif):
    iif_args = {"iif_mode": "end_to_end", "iif_weights": WEIGHTS} if iif else {}
    plain = _predictor(**iif_args)
    calib = _predictor(
        calibration_mode=mode, calibration_prior=prior, calibration_divisors=DIVISORS, **iif_args
    )
    x, props = box_features(), tiny_proposals(C)
    predictions = calib(x)
    assert torch.equal(predictions[0], plain(x)[0])
    logits = predictions[0] * WEIGHTS if iif else predictions[0]
    q = torch.softmax(logits + (0 if prior is None else prior), -1) / DIVISORS
    expected = q / q.sum(-1, keepdim=True)
    probs = torch.cat(calib.predict_probs(predictions, props))
    torch.testing.assert_close(probs, expected)
    assert not torch.allclose(probs, torch.cat(plain.predict_probs(predictions, props)))
    with EventStorage():
        l_plain, l_calib = plain.losses(predictions, props), calib.losses(predictions, props)
    assert l_plain.keys() == l_calib.keys()
    for k in l_plain:
        assert torch.equal(l_plain[k], l_calib[k]), k
    instances, _ = calib.inference(predictions, props)
    assert [len(i) for i in instances] and all(i.scores.max() <= 1 for i in instances)


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"calibration_mode": "platt"}, "not one of"),
        ({"calibration_divisors": None}, "divisors are required"),
        ({"iif_mode": "post_process", "iif_weights": WEIGHTS}, "post-processing"),
        ({"margin_mode": "logit_adjustment_posthoc", "margins": torch.zeros(C + 1)}, "post-proc"),
    ],
)
def test_predictor_rejects_impossible_combinations(extra, match):
    args = {"calibration_mode": "norcal", "calibration_divisors": DIVISORS}
    with pytest.raises(ValueError, match=match):
        _predictor(**{**args, **extra})


def _tiny_cfg(tmp_path, *opts):
    cfg = add_iif_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "mask_rcnn_R_18_FPN.yaml"))
    cfg.merge_from_list(
        ["DATASETS.TRAIN", ("iif_synthetic_tiny_train",), "MODEL.ROI_HEADS.NUM_CLASSES", 8]
    )
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), *opts])
    return cfg


def test_fractal_dimensions_are_a_training_set_fact(tmp_path):
    from detectron2.data import DatasetCatalog

    cfg = resolve_training_set(_tiny_cfg(tmp_path, "MODEL.ROI_BOX_HEAD.CALIBRATION.MODE", "fracal"))
    stats = load_counts_file(cfg.MODEL.CLASS_COUNTS.FILE)
    centres, labels = box_centres(DatasetCatalog.get("iif_synthetic_tiny_train"))
    assert centres.min() >= 0 and centres.max() <= 1
    assert stats.fractal_dimensions == box_counting_dimensions(centres, labels, 8, 64).tolist()
    assert stats.fractal_max_grid == 64
    model = build_model(cfg)
    predictor = model.roi_heads.box_predictor
    assert predictor.calibration_mode == "fracal"
    assert predictor.calibration_divisors[:-1].tolist() == pytest.approx(
        [d**2 for d in stats.fractal_dimensions]
    )
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 96, 96), dtype=torch.uint8)}])
    assert "instances" in out[0]
    # NorCal (and any other run) pays nothing: no fractal dimensions are computed
    other = resolve_training_set(
        _tiny_cfg(tmp_path / "n", "MODEL.ROI_BOX_HEAD.CALIBRATION.MODE", "norcal")
    )
    assert load_counts_file(other.MODEL.CLASS_COUNTS.FILE).fractal_dimensions is None


def test_fracal_without_the_training_boxes_is_an_error(tmp_path):
    opts = ["MODEL.ROI_BOX_HEAD.CALIBRATION.MODE", "fracal", "MODEL.CLASS_COUNTS.SOURCE", "file"]
    cfg = _tiny_cfg(tmp_path, *opts, "MODEL.CLASS_COUNTS.FILE", "iif_d2://lvis_v1_train.csv")
    with pytest.raises(ValueError, match="SOURCE 'dataset' or 'json'"):
        resolve_training_set(cfg)
    # a resolved file of another grid is refused by the model
    done = resolve_training_set(_tiny_cfg(tmp_path, *opts[:2]))
    done.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.MAX_GRID = 32
    with pytest.raises(ValueError, match="MAX_GRID"):
        build_model(done)


def test_hyper_parameters_of_another_mode_are_errors(tmp_path):
    cfg = resolve_training_set(
        _tiny_cfg(tmp_path, "MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.LAMBDA", 1.0)
    )
    with pytest.raises(ValueError, match="FRACAL.LAMBDA set"):
        build_model(cfg)


def test_sigmoid_classifier_is_an_error(tmp_path):
    cfg = _tiny_cfg(tmp_path / "s", "MODEL.ROI_BOX_HEAD.CALIBRATION.MODE", "norcal")
    if "USE_SIGMOID_CE" not in cfg.MODEL.ROI_BOX_HEAD:
        pytest.skip("detectron2 v0.6 has no sigmoid box classifier")
    cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = True
    with pytest.raises(ValueError, match="calibrates softmax"):
        build_model(resolve_training_set(cfg))


def test_fractal_field_round_trips_and_is_checked(tmp_path):
    stats = ClassStats([1, 2], [1, 3], 4, fractal_dimensions=[1.0, 1.5], fractal_max_grid=64)
    path = str(tmp_path / STATS_FILENAME)
    stats.save(path)
    back = load_counts_file(path)
    assert (back.fractal_dimensions, back.fractal_max_grid) == ([1.0, 1.5], 64)
    assert load_counts_file(_saved(tmp_path, ClassStats([1], [1], 2))).fractal_dimensions is None
    for dims, grid, match in [
        ([1.0], 64, "2 numbers"),
        ([1.0, -1.0], 64, r"fractal_dimensions\[1\]"),
        ([1.0, "x"], 64, r"fractal_dimensions\[1\]"),
        ([1.0, 1.0], None, "go together"),
        ([1.0, 1.0], 1, "fractal_max_grid"),
    ]:
        bad = dict(stats.to_dict(), fractal_dimensions=dims, fractal_max_grid=grid)
        with pytest.raises(ValueError, match=match) as e:
            load_counts_file(_write(tmp_path, bad))
        assert "bad.json" in str(e.value)


def _saved(tmp_path, stats):
    path = str(tmp_path / "plain.json")
    stats.save(path)
    return path


def _write(tmp_path, data):
    import json

    path = str(tmp_path / "bad.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path
