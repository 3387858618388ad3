"""A process's long-lived objects kept out of CPython's full garbage collections.

A full collection walks every object the collector tracks, and holds the process (its event
loop) meanwhile: the scheduler with 100,000 tasks queued tracks about 800,000 objects, and each
full pass held its loop 250-300 ms (`bench/dataplane.py streams`), every few seconds while event
streams or a batch cancel ran. `FrozenHeap.step`, run every `STEP_S` on the loop, collects what
is not frozen yet (what was made since the last step and lives on: a pass over a few thousand
objects) and then freezes what survived it (`gc.freeze`): no later collection, automatic or not,
walks those again.

A frozen object is still freed when its last reference goes (a finished task's record, a
stream's answered wait). What a full pass would find and a frozen heap keeps is a reference
cycle that became garbage after it was frozen: `thaw` (a full pass over everything, as long as
before) frees those. Every `THAW_EVERY_S` a step counts the frozen objects (a walk over them all:
not at every step) and thaws when they are near the fewest counted so far (`THAW_NEAR` times):
when a full pass is short again, e.g. once the queue has drained.
"""
from __future__ import annotations

import gc
import time
from typing import Callable

STEP_S = 0.25  # a step walks what was made in this long: a few ms
THAW_EVERY_S = 600.0
THAW_NEAR = 1.25


class FrozenHeap:
    """What a process keeps for long, frozen out of the collector's passes a step at a time."""

    def __init__(self, step_s: float = STEP_S, clock: Callable[[], float] = time.monotonic):
        self.step_s, self.clock = step_s, clock
        self.fewest: int | None = None  # the fewest objects counted frozen
        self.counted_at = float("-inf")

    async def step(self) -> float:
        """Collect the objects not frozen and freeze those that survived, or thaw when due; the
        wait until the next step (a `Supervisor.forever` step)."""
        if self.clock() - self.counted_at < THAW_EVERY_S:
            gc.collect()
            gc.freeze()
            return self.step_s
        self.counted_at = self.clock()
        frozen = gc.get_freeze_count()
        if self.fewest is None or frozen <= THAW_NEAR * self.fewest:
            self.thaw()
            frozen = gc.get_freeze_count()
        self.fewest = frozen if self.fewest is None else min(self.fewest, frozen)
        return self.step_s

    def thaw(self) -> int:
        """Unfreeze everything, collect it all (one long pass) and freeze what is left; the
        objects it freed."""
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        return freed
