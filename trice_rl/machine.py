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
