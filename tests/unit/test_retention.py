"""Retention with a fake clock over real files: a journal, stored inputs and kept stems under a
state directory made here, and a folder a user named with -o that must never be touched."""
from __future__ import annotations

import dataclasses
import os
import time

import pytest

from raydemucs.client.render import held_lines
from raydemucs.core.config import RetentionConfig, StorageConfig
from raydemucs.core.errors import InvalidInput
from raydemucs.core.task import TaskRecord, TaskSpec, TaskState, new_task_id
from raydemucs.journal import Journal
from raydemucs.retention.sweeps import Retention
from raydemucs.storage.folders import file_sha256
from raydemucs.storage.uploads import UploadStore

from fakes import FakeClock
from support import store_upload, write_audio

DAY = 86400.0


class State:
    """A state directory with a journal, an upload store and a retention over a fake clock."""

    def __init__(self, root, **ttls):
        self.root = root
        self.clock = FakeClock(time.time() - 1000 * DAY)  # behind the files' times (see age_input)
        self.journal = Journal(root / "state" / "journal.db")
        self.store = self.journal.tasks
        self.uploads = UploadStore(root / "state")
        self.source = write_audio(root / "song.wav", seconds=0.5)  # the input its tasks upload
        self.sha = file_sha256(self.source)
        config = RetentionConfig(**{"uploads_ttl_s": 2 * DAY, "results_ttl_s": DAY, **ttls})
        self.retention = Retention(config, self.journal, self.uploads, clock=self.clock)

    def task(self, file_id, state=TaskState.SUCCEEDED, uploaded=True, output_dir=None):
        """A task of the journal (ended now unless queued or running) with its files: the stored
        input when `uploaded`, stems in the service's results, or in `output_dir` (a -o folder)."""
        spec = TaskSpec(task_id=new_task_id(), project="p", file_id=file_id, input_path="song.wav",
                        output_dir=output_dir or "", input_sha256=self.sha, uploaded=uploaded)
        if output_dir is None:
            spec = self.uploads.keep(spec)
        if uploaded:
            store_upload(self.uploads, self.source)
        record = self.store.insert(TaskRecord(spec=spec, seq=self.store.next_seq(),
                                              submitted_at=self.clock()))
        self.end(record, state)
        folder = self.root / spec.output_location if output_dir else None
        folder = folder or self.uploads.results / "p" / file_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "drums.wav").write_bytes(b"x" * 1000)
        return record

    def end(self, record, state=TaskState.SUCCEEDED):
        record.state = state
        record.finished_at = self.clock() if state.is_terminal() else None
        self.store.save(record)

    def sweep(self, in_use=(), active=()):
        due = self.retention.scan()
        retired = self.retention.retire(due, set(in_use), set(active))
        self.retention.empty_trash()
        return due, retired.records

    def age_input(self, seconds):
        """Make the stored input look stored `seconds` before the fake clock's now (files are
        stored, or reused, at the real time: after the fake clock's now)."""
        then = self.clock() - seconds
        os.utime(self.uploads.inputs / self.sha, (then, then))

    def stems(self, record):
        return os.path.exists(record.spec.output_location)


def test_stems_expire_after_results_ttl_and_inputs_once_no_task_needs_them(tmp_path):
    state = State(tmp_path)
    done = state.task("done")
    waiting = state.task("waiting", TaskState.QUEUED)  # the same input, not run yet
    state.age_input(DAY)
    due, _ = state.sweep()
    assert due.stems == [] and due.inputs == [] and due.next_expiry_at == done.finished_at + DAY
    state.clock.advance(DAY + 1)
    due, _ = state.sweep()
    assert [r.task_id for r in due.stems] == [done.task_id] and due.inputs == []
    expired_at = state.store.get(done.task_id).expired_at
    assert not state.stems(done) and expired_at == pytest.approx(state.clock(), abs=1e-3)
    assert (state.uploads.inputs / state.sha).is_file()  # the queued task still needs it
    state.end(waiting, TaskState.FAILED)
    state.clock.advance(2 * DAY - 1)
    assert state.sweep()[0].inputs == [] and (state.uploads.inputs / state.sha).is_file()
    state.clock.advance(2)
    assert state.sweep()[0].inputs == [state.sha] and not (state.uploads.inputs / state.sha).exists()
    assert list(state.retention.trash.iterdir()) == []


def test_stems_kept_in_a_store_expire_there(tmp_path, bucket, s3_endpoint):
    """With `storage.kept_uri`, the stems held there are counted, and a sweep deletes a kept
    task's expired stems in the store (a folder beside them, not the service's, stays)."""
    fs, root = bucket
    storage = StorageConfig(endpoint_url=s3_endpoint, kept_uri=f"{root}/kept")
    journal = Journal(tmp_path / "state" / "journal.db")
    uploads = UploadStore(tmp_path / "state", storage=storage)
    clock = FakeClock(time.time())
    retention = Retention(RetentionConfig(results_ttl_s=DAY), journal, uploads, clock=clock)
    spec = uploads.keep(TaskSpec(task_id=new_task_id(), project="p", file_id="song",
                                 input_path="song.wav", output_dir=""))
    assert spec.output_location == f"{root}/kept/p/song"
    record = journal.tasks.insert(TaskRecord(spec=spec, seq=journal.tasks.next_seq(),
                                             submitted_at=clock(), state=TaskState.SUCCEEDED,
                                             finished_at=clock()))
    for name in ("kept/p/song/drums.wav", "kept/p/song/manifest.json", "other/drums.wav"):
        fs.pipe_file(f"{root}/{name}", b"x" * 10)
    assert retention.held_bytes()["results_bytes"] == 20  # the store's, not the folder beside
    clock.advance(DAY + 1)
    due = retention.scan()
    retention.retire(due, set(), set())
    retention.empty_trash()
    assert [r.task_id for r in due.stems] == [record.task_id]
    assert journal.tasks.get(record.task_id).expired_at is not None
    assert not fs.exists(f"{root}/kept/p/song/drums.wav") and fs.exists(f"{root}/other/drums.wav")
    assert retention.held_bytes()["results_bytes"] == 0


def test_a_folder_named_with_o_is_never_touched(tmp_path):
    state = State(tmp_path)
    mine = state.task("mine", uploaded=False, output_dir=str(tmp_path / "mine"))
    state.clock.advance(100 * DAY)
    due, _ = state.sweep()
    assert due.stems == [] and state.stems(mine) and state.store.get(mine.task_id).expired_at is None
    forged = dataclasses.replace(mine, spec=dataclasses.replace(mine.spec, kept=True))
    assert not state.retention._retire_stems(forged) and state.stems(mine)
    with pytest.raises(InvalidInput, match="a folder it named"):
        state.retention.purge(mine, [], set(), time.time())


def test_what_changed_since_the_scan_is_kept(tmp_path):
    state = State(tmp_path, uploads_ttl_s=0.0)
    rerun, other = state.task("rerun"), state.task("other", uploaded=False)
    state.age_input(10)
    state.clock.advance(DAY + 1)
    due = state.retention.scan()
    assert len(due.stems) == 2 and due.inputs == [state.sha]
    rerun.seq, rerun.state = state.store.next_seq(), TaskState.QUEUED  # run again: a new run
    state.store.save(rerun)
    store_upload(state.uploads, state.source)  # its input sent again: reused, its time renewed
    state.retention.retire(due, set(), set())  # its input reused after the scan: kept
    assert state.stems(rerun) and state.store.get(rerun.task_id).expired_at is None
    assert not state.stems(other)
    assert (state.uploads.inputs / state.sha).is_file()
    state.age_input(10)
    due = state.retention.scan()
    state.retention.retire(due, {state.sha}, set())  # an unfinished task holds it now
    assert (state.uploads.inputs / state.sha).is_file()


def test_records_ttl_drops_finished_rows_with_their_deliveries(tmp_path):
    state = State(tmp_path, records_ttl_s=30 * DAY, results_ttl_s=None, uploads_ttl_s=None)
    old, announcing, fresh = state.task("old"), state.task("announcing"), state.task("fresh")
    for record, delivery_state in ((old, "delivered"), (announcing, "pending")):
        state.journal.deliveries.add({"delivery_id": f"msg_{record.task_id}", "task_id": record.task_id,
                                  "run_seq": record.seq, "event": "task.succeeded", "url": "u",
                                  "body": "{}", "state": delivery_state, "created_at": 1.0,
                                  "next_at": 1e12})
    state.clock.advance(29 * DAY)
    state.end(fresh)
    state.clock.advance(DAY + 1)
    due, dropped = state.sweep(active={announcing.task_id})
    assert [r.task_id for r in dropped] == [old.task_id]
    assert state.store.get(old.task_id) is None and state.journal.deliveries.listing(task_id=old.task_id) == []
    assert not state.stems(old)  # its stems went with its record (no record would name them)
    assert state.store.get(announcing.task_id) and state.store.get(fresh.task_id)
    assert state.stems(fresh)  # files kept forever; its record goes 30 days after it ended
    assert due.next_expiry_at == state.store.get(fresh.task_id).finished_at + 30 * DAY


def test_purge_deletes_now_and_keeps_an_input_another_task_needs(tmp_path):
    state = State(tmp_path)
    first, second = state.task("first"), state.task("second")
    running = state.task("running", TaskState.RUNNING)
    users = state.store.held_records(state.sha)
    with pytest.raises(InvalidInput, match="cancel it first"):
        state.retention.purge(running, users, {state.sha}, time.time())
    state.end(running, TaskState.CANCELLED)
    outcome = state.retention.purge(first, state.store.held_records(state.sha), set(), time.time())
    assert outcome["stems_deleted"] and not outcome["input_deleted"]
    assert outcome["input_kept_for"] == 2 and not state.stems(first) and state.stems(second)
    for record in (second, running):
        state.retention.purge(state.store.get(record.task_id), state.store.held_records(state.sha),
                              set(), time.time())  # read now: after the input was stored
    assert not (state.uploads.inputs / state.sha).exists()
    again = state.retention.purge(state.store.get(first.task_id), [], set(), time.time())
    assert not again["stems_deleted"] and not again["input_deleted"]
    assert state.retention.held_bytes() == {"uploads_bytes": 0, "results_bytes": 0}


def test_status_shows_what_is_held_once_a_sweep_counted_it():
    ttls = {"uploads_ttl_s": 604800.0, "results_ttl_s": 604800.0, "records_ttl_s": None}
    assert held_lines({"retention": ttls}) == []  # before the first sweep: nothing counted yet
    counted = {**ttls, "uploads_bytes": 3 * 2**20, "results_bytes": 0, "next_expiry_at": None}
    assert held_lines({"retention": counted, "webhooks": {"dead": 1}})[0].startswith(
        "held: uploads 3")
