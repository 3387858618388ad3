"""Shared pieces of the benchmarks that run a whole service (Ray, scheduler, HTTP) in-process."""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Callable

import benchlib
import psutil


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def latency(seconds: list[float]) -> dict:
    """Count, p50 and p99 in milliseconds."""
    return {"n": len(seconds), "p50_ms": 1000 * (benchlib.percentile(seconds, 50) or 0),
            "p99_ms": 1000 * (benchlib.percentile(seconds, 99) or 0)}


def private_bytes(proc: psutil.Process) -> int:
    """The process's own memory (USS): RSS without the pages it shares, such as Ray's object
    store, which every process that reads an object maps."""
    return proc.memory_full_info().uss


def ray_processes(roles: dict[str, str]) -> dict[str, psutil.Process]:
    """Processes under this one (which started its Ray) whose title starts with a key of
    `roles` (Ray titles an actor's process `ray::CLASS`), by their role."""
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        role = next((name for prefix, name in roles.items() if title.startswith(prefix)), None)
        if role:
            found[role] = proc
    return found


def report(result: dict, out: Path, print_table: Callable[[dict], None]) -> None:
    """Keep the run's figures as JSON in `out`, and print them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nJSON: {out}")
