"""The tasks the scheduler holds, and the one place where a task's state changes.

A change is committed to the journal first; only then does memory follow (the record in `active`
replaced, or dropped when it ended; the counts moved); then each listener is told, each on its
own: a listener that fails is logged and counted, and neither the task nor the other listeners
lose anything by it. If the journal refuses a change, nothing in memory changed.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Protocol

from ..core.config import StorageConfig
from ..core.errors import TaskNotFound
from ..core.task import TaskRecord, TaskState
from ..journal import Journal
from ..storage.folders import folder_on
from .counts import TaskCounts

logger = logging.getLogger(__name__)


class Listener(Protocol):
    """Told of every committed state change (metrics, webhook deliveries, the sweeper)."""

    def on_transition(self, record: TaskRecord, previous: TaskState | None,
                      counted: bool = True) -> None:
        """`previous` is None for a new task; `counted` is False when a running task went back
        to the queue without using up an attempt (a prefetched task stepping back)."""


@dataclass
class Change:
    """One state change to commit: the record as it was, its new state and other fields."""

    record: TaskRecord
    state: TaskState
    fields: dict = field(default_factory=dict)
    note: str = ""
    counted: bool = True

    def applied(self) -> TaskRecord:
        return dataclasses.replace(self.record, state=self.state, **self.fields)


class TaskBook:
    """Unfinished tasks in memory (`active`), their counts, and every change of state."""

    def __init__(self, journal: Journal, clock: Callable[[], float] = time.time,
                 listeners: tuple = (),
                 on_error: Callable[[str, BaseException], None] | None = None):
        self.journal, self.clock = journal, clock
        self.listeners = list(listeners)
        self.on_error = on_error or (lambda job, exc: logger.error("%s failed", job, exc_info=exc))
        self.active: dict[str, TaskRecord] = {}
        # owner -> its unfinished tasks' ids, oldest first (ordered: no holes to walk past)
        self.owners: dict[str, collections.OrderedDict] = {}
        self.counts = TaskCounts(clock, lambda batch_id: journal.tasks.batch_tallies(batch_id))

    def hold(self, record: TaskRecord) -> None:
        """Hold an unfinished record in memory (a new one, or one recovered or changed)."""
        self.active[record.task_id] = record
        self.owners.setdefault(record.spec.owner, collections.OrderedDict())[record.task_id] = None

    def _release(self, record: TaskRecord) -> None:
        self.active.pop(record.task_id, None)
        owned = self.owners.get(record.spec.owner, {})
        owned.pop(record.task_id, None)
        if not owned:
            self.owners.pop(record.spec.owner, None)

    def owned(self, owner: str) -> Collection[str]:
        """The ids of an owner's unfinished tasks, oldest first (by when they were held)."""
        return self.owners.get(owner, {}).keys()

    def get(self, task_id: str) -> TaskRecord:
        record = self.active.get(task_id) or self.journal.tasks.get(task_id)
        if record is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return record

    # -- changes ------------------------------------------------------------------------------
    def accept(self, records: list[TaskRecord]) -> None:
        """New records, queued: committed (one transaction), then held and told of."""
        for record in records:
            self.counts.ensure_batch(record.spec.batch_id)
        self.journal.tasks.insert_many(records)
        for record in records:
            self.added(record)

    def added(self, record: TaskRecord) -> None:
        """A new record the journal holds now: held, counted, told of."""
        self.hold(record)
        self.counts.add(record)
        self._tell(record, None, True)
        spec = record.spec
        logger.info("task %s: queued (%s/%s, priority %d)", spec.task_id, spec.project,
                    spec.file_id, spec.priority)

    def change(self, record: TaskRecord, state: TaskState, note: str = "", counted: bool = True,
               **fields) -> TaskRecord:
        """Commit one change of `record` (to `state`, with `fields`); the record as it is now."""
        return self.change_many([Change(record, state, fields, note, counted)])[0]

    def change_many(self, changes: list[Change]) -> list[TaskRecord]:
        """Commit changes in one journal transaction, then apply them in memory and tell the
        listeners; the records as they are now. A failed commit changes nothing."""
        for change in changes:
            self.counts.ensure_batch(change.record.spec.batch_id)
        records = [change.applied() for change in changes]
        with self.journal.transaction():
            for record in records:
                self.journal.tasks.save(record)
        for change, record in zip(changes, records):
            self._apply(change, record)
        return records

    def _apply(self, change: Change, record: TaskRecord) -> None:
        previous = change.record.state
        if record.state.is_terminal():
            self._release(record)
        else:
            self.hold(record)
        self.counts.move(record, previous)
        self._tell(record, previous, change.counted)
        elapsed = self.clock() - record.submitted_at
        note = f" ({change.note})" if change.note else ""
        logger.info("task %s attempt %d: %s -> %s after %.2f s%s", record.task_id,
                    record.attempts, previous.value, record.state.value, elapsed, note)

    def _tell(self, record: TaskRecord, previous: TaskState | None, counted: bool) -> None:
        for listener in self.listeners:
            try:
                listener.on_transition(record, previous, counted)
            except Exception as exc:
                self.on_error(f"listener {type(listener).__name__}", exc)

    def dropped(self, records: list[TaskRecord]) -> None:
        """Finished records the journal no longer holds (`retention.records_ttl_s`)."""
        for record in records:
            self.counts.drop(record)


@dataclass
class Recovery:
    """What a restarted scheduler reads from the journal and the output folders (slow: off the
    event loop)."""

    unfinished: list  # queued and running records, in submission order
    finished: dict = field(default_factory=dict)  # task id -> {stem: location} already complete
    counts: list = field(default_factory=list)  # (owner, state, records)
    batches: list = field(default_factory=list)  # (batch id, state, tasks, audio seconds)


def read_recovery(journal: Journal, storage: StorageConfig) -> Recovery:
    """Read what `Scheduler.recover` needs: blocking disk and object-store work."""
    unfinished = journal.tasks.unfinished()
    finished = {record.task_id: folder_on(record.spec.output_location, record.node,
                                          storage).finished(record.task_id)
                for record in unfinished}  # read on the node whose worker wrote them
    return Recovery(unfinished, {k: v for k, v in finished.items() if v is not None},
                    journal.tasks.count_by_owner(), journal.tasks.batch_tallies())
