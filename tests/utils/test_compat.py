"""The compatibility shims are narrow: nothing global is left behind, and nothing is patched
at import (the installer repairs detectron2 v0.6's sources once)."""

import numpy as np
import pytest
from PIL import Image

from iif_d2.utils import compat


def test_no_pillow_alias_left_behind():
    import detectron2.data.transforms  # noqa: F401  (imported fine, with Pillow >= 10 too)

    if int(Image.__version__.split(".")[0]) >= 10:
        assert not hasattr(Image, "LINEAR")


def test_numpy_float_alias_is_scoped():
    had = hasattr(np, "float")
    with compat.numpy_float_alias():
        assert np.float is float or had
    assert hasattr(np, "float") == had


@pytest.mark.skipif(compat.has_compiled_ops(), reason="detectron2 has its compiled ops")
def test_missing_compiled_op_raises_clear_error():
    import torch
    from detectron2.layers import nms_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(RuntimeError, match="official source") as e:
        nms_rotated(boxes, torch.ones(1), 0.5)
    assert compat.is_missing_compiled_op(e.value)


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


IMPORT_CASES = {
    # no import-order rule: detectron2 first, iif-d2 after, in this environment
    "detectron2_first": (
        "import detectron2.engine, detectron2.data.transforms, iif_d2",
        "from iif_d2 import add_iif_config",
        "from detectron2.config import get_cfg",
        "add_iif_config(get_cfg())",
        "from detectron2.modeling import ROI_HEADS_REGISTRY",
        "assert 'IIFStandardROIHeads' in ROI_HEADS_REGISTRY",
    ),
    # importing iif-d2 patches nothing
    "patches_nothing": (
        "import sys",
        "from PIL import Image",
        "import iif_d2, iif_d2.utils.compat",
        "assert not hasattr(Image, 'LINEAR') or int(Image.__version__.split('.')[0]) < 10",
        "assert 'detectron2._C' not in sys.modules, 'iif_d2 imported detectron2._C'",
        "assert 'detectron2.modeling' not in sys.modules",
    ),
    # the pure modules load no model code
    "pure_modules": (
        "import sys",
        "import iif_d2.weights, iif_d2.lvis_eval.fp_analysis",
        "model = ('detectron2.modeling', 'iif_d2.modeling.fast_rcnn', 'iif_d2.modeling.roi_heads')",
        "loaded = [m for m in model if m in sys.modules]",
        "assert not loaded, loaded",
    ),
}


@pytest.mark.parametrize("case", sorted(IMPORT_CASES))
def test_imports_in_a_fresh_process(case):
    import subprocess
    import sys

    code = "\n".join(IMPORT_CASES[case])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
