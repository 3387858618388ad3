"""The priority heap, the retry heap and the SQLite journal."""
from __future__ import annotations

import sqlite3

from raydemucs.core.task import TaskRecord, TaskSpec, TaskState, new_task_id, parse_priority
from raydemucs.journal import Journal
from raydemucs.scheduler.queues import DelayedTasks, TaskQueue


def test_queue_pops_by_priority_then_sequence_and_skips_removed():
    queue = TaskQueue()
    for task_id, priority, seq in [("c", 5, 3), ("a", 5, 1), ("h", 0, 4), ("l", 9, 2), ("x", 0, 5)]:
        queue.push(task_id, priority, seq)
    assert queue.remove("x") and not queue.remove("x")
    queue.push("a", 5, 1)  # a duplicate push is ignored
    assert queue.peek_priority() == 0
    assert [queue.pop() for _ in range(5)] == ["h", "a", "c", "l", None]
    assert queue.peek_priority() is None


def test_delayed_tasks_come_out_when_due():
    delayed = DelayedTasks()
    delayed.push("b", 20.0)
    delayed.push("a", 10.0)
    delayed.push("gone", 5.0)
    delayed.remove("gone")
    assert delayed.pop_ready(9.0) == []
    assert delayed.pop_ready(25.0) == ["a", "b"] and len(delayed) == 0


def test_priority_names_and_numbers():
    assert [parse_priority(p) for p in ("high", "NORMAL", "low", 3, "7")] == [0, 5, 9, 3, 7]


def _record(journal, file_id="f", project="p"):
    spec = TaskSpec(task_id=new_task_id(), project=project, file_id=file_id, input_path="/x.wav",
                    output_dir="/out")
    return TaskRecord(spec=spec, seq=journal.tasks.next_seq(), submitted_at=1.0)


def test_journal_is_wal_with_full_sync(tmp_path):
    journal = Journal(tmp_path / "j.db")
    assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_journal_insert_is_unique_per_project_and_file_id(tmp_path):
    journal = Journal(tmp_path / "j.db")
    first = journal.tasks.insert(_record(journal))
    duplicate = journal.tasks.insert(_record(journal))
    assert duplicate.task_id == first.task_id
    assert journal.tasks.insert(_record(journal, project="other")).task_id != first.task_id


def test_journal_survives_reopening_and_lists_unfinished_in_order(tmp_path):
    journal = Journal(tmp_path / "j.db")
    records = [journal.tasks.insert(_record(journal, file_id=str(i))) for i in range(4)]
    records[1].state = TaskState.SUCCEEDED
    records[2].state = TaskState.RUNNING
    journal.tasks.save(records[1])
    journal.tasks.save(records[2])
    journal.close()
    reopened = Journal(tmp_path / "j.db").tasks
    assert [r.task_id for r in reopened.unfinished()] == [records[i].task_id for i in (0, 2, 3)]
    assert reopened.count_by_state()["succeeded"] == 1
    assert reopened.get(records[1].task_id).state is TaskState.SUCCEEDED
    raw = sqlite3.connect(tmp_path / "j.db").execute("SELECT COUNT(*) FROM tasks").fetchone()
    assert raw == (4,)


def test_a_task_pushed_again_comes_out_at_its_new_place_not_its_old_one():
    queue = TaskQueue()
    for task_id, seq in [("a", 1), ("b", 2), ("c", 3)]:
        queue.push(task_id, 5, seq)
    queue.remove("a")            # cancelled ...
    queue.push("a", 5, 4)        # ... and retried: it queues behind b and c now
    queue.push("b", 9, 2)        # pushed again with a worse priority: it moves
    assert [queue.pop() for _ in range(4)] == ["c", "a", "b", None]


def test_a_retry_time_pushed_again_replaces_the_old_one():
    delayed = DelayedTasks()
    delayed.push("a", 10.0)
    delayed.remove("a")          # cancelled while it waited for its retry ...
    delayed.push("a", 50.0)      # ... resubmitted, failed again: a later retry time
    assert delayed.pop_ready(20.0) == [] and "a" in delayed
    assert delayed.pop_ready(50.0) == ["a"]
