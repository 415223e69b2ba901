#!/usr/bin/env python
"""Convert the IIF authors' mmdetection 2.x Mask R-CNN checkpoints into iif-d2 checkpoints.

    python tools/convert_mmdet_checkpoint.py IN.pth OUT.pth [--cosine] [--normalized-mask]
        [--num-classes 1203] [--cosine-scale S] [--mask-scale S]

Scope: mmdet 2.x ``MaskRCNN`` with a ResNet-50/101 backbone (``style='pytorch'``), ``FPN``
(5 outputs, P6 by max-pooling P5), ``RPNHead`` (3 aspect ratios, 1 scale), ``Shared2FCBBoxHead``
(or the authors' FASA variant) and ``FCNMaskHead``; optionally the authors' cosine box classifier
(``cls_predictor_cfg=dict(type='NormedLinear', tempearture=s)``) and normalised mask predictor
(``predictor_cfg=dict(type='NormedConv2d', tempearture=s)``). Both keep nn.Linear's / nn.Conv2d's
parameter names and shapes (``fc_cls.weight/bias``, ``conv_logits.weight/bias``); their scale is
not in the state dict: it is read from the config text mmdet stores in the checkpoint's meta, or
given with ``--cosine-scale`` / ``--mask-scale``. They compute ``s * cos + b``, as iif-d2's
``CosineLinear`` / ``CosineConv2d`` (the authors add 1e-6 to the norms: a 1e-6 relative change).

What is mapped and why no tensor needs more than a rename (mmdet 2.16 source, the authors' copy):

* ResNet: ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``;
  ``layer{i}.{j}.conv{k}``/``bn{k}`` -> ``res{i+1}.{j}.conv{k}``/``conv{k}.norm``;
  ``downsample.0/1`` -> ``shortcut``/``shortcut.norm``.
  BatchNorm ``weight, bias, running_mean, running_var`` go to FrozenBN (mmdet evaluates BN with
  its running statistics, eps 1e-5 in both); ``num_batches_tracked`` has no counterpart and is
  dropped. mmdet's "pytorch" style strides the 3x3 conv: the config needs
  ``MODEL.RESNETS.STRIDE_IN_1X1 False`` (detectron2's True is for MSRA weights).
* Input: mmdet feeds RGB images normalised with torchvision's mean/std. Padding makes folding
  that normalisation into ``conv1`` inexact, so the converter keeps detectron2's BGR input and
  reverses ``conv1``'s input channels instead; the config then needs the torchvision mean/std in
  BGR order: ``MODEL.PIXEL_MEAN [103.53, 116.28, 123.675]``, ``MODEL.PIXEL_STD
  [57.375, 57.12, 58.395]`` (INPUT.FORMAT stays "BGR").
* FPN: ``neck.lateral_convs.{i}.conv`` -> ``backbone.fpn_lateral{i+2}``, ``neck.fpn_convs.{i}.conv``
  -> ``backbone.fpn_output{i+2}``. Both sum the nearest-upsampled coarser level and make P6 with a
  1x1 max-pool of stride 2 on P5 (mmdet ``add_extra_convs=False``; detectron2 LastLevelMaxPool).
* RPN: ``rpn_conv`` -> ``conv``, ``rpn_cls`` -> ``objectness_logits``, ``rpn_reg`` ->
  ``anchor_deltas``. No permutation is needed: at each location both order the anchors by the
  aspect ratio h/w as listed (mmdet ``ratios=[0.5, 1.0, 2.0]`` with one scale, detectron2
  ``ASPECT_RATIOS [[0.5, 1.0, 2.0]]`` with one size per level), channel ``a`` is anchor a's
  objectness and channels ``4a..4a+3`` its (dx, dy, dw, dh); sizes (stride x 8 = 32..512), centres
  (offset 0) and the delta coding (target stds 1, clamp log(1000/16)) agree.
* Box head: ``shared_fcs.0/1`` -> ``box_head.fc1/fc2``, ``fc_cls`` -> ``box_predictor.cls_score``
  (C+1 rows, background last in both), ``fc_reg`` -> ``bbox_pred`` (4 per class, class-major as
  detectron2; class-agnostic 4 outputs need ``MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True``).
  mmdet's target stds (0.1, 0.1, 0.2, 0.2) are detectron2's default BBOX_REG_WEIGHTS
  (10, 10, 5, 5). RoIAlign (7 / 14 bins, sampling ratio 0, aligned) and the level of a RoI
  (canonical 224 at P4 = mmdet's finest scale 56 at P2) agree with ROIAlignV2.
* Mask head: ``convs.{i}.conv`` -> ``mask_fcn{i+1}``, ``upsample`` -> ``deconv``,
  ``conv_logits`` -> ``predictor`` (one channel per class, no background, in both).
* FASA (the authors' ``Shared2FCFASABBoxHead``): its class statistics (``feature_mean``,
  ``feature_std``, ``feature_used``, ``prob_list``, ``cum_loss_perclass_*``) act only in training;
  they are dropped and reported, and the overrides switch FASA off for evaluation.

Anything else in the state dict is an error that lists the keys; so is a missing or misshapen
tensor, or one holding NaN or inf. The checkpoint is read with
``torch.load(weights_only=True)``; numpy scalars and arrays in mmdet's meta (a seed, say) are
allowed, any other pickled class is an error. The output is
``{"model": state_dict, "__author__": "mmdet->iif-d2", "matching_heuristics": False}``, and the
config overrides to evaluate it are printed.
"""

import importlib
import pickle
import re
import sys
import warnings

import torch

AUTHOR = "mmdet->iif-d2"
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BN_KEYS = ("weight", "bias", "running_mean", "running_var")
FPN_IN = (256, 512, 1024, 2048)
FPN_DIM, FC_DIM, MASK_DIM, NUM_ANCHORS = 256, 1024, 256, 3
# torchvision's normalisation (mmdet's img_norm_cfg), in detectron2's BGR order
PIXEL_MEAN_BGR = [103.53, 116.28, 123.675]
PIXEL_STD_BGR = [57.375, 57.12, 58.395]
FASA_KEYS = ("feature_mean", "feature_std", "feature_used", "prob_list")
FASA_LOSS_KEYS = ("cum_loss_perclass_t0", "cum_loss_perclass_t1")
# pickled globals allowed in mmdet's meta: numpy scalars, dtypes and plain arrays (data only)
NUMPY_GLOBALS = re.compile(
    r"numpy\.(_?core\.multiarray\.(scalar|_reconstruct)|dtype|ndarray|dtypes\.\w+DType)"
)
# the authors' IIF variant names (less the '_obj' of IOF) -> iif-d2's VARIANT
IIF_VARIANTS = {
    "raw": "raw",
    "smooth": "smooth",
    "prob": "relative",
    "rel": "relative",
    "base2": "base2",
    "base10": "base10",
    "gombit": "gombit",
    "normit": "normit",
}


class ConversionError(ValueError):
    """Bad input: the message names the problem and the fix."""


# ----------------------------------------------------------------------------- loading
def _numpy_globals():
    """numpy's data-only pickle globals (scalars, dtypes, plain arrays) as (object, name) pairs,
    under both the numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) names."""
    import numpy

    core = importlib.import_module(
        "numpy._core.multiarray" if _numpy2() else "numpy.core.multiarray"
    )
    out = [(numpy.dtype, "numpy.dtype"), (numpy.ndarray, "numpy.ndarray")]
    for attr in ("scalar", "_reconstruct"):
        out += [(getattr(core, attr), f"numpy.{m}.multiarray.{attr}") for m in ("core", "_core")]
    dtypes = getattr(numpy, "dtypes", None)  # numpy >= 1.25
    for attr in dir(dtypes) if dtypes is not None else ():
        if attr.endswith("DType") and attr != "ObjectDType":
            out.append((getattr(dtypes, attr), f"numpy.dtypes.{attr}"))
    return out


def _numpy2():
    import numpy

    return int(numpy.__version__.split(".")[0]) >= 2


def load_mmdet_checkpoint(path):
    """Reads an mmdet checkpoint without running code.

    Args:
        path: a ``.pth`` file: ``{"meta": ..., "state_dict": ...}`` (mmcv's format) or a bare
            state dict.

    Returns:
        (state_dict, meta): the tensors by name and the meta dict ({} if there is none).
    """
    from iif_d2.utils.safe_load import not_a_checkpoint

    try:
        with warnings.catch_warnings():  # torch's note on a plain pickle's protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return _split(torch.load(path, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file.") from None
    except pickle.UnpicklingError:  # weights_only refused a class: see which (below)
        pass
    except ConversionError as e:  # read, but not an mmdet checkpoint
        raise ConversionError(f"{path}: {e}") from None
    except (RuntimeError, EOFError, ValueError, IndexError, KeyError, AttributeError) as e:
        raise ConversionError(not_a_checkpoint(path, e)) from None  # text, empty, a cut zip
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # noqa: BLE001  (a plain pickle, a damaged file)
        raise ConversionError(not_a_checkpoint(path, e)) from None
    refused = [g for g in needed if not NUMPY_GLOBALS.fullmatch(g)]
    if refused:
        raise ConversionError(
            f"{path} pickles classes other than tensors and numpy data ({', '.join(refused)}); "
            "loading them could run code. Re-save the state dict alone: "
            "torch.save({'state_dict': ckpt['state_dict']}, path) in a trusted environment."
        )
    with torch.serialization.safe_globals(_numpy_globals()):
        return _split(torch.load(path, map_location="cpu", weights_only=True))


def _split(obj):
    if not isinstance(obj, dict):
        raise ConversionError(f"expected a dict checkpoint, got a {type(obj).__name__}.")
    if "model" in obj and "state_dict" not in obj and ("__author__" in obj or "iteration" in obj):
        raise ConversionError(
            "it is a detectron2 checkpoint already (it has 'model'); give it to train_net.py "
            "as MODEL.WEIGHTS, no conversion needed."
        )
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    sd = obj["state_dict"] if "state_dict" in obj else obj
    if not isinstance(sd, dict):
        raise ConversionError(
            f"its state_dict is a {type(sd).__name__}, not a dict of tensors; expected "
            "{'meta': ..., 'state_dict': {name: tensor}} as mmdet's checkpoints."
        )
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(sd):
        others = sorted(k for k in sd if k not in tensors)[:5]
        raise ConversionError(
            f"no mmdet state dict found (keys that are not tensors: {others}); expected "
            "{'meta': ..., 'state_dict': {name: tensor}} as mmdet's checkpoints."
        )
    if all(k.startswith("module.") for k in tensors):  # saved from a DataParallel wrapper
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors, meta


# ----------------------------------------------------------------------------- names
def _bn(mm, d2, n):
    out = {f"{mm}.{k}": (f"{d2}.{k}", (n,)) for k in BN_KEYS}
    out[f"{mm}.num_batches_tracked"] = (None, ())  # FrozenBN has no counter
    return out


def _conv(mm, d2, shape, bias=True):
    out = {f"{mm}.weight": (f"{d2}.weight", shape)}
    if bias:
        out[f"{mm}.bias"] = (f"{d2}.bias", (shape[0],))
    return out


def name_table(depth, num_classes, agnostic_reg=False, agnostic_mask=False):
    """Every tensor of the mmdet model: mmdet name -> (detectron2 name or None, shape).

    Args:
        depth: 50 or 101.
        num_classes: C, foreground classes.
        agnostic_reg, agnostic_mask: class-agnostic box regression / masks.

    Returns:
        dict; a None target is a tensor with no counterpart (BatchNorm's num_batches_tracked).
    """
    t = {}
    bb = "backbone.bottom_up"
    t.update(_conv("backbone.conv1", f"{bb}.stem.conv1", (64, 3, 7, 7), bias=False))
    t.update(_bn("backbone.bn1", f"{bb}.stem.conv1.norm", 64))
    in_ch = 64
    for i, blocks in enumerate(RESNET_BLOCKS[depth], start=1):
        planes = 64 * 2 ** (i - 1)
        for j in range(blocks):
            mm, d2 = f"backbone.layer{i}.{j}", f"{bb}.res{i + 1}.{j}"
            shapes = [(planes, in_ch, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
            for k, shape in enumerate(shapes, start=1):
                t.update(_conv(f"{mm}.conv{k}", f"{d2}.conv{k}", shape, bias=False))
                t.update(_bn(f"{mm}.bn{k}", f"{d2}.conv{k}.norm", shape[0]))
            if j == 0:
                short = (planes * 4, in_ch, 1, 1)
                t.update(_conv(f"{mm}.downsample.0", f"{d2}.shortcut", short, bias=False))
                t.update(_bn(f"{mm}.downsample.1", f"{d2}.shortcut.norm", planes * 4))
            in_ch = planes * 4
    for i, c in enumerate(FPN_IN):
        lat, out = (FPN_DIM, c, 1, 1), (FPN_DIM, FPN_DIM, 3, 3)
        t.update(_conv(f"neck.lateral_convs.{i}.conv", f"backbone.fpn_lateral{i + 2}", lat))
        t.update(_conv(f"neck.fpn_convs.{i}.conv", f"backbone.fpn_output{i + 2}", out))
    rpn = "proposal_generator.rpn_head"
    t.update(_conv("rpn_head.rpn_conv", f"{rpn}.conv", (FPN_DIM, FPN_DIM, 3, 3)))
    t.update(_conv("rpn_head.rpn_cls", f"{rpn}.objectness_logits", (NUM_ANCHORS, FPN_DIM, 1, 1)))
    t.update(_conv("rpn_head.rpn_reg", f"{rpn}.anchor_deltas", (4 * NUM_ANCHORS, FPN_DIM, 1, 1)))
    box, pred = "roi_head.bbox_head", "roi_heads.box_predictor"
    t.update(_conv(f"{box}.shared_fcs.0", "roi_heads.box_head.fc1", (FC_DIM, FPN_DIM * 49)))
    t.update(_conv(f"{box}.shared_fcs.1", "roi_heads.box_head.fc2", (FC_DIM, FC_DIM)))
    t.update(_conv(f"{box}.fc_cls", f"{pred}.cls_score", (num_classes + 1, FC_DIM)))
    reg = 4 if agnostic_reg else 4 * num_classes
    t.update(_conv(f"{box}.fc_reg", f"{pred}.bbox_pred", (reg, FC_DIM)))
    mask = "roi_heads.mask_head"
    for i in range(4):
        conv = (MASK_DIM, MASK_DIM if i else FPN_DIM, 3, 3)
        t.update(_conv(f"roi_head.mask_head.convs.{i}.conv", f"{mask}.mask_fcn{i + 1}", conv))
    up = (MASK_DIM, MASK_DIM, 2, 2)  # ConvTranspose2d: (in, out, k, k)
    t.update(_conv("roi_head.mask_head.upsample", f"{mask}.deconv", up))
    logits = (1 if agnostic_mask else num_classes, MASK_DIM, 1, 1)
    t.update(_conv("roi_head.mask_head.conv_logits", f"{mask}.predictor", logits))
    return t


def fasa_keys(num_classes):
    """The authors' FASA statistics (training only): mmdet name -> shape."""
    c = num_classes
    shapes = {"feature_mean": (c, FC_DIM), "feature_std": (c, FC_DIM)}
    shapes.update({"feature_used": (c,), "prob_list": (c,)})
    shapes.update(dict.fromkeys(FASA_LOSS_KEYS, (c + 1,)))
    return {f"roi_head.bbox_head.{k}": s for k, s in shapes.items()}


def _infer_layout(sd):
    """(depth, num_classes, agnostic_reg, agnostic_mask) from the tensors' shapes."""
    if "roi_head.bbox_head.fc_cls.weight" not in sd or "backbone.layer3.0.conv1.weight" not in sd:
        raise ConversionError(
            "not an mmdet 2.x Mask R-CNN ResNet state dict: 'backbone.layer3.0.conv1.weight' or "
            "'roi_head.bbox_head.fc_cls.weight' is missing."
        )
    blocks = len({k.split(".")[2] for k in sd if k.startswith("backbone.layer3.")})
    depth = {6: 50, 23: 101}.get(blocks)
    if depth is None:
        raise ConversionError(f"ResNet with {blocks} blocks in layer3: only R-50 (6), R-101 (23).")
    num_classes = sd["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
    reg = sd.get("roi_head.bbox_head.fc_reg.weight")
    logits = sd.get("roi_head.mask_head.conv_logits.weight")
    agnostic_reg = reg is not None and reg.shape[0] == 4 and num_classes != 1
    agnostic_mask = logits is not None and logits.shape[0] == 1 and num_classes != 1
    return depth, num_classes, agnostic_reg, agnostic_mask


# ----------------------------------------------------------------------------- meta config
def _config_float(text, pattern):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def parse_meta_config(meta):
    """What the config text mmdet saved in ``meta['config']`` says (never executed).

    Returns:
        dict with any of: cosine_scale, mask_scale, iif (authors' variant name), test settings
        (score_thr, nms_iou, max_per_img, mask_thr).
    """
    text = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(text, str):
        return {}
    num = r"\s*=\s*([0-9.eE+-]+)"
    found = {
        "cosine_scale": _config_float(text, r"type='\w*NormedLinear',\s*tempearture" + num),
        "mask_scale": _config_float(text, r"type='NormedConv2d',\s*tempearture" + num),
    }
    loss = re.search(r"type='(Fasa)?IIFLoss'[^)]*?variant='(\w+)'", text, re.S)
    if loss:
        found["iif"] = loss.group(2)
    test = text[text.find("test_cfg") :] if "test_cfg" in text else ""
    rcnn = test[test.find("rcnn") :] if "rcnn" in test else ""
    found["score_thr"] = _config_float(rcnn, "score_thr" + num)
    found["nms_iou"] = _config_float(rcnn, "iou_threshold" + num)
    found["max_per_img"] = _config_float(rcnn, "max_per_img" + num)
    found["mask_thr"] = _config_float(rcnn, "mask_thr_binary" + num)
    return {k: v for k, v in found.items() if v is not None}


# ----------------------------------------------------------------------------- conversion
def convert(sd, cosine=False, normalized_mask=False, num_classes=None, meta=None, **scales):
    """Renames an mmdet 2.x Mask R-CNN state dict into iif-d2's.

    Args:
        sd: mmdet name -> tensor.
        cosine, normalized_mask: the checkpoint has the authors' cosine box classifier /
            normalised mask predictor.
        num_classes: expected C (checked against the classifier's shape); None: any.
        meta: mmdet's checkpoint meta (its config text gives the cosine scales).
        scales: ``cosine_scale`` / ``mask_scale``: override the meta config's scales.

    Returns:
        (state_dict, overrides, dropped): the detectron2 state dict, the config overrides as a
        flat [key, value, ...] list, and (mmdet name, reason) of each tensor not converted.
    """
    depth, c, agnostic_reg, agnostic_mask = _infer_layout(sd)
    if num_classes is not None and c != num_classes:
        raise ConversionError(
            f"the box classifier has {c + 1} rows = {c} classes + background, not "
            f"--num-classes {num_classes}: pass --num-classes {c} (and NUM_CLASSES {c})."
        )
    classes = meta.get("CLASSES") if isinstance(meta, dict) else None
    if isinstance(classes, (list, tuple)) and len(classes) != c:
        raise ConversionError(f"meta lists {len(classes)} CLASSES but the classifier has {c}.")
    table = name_table(depth, c, agnostic_reg, agnostic_mask)
    extra = fasa_keys(c)
    unexpected = sorted(k for k in sd if k not in table and k not in extra)
    missing = sorted(k for k, (d2, _) in table.items() if k not in sd and d2 is not None)
    if unexpected or missing:
        raise ConversionError(
            f"not the supported mmdet Mask R-CNN R-{depth} FPN: "
            + (f"{len(unexpected)} unexpected keys {_clip(unexpected)}" if unexpected else "")
            + ("; " if unexpected and missing else "")
            + (f"{len(missing)} missing keys {_clip(missing)}" if missing else "")
        )
    shapes = {**{k: s for k, (_, s) in table.items()}, **extra}
    bad = [f"{k} {tuple(v.shape)} != {shapes[k]}" for k, v in sd.items() if v.shape != shapes[k]]
    if bad:
        raise ConversionError(f"unexpected shapes (ResNeXt, another head?): {_clip(bad)}")
    nonfinite = [
        f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})"
        for k, v in sd.items()
        if table.get(k, (None,))[0] is not None
        and v.is_floating_point()
        and not bool(torch.isfinite(v).all())
    ]
    if nonfinite:
        raise ConversionError(
            f"non-finite values (NaN or inf) in {len(nonfinite)} tensor(s): {_clip(nonfinite)}; "
            "the run that saved it diverged or the file is damaged: convert an earlier "
            "checkpoint of that run."
        )
    out, dropped = {}, []
    for k, v in sd.items():
        target = table[k][0] if k in table else None
        if target is None:
            why = "training-only FASA state" if k in extra else "BatchNorm counter, no FrozenBN"
            dropped.append((k, why))
            continue
        v = v.detach().clone()
        if k == "backbone.conv1.weight":
            v = v.flip(1)  # RGB -> BGR input channels
        out[target] = v
    overrides = _overrides(depth, c, agnostic_reg, agnostic_mask, cosine, normalized_mask, meta)
    return out, _scaled(overrides, meta, cosine, normalized_mask, **scales), dropped


def _clip(keys, n=8):
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _overrides(depth, c, agnostic_reg, agnostic_mask, cosine, normalized_mask, meta):
    o = ["MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.STRIDE_IN_1X1", False]
    o += ["MODEL.PIXEL_MEAN", PIXEL_MEAN_BGR, "MODEL.PIXEL_STD", PIXEL_STD_BGR]
    o += ["INPUT.FORMAT", "BGR", "MODEL.ROI_HEADS.NUM_CLASSES", c]
    o += ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", agnostic_reg]
    o += ["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", agnostic_mask]
    o += ["MODEL.ROI_BOX_HEAD.COSINE.ENABLED", bool(cosine)]
    head = "NormalizedMaskRCNNConvUpsampleHead" if normalized_mask else "MaskRCNNConvUpsampleHead"
    o += ["MODEL.ROI_MASK_HEAD.NAME", head, "MODEL.ROI_BOX_HEAD.FASA.ENABLED", False]
    found = parse_meta_config(meta or {})
    variant = found.get("iif")
    if variant is not None:
        base = variant[: -len("_obj")] if variant.endswith("_obj") else variant
        if base not in IIF_VARIANTS:
            raise ConversionError(f"the checkpoint's IIF variant {variant!r} is not known.")
        o += ["MODEL.ROI_BOX_HEAD.IIF.ENABLED", True, "MODEL.ROI_BOX_HEAD.IIF.MODE", "end_to_end"]
        o += ["MODEL.ROI_BOX_HEAD.IIF.VARIANT", IIF_VARIANTS[base]]
        o += [
            "MODEL.ROI_BOX_HEAD.IIF.FREQUENCY",
            "instance" if variant.endswith("_obj") else "image",
        ]
        if c == 1203:  # LVIS v1: the counts shipped with iif-d2, no training json needed
            o += ["MODEL.CLASS_COUNTS.SOURCE", "file"]
            o += ["MODEL.CLASS_COUNTS.FILE", "iif_d2://lvis_v1_train.csv"]
    keys = {
        "score_thr": "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "nms_iou": "MODEL.ROI_HEADS.NMS_THRESH_TEST",
        "max_per_img": "TEST.DETECTIONS_PER_IMAGE",
        "mask_thr": "MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD",
    }
    for name, key in keys.items():
        if name in found:
            o += [key, int(found[name]) if name == "max_per_img" else found[name]]
    return o


def _scaled(o, meta, cosine, normalized_mask, cosine_scale=None, mask_scale=None):
    text = meta.get("config") if isinstance(meta, dict) else None
    found = parse_meta_config(meta or {})
    layers = (
        (cosine, cosine_scale, "cosine", "NormedLinear", "MODEL.ROI_BOX_HEAD.COSINE.SCALE"),
        (
            normalized_mask,
            mask_scale,
            "mask",
            "NormedConv2d",
            "MODEL.ROI_MASK_HEAD.NORMALIZED.SCALE",
        ),
    )
    for flag, given, name, layer, key in layers:
        option = "--cosine" if name == "cosine" else "--normalized-mask"
        in_config = f"{name}_scale" in found
        if isinstance(text, str) and in_config != flag:
            raise ConversionError(
                f"the checkpoint's config {'uses' if in_config else 'has no'} {layer}: "
                f"{'pass' if in_config else 'drop'} {option}."
            )
        if not flag:
            continue
        scale = given if given is not None else found.get(f"{name}_scale")
        if scale is None:
            raise ConversionError(
                f"{option}: the checkpoint has no meta config giving {layer}'s scale; pass "
                f"--{name}-scale (the authors' 'tempearture': 8 for the IIF cosine classifier, "
                "20 for softmax and for the normalised mask)."
            )
        if not scale > 0:
            raise ConversionError(f"--{name}-scale must be > 0, got {scale}.")
        o += [key, float(scale)]
    return o


def format_overrides(overrides):
    """The overrides as command-line text for train_net.py."""
    out = []
    for key, value in zip(overrides[::2], overrides[1::2]):
        text = str(value).replace(" ", "") if isinstance(value, list) else str(value)
        out.append(f'{key} "{text}"' if isinstance(value, list) else f"{key} {text}")
    return " ".join(out)


# ----------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    from iif_d2.utils.cli_checks import OneLineParser, positive_float, positive_int

    p = OneLineParser(
        prog="convert_mmdet_checkpoint",
        description=__doc__.split("\n\n")[0],
        epilog="Prints the config overrides the converted model needs (among them "
        "MODEL.RESNETS.STRIDE_IN_1X1 False and torchvision's PIXEL_MEAN/STD in BGR order: conv1 "
        "is flipped to BGR input), the cosine scales read from the checkpoint's meta config, and "
        "its test settings. Then: python train_net.py --config-file "
        "configs/LVISv1-InstanceSegmentation/<matching leaf>.yaml --eval-only "
        "MODEL.WEIGHTS OUT.pth <printed overrides>. Full mapping: the module docstring.",
    )
    p.add_argument("input", metavar="IN.pth", help="mmdet 2.x checkpoint ({meta, state_dict})")
    p.add_argument("output", metavar="OUT.pth", help="where to write the detectron2 checkpoint")
    p.add_argument("--cosine", action="store_true", help="the box classifier is NormedLinear")
    p.add_argument(
        "--normalized-mask", action="store_true", help="the mask predictor is NormedConv2d"
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="check the classifier has C (LVIS: 1203)",
    )
    p.add_argument(
        "--cosine-scale",
        type=positive_float,
        default=None,
        help="NormedLinear's scale ('tempearture'); default: from the checkpoint's meta config",
    )
    p.add_argument(
        "--mask-scale",
        type=positive_float,
        default=None,
        help="NormedConv2d's scale ('tempearture'); default: from the checkpoint's meta config",
    )
    return p.parse_args(argv)


def check_output(input_path: str, output_path: str) -> None:
    """The input must be a readable file (not a folder, a pipe or a device); the output may not
    be the input (also through a symlink, a relative path or a hard link), a folder, a device,
    or in a folder that does not exist or cannot be written: checked before anything is read
    or written (:mod:`iif_d2.utils.cli_checks`, as every command).

    Raises:
        ConversionError: one line naming the path and the fix.
    """
    import os

    from iif_d2.utils.cli_checks import (
        UsageError,
        check_input_file,
        check_not_blank,
        check_output_file,
    )

    try:
        # "" would be read or written as the current folder
        check_not_blank(input_path, "IN", "the mmdet checkpoint, e.g. epoch_24.pth")
        check_not_blank(output_path, "OUT", "a file name for the converted model, e.g. model.pth")
        if os.path.exists(input_path):  # a missing one: load_mmdet_checkpoint says so
            check_input_file(input_path, "IN", "an mmdet 2.x checkpoint (.pth)")
        check_output_file(output_path, "OUT", (input_path,), "model.pth")
    except UsageError as e:
        raise ConversionError(str(e)) from None


def main(argv=None):
    """Command line; a bad input or argument is one line on stderr and exit code 2."""
    from iif_d2.utils.io import WriteError, atomic_write

    args = parse_args(argv)
    try:
        check_output(args.input, args.output)
        sd, meta = load_mmdet_checkpoint(args.input)
        model, overrides, dropped = convert(
            sd,
            cosine=args.cosine,
            normalized_mask=args.normalized_mask,
            num_classes=args.num_classes,
            meta=meta,
            cosine_scale=args.cosine_scale,
            mask_scale=args.mask_scale,
        )
        check_output(args.input, args.output)  # again: the paths may have changed meanwhile
        data = {"model": model, "__author__": AUTHOR, "matching_heuristics": False}
        try:
            atomic_write(args.output, lambda f: torch.save(data, f))
        except WriteError as e:  # no space left, an I/O error: names the file
            raise ConversionError(f"{e}; free some space or choose another OUT path.") from None
    except (ConversionError, OSError) as e:
        named = isinstance(e, OSError) and e.strerror and e.filename is not None
        text = f"{e.filename}: {e.strerror}" if named else e
        print(f"convert_mmdet_checkpoint: error: {' '.join(str(text).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    reasons = {}
    for _, why in dropped:
        reasons[why] = reasons.get(why, 0) + 1
    print(f"wrote {args.output}: {len(model)} tensors from {len(sd)}")
    for why, n in sorted(reasons.items()):
        print(f"not converted: {n} tensors ({why})")
    print("config overrides:\n" + format_overrides(overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
