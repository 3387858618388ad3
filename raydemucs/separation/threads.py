"""The intra-op threads of this process's forward passes: a CPU worker's own cores, plus the
cores of idle workers beside it that the scheduler lends it (`raydemucs.scheduler.lending`).

OpenMP keeps the thread count per calling thread, so each thread that runs a forward pass sets it
before the pass whenever the lend changed: a lend, or its end, takes effect at the next segment.
"""
from __future__ import annotations

import threading

import torch


class ComputeThreads:
    """`own` threads (none set: torch's default, untouched) and `lent` ones on top."""

    def __init__(self):
        self.own: int | None = None
        self.lent = 0
        self.in_use: int | None = None  # the threads of the last pass, as torch reported them
        self._local = threading.local()

    def configure(self, own: int) -> None:
        self.own = max(1, own)
        torch.set_num_threads(self.own)

    def lend(self, extra: int) -> None:
        self.lent = max(0, extra)

    @property
    def wanted(self) -> int | None:
        return None if self.own is None else self.own + self.lent

    def use(self) -> None:
        """Run the calling thread's next passes on `own + lent` threads."""
        wanted = self.wanted
        if wanted is not None and getattr(self._local, "threads", None) != wanted:
            torch.set_num_threads(wanted)
            self._local.threads = wanted
        self.in_use = torch.get_num_threads()


COMPUTE = ComputeThreads()
