"""The frozen heap: a full collection walks only what a step has not frozen yet, a frozen object
is still freed with its last reference, and a thaw frees the cycles that died frozen."""
from __future__ import annotations

import asyncio
import gc
import weakref

from raydemucs.core import heap
from raydemucs.core.heap import FrozenHeap

from fakes import FakeClock


class Node:
    """An object the collector tracks (a cycle when it refers to itself)."""


def test_steps_freeze_what_lives_on_and_a_thaw_frees_the_cycles_that_died_frozen():
    clock = FakeClock()
    frozen = FrozenHeap(clock=clock)
    try:
        asyncio.run(frozen.step())  # the first step thaws: a full pass, then all is frozen
        kept = [Node() for _ in range(200_000)]  # far more than the process held
        asyncio.run(frozen.step())
        assert gc.get_freeze_count() >= frozen.fewest + 200_000 - 100  # frozen, not walked
        gone = weakref.ref(kept[0])
        del kept[0]
        assert gone() is None  # a frozen object goes with its last reference
        cycle = Node()
        cycle.self = cycle
        died = weakref.ref(cycle)
        asyncio.run(frozen.step())
        del cycle
        gc.collect()
        assert died() is not None  # a frozen cycle is not walked by a full pass
        clock.advance(heap.THAW_EVERY_S)
        asyncio.run(frozen.step())  # counted, far above the fewest: no thaw
        assert died() is not None
        del kept
        asyncio.run(frozen.step())  # not counted again before THAW_EVERY_S
        assert died() is not None
        clock.advance(heap.THAW_EVERY_S)
        asyncio.run(frozen.step())  # near the fewest again: the thaw frees it
        assert died() is None
    finally:
        gc.unfreeze()
