"""Group concurrent generation requests into one forward pass.

Requests arrive one at a time on the event loop; the model is fastest on batches. A
:class:`BatchQueue` takes the requests waiting at one moment (up to ``max_batch`` images,
waiting at most ``max_wait_ms`` after the first for more to arrive), groups those that can
share a pass (same ``key``: same model settings), and runs each group as one call in a
single worker thread, so the event loop stays free to accept and answer requests while
the model works. While a pass runs, new requests pile up and form the next batch: under
load the batches fill by themselves and the wait is never paid.

The queue is bounded (``max_pending`` images): :meth:`BatchQueue.submit` raises
:class:`QueueFullError` instead of letting memory grow, and the server answers 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


class QueueFullError(RuntimeError):
    """The queue holds ``max_pending`` images already; the caller should retry later."""


@dataclass
class _Job:
    key: Hashable
    payload: Any
    size: int
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


@dataclass
class BatchStats:
    """Counters of a :class:`BatchQueue` (read by ``/healthz`` and the benchmark)."""

    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    rejected: int = 0
    dropped: int = 0
    busy_s: float = 0.0


class BatchQueue:
    """An asyncio queue that runs waiting jobs with the same key as one batch.

    Args:
        run_batch: ``run_batch(key, payloads) -> results``, called in the worker thread with
            the payloads of one group (in arrival order); returns one result per payload.
            An exception fails every job of that group with it.
        max_batch: most images per call (a single job larger than this still runs, alone).
        max_wait_ms: how long the first job of a batch waits for company.
        max_pending: most images waiting; :meth:`submit` raises :class:`QueueFullError` beyond.
        in_flight: optional ``() -> int``, the requests being handled now (read, aligned or
            queued). When no more are in flight than the batch holds, nobody is coming: the
            batch starts at once instead of waiting ``max_wait_ms`` (a lone client pays no wait).

    Call :meth:`start` from the running event loop and :meth:`close` at shutdown.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch: int = 32,
        max_wait_ms: float = 4.0,
        max_pending: int = 256,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_pending must be >= 1, max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000
        self.max_pending = int(max_pending)
        self.in_flight = in_flight
        self.stats = BatchStats()
        self._jobs: asyncio.Queue[_Job] | None = None
        self._pending = 0
        self._carry: _Job | None = None
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        """Images waiting (not yet handed to the worker thread)."""
        return self._pending

    def start(self) -> None:
        """Start the worker (call from inside the running event loop)."""
        if self._task is not None:
            return
        self._jobs = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="generate")
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def close(self) -> None:
        """Stop the worker; jobs still waiting fail with ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        jobs = [self._carry] if self._carry else []
        while self._jobs is not None and not self._jobs.empty():
            jobs.append(self._jobs.get_nowait())
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server is shutting down"))
        self._carry, self._pending = None, 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, key: Hashable, payload: Any, size: int = 1) -> Any:
        """Queue one job of ``size`` images and wait for its result.

        Raises:
            QueueFullError: ``max_pending`` images are already waiting.
            RuntimeError: the queue is not started.
        """
        if self._jobs is None or self._task is None:
            raise RuntimeError("BatchQueue.start() was not called")
        if self._pending + size > self.max_pending and self._pending > 0:
            self.stats.rejected += 1
            raise QueueFullError(
                f"server busy: {self._pending} images are waiting (limit {self.max_pending}); "
                "retry in a moment"
            )
        job = _Job(key, payload, int(size), asyncio.get_running_loop().create_future())
        self._pending += job.size
        self._jobs.put_nowait(job)
        return await job.future

    async def _next_job(self, timeout: float | None) -> _Job | None:
        assert self._jobs is not None
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if not self._jobs.empty():
            return self._jobs.get_nowait()
        if timeout is not None and timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._jobs.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect(self) -> list[_Job]:
        """The first waiting job, plus whatever arrives within ``max_wait`` (up to max_batch)."""
        first = await self._next_job(None)
        batch, size = [first], first.size
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch:
            alone = self.in_flight is not None and self.in_flight() <= len(batch)
            job = await self._next_job(0 if alone else deadline - time.perf_counter())
            if job is None:
                break
            if size + job.size > self.max_batch:
                self._carry = job  # starts the next batch
                break
            batch.append(job)
            size += job.size
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._pending -= sum(j.size for j in batch)
            live = [j for j in batch if not j.future.done()]  # a timed-out caller cancelled
            self.stats.dropped += len(batch) - len(live)
            groups: dict[Hashable, list[_Job]] = {}
            for job in live:
                groups.setdefault(job.key, []).append(job)
            for key, jobs in groups.items():
                started = time.perf_counter()
                try:
                    results = await loop.run_in_executor(
                        self._executor, self.run_batch, key, [j.payload for j in jobs]
                    )
                except Exception as exc:  # noqa: BLE001 - handed to every caller of the group
                    for j in jobs:
                        if not j.future.done():
                            j.future.set_exception(exc)
                    continue
                finally:
                    self.stats.busy_s += time.perf_counter() - started
                n = sum(j.size for j in jobs)
                self.stats.batches += 1
                self.stats.images += n
                self.stats.largest_batch = max(self.stats.largest_batch, n)
                for j, result in zip(jobs, results, strict=True):
                    if not j.future.done():
                        j.future.set_result(result)
