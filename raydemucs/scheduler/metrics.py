"""Custom metrics for the Ray dashboard and Prometheus, recorded inside the scheduler actor.

Ray exports them on each node's metrics endpoint with a `ray_` prefix, so
`raydemucs_queue_depth` is scraped as `ray_raydemucs_queue_depth`. Every series carries the
`service` tag: several services may share one cluster.
"""
from __future__ import annotations

import time

from ray.util.metrics import Counter, Gauge, Histogram

from ..core.task import PRIORITIES, TaskRecord, TaskState

RUN_BUCKETS_S = [1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600]
WAIT_BUCKETS_S = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600]
LAG_BUCKETS_S = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
WORKER_STATES = ("starting", "idle", "busy", "restarting", "dead")


class ServiceMetrics:
    """The scheduler's `Listener` (task counts and timings) and a per-tick sampler (queue, workers)."""

    def __init__(self, service_name: str):
        self._tags = {"service": service_name}
        self.submitted = self._metric(Counter, "raydemucs_tasks_submitted_total",
                                      "Tasks accepted (new, or a finished one submitted again)")
        self.finished = self._metric(Counter, "raydemucs_tasks_finished_total",
                                     "Tasks that reached a terminal state", "state")
        self.retries = self._metric(Counter, "raydemucs_task_retries_total",
                                    "Attempts that ended in a retry (requeued after a failure)")
        self.run_time = self._metric(Histogram, "raydemucs_task_run_seconds",
                                     "Time of one attempt on a worker, by how it ended", "outcome",
                                     boundaries=RUN_BUCKETS_S)
        self.queue_wait = self._metric(Histogram, "raydemucs_task_queue_wait_seconds",
                                       "Time from (re)queued to started on a worker",
                                       boundaries=WAIT_BUCKETS_S)
        self.audio = self._metric(Counter, "raydemucs_audio_seconds_total",
                                  "Seconds of input audio separated by succeeded tasks")
        self.queue_depth = self._metric(Gauge, "raydemucs_queue_depth",
                                        "Tasks waiting to run (ready or awaiting a retry)",
                                        "priority")
        self.tasks = self._metric(Gauge, "raydemucs_tasks", "Tasks in the journal by state",
                                  "state")
        self.workers = self._metric(Gauge, "raydemucs_workers", "Worker slots by pool and state",
                                    "pool", "state")
        self.rss = self._metric(Gauge, "raydemucs_worker_rss_bytes",
                                "Resident memory of a worker process", "pool", "worker")
        self.cpu = self._metric(Gauge, "raydemucs_worker_cpu_percent",
                                "CPU use of a worker process (100 = one core)", "pool", "worker")
        self.restarts = self._metric(Counter, "raydemucs_worker_restarts_total",
                                     "Worker actors replaced (died, hung, timed out, recycled)",
                                     "pool", "worker")
        self.background_errors = self._metric(
            Counter, "raydemucs_background_errors_total",
            "Failures of background work on the scheduler (a sweep, a listener, the webhook "
            "thread, ...), each logged with its traceback", "job")
        self.loop_lag = self._metric(
            Histogram, "raydemucs_scheduler_loop_lag_seconds",
            "How late the scheduler's event loop woke a sleeper (the longest a call or a "
            "background step held it, sampled)", boundaries=LAG_BUCKETS_S)
        self._priorities = set(PRIORITIES)
        self._restarts_seen: dict[str, int] = {}

    def _metric(self, kind, name: str, description: str, *tag_keys: str, **kwargs):
        metric = kind(name, description=description, tag_keys=("service", *tag_keys), **kwargs)
        metric.set_default_tags(self._tags)
        return metric

    def background_failed(self, job: str) -> None:
        """Count a failure of background work (`raydemucs.scheduler.supervision`)."""
        self.background_errors.inc(tags={"job": job})

    def lagged(self, seconds: float) -> None:
        """Record one loop-lag sample (`raydemucs.scheduler.supervision.LoopLag`)."""
        self.loop_lag.observe(seconds)

    # -- the scheduler's Listener -----------------------------------------------------------
    def on_transition(self, record: TaskRecord, previous: TaskState | None,
                      counted: bool = True) -> None:
        """Count and time one committed state change (`previous` is None for a new task); a task
        that stepped back to the queue (`counted` False) is no retry."""
        state = record.state
        if state is TaskState.QUEUED and (previous is None or previous.is_terminal()):
            self.submitted.inc()
        if state is TaskState.RUNNING:
            self._observe_elapsed(self.queue_wait, record.queued_at, record.started_at)
        if previous is TaskState.RUNNING:
            outcome = state.value
            if state is TaskState.QUEUED:
                outcome = "retried" if counted else "stepped_back"
            end = record.finished_at if record.finished_at is not None else time.time()
            self._observe_elapsed(self.run_time, record.started_at, end, {"outcome": outcome})
            if state is TaskState.QUEUED and counted:
                self.retries.inc()
        if state.is_terminal():
            self.finished.inc(tags={"state": state.value})
        if state is TaskState.SUCCEEDED and record.audio_duration_s:
            self.audio.inc(record.audio_duration_s)

    @staticmethod
    def _observe_elapsed(histogram, start: float | None, end: float | None,
                         tags: dict | None = None) -> None:
        if start is not None and end is not None:
            histogram.observe(max(0.0, end - start), tags=tags)

    # -- sampled every scheduler tick -------------------------------------------------------
    def observe(self, queued_by_priority: dict[str, int], counts_by_state: dict[str, int],
                workers: list[dict], pools: list[str]) -> None:
        """Set the queue, task and worker gauges (by pool); count worker restarts since the last
        call."""
        self._priorities.update(queued_by_priority)
        for priority in self._priorities:
            self.queue_depth.set(queued_by_priority.get(priority, 0), tags={"priority": priority})
        for state, count in counts_by_state.items():
            self.tasks.set(count, tags={"state": state})
        for pool in pools:
            members = [w["state"] for w in workers if w["pool"] == pool]
            for state in {*WORKER_STATES, *members}:
                self.workers.set(members.count(state), tags={"pool": pool, "state": state})
        for worker in workers:
            self._observe_worker(worker)

    def _observe_worker(self, worker: dict) -> None:
        tags = {"pool": worker["pool"], "worker": worker["worker_id"]}
        if worker.get("rss_bytes") is not None:
            self.rss.set(worker["rss_bytes"], tags=tags)
        if worker.get("cpu_percent") is not None:
            self.cpu.set(worker["cpu_percent"], tags=tags)
        new = worker["restarts"] - self._restarts_seen.get(worker["worker_id"], 0)
        if new > 0:
            self.restarts.inc(new, tags=tags)
        self._restarts_seen[worker["worker_id"]] = worker["restarts"]
