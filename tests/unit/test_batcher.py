"""The micro-batcher: answers in order, batches bounded by max_batch, no batching at max_batch 1, errors reach
their callers and the loop goes on."""

from __future__ import annotations

import asyncio
import threading

import pytest

from recalign.serve import MicroBatcher


def squares_recorder():
    calls: list[list[int]] = []
    gate = threading.Event()

    def run(jobs: list[int]) -> list[int]:
        gate.wait(5)  # the first call holds the decoder while the other submissions queue up
        calls.append(list(jobs))
        if -1 in jobs:
            raise ValueError("bad job")
        return [j * j for j in jobs]

    return run, calls, gate


async def submit_all(batcher: MicroBatcher, submissions: list[list[int]], gate: threading.Event):
    await batcher.start()
    try:
        tasks = [asyncio.create_task(batcher.submit(jobs)) for jobs in submissions]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await batcher.stop()


@pytest.mark.parametrize("max_batch", [1, 3, 8])
def test_answers_in_order_and_batches_bounded(max_batch):
    run, calls, gate = squares_recorder()
    submissions = [[n] for n in range(10)] + [[20, 21]]
    batcher = MicroBatcher(run, max_batch=max_batch, max_wait=0.01)
    results = asyncio.run(submit_all(batcher, submissions, gate))
    assert results == [[j * j for j in jobs] for jobs in submissions]
    assert sorted(j for call in calls for j in call) == sorted(j for jobs in submissions for j in jobs)
    # a call holds whole submissions: it reaches max_batch only by its last one
    assert all(len(call) < max_batch + 2 for call in calls)
    if max_batch == 1:
        assert [len(call) for call in calls] == [len(jobs) for jobs in submissions]
    else:
        assert max(len(call) for call in calls) >= min(max_batch, 3)  # queued submissions did share calls
    assert batcher.stats.calls == len(calls) and batcher.stats.jobs == 12


@pytest.mark.parametrize("max_batch", [1, 8])
def test_an_error_reaches_its_own_caller_only(max_batch):
    run, calls, gate = squares_recorder()
    batcher = MicroBatcher(run, max_batch=max_batch, max_wait=0.01)
    results = asyncio.run(submit_all(batcher, [[2], [-1], [3]], gate))
    assert results[0] == [4] and results[2] == [9]
    assert isinstance(results[1], ValueError)
    if max_batch > 1:  # the shared call failed, then each submission was run alone
        assert calls == [[2, -1, 3], [2], [-1], [3]]


def test_settings_are_checked():
    with pytest.raises(ValueError):
        MicroBatcher(lambda jobs: jobs, max_batch=0)
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(MicroBatcher(lambda jobs: jobs).submit([1]))
