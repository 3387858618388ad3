"""What the event streams wait on: the tasks whose own fields changed, numbered, and each owner's
place in the queue, told coarsely.

Every change of a task (a committed state change, progress, its files gone) is `touch`ed: it
takes the next number, in its owner's log of touched tasks. `watch` answers as soon as one task's
view differs from what the caller last saw; `watch_tasks` with the views of an owner's tasks
touched after the caller's cursor, so its work is the changes since then, not the owner's
unfinished tasks, and a dispatch is not every queued task's change. A queue position (which moves
for every queued task on each dispatch) comes with a task's view whenever it is sent, and is sent
alone only for the owner's first `POSITIONS_SHOWN` queued tasks, at most every
`POSITIONS_EVERY_S` while the queue moves (a task left it, or a high-priority one went ahead;
`GET /v1/tasks/{id}` has the exact one). A wait wakes for its own owner's touches only (a task's
own stream also when a queue moves while its task is queued): another owner's change looks at
none of its tasks.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
import uuid
from typing import Callable, Iterable

from ..core.errors import TaskNotFound
from ..core.task import PRIORITIES, TaskRecord, TaskState

TOUCHES_KEPT = 10_000  # an owner's most recently touched tasks remembered (older: a full resend)
POSITIONS_EVERY_S = 5.0  # queue positions alone, at most this often per stream
POSITIONS_SHOWN = 10  # an owner's first queued tasks whose positions are sent alone
VIEWS_PER_STEP = 100  # views built between yields of the loop (a first answer may be 100,000)


class Watchers:
    """`view(task_id)` is a task as clients see it; `owned(owner)` the ids of an owner's
    unfinished tasks, oldest first. The book's `Listener`: every state change touches its task."""

    def __init__(self, view: Callable[[str], dict], owned: Callable[[str], Iterable[str]],
                 clock: Callable[[], float] = time.monotonic):
        self.view, self.owned, self.clock = view, owned, clock
        self._owner_change: dict[str, asyncio.Event] = {}  # set when one of an owner's was touched
        self._moved = asyncio.Event()  # set, and replaced, when a task entered or left a queue
        self.waiting = 0  # the waits of event streams here now
        self.epoch = uuid.uuid4().hex  # a cursor of another scheduler (before a restart) resends
        self.version = 0  # the number of the last touch
        # owner -> task id -> its last touch, oldest first (ordered dicts: O(1) at both ends)
        self.touched: dict[str, collections.OrderedDict] = {}
        self.forgotten: dict[str, int] = {}  # owner -> the last touch forgotten (TOUCHES_KEPT)
        self.moved_at = 0.0  # when a task last entered or left a queue
        self._progress: dict[str, tuple] = {}  # running task -> its progress last touched

    def touch(self, task_id: str, owner: str) -> None:
        """A task's own fields changed: its owner's streams send its view."""
        self.version += 1
        log = self.touched.setdefault(owner, collections.OrderedDict())
        log[task_id] = self.version
        log.move_to_end(task_id)
        if len(log) > TOUCHES_KEPT:
            self.forgotten[owner] = log.popitem(last=False)[1]
        waiting = self._owner_change.pop(owner, None)
        if waiting is not None:
            waiting.set()

    def on_transition(self, record: TaskRecord, previous: TaskState | None,
                      counted: bool = True) -> None:
        """A committed state change (the book's `Listener`)."""
        if previous is TaskState.QUEUED or (record.state is TaskState.QUEUED
                                            and record.spec.priority < PRIORITIES["normal"]):
            self.moved_at = self.clock()  # a task left a queue, or a high one went ahead
            self._moved.set()
            self._moved = asyncio.Event()
        if record.state.is_terminal():
            self._progress.pop(record.task_id, None)
        self.touch(record.task_id, record.spec.owner)

    def progressed(self, records: Iterable[TaskRecord]) -> None:
        """Running tasks, after a poll of the workers: those whose progress moved are touched."""
        for record in filter(None, records):  # (one that ended is no longer held)
            now = (record.progress, record.started_at)
            if self._progress.get(record.task_id) != now:
                self._progress[record.task_id] = now
                self.touch(record.task_id, record.spec.owner)

    def expired(self, task_id: str, owner: str) -> None:
        """A finished task's files went: its watchers hear of it."""
        self.touch(task_id, owner)

    async def _wait(self, deadline: float, owner: str, moved: bool = False) -> None:
        """Until one of `owner`'s tasks changed (or, with `moved`, a queue moved), or
        `deadline`."""
        events = [self._owner_change.setdefault(owner, asyncio.Event())]
        if moved:
            events.append(self._moved)
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        self.waiting += 1
        try:
            await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting -= 1
            for wait in waits:
                wait.cancel()

    async def watch(self, task_id: str, seen: dict | None, timeout_s: float) -> dict:
        """The task's view as soon as it differs from `seen` (or is terminal), else after
        `timeout_s`: a task's own stream, its queue position included as it moves. It wakes
        when its owner's tasks change, or a queue moves while it is queued."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.view(task_id)
            if (view != seen or TaskState(view["state"]).is_terminal()
                    or time.monotonic() >= deadline):
                return view
            await self._wait(deadline, view["owner"], moved=view["queue_position"] is not None)

    async def watch_tasks(self, owner: str, cursor: dict | None, timeout_s: float) -> dict:
        """`{"views", "cursor"}`: the views of `owner`'s tasks touched after `cursor` (None, or
        one from another scheduler: every unfinished one), oldest first, with the first queued
        ones' when their positions are due, as soon as there is one, else none after
        `timeout_s`; `cursor` is for the next call."""
        deadline = time.monotonic() + timeout_s
        while True:
            task_ids, cursor = self._due(owner, cursor)
            views = await self._views(task_ids)
            if views or time.monotonic() >= deadline:
                return {"views": sorted(views, key=lambda view: view["seq"]), "cursor": cursor}
            positions_due = cursor["positions_at"] + POSITIONS_EVERY_S
            moved = self.moved_at > cursor["positions_at"]
            await self._wait(min(deadline, positions_due) if moved else deadline, owner)

    def _due(self, owner: str, cursor: dict | None) -> tuple[list[str], dict]:
        """The tasks to look at for `cursor`, and the next cursor."""
        now = self.clock()
        if (cursor is None or cursor["epoch"] != self.epoch
                or cursor["after"] < self.forgotten.get(owner, 0)):
            return list(self.owned(owner)), self._cursor(now)
        after, positions_at = cursor["after"], cursor["positions_at"]
        log = self.touched.get(owner, {})
        task_ids = [task_id for task_id, _ in itertools.takewhile(
            lambda touch: touch[1] > after, reversed(log.items()))]
        if self.moved_at > positions_at and now - positions_at >= POSITIONS_EVERY_S:
            task_ids += self._front(owner)
            positions_at = now
        return list(dict.fromkeys(task_ids)), self._cursor(positions_at)

    def _cursor(self, positions_at: float) -> dict:
        return {"epoch": self.epoch, "after": self.version, "positions_at": positions_at}

    def _front(self, owner: str) -> list[str]:
        """The owner's first `POSITIONS_SHOWN` queued tasks (by when they were held)."""
        queued = (task_id for task_id in self.owned(owner)
                  if self.view(task_id)["queue_position"] is not None)
        return list(itertools.islice(queued, POSITIONS_SHOWN))

    async def _views(self, task_ids: list[str]) -> list[dict]:
        """The views of those tasks still in the journal (old rows go, `records_ttl_s`),
        `VIEWS_PER_STEP` a step: a change meanwhile comes after the answer's cursor, so the next
        answer has it."""
        views = []
        for number, task_id in enumerate(task_ids, 1):
            with contextlib.suppress(TaskNotFound):
                views.append(self.view(task_id))
            if number % VIEWS_PER_STEP == 0:
                await asyncio.sleep(0)
        return views
