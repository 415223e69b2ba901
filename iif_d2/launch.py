"""Multi-process launch that also works on CPU with detectron2 v0.6.

On GPUs this is detectron2's ``launch``. Without CUDA, v0.6's ``launch`` asserts CUDA and
hard-codes NCCL, so the workers are started here instead, with the gloo backend, on both
detectron2 versions (one code path for CPU).
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
):
    """Same arguments as :func:`detectron2.engine.launch`; ``num_gpus_per_machine`` is the
    number of processes per machine (CPU processes when there is no GPU).
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1 or torch.cuda.is_available():
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
    logger.info("No CUDA: launching %d CPU processes with the gloo backend.", world_size)
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
