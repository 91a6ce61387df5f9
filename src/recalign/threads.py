"""CPU threads that degrade gracefully when other heavy work shares the cores (docs/benchmarks/threads.md).

torch's default takes every core and libgomp's threads spin while they wait: beside another heavy process the two
jobs' threads steal each other's time slices. The commands therefore take, unless told otherwise, the cores free
when they start (``free_cores``), and OpenMP threads that sleep when idle (``OMP_WAIT_POLICY=PASSIVE``, set before
torch loads).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def runnable_now(samples: int = 10, interval: float = 0.01) -> float:
    """Threads running or ready to run on the whole machine, this one excluded, averaged over ``samples`` readings
    of /proc/loadavg (its fourth field, ``running/total``)."""
    counts = []
    for sample in range(samples):
        counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        if sample < samples - 1:
            time.sleep(interval)
    return sum(counts) / len(counts)


def free_cores(busy: float | None = None, cores: int | None = None) -> int:
    """The cores this process may run on less those busy with other work now (``busy`` threads; measured when
    None), at least 1. Where the machine's load cannot be read, every core."""
    cores = cores or len(os.sched_getaffinity(0))
    if busy is None:
        try:
            busy = runnable_now()
        except (OSError, ValueError, IndexError):
            busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def passive_openmp() -> None:
    """OpenMP threads sleep as soon as they wait, unless the user chose a policy; effective only before torch (and
    its OpenMP runtime) is loaded."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_threads() -> int | None:
    """The torch threads a command takes when not told: None (torch's choice) where OMP_NUM_THREADS is set, since
    the user (or a launcher) chose already; else the cores free now."""
    return None if os.environ.get("OMP_NUM_THREADS") else free_cores()
