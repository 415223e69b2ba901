"""The compatibility shims are narrow: nothing global is left behind, and nothing is patched
at import (the installer repairs detectron2 v0.6's sources once)."""

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


def _run(code):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_detectron2_imports_before_iif_d2():
    """No import-order rule: detectron2 first, iif-d2 after, in this environment."""
    r = _run(
        "import detectron2.engine, detectron2.data.transforms, iif_d2\n"
        "from iif_d2 import add_iif_config\n"
        "from detectron2.config import get_cfg\n"
        "add_iif_config(get_cfg())\n"
        "from detectron2.modeling import ROI_HEADS_REGISTRY\n"
        "assert 'IIFStandardROIHeads' in ROI_HEADS_REGISTRY"
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_importing_iif_d2_patches_nothing():
    r = _run(
        "import sys\n"
        "from PIL import Image\n"
        "import iif_d2, iif_d2.compat\n"
        "assert not hasattr(Image, 'LINEAR') or int(Image.__version__.split('.')[0]) < 10\n"
        "assert 'detectron2._C' not in sys.modules, 'iif_d2 imported detectron2._C'\n"
        "assert 'detectron2.modeling' not in sys.modules"
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_pure_modules_import_without_model_code():
    r = _run(
        "import sys\n"
        "import iif_d2.weights, iif_d2.fp_analysis\n"
        "loaded = [m for m in ('detectron2.modeling', 'iif_d2.fast_rcnn', 'iif_d2.roi_heads')"
        " if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    assert r.returncode == 0, r.stderr[-2000:]
