"""Thread defaults under contention: the cores free now (a spinning process is seen), OMP_NUM_THREADS and a chosen
OpenMP wait policy respected."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from recalign.threads import default_threads, free_cores, passive_openmp, runnable_now


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


def test_a_chosen_thread_count_or_wait_policy_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() is None  # torch's own choice, which follows OMP_NUM_THREADS
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= default_threads() <= free_cores(0)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
