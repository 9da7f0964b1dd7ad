"""What a benchmark ran on: recorded next to every timing so that numbers can be compared."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_info(threads: int | None = None) -> dict:
    """CPU model, core count, torch threads and torch version."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads or torch.get_num_threads(), "torch": torch.__version__}


def load_average() -> float:
    """One-minute load average (NaN where the OS has none): other work skews timings."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def matmul_flops(size: int = 2048, min_run_time: float = 1.0) -> float:
    """float32 FLOP/s of a square ``size`` x ``size`` ``torch.matmul`` (2·size³ FLOPs) on the
    current torch threads, the median of as many calls as ``min_run_time`` seconds hold:
    the machine's speed, next to which every time is reported."""
    from torch.utils.benchmark import Timer

    a, b = torch.randn(size, size), torch.randn(size, size)
    timer = Timer("torch.matmul(a, b)", globals=dict(torch=torch, a=a, b=b), num_threads=torch.get_num_threads())
    return 2 * size**3 / timer.blocked_autorange(min_run_time=min_run_time).median

