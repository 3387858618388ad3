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
    pool: str = "default"
    state: str = "idle"  # added workers are "starting" until `ready`; live ones stay "idle"
    node: str = "node-a"
    models: frozenset = frozenset()
    tasks: list = field(default_factory=list)
    lent_to: str | None = None

    @property
    def load(self) -> int:
        return len(self.tasks)

    @property
    def busy_with(self) -> tuple | None:
        return self.tasks[0] if self.tasks else None


@dataclass
class FakePool:
    """Implements the scheduler's Pool protocol in memory; tests finish tasks by hand.

    A worker holds as many tasks as its pool's `tasks_per_worker`: the real pool's rule.
    """

    capacities: dict  # pool name -> tasks per worker
    workers: dict = field(default_factory=dict)
    started: list = field(default_factory=list)
    aborted: list = field(default_factory=list)
    replaced: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    lent: list = field(default_factory=list)
    specs: list = field(default_factory=list)

    @classmethod
    def of(cls, config, count: int = 0) -> "FakePool":
        """A pool for `config`'s pools, with `count` live workers in the default one."""
        capacities = {pool.name: pool.tasks_per_worker for pool in config.worker_pools()}
        return cls(capacities, {f"worker-{i}": FakeWorker(f"worker-{i}") for i in range(count)})

    def free_workers(self, pool):
        free = [w for w in self.members(pool)
                if w.state == "idle" and w.load < self.capacities[pool] and w.lent_to is None]
        return sorted(free, key=lambda w: w.load)

    def members(self, pool):
        return [w for w in self.workers.values() if w.pool == pool]

    def add_workers(self, pool, count):
        for _ in range(count):
            worker_id = next(f"{pool}-worker-{i}" for i in range(len(self.workers) + 1)
                             if f"{pool}-worker-{i}" not in self.workers)
            self.workers[worker_id] = FakeWorker(worker_id, pool, state="starting")

    def remove(self, worker_id):
        assert not self.workers[worker_id].tasks, "removed a worker with a task in it"
        self.removed.append(worker_id)
        del self.workers[worker_id]

    def ready(self, pool):
        """Every starting worker of `pool` comes up."""
        for worker in self.members(pool):
            worker.state = "idle"

    def start(self, worker_id, spec, attempt, reuse_from=None, helpers=()):
        self.workers[worker_id].tasks.append((spec.task_id, attempt))
        self.started.append((worker_id, spec.task_id, attempt))
        self.specs.append(spec)
        self.reused.append(reuse_from)
        for helper in helpers:
            self.workers[helper].lent_to = spec.task_id
            self.lent.append((helper, spec.task_id))

    def release(self, worker_ids, task_id):
        for worker_id in worker_ids:
            if self.workers[worker_id].lent_to == task_id:
                self.workers[worker_id].lent_to = None

    def abort(self, worker_id, task_id, attempt):
        self.aborted.append((worker_id, task_id))

    def replace(self, worker_id, reason):
        self.replaced.append((worker_id, reason))
        self.workers[worker_id].tasks.clear()

    def free(self, worker_id):
        self.workers[worker_id].tasks.pop(0)

    def started_ids(self) -> list[str]:
        return [task_id for _, task_id, _ in self.started]


class FakeServicePool(FakePool):
    """`FakePool` with the calls the service actor makes besides the scheduler's: the test plays
    the workers by calling `service.core.attempt_ended` (or the service's result handler)."""

    async def poll(self) -> list[dict]:
        return []

    def snapshot(self) -> list[dict]:
        return [{"worker_id": w.worker_id, "pool": w.pool, "state": w.state, "restarts": 0,
                 "stems": {}, "models": [], "rss_bytes": None, "cpu_percent": None}
                for w in self.workers.values()]

    def shutdown(self) -> None:
        pass
