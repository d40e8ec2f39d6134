"""Numerics and distributed helpers shared by the heads: float32 loss maths under autocast,
process counts and means."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist

__all__ = ["float32_math", "world_size", "reduce_mean"]


@contextmanager
def float32_math(t: torch.Tensor):
    """Autocast off on the device of ``t``, so loss maths runs in float32 (callers cast)."""
    device_type = t.device.type if t.device.type in ("cuda", "cpu") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def world_size() -> int:
    """Number of processes of the default group (1 without distributed training)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over processes (sum all-reduce / world size); identity in one process."""
    n = world_size()
    if n == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / n
