"""The scheduler actor: a thin async Ray actor around `Scheduler`, its journal and its pool.

It never blocks on `ray.get`: worker results, readiness and polls are awaited as asyncio tasks,
and one loop ticks the scheduler (deadlines, retries, dispatch) every `poll_interval_s`. Its parts:
`Intake` (what comes in), `Watchers` (what event streams wait on), `Leases` (what a key may hold
a few of at once), `Sweeper` (retention), the webhook `Deliverer` (a thread), and a `Supervisor`
for every background task. The event streams' long waits are calls of their own concurrency
group (`STREAMS`), so that open streams never take the slots every other call needs. The calls
about uploads, leases and stored stems are `HoldingCalls`' (scheduler/holdings.py).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Iterator

import ray

from ..core.actors import node_id
from ..core.config import Config
from ..core.errors import InternalError, error_from_dict
from ..core.heap import FrozenHeap
from ..core.keys import KeyStore, KeyTable
from ..core.logs import configure_logging
from ..core.public import public_task
from ..core.statedir import private_dir
from ..core.task import TaskRecord, TaskState
from ..journal import Journal
from ..journal.deliveries import DeliveryCounts
from ..retention.sweeper import Sweeper
from ..retention.sweeps import Retention
from ..storage.uploads import UploadStore
from ..webhooks.deliverer import Deliverer
from ..webhooks.deliveries import Deliveries
from ..webhooks.signing import load_secret, owner_secret
from .book import read_recovery
from .holdings import HoldingCalls
from .intake import Intake
from .leases import LEASE_TTL_S, STREAM, UPLOAD, Leases
from .metrics import ServiceMetrics
from .scheduling import CHUNK, Scheduler
from .streams import Watchers
from .supervision import LoopLag, Supervisor

logger = logging.getLogger(__name__)

JOURNAL_FILE = "journal.db"
HTTP_URL_FILE = "http-url"
STREAMS = "streams"  # the concurrency group of the event streams' waits (`http.max_streams`)


class SchedulerService(HoldingCalls):
    """Owns priorities, timeouts, retries and worker restarts for one named service.

    `pool` is for tests: a stand-in for the workers (`RayWorkerPool`'s calls), so that the
    actor's logic runs without Ray.
    """

    def __init__(self, config: dict, pool=None):
        self.config = Config.from_dict(config)
        configure_logging(self.config.service.log_level, self.config.service.log_format)
        state = private_dir(self.config.state_path)
        self.journal = Journal(state / JOURNAL_FILE)
        self.uploads = UploadStore(state, self.config.input, self.config.storage)
        self.keys, self._keys_table, self._keys_version = KeyStore(state), KeyTable([]), None
        self.metrics = ServiceMetrics(self.config.service.name)
        self.supervisor = Supervisor(self.metrics.background_failed)
        self.lag = LoopLag(self.metrics.lagged)
        self.pool = pool or self._worker_pool()
        self.heap = FrozenHeap() if pool is None else None  # the actor's process, not a test's
        self.deliverer = Deliverer(self.journal.path, self.config.webhooks, load_secret(state),
                                   self._task_data, on_error=self.supervisor.failed)
        self.deliveries = Deliveries(self.journal, self.config.webhooks, self._task_data,
                                     wake=self.deliverer.wake)
        self.delivery_counts = DeliveryCounts(self.journal.path)
        self.core = Scheduler(self.config, self.journal, self.pool, offload=self._offload,
                              listeners=(self.metrics, self.deliveries),
                              input_kept=self.uploads.holds_input, on_error=self.supervisor.failed)
        self.leases = Leases(LEASE_TTL_S)
        self.intake = Intake(self.core, self.uploads, self.config.webhooks.allow_private,
                             self.leases)
        self.watchers = Watchers(self.core.view, self.core.book.owned)
        self.core.book.listeners.append(self.watchers)
        self.sweeper = Sweeper(self.config.retention,
                               Retention(self.config.retention, self.journal, self.uploads),
                               self.core.book, self.watchers, self.supervisor.failed)
        self.core.book.listeners.append(self.sweeper)
        self.started_at, self.node_id = time.time(), node_id()
        self.http_url: str | None = self._read_http_url()
        self._started: asyncio.Task | None = None
        self._recovered = self._ticking = False
        self._drain_deadline = float("inf")
        self._loop = self._own_loop()
        self._kick()

    def _worker_pool(self):
        # here, not at the top: a client's handle to this actor imports this module, and the pool
        # imports the worker (torch, demucs), which only the actor's process needs
        from .pool import RayWorkerPool

        return RayWorkerPool(self.config, on_ready=self.core_dispatch, on_result=self._on_result,
                             on_lost=self._on_lost, supervisor=self.supervisor)

    @staticmethod
    def _own_loop() -> asyncio.AbstractEventLoop | None:
        """The loop every call but the streams' runs on, where the actor's state lives (Ray
        builds an async actor on its default group's loop); None: built outside a loop."""
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    async def _on_own_loop(self, wait, *args):
        """`await wait(*args)`, once started, on the actor's own loop: a call of the `STREAMS`
        group runs on a loop of its own, in another thread."""
        async def run():
            await self._ready()
            return await wait(*args)

        if self._loop is None or self._loop is asyncio.get_running_loop():
            return await run()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self._loop))

    @staticmethod
    def _kick() -> None:
        """Call ourselves once, so that a scheduler Ray restarted resumes its recovered tasks
        (and its workers) without waiting for a client."""
        import ray

        if not ray.is_initialized():  # a plain instance (a test): no actor to call
            return
        try:
            ray.get_runtime_context().current_actor.ping.remote()
        except RuntimeError:  # a driver, not inside an actor
            pass

    # -- start, tick, results -----------------------------------------------------------------
    async def _ready(self) -> None:
        """On the first call (also after a restart): recover from the journal, with its disk and
        object-store reads off the event loop, then start the pools' first workers (a dispatch
        sizes them), the tick loop, the sweeper and the webhook thread. Every call waits for
        this; a start that failed is tried again by the next call."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        try:
            await asyncio.shield(self._started)
        except Exception:
            self._started = None
            raise

    async def _start(self) -> None:
        if not self._recovered:
            found = await asyncio.to_thread(read_recovery, self.journal, self.config.storage)
            self.core.recover(found)
            self._recovered = True
            self.supervisor.spawn("retention_sweeper", self.sweeper.run())
            self.supervisor.forever("loop_lag", self.lag.step)
            if self.heap is not None:
                self.supervisor.forever("frozen_heap", self.heap.step)
        self.deliverer.start()
        if self.core.dispatching and not self._ticking:
            self.core.dispatch()
            self.supervisor.forever("tick", self._tick)
            self._ticking = True
        logger.info("scheduler %s started (pid %d); journal %s; %d unfinished task(s) recovered",
                    self.config.service.name, os.getpid(), self.journal.path,
                    len(self.core.active))

    async def _tick(self) -> float:
        """Progress and health from the workers, deadlines and retries, dispatch, metrics; the
        wait until the next tick."""
        for answer in await self.pool.poll():
            self.core.report_progress(answer["task_id"], answer["attempt"], answer["progress"],
                                      answer.get("phase"))
        self.core.tick()
        for upload_id in self.uploads.idle():
            self.supervisor.offload("drop_idle_upload", functools.partial(self.uploads.abort,
                                                                          upload_id))
        self.watchers.progressed(map(self.core.active.get, self.core.running))
        self.metrics.observe(self.core.queued_by_priority(), self.core.queue_counts(),
                             self.pool.snapshot(), [pool.name for pool in self.core.pools])
        return self.config.service.poll_interval_s

    def _offload(self, work) -> None:
        """Run blocking disk work (a folder sweep) in a thread, never on the event loop."""
        self.supervisor.offload("sweep_folder", work)

    def _task_data(self, record: TaskRecord) -> dict:
        """A webhook body's `data`: the task as the HTTP API shows it when it runs (stems as
        URLs), else its record (stems as paths or URIs)."""
        data = record.to_dict()
        return public_task(data, self.http_url) if self.http_url else data

    def core_dispatch(self) -> None:
        self.core.dispatch()

    def _changed(self, dispatch: bool = False) -> None:
        """After a change made by a call: start what can start (the event streams heard of
        each task's change from the book)."""
        if dispatch:
            self.core.dispatch()

    def _on_result(self, task_id: str, attempt: int, result: dict) -> None:
        """An attempt's result (its stems are where the task's folder is: only their locations
        come here). Whatever fails while it is handled fails the attempt, in one line, rather
        than leave it running until its deadline."""
        try:
            self._ended(task_id, attempt, result)
        except Exception as exc:
            self.supervisor.failed("attempt_result", exc)
            error = InternalError(f"handling the attempt's result failed: "
                                  f"{type(exc).__name__}: {exc}".splitlines()[0])
            self._ended(task_id, attempt, {"ok": False, "error": error.to_dict()})

    def _ended(self, task_id: str, attempt: int, result: dict) -> None:
        if result["ok"]:
            self.core.attempt_ended(task_id, attempt, outputs=result["outputs"],
                                    audio_duration_s=result["duration_s"])
        else:
            self.core.attempt_ended(task_id, attempt, error_from_dict(result["error"]))
        self._changed(dispatch=True)

    def _on_lost(self, worker_id: str, reason: str) -> None:
        self.core.worker_lost(worker_id, reason)
        self.core.dispatch()

    # -- tasks --------------------------------------------------------------------------------
    async def ping(self) -> dict:
        await self._ready()
        return {"name": self.config.service.name, "pid": os.getpid(),
                "accepting": self.core.accepting, "journal": self.journal.path,
                "config": self.config.to_dict()}

    async def submit(self, specs: list[dict], max_queued: int | None = None) -> list[dict]:
        """Accept tasks, each committed to the journal before this returns; with `max_queued`,
        their owner may not have more unfinished tasks than that. An uploaded input comes
        through `upload_open` and `submit_upload`, never here."""
        await self._ready()
        records = await self.intake.submit(specs, max_queued)
        self._changed(dispatch=True)
        return records

    async def submit_batch(self, specs: list[dict]) -> list[dict]:
        """Accept a chunk of a batch (see `Intake.submit_batch`), `CHUNK` specs a step."""
        await self._ready()
        replies = []
        for start in range(0, len(specs), CHUNK):
            replies += self.intake.submit_batch(specs[start:start + CHUNK])
            self._changed(dispatch=True)
            await asyncio.sleep(0)
        return replies

    async def check_tasks(self, specs: list[dict], max_queued: int | None = None,
                          upload: str | None = None) -> None:
        """Raise what `submit` would refuse these tasks for (the key, the model, the cap, the
        webhook), before a client sends their bytes (those of the upload lease `upload`)."""
        await self._ready()
        with self.intake.quota(await self.intake.check(specs), max_queued, upload):
            pass

    async def batch(self, batch_id: str) -> dict:
        await self._ready()
        return self.core.batch(batch_id)

    async def cancel_batch(self, batch_id: str) -> int:
        await self._ready()
        return await self._in_steps(self.core.cancel_batch(batch_id))

    async def retry_batch(self, batch_id: str) -> int:
        await self._ready()
        return await self._in_steps(self.core.retry_batch(batch_id), dispatch=True)

    async def _in_steps(self, steps: Iterator[int], dispatch: bool = False) -> int:
        """Run a batch operation a chunk at a time, letting every other call and background
        step run between chunks (the loop is never held for the whole batch); how many tasks
        it changed."""
        changed = 0
        for count in steps:
            changed += count
            self._changed(dispatch)
            await asyncio.sleep(0)
        return changed

    async def get_task(self, task_id: str) -> dict:
        """A task's view, with its webhook deliveries."""
        await self._ready()
        return {**self.core.view(task_id), "deliveries": self.deliveries.of_task(task_id)}

    async def get_tasks(self, task_ids: list[str]) -> list[dict]:
        await self._ready()
        return [self.core.view(task_id) for task_id in task_ids]

    async def list_tasks(self, state: str | None = None, limit: int = 100, project: str | None = None,
                         owner: str | None = None, before_seq: int | None = None,
                         batch_id: str | None = None) -> list[dict]:
        """Newest first; `before_seq` pages on from the last record's `seq`. Read `CHUNK` records
        a step (a thousand at once held the loop 60 ms)."""
        await self._ready()
        views = []
        for page in self.journal.tasks.pages(TaskState(state) if state else None, limit, CHUNK,
                                             project=project, owner=owner, batch_id=batch_id,
                                             before_seq=before_seq):
            views += [self.core.active.get(r.task_id, r).to_dict() for r in page]
            await asyncio.sleep(0)
        return views

    @ray.method(concurrency_group=STREAMS)
    async def watch(self, task_id: str, seen: dict | None = None, timeout_s: float = 15.0) -> dict:
        """The task's view as soon as it differs from `seen`: what a task's event stream sends."""
        return await self._on_own_loop(self.watchers.watch, task_id, seen, timeout_s)

    @ray.method(concurrency_group=STREAMS)
    async def watch_tasks(self, owner: str, cursor: dict | None = None,
                          timeout_s: float = 15.0) -> dict:
        """The views of an owner's tasks changed since `cursor` (see `Watchers.watch_tasks`)."""
        return await self._on_own_loop(self.watchers.watch_tasks, owner, cursor, timeout_s)

    async def retry(self, task_id: str) -> dict:
        await self._ready()
        record = self.core.retry(task_id).to_dict()
        self._changed(dispatch=True)
        return record

    async def cancel(self, task_id: str) -> dict:
        await self._ready()
        record = self.core.cancel(task_id).to_dict()
        self._changed()
        return record

    # -- the service --------------------------------------------------------------------------
    async def models(self) -> list[dict]:
        """The models served here, with the stems of those a worker has loaded."""
        await self._ready()
        stems = {}
        for worker in self.pool.snapshot():
            stems.update(worker.get("stems") or {})
        served = await asyncio.to_thread(self.core.served_models)  # may hash a new checkpoint
        return [{**model, "stems": stems.get(model["name"]) or model["stems"]} for model in served]

    def _read_http_url(self) -> str | None:
        try:
            return (self.config.state_path / HTTP_URL_FILE).read_text().strip() or None
        except FileNotFoundError:
            return None

    async def note_http(self, url: str | None) -> None:
        """The HTTP API runs at `url` (None: no more), shown by `status` and removed with the
        service; kept in the state directory, so that a restarted scheduler knows it too."""
        self.http_url = url
        path = self.config.state_path / HTTP_URL_FILE
        if url:
            await asyncio.to_thread(path.write_text, url)
        else:
            path.unlink(missing_ok=True)

    async def api_keys(self) -> dict:
        """The known API keys' digests, ids, roles, caps and ceilings, reread when the keys file
        changes."""
        version = self.keys.version()
        if version != self._keys_version:
            self._keys_table, self._keys_version = await asyncio.to_thread(self.keys.table), version
        return {"version": version, "keys": self._keys_table.to_list()}

    async def webhook_secret(self, owner: str) -> str:
        """The secret the webhooks of `owner`'s tasks are signed with."""
        return owner_secret(self.deliverer.secret, owner)

    async def webhook_deliveries(self, failed: bool = False, limit: int = 100) -> list[dict]:
        """Webhook deliveries, newest first; `failed`: dead ones and those whose last attempt
        failed."""
        await self._ready()
        return self.deliveries.listing(failed, limit)

    async def retry_delivery(self, delivery_id: str) -> dict:
        """Send a webhook delivery again now (a dead one with a fresh set of attempts)."""
        await self._ready()
        return self.deliveries.retry(delivery_id)

    async def status(self, owner: str | None = None) -> dict:
        """The service as an operator sees it (`owner` None), or as the owner `owner` does: its
        own counts and running tasks, the pools' sizes and the workers' states, nothing of other
        owners, the journal or the machines. Both from memory, but the operator's delivery
        counts (read at most every few seconds, off the loop: `DeliveryCounts`)."""
        await self._ready()
        if owner is not None:
            return {"view": "tenant", "service": self.config.service.name,
                    "accepting": self.core.accepting, "uptime_s": time.time() - self.started_at,
                    "queue": self.core.book.counts.of_owner(owner),
                    "pools": [{k: v for k, v in pool.items() if k != "queued"}
                              for pool in self.core.pool_counts()],
                    "workers": [{"pool": worker["pool"], "state": worker["state"]}
                                for worker in self.pool.snapshot()],
                    "running": self._running(owner)}
        return {"view": "operator", "service": self.config.service.name,
                "accepting": self.core.accepting,
                "uptime_s": time.time() - self.started_at, "journal": self.journal.path,
                "http": self.http_url, "queue": self.core.queue_counts(),
                "pools": self.core.pool_counts(),
                "queued_by_priority": self.core.queued_by_priority(),
                "workers": self.pool.snapshot(), "retention": self.sweeper.view(),
                "webhooks": await self.delivery_counts.get(),
                "leases": {kind: self.leases.count(kind) for kind in (UPLOAD, STREAM)},
                "stream_waits": self.watchers.waiting,
                "loop_lag": self.lag.summary(), "running": self._running()}

    def _running(self, owner: str | None = None) -> list[dict]:
        """The running tasks (of `owner` alone when given); a worker's id for an operator."""
        shown = ("task_id", "project", "file_id", "attempts", "progress")
        records = [self.core.active[task_id].to_dict() for task_id in self.core.running
                   if owner is None or self.core.active[task_id].spec.owner == owner]
        return [{k: r[k] for k in shown + (("worker",) if owner is None else ())}
                for r in records]

    async def ready(self) -> bool:
        """Whether a worker is ready (what `/readyz` answers), from memory."""
        await self._ready()
        return any(worker["state"] in ("idle", "busy") for worker in self.pool.snapshot())

    def _deliveries_due(self) -> bool:
        """Whether the running deliverer has an attempt in flight, or one due now."""
        if not self.deliverer.running:
            return False
        next_at = self.journal.deliveries.next_at()
        return bool(self.deliverer.in_flight) or (next_at is not None and next_at <= time.time())

    async def drain(self, grace_s: float | None = None) -> dict:
        """Stop accepting and dispatching; wait for running tasks up to `grace_s`, then abort them.

        A second call with a shorter grace hurries the first. Queued tasks stay in the journal,
        and aborted ones stay `running` there: the next start requeues both.
        """
        self.core.stop_accepting()
        grace_s = self.config.service.shutdown_grace_s if grace_s is None else grace_s
        self._drain_deadline = min(self._drain_deadline, time.time() + grace_s)
        while self.core.running and time.time() < self._drain_deadline:
            await asyncio.sleep(0.1)
        interrupted = list(self.core.running)
        self.pool.shutdown()
        while self._deliveries_due() and time.time() < self._drain_deadline:
            await asyncio.sleep(0.1)
        self.deliverer.stop()
        self.supervisor.cancel_all()
        queued = len(self.core.queue) + len(self.core.delayed)
        logger.info("drained: %d running task(s) interrupted, %d left queued for the next start",
                    len(interrupted), queued)
        return {"interrupted": interrupted, "queued": queued, "http": self.http_url}
