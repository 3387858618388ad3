"""Scheduling logic, free of Ray: priorities, routing to pools, dispatch, pool sizes, timeouts,
retries, cancel, recovery.

`Scheduler` is driven by calls (submit, tick, task_succeeded, task_failed, worker_lost) and acts
through an injected pool, journal and clock, so tests step it deterministically. The Ray actor
that hosts it lives in `service.py`.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from .autoscale import LIVE_STATES, Autoscaler, Member
from .config import Config, route
from .errors import (InvalidInput, OutOfMemory, RayDemucsError, SeparationAborted, ShuttingDown,
                     TaskNotFound, TaskTimeout, WorkerDied)
from .models import OFFLINE_MODEL
from .outputs import open_folder
from .queue import DelayedTasks, PoolQueues
from .store import TaskStore
from .task import TaskRecord, TaskSpec, TaskState, priority_name

logger = logging.getLogger("raydemucs.scheduler")

MIN_OOM_SEGMENT_S = 1.0


class FreeWorker(Protocol):
    worker_id: str
    node: str | None
    models: frozenset
    load: int


class Listener(Protocol):
    """Told of every committed state change (metrics hang here)."""

    def on_transition(self, record: TaskRecord, previous: TaskState | None,
                      counted: bool = True) -> None:
        """`counted` is False when a running task went back to the queue without using up an
        attempt (a prefetched task stepping back)."""


class Pool(Protocol):
    """What the scheduler needs from the workers of every pool (`config.worker_pools()`, by name);
    idle/busy bookkeeping is theirs."""

    def free_workers(self, pool: str) -> list[FreeWorker]: ...
    def members(self, pool: str) -> list[Member]: ...
    def add_workers(self, pool: str, count: int) -> None: ...
    def remove(self, worker_id: str) -> None: ...
    def start(self, worker_id: str, spec: TaskSpec, attempt: int, reuse_from: str | None = None,
              helpers: tuple = ()) -> None: ...
    def release(self, worker_ids: tuple, task_id: str) -> None: ...
    def abort(self, worker_id: str, task_id: str, attempt: int) -> None: ...
    def replace(self, worker_id: str, reason: str) -> None: ...


@dataclass
class Running:
    worker_id: str
    attempt: int
    deadline: float
    abort_sent_at: float | None = None
    cancel_requested: bool = False
    behind: bool = False  # prefetched: waits in its worker until the task before it ends
    preempted: bool = False  # asked to step back for a task of better priority
    helpers: tuple = ()  # idle workers lent to split a long track across
    pool: str = ""  # the pool of the task's model (routed once, at dispatch)


def model_key(options) -> tuple:
    return (options.model, options.repo)


def retry_delay_s(attempt: int, base_s: float, max_s: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, scaled by [0.5, 1)."""
    return min(max_s, base_s * 2 ** max(0, attempt - 1)) * (0.5 + 0.5 * rng())


class Scheduler:
    def __init__(self, config: Config, store: TaskStore, pool: Pool,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random,
                 listener: Listener | None = None):
        self.config = config
        self.listener = listener
        self.store = store
        self.pool = pool
        self.clock = clock
        self.rng = rng
        self.pools = config.worker_pools()
        self.batch_sizes = {pool.name: pool.batch_size for pool in self.pools}  # tasks at once
        self.queue = PoolQueues(pool.name for pool in self.pools)
        self.autoscaler = Autoscaler(clock)
        self.delayed = DelayedTasks()
        self.running: dict[str, Running] = {}
        self.active: dict[str, TaskRecord] = {}
        self.accepting = True
        self.dispatching = True

    # -- submission -------------------------------------------------------------------------
    def recover(self) -> None:
        """Requeue what the journal holds unfinished: in order, running ones as interrupted."""
        for record in self.store.unfinished():
            done = open_folder(record.spec.output_location, self.config.storage).finished(
                record.task_id)
            if done is not None:
                self._finish(record, TaskState.SUCCEEDED, outputs=done)
                continue
            try:
                self.pool_of(record.spec)
            except InvalidInput as exc:  # the pools changed since it was accepted
                record.error = exc.to_dict()
                self._finish(record, TaskState.FAILED)
                continue
            if record.state is TaskState.RUNNING:
                record.error = WorkerDied("interrupted by a service restart").to_dict()
                self._set_state(record, TaskState.QUEUED)
            self.active[record.task_id] = record
            self._enqueue(record)

    def submit(self, spec: TaskSpec) -> TaskRecord:
        """Accept a task (committed before returning); the same (project, file id) is the same task."""
        if not self.accepting:
            raise ShuttingDown("the service is shutting down and accepts no new tasks")
        self.pool_of(spec)  # refuses a model that no pool serves
        existing = self.active.get(spec.task_id) or self.store.find(spec.project, spec.file_id)
        if existing is not None:
            if not existing.state.is_terminal() or not (
                    spec.force or existing.state is not TaskState.SUCCEEDED):
                return self.active.get(existing.task_id, existing)
            record = dataclasses.replace(
                existing, spec=dataclasses.replace(spec, task_id=existing.task_id),
                seq=self.store.next_seq(), attempts=0, progress=0.0, error=None, outputs=None,
                worker=None, node=None, submitted_at=self.clock(), started_at=None,
                finished_at=None, retry_at=None, queued_at=self.clock(), audio_duration_s=None)
            self._set_state(record, TaskState.QUEUED)
        else:
            now = self.clock()
            record = self.store.insert(TaskRecord(spec=spec, seq=self.store.next_seq(),
                                                  submitted_at=now, queued_at=now))
            if record.task_id != spec.task_id:
                return record
            if self.listener is not None:
                self.listener.on_transition(record, None)
            logger.info("task %s: queued (%s/%s, priority %d)", spec.task_id, spec.project,
                        spec.file_id, spec.priority)
        self.active[record.task_id] = record
        self._enqueue(record)
        return record

    def pool_of(self, spec: TaskSpec) -> str:
        """The name of the pool that serves the task's model; InvalidInput when none does."""
        return route(self.pools, spec.options.model).name

    def _enqueue(self, record: TaskRecord) -> None:
        self.queue[self.pool_of(record.spec)].push(record.task_id, record.spec.priority, record.seq)

    def retry(self, task_id: str) -> TaskRecord:
        """Run a failed or cancelled task again (the dead-letter queue's resubmit)."""
        return self.submit(self.get(task_id).spec)

    def cancel(self, task_id: str) -> TaskRecord:
        """Drop a queued task, or abort a running one (killing its worker if it does not stop)."""
        record = self.get(task_id)
        if record.state.is_terminal():
            return record
        run = self.running.get(task_id)
        if run is None:
            self.queue.remove(task_id)
            self.delayed.remove(task_id)
            self._finish(record, TaskState.CANCELLED)
        elif not run.cancel_requested:
            run.cancel_requested = True
            run.abort_sent_at = run.abort_sent_at or self.clock()
            self.pool.abort(run.worker_id, task_id, run.attempt)
        return record

    # -- dispatch and time ------------------------------------------------------------------
    def dispatch(self) -> int:
        """Start queued tasks on free workers of their pools, then size the pools; returns how many
        started."""
        if not self.dispatching:
            return 0
        started = 0
        for pool in self.pools:
            started += self._dispatch_pool(pool.name)
            self._preempt_for_priority(pool.name)
        self._scale()
        return started

    def _dispatch_pool(self, pool: str) -> int:
        """Start the pool's queued tasks on its free workers, best priority first.

        The least loaded workers come first, and among them one that holds the task's model. A
        task sent to a busy worker (prefetch) waits there; its clock starts when the task
        before it ends.
        """
        started, queue = 0, self.queue[pool]
        while len(queue):
            free = self.pool.free_workers(pool)
            if not free:
                break
            record = self.active[queue.pop()]
            least = [w for w in free if w.load == free[0].load]
            key = model_key(record.spec.options)
            worker = next((w for w in least if key in w.models), least[0])
            now = self.clock()
            record.attempts += 1
            record.worker, record.node = worker.worker_id, worker.node
            record.started_at, record.progress, record.retry_at = now, 0.0, None
            self._set_state(record, TaskState.RUNNING)
            helpers = self._helpers_for(record.spec, worker, free, len(queue))
            run = Running(worker.worker_id, record.attempts, now + self._timeout_s(record),
                          behind=worker.load >= self.batch_sizes[pool], helpers=helpers,
                          pool=pool)
            self.running[record.task_id] = run
            self.pool.start(worker.worker_id, record.spec, record.attempts,
                            reuse_from=self._cached_folder(record.spec), helpers=helpers)
            started += 1
        return started

    def _helpers_for(self, spec: TaskSpec, lead: FreeWorker, free: list, waiting: int) -> tuple:
        """Idle workers of the pool to lend a long track's lead (`tasks.split_over_s`): never
        more than the pool's queue leaves spare (one idle worker stays for each waiting task),
        and never for a streamed track (memory comes first there) or `demucs_unittest` (its
        weights are random in each process)."""
        tasks, options = self.config.tasks, spec.options
        if (tasks.split_over_s is None or spec.duration_s is None or lead.load
                or spec.duration_s < tasks.split_over_s or options.model == OFFLINE_MODEL
                or options.streams(spec.duration_s)):
            return ()
        key = model_key(options)
        idle = sorted((w for w in free if w.load == 0 and w is not lead),
                      key=lambda w: key not in w.models)  # those holding the model first
        lent = min(len(idle) - waiting, tasks.max_pieces - 1)
        return tuple(w.worker_id for w in idle[:max(0, lent)])

    def _preempt_for_priority(self, pool: str) -> None:
        """Keep priorities strict under prefetch: a waiting task of worse priority than the best in
        its pool's queue steps back (it is requeued as it was, its attempt not counted)."""
        best = self.queue[pool].peek_priority()
        if best is None:
            return
        waiting = [(self.active[t].spec.priority, self.active[t].seq, t, run)
                   for t, run in self.running.items()
                   if run.behind and run.abort_sent_at is None
                   and self.active[t].spec.priority > best and run.pool == pool]
        if waiting:
            _, _, task_id, run = max(waiting)
            self._step_back(task_id, run)

    def _scale(self) -> None:
        """Grow each pool while its tasks wait with no free worker; remove its idle workers."""
        for pool in self.pools:
            plan = self.autoscaler.plan(pool, self.pool.members(pool.name), len(self.queue[pool.name]))
            if plan.add:
                logger.info("pool %s: adding %d worker(s) for %d waiting task(s)", pool.name,
                            plan.add, len(self.queue[pool.name]))
                self.pool.add_workers(pool.name, plan.add)
            for worker_id in plan.remove:
                logger.info("pool %s: removing %s (no task for %g s)", pool.name, worker_id,
                            pool.idle_timeout_s)
                self.pool.remove(worker_id)

    def _step_back(self, task_id: str, run: Running) -> None:
        """Ask a prefetched task that has not started to return to the queue."""
        run.preempted, run.abort_sent_at = True, self.clock()
        self.pool.abort(run.worker_id, task_id, run.attempt)

    def _timeout_s(self, record: TaskRecord) -> float:
        return record.spec.timeout_s or self.config.tasks.timeout_s

    def tick(self) -> None:
        """Release due retries, enforce deadlines (abort, then kill after the grace), dispatch."""
        now = self.clock()
        for task_id in self.delayed.pop_ready(now):
            self._enqueue(self.active[task_id])
        grace_s = self.config.tasks.abort_grace_s
        for task_id, run in list(self.running.items()):
            if task_id not in self.running or (run.behind and run.abort_sent_at is None):
                continue
            if run.preempted:
                continue  # it steps back at its next check; never worth killing the worker
            if run.abort_sent_at is None and now >= run.deadline:
                logger.warning("task %s attempt %d: past its deadline, aborting", task_id, run.attempt)
                run.abort_sent_at = now
                self.pool.abort(run.worker_id, task_id, run.attempt)
            elif run.abort_sent_at is not None and now >= run.abort_sent_at + grace_s:
                reason = f"did not stop within {grace_s:g} s of an abort"
                self._replace_worker(run.worker_id, reason, task_id,
                                     TaskTimeout(f"task timed out; worker {reason}"))
        self.dispatch()

    # -- results ----------------------------------------------------------------------------
    def report_progress(self, task_id: str, attempt: int, progress: float) -> None:
        run = self.running.get(task_id)
        if run is not None and run.attempt == attempt:
            record = self.active[task_id]
            record.progress = max(record.progress, min(1.0, float(progress)))

    def task_succeeded(self, task_id: str, attempt: int, outputs: dict,
                       audio_duration_s: float | None = None) -> None:
        run = self.running.get(task_id)
        if run is None or run.attempt != attempt:
            return
        self._run_ended(task_id, run)
        record = self.active[task_id]
        record.audio_duration_s = audio_duration_s
        if record.spec.cache_key:
            self.store.remember_result(record.spec.cache_key, task_id, record.spec.output_location)
        self._finish(record, TaskState.SUCCEEDED, outputs=outputs)

    def task_failed(self, task_id: str, attempt: int, error: RayDemucsError) -> None:
        run = self.running.get(task_id)
        if run is None or run.attempt != attempt:
            return
        self._attempt_ended(task_id, run, error)

    def worker_lost(self, worker_id: str, reason: str) -> None:
        """A worker died: fail its attempts as retryable and have the pool replace it."""
        self._replace_worker(worker_id, f"it died: {reason}")

    def _replace_worker(self, worker_id: str, reason: str, culprit: str | None = None,
                        error: RayDemucsError | None = None) -> None:
        """Replace a worker; `culprit` ends with `error`, its other attempts as retryable."""
        self.pool.replace(worker_id, reason)
        runs = [(task_id, run, run.behind) for task_id, run in self.running.items()
                if run.worker_id == worker_id]
        for task_id, run, waiting in runs:
            if waiting and task_id != culprit:  # never started: back to the queue, uncounted
                run.preempted = True
                self._attempt_ended(task_id, run, SeparationAborted("its worker was replaced"))
            else:
                self._attempt_ended(task_id, run, error if task_id == culprit else
                                    WorkerDied(f"worker {worker_id} was replaced: {reason}"))

    def _run_ended(self, task_id: str, ended: Running) -> None:
        """An attempt left its worker: its lent helpers go back, and the task waiting behind it
        (with a `batch_size`, as many as the batch has room for) starts its clock now."""
        del self.running[task_id]
        if ended.helpers:
            self.pool.release(ended.helpers, task_id)
        now = self.clock()
        on_worker = [(t, run) for t, run in self.running.items() if run.worker_id == ended.worker_id]
        room = self.batch_sizes[ended.pool] - sum(not run.behind for _, run in on_worker)
        waiting = [(t, run) for t, run in on_worker if run.behind and not run.preempted]
        for waiting_id, run in waiting[:max(0, room)]:
            run.behind, run.deadline = False, now + self._timeout_s(self.active[waiting_id])
            self.active[waiting_id].started_at = now

    def _cached_folder(self, spec: TaskSpec) -> str | None:
        """Another task's folder holding stems for the same input, model and options."""
        found = self.store.find_result(spec.cache_key) if spec.cache_key else None
        if found is None or found[1] == spec.output_location:
            return None
        return found[1]

    def _attempt_ended(self, task_id: str, run: Running, error: RayDemucsError) -> None:
        self._run_ended(task_id, run)
        record = self.active[task_id]
        if run.cancel_requested:
            self._finish(record, TaskState.CANCELLED)
            return
        if run.preempted and isinstance(error, SeparationAborted):
            record.attempts -= 1
            record.queued_at = self.clock()
            self._set_state(record, TaskState.QUEUED, note="stepped back for a task of better priority",
                            counted=False)
            self._enqueue(record)
            return
        if isinstance(error, SeparationAborted) and run.abort_sent_at is not None:
            error = TaskTimeout(f"task ran past its timeout of {self._timeout_s(record):g} s")
        record.error = error.to_dict()
        retryable = error.retryable or isinstance(error, SeparationAborted)
        if retryable and record.attempts <= self.config.tasks.max_retries:
            tasks = self.config.tasks
            delay = retry_delay_s(record.attempts, tasks.retry_backoff_s, tasks.retry_backoff_max_s,
                                  self.rng)
            note = f"retry in {delay:.2f} s: {error}"
            if isinstance(error, OutOfMemory) and error.segment_s:
                segment_s = max(MIN_OOM_SEGMENT_S, error.segment_s / 2)
                options = dataclasses.replace(record.spec.options, segment=segment_s)
                record.spec = dataclasses.replace(record.spec, options=options)
                note += f"; with a {segment_s:g} s segment"
            record.retry_at = record.queued_at = self.clock() + delay
            self._set_state(record, TaskState.QUEUED, note=note)
            self.delayed.push(task_id, record.retry_at)
        else:
            self._finish(record, TaskState.FAILED)

    # -- shutdown ---------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Refuse new submissions and start no more tasks; queued ones (and prefetched ones, which
        step back) stay in the journal."""
        self.accepting = False
        self.dispatching = False
        for task_id, run in list(self.running.items()):
            if run.behind and run.abort_sent_at is None:
                self._step_back(task_id, run)

    # -- queries ----------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord:
        record = self.active.get(task_id) or self.store.get(task_id)
        if record is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return record

    def queued_by_priority(self) -> dict[str, int]:
        """Tasks waiting to run (ready or awaiting a retry), by priority name."""
        counts: dict[str, int] = {}
        for record in self.active.values():
            if record.state is TaskState.QUEUED:
                name = priority_name(record.spec.priority)
                counts[name] = counts.get(name, 0) + 1
        return counts

    def pool_counts(self) -> list[dict]:
        """Each pool's workers (all, and those not live yet), queued tasks and limits."""
        counts = []
        for pool in self.pools:
            members = self.pool.members(pool.name)
            counts.append({"name": pool.name, "models": list(pool.models),
                           "workers": len(members),
                           "pending": sum(m.state not in LIVE_STATES for m in members),
                           "queued": len(self.queue[pool.name]),
                           "min_workers": pool.min_workers, "max_workers": pool.max_workers})
        return counts

    def queue_counts(self) -> dict[str, int]:
        counts = self.store.count_by_state()
        counts["waiting_retry"] = len(self.delayed)
        return counts

    # -- journal ----------------------------------------------------------------------------
    def _set_state(self, record: TaskRecord, state: TaskState, note: str = "",
                   counted: bool = True) -> None:
        previous, record.state = record.state, state
        self.store.save(record)
        if self.listener is not None:
            self.listener.on_transition(record, previous, counted)
        elapsed = self.clock() - record.submitted_at
        logger.info("task %s attempt %d: %s -> %s after %.2f s%s", record.task_id, record.attempts,
                    previous.value, state.value, elapsed, f" ({note})" if note else "")

    def _finish(self, record: TaskRecord, state: TaskState, outputs: dict | None = None) -> None:
        record.finished_at = self.clock()
        if state is TaskState.SUCCEEDED:
            record.outputs, record.error, record.progress = outputs, None, 1.0
        else:
            # an attempt killed mid-write leaves a hidden staging folder; no later write sweeps it
            open_folder(record.spec.output_location, self.config.storage).sweep()
        self.active.pop(record.task_id, None)
        self._set_state(record, state, note=(record.error or {}).get("message", "")
                        if state is TaskState.FAILED else "")

