"""Health: what a worker samples about itself, and the rules the pool applies to the samples."""
from __future__ import annotations

from dataclasses import dataclass

import psutil

from .config import WorkersConfig


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

    @classmethod
    def from_config(cls, workers: WorkersConfig) -> "HealthPolicy":
        return cls(workers.max_rss_mb, workers.min_free_memory_mb, workers.max_missed_pings)

    def too_big(self, rss_bytes: int | None) -> bool:
        """RSS above the limit: recycle the worker once it is idle (0 turns this off)."""
        return bool(self.max_rss_mb) and rss_bytes is not None and rss_bytes > self.max_rss_mb * 2**20

    def node_has_room(self, available_bytes: int | None) -> bool:
        """Dispatch only while the worker's node keeps this much memory free."""
        return available_bytes is None or available_bytes >= self.min_free_memory_mb * 2**20

    def hung(self, missed_pings: int) -> bool:
        return missed_pings >= self.max_missed_pings
