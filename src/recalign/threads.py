"""CPU threads that degrade gracefully when other heavy work shares the cores (docs/benchmarks/threads.md).

torch's default takes every core and libgomp's threads spin while they wait: beside another heavy process the two
jobs' threads steal each other's time slices (a small-op training step 3.1x slower, where sharing fairly would make
it 2x). Alone, though, that default is the fastest (passive waits cost 26-30% there). So a command measures the load
once when it starts: on a quiet machine it keeps torch's defaults; where other work is running it takes the cores
left free (``free_cores``) and OpenMP threads that sleep when idle (``OMP_WAIT_POLICY=PASSIVE``, set before torch
loads). Either is overridden by ``--threads``, ``OMP_NUM_THREADS`` or ``OMP_WAIT_POLICY``.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path


def runnable_now(samples: int = 5, interval: float = 0.01) -> float:
    """Threads running or ready to run on the whole machine, this one excluded, averaged over ``samples`` readings
    of /proc/loadavg (its fourth field, ``running/total``)."""
    counts = []
    for sample in range(samples):
        counts.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        if sample < samples - 1:
            time.sleep(interval)
    return sum(counts) / len(counts)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def free_cores(busy: float | None = None, cores: int | None = None) -> int:
    """The cores this process may run on less those busy with other work now (``busy`` threads; measured when
    None), at least 1. Where the machine's load cannot be read, every core."""
    cores = cores or usable_cores()
    if busy is None:
        try:
            busy = runnable_now()
        except (OSError, ValueError, IndexError):
            busy = 0.0
    return max(1, min(cores, round(cores - busy)))


@functools.cache
def free_at_start() -> int:
    """``free_cores`` measured once per process."""
    return free_cores()


def contended() -> bool:
    return free_at_start() < usable_cores()


def passive_openmp_if_contended() -> None:
    """Where other work is running, OpenMP threads sleep as soon as they wait, unless the user chose a policy;
    effective only before torch (and its OpenMP runtime) is loaded."""
    if contended():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_threads() -> int | None:
    """The torch threads a command takes when not told: None (torch's choice: every core) on a quiet machine or
    where OMP_NUM_THREADS is set (the user or a launcher chose); else the cores free at the start."""
    return free_at_start() if contended() and not os.environ.get("OMP_NUM_THREADS") else None
