"""Multi-process launch that also works on CPU with detectron2 v0.6.

For GPU training this is detectron2's ``launch``. For CPU training (``backend="gloo"``, or
"auto" on a machine without CUDA) the workers are started here, with the gloo backend, on both
detectron2 versions: v0.6's ``launch`` asserts CUDA and hard-codes NCCL.
"""

import logging
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["launch"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)


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
    timeout=DEFAULT_TIMEOUT,
    backend: str = "auto",
):
    """Same arguments as :func:`detectron2.engine.launch`, plus ``backend``.

    Args:
        num_gpus_per_machine: processes per machine (CPU processes with gloo).
        backend: "gloo" for CPU processes, "nccl" for detectron2's GPU launch, "auto" for nccl
            when CUDA is available, else gloo. train_net.py picks gloo when MODEL.DEVICE is cpu.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"launch backend {backend!r} is not one of 'auto', 'gloo', 'nccl'.")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1 or backend == "nccl":
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
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _cpu_worker(local_rank, main_func, world_size, per_machine, machine_rank, url, args, timeout):
    dist.init_process_group(
        backend="gloo",
        init_method=url,
        world_size=world_size,
        rank=machine_rank * per_machine + local_rank,
        timeout=timeout,
    )
    if hasattr(comm, "create_local_process_group"):  # detectron2 main
        comm.create_local_process_group(per_machine)
    else:  # detectron2 v0.6
        for i in range(world_size // per_machine):
            group = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)
