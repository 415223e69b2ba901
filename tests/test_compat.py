"""The compatibility shims are narrow: nothing global is left behind."""

import numpy as np
import pytest
from PIL import Image

from iif_d2 import compat


def test_no_pillow_alias_left_behind():
    import detectron2.data.transforms  # noqa: F401  (imported fine, with Pillow >= 10 too)

    if int(Image.__version__.split(".")[0]) >= 10:
        assert not hasattr(Image, "LINEAR")


def test_numpy_float_alias_is_scoped():
    had = hasattr(np, "float")
    with compat.numpy_float_alias():
        assert np.float is float or had
    assert hasattr(np, "float") == had


@pytest.mark.skipif(compat.HAS_COMPILED_OPS, reason="detectron2 has its compiled ops")
def test_missing_compiled_op_raises_clear_error():
    import torch
    from detectron2.layers import nms_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(compat.MissingCompiledOpError, match="official source"):
        nms_rotated(boxes, torch.ones(1), 0.5)


def test_collect_env_works():
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_cpu_safe_ddp_is_restored():
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    with compat.cpu_safe_ddp():
        assert defaults.create_ddp_model is not original
    assert defaults.create_ddp_model is original


def test_feature_detection():
    import inspect

    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

    params = inspect.signature(FastRCNNOutputLayers.__init__).parameters
    assert compat.fast_rcnn_supports("use_sigmoid_ce") == ("use_sigmoid_ce" in params)
    assert compat.fast_rcnn_supports("num_classes")
