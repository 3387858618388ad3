"""The scheduler's heaps: ready tasks by (priority, seq), one per pool, and delayed retries by time."""
from __future__ import annotations

import heapq


class TaskQueue:
    """Ready tasks, lowest priority number first and FIFO within a priority (by `seq`)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._queued: set[str] = set()

    def push(self, task_id: str, priority: int, seq: int) -> None:
        if task_id in self._queued:
            return
        self._queued.add(task_id)
        heapq.heappush(self._heap, (priority, seq, task_id))

    def pop(self) -> str | None:
        while self._heap:
            _, _, task_id = heapq.heappop(self._heap)
            if task_id in self._queued:
                self._queued.discard(task_id)
                return task_id
        return None

    def peek_priority(self) -> int | None:
        """The priority of the task `pop` would return, or None when empty."""
        while self._heap and self._heap[0][2] not in self._queued:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def remove(self, task_id: str) -> bool:
        """Drop a task (lazily: its heap entry is skipped when reached)."""
        found = task_id in self._queued
        self._queued.discard(task_id)
        return found

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._queued

    def __len__(self) -> int:
        return len(self._queued)


class DelayedTasks:
    """Tasks waiting for their retry time."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._waiting: set[str] = set()

    def push(self, task_id: str, ready_at: float) -> None:
        self._waiting.add(task_id)
        heapq.heappush(self._heap, (ready_at, task_id))

    def pop_ready(self, now: float) -> list[str]:
        ready = []
        while self._heap and self._heap[0][0] <= now:
            _, task_id = heapq.heappop(self._heap)
            if task_id in self._waiting:
                self._waiting.discard(task_id)
                ready.append(task_id)
        return ready

    def remove(self, task_id: str) -> bool:
        found = task_id in self._waiting
        self._waiting.discard(task_id)
        return found

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)


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
