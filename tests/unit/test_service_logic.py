"""The scheduler actor's own logic without Ray: a real journal, sweeper, intake, webhooks thread
and event streams around a fake pool, driven by the test as the workers would."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time

import pytest

from raydemucs.core.config import load_config
from raydemucs.core.errors import OverQuota
from raydemucs.core.task import TaskSpec, TaskState, new_task_id
from raydemucs.journal.deliveries import DeliveryCounts
from raydemucs.scheduler import service as service_module
from raydemucs.scheduler.service import SchedulerService
from raydemucs.storage import nodes
from raydemucs.storage.folders import LocalFolder, write_outputs

from fakes import FakeClock, FakeServicePool
from support import write_audio

STEMS = ("drums", "bass")


def make_service(tmp_path, **sections) -> SchedulerService:
    overrides = {"service": {"name": "logic", "state_dir": str(tmp_path / "state"),
                             "poll_interval_s": 0.05}, "workers": {"max_workers": 1}, **sections}
    config = load_config("test", overrides=overrides, environ={})
    return SchedulerService(config.to_dict(), pool=FakeServicePool.of(config, 1))


def spec(tmp_path, file_id="song", **fields) -> dict:
    return TaskSpec(task_id=new_task_id(), project="p", file_id=file_id, input_path="/in.wav",
                    output_dir=str(tmp_path / "out"), **fields).to_dict()


def write_stems(record) -> dict[str, str]:
    """What a worker writes for a kept task: its stems, in the folder the service keeps."""
    return write_outputs(LocalFolder(record.spec.output_location),
                         {stem: b"x" * 100 for stem in STEMS}, "wav",
                         lambda data, path: path.write_bytes(data), {"task_id": record.task_id})


def run_attempt(service, tmp_path, ok=True) -> str:
    """The fake worker ends the attempt it holds, as the pool would report it."""
    worker = service.pool.workers["worker-0"]
    task_id, attempt = worker.busy_with
    service.pool.free("worker-0")
    result = {"ok": True, "duration_s": 1.0, "outputs": write_stems(service.core.get(task_id))}
    service._on_result(task_id, attempt, result if ok else {
        "ok": False, "error": {"type": "InvalidInput", "message": "bad"}})
    return task_id


async def send_upload(service, path) -> tuple[str, str]:
    """Send a file as the HTTP front door does: an upload opened on the scheduler's node, its
    bytes appended there; the upload's id and the file's SHA-256."""
    upload = await service.upload_open(path.name)
    data = path.read_bytes()
    await nodes.append(upload["path"], upload["node"], data)
    return upload["id"], hashlib.sha256(data).hexdigest()


async def until(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_short_ttls_with_the_default_sweep_interval_take_stems_then_records(tmp_path, caplog,
                                                                          monkeypatch):
    """Expiries a task's end starts are swept on time (not at the next 10-minute sweep); the
    stream hears of expired stems; a dropped record leaves the counts right; no sweep error."""
    caplog.set_level(logging.ERROR, logger="raydemucs")
    source = write_audio(tmp_path / "song.wav", seconds=0.5)

    async def scenario():
        service = make_service(tmp_path, retention={"results_ttl_s": 1.0, "records_ttl_s": 3.0})
        logging.getLogger("raydemucs").propagate = True  # (configure_logging turned it off)
        assert service.config.retention.sweep_interval_s == 600.0
        upload_id, sha = await send_upload(service, source)
        record = await service.submit_upload(
            spec(tmp_path, uploaded=True, kept=True, input_sha256=sha), upload_id)
        await until(lambda: service.pool.workers["worker-0"].tasks)
        answer = await service.watch_tasks("", None, 0.0)
        assert [view["task_id"] for view in answer["views"]] == [record["task_id"]]
        task_id = run_attempt(service, tmp_path)
        await until(lambda: service.core.get(task_id).state is TaskState.SUCCEEDED)
        assert (service.uploads.results / "p" / "song" / "manifest.json").is_file()
        assert (await service.status())["queue"]["succeeded"] == 1
        for _ in range(5):  # its end, then its expiry: each wakes the stream with its view
            answer = await service.watch_tasks("", answer["cursor"], 10.0)
            assert [view["task_id"] for view in answer["views"]] == [task_id]
            if answer["views"][0]["expired_at"] is not None:
                break
        assert answer["views"][0]["expired_at"] is not None
        await until(lambda: service.journal.tasks.get(task_id) is None)
        status = await service.status()
        assert status["queue"] == {**service.journal.tasks.count_by_state(), "waiting_retry": 0}
        assert status["queue"]["succeeded"] == 0
        assert not (service.uploads.results / "p" / "song").exists()
        assert not list((service.uploads.results.parent / ".trash").iterdir())
        await service.drain(0.0)
    monkeypatch.setattr(logging.getLogger("raydemucs"), "propagate", False)  # restored after
    asyncio.run(scenario())
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_failure_while_a_result_is_handled_fails_the_attempt_in_one_line(tmp_path):
    """A MemoryError (or any failure) while the scheduler takes in a result ends the attempt at
    once, with one line, instead of leaving it running until its deadline."""
    async def scenario():
        service = make_service(tmp_path)
        [record] = await service.submit([spec(tmp_path)])
        await until(lambda: service.pool.workers["worker-0"].tasks)
        attempt_ended = service.core.attempt_ended

        def out_of_memory(task_id, attempt, error=None, **fields):
            if error is None:
                raise MemoryError("cannot allocate 9 GB\nsecond line")
            attempt_ended(task_id, attempt, error, **fields)
        service.core.attempt_ended, failed = out_of_memory, []
        service.supervisor.on_error = failed.append
        run_attempt(service, tmp_path)
        ended = service.core.get(record["task_id"])
        assert ended.state is TaskState.FAILED, ended
        assert ended.error["message"] == ("handling the attempt's result failed: MemoryError: "
                                          "cannot allocate 9 GB")
        assert failed == ["attempt_result"]
        await service.drain(0.0)
    asyncio.run(scenario())


def test_concurrent_uploads_of_one_key_respect_its_cap(tmp_path):
    """Two uploads of a key with room for one: the second counts the first while its bytes are
    checked off the loop, and is refused."""
    async def scenario():
        service = make_service(tmp_path, workers={"max_workers": 1, "min_free_memory_mb": 0})
        closing = threading.Event()
        close = service.uploads.close

        def slow_close(upload_id):
            closing.wait(5)  # both requests are past their checks before either stores
            return close(upload_id)
        service.uploads.close = slow_close
        ids = []
        for name in ("a", "b"):
            path = write_audio(tmp_path / f"{name}.wav", seconds=0.5, seed=len(ids))
            ids.append((*await send_upload(service, path), name))
        answers = [service.submit_upload(spec(tmp_path, name, owner="k", uploaded=True,
                                              kept=True, input_sha256=sha), upload_id, 1)
                   for upload_id, sha, name in ids]
        tasks = [asyncio.ensure_future(answer) for answer in answers]
        await asyncio.sleep(0.3)
        closing.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(r, OverQuota) for r in results) == 1
        assert sum(isinstance(r, dict) for r in results) == 1
        assert service.core.unfinished_of("k") == 1
        await service.drain(0.0)
    asyncio.run(scenario())


def test_a_start_that_failed_is_tried_again_by_the_next_call(tmp_path, monkeypatch):
    import raydemucs.scheduler.service as module

    real, calls = module.read_recovery, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the journal's disk is not there yet")
        return real(*args)
    monkeypatch.setattr(module, "read_recovery", flaky)

    async def scenario():
        service = make_service(tmp_path)
        with pytest.raises(OSError, match="not there yet"):
            await service.ping()
        assert (await service.ping())["accepting"]
        await service.drain(0.0)
    asyncio.run(scenario())
    assert len(calls) == 2


def test_background_work_runs_off_the_loop_and_its_failures_are_counted(tmp_path):
    async def scenario():
        service = make_service(tmp_path)
        failures = []
        service.supervisor.on_error = failures.append
        loop_thread, threads = threading.get_ident(), []
        await service.ping()
        abandoned = (await service.upload_open("gone.wav"))["id"]
        pending = [abandoned]
        service.uploads.idle = lambda: [pending.pop()] if pending else []
        service.uploads.abort = lambda upload_id: threads.append(threading.get_ident())
        await until(lambda: threads)
        assert loop_thread not in threads  # the tick hands an abandoned upload's files to a thread

        async def broken():
            raise ValueError("boom")
        service.supervisor.spawn("probe", broken())
        await until(lambda: failures)
        assert failures == ["probe"]
        await service.drain(0.0)
    asyncio.run(scenario())


def test_a_tenants_status_and_readiness_come_from_memory(tmp_path):
    """What /readyz and a tenant's /v1/status ask: answered without a journal read, a tenant's
    counts and running tasks its own alone."""
    class NoJournal:
        def execute(self, *args):
            pytest.fail("the journal was read")

    async def scenario():
        service = make_service(tmp_path, workers={"max_workers": 1, "prefetch": 0})
        [theirs] = await service.submit([spec(tmp_path, "theirs", owner="key_b")])
        await until(lambda: theirs["task_id"] in service.core.running)
        await service.submit([spec(tmp_path, "mine", owner="key_a")])
        db, service.journal.db = service.journal.db, NoJournal()
        try:
            assert await service.ready()
            status = await service.status("key_a")
        finally:
            service.journal.db = db
        assert status["queue"] == {"queued": 1, "running": 0, "succeeded": 0, "failed": 0,
                                   "cancelled": 0}
        assert status["running"] == [] and "journal" not in status
        assert [r["task_id"] for r in (await service.status("key_b"))["running"]] == [
            theirs["task_id"]]
        assert (await service.status())["queue"]["queued"] == 1
        await service.drain(0.0)
    asyncio.run(scenario())


def test_status_scans_no_journal_table_and_counts_deliveries_at_most_every_few_seconds(tmp_path):
    async def scenario():
        service = make_service(tmp_path)
        await service.submit([spec(tmp_path)])
        await service.status()
        statements = []
        service.journal.db.set_trace_callback(statements.append)
        status = await service.status()
        service.journal.db.set_trace_callback(None)
        assert statements == [] and status["queue"]["running"] + status["queue"]["queued"] == 1
        clock = FakeClock()
        counts = DeliveryCounts(service.journal.path, max_age_s=10.0, clock=clock)
        assert await counts.get() == {}
        service.journal.deliveries.add({"delivery_id": "d1", "task_id": "t", "run_seq": 1,
                                        "event": "task.succeeded", "url": "https://x",
                                        "body": "{}", "state": "pending", "created_at": 1.0})
        assert await counts.get() == {}  # until it is `max_age_s` old
        clock.advance(10.0)
        assert await counts.get() == {"pending": 1}
        await service.drain(0.0)
    asyncio.run(scenario())


def test_a_batch_submit_goes_a_chunk_at_a_time_letting_other_calls_in(tmp_path, monkeypatch):
    """A chunk of a batch (a thousand specs from `submit --from`) is accepted `CHUNK` specs a
    step: other calls run between steps (a thousand at once held the loop 150 ms at 100,000
    queued)."""
    monkeypatch.setattr(service_module, "CHUNK", 2)
    specs = [spec(tmp_path, f"f{i}", batch_id="b") for i in range(5)]

    async def scenario():
        service = make_service(tmp_path)
        await service.ping()
        seen = []

        async def other_call():
            while True:
                seen.append(len(service.core.active))
                await asyncio.sleep(0)
        other = asyncio.create_task(other_call())
        await asyncio.sleep(0)
        replies = await service.submit_batch(specs)
        other.cancel()
        assert [reply["outcome"] for reply in replies] == ["queued"] * 5
        assert {2, 4} <= set(seen)  # what the other call saw between steps
        await service.drain(0.0)
    asyncio.run(scenario())


def test_a_task_list_is_read_a_page_of_chunk_records_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "CHUNK", 2)

    async def scenario():
        service = make_service(tmp_path)
        await service.submit_batch([spec(tmp_path, f"f{i}") for i in range(5)])
        views = await service.list_tasks(limit=4)
        assert [view["file_id"] for view in views] == ["f4", "f3", "f2", "f1"]
        older = await service.list_tasks(limit=10, before_seq=views[1]["seq"])
        assert [view["file_id"] for view in older] == ["f2", "f1", "f0"]
        await service.drain(0.0)
    asyncio.run(scenario())
