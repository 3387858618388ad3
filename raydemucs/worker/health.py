"""Health: what a worker measures of itself, and the rules the pool applies to the figures.

A worker's memory grows for two reasons that look alike in its RSS. A working set grows with what
its tasks need (a longer input decodes and separates in more memory; allocators, thread pools
and torch's caches keep their high-water mark), and then stays. A leak grows with the number of
tasks, whatever their size. `MemoryTrend` tells them apart: it judges the worker's RSS at rest
(when an attempt leaves the model, right after free heap went back to the system: `TurnMemory`),
against the RSS at rest after tasks of a similar length, taken after a warm-up and taken again
whenever an input longer than any before raised the high-water mark. `HealthPolicy` adds the
absolute ceiling and the rules for dispatch and hung workers.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

from ..core.config import WorkersConfig

WARMUP_TASKS = 10   # before a baseline: allocators and thread pools reach their working size
LEAK_SAMPLES = 3    # samples at rest in a row over the growth limit: a leak, not one task's noise
REST_EVERY_S = 5.0  # the most often a worker hands free heap back and measures itself at rest


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


# -- what a worker does about its own memory --------------------------------------------------
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


class Every:
    """True at most once per `every_s` (the first time, and whenever forced)."""

    def __init__(self, every_s: float = REST_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.clock, self.last = every_s, clock, None

    def __call__(self, force: bool = False) -> bool:
        now = self.clock()
        if not force and self.last is not None and now - self.last < self.every_s:
            return False
        self.last = now
        return True


class MemoryReleases(Every):
    """`release_free_memory` at most once per `every_s`: a trim after a big free takes tens of
    milliseconds, which a worker of one-second clips would pay on every task."""

    def __call__(self, force: bool = False) -> bool:
        """Release now if forced or the last release is long enough ago; whether it did."""
        if not super().__call__(force):
            return False
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


class TurnMemory:
    """What a worker measures around each turn of its model (`separation.strategies.MemoryMeter`):
    the turn's peak RSS, and, at most every `every_s`, its RSS at rest as the turn ends: no
    attempt runs the model then, and free heap has just gone back to the system (unless the
    worker keeps it, `workers.release_memory: false`)."""

    def __init__(self, process: psutil.Process, release: bool, every_s: float = REST_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.process, self.release = process, release
        self.due = Every(every_s, clock)

    def reset(self) -> None:
        reset_peak_rss()

    def read(self) -> int | None:
        return peak_rss_bytes()

    def at_rest(self) -> int | None:
        """The RSS at rest, when one is due; None otherwise."""
        if not self.due():
            return None
        if self.release:
            release_free_memory()
        return self.process.memory_info().rss


def rss_ceiling_bytes(max_rss_mb: float, memory_mb: float) -> float | None:
    """The absolute ceiling on a worker's RSS: `max_rss_mb`, or the memory Ray reserves for it
    (`memory_mb`), the lower of those set; None when neither is."""
    return min((mb * 2**20 for mb in (max_rss_mb, memory_mb) if mb), default=None)


# -- the pool's rules -------------------------------------------------------------------------
def _mb(size: float) -> str:
    return f"{size / 2**20:.0f} MB"


def length_class(input_s: float) -> int:
    """Inputs of similar length share a class: octaves of seconds (up to 1 s, 2 s, 4 s, ...)."""
    return max(0, math.ceil(math.log2(max(input_s, 1e-3))))


@dataclass
class MemoryTrend:
    """One worker's memory after its tasks, judged for a leak (see the module's docstring).

    A sample at rest is compared with the first sample at rest, after the worker's first
    `WARMUP_TASKS` tasks, that followed a task of the same `length_class` (the length decides
    what the task leaving the model still holds). An input longer than any before drops every
    baseline: the high-water mark moved. A worker is recycled when `LEAK_SAMPLES` samples in a
    row are more than `growth` above their baselines, or any RSS after a task is above
    `ceiling_bytes`.
    """

    growth: float
    ceiling_bytes: float | None
    tasks: int = 0
    longest_s: float = 0.0
    baselines: dict = field(default_factory=dict)  # length class -> bytes at rest
    over: int = 0      # samples in a row above the growth limit
    judged: int = 0    # samples compared with a baseline
    highest: float = 0.0  # the highest of them, as a multiple of its baseline

    def to_dict(self) -> dict:
        return {"longest_s": self.longest_s, "judged": self.judged,
                "highest_ratio": round(self.highest, 3),
                "baselines": {f"{2 ** key:g}s": size for key, size in self.baselines.items()}}

    def rebase(self) -> None:
        """The working set may have grown (a piece of another task's track ran here): the next
        samples set new baselines."""
        self.baselines.clear()
        self.over = 0

    def add(self, rss_bytes: int, rest_bytes: int | None = None,
            input_s: float | None = None) -> str | None:
        """Record a task's figures: the RSS after it, its sample at rest (if one was taken), the
        seconds of input it separated (None when it separated nothing). Returns the reason to
        recycle the worker, or None."""
        self.tasks += 1
        if self.ceiling_bytes is not None and rss_bytes > self.ceiling_bytes:
            return f"RSS {_mb(rss_bytes)} over its ceiling of {_mb(self.ceiling_bytes)}"
        if input_s is None:
            return None
        if input_s > self.longest_s:
            self.longest_s = input_s
            self.rebase()
        if rest_bytes is None or not self.growth or self.tasks <= WARMUP_TASKS:
            return None
        key = length_class(input_s)
        if key not in self.baselines:
            self.baselines[key] = rest_bytes
            return None
        baseline = self.baselines[key]
        self.judged += 1
        self.highest = max(self.highest, rest_bytes / baseline)
        limit = baseline * (1 + self.growth)
        self.over = self.over + 1 if rest_bytes > limit else 0
        if self.over < LEAK_SAMPLES:
            return None
        return (f"RSS at rest {_mb(rest_bytes)}, over {1 + self.growth:g}x its baseline of "
                f"{_mb(baseline)} for inputs like this one ({input_s:.0f} s), {self.over} "
                "samples in a row: a leak")


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

    def memory_trend(self, memory_mb: float = 0) -> MemoryTrend:
        """A fresh worker's trend, its ceiling `max_rss_mb` or its pool's `memory_mb`."""
        return MemoryTrend(self.max_rss_growth, rss_ceiling_bytes(self.max_rss_mb, memory_mb))

    def node_has_room(self, available_bytes: int | None) -> bool:
        """Dispatch only while the worker's node keeps this much memory free."""
        return available_bytes is None or available_bytes >= self.min_free_memory_mb * 2**20

    def hung(self, missed_pings: int) -> bool:
        return missed_pings >= self.max_missed_pings
