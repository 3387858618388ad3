"""Retention on the scheduler's event loop: a sweep at each next expiry, at least every
`retention.sweep_interval_s`, and sooner when a task that ends makes an expiry due before the
next planned sweep (the sweeper listens to transitions); a purge at once; what is held.

A sweep reads the journal and the disk in a thread (`Retention.scan`), retires what expired on
the loop (`Retention.retire`: journal marks and renames, where no task can be submitted or
retried in between), tells the event streams of every task whose files went, and empties the
trash in a thread again. A sweep that fails is logged and counted, and the loop goes on.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING, Callable

from ..core.config import RetentionConfig
from ..core.task import TaskRecord, TaskState
from .sweeps import Retention

if TYPE_CHECKING:  # the scheduler's parts this one works with (it runs inside the scheduler)
    from ..scheduler.book import TaskBook
    from ..scheduler.streams import Watchers

MIN_WAIT_S = 0.05  # between two sweeps, however many expiries are due
RETRY_S = 5.0  # after a sweep that failed


class Sweeper:
    """Sweeps and purges of one service; `on_error(job, exc)` logs and counts a failure."""

    def __init__(self, config: RetentionConfig, retention: Retention, book: "TaskBook",
                 watchers: "Watchers", on_error: Callable[[str, BaseException], None],
                 clock: Callable[[], float] = time.time):
        self.config, self.retention, self.book, self.watchers = config, retention, book, watchers
        self.on_error, self.clock = on_error, clock
        self.holdings: dict = {}  # what the last sweep found held (bytes, next expiry)
        self._planned = 0.0  # the next sweep, as the last one planned it
        self._requested = math.inf  # the earliest sweep asked for since the last one began
        self._wake = asyncio.Event()

    def inputs_in_use(self) -> set[str]:
        """The stored inputs of unfinished tasks."""
        return {record.spec.input_sha256 for record in self.book.active.values()
                if record.spec.uploaded}

    # -- when to sweep ------------------------------------------------------------------------
    def sweep_at(self, at: float) -> None:
        """Sweep no later than `at`."""
        self._requested = min(self._requested, at)
        self._wake.set()

    def on_transition(self, record: TaskRecord, previous: TaskState | None,
                      counted: bool = True) -> None:
        """A listener: a task that ends starts the clocks of its kept stems, its stored input
        and its record; the first of those expiries is swept on time."""
        if not record.state.is_terminal() or previous is None or previous.is_terminal():
            return
        ttls = [ttl for ttl, applies in ((self.config.results_ttl_s, record.spec.kept),
                                         (self.config.uploads_ttl_s, record.spec.uploaded),
                                         (self.config.records_ttl_s, True))
                if ttl is not None and applies]
        if ttls:
            self.sweep_at((record.finished_at or self.clock()) + min(ttls))

    async def run(self) -> None:
        """Sweep forever (the service runs this as a task)."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                self.on_error("retention_sweep", exc)
                self._planned = self.clock() + RETRY_S
            await asyncio.sleep(MIN_WAIT_S)
            await self._until_due()

    async def _until_due(self) -> None:
        """Wait until the next sweep is due; a request for an earlier one cuts the wait short."""
        while True:
            self._wake.clear()  # before reading the times: a later request wakes the wait
            wait_s = min(self._planned, self._requested) - self.clock()
            if wait_s <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    # -- sweeping -----------------------------------------------------------------------------
    async def sweep(self) -> None:
        """Retire what expired; plan the next sweep."""
        self._requested = math.inf  # the scan below sees every expiry asked for until now
        due = await asyncio.to_thread(self.retention.scan)
        retired = self.retention.retire(due, self.inputs_in_use(), set(self.book.active))
        self.book.dropped(retired.records)
        for record in retired.expired():
            self.watchers.expired(record.task_id, record.spec.owner)
        await asyncio.to_thread(self.retention.empty_trash)
        held = await asyncio.to_thread(self.retention.held_bytes)
        self.holdings = {**held, "next_expiry_at": due.next_expiry_at}
        self._planned = min(self.clock() + self.config.sweep_interval_s,
                            due.next_expiry_at if due.next_expiry_at is not None else math.inf)

    async def purge(self, record: TaskRecord) -> dict:
        """Delete a finished task's stored stems and input now (an input another task needs
        stays); the task stays in the journal, expired."""
        spec, read_at = record.spec, self.clock()
        users = (await asyncio.to_thread(self.retention.journal.tasks.held_records,
                                         spec.input_sha256) if spec.uploaded else [])
        outcome = self.retention.purge(self.book.get(record.task_id), users,
                                       self.inputs_in_use(), read_at)
        await asyncio.to_thread(self.retention.empty_trash)
        self.sweep_at(self.clock())  # recount what is held
        self.watchers.expired(record.task_id, spec.owner)
        return outcome

    def view(self) -> dict:
        """What the last sweep found held (bytes, next expiry) and how long each kind is kept."""
        kept = self.config
        return {**self.holdings, "uploads_ttl_s": kept.uploads_ttl_s,
                "results_ttl_s": kept.results_ttl_s, "records_ttl_s": kept.records_ttl_s}
