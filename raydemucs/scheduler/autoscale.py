"""Pool sizing: grow a pool while tasks wait with no free worker, shrink it after idle time.

A worker that is not live yet (starting, or pending because no node has its resources) is never
free for dispatch, but it is counted as the answer to one waiting task, so the pool does not grow
again for that task. Its resource demand is what lets Ray's autoscaler add a node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..core.pools import PoolConfig

LIVE_STATES = ("idle", "busy")


class Member(Protocol):
    worker_id: str
    state: str
    load: int


@dataclass(frozen=True)
class ScalePlan:
    add: int = 0
    remove: tuple[str, ...] = ()


class Autoscaler:
    """Plans each pool's size; remembers since when each worker has held no task."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._idle_since: dict[str, float] = {}

    def plan(self, pool: PoolConfig, members: list[Member], waiting: int) -> ScalePlan:
        """`waiting`: the pool's queued tasks that found no free worker.

        Grow to `min_workers`, and by one worker per waiting task not already answered by a
        pending worker, up to `max_workers`. With nothing waiting, remove workers that held no
        task for `idle_timeout_s` (pending ones first), down to `min_workers`.
        """
        now = self.clock()
        for member in members:
            if member.load:
                self._idle_since.pop(member.worker_id, None)
            else:
                self._idle_since.setdefault(member.worker_id, now)
        pending = sum(member.state not in LIVE_STATES for member in members)
        room = pool.max_workers - len(members)
        add = min(room, max(pool.min_workers - len(members), waiting - pending))
        if add > 0:
            return ScalePlan(add=add)
        if waiting:
            return ScalePlan()
        idle = sorted((m for m in members if not m.load
                       and now - self._idle_since[m.worker_id] >= pool.idle_timeout_s),
                      key=lambda m: (m.state in LIVE_STATES, self._idle_since[m.worker_id]))
        remove = tuple(m.worker_id for m in idle[:max(0, len(members) - pool.min_workers)])
        for worker_id in remove:
            del self._idle_since[worker_id]
        return ScalePlan(remove=remove)
