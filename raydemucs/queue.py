"""The scheduler's heaps: ready tasks by (priority, seq), one per pool, and delayed retries by time.

Both use heapq's entry-invalidation pattern: removing a task, or pushing it again at another place,
marks its old entry dead, so a stale entry never comes out first.
"""
from __future__ import annotations

import heapq
import itertools

_REMOVED = None  # the task id of a dead entry


class _Heap:
    """A heap of `[key..., count, task_id]` entries, one live entry per task."""

    def __init__(self) -> None:
        self._heap: list[list] = []
        self._entries: dict[str, list] = {}
        self._count = itertools.count()

    def push(self, task_id: str, *key) -> None:
        """Put `task_id` at `key`; an earlier entry of the task is dropped."""
        old = self._entries.get(task_id)
        if old is not None:
            if old[:-2] == list(key):
                return
            old[-1] = _REMOVED
        entry = [*key, next(self._count), task_id]
        self._entries[task_id] = entry
        heapq.heappush(self._heap, entry)

    def _drop_dead(self) -> None:
        while self._heap and self._heap[0][-1] is _REMOVED:
            heapq.heappop(self._heap)

    def first(self) -> list | None:
        """The live entry with the smallest key, left in place."""
        self._drop_dead()
        return self._heap[0] if self._heap else None

    def pop(self) -> str | None:
        self._drop_dead()
        if not self._heap:
            return None
        task_id = heapq.heappop(self._heap)[-1]
        del self._entries[task_id]
        return task_id

    def remove(self, task_id: str) -> bool:
        entry = self._entries.pop(task_id, None)
        if entry is None:
            return False
        entry[-1] = _REMOVED
        return True

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class TaskQueue(_Heap):
    """Ready tasks, lowest priority number first and FIFO within a priority (by `seq`)."""

    def push(self, task_id: str, priority: int, seq: int) -> None:
        super().push(task_id, priority, seq)

    def rank(self, task_id: str) -> int | None:
        """How many tasks `pop` returns before `task_id` (None when it is not here)."""
        entry = self._entries.get(task_id)
        if entry is None:
            return None
        return sum(other[:2] < entry[:2] for other in self._entries.values())

    def peek_priority(self) -> int | None:
        """The priority of the task `pop` would return, or None when empty."""
        entry = self.first()
        return None if entry is None else entry[0]


class DelayedTasks(_Heap):
    """Tasks waiting for their retry time."""

    def push(self, task_id: str, ready_at: float) -> None:
        super().push(task_id, ready_at)

    def pop_ready(self, now: float) -> list[str]:
        ready = []
        while (entry := self.first()) is not None and entry[0] <= now:
            ready.append(self.pop())
        return ready


class PoolQueues:
    """One `TaskQueue` per worker pool; `len` counts every queued task."""

    def __init__(self, pools) -> None:
        self._queues = {name: TaskQueue() for name in pools}

    def __getitem__(self, pool: str) -> TaskQueue:
        return self._queues[pool]

    def remove(self, task_id: str) -> bool:
        return any([queue.remove(task_id) for queue in self._queues.values()])

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())
