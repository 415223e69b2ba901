"""Argument checks shared by every command (``python -m iif_d2.cli``, ``python -m
iif_d2.lvis_eval``, ``python -m iif_d2.lvis_eval.fp_analysis``, ``tools/*.py``): input files that
exist and are files, output paths that can be written and are none of the inputs, counts >= 1,
a device that exists; usage errors on one line, exit status 2.

Every check raises :class:`UsageError` (a ValueError) with one line naming the option, the
problem and the fix; the commands print ``error: <message>`` and exit 2. Ctrl-C prints
``interrupted`` and exits 130 (:func:`run_interruptible`, :func:`interrupt_exits_quietly`).
Nothing here imports torch or detectron2 (the evaluation commands stay light), except
:func:`check_device`, which imports torch when it is called.
"""

import argparse
import math
import os
import signal
import stat
import sys

from iif_d2.utils.io import missing_reason, same_file, write_json_atomic

__all__ = [
    "OneLineParser",
    "UsageError",
    "check_device",
    "check_input_file",
    "check_output_file",
    "check_output_folder",
    "finite_float",
    "interrupt_exits_quietly",
    "non_negative_int",
    "one_line",
    "positive_float",
    "positive_int",
    "run_interruptible",
    "unit_float",
    "write_json_output",
]


_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as a shell's


class UsageError(ValueError):
    """A bad argument or input path: printed as one line, exit status 2."""


def check_not_blank(value, option: str, what: str) -> None:
    """Refuse an empty (or blank) path or name given as ``option``: an empty path would mean
    the current folder. None (not given) passes.

    Raises:
        UsageError: one line naming the option and ``what`` to give instead.
    """
    if value is not None and not value.strip():
        problem = "is empty" if not value else f"{value!r} is blank"
        raise UsageError(f"{option} {problem}; give {what}.")


def one_line(error) -> str:
    """An error's message on one line (a multi-line message's lines joined with "; "; a
    KeyError's text without its quotes)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def unit_float(text: str) -> float:
    """argparse type: a number in [0, 1] (a score, a fraction)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must lie in [0, 1]")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line on stderr (exit 2, as argparse)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def check_input_file(path: str, option: str, what: str = "file") -> None:
    """Refuse an input that does not exist, is a directory, or cannot be read.

    Args:
        path: the path given.
        option: the option that gave it (``--weights``), for the message.
        what: what it should be (``a checkpoint``), for the fix.

    Raises:
        UsageError: one line naming the option, the path, the problem and the fix.
    """
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a directory; give {what} (a file).")
    if not os.path.exists(path):
        raise UsageError(f"{option} {path} {missing_reason(path)}; give {what}.")
    if not os.path.isfile(path):
        raise UsageError(f"{option} {path} is not a regular file (a pipe or device?); give {what}.")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{option} {path} is not readable (permissions); give {what}.")


def _writable_folder(folder: str, option: str, path: str) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: {folder} is a file, not a folder; give another path.")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: folder {folder} does not exist; create it first.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(
            f"{option} {path}: cannot write in folder {folder} (permission denied); choose "
            "another path."
        )


def check_output_file(path: str, option: str, inputs=(), example: str = "out.json") -> None:
    """Refuse, before anything is computed or written, an output file that is a directory, in
    a missing or unwritable folder, an existing file that cannot be replaced, or the same file
    as one of ``inputs`` (the same path after resolving links, or a hard link).

    Raises:
        UsageError: one line naming the option, the problem and the fix.
    """
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a directory; give a file name, e.g. {example}.")
    if path.endswith(("/", os.sep)):  # a folder's name, not a file's: writing it would fail
        name = path.rstrip("/" + os.sep)
        if os.path.isfile(name) or os.path.splitext(name)[1]:  # w.json/: a file name meant
            raise UsageError(f"{option} {path} ends in '/': give a file name ({name}, no '/').")
        raise UsageError(
            f"{option} {path} ends in '/': give a file name; folder {name} does not exist "
            f"(create it first, then give e.g. {path}{example})."
        )
    _writable_folder(os.path.dirname(os.path.abspath(path)), option, path)
    if os.path.exists(path) and not os.path.isfile(path):
        raise UsageError(f"{option} {path} is not a regular file; give a file name.")
    if os.path.isfile(path) and not os.stat(path).st_mode & _WRITE_BITS:
        raise UsageError(
            f"{option} {path} is a read-only file; it is not replaced: give another file name "
            "(or make it writable)."
        )
    for name in inputs:
        if name and "://" not in name and same_file(path, name):
            raise UsageError(
                f"{option} {path} is the input file {name}; it would be overwritten: give "
                "another file name."
            )


def check_output_folder(path: str, option: str, inputs=(), create: bool = False) -> None:
    """Refuse an output folder that is a file, that is one of the input folders ``inputs``,
    that is not writable, or (where it is still to be made) whose nearest existing parent is
    a file or not writable; with ``create``, make it (a folder the command makes anyway: a
    file system that refuses it, such as /proc, is refused here).

    Raises:
        UsageError: one line naming the option, the problem and the fix.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path} is a file; give a folder (created if missing).")
    for name in inputs:
        if name and same_file(path, name):
            raise UsageError(
                f"{option} {path} is the input folder {name}: files of the same name would be "
                "replaced; give another folder."
            )
    folder = os.path.abspath(path)
    while not os.path.exists(folder):  # the folders still to be made: the nearest existing one
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: {folder} is a file, not a folder; give another path.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {folder} is not writable; choose another folder.")
    if create:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UsageError(
                f"{option} {path} cannot be made ({e.strerror or e}); choose another folder."
            ) from None


def run_interruptible(main, argv=None) -> int:
    """``main(argv)``, a command's body; Ctrl-C (KeyboardInterrupt) prints one line,
    ``interrupted``, on stderr instead of a traceback and gives exit status 130 (128 + SIGINT).

    Returns:
        the exit status.
    """
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def _exit_interrupted(signum, frame):
    print("interrupted", file=sys.stderr)
    raise SystemExit(INTERRUPTED)


def interrupt_exits_quietly() -> None:
    """From here on, Ctrl-C ends the process with one line, ``interrupted``, and exit status
    130, also while a command's imports run (detectron2's take seconds), before
    :func:`run_interruptible` can catch it. For a command's ``__main__`` only; nothing where
    SIGINT is not Python's default handler (ignored in a background job, or another's)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_interrupted)


def check_device(device, option: str = "--device") -> str:
    """The device to run on: ``device`` (cpu, cuda, cuda:N), or cuda when there is a GPU and
    cpu otherwise when None; ``option`` names the setting in the messages.

    Raises:
        UsageError: an unknown device, or cuda without a usable GPU.
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{option} {device!r} is not a device; use cpu or cuda.") from None
    if parsed.type == "cpu":
        return device
    if parsed.type != "cuda":
        raise UsageError(f"{option} {device!r}: only cpu and cuda are supported.")
    if not torch.cuda.is_available():
        raise UsageError(f"{option} {device}: no CUDA GPU is available here; use {option} cpu.")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UsageError(
            f"{option} {device}: this machine has {torch.cuda.device_count()} GPU(s) "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})."
        )
    return device


def write_json_output(path: str, payload, option: str = "--json-out") -> bool:
    """Write ``payload`` as json to ``path`` atomically (a command's output file, checked
    before with :func:`check_output_file`); on failure print the command's one-line error.

    Returns:
        whether it was written (else the command exits 2).
    """
    try:
        write_json_atomic(path, payload)
    except OSError as e:
        print(
            f"error: {option} {path}: cannot write ({e.strerror or e}); choose another path.",
            file=sys.stderr,
        )
        return False
    return True
