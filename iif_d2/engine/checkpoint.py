"""``IIFCheckpointer``: detectron2's ``DetectionCheckpointer`` made safe to load and to interrupt.

* Loading never runs code: every file is read by :mod:`iif_d2.utils.safe_load` (a restricted
  unpickler for ``.pkl``, ``torch.load(weights_only=True)`` for ``.pth``); anything else is
  refused with :class:`~iif_d2.utils.safe_load.UnsafeCheckpointError`.
* ``last_checkpoint`` may only name a file inside the save directory
  (:class:`CheckpointLocationError` otherwise: absolute paths elsewhere, ``..``, symlinks out).
* Saving is atomic: a temporary file in the same directory, flushed, fsynced, ``os.replace``d
  onto the final name, then the directory fsynced; ``last_checkpoint`` is written the same way
  after the checkpoint. A failure midway leaves the previous files as they were.
* Resuming skips a checkpoint that cannot be read (truncated, corrupt): it warns, naming the
  file, and takes the previous ``model_*.pth`` (by iteration); with none left it loads the
  fallback weights (``MODEL.WEIGHTS``) as a fresh run.
* A loaded tensor whose shape differs from the model's (a checkpoint for another number of
  classes) is an error, :class:`CheckpointShapeMismatchError`, unless the checkpointer is built
  with ``allow_class_mismatch=True``; then detectron2's skip-with-warning applies. Resuming
  (restoring the optimizer and trainer state too) from a checkpoint of another shape is always
  an error: that state cannot continue this model; a new run can start from its weights.
* ``last_checkpoint`` that is not a small UTF-8 text file (a FIFO, binary bytes) is an error at
  once, never a blocked read.

Works on detectron2 v0.6 and main (main reads ``.pth`` files through ``_torch_load`` and parses
``?matching_heuristics=True`` from the path; both are kept).
"""

import contextlib
import logging
import math
import os
import pickle
import re
import stat
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import (
    align_and_update_state_dicts,
    convert_c2_detectron_names,
)

from iif_d2.utils.io import atomic_write, missing_reason
from iif_d2.utils.safe_load import (
    TorchTooOldError,
    UnsafeCheckpointError,
    require_weights_only,
    safe_load_pkl,
    safe_torch_load,
)

__all__ = [
    "CheckpointLocationError",
    "CheckpointReadError",
    "CheckpointShapeMismatchError",
    "IIFCheckpointer",
]

logger = logging.getLogger(__name__)

# detectron2 main reads .pth files through DetectionCheckpointer._torch_load (v0.6 does not)
_UPSTREAM_TORCH_LOAD = "_torch_load" in vars(DetectionCheckpointer)
_LAST = "last_checkpoint"
_LAST_MAX_BYTES = 4096  # a checkpoint's file name, with room to spare


class CheckpointLocationError(ValueError):
    """``last_checkpoint`` names a file outside the checkpoint directory, or is not a small
    UTF-8 text file naming one."""


class CheckpointReadError(ValueError):
    """A checkpoint that cannot be loaded: missing, not a file, unreadable or corrupt, not a
    state dict of tensors, or holding NaN/inf in the model's parameters (the message names the
    file and the fix)."""


_READ_FIX = (
    "give a checkpoint train_net.py wrote (OUTPUT_DIR/model_final.pth), a detectron2 model-zoo "
    ".pkl, or a state dict saved with torch.save"
)


def _check_local_checkpoint(path: str) -> None:
    """A local checkpoint path that is a file (a pipe would block the read)."""
    if not path or not _is_local(path):
        return
    if os.path.isdir(path):
        raise CheckpointReadError(f"Checkpoint {path} is a folder; {_READ_FIX}.")
    if not os.path.exists(path):
        raise CheckpointReadError(f"Checkpoint {path} {missing_reason(path)}; {_READ_FIX}.")
    if not os.path.isfile(path):
        raise CheckpointReadError(
            f"Checkpoint {path} is not a regular file (a pipe or device?); {_READ_FIX}."
        )


def _check_weights(weights: Any, filename: str, parameters=None) -> None:
    """The model state of a checkpoint: a dict of tensors or numpy arrays; the model's
    ``parameters`` (names; all when None) finite (buffers may hold NaN on purpose: FASA's
    losses of classes not yet measured)."""
    if not isinstance(weights, dict):
        raise CheckpointReadError(
            f"Checkpoint {filename} holds a {type(weights).__name__} as its model, not a state "
            f"dict; {_READ_FIX}."
        )
    bad = []
    for name, value in weights.items():
        if isinstance(value, torch.Tensor):
            real = value.is_floating_point() or value.is_complex()
            finite = not real or bool(torch.isfinite(value).all())
        elif isinstance(value, np.ndarray):
            real = value.dtype.kind in "fc"
            finite = not real or bool(np.isfinite(value).all())
        else:
            raise CheckpointReadError(
                f"Checkpoint {filename}: weight {name!r} is a {type(value).__name__}, not a "
                f"tensor; {_READ_FIX}."
            )
        if parameters is not None and name in parameters and not real:
            raise CheckpointReadError(
                f"Checkpoint {filename}: the parameter {name!r} holds integers ({value.dtype}), "
                f"not floating-point weights: the file was converted wrongly; {_READ_FIX}."
            )
        if not finite and (parameters is None or name in parameters):
            bad.append(name)
    if bad:
        raise CheckpointReadError(
            f"Checkpoint {filename} holds NaN or inf in {len(bad)} weight tensor(s) (e.g. "
            f"{bad[0]}): the run that wrote it diverged. Take an earlier checkpoint (or lower "
            "SOLVER.BASE_LR and train again)."
        )


class UntrainedWeightsError(ValueError):
    """A file loaded as a trained model leaves some of the model's parameters at their
    initialisation: it is not a trained model of this config."""


class CheckpointShapeMismatchError(ValueError):
    """Checkpoint tensors whose shapes differ from the model's."""


# ---------------------------------------------------------------------------------------------
# restricted loading


def _signature(path: str) -> Tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _is_local(path: str) -> bool:
    return "://" not in path


def _as_checkpoint(loaded: Any, filename: str) -> Dict[str, Any]:
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{filename} holds a {type(loaded).__name__}, not a checkpoint dict or a state dict."
        )
    return loaded if "model" in loaded else {"model": loaded}


# ---------------------------------------------------------------------------------------------
# the checkpointer


class IIFCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with safe loading, atomic saving, resuming past corrupt
    checkpoints and shape-mismatch errors (see the module docstring).

    Args:
        model: the model.
        save_dir: the directory checkpoints are saved to and resumed from.
        save_to_disk: whether :meth:`save` writes; by default only on the main process.
        allow_class_mismatch: skip (with detectron2's warning) loaded tensors whose shape
            differs from the model's, e.g. to fine-tune from a checkpoint trained on another
            class set; by default such tensors are an error.
        file_prefix: the prefix of the periodic checkpoints (``<prefix>_<iter>.pth``,
            ``<prefix>_final.pth``) that resuming falls back to.
        checkpointables: objects with ``state_dict``/``load_state_dict`` saved alongside.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        allow_class_mismatch: bool = False,
        file_prefix: str = "model",
        **checkpointables,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_class_mismatch = bool(allow_class_mismatch)
        self.file_prefix = file_prefix
        self._good: Dict[str, Tuple[int, ...]] = {}  # realpath -> signature of a readable file
        self._pending: Optional[Tuple[str, Tuple[int, ...], Dict[str, Any]]] = None
        self._loading: Optional[str] = None
        self._restoring: List[str] = []  # the checkpointables the current load restores
        self.last_incompatible = None  # the last load's missing / unexpected keys
        self._held_listings: Optional[List[Any]] = None  # see load_trained

    @classmethod
    def from_checkpointer(cls, other, **kwargs) -> "IIFCheckpointer":
        """An ``IIFCheckpointer`` for the model, directory and checkpointables of ``other``
        (e.g. the ``DetectionCheckpointer`` a ``DefaultTrainer`` built).

        Args:
            other: an fvcore/detectron2 ``Checkpointer``.
            kwargs: further arguments of :class:`IIFCheckpointer`.
        """
        kwargs.setdefault("save_to_disk", other.save_to_disk)
        return cls(other.model, other.save_dir, **kwargs, **other.checkpointables)

    # -- saving ---------------------------------------------------------------------------

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then ``last_checkpoint``.

        Args:
            name: the file name without ``.pth``.
            kwargs: extra data to save (e.g. ``iteration``).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        if not _is_local(self.save_dir):
            return super().save(name, **kwargs)
        basename = f"{name}.pth"
        if os.path.basename(basename) != basename or basename.startswith("."):
            raise ValueError(f"Checkpoint name {name!r} must be a plain file name.")
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_write(path, lambda f: torch.save(data, f))
        self._good[os.path.realpath(path)] = _signature(path)  # just written: known readable
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` (atomically) naming ``last_filename_basename``."""
        if not _is_local(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        data = last_filename_basename.encode("utf-8")
        atomic_write(os.path.join(self.save_dir, _LAST), lambda f: f.write(data))

    # -- reading files ----------------------------------------------------------------------

    def _torch_load(self, f: str) -> Any:
        return safe_torch_load(f)

    def _read_pkl(self, filename: str) -> Dict[str, Any]:
        data = safe_load_pkl(filename)
        if not isinstance(data, dict):
            raise ValueError(f"{filename} holds a {type(data).__name__}, not a dict of weights.")
        if "model" in data and "__author__" in data:  # detectron2 model zoo
            self.logger.info("Reading a file from '%s'", data["__author__"])
            return data
        weights = data.get("blobs", data)  # Detectron (Caffe2): detection models nest "blobs"
        weights = {k: v for k, v in weights.items() if not k.endswith("_momentum")}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}

    def _read_pyth(self, filename: str) -> Dict[str, Any]:
        data = safe_torch_load(filename)
        if not isinstance(data, dict) or "model_state" not in data:
            raise ValueError(f"Cannot load {filename}: pycls checkpoints hold 'model_state'.")
        state = {k: v for k, v in data["model_state"].items() if "num_batches_tracked" not in k}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}

    def _read(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            return self._read_pkl(filename)
        if filename.endswith(".pyth"):
            return self._read_pyth(filename)
        return _as_checkpoint(self._torch_load(filename), filename)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == os.path.realpath(filename):
            with contextlib.suppress(OSError):
                if _signature(filename) == pending[1]:
                    return pending[2]  # read while looking for a checkpoint to resume from
        if _UPSTREAM_TORCH_LOAD and not filename.endswith((".pkl", ".pyth")):
            return super()._load_file(filename)  # main: ?matching_heuristics=True, _torch_load
        return self._read(filename)

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        """detectron2's ``load``, through the safe readers and the shape check."""
        self._loading, self.last_incompatible = path, None
        wanted = args[0] if args else kwargs.get("checkpointables")
        names = list(self.checkpointables) if wanted is None else list(wanted)
        self._restoring = [n for n in names if n in self.checkpointables]
        try:
            if path:
                _check_local_checkpoint(path)
            return super().load(path, *args, **kwargs)
        except (
            CheckpointReadError,
            CheckpointShapeMismatchError,
            UnsafeCheckpointError,
            TorchTooOldError,
        ):
            raise  # already named: not wrapped below
        except (
            OSError,
            EOFError,
            AssertionError,
            RuntimeError,
            ValueError,
            TypeError,
            AttributeError,
            KeyError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
        ) as e:
            message = " ".join(str(e).split())[:300] or type(e).__name__
            if isinstance(e, pickle.UnpicklingError) and message.startswith(f"{path} "):
                raise CheckpointReadError(f"{message.rstrip('.')}; {_READ_FIX}.") from None  # named
            raise CheckpointReadError(
                f"Cannot load checkpoint {path} ({type(e).__name__}: {message}); {_READ_FIX}."
            ) from None
        finally:
            # detectron2 main's load sets _parsed_url_during_load and asserts it unset on the
            # next call; a load that raised midway (a refused checkpoint) must not leave it set
            if getattr(self, "_parsed_url_during_load", None) is not None:
                self._parsed_url_during_load = None
            self._loading, self._restoring = None, []

    # -- resuming -------------------------------------------------------------------------

    def _last_checkpoint_name(self) -> Optional[str]:
        """The name in ``last_checkpoint`` (None without one), checked to stay inside."""
        file = os.path.join(self.save_dir, _LAST)
        try:
            st = os.stat(file)
        except FileNotFoundError:
            return None
        fix = f"Delete {file}, or write into it the name of a checkpoint in that folder."
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block the read
            raise CheckpointLocationError(f"{file} is not a regular file. {fix}")
        if st.st_size > _LAST_MAX_BYTES:
            raise CheckpointLocationError(
                f"{file} holds {st.st_size} bytes, not the name of a checkpoint. {fix}"
            )
        try:
            with open(file, "rb") as f:
                name = f.read(_LAST_MAX_BYTES + 1).decode("utf-8").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise CheckpointLocationError(
                f"{file} is not UTF-8 text naming a checkpoint. {fix}"
            ) from None
        if "\x00" in name or "\n" in name:
            raise CheckpointLocationError(f"{file} does not hold one checkpoint name. {fix}")
        if name:
            root = os.path.realpath(self.save_dir)
            target = os.path.realpath(os.path.join(self.save_dir, name))
            if target == root or os.path.commonpath([root, target]) != root:
                raise CheckpointLocationError(
                    f"{file} names {name!r}, which resolves to {target}, outside the checkpoint "
                    f"directory {root}. last_checkpoint must name a checkpoint inside that "
                    "directory (save() writes its basename); refusing to follow it. Fix or "
                    f"delete {file}."
                )
        return name

    def _iteration(self, basename: str) -> Optional[float]:
        if basename == f"{self.file_prefix}_final.pth":
            return math.inf
        found = re.fullmatch(rf"{re.escape(self.file_prefix)}_(\d+)\.pth", basename)
        return int(found.group(1)) if found else None

    def _candidates(self, name: str) -> List[str]:
        """The named checkpoint, then the older periodic ones, newest first."""
        newest = self._iteration(name) if name else None
        root = os.path.realpath(self.save_dir)
        older = []
        for basename in os.listdir(self.save_dir):
            it = self._iteration(basename)
            if it is None or basename == name or (newest is not None and it >= newest):
                continue
            path = os.path.join(self.save_dir, basename)
            if os.path.commonpath([root, os.path.realpath(path)]) != root:
                logger.warning("Ignoring %s: it links outside %s.", path, root)
            elif os.path.isfile(path):
                older.append((it, path))
        named = [os.path.join(self.save_dir, name)] if name else []
        return named + [path for _, path in sorted(older, reverse=True)]

    def _readable(self, path: str, keep: bool) -> bool:
        key = os.path.realpath(path)
        try:
            signature = _signature(path)
        except OSError:
            logger.warning("Checkpoint %s does not exist; trying the previous one.", path)
            return False
        if not keep and self._good.get(key) == signature:
            return True
        require_weights_only()  # an old torch is not a corrupt file: fail, do not fall back
        try:
            payload = self._read(path)
        except UnsafeCheckpointError:
            raise  # refused, not corrupt: an older checkpoint would not be safer
        except Exception as e:  # any other failure to read the file: it is unusable
            logger.warning(
                "Cannot load checkpoint %s (%s: %s); trying the previous one.",
                path,
                type(e).__name__,
                e,
            )
            return False
        self._good[key] = signature
        if keep:
            self._pending = (key, signature, payload)
        return True

    def _resumable(self, keep: bool = False) -> str:
        if not self.save_dir:
            return ""
        name = self._last_checkpoint_name()
        if name is None:
            return ""
        if not name:
            logger.warning("%s is empty.", os.path.join(self.save_dir, _LAST))
        for path in self._candidates(name):
            if self._readable(path, keep):
                return path
        return ""

    def has_checkpoint(self) -> bool:
        """Whether ``save_dir`` holds a readable checkpoint to resume from."""
        if not _is_local(self.save_dir):
            return super().has_checkpoint()
        return bool(self._resumable())

    def get_checkpoint_file(self) -> str:
        """The newest readable checkpoint in ``save_dir`` (``""`` if none): the one named by
        ``last_checkpoint``, or else the previous periodic ones, newest first."""
        if not _is_local(self.save_dir):
            return super().get_checkpoint_file()
        return self._resumable()

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from the newest readable checkpoint in ``save_dir`` (all checkpointables), or,
        without one or with ``resume=False``, load the model from ``path``.

        Args:
            path: the weights of a fresh run (``MODEL.WEIGHTS``).
            resume: whether to resume.

        Returns:
            the checkpoint's extra data (e.g. ``iteration``), as ``load``.
        """
        if resume and _is_local(self.save_dir) and self.save_dir:
            found = self._resumable(keep=True)
            if found:
                return self.load(found)
            if self._last_checkpoint_name() is not None:
                logger.warning(
                    "No readable checkpoint in %s; starting from %s.",
                    self.save_dir,
                    path or "scratch",
                )
            return self.load(path, checkpointables=[])
        return super().resume_or_load(path, resume=resume)

    # -- shapes -------------------------------------------------------------------------

    def _align_by_name(self, checkpoint: Dict[str, Any]) -> List[Tuple[str, tuple, tuple]]:
        """detectron2's name-matching heuristics, done here so that the tensors it would skip
        for their shape are known. Returns those (model key, checkpoint shape, model shape)."""
        state = checkpoint["model"]
        self._convert_ndarray_to_tensor(state)
        if checkpoint.get("__author__") == "Caffe2":
            state, _ = convert_c2_detectron_names(state)
        model_state = self.model.state_dict()
        mismatched = []
        for key, value in model_state.items():
            matches = [k for k in state if key == k or key.endswith("." + k)]
            if matches:
                best = max(matches, key=len)
                if tuple(state[best].shape) != tuple(value.shape):
                    mismatched.append((key, tuple(state[best].shape), tuple(value.shape)))
        checkpoint["model"] = align_and_update_state_dicts(model_state, state, c2_conversion=False)
        checkpoint["matching_heuristics"] = False
        return mismatched

    def _mismatched(self, state: Dict[str, Any]) -> List[Tuple[str, tuple, tuple]]:
        model_state = self.model.state_dict()
        strip = bool(state) and all(k.startswith("module.") for k in state)  # as fvcore
        mismatched = []
        for key, value in state.items():
            key = key[len("module.") :] if strip else key
            target = model_state.get(key)
            if target is None or not hasattr(value, "shape"):
                continue
            if isinstance(target, torch.nn.parameter.UninitializedParameter):
                continue
            if tuple(value.shape) != tuple(target.shape) and not self._is_observer(key):
                mismatched.append((key, tuple(value.shape), tuple(target.shape)))
        return mismatched

    def _is_observer(self, key: str) -> bool:
        """Quantization observers' buffers change shape by design; fvcore lets them load."""
        try:
            from torch.ao.quantization import FakeQuantizeBase, ObserverBase
        except ImportError:
            return False
        owner = self.model
        with contextlib.suppress(AttributeError):
            owner = self.model.get_submodule(key.rpartition(".")[0])
        return isinstance(owner, (ObserverBase, FakeQuantizeBase))

    def _load_model(self, checkpoint: Dict[str, Any]):
        names = {n for n, _ in self.model.named_parameters()}
        names |= {n[len("module.") :] for n in names if n.startswith("module.")}
        _check_weights(checkpoint.get("model"), self._loading, names)
        mismatched = []
        if checkpoint.get("matching_heuristics", False):
            mismatched = self._align_by_name(checkpoint)
        mismatched += self._mismatched(checkpoint["model"])
        restoring = [n for n in self._restoring if n in checkpoint]
        if mismatched and restoring:  # allowed or not: the optimizer cannot continue it
            k, c, m = mismatched[0]
            raise CheckpointShapeMismatchError(
                f"Checkpoint {self._loading} is of another model ({k}: checkpoint {c}, model "
                f"{m}; {len(mismatched)} tensor(s) differ), so its {', '.join(restoring)} "
                "state cannot continue this run. Start a new run from it instead: another "
                f"OUTPUT_DIR, without --resume, MODEL.WEIGHTS {self._loading} and "
                "MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH True (the differing tensors start from "
                "their initialisation)."
            )
        if mismatched and not self.allow_class_mismatch:
            lines = "\n".join(f"  {k}: checkpoint {c}, model {m}" for k, c, m in mismatched)
            raise CheckpointShapeMismatchError(
                f"Checkpoint {self._loading} has tensors whose shapes differ from the model's:\n"
                f"{lines}\nThis usually means it was trained for another number of classes "
                "(MODEL.ROI_HEADS.NUM_CLASSES). Load a checkpoint for this model's classes, or, "
                "to fine-tune from it with these tensors left at their initialisation, set "
                "MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH True (IIFCheckpointer(..., "
                "allow_class_mismatch=True))."
            )
        incompatible = super()._load_model(checkpoint)
        self.last_incompatible = incompatible
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        # fvcore's hook: a listing of many lines, held back by load_trained
        if self._held_listings is not None:
            self._held_listings.append(incompatible)
        else:
            super()._log_incompatible_keys(incompatible)

    def load_trained(self, path: str) -> Dict[str, Any]:
        """The model's weights from ``path`` (no optimizer or scheduler state), which must
        cover every parameter: the model to evaluate or predict with. detectron2's listing of
        missing and unused keys is logged only once the file is known to be a trained model of
        this config; otherwise the error says it in one line.

        Returns:
            the loaded file.

        Raises:
            UntrainedWeightsError: ``path`` leaves parameters at their initialisation.
        """
        self._held_listings = []
        try:
            checkpoint = self.load(path, checkpointables=[])
        finally:
            held, self._held_listings = self._held_listings, None
        untrained = self.untrained_parameters()
        if untrained:
            raise UntrainedWeightsError(
                f"{path} holds no weights for {len(untrained)} of the model's parameters (e.g. "
                f"{untrained[0]}): it is not a trained model of this config"
            )
        for incompatible in held:
            super()._log_incompatible_keys(incompatible)
        return checkpoint

    def untrained_parameters(self) -> List[str]:
        """The model's parameters the last :meth:`load` left at their initialisation (missing
        from the checkpoint, or skipped for their shape): [] when every parameter was loaded,
        all of them when nothing was."""
        names = [n for n, _ in self.model.named_parameters()]
        incompatible = self.last_incompatible
        if incompatible is None:
            return names
        skipped = set(getattr(incompatible, "missing_keys", []))
        skipped |= {k for k, *_ in getattr(incompatible, "incorrect_shapes", [])}
        return [n for n in names if n in skipped]
