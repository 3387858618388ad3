"""Tasks on workers: dispatch (best priority first, prefetch, idle workers lent to a long track),
pool sizes, deadlines, progress, and what an ended attempt leads to.

`Attempts` acts through an injected pool (`Pool`: Ray actors in the service, a fake in tests) and
changes task states only through the `TaskBook`.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from ..core.config import Config
from ..core.errors import PartMissing, RayDemucsError, SeparationAborted, TaskTimeout, WorkerDied
from ..core.pools import route
from ..core.task import TaskRecord, TaskSpec, TaskState
from ..ensembles.plan import Step, part_folder, step_spec, steps
from ..models.catalogue import OFFLINE_MODEL, architecture_of
from ..storage.folders import open_folder
from .autoscale import Autoscaler, Member
from .book import TaskBook
from .queues import DelayedTasks, PoolQueues
from .retry_policy import Decision, Outcome, decide

logger = logging.getLogger(__name__)


class FreeWorker(Protocol):
    worker_id: str
    node: str | None
    models: frozenset
    load: int


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
    """An attempt on a worker, and what the scheduler asked of it."""

    worker_id: str
    attempt: int
    deadline: float
    abort_sent_at: float | None = None
    cancel_requested: bool = False
    behind: bool = False  # sent to a busy worker: waits there; its clock has not started
    step_back: str = ""  # why it was asked back to the queue (a better priority, a drain)
    helpers: tuple = ()  # idle workers lent to split a long track across
    pool: str = ""  # the pool of the task's model (routed once, at dispatch)
    step: Step | None = None  # the step of an ensemble task this attempt runs


def model_key(options) -> tuple:
    return (options.model, options.repo)


class Attempts:
    """The attempts on workers (`running`), started from the pools' queues."""

    def __init__(self, config: Config, book: TaskBook, queues: PoolQueues, pool: Pool,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random,
                 offload: Callable[[Callable[[], None]], None] = lambda work: work()):
        self.config, self.book, self.queue, self.pool = config, book, queues, pool
        self.clock, self.rng, self.offload = clock, rng, offload
        self.pools = config.worker_pools()
        self.running: dict[str, Running] = {}
        self.delayed = DelayedTasks()
        self.steps: dict[str, Step] = {}  # each unfinished ensemble task's next or current step
        self.autoscaler = Autoscaler(clock)
        self.dispatching = True

    # -- dispatch -----------------------------------------------------------------------------
    def dispatch(self) -> int:
        """Start queued tasks on free workers of their pools, then size the pools; how many
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
        """Start the pool's queued tasks on its free workers, best priority first: the least
        loaded workers first, and among them one that holds the task's model. A task sent to a
        busy worker (prefetch) waits there; its clock starts when its segments start to run, or
        when the tasks before it have ended."""
        started, queue = 0, self.queue[pool]
        while len(queue):
            free = self.pool.free_workers(pool)
            if not free:
                break
            record = self.book.active[queue.pop()]
            spec, step = self.attempt_spec(record)
            least = [w for w in free if w.load == free[0].load]
            key = model_key(spec.options)
            worker = next((w for w in least if key in w.models), least[0])
            now = self.clock()
            record = self.book.change(record, TaskState.RUNNING, attempts=record.attempts + 1,
                                      worker=worker.worker_id, node=worker.node, started_at=now,
                                      progress=step.index / step.total if step else 0.0,
                                      retry_at=None)
            combine = step is not None and step.part is None
            helpers = () if combine else self._helpers_for(spec, worker, free, len(queue))
            self.running[record.task_id] = Running(
                worker.worker_id, record.attempts, now + self.timeout_s(record),
                behind=worker.load > 0, helpers=helpers, pool=pool, step=step)
            reuse = self.cached_folder(record.spec) if step is None or combine else None
            self.pool.start(worker.worker_id, spec, record.attempts, reuse_from=reuse,
                            helpers=helpers)
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
        active = self.book.active
        waiting = [(active[t].spec.priority, active[t].seq, t, run)
                   for t, run in self.running.items()
                   if run.behind and run.abort_sent_at is None
                   and active[t].spec.priority > best and run.pool == pool]
        if waiting:
            _, _, task_id, run = max(waiting)
            self._step_back(task_id, run, "stepped back for a task of better priority")

    def _scale(self) -> None:
        """Grow each pool while its tasks wait with no free worker; remove its idle workers."""
        for pool in self.pools:
            waiting = len(self.queue[pool.name])
            plan = self.autoscaler.plan(pool, self.pool.members(pool.name), waiting)
            if plan.add:
                logger.info("pool %s: adding %d worker(s) for %d waiting task(s)", pool.name,
                            plan.add, waiting)
                self.pool.add_workers(pool.name, plan.add)
            for worker_id in plan.remove:
                logger.info("pool %s: removing %s (no task for %g s)", pool.name, worker_id,
                            pool.idle_timeout_s)
                self.pool.remove(worker_id)

    def _step_back(self, task_id: str, run: Running, reason: str) -> None:
        """Ask a prefetched task that has not started to return to the queue."""
        run.step_back, run.abort_sent_at = reason, self.clock()
        self.pool.abort(run.worker_id, task_id, run.attempt)

    def step_back_waiting(self, reason: str) -> None:
        """Every prefetched task that has not started steps back (the service is draining)."""
        for task_id, run in list(self.running.items()):
            if run.behind and run.abort_sent_at is None:
                self._step_back(task_id, run, reason)

    def abort(self, task_id: str) -> None:
        """Stop a running task's attempt for good (a cancel): its worker is killed if it does
        not stop within `tasks.abort_grace_s`."""
        run = self.running[task_id]
        if not run.cancel_requested:
            run.cancel_requested = True
            run.abort_sent_at = run.abort_sent_at or self.clock()
            self.pool.abort(run.worker_id, task_id, run.attempt)

    def timeout_s(self, record: TaskRecord) -> float:
        return record.spec.timeout_s or self.config.tasks.timeout_s

    def cached_folder(self, spec: TaskSpec) -> str | None:
        """Another task's folder holding stems for the same input, model and options."""
        found = self.book.journal.results.find(spec.cache_key) if spec.cache_key else None
        if found is None or found[1] == spec.output_location:
            return None
        return found[1]

    def pool_of(self, spec: TaskSpec) -> str:
        """The name of the pool that serves the task's model on its device (an ensemble's: the
        pool of its step's part, the first part's for the combination, once every part's model
        is served); InvalidInput when none does."""
        options = spec.options
        models = [part["model"] for part in spec.ensemble["parts"]] if spec.ensemble else [
            options.model]
        pools = [self._route(model, options) for model in models]
        step = self.steps.get(spec.task_id)
        return pools[step.index if step and step.part else 0]

    def _route(self, model: str, options) -> str:
        architecture = (architecture_of(model, options.repo, self.config.models.catalogue)
                        if any(pool.architectures for pool in self.pools) else None)
        return route(self.pools, model, options.device, options.precision, architecture).name

    def attempt_spec(self, record: TaskRecord) -> tuple[TaskSpec, Step | None]:
        """What the next attempt runs (`TaskRecord.attempt_spec`), and for an ensemble task,
        its step (a part, or the combination) as a spec of its own."""
        step = self.steps.get(record.task_id)
        if step is None:
            return record.attempt_spec(), None
        # the parts' keys are the task's as asked; a retry's shorter segment is the step's own
        stepped = dataclasses.replace(record, spec=step_spec(record.spec, step, self.parts_root))
        return stepped.attempt_spec(), step

    @property
    def parts_root(self) -> str:
        return self.config.parts_root

    def _next_step(self, spec: TaskSpec) -> Step:
        """An ensemble task's first step not done yet: a part the result cache has no stems for
        (another task's, or an earlier attempt's), else the combination."""
        results = self.book.journal.results
        return next(step for step in steps(spec) if step.part is None
                    or results.find(step.key) is None)

    def enqueue(self, record: TaskRecord, pool: str | None = None) -> None:
        if record.spec.ensemble:
            self.steps[record.task_id] = self._next_step(record.spec)
            pool = None  # its step's
        pool = pool or self.pool_of(record.spec)
        self.queue[pool].push(record.task_id, record.spec.priority, record.seq)

    # -- time ---------------------------------------------------------------------------------
    def tick(self) -> None:
        """Release due retries, enforce deadlines (abort, then kill after the grace), dispatch."""
        now = self.clock()
        for task_id in self.delayed.pop_ready(now):
            self.enqueue(self.book.active[task_id])
        grace_s = self.config.tasks.abort_grace_s
        for task_id, run in list(self.running.items()):
            if task_id not in self.running or (run.behind and run.abort_sent_at is None):
                continue
            if run.step_back:
                continue  # it steps back at its next check; never worth killing the worker
            if run.abort_sent_at is None and now >= run.deadline:
                logger.warning("task %s attempt %d: past its deadline, aborting", task_id,
                               run.attempt)
                run.abort_sent_at = now
                self.pool.abort(run.worker_id, task_id, run.attempt)
            elif run.abort_sent_at is not None and now >= run.abort_sent_at + grace_s:
                reason = f"did not stop within {grace_s:g} s of an abort"
                self._replace_worker(run.worker_id, reason, task_id,
                                     TaskTimeout(f"task timed out; worker {reason}"))
        self.dispatch()

    def _start_clock(self, task_id: str, run: Running) -> None:
        record = self.book.active[task_id]
        run.behind, run.deadline = False, self.clock() + self.timeout_s(record)
        record.started_at = self.clock()  # in memory: journaled with the attempt's end

    def report_progress(self, task_id: str, attempt: int, progress: float,
                        phase: str | None = None) -> None:
        """A worker's poll: the attempt's progress, and its phase (a waiting attempt whose
        segments started to run is running: its clock starts)."""
        run = self.running.get(task_id)
        if run is None or run.attempt != attempt:
            return
        if run.behind and phase == "separating" and not run.step_back:
            self._start_clock(task_id, run)
        record = self.book.active[task_id]
        progress = min(1.0, float(progress))
        if run.step is not None:  # an ensemble's steps share one number
            progress = (run.step.index + progress) / run.step.total
        record.progress = max(record.progress, progress)

    # -- results ------------------------------------------------------------------------------
    def attempt_ended(self, task_id: str, attempt: int, error: RayDemucsError | None = None,
                      outputs: dict | None = None, audio_duration_s: float | None = None) -> None:
        """An attempt's answer: its stems (`error` None) or the error it ended with. Answers of
        attempts the scheduler gave up on (replaced workers, older attempts) are ignored."""
        run = self.running.get(task_id)
        if run is None or run.attempt != attempt:
            return
        record = self.book.active[task_id]
        outcome = decide(record.attempts, run, error, self.timeout_s(record), self.config.tasks,
                         self.rng)
        self._carry_out(record, outcome, outputs, audio_duration_s, run)
        self._run_ended(task_id, run)  # after the journal took it: else it stays on its worker

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

    def _carry_out(self, record: TaskRecord, outcome: Outcome, outputs: dict | None,
                   audio_duration_s: float | None, run: Running) -> None:
        decision, now, pool = outcome.decision, self.clock(), run.pool
        if isinstance(outcome.error, PartMissing):  # made again: forget the parts' folders
            self.book.journal.results.forget([step.key for step in steps(record.spec)])
        if decision is Decision.SUCCEED and run.step and run.step.part:
            self._part_done(record, run.step, run.cancel_requested)
        elif decision is Decision.SUCCEED:
            if record.spec.cache_key:
                self.book.journal.results.remember(record.spec.cache_key, record.task_id,
                                                   record.spec.output_location)
            self.finish(record, TaskState.SUCCEEDED, outputs=outputs,
                        audio_duration_s=audio_duration_s)
        elif decision is Decision.CANCEL:
            self.finish(record, TaskState.CANCELLED)
        elif decision is Decision.STEP_BACK:
            record = self.book.change(record, TaskState.QUEUED, note=outcome.note, counted=False,
                                      attempts=record.attempts - 1, queued_at=now)
            self.enqueue(record, pool)
        elif decision is Decision.RETRY:
            record = self.book.change(record, TaskState.QUEUED, note=outcome.note,
                                      error=outcome.error.to_dict(),
                                      segment_s=outcome.segment_s or record.segment_s,
                                      retry_at=now + outcome.delay_s,
                                      queued_at=now + outcome.delay_s)
            self.delayed.push(record.task_id, record.retry_at)
        else:
            self.finish(record, TaskState.FAILED, error=outcome.error.to_dict())

    def _part_done(self, record: TaskRecord, step: Step, cancelled: bool) -> None:
        """An ensemble's part made its stems: cached, and the task queued for its next step
        (the attempt not counted: a step is not a retry), unless a cancel came meanwhile."""
        self.book.journal.results.remember(step.key, record.task_id,
                                           part_folder(self.parts_root, step.key))
        if cancelled:
            self.finish(record, TaskState.CANCELLED)
            return
        record = self.book.change(record, TaskState.QUEUED, note=f"ensemble part {step.name} done",
                                  counted=False, attempts=record.attempts - 1,
                                  queued_at=self.clock(), progress=(step.index + 1) / step.total)
        self.enqueue(record)

    def finish(self, record: TaskRecord, state: TaskState, **fields) -> TaskRecord:
        """End a task: succeeded (with its outputs), cancelled or failed (with its error)."""
        self.steps.pop(record.task_id, None)
        fields["finished_at"] = self.clock()
        if state is TaskState.SUCCEEDED:
            fields.update(error=None, progress=1.0)
        note = (fields.get("error") or record.error or {}).get("message", "") \
            if state is TaskState.FAILED else ""
        ended = self.book.change(record, state, note=note, **fields)
        if state is not TaskState.SUCCEEDED and record.attempts:
            self.sweep_folder(record)
        return ended

    def sweep_folder(self, record: TaskRecord) -> None:
        """An attempt killed mid-write leaves a hidden staging folder that no later write sweeps:
        removed off the event loop."""
        self.offload(open_folder(record.spec.output_location, self.config.storage).sweep)
