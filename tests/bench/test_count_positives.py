"""dev/analysis/count_positives.py: positives per box by each one-stage detector's own matcher."""

import argparse
import os

import numpy as np
import pytest
import torch
from helpers import ROOT as REPO
from helpers import load_dev


@pytest.fixture(scope="module")
def tool():
    return load_dev("analysis/count_positives")


def _model_and_anchors(name, out):
    from iif_d2.engine.trainer import Trainer, setup

    config = os.path.join(REPO, "configs", "SynthLT-Detection", name)
    ns = argparse.Namespace(config_file=config, opts=["OUTPUT_DIR", str(out)], resume=False)
    model = Trainer.build_model(setup(ns)).eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 128, 128))
        anchors = model.anchor_generator([features[f] for f in model.head_in_features])
    return model, anchors


def test_fcos_centre_sampling_gives_a_centred_box_nine_points(tool, tmp_path):
    from detectron2.structures import Boxes

    model, anchors = _model_and_anchors("fcos_R_18_FPN.yaml", tmp_path)
    # a 32-px box centred on a P3 point (stride 8): points within 1.5 strides of its centre are
    # the 3x3 around it, all inside the box and on P3's size range
    centre = anchors[0].get_centers()[5 * 16 + 5]
    box = torch.cat([centre - 16, centre + 16])[None]
    counts = tool.positives_per_box(model, anchors, Boxes(box))
    assert counts.tolist() == [9]
    box_index, level = tool.foreground(model, anchors, Boxes(box))
    assert level.tolist() == [0] * 9  # P3: its largest point-to-side distance is under 64 px


def test_retinanet_iou_matcher_counts_every_foreground_anchor_once(tool, tmp_path):
    from detectron2.structures import Boxes, pairwise_iou

    model, anchors = _model_and_anchors("retinanet_R_18_FPN.yaml", tmp_path)
    flat = Boxes.cat(anchors)
    boxes = Boxes(flat.tensor[[100, 2000]].clone())  # two anchors as boxes: IoU 1 with themselves
    counts = tool.positives_per_box(model, anchors, boxes)
    iou = pairwise_iou(boxes, flat)
    assert (counts >= 1).all()
    # the foreground anchors are those with IoU >= 0.5 (plus low-quality best matches)
    assert counts.sum().item() >= int((iou.max(dim=0).values >= 0.5).sum())


def test_foreground_anchors_know_their_level(tool, tmp_path):
    from detectron2.structures import Boxes

    model, anchors = _model_and_anchors("retinanet_R_18_FPN.yaml", tmp_path)
    p3, p4 = len(anchors[0]), len(anchors[1])
    flat = Boxes.cat(anchors)
    box = Boxes(flat.tensor[[p3 + p4 // 2]].clone())  # a P4 anchor as the box
    box_index, level = tool.foreground(model, anchors, box)
    assert (box_index == 0).all() and 1 in level.tolist()
    assert ((level >= 0) & (level < len(anchors))).all()
    shares = tool.level_shares(level.numpy(), model.head_in_features)
    assert list(shares) == ["p3", "p4", "p5", "p6", "p7"] and sum(shares.values()) == pytest.approx(
        1
    )
    assert shares["p4"] > 0


def test_summary_bins_by_box_size(tool):
    counts = np.array([0, 1, 9, 9, 8])
    sizes = np.array([10.0, 12.0, 20.0, 40.0, 70.0])
    rows = {r["size"]: r for r in tool.summarise(counts, sizes)}
    assert rows["all"]["boxes"] == 5 and rows["all"]["none"] == pytest.approx(0.2)
    assert rows["0-16 px"]["one"] == pytest.approx(0.5) and rows["0-16 px"]["mean"] == 0.5
    assert rows["64-inf px"]["median"] == 8


class _MainInterfaceFCOS:
    """An FCOS seen through detectron2 main's interface: no ``anchor_matcher`` and no
    ``match_anchors``; ``_match_anchors(boxes, anchors)`` gives the (N, R) match quality
    (1e8 - box area where an anchor matches the box, else 0). Built here from the installed
    FCOS's own matching, so both interfaces must give the same positives."""

    def __init__(self, fcos):
        self._fcos = fcos

    def _match_anchors(self, boxes, anchors):
        from detectron2.structures import Instances

        idx = self._fcos.match_anchors(anchors, [Instances((0, 0), gt_boxes=boxes)])[0]
        quality = torch.zeros(len(boxes), len(idx))
        fg = torch.nonzero(idx >= 0)[:, 0]
        quality[idx[fg], fg] = 1e8 - boxes.area()[idx[fg]]
        return quality


def test_fcos_without_match_anchors_is_counted_from_its_match_quality(tool, tmp_path):
    """detectron2 main's FCOS has neither anchor_matcher nor match_anchors: the positives come
    from its _match_anchors quality matrix, the same ones as through v0.6's interface."""
    from detectron2.structures import Boxes

    model, anchors = _model_and_anchors("fcos_R_18_FPN.yaml", tmp_path)
    if not hasattr(model, "match_anchors"):  # detectron2 main installed: its own interface
        main = model
    else:
        main = _MainInterfaceFCOS(model)
    assert not hasattr(main, "anchor_matcher") and not hasattr(main, "match_anchors")
    centres = anchors[0].get_centers()[[5 * 16 + 5, 9 * 16 + 9]]
    boxes = Boxes(torch.cat([centres - 16, centres + 16], 1))
    assert tool.positives_per_box(main, anchors, boxes).tolist() == [9, 9]
    box_index, level = tool.foreground(main, anchors, boxes)
    assert sorted(box_index.tolist()) == [0] * 9 + [1] * 9 and level.tolist() == [0] * 18


def test_a_model_without_a_matcher_is_refused_naming_it(tool):
    from detectron2.structures import Boxes

    with pytest.raises(ValueError, match="Linear has no anchor matcher"):
        tool.foreground(torch.nn.Linear(1, 1), [Boxes(torch.zeros(1, 4))], Boxes(torch.zeros(1, 4)))
