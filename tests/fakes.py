"""Fakes for the scheduler's unit tests: a clock that moves when told, a pool that records."""
from __future__ import annotations

from dataclasses import dataclass, field


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeWorker:
    worker_id: str
    node: str = "node-a"
    models: frozenset = frozenset()
    busy_with: tuple | None = None


@dataclass
class FakePool:
    """Implements the scheduler's Pool protocol in memory; tests finish tasks by hand."""

    workers: dict = field(default_factory=dict)
    started: list = field(default_factory=list)
    aborted: list = field(default_factory=list)
    replaced: list = field(default_factory=list)
    reused: list = field(default_factory=list)

    @classmethod
    def with_workers(cls, count: int, models: frozenset = frozenset()) -> "FakePool":
        return cls({f"worker-{i}": FakeWorker(f"worker-{i}", models=models) for i in range(count)})

    def idle_workers(self):
        return [w for w in self.workers.values() if w.busy_with is None]

    def start(self, worker_id, spec, attempt, reuse_from=None):
        self.workers[worker_id].busy_with = (spec.task_id, attempt)
        self.started.append((worker_id, spec.task_id, attempt))
        self.reused.append(reuse_from)

    def abort(self, worker_id, task_id):
        self.aborted.append((worker_id, task_id))

    def replace(self, worker_id, reason):
        self.replaced.append((worker_id, reason))
        self.workers[worker_id].busy_with = None

    def free(self, worker_id):
        self.workers[worker_id].busy_with = None

    def started_ids(self) -> list[str]:
        return [task_id for _, task_id, _ in self.started]
