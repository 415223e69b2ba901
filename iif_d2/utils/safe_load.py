"""Loading weights files without running code.

``.pkl`` weights (detectron2's and Detectron's model zoo: dicts of numpy arrays) go through a
restricted unpickler (:func:`safe_load_pkl`) that only rebuilds numpy arrays and plain Python
data, with no callable that allocates by an argument (``bytes(n)``, ``ndarray(shape)``, a huge
empty array: every allocation is bounded by the file's own bytes); ``.pth``/``.pyth`` files go
through ``torch.load(weights_only=True)`` (:func:`safe_torch_load`), with numpy arrays allowed
inside a scoped ``torch.serialization.safe_globals``. Anything else is refused with
:class:`UnsafeCheckpointError`, naming the file and the refused global.
"""

import _compat_pickle
import contextlib
import inspect
import math
import pickle
import re
import warnings
from collections import Counter, OrderedDict
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from detectron2.utils.file_io import PathManager

__all__ = [
    "TorchTooOldError",
    "UnsafeCheckpointError",
    "require_weights_only",
    "not_a_checkpoint",
    "safe_load_pkl",
    "safe_torch_load",
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a Python global that is not array or plain data: loading it could
    run code."""


def _numpy_module(name: str):
    """``numpy._core.<name>`` (numpy 2) or ``numpy.core.<name>`` (numpy 1), without the
    deprecation warning numpy 2 gives for the old name."""
    for package in ("numpy._core", "numpy.core"):
        with contextlib.suppress(ImportError):
            return __import__(f"{package}.{name}", fromlist=[name])
    raise ImportError(f"numpy has neither numpy._core.{name} nor numpy.core.{name}")


# the most bytes one array or scalar may ask for before its data is read: numpy pickles an
# array as an empty _reconstruct(ndarray, (0,), b"b") filled by __setstate__ from the file's
# bytes, so the file itself bounds every legitimate allocation
_MAX_RECONSTRUCT_BYTES = 4096


def _refuse(filename: str, what: str):
    raise UnsafeCheckpointError(
        f"Refusing to load {filename}: {what}. A weights .pkl (detectron2 / Detectron model "
        "zoo) holds only numpy arrays and plain Python data. Get the weights from a trusted "
        "source, or, if you trust this file, save its arrays again as a plain dict of numpy "
        "arrays (or torch.save a state dict to a .pth)."
    )


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: passed to ``_reconstruct`` it is the class;
    called itself (``ndarray(shape)`` allocates by argument) it is refused."""

    def __init__(self, filename: str):
        self.filename = filename

    def __call__(self, *args, **kwargs):
        _refuse(self.filename, "it calls numpy.ndarray(...) directly (an allocation by argument)")


def _pickle_allowlist(filename: str) -> Dict[Tuple[str, str], Any]:
    """(module, name) -> object, for everything a weights .pkl may reference: only what numpy
    arrays, numpy scalars and plain containers are rebuilt with, and none that allocates by an
    argument (``bytes(n)``, ``ndarray(shape)``, a huge empty array) or runs a codec."""
    multiarray, numeric = _numpy_module("multiarray"), _numpy_module("numeric")
    ndarray = _NdarrayType(filename)

    def reconstruct(subtype, shape, dtype_code):
        if subtype is not ndarray:
            _refuse(filename, f"numpy _reconstruct of {subtype!r}, not numpy.ndarray")
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            _refuse(filename, f"numpy _reconstruct with the shape {shape!r}")
        if not isinstance(dtype_code, bytes) or len(dtype_code) > 8:
            _refuse(filename, f"numpy _reconstruct with the type code {dtype_code!r}")
        size = math.prod(shape) * np.dtype(dtype_code.decode("latin1")).itemsize
        if size > _MAX_RECONSTRUCT_BYTES:
            _refuse(filename, f"an empty numpy array of {size} bytes is asked for")
        return multiarray._reconstruct(np.ndarray, shape, dtype_code)

    def dtype(spec, align=False, copy=True):
        if not isinstance(spec, str) or not re.fullmatch(
            r"[|<>=]?(?:[biufcSUO]\d{0,3}|[?bBhHiIlLqQefdgFDGO])", spec
        ):
            _refuse(filename, f"numpy dtype({spec!r}) is not a numeric or text type code")
        made = np.dtype(spec, align=bool(align), copy=bool(copy))
        if made.itemsize > _MAX_RECONSTRUCT_BYTES:
            _refuse(filename, f"numpy dtype({spec!r}) of {made.itemsize} bytes per item")
        return made

    def encode(text, encoding="utf-8"):  # protocol 2: bytes as _codecs.encode(str, "latin1")
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            _refuse(filename, f"_codecs.encode with the codec {encoding!r}")
        return text.encode("latin1")

    def of_bytes(cls):
        def make(data=b""):  # bytes() / bytearray(b"...") as protocol 2 writes them
            if not isinstance(data, (bytes, bytearray)):
                _refuse(filename, f"{cls.__name__}({type(data).__name__}) allocates by argument")
            return cls(data)

        return make

    def of_sequence(cls):
        def make(items=()):  # set([...]) / frozenset([...]) as protocol 2 writes them
            if not isinstance(items, (list, tuple)):
                _refuse(filename, f"{cls.__name__}({type(items).__name__})")
            return cls(items)

        return make

    allowed = {
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): encode,
        ("numpy", "ndarray"): ndarray,
        ("numpy", "dtype"): dtype,
        ("builtins", "bytes"): of_bytes(bytes),
        ("builtins", "bytearray"): of_bytes(bytearray),
        ("builtins", "set"): of_sequence(set),
        ("builtins", "frozenset"): of_sequence(frozenset),
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar  # sized by its bytes
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


class _WeightsUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain data, and refuses every other global."""

    def __init__(self, file, filename: str):
        super().__init__(file, encoding="latin1")  # Python 2 pickles (Detectron's model zoo)
        self.filename = filename
        self.allowed = _pickle_allowlist(filename)

    def find_class(self, module: str, name: str):
        # Python 2 names (__builtin__.unicode ...) -> Python 3 names, as pickle itself does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise UnsafeCheckpointError(
            f"Refusing to load {self.filename}: it references the Python global "
            f"'{module}.{name}'. A weights .pkl (detectron2 / Detectron model zoo) holds only "
            "numpy arrays and plain Python data; unpickling this global could run code. Get the "
            "weights from a trusted source, or, if you trust this file, save its arrays again as "
            "a plain dict of numpy arrays (or torch.save a state dict to a .pth)."
        )


def safe_load_pkl(filename: str) -> Any:
    """Read a weights ``.pkl`` without running code.

    Args:
        filename: a local path or a detectron2 ``PathManager`` URL.

    Returns:
        the unpickled data (dicts, numpy arrays, plain Python values).

    Raises:
        UnsafeCheckpointError: the file references a global that is not array or plain data.
    """
    with PathManager.open(filename, "rb") as f:
        return _WeightsUnpickler(f, filename).load()


class TorchTooOldError(RuntimeError):
    """This torch cannot load a checkpoint without possibly running code."""


def require_weights_only() -> None:
    """Refuse to load anything with a torch that cannot load without running code."""
    if "weights_only" not in inspect.signature(torch.load).parameters:
        raise TorchTooOldError(
            f"torch {torch.__version__} has no torch.load(weights_only=...), so a checkpoint "
            "cannot be loaded without possibly running code. Install torch >= 2.0."
        )


def _torch_safe_globals() -> List[Any]:
    """The benign globals allowed in .pth files beyond torch's defaults: numpy arrays of
    numeric dtypes (converted to tensors by detectron2) and ``collections.Counter`` (the
    milestones of torch's MultiStepLR; older torch does not allow it by default)."""
    multiarray = _numpy_module("multiarray")
    allowed = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, Counter]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles each dtype's class
    if dtypes is not None:
        for name in dir(dtypes):
            cls = getattr(dtypes, name)
            if isinstance(cls, type) and re.fullmatch(
                r"(Bool|U?Int\d+|Float\d+|Complex\d+)DType", name
            ):
                allowed.append(cls)
    return allowed


def _first_bytes(filename: str, n: int = 64) -> bytes:
    try:
        with open(filename, "rb") as f:
            return f.read(n)
    except OSError:
        return b""  # torch.load names the problem


def not_a_checkpoint(filename: str, error: BaseException, head: bytes = None) -> str:
    """One line: why ``filename`` (whose reading raised ``error``) is not a torch checkpoint,
    from its first bytes (``head``, read here when not given)."""
    head = _first_bytes(filename) if head is None else head
    if not head:
        what = "the file is empty (0 bytes)"
    elif head.startswith(b"\x80"):
        what = (
            "it is a plain Python pickle, not written by torch.save; unpickling it could run "
            "code, so it is refused"
        )
    elif head.startswith(b"PK"):
        what = "it is a zip file torch cannot read as a checkpoint (truncated or not torch's)"
    elif all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        first = (head.decode().strip().splitlines() or [""])[0][:24]
        what = f"it is a text file (it starts with {first!r})"
    else:
        detail = str(error).strip().splitlines()
        what = f"corrupt, truncated or not written by torch.save ({type(error).__name__}" + (
            f": {detail[-1][:120]})" if detail else ")"
        )
    return f"{filename} is not a torch checkpoint: {what}."


def safe_torch_load(filename: str) -> Any:
    """``torch.load(filename, map_location="cpu", weights_only=True)``, numpy arrays allowed.

    Args:
        filename: a local path.

    Returns:
        the loaded object.

    Raises:
        RuntimeError: torch is too old to load without running code.
        UnsafeCheckpointError: the file needs a global that is not tensor or plain data.
        pickle.UnpicklingError: the file is corrupt or not written by ``torch.save``.
    """
    require_weights_only()
    scope = getattr(torch.serialization, "safe_globals", None)
    context = scope(_torch_safe_globals()) if scope is not None else contextlib.nullcontext()
    head = _first_bytes(filename)
    try:
        with context, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(filename, map_location=torch.device("cpu"), weights_only=True)
    except (EOFError, IndexError, KeyError, ValueError, RuntimeError, AttributeError) as e:
        # torch's readers fail this way on what is not a checkpoint (text, a truncated zip)
        raise pickle.UnpicklingError(not_a_checkpoint(filename, e, head)) from None
    except pickle.UnpicklingError as e:
        message = str(e)
        refused = re.search(r"GLOBAL ([\w.]+)", message)
        if refused is None and "global" not in message.lower():
            raise pickle.UnpicklingError(not_a_checkpoint(filename, e, head)) from None
        what = f"the Python global '{refused.group(1)}'" if refused else "a Python global"
        raise UnsafeCheckpointError(
            f"Refusing to load {filename}: it needs {what}, which is not a tensor or plain "
            "data, so loading it could run code (torch.load(weights_only=True) refused it). "
            "detectron2 and iif-d2 checkpoints hold only tensors and plain data. If you wrote "
            "this file yourself and trust it, convert it once to a plain checkpoint: "
            "ck = torch.load(path, weights_only=False); torch.save({'model': ck['model']}, "
            "'converted.pth'); or, if the global is a harmless data type, allow it with "
            "torch.serialization.add_safe_globals([...])."
        ) from None
