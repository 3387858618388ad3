"""Counts kept as tasks move, never counted from the journal per call: tasks by state (in all,
and of each owner: what a tenant's status shows), queued tasks by priority, and each unfinished
batch's tasks and audio seconds by state, with its rate and ETA.

A batch is counted in memory while it has unfinished tasks, and for the last `FINISHED_BATCHES`
batches that ended; an older one is read back from the journal (`read_batch`) when asked for, or
before one of its tasks changes again.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Callable

from ..core.task import TaskRecord, TaskState, priority_name

RATE_WINDOW_S = 300.0  # the rate is over the tasks that ended in the last five minutes
LEFT = (TaskState.QUEUED.value, TaskState.RUNNING.value)
FINISHED_BATCHES = 1000  # ended batches kept counted in memory (with their last rate)


@dataclass
class BatchCounts:
    tasks: collections.Counter = field(default_factory=collections.Counter)  # state -> tasks
    audio_s: collections.Counter = field(default_factory=collections.Counter)  # state -> seconds
    ended: collections.deque = field(default_factory=collections.deque)  # (time, audio seconds)

    @classmethod
    def from_rows(cls, rows) -> "BatchCounts":
        """From the journal's `(batch id, state, tasks, audio seconds)` rows of one batch."""
        counts = cls()
        for _, state, tasks, audio_s in rows:
            counts.tasks[state] += tasks
            counts.audio_s[state] += audio_s
        return counts

    def unfinished(self) -> int:
        return sum(self.tasks[state] for state in LEFT)

    def forget_before(self, now: float) -> None:
        while self.ended and now - self.ended[0][0] > RATE_WINDOW_S:
            self.ended.popleft()

    def view(self, batch_id: str, now: float) -> dict:
        """Counts by state, audio seconds done and left, rate (over the last minutes) and ETA."""
        self.forget_before(now)
        span = now - self.ended[0][0] if len(self.ended) > 1 else 0.0
        tasks_rate = (len(self.ended) - 1) / span if span > 0 else None
        audio_rate = sum(s for _, s in list(self.ended)[1:]) / span if span > 0 else None
        left, left_audio = self.unfinished(), sum(self.audio_s[state] for state in LEFT)
        eta = (left_audio / audio_rate if audio_rate else left / tasks_rate if tasks_rate
               else None)
        return {"batch_id": batch_id, "tasks": sum(self.tasks.values()),
                "by_state": {state.value: self.tasks[state.value] for state in TaskState},
                "audio_s_done": self.audio_s[TaskState.SUCCEEDED.value], "audio_s_left": left_audio,
                "tasks_per_s": tasks_rate, "audio_s_per_s": audio_rate,
                "eta_s": eta if left else 0.0, "done": left == 0}


class TaskCounts:
    """Every count the scheduler reports, moved with each state change."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 read_batch: Callable[[str], list[tuple]] = lambda batch_id: []):
        self.clock, self.read_batch = clock, read_batch
        self.states: collections.Counter = collections.Counter()
        self.owners: dict[str, collections.Counter] = {}  # owner -> its tasks by state
        self.priorities: collections.Counter = collections.Counter()  # queued tasks by priority
        self.batches: dict[str, BatchCounts] = {}  # unfinished batches, then recently ended ones

    def load(self, owners: list[tuple], batches: list[tuple], queued: list[TaskRecord]) -> None:
        """What a restarted scheduler read: `(owner, state, tasks)` rows, `(batch, state, tasks,
        audio s)` rows of the unfinished batches, and the queued records."""
        self.states, self.owners = collections.Counter(), {}
        for owner, state, count in owners:
            self.states[state] += count
            self.owners.setdefault(owner, collections.Counter())[state] += count
        self.priorities = collections.Counter(priority_name(r.spec.priority) for r in queued
                                              if r.state is TaskState.QUEUED)
        by_batch = collections.defaultdict(list)
        for row in batches:
            by_batch[row[0]].append(row)
        self.batches = {batch: BatchCounts.from_rows(rows) for batch, rows in by_batch.items()}

    def add(self, record: TaskRecord) -> None:
        """A new record, queued."""
        self._count(record, record.state, +1)

    def move(self, record: TaskRecord, previous: TaskState) -> None:
        """A record went from `previous` to its state."""
        self._count(record, previous, -1)
        self._count(record, record.state, +1)
        batch = self.batches.get(record.spec.batch_id) if record.spec.batch_id else None
        if batch is not None and record.state.is_terminal() and not previous.is_terminal():
            now = self.clock()
            batch.ended.append((now, record.spec.duration_s or 0.0))
            batch.forget_before(now)
            if not batch.unfinished():
                self._keep_recent(record.spec.batch_id)

    def ensure_batch(self, batch_id: str | None) -> None:
        """Count a batch in memory again, as the journal holds it, before one of its tasks is
        written (a rerun, or a new task of a batch submitted again)."""
        if batch_id and batch_id not in self.batches:
            self.batches[batch_id] = BatchCounts.from_rows(self.read_batch(batch_id))

    def drop(self, record: TaskRecord) -> None:
        """A finished record left the journal (`retention.records_ttl_s`)."""
        self._count(record, record.state, -1)

    def _count(self, record: TaskRecord, state: TaskState, step: int) -> None:
        self.states[state.value] += step
        self.owners.setdefault(record.spec.owner, collections.Counter())[state.value] += step
        if state is TaskState.QUEUED:
            self.priorities[priority_name(record.spec.priority)] += step
        batch = self.batches.get(record.spec.batch_id) if record.spec.batch_id else None
        if batch is not None:
            batch.tasks[state.value] += step
            batch.audio_s[state.value] += step * (record.spec.duration_s or 0.0)

    def _keep_recent(self, batch_id: str) -> None:
        """An ended batch moves to the end of the recently ended ones; the oldest ended beyond
        `FINISHED_BATCHES` are forgotten (read back from the journal when asked for)."""
        self.batches[batch_id] = self.batches.pop(batch_id)
        ended = [key for key, counts in self.batches.items() if not counts.unfinished()]
        for key in ended[:max(0, len(ended) - FINISHED_BATCHES)]:
            del self.batches[key]

    def of_owner(self, owner: str) -> dict[str, int]:
        """One owner's tasks by state."""
        counts = self.owners.get(owner, {})
        return {state.value: counts.get(state.value, 0) for state in TaskState}

    def queued_by_priority(self) -> dict[str, int]:
        return {name: count for name, count in self.priorities.items() if count}

    def batch(self, batch_id: str) -> dict | None:
        """A batch's view (`BatchCounts.view`); None when the journal holds no task of it."""
        counts = self.batches.get(batch_id) or BatchCounts.from_rows(self.read_batch(batch_id))
        return counts.view(batch_id, self.clock()) if counts.tasks else None
