"""The scheduler's queues: ready tasks by (priority, seq), one per pool, and delayed retries by time.

Both are sorted lists keyed by task id: a task pushed again moves (a stale place never comes out
first), and a task's place in its queue is found in O(log n), even 100,000 tasks deep.
"""
from __future__ import annotations

from sortedcontainers import SortedList


class _Ordered:
    """Task ids in the order of their keys, one place per task."""

    def __init__(self) -> None:
        self._order = SortedList()
        self._keys: dict[str, tuple] = {}

    def _put(self, task_id: str, key: tuple) -> None:
        old = self._keys.get(task_id)
        if old == key:
            return
        if old is not None:
            self._order.remove((*old, task_id))
        self._keys[task_id] = key
        self._order.add((*key, task_id))

    def first(self) -> tuple | None:
        """The first `(*key, task_id)`, left in place."""
        return self._order[0] if self._order else None

    def pop(self) -> str | None:
        if not self._order:
            return None
        task_id = self._order.pop(0)[-1]
        del self._keys[task_id]
        return task_id

    def remove(self, task_id: str) -> bool:
        key = self._keys.pop(task_id, None)
        if key is None:
            return False
        self._order.remove((*key, task_id))
        return True

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)


class TaskQueue(_Ordered):
    """Ready tasks, lowest priority number first and FIFO within a priority (by `seq`)."""

    def push(self, task_id: str, priority: int, seq: int) -> None:
        self._put(task_id, (priority, seq))

    def peek_priority(self) -> int | None:
        """The priority of the task `pop` would return, or None when empty."""
        first = self.first()
        return None if first is None else first[0]

    def rank(self, task_id: str) -> int | None:
        """How many tasks `pop` returns before `task_id` (None when it is not here)."""
        key = self._keys.get(task_id)
        return None if key is None else self._order.bisect_left((*key, task_id))


class DelayedTasks(_Ordered):
    """Tasks waiting for their retry time."""

    def push(self, task_id: str, ready_at: float) -> None:
        self._put(task_id, (ready_at,))

    def pop_ready(self, now: float) -> list[str]:
        ready = []
        while (first := self.first()) is not None and first[0] <= now:
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
