"""Micro-batching: requests that arrive while the decoder is busy, or within ``max_wait`` of each other, go
through one decoder call. The decoder runs in one worker thread, so the event loop keeps accepting requests. A
submission whose caller went away (its future cancelled, e.g. the client disconnected) before its call started is
dropped, not decoded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


@dataclass
class BatchStats:
    calls: int = 0  # decoder calls
    jobs: int = 0  # histories decoded
    largest: int = 0  # most histories in one call
    dropped: int = 0  # submissions whose caller went away before their call started
    sizes: dict[int, int] = field(default_factory=dict)  # histories per call -> calls

    def record(self, size: int) -> None:
        self.calls += 1
        self.jobs += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


class MicroBatcher(Generic[Job, Result]):
    """Runs ``run(jobs) -> results`` (one result per job, in order) over batches of at most ``max_batch`` jobs
    (a single submission larger than that is still one call). ``max_batch=1`` turns batching off."""

    def __init__(self, run: Callable[[list[Job]], list[Result]], max_batch: int = 8, max_wait: float = 0.005):
        if max_batch < 1 or max_wait < 0:
            raise ValueError(f"max_batch must be at least 1 and max_wait non-negative, got {max_batch}, {max_wait}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recalign-decoder")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._executor = self._queue = None

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, jobs: Sequence[Job]) -> list[Result]:
        if self._queue is None:
            raise RuntimeError("the batcher is not running (start() it inside the event loop)")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((list(jobs), future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:  # whatever queued while the last call ran is taken at once; then wait up to the deadline
                    batch.append(self._queue.get_nowait() if not self._queue.empty() else
                                 await asyncio.wait_for(self._queue.get(), max(deadline - loop.time(), 0)))
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    break
                size += len(batch[-1][0])
            live = [submission for submission in batch if not submission[1].done()]
            self.stats.dropped += len(batch) - len(live)
            batch = live
            if not batch:
                continue
            try:
                await self._answer(batch)
            except Exception as exc:  # the loop always goes on to the next batch
                if len(batch) == 1:
                    _fail(batch[0][1], exc)
                    continue
                for submission in batch:  # each alone, so that one bad job fails only its own caller
                    try:
                        await self._answer([submission])
                    except Exception as alone:
                        _fail(submission[1], alone)

    async def _answer(self, batch: list) -> None:
        jobs = [job for submitted, _ in batch for job in submitted]
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self.run, jobs)
        self.stats.record(len(jobs))
        start = 0
        for submitted, future in batch:
            if not future.done():  # a caller that went away (client disconnect) cancelled its future
                future.set_result(results[start:start + len(submitted)])
            start += len(submitted)


def _fail(future: asyncio.Future, exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
