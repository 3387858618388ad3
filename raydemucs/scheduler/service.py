"""The scheduler actor: a thin async Ray actor around `Scheduler`, its journal and its pool.

It never blocks on `ray.get`: worker results, readiness and polls are awaited as asyncio tasks,
and one loop ticks the scheduler (deadlines, retries, dispatch) every `poll_interval_s`.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time

from ..core.actors import node_id
from ..core.config import Config
from ..core.errors import (
    Gone,
    InvalidInput,
    OverQuota,
    RayDemucsError,
    TaskNotFound,
    error_from_dict,
)
from ..core.keys import KeyStore, KeyTable
from ..core.logs import configure_logging
from ..core.public import public
from ..core.task import TaskRecord, TaskSpec, TaskState
from ..journal.tasks import TaskStore
from ..retention.sweeps import Retention
from ..storage.folders import open_folder
from ..storage.uploads import UploadStore
from ..webhooks.deliveries import Deliverer, Deliveries, check_target, load_secret
from .metrics import ServiceMetrics
from .recovery import read_recovery
from .scheduling import Scheduler

logger = logging.getLogger(__name__)

JOURNAL_FILE = "journal.db"
HTTP_URL_FILE = "http-url"
RECENTLY_EXPIRED = 1000  # expired tasks remembered for the streams that watch them



class Listeners:
    """Tells each of its members of every transition (the scheduler takes one listener)."""

    def __init__(self, *members):
        self.members = members

    def on_transition(self, record: TaskRecord, previous: TaskState | None,
                      counted: bool = True) -> None:
        for member in self.members:
            member.on_transition(record, previous, counted)


class SchedulerService:
    """Owns priorities, timeouts, retries and worker restarts for one named service."""

    def __init__(self, config: dict):
        # here, not at the top: a client's handle to this actor imports this module, and the pool
        # imports the worker (torch, demucs), which only the actor's process needs
        from .pool import RayWorkerPool

        self.config = Config.from_dict(config)
        configure_logging(self.config.service.log_level, self.config.service.log_format)
        self.store = TaskStore(self.config.state_path / JOURNAL_FILE)
        self.uploads = UploadStore(self.config.state_path, self.config.input)
        self.keys = KeyStore(self.config.state_path)
        self._keys_table, self._keys_version = KeyTable([]), None
        self.pool = RayWorkerPool(self.config, on_ready=self._dispatch,
                                  on_result=self._on_result, on_lost=self._on_lost)
        self.metrics = ServiceMetrics(self.config.service.name)
        self.deliverer = Deliverer(self.store.path, self.config.webhooks,
                                   load_secret(self.config.state_path), self._task_data)
        self.deliveries = Deliveries(self.store, self.config.webhooks, self._task_data,
                                     wake=self.deliverer.wake)
        self.retention = Retention(self.config.retention, self.store, self.uploads)
        self.holdings: dict = {}  # what the last sweep found held (bytes, next expiry)
        # ended tasks whose files just went -> (their number among expirations, owner)
        self.expirations: dict[str, tuple[int, str]] = {}
        self.expired_count = 0
        self._sweep_soon = asyncio.Event()
        self.core = Scheduler(self.config, self.store, self.pool, offload=self._offload,
                              listener=Listeners(self.metrics, self.deliveries))
        self.started_at = time.time()
        self.node_id = node_id()
        self._started: asyncio.Task | None = None
        self._loop: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._change = asyncio.Event()  # set, and replaced, whenever tasks may have changed
        self.http_url: str | None = self._read_http_url()
        self._drain_deadline = float("inf")
        self._kick()

    @staticmethod
    def _kick() -> None:
        """Call ourselves once, so that a scheduler Ray restarted resumes its recovered tasks
        (and its workers) without waiting for a client."""
        import ray

        try:
            ray.get_runtime_context().current_actor.ping.remote()
        except RuntimeError:  # not inside an actor (a plain instance in a test)
            pass

    async def _ready(self) -> None:
        """On the first call (also after a restart): recover from the journal, with its disk and
        object-store reads off the event loop, then start the pools' first workers (a dispatch
        sizes them) and the tick loop. Every call waits for this."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        found = await asyncio.to_thread(read_recovery, self.store, self.config.storage)
        self.core.recover(found)
        logger.info("scheduler %s started (pid %d); journal %s; %d unfinished task(s) recovered",
                    self.config.service.name, os.getpid(), self.store.path, len(self.core.active))
        self.deliverer.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        if self.core.dispatching:
            self.core.dispatch()
            self._loop = asyncio.get_running_loop().create_task(self._tick_forever())

    def _in_background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _changed(self) -> None:
        """Wake every `watch`: a task's state, progress or place may have changed."""
        self._change.set()
        self._change = asyncio.Event()

    def _expired(self, task_id: str, owner: str) -> None:
        """A finished task's files went: its watchers hear of it (the last RECENTLY_EXPIRED)."""
        self.expired_count += 1
        self.expirations.pop(task_id, None)
        self.expirations[task_id] = (self.expired_count, owner)
        while len(self.expirations) > RECENTLY_EXPIRED:
            del self.expirations[next(iter(self.expirations))]
        self._changed()

    def _offload(self, work) -> None:
        """Run blocking disk work (a folder sweep) in a thread, never on the event loop."""
        self._in_background(asyncio.to_thread(work))

    def _task_data(self, record: TaskRecord) -> dict:
        """A webhook body's `data`: the task as the HTTP API shows it when it runs (stems as
        URLs), else its record (stems as paths or URIs)."""
        return public(record.to_dict(), self.http_url) if self.http_url else record.to_dict()

    def _inputs_in_use(self) -> set[str]:
        """The stored inputs of unfinished tasks."""
        return {record.spec.input_sha256 for record in self.core.active.values()
                if record.spec.uploaded}

    async def _sweep_forever(self) -> None:
        """Retention: sweep at each next expiry, at least every `retention.sweep_interval_s`
        (and after a purge, to count what is held)."""
        while True:
            wait_s = self.config.retention.sweep_interval_s
            try:
                due = await asyncio.to_thread(self.retention.scan)
                for record in self.retention.retire(due, self._inputs_in_use(),
                                                    set(self.core.active)):
                    self.core.counts[record.state.value] -= 1
                    self._expired(record.task_id, record.spec.owner)
                await asyncio.to_thread(self.retention.empty_trash)
                held = await asyncio.to_thread(self.retention.held_bytes)
                self.holdings = {**held, "next_expiry_at": due.next_expiry_at}
                if due.next_expiry_at is not None:
                    wait_s = min(wait_s, max(0.0, due.next_expiry_at - time.time()))
            except Exception:
                logger.exception("retention sweep failed")
            self._sweep_soon.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._sweep_soon.wait(), max(wait_s, 0.05))

    async def _tick_forever(self) -> None:
        while True:
            try:
                for answer in await self.pool.poll():
                    self.core.report_progress(answer["task_id"], answer["attempt"],
                                              answer["progress"], answer.get("phase"))
                self.core.tick()
                self.uploads.drop_idle()
                self._changed()
                self.metrics.observe(self.core.queued_by_priority(), self.core.queue_counts(),
                                     self.pool.snapshot(), [pool.name for pool in self.core.pools])
            except Exception:
                logger.exception("scheduler tick failed")
            await asyncio.sleep(self.config.service.poll_interval_s)

    def _dispatch(self) -> None:
        self.core.dispatch()

    def _on_result(self, task_id: str, attempt: int, result: dict) -> None:
        record = self.core.active.get(task_id)
        if result["ok"] and record is not None and record.spec.kept:
            self._in_background(self._keep_stems(task_id, attempt, record.spec, result))
        else:
            self._ended(task_id, attempt, result)

    async def _keep_stems(self, task_id: str, attempt: int, spec: TaskSpec, result: dict) -> None:
        """Write a kept task's stems under the state directory (off the loop), then end it."""
        try:
            outputs = await asyncio.to_thread(self.uploads.keep_stems, spec, result)
            self._ended(task_id, attempt, {**result, "outputs": outputs})
        except RayDemucsError as exc:
            self._ended(task_id, attempt, {"ok": False, "error": exc.to_dict()})

    def _ended(self, task_id: str, attempt: int, result: dict) -> None:
        if result["ok"]:
            self.core.attempt_ended(task_id, attempt, outputs=result["outputs"],
                                    audio_duration_s=result["duration_s"])
        else:
            self.core.attempt_ended(task_id, attempt, error_from_dict(result["error"]))
        self.core.dispatch()
        self._changed()

    def _on_lost(self, worker_id: str, reason: str) -> None:
        self.core.worker_lost(worker_id, reason)
        self.core.dispatch()

    # -- the API the client calls -----------------------------------------------------------
    async def ping(self) -> dict:
        await self._ready()
        return {"name": self.config.service.name, "pid": os.getpid(),
                "accepting": self.core.accepting, "journal": self.store.path,
                "config": self.config.to_dict()}

    async def submit(self, specs: list[dict], uploads: dict[str, bytes] | None = None,
                     max_queued: int | None = None) -> list[dict]:
        """Accept tasks (each committed to the journal before this returns).

        `uploads` maps an uploaded task's input SHA-256 to its bytes; they are stored first (an
        uploaded task without them names an input already stored, sent in chunks). With
        `max_queued`, their owner may not have more unfinished tasks than that.
        """
        await self._ready()
        accepted = await self._checked(specs)
        if max_queued is not None:
            self._check_quota(accepted, max_queued)
        for index, (spec, existing) in enumerate(accepted):
            if spec.uploaded:
                data = (uploads or {}).get(spec.input_sha256)
                accepted[index] = (await asyncio.to_thread(self.uploads.accept, spec, data),
                                   existing)
        records = [self.core.submit(spec).to_dict() for spec, _ in accepted]
        self.core.dispatch()
        self._changed()
        return records

    async def submit_batch(self, specs: list[dict]) -> list[dict]:
        """Accept a chunk of a batch, the new tasks in one journal transaction: per spec its task
        id, key, state and `outcome` (`queued`, `skipped`, `known`), or `error` for a spec refused
        alone. Answers stay small: a batch may be 100,000 tasks."""
        await self._ready()
        tasks = [TaskSpec.from_dict(spec) for spec in specs]
        tasks = [self.uploads.keep(task) if task.kept else task for task in tasks]
        answers = self.core.submit_many(tasks)
        self.core.dispatch()
        self._changed()
        replies = []
        for task, answer in zip(tasks, answers):
            reply = {"project": task.project, "file_id": task.file_id, "input": task.input_path}
            if isinstance(answer, RayDemucsError):
                reply["error"] = answer.to_dict()
            else:
                record, outcome = answer
                reply.update(task_id=record.task_id, state=record.state.value, outcome=outcome,
                             batch_id=record.spec.batch_id)
            replies.append(reply)
        return replies

    async def batch(self, batch_id: str) -> dict:
        await self._ready()
        return self.core.batch(batch_id)

    async def cancel_batch(self, batch_id: str) -> int:
        await self._ready()
        count = self.core.cancel_batch(batch_id)
        self._changed()
        return count

    async def retry_batch(self, batch_id: str) -> int:
        await self._ready()
        count = self.core.retry_batch(batch_id)
        self.core.dispatch()
        self._changed()
        return count

    async def check_tasks(self, specs: list[dict], max_queued: int | None = None) -> None:
        """Raise what `submit` would refuse these tasks for (the key, the model, the cap, the
        webhook), before a client sends their bytes."""
        await self._ready()
        checked = await self._checked(specs)
        if max_queued is not None:
            self._check_quota(checked, max_queued)

    async def _checked(self, specs: list[dict]) -> list[tuple[TaskSpec, TaskRecord | None]]:
        """Each task (pointed at the service's results when kept) with the known task it repeats;
        one refused task raises, before anything is kept."""
        checked = []
        for spec in map(TaskSpec.from_dict, specs):
            spec = self.uploads.keep(spec) if spec.kept else spec
            checked.append((spec, self.core.check(spec)))
            await self._check_webhook(spec)
        return checked

    async def _check_webhook(self, spec: TaskSpec) -> None:
        """Refuse a webhook URL the service would not call (its host resolved off the loop)."""
        if spec.webhook_url:
            await asyncio.to_thread(check_target, spec.webhook_url,
                                    self.config.webhooks.allow_private)

    def _check_quota(self, accepted: list, max_queued: int) -> None:
        """`OverQuota` when the tasks would take their owner past `max_queued` unfinished ones."""
        new = sum(existing is None or existing.state.is_terminal() for _, existing in accepted)
        held = self.core.unfinished_of(accepted[0][0].owner) if accepted else 0
        if new and held + new > max_queued:
            raise OverQuota(f"this key has {held} unfinished task(s) and may have {max_queued}; "
                            "submit again when some have ended")

    async def fetch(self, task_id: str) -> dict:
        """A succeeded task's stems for a client that cannot read them where they are:
        `{"uri": FOLDER}` for remote storage, else the files' bytes read on this node."""
        await self._ready()
        record = self._unexpired(task_id)
        if record.state is not TaskState.SUCCEEDED:
            raise InvalidInput(f"task {task_id} is {record.state.value}; only a succeeded task's "
                               "stems can be fetched")
        folder = open_folder(record.spec.output_location, self.config.storage)
        if folder.remote:
            return {"uri": folder.location}
        return await asyncio.to_thread(folder.read_files)

    def _unexpired(self, task_id: str) -> TaskRecord:
        """A task whose stored files are still here; `Gone` for one whose files went."""
        record = self.core.get(task_id)
        if record.expired_at is not None:
            raise Gone(f"task {task_id}'s stored files were deleted at "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(record.expired_at))}"
                       " (retention.results_ttl_s, or a purge)")
        return record

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
        """Newest first; `before_seq` pages on from the last record's `seq`."""
        await self._ready()
        records = self.store.list(TaskState(state) if state else None, limit, project=project,
                                  owner=owner, batch_id=batch_id, before_seq=before_seq)
        return [self.core.active.get(r.task_id, r).to_dict() for r in records]

    async def watch(self, task_id: str, seen: dict | None = None, timeout_s: float = 15.0) -> dict:
        """The task's view as soon as it differs from `seen` (or is terminal), else after
        `timeout_s`: what a server-sent events stream sends on."""
        await self._ready()
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.core.view(task_id)
            remaining = deadline - time.monotonic()
            if view != seen or TaskState(view["state"]).is_terminal() or remaining <= 0:
                return view
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._change.wait(), remaining)

    async def watch_tasks(self, owner: str, seen: dict[str, dict], timeout_s: float = 15.0,
                          expired_after: int | None = None) -> dict:
        """`{"views", "expired_after"}`: the views of `owner`'s tasks that differ from `seen`
        (task id -> the view last sent), oldest first, as soon as one does, else none after
        `timeout_s`. Those are its unfinished tasks, those `seen` holds unfinished (which may
        have ended), and those whose files went since the expiration `expired_after` (None:
        from now on), the cursor for the next call. What the stream of all of a caller's tasks
        sends on."""
        await self._ready()
        deadline = time.monotonic() + timeout_s
        if expired_after is None:
            expired_after = self.expired_count
        while True:
            ids = {task_id for task_id, record in self.core.active.items()
                   if record.spec.owner == owner}
            ids.update(task_id for task_id, view in seen.items()
                       if not TaskState(view["state"]).is_terminal())
            ids.update(task_id for task_id, (number, of) in self.expirations.items()
                       if number > expired_after and of == owner)
            changed = [view for view in self._views(ids) if view != seen.get(view["task_id"])]
            remaining = deadline - time.monotonic()
            if changed or remaining <= 0:
                return {"views": sorted(changed, key=lambda view: view["seq"]),
                        "expired_after": self.expired_count}
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._change.wait(), remaining)

    def _views(self, task_ids) -> list[dict]:
        """The views of those tasks still in the journal (old rows go, `records_ttl_s`)."""
        views = []
        for task_id in task_ids:
            with contextlib.suppress(TaskNotFound):
                views.append(self.core.view(task_id))
        return views

    async def models(self) -> list[dict]:
        """The models served here, with the stems of those a worker has loaded."""
        await self._ready()
        stems = {}
        for worker in self.pool.snapshot():
            stems.update(worker.get("stems") or {})
        return [{**model, "stems": stems.get(model["name"])} for model in self.core.served_models()]

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
        """The known API keys' digests (and caps), reread when the keys file changes."""
        version = self.keys.version()
        if version != self._keys_version:
            self._keys_table, self._keys_version = await asyncio.to_thread(self.keys.table), version
        return {"version": version, "keys": self._keys_table.to_list()}

    async def unfinished_of(self, owner: str) -> int:
        await self._ready()
        return self.core.unfinished_of(owner)

    # -- uploads streamed in chunks (the HTTP front door) ------------------------------------
    async def upload_open(self, file_name: str) -> str:
        await self._ready()
        return await asyncio.to_thread(self.uploads.open, file_name)

    async def upload_write(self, upload_id: str, chunk: bytes) -> None:
        await asyncio.to_thread(self.uploads.write, upload_id, chunk)

    async def upload_close(self, upload_id: str) -> dict:
        """Check the whole upload as an input and keep it: `{"sha256", "duration_s", "bytes"}`."""
        return await asyncio.to_thread(self.uploads.close, upload_id)

    async def upload_abort(self, upload_id: str) -> None:
        await asyncio.to_thread(self.uploads.abort, upload_id)

    async def read_upload(self, sha256: str, offset: int, size: int) -> bytes:
        """A chunk of a kept input, for the worker that separates it."""
        return await asyncio.to_thread(self.uploads.read_chunk, sha256, offset, size)

    async def submit_upload(self, spec: dict, upload_id: str,
                            max_queued: int | None = None) -> dict:
        """Accept a task whose input was streamed in chunks (`upload_open`, `upload_write`): every
        refusal (the task, the quota, the bytes) comes before the upload is kept, so a refused
        request stores nothing; the same ask as a known task returns that task."""
        await self._ready()
        try:
            [(task, existing)] = await self._checked([spec])
            if max_queued is not None:
                self._check_quota([(task, existing)], max_queued)
            if existing is not None and not self.core.reruns(existing, task):
                return self.core.view(existing.task_id)
            kept = await asyncio.to_thread(self.uploads.close, upload_id)
        finally:
            await asyncio.to_thread(self.uploads.abort, upload_id)  # nothing left once closed
        if kept["sha256"] != task.input_sha256:
            raise InvalidInput("the upload's bytes changed on the way (SHA-256 mismatch); "
                               "send it again")
        task = dataclasses.replace(task, duration_s=kept["duration_s"])
        record = self.core.submit(task)
        self.core.dispatch()
        self._changed()
        return self.core.view(record.task_id)

    async def stems_place(self, task_id: str) -> dict:
        """Where a task's stems are: `{"location", "node", "remote"}` (the node that holds a
        local folder: the scheduler's for the stems it keeps, else the worker's)."""
        await self._ready()
        record = self._unexpired(task_id)
        folder = open_folder(record.spec.output_location, self.config.storage)
        node = self.node_id if record.spec.kept else record.node
        return {"location": folder.location, "node": None if folder.remote else node,
                "remote": folder.remote}

    async def retry(self, task_id: str) -> dict:
        await self._ready()
        spec = self.core.get(task_id).spec
        if spec.uploaded and not (self.uploads.inputs / spec.input_sha256).is_file():
            raise Gone(f"task {task_id}'s uploaded input was deleted (retention.uploads_ttl_s, or "
                       "a purge); submit the file again")
        record = self.core.retry(task_id).to_dict()
        self.core.dispatch()
        self._changed()
        return record

    async def cancel(self, task_id: str) -> dict:
        await self._ready()
        record = self.core.cancel(task_id).to_dict()
        self._changed()
        return record

    async def purge(self, task_id: str) -> dict:
        """Delete a finished task's stored stems and input now (an input another task needs
        stays); the task stays in the journal, expired."""
        await self._ready()
        spec, read_at = self.core.get(task_id).spec, time.time()
        users = (await asyncio.to_thread(self.store.held_records, spec.input_sha256)
                 if spec.uploaded else [])
        outcome = self.retention.purge(self.core.get(task_id), users, self._inputs_in_use(),
                                       read_at)
        await asyncio.to_thread(self.retention.empty_trash)
        self._sweep_soon.set()  # recount what is held
        self._expired(task_id, spec.owner)
        return {**outcome, "task": await self.get_task(task_id)}

    async def webhook_deliveries(self, failed: bool = False, limit: int = 100) -> list[dict]:
        """Webhook deliveries, newest first; `failed`: dead ones and those whose last attempt
        failed."""
        await self._ready()
        return self.deliveries.listing(failed, limit)

    async def retry_delivery(self, delivery_id: str) -> dict:
        """Send a webhook delivery again now (a dead one with a fresh set of attempts)."""
        await self._ready()
        return self.deliveries.retry(delivery_id)

    def _deliveries_due(self) -> bool:
        """Whether the running deliverer has an attempt in flight, or one due now."""
        if not self.deliverer.running:
            return False
        next_at = self.store.next_delivery_at()
        return bool(self.deliverer.in_flight) or (next_at is not None and next_at <= time.time())

    def _retention_view(self) -> dict:
        """What the last sweep found held (bytes, next expiry) and how long each kind is kept."""
        kept = self.config.retention
        return {**self.holdings, "uploads_ttl_s": kept.uploads_ttl_s,
                "results_ttl_s": kept.results_ttl_s, "records_ttl_s": kept.records_ttl_s}

    async def status(self) -> dict:
        await self._ready()
        running = [self.core.active[task_id].to_dict() for task_id in self.core.running]
        return {"service": self.config.service.name, "accepting": self.core.accepting,
                "uptime_s": time.time() - self.started_at, "journal": self.store.path,
                "http": self.http_url,
                "queue": self.core.queue_counts(), "pools": self.core.pool_counts(),
                "queued_by_priority": self.core.queued_by_priority(),
                "workers": self.pool.snapshot(), "retention": self._retention_view(),
                "webhooks": self.store.count_deliveries(),
                "running": [{k: r[k] for k in ("task_id", "project", "file_id", "attempts",
                                                "progress", "worker")} for r in running]}

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
        if self._loop is not None:
            self._loop.cancel()
        while self._deliveries_due() and time.time() < self._drain_deadline:
            await asyncio.sleep(0.1)
        self.deliverer.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        queued = len(self.core.queue) + len(self.core.delayed)
        logger.info("drained: %d running task(s) interrupted, %d left queued for the next start",
                    len(interrupted), queued)
        return {"interrupted": interrupted, "queued": queued, "http": self.http_url}

