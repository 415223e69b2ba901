"""Everything that differs between detectron2 v0.6 (PyPI sdist, no compiled ops) and current
main, decided by feature detection (both report ``__version__ == "0.6"``). Importing this
module changes nothing: the repairs detectron2 v0.6 needs to import in a current environment
(a ``detectron2/_C.py`` whose ops raise ``MissingCompiledOpError``, and Pillow 10's removal
of ``Image.LINEAR``) are made once in the installed sources by ``dev/install_env.py``; at run
time only scoped context managers remain:

* ``lvis==0.5.3`` uses ``np.float`` (removed in numpy 1.24) in ``LVISEval.accumulate``:
  :func:`numpy_float_alias` provides it only for the duration of an evaluation.
* both versions' ``create_ddp_model`` pass ``device_ids`` that DDP rejects for CPU models:
  :func:`cpu_safe_ddp`; v0.6's ``launch`` hard-codes NCCL and CUDA: see :mod:`iif_d2.engine.launch`.
"""

import contextlib
import importlib.util
import inspect
import sys

import numpy as np

__all__ = [
    "is_missing_compiled_op",
    "cpu_safe_ddp",
    "fast_rcnn_supports",
    "has_compiled_ops",
    "numpy_float_alias",
]


def has_compiled_ops() -> bool:
    """Whether detectron2's compiled ops are installed (not the installer's placeholder)."""
    spec = importlib.util.find_spec("detectron2._C")
    if spec is None:
        return False
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return "IIF_D2_PLACEHOLDER" not in vars(module)
    return not (spec.origin or "").endswith(".py")


def is_missing_compiled_op(error: BaseException) -> bool:
    """Whether ``error`` is the placeholder ``detectron2._C``'s ``MissingCompiledOpError``."""
    return type(error).__name__ == "MissingCompiledOpError"


@contextlib.contextmanager
def numpy_float_alias():
    """Provide ``np.float`` (removed in numpy 1.24) while ``lvis==0.5.3`` evaluates, only."""
    if hasattr(np, "float"):
        yield
        return
    np.float = float
    try:
        yield
    finally:
        del np.float


def fast_rcnn_supports(param: str) -> bool:
    """Whether detectron2's ``FastRCNNOutputLayers`` takes ``param`` (e.g. ``use_sigmoid_ce``,
    only on main)."""
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

    return param in inspect.signature(FastRCNNOutputLayers.__init__).parameters


@contextlib.contextmanager
def cpu_safe_ddp():
    """While active, detectron2's ``create_ddp_model`` wraps CPU models without ``device_ids``.

    Both detectron2 versions pass ``device_ids=[local_rank]``, which DistributedDataParallel
    rejects for a CPU module, so multi-process CPU training could not start otherwise.
    """
    from detectron2.engine import defaults

    original = defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        defaults.create_ddp_model = original
