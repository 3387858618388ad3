"""What the event streams wait on: a change of any task, and the tasks whose files just went.

`watch` answers as soon as one task's view differs from what the caller last saw;
`watch_tasks` as soon as any of an owner's tasks does (the stream of all of a caller's tasks).
Expirations are numbered, so that each stream hears of each expired task once (by a cursor).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Callable, Iterable

from ..core.errors import TaskNotFound
from ..core.task import TaskState

RECENTLY_EXPIRED = 1000  # expired tasks remembered for the streams that watch them


class Watchers:
    """`view(task_id)` is a task as clients see it; `owned(owner)` the ids of an owner's
    unfinished tasks."""

    def __init__(self, view: Callable[[str], dict], owned: Callable[[str], Iterable[str]]):
        self.view, self.owned = view, owned
        self._change = asyncio.Event()  # set, and replaced, whenever tasks may have changed
        # ended tasks whose files just went -> (their number among expirations, owner)
        self.expirations: dict[str, tuple[int, str]] = {}
        self.expired_count = 0

    def changed(self) -> None:
        """Wake every watcher: a task's state, progress or place may have changed."""
        self._change.set()
        self._change = asyncio.Event()

    def expired(self, task_id: str, owner: str) -> None:
        """A finished task's files went: its watchers hear of it."""
        self.expired_count += 1
        self.expirations.pop(task_id, None)
        self.expirations[task_id] = (self.expired_count, owner)
        while len(self.expirations) > RECENTLY_EXPIRED:
            del self.expirations[next(iter(self.expirations))]
        self.changed()

    async def _wait(self, deadline: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._change.wait(), deadline - time.monotonic())

    async def watch(self, task_id: str, seen: dict | None, timeout_s: float) -> dict:
        """The task's view as soon as it differs from `seen` (or is terminal), else after
        `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.view(task_id)
            if (view != seen or TaskState(view["state"]).is_terminal()
                    or time.monotonic() >= deadline):
                return view
            await self._wait(deadline)

    async def watch_tasks(self, owner: str, seen: dict[str, dict], timeout_s: float,
                          expired_after: int | None) -> dict:
        """`{"views", "expired_after"}`: the views of `owner`'s tasks that differ from `seen`
        (task id -> the view last sent), oldest first, as soon as one does, else none after
        `timeout_s`. Those are its unfinished tasks, those `seen` holds unfinished (which may
        have ended), and those whose files went since the expiration `expired_after` (None:
        from now on), the cursor for the next call."""
        deadline = time.monotonic() + timeout_s
        if expired_after is None:
            expired_after = self.expired_count
        while True:
            ids = set(self.owned(owner))
            ids.update(task_id for task_id, view in seen.items()
                       if not TaskState(view["state"]).is_terminal())
            ids.update(task_id for task_id, (number, of) in self.expirations.items()
                       if number > expired_after and of == owner)
            changed = [view for view in self._views(ids) if view != seen.get(view["task_id"])]
            if changed or time.monotonic() >= deadline:
                return {"views": sorted(changed, key=lambda view: view["seq"]),
                        "expired_after": self.expired_count}
            await self._wait(deadline)

    def _views(self, task_ids) -> list[dict]:
        """The views of those tasks still in the journal (old rows go, `records_ttl_s`)."""
        views = []
        for task_id in task_ids:
            with contextlib.suppress(TaskNotFound):
                views.append(self.view(task_id))
        return views
