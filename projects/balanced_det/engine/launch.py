"""Launching data-parallel training on GPUs (NCCL, detectron2's ``launch``) or on CPUs (gloo).

detectron2 v0.6's ``launch`` requires CUDA; :func:`launch` falls back to ``num_processes``
CPU processes with the gloo backend when CUDA is not available (or ``backend="gloo"``), and
:func:`create_ddp_model` wraps CPU models without ``device_ids``.
"""
from __future__ import annotations

import datetime
import logging
import socket
from typing import Any, Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import launch as _d2_launch
from detectron2.utils import comm

from ..compat import create_local_process_group

__all__ = ["launch", "create_ddp_model"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def _free_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def launch(main_func: Callable, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: Optional[str] = None, args: Tuple[Any, ...] = (),
           backend: Optional[str] = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT):
    """Run ``main_func(*args)`` in ``num_processes`` processes per machine.

    ``backend``: ``None`` picks NCCL (detectron2's launch) when CUDA is available, else gloo
    on CPU processes; ``"gloo"`` forces CPU processes.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend={backend!r}: expected 'nccl' or 'gloo'")
    if backend == "nccl":
        return _d2_launch(main_func, num_processes, num_machines=num_machines,
                          machine_rank=machine_rank, dist_url=dist_url, args=args, timeout=timeout)
    world_size = num_processes * num_machines
    if world_size <= 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url='auto' only works on one machine; pass tcp://host:port")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info("Starting %d CPU processes (gloo) at %s", num_processes, dist_url)
    mp.start_processes(_cpu_worker, nprocs=num_processes, start_method="spawn", daemon=False,
                       args=(main_func, world_size, num_processes, machine_rank, dist_url, args,
                             timeout))


def _cpu_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args,
                timeout):
    rank = machine_rank * num_per_machine + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                            rank=rank, timeout=timeout)
    create_local_process_group(num_per_machine)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs):
    """detectron2's ``create_ddp_model`` for GPU and CPU models (``device_ids=None`` on CPU)."""
    if comm.get_world_size() == 1:
        return model
    device = next(model.parameters()).device
    if "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression and device.type == "cuda":
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp
