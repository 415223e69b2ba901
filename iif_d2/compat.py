"""Everything that differs between detectron2 v0.6 (PyPI sdist, no compiled ops) and current
main, and the narrow fixes for the libraries they trip on. Decided by feature detection: both
detectron2 versions report ``__version__ == "0.6"``.

Import this module before any ``detectron2`` sub-package (``import iif_d2`` does it first):

* ``detectron2._C`` missing (v0.6 installed without its C++ ops): v0.6's ``detectron2.layers``
  imports ``_C`` at module level, so a placeholder module is registered whose every attribute
  raises :class:`MissingCompiledOpError` naming the op and the fix.
* Pillow >= 10 removed ``Image.LINEAR``, which v0.6 uses as a default argument in
  ``detectron2.data.transforms.transform``: that one module is imported with the alias present,
  and the alias is removed again at once, so nothing global is left behind.
* ``lvis==0.5.3`` uses ``np.float`` (removed in numpy 1.24) in ``LVISEval.accumulate``:
  :func:`numpy_float_alias` provides it only for the duration of an evaluation.
* v0.6's ``launch`` hard-codes NCCL and CUDA, and both versions' ``create_ddp_model`` pass
  ``device_ids`` that DDP rejects for CPU models: see :func:`launch` and :func:`cpu_safe_ddp`.
"""

import contextlib
import importlib
import importlib.util
import inspect
import logging
import sys
import types

import numpy as np

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "Install detectron2 with its compiled ops from its official source: "
    "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'`."
)


class MissingCompiledOpError(RuntimeError):
    """A detectron2 C++/CUDA op was called, but detectron2 was installed without them."""


class _MissingCompiledOps(types.ModuleType):
    """Stands in for ``detectron2._C`` when detectron2 was installed without compiled ops.

    The informational queries of ``detectron2.utils.collect_env`` answer "not compiled"; any
    op raises :class:`MissingCompiledOpError`.
    """

    def __init__(self, name):
        super().__init__(name)
        self.get_compiler_version = lambda: "none: detectron2 installed without compiled ops"
        self.get_cuda_version = lambda: "none"
        self.has_cuda = lambda: False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingCompiledOpError(
            f"detectron2 op `{name}` is a compiled op, and this detectron2 was installed without "
            "compiled ops (the pb1-detectron2 fallback: no deformable convolution, no rotated "
            f"boxes, no C++ COCO evaluation). {_INSTALL_HINT}"
        )


def _check_pkg_resources():
    if importlib.util.find_spec("pkg_resources") is None:
        raise ImportError(
            "detectron2 imports `pkg_resources`, which setuptools 81 removed. "
            "Fix: `pip install 'setuptools<81'` in this environment."
        )


# v0.6 ops reached through ``torch.ops.detectron2`` rather than ``detectron2._C``.
_TORCH_OPS = {"nms_rotated": "nms_rotated(Tensor dets, Tensor scores, float iou) -> Tensor"}
_LIBRARY = None


def _register_missing_torch_ops():
    """Declare ``torch.ops.detectron2.*`` ops whose kernels raise MissingCompiledOpError."""
    global _LIBRARY
    import torch

    _LIBRARY = torch.library.Library("detectron2", "DEF")
    for name, schema in _TORCH_OPS.items():
        _LIBRARY.define(schema)

        def kernel(*args, _name=name):
            getattr(sys.modules["detectron2._C"], _name)  # raises MissingCompiledOpError

        _LIBRARY.impl(name, kernel, "CompositeExplicitAutograd")


def _install_missing_ops_placeholder() -> bool:
    """Register the ``detectron2._C`` placeholder if the real one is absent. Returns has-ops."""
    if "detectron2._C" in sys.modules:
        return not isinstance(sys.modules["detectron2._C"], _MissingCompiledOps)
    if importlib.util.find_spec("detectron2._C") is not None:
        return True
    sys.modules["detectron2._C"] = _MissingCompiledOps("detectron2._C")
    import detectron2

    detectron2._C = sys.modules["detectron2._C"]
    _register_missing_torch_ops()
    logger.info("detectron2 has no compiled ops; calling one raises MissingCompiledOpError.")
    return False


def _import_transforms_with_pillow_linear():
    """Import detectron2's transform module with ``PIL.Image.LINEAR`` present, then remove it."""
    from PIL import Image

    if "detectron2.data.transforms.transform" in sys.modules or hasattr(Image, "LINEAR"):
        return
    Image.LINEAR = Image.BILINEAR
    try:
        importlib.import_module("detectron2.data.transforms.transform")
    finally:
        del Image.LINEAR


_check_pkg_resources()
HAS_COMPILED_OPS = _install_missing_ops_placeholder()
_import_transforms_with_pillow_linear()


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
