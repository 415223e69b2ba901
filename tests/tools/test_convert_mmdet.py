"""tools/convert_mmdet_checkpoint.py: a synthetic mmdet 2.x Mask R-CNN state dict (torchvision's
ResNet names, which mmdet's "pytorch" ResNet shares, plus the FPN / RPN / head names of mmdet
2.x), converted, loaded strictly into the iif-d2 model built with the printed overrides, and its
layers checked against the mmdet computation written here with torch.nn.functional."""

import os
import pickle
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from helpers import load_tool

from iif_d2 import add_iif_config
from iif_d2.engine.checkpoint import IIFCheckpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "LVISv1-InstanceSegmentation", "mask_rcnn_R_50_FPN_12e.yaml")
C = 8
MEAN_RGB, STD_RGB = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # mmdet img_norm_cfg
# the parts of an mmdet 2.x config text that the converter reads (as mmdet stores it in meta)
META_CONFIG = """model = dict(
    type='MaskRCNN',
    roi_head=dict(
        bbox_head=dict(
            type='Shared2FCBBoxHead',
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            cls_predictor_cfg=dict(type='NormedLinear', tempearture=8)),
        mask_head=dict(
            type='FCNMaskHead',
            predictor_cfg=dict(type='NormedConv2d', tempearture=20))),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7)),
        rcnn=dict(
            score_thr=0.0001,
            nms=dict(type='nms', iou_threshold=0.3),
            max_per_img=300,
            mask_thr_binary=0.4)))
"""


tool = load_tool("convert_mmdet_checkpoint")


# ----------------------------------------------------------------------------- mmdet state dict
def _rand(*shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return torch.randn(*shape) * (scale if scale is not None else fan_in**-0.5)


def mmdet_state_dict(depth=50, num_classes=C, fasa=False):
    """mmdet 2.x Mask R-CNN names and shapes, random values (BN statistics included)."""
    torch.manual_seed(0)
    resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    sd = OrderedDict()
    for k, v in resnet.state_dict().items():
        if k.startswith("fc."):
            continue
        if k.endswith("num_batches_tracked"):
            v = torch.tensor(7)
        elif k.endswith("running_var"):
            v = torch.rand(v.shape) + 0.5
        elif k.endswith(("running_mean", "bias")):
            v = torch.randn(v.shape) * 0.1
        elif v.dim() == 1:  # BN weight
            v = torch.rand(v.shape) * 0.5 + 0.5
        sd["backbone." + k] = v
    for i, c in enumerate([256, 512, 1024, 2048]):
        sd[f"neck.lateral_convs.{i}.conv.weight"] = _rand(256, c, 1, 1)
        sd[f"neck.lateral_convs.{i}.conv.bias"] = _rand(256, scale=0.1)
        sd[f"neck.fpn_convs.{i}.conv.weight"] = _rand(256, 256, 3, 3)
        sd[f"neck.fpn_convs.{i}.conv.bias"] = _rand(256, scale=0.1)
    for name, out, k in (("rpn_conv", 256, 3), ("rpn_cls", 3, 1), ("rpn_reg", 12, 1)):
        sd[f"rpn_head.{name}.weight"] = _rand(out, 256, k, k)
        sd[f"rpn_head.{name}.bias"] = _rand(out, scale=0.1)
    box = "roi_head.bbox_head"
    for name, out, inp in (
        ("shared_fcs.0", 1024, 256 * 7 * 7),
        ("shared_fcs.1", 1024, 1024),
        ("fc_cls", num_classes + 1, 1024),
        ("fc_reg", 4 * num_classes, 1024),
    ):
        sd[f"{box}.{name}.weight"] = _rand(out, inp)
        sd[f"{box}.{name}.bias"] = _rand(out, scale=0.1)
    if fasa:
        sd[f"{box}.feature_mean"] = torch.randn(num_classes, 1024)
        sd[f"{box}.feature_std"] = torch.rand(num_classes, 1024)
        sd[f"{box}.feature_used"] = torch.ones(num_classes)
        sd[f"{box}.prob_list"] = torch.rand(num_classes)
        sd[f"{box}.cum_loss_perclass_t1"] = torch.rand(num_classes + 1)
    mask = "roi_head.mask_head"
    for i in range(4):
        sd[f"{mask}.convs.{i}.conv.weight"] = _rand(256, 256, 3, 3)
        sd[f"{mask}.convs.{i}.conv.bias"] = _rand(256, scale=0.1)
    sd[f"{mask}.upsample.weight"] = _rand(256, 256, 2, 2, scale=0.05)
    sd[f"{mask}.upsample.bias"] = _rand(256, scale=0.1)
    sd[f"{mask}.conv_logits.weight"] = _rand(num_classes, 256, 1, 1)
    sd[f"{mask}.conv_logits.bias"] = _rand(num_classes, scale=0.1)
    return sd


def _save(path, sd, config=META_CONFIG):
    meta = {"mmdet_version": "2.16.0", "seed": np.int64(5), "epoch": 24, "config": config}
    meta["CLASSES"] = tuple(f"class{i}" for i in range(C))
    torch.save({"meta": meta, "state_dict": sd, "optimizer": {"state": {}}}, path)


# ----------------------------------------------------------------------------- mmdet, by hand
def _bn(x, sd, p):
    w, b, m, v = (sd[f"{p}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
    return F.batch_norm(x, m, v, w, b, training=False, eps=1e-5)


def _bottleneck(x, sd, p, stride):
    """mmdet style='pytorch': the stride on the 3x3 conv."""
    out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
    out = F.relu(
        _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), sd, f"{p}.bn2")
    )
    out = _bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    if f"{p}.downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
    return F.relu(out + x)


def mmdet_backbone(img_rgb, sd):
    """RGB 0-255 image (N, 3, H, W) -> [C2, C3, C4, C5] of mmdet's ResNet."""
    mean, std = torch.tensor(MEAN_RGB).view(1, 3, 1, 1), torch.tensor(STD_RGB).view(1, 3, 1, 1)
    x = F.conv2d((img_rgb - mean) / std, sd["backbone.conv1.weight"], stride=2, padding=3)
    x = F.max_pool2d(F.relu(_bn(x, sd, "backbone.bn1")), 3, stride=2, padding=1)
    feats = []
    for i in range(1, 5):
        j = 0
        while f"backbone.layer{i}.{j}.conv1.weight" in sd:
            x = _bottleneck(x, sd, f"backbone.layer{i}.{j}", 2 if (i > 1 and j == 0) else 1)
            j += 1
        feats.append(x)
    return feats


def mmdet_fpn(feats, sd):
    """mmdet FPN, num_outs=5, add_extra_convs=False: [P2..P6]."""
    lat = [
        F.conv2d(
            f, sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"]
        )
        for i, f in enumerate(feats)
    ]
    for i in range(3, 0, -1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    w, b = "neck.fpn_convs.{}.conv.weight", "neck.fpn_convs.{}.conv.bias"
    outs = [F.conv2d(x, sd[w.format(i)], sd[b.format(i)], padding=1) for i, x in enumerate(lat)]
    return outs + [F.max_pool2d(outs[-1], 1, stride=2)]


def _mmdet_norm(x, dim):
    return x / (x.norm(dim=dim, keepdim=True) + 1e-6)  # NormedLinear / NormedConv2d


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("mmdet")
    sd = mmdet_state_dict(fasa=True)
    src, dst = str(d / "mmdet.pth"), str(d / "d2.pth")
    _save(src, sd)
    assert tool.main([src, dst, "--cosine", "--normalized-mask", "--num-classes", str(C)]) == 0
    return sd, dst


def _cfg(overrides):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *overrides])
    return cfg


def _overrides_from_stdout(text):
    line = text.split("config overrides:\n")[1].strip()
    parts = re.findall(r'"[^"]*"|\S+', line)
    return [p.strip('"') for p in parts]


@pytest.fixture(scope="module")
def model_and_sd(converted, tmp_path_factory):
    sd, dst = converted
    _, overrides, _ = tool.convert(
        sd, cosine=True, normalized_mask=True, meta={"config": META_CONFIG}
    )
    model = build_model(_cfg(overrides)).eval()
    return model, sd, overrides


# ----------------------------------------------------------------------------- tests
def test_cli_output_and_printed_overrides(converted, capsys, tmp_path):
    sd, dst = converted
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["__author__"] == "mmdet->iif-d2" and ckpt["matching_heuristics"] is False
    n_bn = sum(k.endswith("num_batches_tracked") for k in sd)
    assert len(ckpt["model"]) == len(sd) - n_bn - 5  # 5 FASA tensors
    src = str(tmp_path / "again.pth")
    _save(src, sd)
    tool.main([src, str(tmp_path / "out.pth"), "--cosine", "--normalized-mask"])
    out = capsys.readouterr().out
    assert f"not converted: {n_bn} tensors (BatchNorm counter" in out
    assert "not converted: 5 tensors (training-only FASA state)" in out
    opts = _overrides_from_stdout(out)
    pairs = dict(zip(opts[::2], opts[1::2]))
    assert pairs["MODEL.RESNETS.STRIDE_IN_1X1"] == "False"
    assert pairs["MODEL.PIXEL_MEAN"] == "[103.53,116.28,123.675]"
    assert pairs["MODEL.PIXEL_STD"] == "[57.375,57.12,58.395]"
    assert pairs["MODEL.ROI_BOX_HEAD.COSINE.SCALE"] == "8.0"
    assert pairs["MODEL.ROI_MASK_HEAD.NORMALIZED.SCALE"] == "20.0"
    assert pairs["MODEL.ROI_MASK_HEAD.NAME"] == "NormalizedMaskRCNNConvUpsampleHead"
    assert pairs["MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD"] == "0.4"
    assert pairs["MODEL.ROI_HEADS.NMS_THRESH_TEST"] == "0.3"
    assert pairs["TEST.DETECTIONS_PER_IMAGE"] == "300"
    cfg = _cfg(opts)  # the printed text merges as it is
    assert cfg.MODEL.ROI_BOX_HEAD.COSINE.ENABLED and not cfg.MODEL.RESNETS.STRIDE_IN_1X1


def test_loads_strictly_with_detection_checkpointer(model_and_sd, converted):
    model, _, _ = model_and_sd
    _, dst = converted
    ckpt = torch.load(dst, weights_only=True)
    result = model.load_state_dict(ckpt["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # the project's checkpointer (train_net.py's): a tensor of another shape would be an error
    IIFCheckpointer(model).load(dst)
    # and detectron2's own checkpointer, through its public load (on v0.6 and main)
    DetectionCheckpointer(model).load(dst)


@torch.no_grad()
def test_backbone_and_fpn_match_mmdet(model_and_sd, converted):
    model, sd, _ = model_and_sd
    model.load_state_dict(torch.load(converted[1], weights_only=True)["model"])
    img_rgb = torch.rand(1, 3, 64, 96) * 255
    x = (img_rgb.flip(1) - model.pixel_mean) / model.pixel_std  # detectron2: BGR input
    ours = model.backbone.bottom_up(x)
    ref = mmdet_backbone(img_rgb, sd)
    for name, r in zip(["res2", "res3", "res4", "res5"], ref):
        assert ours[name].shape == r.shape
        torch.testing.assert_close(ours[name], r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
    fpn = model.backbone(x)
    for name, r in zip(["p2", "p3", "p4", "p5", "p6"], mmdet_fpn(ref, sd)):
        torch.testing.assert_close(fpn[name], r, rtol=1e-4, atol=1e-4 * r.abs().max().item())


@torch.no_grad()
def test_rpn_logits_deltas_and_anchors_at_one_location(model_and_sd, converted):
    model, sd, _ = model_and_sd
    model.load_state_dict(torch.load(converted[1], weights_only=True)["model"])
    feats = [torch.randn(1, 256, 8, 10), torch.randn(1, 256, 4, 5)]  # P3 and P4 (strides 8, 16)
    logits, deltas = model.proposal_generator.rpn_head(feats)
    y, x, level, stride = 3, 7, 0, 8
    f = feats[level]
    t = F.relu(F.conv2d(f, sd["rpn_head.rpn_conv.weight"], sd["rpn_head.rpn_conv.bias"], padding=1))
    t = t[0, :, y, x]
    obj = sd["rpn_head.rpn_cls.weight"].flatten(1) @ t + sd["rpn_head.rpn_cls.bias"]
    reg = (sd["rpn_head.rpn_reg.weight"].flatten(1) @ t + sd["rpn_head.rpn_reg.bias"]).view(3, 4)
    torch.testing.assert_close(logits[level][0, :, y, x], obj, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(deltas[level][0, :, y, x].view(3, 4), reg, rtol=1e-4, atol=1e-4)
    # mmdet AnchorGenerator(scales=[8], ratios=[0.5, 1, 2], strides=[4..64]), centre offset 0
    grid = model.proposal_generator.anchor_generator([torch.zeros(1, 256, 16, 20), f])[1]
    ours = grid.tensor.view(8, 10, 3, 4)[y, x]
    ratios = torch.tensor([0.5, 1.0, 2.0])
    w, h = stride * 8 / ratios.sqrt(), stride * 8 * ratios.sqrt()
    cx, cy = x * stride, y * stride
    ref = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    assert model.proposal_generator.anchor_generator.strides[1] == stride
    torch.testing.assert_close(ours, ref)


@torch.no_grad()
def test_box_head_cosine_logits_and_deltas_match_mmdet(model_and_sd, converted):
    model, sd, _ = model_and_sd
    model.load_state_dict(torch.load(converted[1], weights_only=True)["model"])
    roi = torch.relu(torch.randn(5, 256, 7, 7))
    scores, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(roi))
    b = "roi_head.bbox_head"
    h = F.relu(
        F.linear(roi.flatten(1), sd[f"{b}.shared_fcs.0.weight"], sd[f"{b}.shared_fcs.0.bias"])
    )
    h = F.relu(F.linear(h, sd[f"{b}.shared_fcs.1.weight"], sd[f"{b}.shared_fcs.1.bias"]))
    w = sd[f"{b}.fc_cls.weight"]
    ref_cls = F.linear(8.0 * _mmdet_norm(h, 1), _mmdet_norm(w, 1), sd[f"{b}.fc_cls.bias"])
    ref_reg = F.linear(h, sd[f"{b}.fc_reg.weight"], sd[f"{b}.fc_reg.bias"])
    assert scores.shape == (5, C + 1)  # background last in both
    torch.testing.assert_close(scores, ref_cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(deltas, ref_reg, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_normalized_mask_logits_match_mmdet(model_and_sd, converted):
    model, sd, _ = model_and_sd
    model.load_state_dict(torch.load(converted[1], weights_only=True)["model"])
    x = torch.randn(3, 256, 14, 14)
    ours = model.roi_heads.mask_head.layers(x)
    m = "roi_head.mask_head"
    r = x
    for i in range(4):
        w, bias = sd[f"{m}.convs.{i}.conv.weight"], sd[f"{m}.convs.{i}.conv.bias"]
        r = F.relu(F.conv2d(r, w, bias, padding=1))
    r = F.relu(F.conv_transpose2d(r, sd[f"{m}.upsample.weight"], sd[f"{m}.upsample.bias"], 2))
    w = sd[f"{m}.conv_logits.weight"]
    ref = F.conv2d(20.0 * _mmdet_norm(r, 1), _mmdet_norm(w, 1), sd[f"{m}.conv_logits.bias"])
    assert ours.shape == (3, C, 28, 28)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_resnet101_and_plain_heads_load_strictly():
    sd = mmdet_state_dict(depth=101)
    out, overrides, dropped = tool.convert(sd)  # no meta config: plain linear / conv heads
    pairs = dict(zip(overrides[::2], overrides[1::2]))
    assert (
        pairs["MODEL.RESNETS.DEPTH"] == 101 and pairs["MODEL.ROI_BOX_HEAD.COSINE.ENABLED"] is False
    )
    assert all(why.startswith("BatchNorm") for _, why in dropped)
    model = build_model(_cfg(overrides))
    result = model.load_state_dict(out, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(
        out["backbone.bottom_up.stem.conv1.weight"], sd["backbone.conv1.weight"].flip(1)
    )


def test_meta_config_iif_variant_and_flag_checks():
    text = "loss_cls=dict(\n type='FasaIIFLoss',\n use_sigmoid=False,\n variant='base10_obj'),"
    found = tool.parse_meta_config({"config": text})
    assert found == {"iif": "base10_obj"}
    sd = mmdet_state_dict()
    _, overrides, _ = tool.convert(sd, meta={"config": text})
    pairs = dict(zip(overrides[::2], overrides[1::2]))
    assert pairs["MODEL.ROI_BOX_HEAD.IIF.VARIANT"] == "base10"
    assert pairs["MODEL.ROI_BOX_HEAD.IIF.FREQUENCY"] == "instance"
    with pytest.raises(tool.ConversionError, match="uses NormedLinear: pass --cosine"):
        tool.convert(sd, normalized_mask=True, meta={"config": META_CONFIG})
    with pytest.raises(tool.ConversionError, match="has no NormedLinear: drop --cosine"):
        tool.convert(sd, cosine=True, meta={"config": text})
    with pytest.raises(tool.ConversionError, match="pass --cosine-scale"):
        tool.convert(sd, cosine=True)
    _, overrides, _ = tool.convert(sd, cosine=True, cosine_scale=16.0)
    assert overrides[overrides.index("MODEL.ROI_BOX_HEAD.COSINE.SCALE") + 1] == 16.0


def test_bad_state_dicts_are_errors_that_list_the_keys():
    sd = mmdet_state_dict()
    extra = OrderedDict(sd, **{"roi_head.bbox_head.loss_cls.something": torch.zeros(3)})
    with pytest.raises(
        tool.ConversionError, match=r"1 unexpected keys roi_head\.bbox_head\.loss_cls"
    ):
        tool.convert(extra)
    short = OrderedDict((k, v) for k, v in sd.items() if k != "neck.fpn_convs.2.conv.bias")
    with pytest.raises(
        tool.ConversionError, match=r"1 missing keys neck\.fpn_convs\.2\.conv\.bias"
    ):
        tool.convert(short)
    bad = OrderedDict(sd)
    bad["rpn_head.rpn_cls.weight"] = torch.zeros(6, 256, 1, 1)  # softmax RPN: 2 per anchor
    with pytest.raises(tool.ConversionError, match=r"rpn_head\.rpn_cls\.weight \(6, 256, 1, 1\)"):
        tool.convert(bad)
    with pytest.raises(tool.ConversionError, match="pass --num-classes 8"):
        tool.convert(sd, num_classes=1203)


class _Payload:
    pass


def test_loading_refuses_pickled_classes_and_cli_errors_are_one_line(tmp_path, capsys):
    path = str(tmp_path / "unsafe.pth")
    torch.save({"meta": {"hook": _Payload()}, "state_dict": {"x": torch.zeros(1)}}, path)
    with pytest.raises(tool.ConversionError, match="_Payload"):
        tool.load_mmdet_checkpoint(path)
    with open(str(tmp_path / "junk.pth"), "wb") as f:
        pickle.dump([1, 2], f)
    capsys.readouterr()
    torch.save([torch.zeros(1)], str(tmp_path / "list.pth"))
    for name, message in (
        ("missing.pth", "no such file"),
        ("junk.pth", "junk.pth is not a torch checkpoint: it is a plain Python pickle"),
        ("list.pth", "expected a dict checkpoint, got a list"),
    ):
        err = _exit_2(capsys, str(tmp_path / name), str(tmp_path / "out.pth"))
        assert message in err
    assert not (tmp_path / "out.pth").exists()


def _exit_2(capsys, *argv):
    """Run the converter's command line: exit code 2, one line on stderr, returned."""
    with pytest.raises(SystemExit) as e:
        tool.main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("convert_mmdet_checkpoint: error:") and err.count("\n") == 1
    return err


def test_output_equal_to_the_input_is_refused_before_writing(tmp_path, capsys, monkeypatch):
    """IN IN, through a symlink, a relative path or a hard link: refused, the input unchanged;
    a folder or a missing folder as OUT too."""
    src = tmp_path / "epoch_24.pth"
    torch.save({"meta": {}, "state_dict": {"x": torch.zeros(1)}}, str(src))
    before = src.read_bytes()
    (tmp_path / "link.pth").symlink_to(src)
    os.link(src, tmp_path / "hard.pth")
    monkeypatch.chdir(tmp_path)
    for out in (str(src), str(tmp_path / "link.pth"), "epoch_24.pth", "./x/../epoch_24.pth",
                str(tmp_path / "hard.pth")):  # fmt: skip
        assert "is the input file" in _exit_2(capsys, str(src), out)
    assert "is a directory" in _exit_2(capsys, str(src), str(tmp_path))
    assert "does not exist" in _exit_2(capsys, str(src), str(tmp_path / "no" / "o.pth"))
    assert src.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["epoch_24.pth", "hard.pth", "link.pth"]


def test_non_finite_weights_are_refused(tmp_path, capsys):
    """A NaN in the box classifier (a diverged run): exit 2 naming the tensor, nothing
    written; train_net.py would refuse the converted file only later."""
    sd = mmdet_state_dict()
    sd["roi_head.bbox_head.fc_cls.weight"][0, 0] = float("nan")
    src, dst = str(tmp_path / "nan.pth"), str(tmp_path / "out.pth")
    _save(src, sd)
    err = _exit_2(capsys, src, dst, "--cosine", "--normalized-mask")
    assert "non-finite values (NaN or inf) in 1 tensor(s): roi_head.bbox_head.fc_cls.weight" in err
    assert not os.path.exists(dst)


def test_a_full_disk_and_empty_paths_are_named(tmp_path, capsys, monkeypatch):
    """No space left while writing OUT (an OSError without a file name): the message names
    OUT, not "None"; an empty IN or OUT is refused before anything is read."""
    import errno

    src, dst = str(tmp_path / "mmdet.pth"), str(tmp_path / "out.pth")
    _save(src, mmdet_state_dict())
    for argv, message in (
        (["", dst], "IN is empty; give the mmdet checkpoint"),
        ([src, ""], "OUT is empty; give a file name for the converted model"),
        ([src, " "], "OUT ' ' is blank"),
    ):
        assert message in _exit_2(capsys, *argv)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    err = _exit_2(capsys, src, dst, "--cosine", "--normalized-mask")
    assert f"cannot write {dst}" in err and "None" not in err, err
    assert "free some space or choose another OUT path" in err
    assert sorted(os.listdir(tmp_path)) == ["mmdet.pth"]


@pytest.mark.parametrize(
    "content, what",
    [
        (b"this is not a checkpoint\n", "it is a text file"),
        (b"", "the file is empty (0 bytes)"),
        (pickle.dumps({"state_dict": {}}, protocol=4), "it is a plain Python pickle"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, capsys, content, what):
    (tmp_path / "in.pth").write_bytes(content)
    err = _exit_2(capsys, str(tmp_path / "in.pth"), str(tmp_path / "out.pth"))
    assert f"in.pth is not a torch checkpoint: {what}" in err
    assert not (tmp_path / "out.pth").exists()
