"""One place changes a task's state: the journal first, then memory, then each listener on its
own; batch cancels and retries a chunk per transaction, all or nothing; counts stay bounded."""
from __future__ import annotations

import pytest
from test_scheduler import finish, make, spec

from raydemucs.core.errors import Gone
from raydemucs.core.task import TaskState
from raydemucs.scheduler import counts as counts_module


class Failing:
    def on_transition(self, record, previous, counted=True):
        raise RuntimeError("a listener that breaks")


class Hearing:
    def __init__(self):
        self.heard = []

    def on_transition(self, record, previous, counted=True):
        self.heard.append((record.task_id, record.state))


def test_a_failing_listener_loses_nothing_and_the_others_still_hear(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    errors, hearing = [], Hearing()
    scheduler.book.on_error = lambda job, exc: errors.append(job)
    scheduler.book.listeners[:] = [Failing(), hearing]
    task = scheduler.submit(spec("song"))
    scheduler.dispatch()
    finish(scheduler, pool)
    assert scheduler.get(task.task_id).state is TaskState.SUCCEEDED
    assert scheduler.journal.tasks.get(task.task_id).state is TaskState.SUCCEEDED
    assert [state for _, state in hearing.heard] == [TaskState.QUEUED, TaskState.RUNNING,
                                                    TaskState.SUCCEEDED]
    assert errors == ["listener Failing"] * 3
    assert scheduler.queue_counts()["succeeded"] == 1


def test_a_change_the_journal_refuses_changes_nothing_in_memory(tmp_path, monkeypatch):
    scheduler, pool, _ = make(tmp_path)
    task = scheduler.submit(spec("song"))
    scheduler.dispatch()
    hearing = Hearing()
    scheduler.book.listeners.append(hearing)

    def full_disk(record):
        raise OSError("database or disk is full")
    monkeypatch.setattr(scheduler.journal.tasks, "save", full_disk)
    task_id, attempt = pool.workers["worker-0"].busy_with
    with pytest.raises(OSError):
        scheduler.attempt_ended(task_id, attempt, outputs={"drums": "x"})
    assert scheduler.active[task.task_id].state is TaskState.RUNNING  # still held, as it was
    assert task.task_id in scheduler.running  # its deadline still applies: it ends again later
    assert scheduler.queue_counts()["running"] == 1 and hearing.heard == []


def test_a_batch_cancel_that_fails_midway_leaves_memory_as_the_journal(tmp_path, monkeypatch):
    scheduler, _, _ = make(tmp_path, workers=0)
    ids = [scheduler.submit(spec(f"t{i}", batch_id="b")).task_id for i in range(5)]
    save, saved = scheduler.journal.tasks.save, []

    def fails_at_the_third(record):
        if len(saved) == 2:
            raise OSError("disk full")
        saved.append(record.task_id)
        save(record)
    monkeypatch.setattr(scheduler.journal.tasks, "save", fails_at_the_third)
    with pytest.raises(OSError):
        sum(scheduler.cancel_batch("b"))
    monkeypatch.undo()
    assert all(scheduler.journal.tasks.get(t).state is TaskState.QUEUED for t in ids)
    assert all(scheduler.active[t].state is TaskState.QUEUED for t in ids)
    assert len(scheduler.queue) == 5 and scheduler.queue_counts()["queued"] == 5
    assert scheduler.batch("b")["by_state"]["queued"] == 5
    assert sum(scheduler.cancel_batch("b")) == 5 and len(scheduler.queue) == 0


def test_a_batch_retry_skips_tasks_whose_upload_is_gone_and_retry_says_so(tmp_path):
    scheduler, _, _ = make(tmp_path, workers=0)
    gone = {"t1"}
    scheduler.input_kept = lambda spec: spec.file_id not in gone
    ids = [scheduler.submit(spec(f"t{i}", batch_id="b")).task_id for i in range(3)]
    sum(scheduler.cancel_batch("b"))
    assert sum(scheduler.retry_batch("b")) == 2
    assert scheduler.get(ids[1]).state is TaskState.CANCELLED
    with pytest.raises(Gone, match="uploaded input was deleted"):
        scheduler.retry(ids[1])


def test_ended_batches_are_forgotten_past_a_bound_and_read_back_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(counts_module, "FINISHED_BATCHES", 3)
    scheduler, pool, _ = make(tmp_path)
    for number in range(6):
        scheduler.submit(spec(f"t{number}", batch_id=f"b{number}", duration_s=2.0))
        scheduler.dispatch()
        finish(scheduler, pool)
    assert list(scheduler.book.counts.batches) == ["b3", "b4", "b5"]
    old = scheduler.batch("b0")  # from the journal
    assert old["by_state"]["succeeded"] == 1 and old["done"] and old["audio_s_done"] == 2.0
    scheduler.submit(spec("t0", batch_id="b0", force=True))  # run again: counted from the journal
    assert scheduler.batch("b0")["by_state"] == {**old["by_state"], "succeeded": 0, "queued": 1}
