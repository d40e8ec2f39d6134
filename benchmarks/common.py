"""What the benchmark scripts share: ``balanced_det`` importable from the checkout, timing
(median over runs, CUDA synchronised) and the machine line of the reports.

    from common import ROOT, load_at_start, machine, sync, timeit
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "projects") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "projects"))

import torch  # noqa: E402

__all__ = ["ROOT", "sync", "timeit", "machine", "load_at_start"]


def sync(device) -> None:
    """Wait for the queued work of ``device`` (CUDA); nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device, repeats: int) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn`` after one warm-up call, the
    device synchronised before and after each."""
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine(device) -> str:
    """The GPU, or the CPU model and torch's thread count, and the torch version."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def load_at_start() -> str:
    """``load average at start <1-min load> on <n> CPUs``, for the report's header."""
    return f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
