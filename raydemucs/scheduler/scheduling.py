"""Scheduling logic, free of Ray: what is asked (submit, batches, cancel, retry, recovery) and
what clients see (views, counts), over the `TaskBook` (the one place a state changes) and the
`Attempts` on workers (dispatch, deadlines, results).

`Scheduler` is driven by calls and acts through an injected pool, journal and clock, so tests step
it deterministically; the Ray actor that hosts it is `raydemucs.scheduler.service`. Disk work it
asks for (sweeping a folder) goes through `offload`, off the actor's event loop.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Callable, Iterator

from ..core.config import Config
from ..core.errors import (
    Gone,
    InvalidInput,
    RayDemucsError,
    ServiceRestarted,
    ShuttingDown,
    TaskConflict,
    TaskNotFound,
)
from ..core.task import TaskRecord, TaskSpec, TaskState, spec_differences
from ..journal import Journal
from ..models.served import served_models
from .attempts import Attempts, Pool
from .autoscale import LIVE_STATES
from .book import Change, Recovery, TaskBook, read_recovery
from .queues import PoolQueues

logger = logging.getLogger(__name__)

CHUNK = 25  # tasks per step (one journal transaction) of a batch submit, cancel or retry: ~5 ms
RETRYABLE = (TaskState.FAILED, TaskState.CANCELLED)


class Scheduler:
    def __init__(self, config: Config, journal: Journal, pool: Pool,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random,
                 listeners: tuple = (),
                 offload: Callable[[Callable[[], None]], None] = lambda work: work(),
                 input_kept: Callable[[TaskSpec], bool] = lambda spec: True,
                 on_error: Callable[[str, BaseException], None] | None = None):
        self.config, self.journal, self.clock = config, journal, clock
        self.input_kept = input_kept  # an uploaded task's input is still stored (retries need it)
        self.pools = config.worker_pools()
        self.book = TaskBook(journal, clock, listeners, on_error)
        self.queue = PoolQueues(pool.name for pool in self.pools)
        self.attempts = Attempts(config, self.book, self.queue, pool, clock, rng, offload)
        self.accepting = True

    @property
    def active(self) -> dict[str, TaskRecord]:
        """Queued and running tasks, by id."""
        return self.book.active

    @property
    def pool(self) -> Pool:
        """The workers the attempts run on."""
        return self.attempts.pool

    @pool.setter
    def pool(self, pool: Pool) -> None:
        self.attempts.pool = pool

    @property
    def running(self):
        return self.attempts.running

    @property
    def delayed(self):
        return self.attempts.delayed

    @property
    def dispatching(self) -> bool:
        return self.attempts.dispatching

    # -- recovery -----------------------------------------------------------------------------
    def recover(self, found: Recovery | None = None) -> None:
        """Requeue what the journal holds unfinished: in order, running ones as interrupted;
        those whose output folder is already complete are succeeded."""
        found = found or read_recovery(self.journal, self.config.storage)
        self.book.counts.load(found.counts, found.batches, found.unfinished)
        for record in found.unfinished:
            self.book.hold(record)
            if record.task_id in found.finished:
                self.attempts.finish(record, TaskState.SUCCEEDED,
                                     outputs=found.finished[record.task_id])
                continue
            try:
                pool = self.pool_of(record.spec)
            except InvalidInput as exc:  # the pools changed since it was accepted
                self.attempts.finish(record, TaskState.FAILED, error=exc.to_dict())
                continue
            if record.state is TaskState.RUNNING:
                record = self._interrupted(record)
                if record.state is TaskState.FAILED:
                    continue
            self.attempts.enqueue(record, pool)

    def _interrupted(self, record: TaskRecord) -> TaskRecord:
        """A task whose attempt the restart cut off: queued again, its attempt counted; failed
        once that was its last (a task that kills the service cannot do it forever)."""
        restarts = ServiceRestarted.counted(record.error) + 1
        if record.attempts > self.config.tasks.max_retries:
            error = ServiceRestarted(f"the service restarted {restarts} times while this task ran",
                                     restarts)
            return self.attempts.finish(record, TaskState.FAILED, error=error.to_dict())
        error = ServiceRestarted("interrupted by a service restart", restarts)
        return self.book.change(record, TaskState.QUEUED, error=error.to_dict())

    # -- submission ---------------------------------------------------------------------------
    def check(self, spec: TaskSpec) -> TaskRecord | None:
        """Raise what `submit` would refuse `spec` for (draining, no pool for its model, its key
        taken by a task that asked for something else); returns the task of its key, if any."""
        self._check_accepting()
        self.pool_of(spec)
        existing = self.active.get(spec.task_id) or self.journal.tasks.find(
            spec.project, spec.file_id, spec.owner)
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

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise ShuttingDown("the service is shutting down and accepts no new tasks")

    @staticmethod
    def reruns(existing: TaskRecord, spec: TaskSpec) -> bool:
        """Whether `spec` runs its key's task again: it failed, was cancelled, or is forced."""
        return existing.state in RETRYABLE or (existing.state is TaskState.SUCCEEDED and spec.force)

    def submit(self, spec: TaskSpec) -> TaskRecord:
        """Accept a task (committed before returning); the same (project, file id) asking the same
        is the same task (see `check`)."""
        existing = self.check(spec)
        if existing is not None:
            return self._rerun(existing, spec) if self.reruns(existing, spec) else existing
        record = self._new_record(spec)
        self.book.counts.ensure_batch(spec.batch_id)
        stored = self.journal.tasks.insert(record)
        if stored.task_id == record.task_id:
            self._accepted([record])
        return stored

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
        self.book.accept(new)
        self._queue_new(new)
        return answers

    def _answer(self, spec: TaskSpec, new: list) -> tuple[TaskRecord, str]:
        existing = self.check(spec)
        if existing is None:
            new.append(self._new_record(spec))
            return new[-1], "skipped" if self.attempts.cached_folder(spec) else "queued"
        if self.reruns(existing, spec):
            return self._rerun(existing, spec), "queued"
        return existing, "skipped" if existing.state is TaskState.SUCCEEDED else "known"

    def _new_record(self, spec: TaskSpec) -> TaskRecord:
        now = self.clock()
        return TaskRecord(spec=spec, seq=self.journal.tasks.next_seq(), submitted_at=now,
                          queued_at=now)

    def _accepted(self, records: list[TaskRecord]) -> None:
        """New records in the journal: held, counted, told of, queued."""
        for record in records:
            self.book.added(record)
        self._queue_new(records)

    def _queue_new(self, records: list[TaskRecord]) -> None:
        for record in records:
            self.attempts.enqueue(record)

    def _rerun_change(self, existing: TaskRecord, spec: TaskSpec) -> Change:
        """Queue the task of an existing key again, as `spec` asks, under its id."""
        now = self.clock()
        return Change(existing, TaskState.QUEUED, dict(
            spec=dataclasses.replace(spec, task_id=existing.task_id),
            seq=self.journal.tasks.next_seq(), attempts=0, progress=0.0, error=None,
            outputs=None, worker=None, node=None, submitted_at=now, started_at=None,
            finished_at=None, retry_at=None, queued_at=now, audio_duration_s=None,
            segment_s=None, expired_at=None))

    def _rerun(self, existing: TaskRecord, spec: TaskSpec) -> TaskRecord:
        [record] = self.book.change_many([self._rerun_change(existing, spec)])
        self.attempts.enqueue(record)
        return record

    def pool_of(self, spec: TaskSpec) -> str:
        return self.attempts.pool_of(spec)

    def retry(self, task_id: str) -> TaskRecord:
        """Run a failed or cancelled task again (the dead-letter queue's resubmit); `Gone` when
        its uploaded input was deleted since."""
        record = self.get(task_id)
        if not self.input_kept(record.spec):
            raise Gone(f"task {task_id}'s uploaded input was deleted (retention.uploads_ttl_s, "
                       "or a purge); submit the file again")
        return self.submit(record.spec)

    # -- batches ------------------------------------------------------------------------------
    def batch(self, batch_id: str) -> dict:
        """A batch's counts by state, audio seconds done and left, rate and ETA."""
        view = self.book.counts.batch(batch_id)
        if view is None:
            raise TaskNotFound(f"no batch with id {batch_id!r}")
        return view

    def cancel_batch(self, batch_id: str) -> Iterator[int]:
        """Cancel a batch's queued and running tasks (a running one is asked to stop), looking at
        `CHUNK` unfinished tasks a step (never all at once, however deep the queue): each step is
        one journal transaction (all of its chunk, or none of it) and yields how many it
        cancelled. The caller may do other work between steps: each chunk's
        tasks are taken as they are then (one that ended meanwhile is left as it is)."""
        self.batch(batch_id)
        task_ids = list(self.active)  # a copy at C speed; each step reads one slice of it
        for start in range(0, len(task_ids), CHUNK):
            yield self._cancel_chunk(task_ids[start:start + CHUNK], batch_id)

    def _cancel_chunk(self, task_ids: list[str], batch_id: str) -> int:
        tasks = [record for record in map(self.active.get, task_ids)
                 if record is not None and record.spec.batch_id == batch_id]
        for task in tasks:
            if task.task_id in self.running:
                self.attempts.abort(task.task_id)
        self._cancel_queued([task for task in tasks if task.task_id not in self.running])
        return len(tasks)

    def retry_batch(self, batch_id: str) -> Iterator[int]:
        """Run a batch's failed and cancelled tasks again, `CHUNK` to a step (one journal
        transaction each), yielding how many each step queued (those whose uploaded input is
        gone, or whose model no pool serves now, stay as they are). Only tasks that ended before
        the first step are retried."""
        self.batch(batch_id)
        self._check_accepting()
        after, last = 0, self.journal.tasks.last_seq()
        while page := self.journal.tasks.batch_records(batch_id, RETRYABLE, after, last, CHUNK):
            after = page[-1].seq
            changes = [self._rerun_change(record, record.spec) for record in page
                       if record.task_id not in self.active and self._can_rerun(record)]
            records = self.book.change_many(changes)
            for record in records:
                self.attempts.enqueue(record)
            yield len(records)

    def _can_rerun(self, record: TaskRecord) -> bool:
        try:
            self.pool_of(record.spec)
        except InvalidInput:
            return False
        return self.input_kept(record.spec)

    def _cancel_queued(self, records: list[TaskRecord]) -> None:
        if not records:
            return
        now = self.clock()
        self.book.change_many([Change(record, TaskState.CANCELLED, {"finished_at": now})
                               for record in records])
        for record in records:
            self.queue.remove(record.task_id)
            self.delayed.remove(record.task_id)
            self.attempts.steps.pop(record.task_id, None)
            if record.attempts:  # a retry's wait: the failed attempt may have left staging files
                self.attempts.sweep_folder(record)

    def cancel(self, task_id: str) -> TaskRecord:
        """Drop a queued task, or abort a running one (killing its worker if it does not stop)."""
        record = self.get(task_id)
        if record.state.is_terminal():
            return record
        if task_id in self.running:
            self.attempts.abort(task_id)
            return record
        self._cancel_queued([record])
        return self.get(task_id)

    # -- what the service calls -----------------------------------------------------------------
    def dispatch(self) -> int:
        return self.attempts.dispatch()

    def tick(self) -> None:
        self.attempts.tick()

    def report_progress(self, task_id: str, attempt: int, progress: float,
                        phase: str | None = None) -> None:
        self.attempts.report_progress(task_id, attempt, progress, phase)

    def attempt_ended(self, task_id: str, attempt: int, error: RayDemucsError | None = None,
                      outputs: dict | None = None, audio_duration_s: float | None = None) -> None:
        self.attempts.attempt_ended(task_id, attempt, error, outputs, audio_duration_s)

    def worker_lost(self, worker_id: str, reason: str) -> None:
        self.attempts.worker_lost(worker_id, reason)

    def stop_accepting(self) -> None:
        """Refuse new submissions and start no more tasks; queued ones (and prefetched ones, which
        step back) stay in the journal."""
        self.accepting = False
        self.attempts.dispatching = False
        self.attempts.step_back_waiting("stepped back: the service is draining")

    # -- queries ------------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord:
        return self.book.get(task_id)

    def view(self, task_id: str) -> dict:
        """A task's record as clients see it, with its place in its pool's queue while it waits
        there (0: next; None: not waiting in the queue)."""
        record = self.get(task_id)
        position = None
        if record.state is TaskState.QUEUED and task_id in self.active:
            position = self.queue[self.pool_of(record.spec)].rank(task_id)
        return {**record.to_dict(), "queue_position": position}

    def unfinished_of(self, owner: str) -> int:
        """Queued and running tasks of one owner."""
        return len(self.book.owned(owner))

    def served_models(self) -> list[dict]:
        """The models this service serves (see `models.served`); a client may ask for these
        only."""
        return served_models(self.config, self.pools)

    def queued_by_priority(self) -> dict[str, int]:
        """Tasks waiting to run (ready or awaiting a retry), by priority name."""
        return self.book.counts.queued_by_priority()

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
        counts = {state.value: self.book.counts.states[state.value] for state in TaskState}
        counts["waiting_retry"] = len(self.delayed)
        return counts
