"""One writer per OUTPUT_DIR: a lock file that a second run on the same folder is refused by.

Two runs writing one OUTPUT_DIR overwrite each other's checkpoints, ``last_checkpoint``, class
statistics and metrics without an error. :class:`OutputDirLock` takes an exclusive, non-blocking
``fcntl.flock`` on ``OUTPUT_DIR/.iif_d2.lock`` and writes the holder's pid, host and start time
into it. The kernel releases the lock when the holding process exits, however it exits (a
crash or ``kill -9`` leaves no stale lock to delete by hand); the file itself stays.

Use it on the main rank only (the other ranks do not write the run's files)::

    lock = acquire_output_dir(cfg.OUTPUT_DIR)   # held until the process exits
    with OutputDirLock(cfg.OUTPUT_DIR): ...     # or for a block

``flock`` is per machine on most network file systems (NFS may not share it between hosts), and
is not available on Windows, where the lock is skipped with a warning.
"""

import json
import logging
import os
import socket
import time
from typing import Dict, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["LOCK_FILENAME", "OutputDirInUseError", "OutputDirLock", "acquire_output_dir"]

logger = logging.getLogger(__name__)
LOCK_FILENAME = ".iif_d2.lock"
_HELD: Dict[str, "OutputDirLock"] = {}  # realpath -> this process's lock (acquire_output_dir)


class OutputDirInUseError(RuntimeError):
    """Another process holds the OUTPUT_DIR's lock."""


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            info = json.load(f)
        return (
            f"pid {info['pid']} on host {info['host']} (started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is still starting (no pid written yet)"


class OutputDirLock:
    """Exclusive lock of one OUTPUT_DIR (created if missing), for this process.

    Args:
        output_dir: the run's folder; the lock file is ``output_dir/.iif_d2.lock``.

    Raises:
        OutputDirInUseError (on :meth:`acquire`): another process holds the lock; the message
            names its pid and host.
    """

    def __init__(self, output_dir: str):
        if not output_dir:
            raise ValueError("OutputDirLock needs a folder (OUTPUT_DIR is empty).")
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_FILENAME)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "OutputDirLock":
        """Take the lock (non-blocking) and write this process's pid and host into the file."""
        if self.held:
            return self
        if fcntl is None:
            logger.warning("No fcntl on this platform: %s is not locked.", self.output_dir)
            return self
        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputDirInUseError(
                f"OUTPUT_DIR {self.output_dir} is in use by {_holder(self.path)}: two runs "
                "would overwrite each other's checkpoints and statistics. Wait for that run to "
                "end (or stop it), or set another OUTPUT_DIR."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self):
        """Release the lock (the file stays; its content is cleared)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def acquire_output_dir(output_dir: str) -> OutputDirLock:
    """Lock ``output_dir`` for the rest of this process (idempotent within the process).

    Args:
        output_dir: the run's folder.

    Returns:
        The held lock (:meth:`OutputDirLock.release` ends it early).

    Raises:
        OutputDirInUseError: another process holds it.
    """
    key = os.path.realpath(output_dir)
    lock = _HELD.get(key)
    if lock is None or not lock.held:
        lock = _HELD[key] = OutputDirLock(output_dir).acquire()
    return lock
