"""Background work on the scheduler's event loop, supervised (as dramatiq supervises its consumer
threads and arq its poll loop): every task's exception is logged and counted, never dropped with
the task; a loop that fails logs, waits and goes on.

`job` names the kind of work (`attempt_result`, `sweep`, `worker_ready`, ...): it is the task's name
in the log and the `job` tag of `raydemucs_background_errors_total`.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Awaitable, Callable, Coroutine

logger = logging.getLogger(__name__)

RETRY_S = 1.0  # a failed loop goes on after this long
LAG_PROBE_S = 0.1  # the loop-lag probe sleeps this long between samples
LAG_SAMPLES = 100  # the samples `LoopLag.summary` is over (the last 10 s, at LAG_PROBE_S)


class Supervisor:
    """Starts background tasks and loops; `on_error(job)` counts each failure (a metric)."""

    def __init__(self, on_error: Callable[[str], None] = lambda job: None):
        self.on_error = on_error
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, job: str, work: Coroutine) -> asyncio.Task:
        """Run `work` as a task; its exception, if it raises one, is logged and counted."""
        task = asyncio.get_running_loop().create_task(work, name=job)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def offload(self, job: str, work: Callable[[], object]) -> asyncio.Task:
        """Run blocking `work` in a thread, supervised like `spawn`."""
        return self.spawn(job, asyncio.to_thread(work))

    def forever(self, job: str, step: Callable[[], Awaitable[float]],
                retry_s: float = RETRY_S) -> asyncio.Task:
        """Run `await step()` again and again, each time waiting the seconds it returns; a step
        that raises is logged and counted, and the loop goes on `retry_s` later."""
        async def loop() -> None:
            while True:
                try:
                    wait_s = await step()
                except Exception as exc:
                    self.failed(job, exc)
                    wait_s = retry_s
                await asyncio.sleep(max(0.0, wait_s))
        return self.spawn(job, loop())

    def failed(self, job: str, exc: BaseException) -> None:
        """Log and count a failure of `job` (also for work that catches its own errors)."""
        logger.error("background job %s failed: %s", job, exc, exc_info=exc)
        try:
            self.on_error(job)
        except Exception:  # a metric that cannot be recorded must not hide the failure
            logger.exception("background job %s: its failure could not be counted", job)

    def _ended(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed(task.get_name(), task.exception())

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)


class LoopLag:
    """How late the event loop wakes a sleeper: a step of `Supervisor.forever` that sleeps
    `interval_s` and records by how much more it slept (`record(seconds)`: a metric). A handler
    that holds the loop shows here as the lag of the next wake."""

    def __init__(self, record: Callable[[float], None], interval_s: float = LAG_PROBE_S,
                 clock: Callable[[], float] = time.monotonic):
        self.record, self.interval_s, self.clock = record, interval_s, clock
        self.recent: collections.deque = collections.deque(maxlen=LAG_SAMPLES)
        self._due: float | None = None

    async def step(self) -> float:
        now = self.clock()
        if self._due is not None:
            lag = max(0.0, now - self._due)
            self.recent.append(lag)
            self.record(lag)
        self._due = now + self.interval_s
        return self.interval_s

    def summary(self) -> dict:
        """The recent lags' p50, p99 and max, in milliseconds (None before a sample)."""
        ordered = sorted(self.recent)
        if not ordered:
            return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        p50, p99 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99))
        return {"samples": len(ordered), "p50_ms": 1000 * p50, "p99_ms": 1000 * p99,
                "max_ms": 1000 * ordered[-1]}
