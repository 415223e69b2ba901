"""Files written all at once: a temporary file beside the target, flushed, fsynced and renamed,
so a reader (or a kill) never sees half a file. The mode is a plain ``open``'s (0o666 minus the
umask), so teammates can read a run's files as they read detectron2's."""

import contextlib
import errno
import json
import logging
import os
import re
import secrets
from typing import Any, Callable

__all__ = ["WriteError", "atomic_write", "missing_reason", "same_file", "write_json_atomic"]

logger = logging.getLogger(__name__)


def _fsync_directory(directory: str) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems do not fsync directories; the data is safe
        logger.debug("fsync of directory %s failed: %s", directory, e)
    finally:
        os.close(fd)


class WriteError(OSError):
    """A file could not be written (no space left, an I/O error): one line naming the file."""

    def __str__(self) -> str:
        return self.strerror


def atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Write ``path`` all at once: ``write(f)`` fills a temporary file in the same directory,
    which is flushed, fsynced and renamed onto ``path``; then the directory is fsynced.

    Args:
        path: the final file name.
        write: called with the temporary file, opened for binary writing.

    If ``write`` (or anything after it) fails, ``path`` is as it was and the temporary file is
    removed; a failure to write (no space left, an I/O error) is a :class:`WriteError` naming
    ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    # 0o666 minus the umask: the same mode as a plain open(path, "wb")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        failed = _write_failure(e, path, directory)
        if failed is None:
            raise
        raise failed from None
    _fsync_directory(directory)


# the errors of the write itself (others, e.g. a file the writer reads, are raised as they are)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS}


def _write_failure(error: BaseException, path: str, directory: str):
    """A :class:`WriteError` naming ``path`` for a write that failed for want of space or on an I/O
    error (torch.save reports those as a ``RuntimeError`` of its zip writer, Python without the
    file name), else None (the error is raised as it is)."""
    if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
        code = error.errno
    elif isinstance(error, RuntimeError) and re.search(
        r"unexpected pos|file write failed|inline_container", str(error)
    ):
        code = errno.EIO
    else:
        return None
    with contextlib.suppress(OSError):
        free = os.statvfs(directory)
        if code == errno.EIO and free.f_bavail * free.f_frsize < 64 * 2**20:
            code = errno.ENOSPC
    reason = "no space left on the device" if code == errno.ENOSPC else os.strerror(code)
    return WriteError(code, f"cannot write {path}: {reason}")


def write_json_atomic(path: str, payload: Any) -> None:
    """Write ``payload`` as json to ``path`` at once (see :func:`atomic_write`), creating the
    folder where missing.

    Args:
        path: the json file to write.
        payload: anything :func:`json.dump` takes.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=1).encode()))


def missing_reason(path: str) -> str:
    """Why ``path``, which does not exist, is missing: "does not exist", or "is a symbolic link
    to nothing" (broken, or a loop of links), for a one-line error."""
    return "is a symbolic link to nothing" if os.path.islink(path) else "does not exist"


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file, also through symlinks, relative paths and hard links
    (False where either does not exist and their real paths differ)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False
