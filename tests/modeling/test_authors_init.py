"""MODEL.HEAD_INIT.SCHEME: the authors' / mmdet 2.x's initialisation of the ROI heads, redrawn
bit for bit against the torch calls that mmdet makes, in its order, from the same RNG state."""

import copy
import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from torch import nn

from iif_d2 import add_iif_config
from iif_d2.modeling.head_init import apply_head_init

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules")
MASK_RCNN = "mask_rcnn_R_18_FPN_instant.yaml"
CASCADE = "cascade_mask_rcnn_R_18_FPN_instant_iif.yaml"


def _cfg(name, *opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, name))
    cfg.merge_from_list(list(opts))
    return cfg


def _build(name, seed, *opts):
    if name == CASCADE:  # its IIF weights need resolved class counts: not the point here
        opts = ("MODEL.ROI_BOX_HEAD.IIF.ENABLED", False, *opts)
    torch.manual_seed(seed)
    return build_model(_cfg(name, *opts))


def _stages(heads):
    if isinstance(heads.box_predictor, nn.ModuleList):
        return list(zip(heads.box_head, heads.box_predictor, strict=True))
    return [(heads.box_head, heads.box_predictor)]


# the released code's layers, in the order mmdet 2.16 / mmcv 1.3.8 initialise them
def _mmdet_reference(heads, scheme):
    """Stage by stage, then the mask head. "authors" (a box-head init_cfg of their own, for
    fc_cls only): shared FCs and fc_reg keep nn.Linear's construction-time default
    (``reset_parameters``, torch's own). "mmdet" (init_cfg None): BBoxHead's
    Normal(std=0.001) override on fc_reg, then ConvFCBBoxHead's Xavier (mmcv's default
    distribution 'normal', gain 1, bias 0) on shared_fcs. Mask: each ConvModule's kaiming_init
    (a=0, fan_out, relu, normal, bias 0), then FCNMaskHead.init_weights on upsample and
    conv_logits (kaiming_normal_ fan_out relu, bias 0)."""
    with torch.no_grad():
        for box_head, predictor in _stages(heads):
            fc6_fc7, fc_reg = [box_head.fc1, box_head.fc2], predictor.bbox_pred
            if scheme == "authors":
                for fc in [*fc6_fc7, fc_reg]:
                    nn.Linear.reset_parameters(fc)
            else:
                nn.init.normal_(fc_reg.weight, 0, 0.001)
                nn.init.constant_(fc_reg.bias, 0)
                for fc in fc6_fc7:
                    nn.init.xavier_normal_(fc.weight, gain=1)
                    nn.init.constant_(fc.bias, 0)
        mask = heads.mask_head
        for conv in mask.conv_norm_relus:
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.constant_(conv.bias, 0)
        for m in (mask.deconv, mask.predictor):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)


def _equal_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


REINIT = (".fc1.", ".fc2.", "bbox_pred.", "mask_fcn", "mask_head.deconv.", "mask_head.predictor.")


@pytest.mark.parametrize("scheme", ["authors", "mmdet"])
@pytest.mark.parametrize("name", [MASK_RCNN, CASCADE])
def test_scheme_equals_mmdet_calls_from_the_same_rng_state(name, scheme):
    heads = _build(name, 0).roi_heads
    ours, ref = copy.deepcopy(heads), copy.deepcopy(heads)
    torch.manual_seed(7)
    apply_head_init(scheme, *zip(*_stages(ours)), ours.mask_head)
    torch.manual_seed(7)
    _mmdet_reference(ref, scheme)
    _equal_state(ours, ref)
    # exactly the listed layers were redrawn; the classifiers and the rest kept
    before, after = heads.state_dict(), ours.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        redrawn = any(p in k for p in REINIT) and not k.endswith(".bias")
        if redrawn:
            assert changed, k
        elif "cls_score" in k or "norm" in k:
            assert not changed, k


def test_scheme_is_applied_when_the_heads_are_built():
    for name, scheme in [(MASK_RCNN, "authors"), (CASCADE, "mmdet")]:
        built = _build(name, 3, "MODEL.HEAD_INIT.SCHEME", scheme).roi_heads
        upstream = _build(name, 3).roi_heads  # the heads are the last modules drawn
        apply_head_init(scheme, *zip(*_stages(upstream)), upstream.mask_head)
        _equal_state(built, upstream)


def test_distributions_of_the_schemes():
    authors = _build(MASK_RCNN, 0, "MODEL.HEAD_INIT.SCHEME", "authors").roi_heads
    fc1, reg = authors.box_head.fc1, authors.box_predictor.bbox_pred
    for fc in (fc1, reg):  # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias likewise
        bound = 1 / math.sqrt(fc.in_features)
        assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.9 * bound
        assert fc.bias.abs().max() <= bound and fc.bias.abs().max() > 0
    predictor = authors.mask_head.predictor  # Kaiming fan_out: std sqrt(2 / C), C = 8 here
    assert abs(predictor.weight.std().item() / math.sqrt(2 / 8) - 1) < 0.25
    assert (predictor.bias == 0).all()
    mmdet = _build(MASK_RCNN, 0, "MODEL.HEAD_INIT.SCHEME", "mmdet").roi_heads
    fc1 = mmdet.box_head.fc1  # Xavier normal: std sqrt(2 / (fan_in + fan_out))
    std = math.sqrt(2 / (fc1.in_features + fc1.out_features))
    assert abs(fc1.weight.std().item() / std - 1) < 0.05 and (fc1.bias == 0).all()
    assert abs(mmdet.box_predictor.bbox_pred.weight.std().item() / 0.001 - 1) < 0.1
    # the normalised (cosine) mask predictor is Kaiming-initialised too
    norm = _build(
        MASK_RCNN,
        0,
        *("MODEL.HEAD_INIT.SCHEME", "mmdet"),
        *("MODEL.ROI_MASK_HEAD.NAME", "NormalizedMaskRCNNConvUpsampleHead"),
    ).roi_heads.mask_head.predictor
    assert abs(norm.weight.std().item() / math.sqrt(2 / 8) - 1) < 0.25


def test_detectron2_scheme_is_upstream_and_unreachable_heads_are_errors():
    _equal_state(
        _build(MASK_RCNN, 1, "MODEL.HEAD_INIT.SCHEME", "detectron2").roi_heads,
        _build(MASK_RCNN, 1).roi_heads,
    )
    with pytest.raises(ValueError, match="HEAD_INIT.SCHEME 'xavier' is not one of"):
        _build(MASK_RCNN, 0, "MODEL.HEAD_INIT.SCHEME", "xavier")
    with pytest.raises(ValueError, match="NUM_CONV 0"):
        _build(
            MASK_RCNN,
            0,
            *("MODEL.HEAD_INIT.SCHEME", "authors", "MODEL.ROI_BOX_HEAD.NUM_CONV", 2),
        )
    with pytest.raises(ValueError, match="keypoint"):
        _build(MASK_RCNN, 0, "MODEL.HEAD_INIT.SCHEME", "mmdet", "MODEL.KEYPOINT_ON", True)
