"""The worker pools: Ray actors created from config, explicit idle/busy, kill-and-replace.

Workers are created here, in one place, as `ray.remote(SeparatorWorker)` (`WORKER_ACTOR`), with
the resources of their pool (`config.worker_pools()`). A dead actor never returns to the pool: its slot gets a
fresh actor (which reloads the model) under a new name. Slots are added and removed as the
scheduler sizes the pools; an actor Ray cannot place yet stays `starting` without blocking
anything.

Each live worker is polled every tick, on its own: at most one poll is out per worker, its answer
is applied when it comes, and a tick never waits for a slow worker. One that leaves
`max_missed_pings` polls unanswered (a poll out for longer than `ping_timeout_s` counts as one
more) is hung, and reported lost. After each attempt the worker's memory is judged
(`worker.health.MemoryTrend`): one over its ceiling, or leaking, finishes what it holds and is
replaced.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError, RayError

from ..core.actors import NAMESPACE
from ..core.config import Config
from ..core.errors import InternalError
from ..core.pools import DEFAULT_POOL, PoolConfig
from ..core.task import TaskSpec
from ..storage.uploads import UploadSource
from ..worker.actor import CONTROL, CONTROL_CALLS, SeparatorWorker
from ..worker.health import HealthPolicy, MemoryTrend
from .lending import lent_threads
from .supervision import Supervisor

logger = logging.getLogger(__name__)

RESPAWN_DELAY_S = 1.0
WORKER_ACTOR = ray.remote(concurrency_groups={CONTROL: CONTROL_CALLS})(SeparatorWorker)


@dataclass
class WorkerSlot:
    """One place in the pool and what is known of the actor in it."""

    worker_id: str
    pool: str = DEFAULT_POOL
    handle: Any = None
    actor_name: str = ""
    state: str = "starting"  # starting, idle, busy, restarting, dead
    tasks: dict = field(default_factory=dict)  # task id -> attempt, in dispatch order
    lent_to: str | None = None  # the task whose long track this worker helps separate
    node: str | None = None
    pid: int | None = None
    models: frozenset = frozenset()
    stems: dict = field(default_factory=dict)  # model name -> the stems it makes
    device: str | None = None
    load_error: str | None = None
    rss_bytes: int | None = None
    memory: MemoryTrend | None = None  # its memory after its tasks, judged for a leak
    recycling: str | None = None  # why it gets no more tasks and is replaced once it has none
    cpu_percent: float | None = None
    num_threads: int | None = None
    lent_threads: int = 0  # idle workers' cores it may use on top of its own (`lending`)
    threads: int | None = None  # the intra-op threads of its last forward pass, as last polled
    node_available_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    missed_pings: int = 0
    poll_sent_at: float | None = None  # when the poll still out was sent
    tasks_done: int = 0
    tasks_failed: int = 0
    restarts: int = 0
    started_at: float = field(default_factory=time.time)
    last_poll_at: float | None = None

    @property
    def load(self) -> int:
        return len(self.tasks)

    def to_dict(self) -> dict:
        return {"worker_id": self.worker_id, "pool": self.pool, "actor_name": self.actor_name,
                "state": self.state, "lent_to": self.lent_to,
                "task_id": next(iter(self.tasks), None), "tasks": list(self.tasks),
                "node": self.node, "pid": self.pid,
                "models": sorted(name for name, _ in self.models), "stems": self.stems,
                "device": self.device,
                "load_error": self.load_error, "rss_bytes": self.rss_bytes,
                "memory": self.memory and self.memory.to_dict(), "recycling": self.recycling,
                "cpu_percent": self.cpu_percent, "num_threads": self.num_threads,
                "threads": self.threads, "lent_threads": self.lent_threads,
                "node_available_bytes": self.node_available_bytes,
                "gpu_memory_bytes": self.gpu_memory_bytes, "missed_pings": self.missed_pings,
                "tasks_done": self.tasks_done, "tasks_failed": self.tasks_failed,
                "restarts": self.restarts, "uptime_s": time.time() - self.started_at}


def worker_id(pool: str, index: int) -> str:
    """`worker-i` in the default pool (the only one when none is configured), `POOL-worker-i`
    in the others."""
    return f"worker-{index}" if pool == DEFAULT_POOL else f"{pool}-worker-{index}"


def worker_config(config: Config, pool: PoolConfig) -> dict:
    """The config a worker of `pool` gets: the pool's CPUs (torch threads) and GPUs (device), and
    as the model to load at start the config's default if the pool serves it, else its first."""
    workers = config.workers.model_copy(update={
        "num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus, "memory_mb": pool.memory_mb,
        "batch_size": pool.batch_size, "prefetch": pool.prefetch})
    separation = config.separation
    if pool.models and separation.model not in pool.models:
        separation = separation.model_copy(update={"model": pool.models[0]})
    return config.model_copy(update={"workers": workers, "separation": separation}).to_dict()


class RayWorkerPool:
    """Implements the scheduler's `Pool` with Ray actors; reports back through callbacks."""

    def __init__(self, config: Config, on_ready: Callable[[], None],
                 on_result: Callable[[str, int, dict], None],
                 on_lost: Callable[[str, str], None], supervisor: Supervisor | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.policy = HealthPolicy.from_config(config.workers)
        self.ping_timeout_s = max(5.0, 10 * config.service.poll_interval_s)
        self.clock = clock
        self.prefix = config.service.name
        self.on_ready, self.on_result, self.on_lost = on_ready, on_result, on_lost
        self.pools = {pool.name: pool for pool in config.worker_pools()}
        self._worker_configs = {name: worker_config(config, pool) for name, pool in self.pools.items()}
        self.slots: dict[str, WorkerSlot] = {}
        self.supervisor = supervisor or Supervisor()
        self._answers: list[dict] = []  # attempts' progress polled since the last tick

    # -- the scheduler's Pool protocol ------------------------------------------------------
    def free_workers(self, pool: str) -> list[WorkerSlot]:
        """Live workers of `pool` with room for a task (`PoolConfig.tasks_per_worker`), least
        loaded first, on nodes with enough free memory (dispatch pauses instead of an OOM kill);
        none lent to another task's lead, none waiting to be recycled."""
        capacity = self.pools[pool].tasks_per_worker
        free = [slot for slot in self.members(pool) if slot.state in ("idle", "busy")
                and slot.load < capacity and slot.lent_to is None and slot.recycling is None
                and self.policy.node_has_room(slot.node_available_bytes)]
        return sorted(free, key=lambda slot: slot.load)

    def members(self, pool: str) -> list[WorkerSlot]:
        return [slot for slot in self.slots.values() if slot.pool == pool]

    def add_workers(self, pool: str, count: int) -> None:
        """Create `count` workers in `pool`, each in the lowest free place."""
        for _ in range(count):
            name = next(worker_id(pool, i) for i in itertools.count()
                        if worker_id(pool, i) not in self.slots)
            slot = self.slots[name] = WorkerSlot(name, pool)
            self._spawn(slot)

    def remove(self, worker_id: str) -> None:
        """Take a worker out of its pool and end its actor (the scheduler only removes idle ones)."""
        slot = self.slots.pop(worker_id)
        if slot.handle is not None:
            ray.kill(slot.handle, no_restart=True)
        slot.state, slot.handle = "dead", None

    def start(self, worker_id: str, spec: TaskSpec, attempt: int, reuse_from: str | None = None,
              helpers: tuple = ()) -> None:
        """Send an attempt to its worker; `helpers` (idle workers) are lent to it until `release`."""
        slot = self.slots[worker_id]
        slot.state = "busy"
        slot.tasks[spec.task_id] = attempt
        for helper in map(self.slots.get, helpers):
            helper.state, helper.lent_to, helper.tasks[spec.task_id] = "busy", spec.task_id, attempt
        upload = UploadSource.of(self.config.state_path, spec.input_sha256) if spec.uploaded else None
        ref = slot.handle.separate.remote(spec.to_dict(), attempt, reuse_from, upload,
                                          [self.slots[h].handle for h in helpers])
        self.supervisor.spawn("attempt_result", self._run_attempt(slot, slot.handle, ref, spec.task_id, attempt))

    async def _run_attempt(self, slot: WorkerSlot, handle, ref, task_id: str, attempt: int) -> None:
        """Hear an attempt's result (the worker fetches an uploaded input itself, in chunks)."""
        result = await self._await_result(slot, handle, ref)
        if result is not None and slot.handle is handle:
            self._finish_attempt(slot, task_id, attempt, result)

    def release(self, worker_ids: tuple, task_id: str) -> None:
        """Helpers lent to `task_id` are free again (unless replaced since); the piece each ran
        may have raised its memory's high-water mark."""
        for slot in map(self.slots.get, worker_ids):
            if slot is not None and slot.lent_to == task_id:
                slot.lent_to = None
                slot.tasks.pop(task_id, None)
                slot.state = "busy" if slot.tasks else "idle"
                slot.memory.rebase()
                self._replace_if_recycled(slot)

    def abort(self, worker_id: str, task_id: str, attempt: int) -> None:
        slot = self.slots[worker_id]
        if slot.handle is not None:
            slot.handle.abort.options(concurrency_group=CONTROL).remote(task_id, attempt)

    def replace(self, worker_id: str, reason: str) -> None:
        slot = self.slots[worker_id]
        logger.warning("%s: replacing worker (%s)", worker_id, reason)
        if slot.handle is not None:
            ray.kill(slot.handle, no_restart=True)
        slot.restarts += 1
        slot.state, slot.tasks, slot.handle, slot.lent_to = "restarting", {}, None, None
        slot.missed_pings, slot.rss_bytes, slot.cpu_percent = 0, None, None
        slot.poll_sent_at = slot.recycling = None
        self._spawn(slot)

    # -- health and progress ----------------------------------------------------------------
    async def poll(self) -> list[dict]:
        """Send every live worker with no poll out a poll; returns the attempts in flight and their
        progress from the answers that came since the last call. Never waits for a worker.

        A worker whose poll is out counts a missed poll for every `ping_timeout_s` it has been
        out; at `max_missed_pings` it is hung, and reported lost (as is a dead one, when its
        poll fails).
        """
        now = self.clock()
        lent = self._lent_threads()
        for slot in list(self.slots.values()):  # a lost worker's replacement may resize the pool
            if slot.state not in ("idle", "busy") or slot.handle is None:
                continue
            if slot.poll_sent_at is None:
                slot.poll_sent_at, slot.lent_threads = now, lent.get(slot.worker_id, 0)
                ref = slot.handle.poll.options(concurrency_group=CONTROL).remote(slot.lent_threads)
                self.supervisor.spawn("worker_poll", self._hear_poll(slot, slot.handle, ref))
                continue
            slot.missed_pings = int((now - slot.poll_sent_at) // self.ping_timeout_s)
            if self.policy.hung(slot.missed_pings):
                self.on_lost(slot.worker_id, f"it left {slot.missed_pings} health polls unanswered")
        answers, self._answers = self._answers, []
        return answers

    def _lent_threads(self) -> dict[str, int]:
        if not self.config.workers.lend_cores:
            return {}
        return lent_threads(self.slots.values(), lambda pool: self.pools[pool].threads)

    async def _hear_poll(self, slot: WorkerSlot, handle, ref) -> None:
        """A worker's answer to its poll, applied when it comes (unless the worker was replaced
        meanwhile)."""
        try:
            answer = await ref
        except RayActorError:
            if slot.handle is handle:
                self.on_lost(slot.worker_id, "it died")
            return
        finally:
            if slot.handle is handle:
                slot.poll_sent_at = None
        if slot.handle is handle and slot.state in ("idle", "busy"):
            self._record_figures(slot, answer)
            self._answers.extend(answer["tasks"])

    @staticmethod
    def _record_figures(slot: WorkerSlot, answer: dict) -> None:
        slot.missed_pings, slot.last_poll_at = 0, time.time()
        for key in ("rss_bytes", "cpu_percent", "num_threads", "threads", "node_available_bytes",
                    "gpu_memory_bytes", "stems"):
            setattr(slot, key, answer[key])

    def snapshot(self) -> list[dict]:
        return [{**slot.to_dict(),
                 "memory_paused": not self.policy.node_has_room(slot.node_available_bytes)}
                for slot in self.slots.values()]

    def shutdown(self) -> None:
        for slot in self.slots.values():
            if slot.handle is not None:
                ray.kill(slot.handle, no_restart=True)
            slot.state, slot.handle = "dead", None
        self.supervisor.cancel_all()

    # -- internals --------------------------------------------------------------------------
    def _spawn(self, slot: WorkerSlot) -> None:
        pool = self.pools[slot.pool]
        slot.memory = self.policy.memory_trend(pool.memory_mb)
        options = dict(namespace=NAMESPACE, num_cpus=pool.num_cpus, num_gpus=pool.num_gpus,
                       memory=pool.memory_mb * 2**20 or None, resources=pool.resources or None,
                       max_restarts=0, max_task_retries=0, max_concurrency=pool.tasks_per_worker)
        config = self._worker_configs[slot.pool]
        base = f"{self.prefix}:{slot.worker_id}"
        slot.actor_name = base if slot.restarts == 0 else f"{base}.{slot.restarts}"
        try:
            actor = WORKER_ACTOR.options(name=slot.actor_name, **options)
            slot.handle = actor.remote(slot.worker_id, config)
        except ValueError:  # the name is still held by a predecessor (removed, or a restarted
            slot.actor_name = f"{base}.{uuid.uuid4().hex[:6]}"  # scheduler's)
            actor = WORKER_ACTOR.options(name=slot.actor_name, **options)
            slot.handle = actor.remote(slot.worker_id, config)
        slot.started_at = time.time()
        self.supervisor.spawn("worker_start", self._await_ready(slot, slot.handle))

    async def _await_ready(self, slot: WorkerSlot, handle) -> None:
        try:
            info = await handle.ready.options(concurrency_group=CONTROL).remote()
        except RayError as exc:
            if slot.handle is not handle:
                return
            logger.error("%s: failed to start: %s", slot.worker_id, str(exc).splitlines()[0])
            slot.state = "dead"
            await asyncio.sleep(RESPAWN_DELAY_S * min(60, 2 ** slot.restarts))
            if slot.handle is handle:
                self.replace(slot.worker_id, "it failed to start")
            return
        if slot.handle is not handle:
            return
        slot.pid, slot.node, slot.device = info["pid"], info["node"], info["device"]
        slot.models, slot.load_error = frozenset(map(tuple, info["models"])), info["load_error"]
        self._record_figures(slot, info)
        slot.state = "idle"
        logger.info("%s: ready (pid %s)", slot.worker_id, slot.pid)
        self.on_ready()

    async def _await_result(self, slot: WorkerSlot, handle, ref) -> dict | None:
        """The attempt's answer; None when its worker died (and is reported lost)."""
        try:
            result = await ref
        except RayActorError as exc:
            if slot.handle is handle:
                self.on_lost(slot.worker_id, str(exc).splitlines()[0])
            return None
        except Exception as exc:  # a RayError, or a result this process could not take in
            message = str(exc) if isinstance(exc, RayError) else f"{type(exc).__name__}: {exc}"
            result = {"ok": False, "error": InternalError(message.splitlines()[0]).to_dict()}
        return result

    def _finish_attempt(self, slot: WorkerSlot, task_id: str, attempt: int, result: dict) -> None:
        slot.tasks.pop(task_id, None)
        slot.state = "busy" if slot.tasks else "idle"
        slot.models = frozenset(map(tuple, result.get("models", slot.models)))
        if result["ok"]:
            slot.tasks_done += 1
        else:
            slot.tasks_failed += 1
        if result.get("rss_bytes") is not None:
            slot.rss_bytes = result["rss_bytes"]
            separated_s = None if result.get("cached_from") else result.get("duration_s")
            reason = slot.memory.add(slot.rss_bytes, result.get("rest_rss_bytes"), separated_s)
            if reason and slot.recycling is None:
                slot.recycling = reason
                logger.info("%s: recycling once its tasks are done (%s)", slot.worker_id, reason)
        self._replace_if_recycled(slot)
        self.on_result(task_id, attempt, result)

    def _replace_if_recycled(self, slot: WorkerSlot) -> None:
        """A worker to recycle gets no more tasks, and is replaced once it has none: what it
        holds finishes first, so a recycle never costs a task an attempt."""
        if slot.recycling is not None and not slot.tasks:
            self.replace(slot.worker_id, slot.recycling)
