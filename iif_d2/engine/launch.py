"""Multi-process launch that also works on CPU with detectron2 v0.6.

For GPU training this is detectron2's ``launch``. For CPU training (``backend="gloo"``, or
"auto" on a machine without CUDA) the workers are started here, with the gloo backend, on both
detectron2 versions: v0.6's ``launch`` asserts CUDA and hard-codes NCCL.

The CPU workers

* exit when the launcher dies (``kill -9`` included): on Linux the kernel sends them SIGTERM
  (``prctl(PR_SET_PDEATHSIG)``); everywhere a thread checks every second that their parent is
  still the launcher;
* wait at most ``timeout`` in a collective call (default :data:`TIMEOUT_ENV` seconds, else 30
  minutes). When it expires, the rank raises :class:`CollectiveTimeoutError` naming itself and
  what to check (another rank that crashed or stalled earlier).
"""

import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

__all__ = ["CollectiveTimeoutError", "close_process_groups", "collective_timeout", "launch"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)
TIMEOUT_ENV = "IIF_D2_DIST_TIMEOUT"  # seconds a rank waits in a collective call
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 1.0


class CollectiveTimeoutError(RuntimeError):
    """A rank waited longer than the collective timeout for the others."""


def collective_timeout(timeout=None) -> timedelta:
    """The collective timeout: ``timeout`` (a timedelta or seconds), else the environment
    variable ``IIF_D2_DIST_TIMEOUT`` (seconds), else 30 minutes.

    Raises:
        ValueError: a value that is not a positive number of seconds.
    """
    where = "launch(timeout=...)"
    if timeout is None:
        timeout, where = os.environ.get(TIMEOUT_ENV), TIMEOUT_ENV
        if timeout is None:
            return DEFAULT_TIMEOUT
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    else:
        try:
            seconds = float(timeout)
        except (TypeError, ValueError):
            seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{where} = {timeout!r}: the collective timeout is seconds > 0.")
    return timedelta(seconds=seconds)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url=None,
    args=(),
    timeout=None,
    backend: str = "auto",
):
    """Same arguments as :func:`detectron2.engine.launch`, plus ``backend``.

    Args:
        num_gpus_per_machine: processes per machine (CPU processes with gloo).
        timeout: how long a rank waits in a collective call (a timedelta or seconds); None:
            :func:`collective_timeout`'s default (``IIF_D2_DIST_TIMEOUT``, else 30 minutes).
        backend: "gloo" for CPU processes, "nccl" for detectron2's GPU launch, "auto" for nccl
            when CUDA is available, else gloo. train_net.py picks gloo when MODEL.DEVICE is cpu.
    """
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"launch: {num_gpus_per_machine} process(es) per machine on {num_machines} "
            "machine(s): give at least one of each."
        )
    if not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"launch: machine_rank {machine_rank} with {num_machines} machine(s): it is 0 to "
            f"{num_machines - 1} (otherwise the other machines wait for it forever)."
        )
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"launch backend {backend!r} is not one of 'auto', 'gloo', 'nccl'.")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = collective_timeout(timeout)
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1 or backend == "nccl":
        from detectron2.engine import launch as d2_launch  # imported here: CPU workers skip it

        return d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url must name the main machine in multi-machine jobs.")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info("Launching %d CPU processes with the gloo backend.", world_size)
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            args,
            timeout,
            os.getpid(),
        ),
        daemon=False,
    )


def _exit_with_parent(parent_pid: int):
    """End this process when ``parent_pid`` (the launcher) is gone."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            logger.warning("prctl(PR_SET_PDEATHSIG) unavailable; polling the launcher's pid.")

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        logger.error("The launcher (pid %d) is gone: worker %d exits.", parent_pid, os.getpid())
        os._exit(1)

    if os.getppid() != parent_pid:  # died before the death signal was set
        os._exit(1)
    threading.Thread(target=watch, name="iif_d2-launcher-watch", daemon=True).start()


def _is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return "timed out" in text or "timeout" in text


def _timeout_error(rank: int, world_size: int, timeout: timedelta, error, during: str):
    return CollectiveTimeoutError(
        f"Rank {rank} of {world_size} waited more than {timeout} ({TIMEOUT_ENV}) {during}: "
        "another rank did not get there. Check the other ranks' logs for an earlier error or "
        "a rank stuck (data loading, evaluation on the main rank only, a dead machine), and "
        f"that all ranks run the same code; raise {TIMEOUT_ENV} (seconds) if one step is "
        f"legitimately longer. Backend error: {str(error).splitlines()[0] if str(error) else error}"
    )


def _cpu_worker(
    local_rank, main_func, world_size, per_machine, machine_rank, url, args, timeout, parent_pid
):
    _exit_with_parent(parent_pid)
    rank = machine_rank * per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo", init_method=url, world_size=world_size, rank=rank, timeout=timeout
        )
    except RuntimeError as e:
        if _is_timeout(e):
            during = f"to meet the other ranks at {url}"
            raise _timeout_error(rank, world_size, timeout, e, during) from e
        raise
    try:
        _local_group(world_size, per_machine, machine_rank)
        comm.synchronize()
        main_func(*args)
        # Every rank done before any closes its connections: a rank that exits while another
        # still talks to it, or that leaves gloo's threads to the interpreter's teardown,
        # can abort ("terminate called without an active exception").
        comm.synchronize()
    except RuntimeError as e:
        if _is_timeout(e) and not isinstance(e, CollectiveTimeoutError):
            raise _timeout_error(rank, world_size, timeout, e, "in a collective call") from e
        raise
    finally:
        close_process_groups()


def close_process_groups():
    """Destroy this process's groups now, and with them gloo's threads.

    ``dist.destroy_process_group`` alone leaves a group alive while Python still refers to it:
    detectron2's cached ``comm._get_global_gloo_group()`` (the default group under gloo) and
    ``comm._LOCAL_PROCESS_GROUP`` do, so its threads would run on into the interpreter's
    teardown, where a rank can abort ("terminate called without an active exception")."""
    cached = getattr(comm, "_get_global_gloo_group", None)
    if hasattr(cached, "cache_clear"):
        cached.cache_clear()
    comm._LOCAL_PROCESS_GROUP = None
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()  # frees the groups (and joins their threads) here, on this thread


def _local_group(world_size: int, per_machine: int, machine_rank: int):
    if hasattr(comm, "create_local_process_group"):  # detectron2 main
        comm.create_local_process_group(per_machine)
    else:  # detectron2 v0.6
        for i in range(world_size // per_machine):
            group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
