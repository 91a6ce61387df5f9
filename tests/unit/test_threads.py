"""Thread defaults under contention: the cores free now (a spinning process is seen); torch's defaults on a quiet
machine, the free cores and passive OpenMP waits beside other work; OMP_NUM_THREADS and a chosen wait policy kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import recalign.threads as threads_module
from recalign.threads import default_threads, free_cores, passive_openmp_if_contended, runnable_now


@pytest.mark.parametrize("busy,cores,free", [(0, 2, 2), (0.4, 2, 2), (0.6, 2, 1), (1, 2, 1), (2, 2, 1), (9, 2, 1),
                                             (1, 8, 7), (-1, 4, 4)])
def test_free_cores_are_the_cores_less_the_busy_ones_at_least_one(busy, cores, free):
    assert free_cores(busy, cores) == free


def test_a_spinning_process_is_seen_busy():
    spin = "import time\nend = time.time() + 5\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)
        assert runnable_now() >= 0.8  # the spinner, at least
        assert free_cores(cores=2) == 1
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize("free,threads,policy", [(2, None, None), (1, 1, "PASSIVE")])
def test_defaults_change_only_where_other_work_runs(monkeypatch, free, threads, policy):
    monkeypatch.setattr(threads_module, "free_at_start", lambda: free)
    monkeypatch.setattr(threads_module, "usable_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert default_threads() == threads  # None: torch's choice, every core
    passive_openmp_if_contended()
    assert os.environ.get("OMP_WAIT_POLICY") == policy


def test_a_chosen_thread_count_or_wait_policy_is_kept(monkeypatch):
    monkeypatch.setattr(threads_module, "free_at_start", lambda: 1)
    monkeypatch.setattr(threads_module, "usable_cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_threads() is None  # torch's own choice, which follows OMP_NUM_THREADS
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    passive_openmp_if_contended()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
