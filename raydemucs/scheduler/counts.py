"""Counts kept as tasks move, never counted from the journal: tasks by state, queued tasks by
priority, and each batch's tasks and audio seconds by state, with its rate and ETA."""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Callable

from ..core.task import TaskRecord, TaskState, priority_name

RATE_WINDOW_S = 300.0  # the rate is over the tasks that ended in the last five minutes
LEFT = (TaskState.QUEUED.value, TaskState.RUNNING.value)


@dataclass
class BatchTally:
    tasks: collections.Counter = field(default_factory=collections.Counter)  # state -> tasks
    audio_s: collections.Counter = field(default_factory=collections.Counter)  # state -> seconds
    ended: collections.deque = field(default_factory=collections.deque)  # (time, audio seconds)

    def view(self, batch_id: str, now: float) -> dict:
        """Counts by state, audio seconds done and left, rate (over the last minutes) and ETA."""
        while self.ended and now - self.ended[0][0] > RATE_WINDOW_S:
            self.ended.popleft()
        span = now - self.ended[0][0] if len(self.ended) > 1 else 0.0
        tasks_rate = (len(self.ended) - 1) / span if span > 0 else None
        audio_rate = sum(s for _, s in list(self.ended)[1:]) / span if span > 0 else None
        left = sum(self.tasks[state] for state in LEFT)
        left_audio = sum(self.audio_s[state] for state in LEFT)
        eta = (left_audio / audio_rate if audio_rate else left / tasks_rate if tasks_rate
               else None)
        return {"batch_id": batch_id, "tasks": sum(self.tasks.values()),
                "by_state": {state.value: self.tasks[state.value] for state in TaskState},
                "audio_s_done": self.audio_s[TaskState.SUCCEEDED.value], "audio_s_left": left_audio,
                "tasks_per_s": tasks_rate, "audio_s_per_s": audio_rate,
                "eta_s": eta if left else 0.0, "done": left == 0}


class Tally:
    """Every count the scheduler reports, moved with each state change."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.states: collections.Counter = collections.Counter()
        self.priorities: collections.Counter = collections.Counter()  # queued tasks by priority
        self.batches: dict[str, BatchTally] = {}

    def load(self, states: dict, batches: list[tuple], queued: list[TaskRecord]) -> None:
        """What a restarted scheduler read: counts by state, `(batch, state, tasks, audio s)`
        rows, and the queued records."""
        self.states = collections.Counter(states)
        self.priorities = collections.Counter(priority_name(r.spec.priority) for r in queued
                                              if r.state is TaskState.QUEUED)
        self.batches = {}
        for batch_id, state, tasks, audio_s in batches:
            tally = self.batches.setdefault(batch_id, BatchTally())
            tally.tasks[state] += tasks
            tally.audio_s[state] += audio_s

    def add(self, record: TaskRecord) -> None:
        """A new record, queued."""
        self._count(record, record.state, +1)

    def move(self, record: TaskRecord, previous: TaskState) -> None:
        """A record went from `previous` to its state."""
        self._count(record, previous, -1)
        self._count(record, record.state, +1)
        batch = self.batches.get(record.spec.batch_id) if record.spec.batch_id else None
        if batch is not None and record.state.is_terminal() and not previous.is_terminal():
            batch.ended.append((self.clock(), record.spec.duration_s or 0.0))

    def _count(self, record: TaskRecord, state: TaskState, step: int) -> None:
        self.states[state.value] += step
        if state is TaskState.QUEUED:
            self.priorities[priority_name(record.spec.priority)] += step
        if record.spec.batch_id:
            batch = self.batches.setdefault(record.spec.batch_id, BatchTally())
            batch.tasks[state.value] += step
            batch.audio_s[state.value] += step * (record.spec.duration_s or 0.0)

    def queued_by_priority(self) -> dict[str, int]:
        return {name: count for name, count in self.priorities.items() if count}

    def batch(self, batch_id: str) -> dict | None:
        tally = self.batches.get(batch_id)
        return None if tally is None else tally.view(batch_id, self.clock())
