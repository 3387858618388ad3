"""WorkerManager: the Python API (and what the CLI and notebooks call).

    from raydemucs import WorkerManager
    manager = WorkerManager()                      # RAY_ADDRESS, a running cluster, or local Ray
    task_id = manager.add_task(input_path="song.mp3", project_name="My Project", priority="high")
    manager.wait(task_id)["outputs"]               # {"drums": ".../drums.wav", ...}
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..core.actors import NAMESPACE, as_our_error, get_scheduler, scheduler_name
from ..core.config import Config, load_config
from ..core.errors import (
    InvalidInput,
    RayDemucsError,
    ServiceUnavailable,
    TaskCancelled,
    TaskFailed,
    WaitTimedOut,
)
from ..core.task import TaskSpec, TaskState, parse_priority
from ..storage import nodes
from ..storage.folders import (
    check_writable,
    copy_folder,
    placed_folder,
    task_folder,
)
from ..storage.uris import is_uri, local_path
from .batch_submit import (
    AUDIO_SUFFIXES,
    Item,
    Summary,
    assign_file_ids,
    batch_id_for,
    checked_specs,
    expand,
)
from .checks import TaskChecks
from .connection import join_ray


def _unwrap(call: Callable[[], Any]) -> Any:
    """Run a Ray call; its failure as one of our errors (`as_our_error`)."""
    import ray

    try:
        return call()
    except ray.exceptions.RayError as exc:
        raise as_our_error(exc) from None


class WorkerManager:
    """Connects to (or starts) Ray and a named scheduler; submits, watches and cancels tasks."""

    def __init__(self, config: Config | None = None, address: str | None = None,
                 profile: str | None = None):
        self.config = config or load_config(profile)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._scheduler = None
        self._service_config: Config | None = None
        self.checks = TaskChecks(self.service_config, self._held_models)
        self.started_ray = False
        self.owns_scheduler = False
        self.local_dashboard = True

    # -- connection -------------------------------------------------------------------------
    def connect(self, start_local: bool = True) -> None:
        """Join the cluster at `address`, else the one `ray start` runs here, else start Ray locally.

        A Ray started here lives as long as this process; `local_dashboard` says whether it
        serves the dashboard (on `service.dashboard_host`).
        """
        import ray

        if ray.is_initialized():
            return
        dashboard = self.config.service.dashboard_host if self.local_dashboard else None
        self.started_ray = join_ray(self.address, start_local, dashboard)

    def scheduler(self, create: bool = True, detached: bool = False, preload=None):
        """The named scheduler actor; created here if allowed and none is running.

        A scheduler created here loads `preload` (separation options) in its workers, else the
        config's default model.
        """
        import ray

        if self._scheduler is not None:
            return self._scheduler
        self.connect(start_local=create)
        try:
            self._scheduler = get_scheduler(self.config.service.name)
        except ServiceUnavailable:
            if not create:
                raise
            from ..scheduler.service import STREAMS, SchedulerService

            config = self.config
            if preload is not None:
                config = config.model_copy(update={"separation": preload})
            actor = ray.remote(concurrency_groups={STREAMS: config.http.max_streams})
            self._scheduler = actor(SchedulerService).options(
                name=scheduler_name(self.config.service.name), namespace=NAMESPACE, get_if_exists=True,
                lifetime="detached" if detached else None, num_cpus=0,
                max_restarts=-1, max_task_retries=-1, max_concurrency=1000,
                resources={"node:__internal_head__": 0.001},
            ).remote(config.to_dict())
            self.owns_scheduler = not detached
        info = _unwrap(lambda: ray.get(self._scheduler.ping.remote()))
        self._service_config = Config.from_dict(info["config"])
        return self._scheduler

    def service_config(self) -> Config:
        """The running service's config (its defaults and limits apply to tasks), else our own."""
        if self._service_config is None:
            try:
                self.scheduler(create=False)
            except ServiceUnavailable:
                self._service_config = self.config
        return self._service_config

    def _held_models(self) -> dict[str, list[str] | None]:
        """The models the running service's workers hold, with the stems each makes where a
        worker told them (none when no service runs)."""
        if self._scheduler is None:
            return {}
        return {name: (worker.get("stems") or {}).get(name)
                for worker in self._call("status")["workers"] for name in worker["models"]}

    def _call(self, method: str, *args, create: bool = False, preload=None):
        import ray

        handle = self.scheduler(create=create, preload=preload)
        return _unwrap(lambda: ray.get(getattr(handle, method).remote(*args)))

    # -- tasks ------------------------------------------------------------------------------
    def prepare_task(self, input_path: str | os.PathLike, file_id: str | None = None,
                     output_dir: str | os.PathLike | None = None, project_name: str = "default",
                     priority: str | int = "normal", **shared) -> TaskSpec:
        """Check everything that can be checked here and build the spec; nothing is queued.

        Inputs and output directories may be local paths or URIs (`s3://bucket/key`); with
        `upload`, the local input's bytes travel with the task and the service keeps the stems
        (`fetch` brings them back). With `webhook_url`, the service calls it on each of
        `webhook_events` (default: the terminal ones). Defaults and limits come from the running
        service's config when there is one. `shared` are `TaskChecks.template`'s.
        """
        template = self.checks.template(output_dir, **shared)
        return self.checks.spec(template, input_path, file_id, project_name, priority)

    def submit(self, specs: Iterable[TaskSpec], create: bool = False) -> list[dict]:
        """Queue prepared specs; returns their records (an existing task for a known key).

        Uploaded inputs go one call each, so no single message holds every file's bytes. With
        `create`, a scheduler is started if none runs, its workers loading the first spec's
        model.
        """
        specs = list(specs)
        preload = specs[0].options if specs else None
        plain = [spec for spec in specs if not spec.uploaded]
        records = {}
        if plain:
            for spec, record in zip(plain, self._call("submit", [s.to_dict() for s in plain],
                                                      create=create, preload=preload)):
                records[spec.task_id] = record
        for spec in specs:
            if spec.uploaded:
                records[spec.task_id] = self._send_upload(spec, create, preload)
        return [records[spec.task_id] for spec in specs]

    def _send_upload(self, spec: TaskSpec, create: bool, preload) -> dict:
        """An uploaded task: its file appended a chunk at a time to the one the scheduler opens
        on its node (`storage.nodes`, as the HTTP API's uploads go), never through the
        scheduler's process; then the task, checked and kept there. Its view."""
        opened = self._call("upload_open", Path(spec.input_path).name, create=create,
                            preload=preload)
        try:
            nodes.send(Path(spec.input_path), opened["path"], opened["node"])
        except BaseException:
            self._call("upload_abort", opened["id"])
            raise
        return self._call("submit_upload", spec.to_dict(), opened["id"])

    def add_task(self, input_path: str | os.PathLike, file_id: str | None = None,
                 output_dir: str | os.PathLike | None = None, project_name: str = "default",
                 priority: str | int = "normal", webhook_url: str | None = None,
                 **options) -> str:
        """Validate and queue one file; returns its task id (the same one for a known key).
        `webhook_url` is called when the task ends (see `prepare_task`)."""
        spec = self.prepare_task(input_path, file_id, output_dir, project_name, priority,
                                 webhook_url=webhook_url, **options)
        return self.submit([spec], create=True)[0]["task_id"]

    def fetch(self, task_id: str, output_dir: str | os.PathLike, force: bool = False) -> dict:
        """Copy a succeeded task's stems to `OUTPUT_DIR/PROJECT/FILE_ID` here; returns
        `{stem: path}`. Works from any machine: remote folders are read directly, others on
        the node that holds them (by a Ray task pinned there)."""
        if is_uri(str(output_dir)):
            raise InvalidInput(f"fetch copies stems to a local directory, not to {output_dir}")
        root = local_path(output_dir)
        record = self.get_status(task_id)
        folder = task_folder(root, record["project"], record["file_id"])
        if folder.complete() and not force:
            raise InvalidInput(f"{folder.location} already holds stems; pass --force to replace them")
        check_writable(root)
        place = self._call("fetch", task_id)
        return copy_folder(placed_folder(place, self.service_config().storage), folder)

    def get_status(self, task_id: str | None = None) -> dict:
        """One task's record, or the service: queue counts by state and every worker."""
        if task_id is not None:
            return self._call("get_task", task_id)
        return self._call("status")

    def get_tasks(self, task_ids: list[str]) -> list[dict]:
        return self._call("get_tasks", list(task_ids))

    def list_tasks(self, state: str | None = None, limit: int = 100, batch_id: str | None = None,
                   before_seq: int | None = None) -> list[dict]:
        """Newest first, up to `limit`; `before_seq` (the last one's `seq`) gives the next page."""
        return self._call("list_tasks", state, limit, None, None, before_seq, batch_id)

    # -- batches ----------------------------------------------------------------------------
    def submit_batch(self, inputs: Iterable[str], from_list: str | None = None,
                     project_name: str = "default", priority: str | int = "normal",
                     strict: bool = False, create: bool = False,
                     on_chunk: Callable[[list[dict]], None] | None = None, **options) -> Summary:
        """Submit folders, prefixes, files and a list as one batch (see `raydemucs.client.batch_submit`).

        Inputs are checked (`checked_specs`) and sent a thousand at a time; an input refused by
        its checks is counted in the summary and the rest go on, unless `strict` (then any
        refusal refuses the batch before anything is queued). `options` are `TaskChecks.template`'s,
        checked once for the whole batch.
        """
        inputs = [str(given) for given in inputs]
        config = self.service_config()
        items = assign_file_ids(list(expand(inputs, from_list, config.storage)), project_name)
        if not items:
            raise InvalidInput("no audio file among the inputs (folders are searched for "
                               f"{', '.join(sorted(AUDIO_SUFFIXES))})")
        summary = Summary(batch_id_for(project_name, inputs, from_list), items=len(items))

        parse_priority(priority)  # the batch's own settings refuse the batch, before any item
        template = self.checks.template(batch_id=summary.batch_id, **options)

        def prepare(item: Item) -> TaskSpec:
            return self.checks.spec(template, item.input, item.file_id, item.project,
                                  item.priority or priority)

        def refuse(item: Item, error: RayDemucsError) -> None:
            summary.refused.append({"input": item.input, "error": error.to_dict()})

        if strict:
            for _ in checked_specs(items, prepare, refuse):
                pass
            if summary.refused:
                first = summary.refused[0]
                raise InvalidInput(f"{len(summary.refused)} of {len(items)} inputs refused "
                                   f"(--strict), first {first['input']}: {first['error']['message']}")
        for replies in self._sent(checked_specs(items, prepare, refuse), create):
            summary.count(replies)
            if on_chunk is not None:
                on_chunk(replies)
        return summary

    def _sent(self, chunks: Iterator[list[TaskSpec]], create: bool) -> Iterator[list[dict]]:
        """Each chunk's replies, in order: a chunk is sent while the next one is checked.

        The first goes from this thread: a Ray it starts must not belong to the sender thread,
        since Ray's processes end with the thread that started them."""
        chunks = iter(chunks)
        first = next(chunks, None)
        if first is None:
            return
        yield self._send_chunk(first, create)
        with ThreadPoolExecutor(1) as sender:
            pending = None
            for specs in chunks:
                sending = sender.submit(self._send_chunk, specs, create)
                if pending is not None:
                    yield pending.result()
                pending = sending
            if pending is not None:
                yield pending.result()

    def _send_chunk(self, specs: list[TaskSpec], create: bool) -> list[dict]:
        """One chunk to the scheduler (one journal transaction); uploads one call each."""
        if not specs[0].uploaded:
            return self._call("submit_batch", [spec.to_dict() for spec in specs], create=create,
                              preload=specs[0].options)
        replies = []
        for spec, record in zip(specs, self.submit(specs, create=create)):
            outcome = ("skipped" if record["state"] == TaskState.SUCCEEDED.value
                       and record["task_id"] != spec.task_id else "queued")
            replies.append({key: record[key] for key in ("task_id", "project", "file_id",
                                                         "state")} | {"outcome": outcome})
        return replies

    def batch(self, batch_id: str) -> dict:
        """A batch's counts by state, audio seconds done and left, rate and ETA."""
        return self._call("batch", batch_id)

    def wait_batch(self, batch_id: str, timeout: float | None = None, poll_s: float = 0.5,
                   on_update: Callable[[dict], None] | None = None) -> dict:
        """Poll a batch until none of its tasks is queued or running; its last view."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.batch(batch_id)
            if on_update is not None:
                on_update(view)
            if view["done"]:
                return view
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(f"batch {batch_id} still not finished after {timeout:g} s")
            time.sleep(poll_s)

    def cancel_batch(self, batch_id: str) -> int:
        return self._call("cancel_batch", batch_id)

    def retry_batch(self, batch_id: str) -> int:
        return self._call("retry_batch", batch_id)

    def wait(self, task_id: str, timeout: float | None = None, poll_s: float = 0.5) -> dict:
        """Block until the task ends; returns its record, or raises TaskFailed / TaskCancelled."""
        return self.wait_all([task_id], timeout=timeout, poll_s=poll_s, raise_on_failure=True)[0]

    def wait_all(self, task_ids: list[str], timeout: float | None = None, poll_s: float = 0.5,
                 on_update: Callable[[list[dict]], None] | None = None,
                 raise_on_failure: bool = False) -> list[dict]:
        """Poll until every task is terminal, calling `on_update(records)` after each poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            records = self.get_tasks(task_ids)
            if on_update is not None:
                on_update(records)
            if all(TaskState(r["state"]).is_terminal() for r in records):
                break
            if deadline is not None and time.monotonic() >= deadline:
                pending = [r["task_id"] for r in records if not TaskState(r["state"]).is_terminal()]
                raise WaitTimedOut(f"still not finished after {timeout:g} s: {', '.join(pending)}")
            time.sleep(poll_s)
        if raise_on_failure:
            for record in records:
                if record["state"] == TaskState.FAILED.value:
                    error = record["error"] or {}
                    raise TaskFailed(f"task {record['task_id']} failed: {error.get('type')}: "
                                     f"{error.get('message')}", record)
                if record["state"] == TaskState.CANCELLED.value:
                    raise TaskCancelled(f"task {record['task_id']} was cancelled")
        return records

    def retry(self, task_id: str) -> dict:
        """Queue a failed or cancelled task again with the same spec; returns its record."""
        return self._call("retry", task_id)

    def cancel(self, task_id: str) -> dict:
        """Cancel a queued task, or abort a running one; its partial output never appears."""
        return self._call("cancel", task_id)

    def purge(self, task_id: str) -> dict:
        """Delete a finished task's stems and input that the service holds, now (an input
        another task needs stays); `{"stems_deleted", "input_deleted", "input_kept_for",
        "task"}`."""
        return self._call("purge", task_id)

    def webhook_deliveries(self, failed: bool = False, limit: int = 100) -> list[dict]:
        """Webhook deliveries, newest first; `failed`: the dead and those being retried."""
        return self._call("webhook_deliveries", failed, limit)

    def retry_delivery(self, delivery_id: str) -> dict:
        """Send a webhook delivery again now (a dead one gets a fresh set of attempts)."""
        return self._call("retry_delivery", delivery_id)

    def start_http(self) -> str:
        """Start the HTTP API beside the running scheduler (`http.*` of this manager's config);
        its URL. `stop` (and `shutdown`) remove it with the scheduler."""
        from ..http.deploy import start_http

        url = start_http(self.config)
        self._call("note_http", url)
        return url

    def shutdown(self, now: bool = False, grace_s: float | None = None,

                 hurry: Callable[[], bool] | None = None) -> dict:
        """Drain, then stop the scheduler and its workers.

        Running tasks get `grace_s` (default: config) to finish, none with `now=True` or once
        `hurry()` turns true; queued and interrupted tasks wait in the journal for the next start.
        """
        import ray

        handle = self.scheduler(create=False)
        ref = handle.drain.remote(0.0 if now else grace_s)
        hurried = now
        while not ray.wait([ref], timeout=0.2)[0]:
            if hurry is not None and not hurried and hurry():
                handle.drain.remote(0.0)
                hurried = True
        summary = _unwrap(lambda: ray.get(ref))
        if summary.get("http"):
            from ..http.deploy import stop_http

            stop_http(self.config)
            _unwrap(lambda: ray.get(handle.note_http.remote(None)))
        ray.kill(handle, no_restart=True)

        self._scheduler = None
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False
        return summary
