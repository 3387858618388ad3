"""Health: what a worker samples about itself, and the rules the pool applies to the samples."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from dataclasses import dataclass
from typing import Callable

import psutil

from ..core.config import WorkersConfig


def sample(process: psutil.Process, device: str) -> dict:
    """RSS, CPU % since the last call, threads, the node's available memory, GPU memory in use."""
    with process.oneshot():
        figures = {"rss_bytes": process.memory_info().rss,
                   "cpu_percent": process.cpu_percent(None),
                   "num_threads": process.num_threads()}
    figures["node_available_bytes"] = psutil.virtual_memory().available
    figures["gpu_memory_bytes"] = None
    if device.startswith("cuda"):
        import torch

        figures["gpu_memory_bytes"] = torch.cuda.memory_reserved()
    return figures


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, or None (another C library, another system)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim(0)`; a no-op
    elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class MemoryReleases:
    """`release_free_memory` at most once per `every_s`: a trim after a big free takes tens of
    milliseconds, which a worker of one-second clips would pay on every task."""

    def __init__(self, every_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.clock, self.last = every_s, clock, None

    def __call__(self) -> bool:
        """Release now if the last release is long enough ago; whether it did."""
        now = self.clock()
        if self.last is not None and now - self.last < self.every_s:
            return False
        self.last = now
        release_free_memory()
        return True


def reset_peak_rss() -> None:
    """Restart this process's peak-RSS count (Linux; a no-op elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int | None:
    """This process's peak RSS since `reset_peak_rss` (VmHWM), or None where unknown."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class HealthPolicy:
    """When to recycle a worker, when to stop feeding one, when to declare one hung."""

    max_rss_mb: float
    min_free_memory_mb: float
    max_missed_pings: int
    max_rss_growth: float = 0.0

    @classmethod
    def from_config(cls, workers: WorkersConfig) -> "HealthPolicy":
        return cls(workers.max_rss_mb, workers.min_free_memory_mb, workers.max_missed_pings,
                   workers.max_rss_growth)

    def rss_limit_bytes(self, first_rss_bytes: int | None) -> float | None:
        """The RSS past which a worker is recycled: `max_rss_mb`, or `1 + max_rss_growth` times
        its RSS after its first task, whichever is lower; None when neither applies."""
        limits = [self.max_rss_mb * 2**20] if self.max_rss_mb else []
        if self.max_rss_growth and first_rss_bytes:
            limits.append(first_rss_bytes * (1 + self.max_rss_growth))
        return min(limits, default=None)

    def too_big(self, rss_bytes: int | None, first_rss_bytes: int | None = None) -> bool:
        """RSS after a task above the limit: recycle the worker once its tasks are done."""
        limit = self.rss_limit_bytes(first_rss_bytes)
        return limit is not None and rss_bytes is not None and rss_bytes > limit

    def node_has_room(self, available_bytes: int | None) -> bool:
        """Dispatch only while the worker's node keeps this much memory free."""
        return available_bytes is None or available_bytes >= self.min_free_memory_mb * 2**20

    def hung(self, missed_pings: int) -> bool:
        return missed_pings >= self.max_missed_pings
