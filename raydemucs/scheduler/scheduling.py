"""Scheduling logic, free of Ray: priorities, routing to pools, dispatch, pool sizes, timeouts,
retries, cancel, recovery.

`Scheduler` is driven by calls (submit, tick, attempt_ended, worker_lost) and acts through an
injected pool, journal and clock, so tests step it deterministically. What an ended attempt leads
to is `raydemucs.scheduler.retry_policy.decide`'s; the Ray actor that hosts the scheduler lives in `service.py`.
Disk work it asks for (sweeping a folder) goes through `offload`, off the actor's event loop.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from ..core.config import Config, route
from ..core.errors import (
    InvalidInput,
    RayDemucsError,
    SeparationAborted,
    ShuttingDown,
    TaskConflict,
    TaskNotFound,
    TaskTimeout,
    WorkerDied,
)
from ..core.task import TaskRecord, TaskSpec, TaskState, spec_differences
from ..journal.tasks import TaskStore
from ..models.catalogue import OFFLINE_MODEL
from ..storage.folders import open_folder
from .autoscale import LIVE_STATES, Autoscaler, Member
from .counts import Tally
from .queues import DelayedTasks, PoolQueues
from .recovery import Recovery, read_recovery
from .retry_policy import Decision, Outcome, decide

logger = logging.getLogger(__name__)


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
    behind: bool = False  # sent to a busy worker: waits there; its clock has not started
    step_back: str = ""  # why it was asked back to the queue (a better priority, a drain)
    helpers: tuple = ()  # idle workers lent to split a long track across
    pool: str = ""  # the pool of the task's model (routed once, at dispatch)


def model_key(options) -> tuple:
    return (options.model, options.repo)


class Scheduler:
    def __init__(self, config: Config, store: TaskStore, pool: Pool,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random,
                 listener: Listener | None = None,
                 offload: Callable[[Callable[[], None]], None] = lambda work: work()):
        self.config = config
        self.listener = listener
        self.store = store
        self.pool = pool
        self.clock = clock
        self.rng = rng
        self.offload = offload
        self.pools = config.worker_pools()
        self.queue = PoolQueues(pool.name for pool in self.pools)
        self.autoscaler = Autoscaler(clock)
        self.delayed = DelayedTasks()
        self.running: dict[str, Running] = {}
        self.active: dict[str, TaskRecord] = {}
        self.tally = Tally(clock)
        self.accepting = True
        self.dispatching = True

    # -- submission -------------------------------------------------------------------------
    def recover(self, found: Recovery | None = None) -> None:
        """Requeue what the journal holds unfinished: in order, running ones as interrupted;
        those whose output folder is already complete are succeeded."""
        found = found or read_recovery(self.store, self.config.storage)
        self.tally.load(found.counts, found.batches, found.unfinished)
        for record in found.unfinished:
            if record.task_id in found.finished:
                self._finish(record, TaskState.SUCCEEDED, outputs=found.finished[record.task_id])
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

    def check(self, spec: TaskSpec) -> TaskRecord | None:
        """Raise what `submit` would refuse `spec` for (draining, no pool for its model, its key
        taken by a task that asked for something else); returns the task of its key, if any."""
        if not self.accepting:
            raise ShuttingDown("the service is shutting down and accepts no new tasks")
        self.pool_of(spec)
        existing = self.active.get(spec.task_id) or self.store.find(spec.project, spec.file_id,
                                                                    spec.owner)
        if existing is None:
            return None
        existing = self.active.get(existing.task_id, existing)
        differences = spec_differences(existing.spec, spec)
        if differences and not self.reruns(existing, spec):
            hint = ("pass --force to replace its stems" if existing.state is TaskState.SUCCEEDED
                    else "cancel it first")
            raise TaskConflict(f"{spec.project}/{spec.file_id} is already task {existing.task_id} "
                               f"({existing.state.value}) with other options "
                               f"({'; '.join(differences)}); {hint}, or choose another --file-id")
        return existing

    @staticmethod
    def reruns(existing: TaskRecord, spec: TaskSpec) -> bool:
        """Whether `spec` runs its key's task again: it failed, was cancelled, or is forced."""
        return existing.state in (TaskState.FAILED, TaskState.CANCELLED) or (
            existing.state is TaskState.SUCCEEDED and spec.force)

    def submit(self, spec: TaskSpec) -> TaskRecord:
        """Accept a task (committed before returning); the same (project, file id) asking the same
        is the same task (see `check`)."""
        existing = self.check(spec)
        if existing is not None:
            return self._rerun(existing, spec) if self.reruns(existing, spec) else existing
        record = self.store.insert(self._new_record(spec))
        if record.task_id == spec.task_id:
            self._accepted(record)
        return record

    def submit_many(self, specs: list[TaskSpec]) -> list[tuple[TaskRecord, str] | InvalidInput]:
        """Accept a batch's chunk: the new tasks in one journal transaction. Each spec is answered
        with its task and what happened (`queued`: new or run again; `skipped`: its key succeeded
        asking the same, or the result cache holds its stems; `known`: the same ask is queued or
        running), or with the error that refused it alone."""
        answers, new, seen = [], [], {}
        for spec in specs:
            key = (spec.owner, spec.project, spec.file_id)
            first, answer = seen.get(key, (None, None))
            if first is None:
                try:
                    answer = self._answer(spec, new)
                except InvalidInput as exc:
                    answer = exc
                seen[key] = (spec, answer)
            elif differences := spec_differences(first, spec):
                answer = TaskConflict(f"{spec.project}/{spec.file_id} is in this batch twice, "
                                      f"asking for other stems ({'; '.join(differences)})")

            answers.append(answer)


        self.store.insert_many(new)
        for record in new:
            self._accepted(record)
        return answers

    def _answer(self, spec: TaskSpec, new: list) -> tuple[TaskRecord, str]:
        existing = self.check(spec)
        if existing is None:
            new.append(self._new_record(spec))
            return new[-1], "skipped" if self._cached_folder(spec) else "queued"
        if self.reruns(existing, spec):
            return self._rerun(existing, spec), "queued"
        return existing, "skipped" if existing.state is TaskState.SUCCEEDED else "known"

    def _new_record(self, spec: TaskSpec) -> TaskRecord:
        now = self.clock()
        return TaskRecord(spec=spec, seq=self.store.next_seq(), submitted_at=now, queued_at=now)

    def _accepted(self, record: TaskRecord) -> None:
        """A new record is in the journal: count it, queue it."""
        self.tally.add(record)
        if self.listener is not None:
            self.listener.on_transition(record, None)
        spec = record.spec
        logger.info("task %s: queued (%s/%s, priority %d)", spec.task_id, spec.project,
                    spec.file_id, spec.priority)
        self.active[record.task_id] = record
        self._enqueue(record)

    def _rerun(self, existing: TaskRecord, spec: TaskSpec) -> TaskRecord:
        """Queue the task of an existing key again, as `spec` asks, under its id."""
        now = self.clock()
        record = dataclasses.replace(
            existing, spec=dataclasses.replace(spec, task_id=existing.task_id),
            seq=self.store.next_seq(), attempts=0, progress=0.0, error=None, outputs=None,
            worker=None, node=None, submitted_at=now, started_at=None, finished_at=None,
            retry_at=None, queued_at=now, audio_duration_s=None, segment_s=None, expired_at=None)
        self._set_state(record, TaskState.QUEUED)
        self.active[record.task_id] = record
        self._enqueue(record)
        return record

    def pool_of(self, spec: TaskSpec) -> str:
        """The name of the pool that serves the task's model on its device; InvalidInput when
        none does."""
        options = spec.options
        return route(self.pools, options.model, options.device, options.precision).name

    def _enqueue(self, record: TaskRecord) -> None:
        self.queue[self.pool_of(record.spec)].push(record.task_id, record.spec.priority, record.seq)

    def retry(self, task_id: str) -> TaskRecord:
        """Run a failed or cancelled task again (the dead-letter queue's resubmit)."""
        return self.submit(self.get(task_id).spec)

    def batch(self, batch_id: str) -> dict:
        """A batch's counts by state, audio seconds done and left, rate and ETA."""
        view = self.tally.batch(batch_id)
        if view is None:
            raise TaskNotFound(f"no batch with id {batch_id!r}")
        return view

    def cancel_batch(self, batch_id: str) -> int:
        """Cancel a batch's queued and running tasks; how many."""
        self.batch(batch_id)
        ids = [task_id for task_id, record in self.active.items() if record.spec.batch_id == batch_id]
        self._in_transactions(ids, self.cancel)
        return len(ids)

    def retry_batch(self, batch_id: str) -> int:
        """Run a batch's failed and cancelled tasks again; how many."""
        self.batch(batch_id)
        ids = self.store.batch_task_ids(batch_id, (TaskState.FAILED, TaskState.CANCELLED))
        self._in_transactions(ids, self.retry)
        return len(ids)

    def _in_transactions(self, task_ids: list[str], change: Callable[[str], object]) -> None:
        """`change` each task, a thousand to a journal transaction (synced once each, and short
        enough that the journal's other writers are not kept waiting)."""
        for start in range(0, len(task_ids), 1000):
            with self.store.transaction():
                for task_id in task_ids[start:start + 1000]:
                    change(task_id)

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
        task sent to a busy worker (prefetch) waits there; its clock starts when its segments
        start to run, or when the tasks before it have ended.
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
            self.running[record.task_id] = Running(
                worker.worker_id, record.attempts, now + self._timeout_s(record),
                behind=worker.load > 0, helpers=helpers, pool=pool)
            self.pool.start(worker.worker_id, record.attempt_spec(), record.attempts,
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
            self._step_back(task_id, run, "stepped back for a task of better priority")

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

    def _step_back(self, task_id: str, run: Running, reason: str) -> None:
        """Ask a prefetched task that has not started to return to the queue."""
        run.step_back, run.abort_sent_at = reason, self.clock()
        self.pool.abort(run.worker_id, task_id, run.attempt)

    def _timeout_s(self, record: TaskRecord) -> float:
        return record.spec.timeout_s or self.config.tasks.timeout_s

    def _start_clock(self, task_id: str, run: Running) -> None:
        run.behind, run.deadline = False, self.clock() + self._timeout_s(self.active[task_id])
        self.active[task_id].started_at = self.clock()

    def tick(self) -> None:
        """Release due retries, enforce deadlines (abort, then kill after the grace), dispatch."""
        now = self.clock()
        for task_id in self.delayed.pop_ready(now):
            self._enqueue(self.active[task_id])
        grace_s = self.config.tasks.abort_grace_s
        for task_id, run in list(self.running.items()):
            if task_id not in self.running or (run.behind and run.abort_sent_at is None):
                continue
            if run.step_back:
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
    def report_progress(self, task_id: str, attempt: int, progress: float,
                        phase: str | None = None) -> None:
        """A worker's poll: the attempt's progress, and its phase (a waiting attempt whose
        segments started to run is running: its clock starts)."""
        run = self.running.get(task_id)
        if run is None or run.attempt != attempt:
            return
        if run.behind and phase == "separating" and not run.step_back:
            self._start_clock(task_id, run)
        record = self.active[task_id]
        record.progress = max(record.progress, min(1.0, float(progress)))

    def attempt_ended(self, task_id: str, attempt: int, error: RayDemucsError | None = None,
                      outputs: dict | None = None, audio_duration_s: float | None = None) -> None:
        """An attempt's answer: its stems (`error` None) or the error it ended with. Answers of
        attempts the scheduler gave up on (replaced workers, older attempts) are ignored."""
        run = self.running.get(task_id)
        if run is None or run.attempt != attempt:
            return
        self._run_ended(task_id, run)
        record = self.active[task_id]
        outcome = decide(record.attempts, run, error, self._timeout_s(record), self.config.tasks,
                         self.rng)
        self._carry_out(record, outcome, outputs, audio_duration_s)

    def worker_lost(self, worker_id: str, reason: str) -> None:
        """A worker died: fail its attempts as retryable and have the pool replace it."""
        self._replace_worker(worker_id, f"it died: {reason}")

    def _replace_worker(self, worker_id: str, reason: str, culprit: str | None = None,
                        error: RayDemucsError | None = None) -> None:
        """Replace a worker; `culprit` ends with `error`, its other attempts as retryable."""
        self.pool.replace(worker_id, reason)
        runs = [(task_id, run, run.behind) for task_id, run in self.running.items()
                if run.worker_id == worker_id]  # `behind` before any clock starts below
        for task_id, run, waiting in runs:
            if waiting and task_id != culprit:  # never started: back to the queue, uncounted
                run.step_back = "its worker was replaced before it started"
                self.attempt_ended(task_id, run.attempt, SeparationAborted(run.step_back))
            else:
                self.attempt_ended(task_id, run.attempt, error if task_id == culprit else
                                   WorkerDied(f"worker {worker_id} was replaced: {reason}"))

    def _run_ended(self, task_id: str, ended: Running) -> None:
        """An attempt left its worker: its lent helpers go back, and when no started attempt is
        left there, the first waiting behind it starts its clock."""
        del self.running[task_id]
        if ended.helpers:
            self.pool.release(ended.helpers, task_id)
        on_worker = [(t, run) for t, run in self.running.items() if run.worker_id == ended.worker_id]
        if any(not run.behind for _, run in on_worker):
            return
        waiting = [(t, run) for t, run in on_worker if not run.step_back]
        if waiting:
            self._start_clock(*waiting[0])

    def _cached_folder(self, spec: TaskSpec) -> str | None:

        """Another task's folder holding stems for the same input, model and options."""
        found = self.store.find_result(spec.cache_key) if spec.cache_key else None
        if found is None or found[1] == spec.output_location:
            return None
        return found[1]

    def _carry_out(self, record: TaskRecord, outcome: Outcome, outputs: dict | None,
                   audio_duration_s: float | None) -> None:
        decision = outcome.decision
        if decision is Decision.SUCCEED:
            record.audio_duration_s = audio_duration_s
            if record.spec.cache_key:
                self.store.remember_result(record.spec.cache_key, record.task_id,
                                           record.spec.output_location)
            self._finish(record, TaskState.SUCCEEDED, outputs=outputs)
        elif decision is Decision.CANCEL:
            self._finish(record, TaskState.CANCELLED)
        elif decision is Decision.STEP_BACK:
            record.attempts -= 1
            record.queued_at = self.clock()
            self._set_state(record, TaskState.QUEUED, note=outcome.note, counted=False)
            self._enqueue(record)
        elif decision is Decision.RETRY:
            record.error = outcome.error.to_dict()
            record.segment_s = outcome.segment_s or record.segment_s
            record.retry_at = record.queued_at = self.clock() + outcome.delay_s
            self._set_state(record, TaskState.QUEUED, note=outcome.note)
            self.delayed.push(record.task_id, record.retry_at)
        else:
            record.error = outcome.error.to_dict()
            self._finish(record, TaskState.FAILED)

    # -- shutdown ---------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Refuse new submissions and start no more tasks; queued ones (and prefetched ones, which
        step back) stay in the journal."""
        self.accepting = False
        self.dispatching = False
        for task_id, run in list(self.running.items()):
            if run.behind and run.abort_sent_at is None:
                self._step_back(task_id, run, "stepped back: the service is draining")

    # -- queries ----------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord:
        record = self.active.get(task_id) or self.store.get(task_id)
        if record is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return record

    def view(self, task_id: str) -> dict:
        """A task's record as clients see it, with its place in its pool's queue while it waits
        there (0: next; None: not waiting in the queue)."""
        record = self.get(task_id)
        data = record.to_dict()
        position = None
        if record.state is TaskState.QUEUED and task_id in self.active:
            position = self.queue[self.pool_of(record.spec)].rank(task_id)
        return {**data, "queue_position": position}

    def unfinished_of(self, owner: str) -> int:
        """Queued and running tasks of one owner."""
        return sum(record.spec.owner == owner for record in self.active.values())

    def served_models(self) -> list[dict]:
        """The models this service serves (its default and those its pools list), with the pool
        and device of each; a client may ask for these only."""
        default = self.config.separation
        names = dict.fromkeys([default.model, *(m for p in self.pools for m in p.models)])
        served = []
        for name in names:
            try:
                pool = route(self.pools, name)
            except InvalidInput:
                continue
            served.append({"name": name, "pool": pool.name, "device": pool.device,
                           "default": name == default.model})
        return served

    def queued_by_priority(self) -> dict[str, int]:
        """Tasks waiting to run (ready or awaiting a retry), by priority name."""
        return self.tally.queued_by_priority()

    def pool_counts(self) -> list[dict]:
        """Each pool's workers (all, and those not live yet), queued tasks and limits."""
        counts = []
        for pool in self.pools:
            members = self.pool.members(pool.name)
            counts.append({"name": pool.name, "models": list(pool.models),
                           "device": pool.device, "workers": len(members),
                           "pending": sum(m.state not in LIVE_STATES for m in members),
                           "queued": len(self.queue[pool.name]),
                           "min_workers": pool.min_workers, "max_workers": pool.max_workers})
        return counts

    def queue_counts(self) -> dict[str, int]:
        """Records by state (kept in memory, not counted in the journal), and those waiting for
        a retry."""
        counts = {state.value: self.tally.states[state.value] for state in TaskState}
        counts["waiting_retry"] = len(self.delayed)
        return counts

    # -- journal ----------------------------------------------------------------------------
    def _set_state(self, record: TaskRecord, state: TaskState, note: str = "",
                   counted: bool = True) -> None:
        previous, record.state = record.state, state
        self.store.save(record)
        self.tally.move(record, previous)
        if self.listener is not None:
            self.listener.on_transition(record, previous, counted)
        elapsed = self.clock() - record.submitted_at
        logger.info("task %s attempt %d: %s -> %s after %.2f s%s", record.task_id, record.attempts,
                    previous.value, state.value, elapsed, f" ({note})" if note else "")

    def _finish(self, record: TaskRecord, state: TaskState, outputs: dict | None = None) -> None:
        record.finished_at = self.clock()
        if state is TaskState.SUCCEEDED:
            record.outputs, record.error, record.progress = outputs, None, 1.0
        elif record.attempts:
            # an attempt killed mid-write leaves a hidden staging folder; no later write sweeps it
            folder = open_folder(record.spec.output_location, self.config.storage)
            self.offload(folder.sweep)
        self.active.pop(record.task_id, None)
        self._set_state(record, state, note=(record.error or {}).get("message", "")
                        if state is TaskState.FAILED else "")
