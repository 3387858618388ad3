"""Scheduler logic with a fake pool and a fake clock: no Ray, no threads, every step explicit."""
from __future__ import annotations

import dataclasses

import pytest

from raydemucs.core.config import SeparationConfig, load_config
from raydemucs.core.errors import (
    InvalidInput,
    SeparationAborted,
    ShuttingDown,
    TaskNotFound,
    WorkerDied,
)
from raydemucs.core.task import TaskSpec, TaskState, new_task_id
from raydemucs.journal import Journal
from raydemucs.scheduler.retry_policy import retry_delay_s
from raydemucs.scheduler.scheduling import Scheduler

from fakes import FakeClock, FakePool


def make(tmp_path, workers=1, pools=(), batch_size=1, prefetch=0, **tasks):
    """A scheduler over a fake pool of `workers` (the default pool's size), or of `pools`; each
    worker holds 1 + `prefetch` tasks."""
    config = load_config(overrides={"tasks": {"max_retries": 2, "retry_backoff_s": 1.0,
                                              "retry_backoff_max_s": 10.0, "timeout_s": 30.0,
                                              "abort_grace_s": 5.0, **tasks},
                                    "workers": {"max_workers": max(1, workers),
                                                "batch_size": batch_size, "prefetch": prefetch},
                                    "pools": list(pools)}, environ={})
    clock, pool = FakeClock(), FakePool.of(config, workers)
    journal = Journal(tmp_path / "journal.db")
    return Scheduler(config, journal, pool, clock=clock, rng=lambda: 1.0), pool, clock


def spec(file_id, priority=5, project="p", **kwargs):
    return TaskSpec(task_id=new_task_id(), project=project, file_id=file_id, input_path="/in.wav",
                    output_dir="/nonexistent-out", priority=priority, **kwargs)


def finish(scheduler, pool, worker_id="worker-0"):
    task_id, attempt = pool.workers[worker_id].busy_with
    pool.free(worker_id)
    scheduler.attempt_ended(task_id, attempt, outputs={"drums": "x"})
    scheduler.dispatch()
    return task_id


def test_priority_order_then_fifo_within_a_priority(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    blocker = scheduler.submit(spec("blocker"))
    scheduler.dispatch()
    ids = {name: scheduler.submit(spec(name, prio)).task_id
           for name, prio in [("low1", 9), ("n1", 5), ("high1", 0), ("n2", 5), ("high2", 0), ("low2", 9)]}
    finished = [finish(scheduler, pool) for _ in range(7)]
    assert finished[0] == blocker.task_id
    names = {v: k for k, v in ids.items()}
    assert [names[t] for t in finished[1:]] == ["high1", "high2", "n1", "n2", "low1", "low2"]


def test_submit_is_committed_and_idempotent_by_project_and_file_id(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=0)
    first = scheduler.submit(spec("song"))
    again = scheduler.submit(spec("song"))
    other_project = scheduler.submit(spec("song", project="q"))
    assert again.task_id == first.task_id
    assert other_project.task_id != first.task_id
    reopened = Journal(scheduler.journal.path)
    assert reopened.tasks.get(first.task_id).state is TaskState.QUEUED
    assert len(scheduler.queue) == 2


def test_resubmitting_a_succeeded_task_returns_it_unless_forced(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    first = scheduler.submit(spec("song"))
    scheduler.dispatch()
    finish(scheduler, pool)
    assert scheduler.submit(spec("song")).state is TaskState.SUCCEEDED
    forced = scheduler.submit(spec("song", force=True))
    assert forced.task_id == first.task_id and forced.state is TaskState.QUEUED


def test_resubmitting_a_failed_task_runs_it_again(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    first = scheduler.submit(spec("song"))
    scheduler.dispatch()
    pool.free("worker-0")
    scheduler.attempt_ended(first.task_id, 1, InvalidInput("bad"))
    assert scheduler.get(first.task_id).state is TaskState.FAILED
    again = scheduler.submit(spec("song"))
    assert again.task_id == first.task_id and again.state is TaskState.QUEUED
    assert again.attempts == 0 and again.error is None


def test_retryable_failure_backs_off_then_retries_until_max_retries(tmp_path):
    scheduler, pool, clock = make(tmp_path)
    task = scheduler.submit(spec("song"))
    delays = []
    for attempt in (1, 2, 3):
        scheduler.tick()
        assert pool.started[-1] == ("worker-0", task.task_id, attempt)
        pool.free("worker-0")
        scheduler.attempt_ended(task.task_id, attempt, WorkerDied("boom"))
        record = scheduler.get(task.task_id)
        if attempt <= 2:
            assert record.state is TaskState.QUEUED
            delays.append(record.retry_at - clock.now)
            clock.advance(delays[-1] - 0.01)
            scheduler.tick()
            assert len(pool.started) == attempt  # not before its backoff
            clock.advance(0.01)
    assert delays == [1.0, 2.0]
    record = scheduler.get(task.task_id)
    assert record.state is TaskState.FAILED and record.attempts == 3
    assert record.error["type"] == "WorkerDied"


def test_non_retryable_failure_fails_at_once(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    task = scheduler.submit(spec("song"))
    scheduler.dispatch()
    scheduler.attempt_ended(task.task_id, 1, InvalidInput("not audio"))
    record = scheduler.get(task.task_id)
    assert record.state is TaskState.FAILED and record.attempts == 1
    assert record.error == {"type": "InvalidInput", "message": "not audio"}


def test_backoff_is_capped_and_jittered():
    assert retry_delay_s(1, 2.0, 60.0, lambda: 0.0) == 1.0
    assert retry_delay_s(3, 2.0, 60.0, lambda: 1.0) == 8.0
    assert retry_delay_s(10, 2.0, 60.0, lambda: 1.0) == 60.0


def test_timeout_aborts_then_kills_and_replaces_a_worker_that_does_not_answer(tmp_path):
    scheduler, pool, clock = make(tmp_path, max_retries=0)
    slow = scheduler.submit(spec("slow"))
    nxt = scheduler.submit(spec("next"))
    scheduler.tick()
    clock.advance(30.0)
    scheduler.tick()
    assert pool.aborted == [("worker-0", slow.task_id)]
    assert not pool.replaced
    clock.advance(5.0)
    scheduler.tick()
    assert pool.replaced and pool.replaced[0][0] == "worker-0"
    record = scheduler.get(slow.task_id)
    assert record.state is TaskState.FAILED and record.error["type"] == "TaskTimeout"
    assert pool.started[-1][1] == nxt.task_id  # the next task runs on the fresh worker
    scheduler.attempt_ended(slow.task_id, 1, outputs={})  # a late answer of the killed attempt is ignored
    assert scheduler.get(slow.task_id).state is TaskState.FAILED


def test_timeout_with_cooperative_abort_is_retried(tmp_path):
    scheduler, pool, clock = make(tmp_path)
    task = scheduler.submit(spec("slow", timeout_s=3.0))
    scheduler.tick()
    clock.advance(3.0)
    scheduler.tick()
    pool.free("worker-0")
    scheduler.attempt_ended(task.task_id, 1, SeparationAborted("stopped"))
    record = scheduler.get(task.task_id)
    assert record.state is TaskState.QUEUED and record.error["type"] == "TaskTimeout"
    assert not pool.replaced


def test_cancel_a_queued_task_drops_it(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=0)
    task = scheduler.submit(spec("song"))
    assert scheduler.cancel(task.task_id).state is TaskState.CANCELLED
    assert len(scheduler.queue) == 0
    assert scheduler.journal.tasks.get(task.task_id).state is TaskState.CANCELLED


def test_cancel_a_running_task_aborts_it_and_ends_cancelled(tmp_path):
    scheduler, pool, clock = make(tmp_path)
    task = scheduler.submit(spec("song"))
    scheduler.dispatch()
    scheduler.cancel(task.task_id)
    assert pool.aborted == [("worker-0", task.task_id)]
    pool.free("worker-0")
    scheduler.attempt_ended(task.task_id, 1, SeparationAborted("stopped"))
    assert scheduler.get(task.task_id).state is TaskState.CANCELLED


def test_cancel_of_a_running_task_that_ignores_the_abort_kills_its_worker(tmp_path):
    scheduler, pool, clock = make(tmp_path)
    task = scheduler.submit(spec("song"))
    scheduler.dispatch()
    scheduler.cancel(task.task_id)
    clock.advance(5.0)
    scheduler.tick()
    assert pool.replaced and scheduler.get(task.task_id).state is TaskState.CANCELLED


def test_worker_lost_retries_its_task_and_replaces_it(tmp_path):
    scheduler, pool, clock = make(tmp_path)
    task = scheduler.submit(spec("song"))
    scheduler.dispatch()
    scheduler.worker_lost("worker-0", "SIGKILL")
    assert pool.replaced == [("worker-0", "it died: SIGKILL")]
    record = scheduler.get(task.task_id)
    assert record.state is TaskState.QUEUED and record.error["type"] == "WorkerDied"
    clock.advance(10)
    scheduler.tick()
    assert pool.started[-1] == ("worker-0", task.task_id, 2)


def test_tasks_go_to_a_worker_that_already_holds_their_model(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=2)
    pool.workers["worker-1"].models = frozenset({("tiny", "/repo")})
    from raydemucs.core.config import SeparationConfig
    task = scheduler.submit(spec("song", options=SeparationConfig(model="tiny", repo="/repo")))
    scheduler.dispatch()
    assert pool.started == [("worker-1", task.task_id, 1)]


def test_recovery_requeues_in_order_and_counts_running_as_interrupted(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    running = scheduler.submit(spec("a"))
    scheduler.dispatch()
    queued = [scheduler.submit(spec(name)).task_id for name in ("b", "c")]
    restarted, pool2, _ = make(tmp_path)
    restarted.recover()
    assert restarted.get(running.task_id).state is TaskState.QUEUED
    restarted.dispatch()
    finished = [finish(restarted, pool2) for _ in range(3)]
    assert finished == [running.task_id, *queued]
    assert restarted.get(running.task_id).attempts == 2


def test_recovery_marks_a_task_with_complete_output_succeeded(tmp_path):
    from raydemucs.storage.folders import LocalFolder, write_outputs

    scheduler, pool, _ = make(tmp_path)
    task = scheduler.submit(TaskSpec(task_id=new_task_id(), project="p", file_id="done",
                                     input_path="/in.wav", output_dir=str(tmp_path / "out")))
    scheduler.dispatch()
    folder = LocalFolder(task.spec.output_location)
    write_outputs(folder, {"drums": b"x"}, "bin", lambda data, path: path.write_bytes(data),
                  {"task_id": task.task_id})
    restarted, pool2, _ = make(tmp_path)
    restarted.recover()
    record = restarted.get(task.task_id)
    assert record.state is TaskState.SUCCEEDED
    assert record.outputs == {"drums": str(folder.path / "drums.bin")}
    assert not pool2.started


def test_progress_is_kept_for_the_current_attempt_only(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    task = scheduler.submit(spec("song"))
    scheduler.dispatch()
    scheduler.report_progress(task.task_id, 1, 0.4)
    scheduler.report_progress(task.task_id, 1, 0.3)
    scheduler.report_progress(task.task_id, 7, 0.9)
    assert scheduler.get(task.task_id).progress == 0.4


def test_draining_refuses_submissions_and_starts_nothing(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    queued = scheduler.submit(spec("a"))
    scheduler.stop_accepting()
    with pytest.raises(ShuttingDown):
        scheduler.submit(spec("b"))
    scheduler.tick()
    assert not pool.started
    assert scheduler.journal.tasks.get(queued.task_id).state is TaskState.QUEUED


def test_unknown_task_id(tmp_path):
    scheduler, _, _ = make(tmp_path)
    with pytest.raises(TaskNotFound):
        scheduler.get("nope")
    with pytest.raises(TaskNotFound):
        scheduler.cancel("nope")


def test_every_transition_is_journaled(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    task = scheduler.submit(spec("song"))
    scheduler.dispatch()
    assert Journal(scheduler.journal.path).tasks.get(task.task_id).state is TaskState.RUNNING
    finish(scheduler, pool)
    stored = Journal(scheduler.journal.path).tasks.get(task.task_id)
    assert stored.state is TaskState.SUCCEEDED and stored.outputs == {"drums": "x"}


def test_out_of_memory_is_retried_with_half_the_segment(tmp_path):
    from raydemucs.core.errors import OutOfMemory, error_from_dict

    scheduler, pool, clock = make(tmp_path)
    task = scheduler.submit(spec("long"))
    scheduler.dispatch()
    pool.free("worker-0")
    error = error_from_dict(OutOfMemory("out of memory", segment_s=7.8).to_dict())
    scheduler.attempt_ended(task.task_id, 1, error)
    record = scheduler.get(task.task_id)
    assert record.state is TaskState.QUEUED and record.segment_s == 3.9
    assert scheduler.journal.tasks.get(task.task_id).segment_s == 3.9
    assert record.spec.options.segment is None  # what was asked stays as asked
    clock.advance(10.0)
    scheduler.tick()
    assert pool.started[-1][1:] == (task.task_id, 2)
    assert pool.specs[-1].options.segment == 3.9  # the retry runs with half the segment
    assert scheduler.submit(spec("long")).task_id == task.task_id  # the same ask: no conflict


class RecordingListener:
    def __init__(self):
        self.seen, self.uncounted = [], []

    def on_transition(self, record, previous, counted=True):
        self.seen.append((record.task_id, previous and previous.value, record.state.value))
        if not counted:
            self.uncounted.append(record.task_id)


def test_the_listener_hears_every_transition_and_queue_counts_by_priority(tmp_path):
    scheduler, pool, clock = make(tmp_path)
    scheduler.book.listeners.append(listener := RecordingListener())
    first = scheduler.submit(spec("a", priority=0))
    scheduler.submit(spec("b", priority=9))
    scheduler.submit(spec("c", priority=9))
    scheduler.dispatch()
    assert scheduler.queued_by_priority() == {"low": 2}
    clock.advance(2.0)
    scheduler.attempt_ended(first.task_id, 1, outputs={}, audio_duration_s=12.5)
    assert listener.seen[-2:] == [(first.task_id, "queued", "running"),
                                  (first.task_id, "running", "succeeded")]
    record = scheduler.get(first.task_id).to_dict()
    assert record["audio_duration_s"] == 12.5 and record["run_s"] == 2.0
    assert record["queue_wait_s"] == 0.0


def test_retry_requeues_a_dead_letter_under_its_id(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    task = scheduler.submit(spec("song"))
    scheduler.dispatch()
    pool.free("worker-0")
    scheduler.attempt_ended(task.task_id, 1, InvalidInput("input vanished"))
    again = scheduler.retry(task.task_id)
    assert again.task_id == task.task_id and again.state is TaskState.QUEUED


def test_a_task_with_a_known_cache_key_is_sent_the_earlier_folder(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    first = scheduler.submit(spec("a", project="one", input_sha256="abc"))
    scheduler.dispatch()
    finish(scheduler, pool)
    assert pool.reused == [None]
    scheduler.submit(spec("a", project="two", input_sha256="abc"))
    scheduler.submit(spec("b", project="two", input_sha256="abc", cache=False))
    scheduler.submit(spec("c", project="two", input_sha256="other"))
    for _ in range(3):
        scheduler.dispatch()
        finish(scheduler, pool)
    assert pool.reused[1:] == [first.spec.output_location, None, None]


def test_prefetch_queues_one_task_behind_a_busy_worker_and_starts_its_clock_later(tmp_path):
    scheduler, pool, clock = make(tmp_path, workers=2, prefetch=1, timeout_s=10.0)
    ids = [scheduler.submit(spec(name)).task_id for name in "abcde"]
    scheduler.dispatch()
    assert [(w, t) for w, t, _ in pool.started] == [
        ("worker-0", ids[0]), ("worker-1", ids[1]), ("worker-0", ids[2]), ("worker-1", ids[3])]
    clock.advance(9.0)
    pool.free("worker-0")
    scheduler.attempt_ended(ids[0], 1, outputs={})
    assert scheduler.get(ids[2]).started_at == clock.now
    clock.advance(9.0)
    scheduler.tick()  # c has run 9 s of its 10: no abort yet; b (18 s) is aborted
    assert pool.aborted == [("worker-1", ids[1])]
    assert pool.started[-1][1] == ids[4]  # the freed slot took the next task


def test_killing_a_worker_for_a_timeout_sends_the_task_behind_back_uncounted(tmp_path):
    scheduler, pool, clock = make(tmp_path, workers=1, prefetch=1, timeout_s=5.0, max_retries=0)
    first, second = (scheduler.submit(spec(name)).task_id for name in "ab")
    scheduler.dispatch()
    clock.advance(5.0)
    scheduler.tick()
    clock.advance(5.0)
    scheduler.tick()
    assert scheduler.get(first).error["type"] == "TaskTimeout"
    assert pool.started[-1] == ("worker-0", second, 1)  # requeued, then on the fresh worker


def test_a_prefetched_task_steps_back_for_a_better_priority(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=1, prefetch=1)
    running = scheduler.submit(spec("running", priority=5)).task_id
    low = scheduler.submit(spec("low", priority=9)).task_id
    scheduler.dispatch()
    assert pool.started_ids() == [running, low] and not pool.aborted
    high = scheduler.submit(spec("high", priority=0)).task_id
    scheduler.dispatch()
    assert pool.aborted == [("worker-0", low)]
    pool.workers["worker-0"].tasks.remove((low, 1))
    scheduler.attempt_ended(low, 1, SeparationAborted("stopped"))
    record = scheduler.get(low)
    assert record.state is TaskState.QUEUED and record.attempts == 0
    scheduler.dispatch()
    assert pool.started_ids()[-1] == high
    finish(scheduler, pool)  # running ends; high moves up; low is prefetched again
    assert pool.started_ids()[-1] == low and scheduler.get(low).attempts == 1


def test_draining_sends_prefetched_tasks_back_to_the_queue(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=1, prefetch=1)
    first, second = (scheduler.submit(spec(name)).task_id for name in "ab")
    scheduler.dispatch()
    scheduler.stop_accepting()
    assert pool.aborted == [("worker-0", second)]
    scheduler.attempt_ended(second, 1, SeparationAborted("stopped"))
    assert scheduler.journal.tasks.get(second).state is TaskState.QUEUED
    assert scheduler.journal.tasks.get(first).state is TaskState.RUNNING


def test_a_task_that_ends_without_stems_leaves_no_staging_folder(tmp_path):
    scheduler, pool, _ = make(tmp_path, max_retries=0)
    task = scheduler.submit(TaskSpec(task_id=new_task_id(), project="p", file_id="f",
                                     input_path="/in.wav", output_dir=str(tmp_path / "out")))
    scheduler.dispatch()
    staging = tmp_path / "out" / "p" / ".f.1234abcd.tmp"
    staging.mkdir(parents=True)
    (staging / "drums.mp3").write_bytes(b"half")
    scheduler.attempt_ended(task.task_id, 1, WorkerDied("killed while writing"))
    assert scheduler.get(task.task_id).state is TaskState.FAILED
    assert not staging.exists()


def test_a_replaced_worker_sends_its_waiting_task_back_without_spending_an_attempt(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=1, prefetch=1)
    first, second = (scheduler.submit(spec(name)).task_id for name in "ab")
    scheduler.dispatch()
    scheduler.worker_lost("worker-0", "SIGKILL")
    assert scheduler.get(first).error["type"] == "WorkerDied"
    record = scheduler.get(second)
    assert record.state is TaskState.QUEUED and record.attempts == 0 and record.error is None
    assert pool.replaced == [("worker-0", "it died: SIGKILL")]


GPU = {"name": "gpu", "models": ["htdemucs"], "min_workers": 0, "max_workers": 2,
       "idle_timeout_s": 60.0}
CPU = {"name": "cpu", "min_workers": 1, "max_workers": 3, "idle_timeout_s": 60.0}


def pooled(tmp_path, *pools, prefetch=0, **tasks):
    """A scheduler over `pools`, on a fake pool that starts with no workers."""
    return make(tmp_path, workers=0, pools=pools, prefetch=prefetch, **tasks)


def on(model, name, **kwargs):
    from raydemucs.core.config import SeparationConfig
    return spec(name, options=SeparationConfig(model=model), **kwargs)


def test_tasks_go_to_the_pool_of_their_model_else_to_the_pool_listing_none(tmp_path):
    scheduler, pool, _ = pooled(tmp_path, GPU, CPU)
    scheduler.dispatch()
    assert sorted(pool.workers) == ["cpu-worker-0"]  # min_workers, before any task
    ht = scheduler.submit(on("htdemucs", "a")).task_id
    mdx = scheduler.submit(on("mdx_extra", "b")).task_id
    scheduler.dispatch()
    assert sorted(pool.workers) == ["cpu-worker-0", "gpu-worker-0"] and not pool.started
    pool.ready("gpu")
    pool.ready("cpu")
    scheduler.dispatch()
    assert sorted(pool.started) == [("cpu-worker-0", mdx, 1), ("gpu-worker-0", ht, 1)]
    assert scheduler.get(ht).worker == "gpu-worker-0"


def test_a_model_no_pool_serves_is_refused_at_submit(tmp_path):
    scheduler, _, _ = pooled(tmp_path, GPU)
    with pytest.raises(InvalidInput, match="no worker pool serves model 'mdx_extra'.*gpu: htdemucs"):
        scheduler.submit(on("mdx_extra", "song"))
    assert not scheduler.journal.tasks.list(None, 10) and len(scheduler.queue) == 0


def test_a_pool_grows_to_max_and_pending_workers_are_never_free(tmp_path):
    scheduler, pool, _ = pooled(tmp_path, GPU)
    ids = [scheduler.submit(on("htdemucs", name)).task_id for name in "abc"]
    assert scheduler.dispatch() == 0
    assert sorted(pool.workers) == ["gpu-worker-0", "gpu-worker-1"]  # 3 waiting, max 2
    assert scheduler.dispatch() == 0 and len(pool.workers) == 2  # pending: no task, no more growth
    assert scheduler.pool_counts() == [{"name": "gpu", "models": ["htdemucs"], "device": "cpu", "workers": 2,
                                        "pending": 2, "queued": 3, "min_workers": 0,
                                        "max_workers": 2}]
    pool.ready("gpu")
    assert scheduler.dispatch() == 2 and pool.started_ids() == ids[:2]
    assert len(pool.workers) == 2 and len(scheduler.queue) == 1


def test_a_pending_worker_answers_one_waiting_task(tmp_path):
    scheduler, pool, _ = pooled(tmp_path, {**GPU, "max_workers": 4})
    scheduler.submit(on("htdemucs", "a"))
    scheduler.dispatch()
    assert len(pool.workers) == 1
    scheduler.submit(on("htdemucs", "b"))
    scheduler.dispatch()
    assert len(pool.workers) == 2


def test_idle_workers_are_removed_after_the_timeout_down_to_min_never_a_busy_one(tmp_path):
    scheduler, pool, clock = pooled(tmp_path, CPU)
    ids = [scheduler.submit(on("mdx_extra", name)).task_id for name in "abc"]
    scheduler.dispatch()
    pool.ready("cpu")
    scheduler.dispatch()
    assert len(pool.workers) == 3 and len(pool.started) == 3
    for worker_id in ("cpu-worker-0", "cpu-worker-1"):
        finish(scheduler, pool, worker_id)
    clock.advance(59.0)
    scheduler.tick()
    assert not pool.removed
    clock.advance(1.0)
    scheduler.tick()
    assert sorted(pool.removed) == ["cpu-worker-0", "cpu-worker-1"]  # cpu-worker-2 is busy
    assert finish(scheduler, pool, "cpu-worker-2") == ids[2]
    clock.advance(600.0)
    scheduler.tick()
    assert list(pool.workers) == ["cpu-worker-2"]  # min_workers stays


def test_a_pending_worker_left_without_tasks_is_removed_after_the_timeout(tmp_path):
    scheduler, pool, clock = pooled(tmp_path, GPU)
    task = scheduler.submit(on("htdemucs", "a"))
    scheduler.dispatch()
    scheduler.cancel(task.task_id)
    scheduler.tick()
    clock.advance(59.0)
    scheduler.tick()
    assert not pool.removed
    clock.advance(1.0)
    scheduler.tick()
    assert pool.removed == ["gpu-worker-0"] and not pool.workers


def test_without_pools_the_default_pool_is_filled_to_max_workers_and_never_shrinks(tmp_path):
    scheduler, _, clock = make(tmp_path, workers=2)
    scheduler.pool = pool = FakePool.of(scheduler.config)  # no worker yet
    scheduler.dispatch()
    pool.ready("default")
    clock.advance(86400.0)
    scheduler.tick()
    assert len(pool.workers) == 2 and not pool.removed


def test_a_better_priority_steps_back_a_prefetched_task_of_its_own_pool_only(tmp_path):
    scheduler, pool, _ = pooled(tmp_path, {**GPU, "max_workers": 1}, {**CPU, "max_workers": 1},
                                prefetch=1)
    scheduler.dispatch()
    scheduler.submit(on("mdx_extra", "running"))
    low = scheduler.submit(on("mdx_extra", "low", priority=9)).task_id
    pool.ready("cpu")
    scheduler.dispatch()
    scheduler.submit(on("htdemucs", "high", priority=0))
    scheduler.dispatch()
    assert not pool.aborted
    scheduler.submit(on("mdx_extra", "high-cpu", priority=0))
    scheduler.dispatch()
    assert pool.aborted == [("cpu-worker-0", low)]


def test_recovery_fails_a_task_whose_model_no_pool_serves_any_more(tmp_path):
    scheduler, _, _ = pooled(tmp_path, GPU, CPU)
    task = scheduler.submit(on("mdx_extra", "song"))
    restarted, _, _ = pooled(tmp_path, GPU)
    restarted.recover()
    record = restarted.get(task.task_id)
    assert record.state is TaskState.FAILED and record.error["type"] == "InvalidInput"


# -- one long track across idle workers ----------------------------------------------------------
def test_a_long_track_borrows_the_idle_workers_and_gives_them_back(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=3)
    long = scheduler.submit(spec("long", duration_s=300.0)).task_id
    scheduler.dispatch()
    assert pool.started == [("worker-0", long, 1)]
    assert pool.lent == [("worker-1", long), ("worker-2", long)]
    short = scheduler.submit(spec("short", duration_s=10.0)).task_id
    scheduler.dispatch()
    assert pool.started_ids() == [long]  # the lent workers take nothing else
    finish(scheduler, pool)
    assert pool.started_ids() == [long, short] and not pool.workers["worker-1"].lent_to


def test_a_long_track_borrows_only_what_the_queue_leaves_spare(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=3)
    long = scheduler.submit(spec("long", duration_s=300.0)).task_id
    short = scheduler.submit(spec("short", duration_s=10.0)).task_id
    scheduler.dispatch()
    assert pool.lent == [("worker-1", long)]
    assert pool.started == [("worker-0", long, 1), ("worker-2", short, 1)]


@pytest.mark.parametrize("fields, tasks", [
    ({"duration_s": 60.0}, {}),                                        # short of split_over_s
    ({"duration_s": 300.0}, {"split_over_s": None}),                   # turned off
    ({"duration_s": 900.0}, {}),                                       # streamed: memory first
    ({"duration_s": None}, {}),                                        # a URI: length unknown
    ({"duration_s": 300.0, "options": SeparationConfig(model="demucs_unittest")}, {}),
])
def test_tracks_that_are_not_split(tmp_path, fields, tasks):
    scheduler, pool, _ = make(tmp_path, workers=2, **tasks)
    scheduler.submit(spec("song", **fields))
    scheduler.dispatch()
    assert pool.lent == []


def test_a_failed_split_attempt_gives_its_helpers_back_and_retries(tmp_path):
    scheduler, pool, clock = make(tmp_path, workers=2)
    long = scheduler.submit(spec("long", duration_s=300.0)).task_id
    scheduler.dispatch()
    pool.free("worker-0")
    scheduler.attempt_ended(long, 1, WorkerDied("gone"))
    assert pool.workers["worker-1"].lent_to is None
    clock.advance(10.0)
    scheduler.tick()
    assert pool.started[-1][1:] == (long, 2) and pool.lent[-1] == ("worker-1", long)


def test_a_waiting_task_starts_its_clock_when_its_segments_start_to_run(tmp_path):
    """A batching worker holds 1 + prefetch tasks; one waiting there is on the clock only from
    the poll that shows its segments in a forward pass (or once the tasks before it ended)."""
    scheduler, pool, clock = make(tmp_path, workers=1, prefetch=2, batch_size=8, timeout_s=10.0)
    ids = [scheduler.submit(spec(name)).task_id for name in "abc"]
    scheduler.dispatch()
    assert [scheduler.running[i].behind for i in ids] == [False, True, True]
    clock.advance(9.0)
    scheduler.report_progress(ids[1], 1, 0.0, "waiting")
    scheduler.report_progress(ids[2], 1, 0.1, "separating")
    assert [scheduler.running[i].behind for i in ids] == [False, True, False]
    assert scheduler.get(ids[2]).started_at == clock.now
    clock.advance(5.0)
    scheduler.tick()  # a ran 14 s of its 10: aborted; c ran 5 s; b has not started
    assert pool.aborted == [("worker-0", ids[0])]
    pool.workers["worker-0"].tasks.remove((ids[2], 1))
    scheduler.attempt_ended(ids[2], 1, outputs={})
    assert scheduler.running[ids[1]].behind  # a still runs (it is being aborted)


def test_a_step_back_is_not_counted_as_a_retry(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=1, prefetch=1)
    scheduler.book.listeners.append(listener := RecordingListener())
    scheduler.submit(spec("running", priority=5))
    low = scheduler.submit(spec("low", priority=9)).task_id
    scheduler.dispatch()
    scheduler.submit(spec("high", priority=0))
    scheduler.dispatch()
    pool.workers["worker-0"].tasks.remove((low, 1))
    scheduler.attempt_ended(low, 1, SeparationAborted("stopped"))
    assert listener.uncounted == [low]


def test_batch_size_and_prefetch_are_per_pool(tmp_path):
    pools = [{"name": "gpu", "models": ["htdemucs"], "batch_size": 2, "prefetch": 3, "min_workers": 1},
             {"name": "cpu", "min_workers": 1}]
    scheduler, _, _ = make(tmp_path, workers=1, pools=pools)
    assert {p.name: p.batch_size for p in scheduler.pools} == {"gpu": 2, "cpu": 1}
    assert {p.name: p.tasks_per_worker for p in scheduler.pools} == {"gpu": 4, "cpu": 1}


def test_a_task_stepping_back_is_not_started_when_the_task_ahead_ends(tmp_path):
    scheduler, pool, _ = make(tmp_path, workers=1, prefetch=2)
    ids = []
    for name, priority in (("first", 5), ("low", 9), ("normal", 5)):  # low waits ahead of normal
        ids.append(scheduler.submit(spec(name, priority=priority)).task_id)
        scheduler.dispatch()
    first, low, normal = ids
    scheduler.submit(spec("high", priority=0))
    scheduler.dispatch()
    assert pool.aborted == [("worker-0", low)]
    pool.workers["worker-0"].tasks.remove((first, 1))
    scheduler.attempt_ended(first, 1, outputs={})
    assert scheduler.running[low].behind and not scheduler.running[normal].behind


def test_a_cancelled_task_retried_queues_behind_those_that_waited(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    blocker = scheduler.submit(spec("blocker"))
    scheduler.dispatch()
    first, second, third = (scheduler.submit(spec(name)).task_id for name in ("a", "b", "c"))
    scheduler.cancel(first)
    scheduler.retry(first)
    finished = [finish(scheduler, pool) for _ in range(4)]
    assert finished == [blocker.task_id, second, third, first]


def test_a_resubmit_that_asks_for_other_stems_is_refused_naming_what_differs(tmp_path):
    from raydemucs.core.errors import TaskConflict

    scheduler, pool, _ = make(tmp_path)
    int24 = SeparationConfig(wav_depth="int24")
    first = scheduler.submit(spec("song", options=int24))
    with pytest.raises(TaskConflict, match=r"wav_depth: int24 -> float32.*cancel it first"):
        scheduler.submit(spec("song", options=SeparationConfig(wav_depth="float32")))
    scheduler.dispatch()
    finish(scheduler, pool)
    assert scheduler.submit(spec("song", options=int24)).state is TaskState.SUCCEEDED
    for options, words in [(SeparationConfig(wav_depth="float32"), "wav_depth: int24 -> float32"),
                           (SeparationConfig(wav_depth="int24", two_stems="vocals"),
                            "two_stems: None -> vocals"),
                           (SeparationConfig(format="mp3", wav_depth="int24"),
                            "format: wav -> mp3")]:
        with pytest.raises(TaskConflict, match=rf"p/song is already task {first.task_id} "
                           rf"\(succeeded\) .*{words}.*--force.*--file-id"):
            scheduler.submit(spec("song", options=options))
    with pytest.raises(TaskConflict, match="input: /in.wav -> /other.wav"):
        scheduler.submit(dataclasses.replace(spec("song", options=int24), input_path="/other.wav"))
    same = SeparationConfig(wav_depth="int24", device="cpu", stream_over_s=None)
    assert scheduler.submit(spec("song", options=same)).task_id == first.task_id  # same stems
    forced = scheduler.submit(spec("song", options=SeparationConfig(format="mp3"), force=True))
    assert forced.task_id == first.task_id and forced.state is TaskState.QUEUED
    assert forced.spec.options.format == "mp3"


def test_a_failed_task_resubmitted_with_other_options_runs_with_them(tmp_path):
    scheduler, pool, _ = make(tmp_path)
    first = scheduler.submit(spec("song"))
    scheduler.dispatch()
    pool.free("worker-0")
    scheduler.attempt_ended(first.task_id, 1, InvalidInput("bad"))
    again = scheduler.submit(spec("song", options=SeparationConfig(shifts=0)))
    assert again.task_id == first.task_id and again.spec.options.shifts == 0


def test_counts_by_state_are_kept_in_memory_not_counted_in_the_journal(tmp_path):
    scheduler, pool, clock = make(tmp_path)
    for name in "abc":
        scheduler.submit(spec(name))
    restarted, pool, clock = make(tmp_path)
    restarted.recover()
    restarted.journal.tasks.count_by_state = lambda: pytest.fail("the journal was counted")
    restarted.dispatch()
    finish(restarted, pool)
    restarted.cancel(restarted.journal.tasks.list(TaskState.QUEUED, 1)[0].task_id)
    counts = restarted.queue_counts()
    assert counts == {**Journal(tmp_path / "journal.db").tasks.count_by_state(), "waiting_retry": 0}
    assert (counts["succeeded"], counts["cancelled"], counts["running"]) == (1, 1, 1)


def test_a_task_for_a_device_its_pool_does_not_run_on_is_refused(tmp_path):
    gpu = {"name": "gpu", "models": ["htdemucs"], "num_gpus": 1.0, "min_workers": 0}
    scheduler, _, _ = make(tmp_path, workers=0, pools=(gpu, {"name": "cpu"}))
    assert scheduler.pool_of(spec("a", options=SeparationConfig(device="cuda"))) == "gpu"
    assert scheduler.pool_of(spec("b", options=SeparationConfig(model="mdx_extra",
                                                                device="cpu"))) == "cpu"
    with pytest.raises(InvalidInput, match="pool 'gpu', whose workers use cuda, not cpu"):
        scheduler.submit(spec("c", options=SeparationConfig(device="cpu")))
    assert not scheduler.journal.tasks.list(None, 10)


def test_fp16_for_a_cpu_pool_is_refused_at_submit_and_a_gpu_pool_takes_it(tmp_path):
    gpu = {"name": "gpu", "models": ["htdemucs"], "num_gpus": 1.0, "min_workers": 0}
    scheduler, _, _ = make(tmp_path, workers=0, pools=(gpu, {"name": "cpu"}))
    assert scheduler.pool_of(spec("a", options=SeparationConfig(precision="fp16"))) == "gpu"
    with pytest.raises(InvalidInput, match="precision fp16 needs a GPU"):
        scheduler.submit(spec("b", options=SeparationConfig(model="mdx_extra", precision="fp16")))
    assert not scheduler.journal.tasks.list(None, 10)
