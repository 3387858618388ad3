"""Cores lent between CPU workers on one node.

A worker with no task has nothing waiting in its pool (or dispatch would have given it one), so
its cores would sit idle: while that lasts they go to the busy CPU workers on its node as extra
intra-op threads (`raydemucs.separation.engine.COMPUTE`). One song alone, or the last of a
batch, then runs on every core, as the demucs CLI does. The lend ends at the next poll once the
lender has a task again (it takes effect at the borrower's next segment). GPU workers neither
lend nor borrow.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Protocol


class Lender(Protocol):
    worker_id: str
    pool: str
    state: str
    node: str | None
    device: str | None
    recycling: str | None
    tasks: dict


def lent_threads(slots: Iterable[Lender], threads_of: Callable[[str], int]) -> dict[str, int]:
    """Worker id -> threads lent to it: its node's idle workers' threads (`threads_of(pool)`
    each), shared evenly between the node's busy workers (the remainder to the first by id)."""
    idle: dict[str, int] = defaultdict(int)
    busy: dict[str, list[str]] = defaultdict(list)
    for slot in slots:
        if slot.device != "cpu" or slot.node is None:
            continue
        if slot.state == "idle" and not slot.tasks and slot.recycling is None:
            idle[slot.node] += threads_of(slot.pool)
        elif slot.state == "busy":
            busy[slot.node].append(slot.worker_id)
    lent = {}
    for node, borrowers in busy.items():
        share, extra = divmod(idle[node], len(borrowers))
        for index, worker_id in enumerate(sorted(borrowers)):
            lent[worker_id] = share + (index < extra)
    return lent
