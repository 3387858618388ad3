"""Batches without Ray: folders, prefixes and lists into items, unique file ids, chunks in one
journal transaction each, the counts a batch reports."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from test_scheduler import finish, make, spec

from raydemucs.client.batch_submit import (
    Item,
    assign_file_ids,
    batch_id_for,
    checked_specs,
    expand,
    read_list,
)
from raydemucs.core.config import SeparationConfig, StorageConfig
from raydemucs.core.errors import InvalidInput, SeparationAborted, TaskConflict
from raydemucs.core.task import TaskRecord, TaskSpec, TaskState, new_task_id
from raydemucs.journal import Journal
from raydemucs.scheduler import scheduling
from raydemucs.scheduler.counts import TaskCounts

from fakes import FakeClock
from support import write_audio


def test_a_folder_is_searched_recursively_for_audio_in_a_stable_order(tmp_path):
    for name in ["b/two.wav", "a/one.mp3", "top.flac", "a/deep/three.wav"]:
        write_audio(tmp_path / "music" / name, seconds=0.2)
    (tmp_path / "music" / "notes.txt").write_text("not audio")
    items = list(expand([str(tmp_path / "music")], None, StorageConfig()))
    assert [item.relative for item in items] == ["a/deep/three.wav", "a/one.mp3", "b/two.wav",
                                                 "top.flac"]
    assert [item.file_id for item in assign_file_ids(items, "p")] == [
        "a__deep__three", "a__one", "b__two", "top"]


def test_file_ids_that_would_clash_are_resolved_the_same_way_every_time():
    items = [Item("x/a/song.mp3", relative="song.mp3"), Item("x/a/song.wav", relative="song.wav"),
             Item("/in/take.wav"), Item("/other/take.wav"), Item("/z/take.wav", project="q")]
    ids = [item.file_id for item in assign_file_ids(items, "p")]
    assert ids == ["song.mp3", "song.wav", "take.wav", "take.wav-2", "take"]
    assert ids == [item.file_id for item in assign_file_ids(items, "p")]


def test_a_list_is_lines_or_csv_with_known_columns(tmp_path):
    plain = tmp_path / "list.txt"
    plain.write_text("# my songs\n/music/a.mp3\n\n/music/b.wav\n")
    assert [item.input for item in read_list(str(plain))] == ["/music/a.mp3", "/music/b.wav"]
    table = tmp_path / "list.csv"
    table.write_text("input,file_id,project,priority\n/m/a.mp3,first,p1,high\n/m/b.mp3,,,\n")
    assert list(read_list(str(table))) == [Item("/m/a.mp3", "first", "p1", "high"),
                                           Item("/m/b.mp3")]
    bad = tmp_path / "bad.csv"
    bad.write_text("input,colour\n/m/a.mp3,red\n")
    with pytest.raises(InvalidInput, match="unknown column 'colour'"):
        list(read_list(str(bad)))
    with pytest.raises(InvalidInput, match="cannot be read"):
        list(read_list(str(tmp_path / "missing.txt")))


def test_a_bucket_prefix_lists_its_audio_objects(bucket, s3_endpoint, tmp_path):
    fs, root = bucket
    for name in ["in/b.wav", "in/a/c.mp3", "in/readme.txt", "elsewhere/d.wav"]:
        fs.pipe_file(f"{root}/{name}", b"x")
    items = list(expand([f"{root}/in/"], None, StorageConfig(endpoint_url=s3_endpoint)))
    assert [item.input for item in items] == [f"{root}/in/a/c.mp3", f"{root}/in/b.wav"]
    assert [item.file_id for item in assign_file_ids(items, "p")] == ["a__c", "b"]


def test_the_same_command_is_the_same_batch():
    assert batch_id_for("p", ["b", "a"], None) == batch_id_for("p", ["a", "b"], None)
    assert batch_id_for("p", ["a"], None) != batch_id_for("q", ["a"], None)


def test_checks_run_in_chunks_and_a_refusal_stays_with_its_item(monkeypatch):
    import raydemucs.client.batch_submit as batches

    monkeypatch.setattr(batches, "CHUNK", 3)
    items = [Item(str(i)) for i in range(7)]
    refused = []

    def prepare(item):
        if item.input == "4":
            raise InvalidInput("no good")
        return item.input

    chunks = list(checked_specs(items, prepare, lambda item, error: refused.append(item.input)))
    assert chunks == [["0", "1", "2"], ["3", "5"], ["6"]] and refused == ["4"]


def test_local_files_are_checked_in_one_thread_and_remote_ones_in_several():
    def threads(inputs: list[str]) -> int:
        seen = set()

        def prepare(item):
            seen.add(threading.get_ident())
            time.sleep(0.01)  # as a remote object's check waits on the network
            return item

        specs = [spec for chunk in checked_specs([Item(path) for path in inputs], prepare,
                                                 lambda item, error: None) for spec in chunk]
        assert [spec.input for spec in specs] == inputs  # in the items' order
        return len(seen)

    assert threads([f"/music/{number}.wav" for number in range(16)]) == 1
    assert threads([f"s3://bucket/{number}.wav" for number in range(16)]) > 1


def test_a_chunk_is_one_journal_transaction_with_an_answer_per_spec(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    done = scheduler.submit(spec("done"))
    scheduler.dispatch()
    finish(scheduler, pool)
    queued = scheduler.submit(spec("waiting"))
    commits = []
    scheduler.journal.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT"
                                           else None)
    specs = [spec("new1", batch_id="b1"), spec("done"), spec("waiting"), spec("new2", batch_id="b1"),
             spec("new1", batch_id="b1"), spec("waiting", options=SeparationConfig(shifts=3))]
    answers = scheduler.submit_many(specs)
    scheduler.journal.db.set_trace_callback(None)
    assert commits == ["COMMIT"]  # the two new tasks, in one transaction
    outcomes = [answer if isinstance(answer, Exception) else answer[1] for answer in answers]
    assert outcomes[:5] == ["queued", "skipped", "known", "queued", "queued"]
    assert answers[1][0].task_id == done.task_id and answers[2][0].task_id == queued.task_id
    assert answers[4][0] is answers[0][0]  # a repeat in the chunk is the same task
    assert isinstance(answers[5], TaskConflict)
    assert scheduler.batch("b1")["by_state"]["queued"] == 2


def test_a_batch_counts_audio_done_and_left_with_a_rate_and_an_eta(tmp_path):
    scheduler, pool, clock = make(tmp_path, workers=1)
    ids = [scheduler.submit(spec(f"s{i}", batch_id="b", duration_s=10.0)).task_id
           for i in range(4)]
    for _ in range(3):
        scheduler.dispatch()
        clock.advance(5.0)
        finish(scheduler, pool)
    view = scheduler.batch("b")
    assert view["by_state"]["succeeded"] == 3 and view["audio_s_done"] == 30.0
    assert view["audio_s_left"] == 10.0 and view["audio_s_per_s"] == pytest.approx(2.0)
    assert view["eta_s"] == pytest.approx(5.0) and not view["done"]
    assert sum(scheduler.cancel_batch("b")) == 1  # the last one runs: asked to stop
    pool.free("worker-0")
    scheduler.attempt_ended(ids[3], 1, SeparationAborted("stopped"))
    assert scheduler.batch("b")["done"] and scheduler.batch("b")["by_state"]["cancelled"] == 1
    assert sum(scheduler.retry_batch("b")) == 1 and scheduler.get(ids[3]).state is TaskState.QUEUED
    with pytest.raises(Exception, match="no batch with id 'nope'"):
        scheduler.batch("nope")


def test_a_restarted_scheduler_counts_its_batches_from_the_journal(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    for i in range(3):
        scheduler.submit(spec(f"s{i}", batch_id="b", duration_s=2.0))
    scheduler.dispatch()
    finish(scheduler, pool)
    restarted, _, _ = make(tmp_path)
    restarted.recover()
    view = restarted.batch("b")
    assert view["by_state"]["succeeded"] == 1 and view["by_state"]["queued"] == 2
    assert view["audio_s_left"] == 4.0


def test_a_journal_from_before_batches_gets_its_columns(tmp_path):
    path = tmp_path / "journal.db"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE tasks (task_id TEXT PRIMARY KEY, owner TEXT NOT NULL DEFAULT '',"
                      " project TEXT NOT NULL, file_id TEXT NOT NULL, seq INTEGER NOT NULL,"
                      " state TEXT NOT NULL, record TEXT NOT NULL,"
                      " UNIQUE (owner, project, file_id));")
    old.close()
    tasks = Journal(path).tasks
    record = TaskRecord(TaskSpec(new_task_id(), "p", "f", "/a.wav", "/out", batch_id="b",
                                 duration_s=3.0), seq=tasks.next_seq())
    tasks.insert_many([record])
    assert tasks.batch_tallies() == [("b", "queued", 1, 3.0)]


def test_counts_of_queued_tasks_by_priority():
    tally = TaskCounts(FakeClock())
    record = TaskRecord(TaskSpec(new_task_id(), "p", "f", "/a.wav", "/out", priority=0), seq=1)
    tally.add(record)
    assert tally.queued_by_priority() == {"high": 1}
    record.state = TaskState.RUNNING
    tally.move(record, TaskState.QUEUED)
    assert tally.queued_by_priority() == {} and tally.states["running"] == 1


def test_a_batch_cancel_and_retry_step_a_chunk_at_a_time_taking_tasks_as_they_are_then(
        tmp_path, monkeypatch):
    monkeypatch.setattr(scheduling, "CHUNK", 2)
    scheduler, pool, _ = make(tmp_path, workers=1)
    ids = [scheduler.submit(spec(f"t{i}", batch_id="b")).task_id for i in range(5)]
    commits = []
    scheduler.journal.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT"
                                           else None)
    steps = scheduler.cancel_batch("b")
    assert next(steps) == 2 and commits == ["COMMIT"]  # one chunk, one transaction
    assert [scheduler.get(t).state for t in ids[:3]] == [TaskState.CANCELLED] * 2 + [
        TaskState.QUEUED]
    scheduler.dispatch()  # between steps, the next task starts: it is asked to stop instead
    assert scheduler.get(ids[2]).state is TaskState.RUNNING
    assert list(steps) == [2, 1] and pool.aborted == [("worker-0", ids[2])]
    assert [scheduler.get(t).state for t in ids[3:]] == [TaskState.CANCELLED] * 2
    pool.free("worker-0")
    scheduler.attempt_ended(ids[2], 1, SeparationAborted("stopped"))
    steps = scheduler.retry_batch("b")
    assert next(steps) == 2 and scheduler.get(ids[1]).state is TaskState.QUEUED
    scheduler.cancel(ids[0])  # it ended again meanwhile, after the retry began: left as it is
    assert list(steps) == [2, 1] and scheduler.get(ids[0]).state is TaskState.CANCELLED
    scheduler.journal.db.set_trace_callback(None)


def test_a_batch_cancel_reads_one_chunk_of_the_unfinished_tasks_a_step(tmp_path, monkeypatch):
    """However deep the queue, no step looks at more than `CHUNK` unfinished tasks (at 100,000
    queued, filtering them all in one step held the scheduler's loop)."""
    monkeypatch.setattr(scheduling, "CHUNK", 2)
    scheduler, _, _ = make(tmp_path, workers=0)
    others = [scheduler.submit(spec(f"o{i}", batch_id="other")).task_id for i in range(5)]
    mine = scheduler.submit(spec("m", batch_id="b")).task_id
    assert list(scheduler.cancel_batch("b")) == [0, 0, 1]  # three steps of two tasks each
    assert scheduler.get(mine).state is TaskState.CANCELLED
    assert {scheduler.get(t).state for t in others} == {TaskState.QUEUED}
