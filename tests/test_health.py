"""Health rules (no Ray), then recycling, hung workers and the memory floor on a real service."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from raydemucs.health import HealthPolicy, MemoryReleases, release_free_memory, sample

from conftest import wait_for


def test_policy_rules():
    policy = HealthPolicy(max_rss_mb=100, min_free_memory_mb=500, max_missed_pings=3)
    assert policy.too_big(101 * 2**20) and not policy.too_big(99 * 2**20) and not policy.too_big(None)
    assert not HealthPolicy(0, 0, 1).too_big(10**12)
    assert policy.node_has_room(None) and policy.node_has_room(600 * 2**20)
    assert not policy.node_has_room(400 * 2**20)
    assert policy.hung(3) and not policy.hung(2)


def test_the_derived_limit_is_a_growth_over_the_first_task_and_the_lower_limit_wins():
    growth = HealthPolicy(max_rss_mb=0, min_free_memory_mb=0, max_missed_pings=1,
                          max_rss_growth=0.5)
    assert growth.rss_limit_bytes(None) is None and not growth.too_big(10**12, None)
    assert growth.rss_limit_bytes(400 * 2**20) == 600 * 2**20
    assert growth.too_big(601 * 2**20, 400 * 2**20) and not growth.too_big(599 * 2**20, 400 * 2**20)
    both = HealthPolicy(500, 0, 1, max_rss_growth=0.5)
    assert both.rss_limit_bytes(400 * 2**20) == 500 * 2**20
    assert both.rss_limit_bytes(200 * 2**20) == 300 * 2**20


def test_freed_heap_pages_go_back_to_the_system():
    """What a worker keeps after a task without `release_memory`: blocks freed below one still
    in use stay in the process (glibc trims only the heap's top) until malloc_trim."""
    process = psutil.Process()
    blocks = [bytearray(4000) for _ in range(50_000)]  # ~200 MB of heap, below the mmap threshold
    keep = blocks[-1]
    del blocks
    held = process.memory_info().rss
    release_free_memory()
    assert held - process.memory_info().rss > 100 * 2**20
    assert len(keep) == 4000


def test_memory_is_released_at_most_once_per_interval():
    now = [100.0]
    releases = MemoryReleases(every_s=5.0, clock=lambda: now[0])
    done = []
    for step in (0.0, 1.0, 3.9, 1.1, 0.5, 5.0):
        now[0] += step
        done.append(releases())
    assert done == [True, False, False, True, False, True]


def test_sample_reports_this_process():
    figures = sample(psutil.Process(), "cpu")
    assert figures["rss_bytes"] > 10 * 2**20 and figures["num_threads"] >= 1
    assert figures["node_available_bytes"] > 0 and figures["gpu_memory_bytes"] is None




@pytest.mark.ray
def test_figures_move_when_a_worker_is_busy(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1})
    task_id = manager.add_task(audio("long.wav", seconds=40.0), output_dir=tmp_path / "out",
                               segment=2.0)
    busy = wait_for(lambda: [w for w in manager.get_status()["workers"]
                             if w["state"] == "busy" and (w["cpu_percent"] or 0) > 20])
    assert busy[0]["task_id"] == task_id and busy[0]["rss_bytes"] > 100 * 2**20
    manager.wait(task_id, timeout=120)
    assert manager.get_status()["workers"][0]["tasks_done"] == 1


@pytest.mark.ray
def test_a_worker_over_its_memory_limit_is_recycled_after_its_task(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1, "max_rss_mb": 50})
    task_id = manager.add_task(audio("song.wav", seconds=8.0), output_dir=tmp_path / "out",
                               segment=2.0)
    assert manager.wait(task_id, timeout=120)["state"] == "succeeded"
    assert wait_for(lambda: manager.get_status()["workers"][0]["restarts"] >= 1)


@pytest.mark.ray
def test_a_worker_over_its_limit_with_a_queue_behind_it_is_recycled_between_tasks(
        make_service, audio, tmp_path):
    """With prefetch a busy worker is never idle while tasks wait: it stops taking tasks, ends
    the one it holds, and is replaced; no task fails or loses an attempt."""
    manager = make_service(workers={"max_workers": 1, "max_rss_mb": 50})
    clip = audio("clip.wav", seconds=1.0)
    ids = [manager.add_task(clip, file_id=f"c{i}", output_dir=tmp_path / "out", cache=False)
           for i in range(6)]
    records = [manager.wait(task_id, timeout=300) for task_id in ids]
    assert [(r["state"], r["attempts"]) for r in records] == [("succeeded", 1)] * 6
    worker = wait_for(lambda: next((w for w in manager.get_status()["workers"]
                                    if w["state"] == "idle"), None))
    assert worker["restarts"] >= 3


@pytest.mark.ray
def test_a_worker_that_stops_answering_is_replaced_and_its_task_retried(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1, "max_missed_pings": 2})
    task_id = manager.add_task(audio("song.wav", seconds=30.0), output_dir=tmp_path / "out",
                               segment=2.0)
    wait_for(lambda: manager.get_status(task_id)["progress"] > 0.05)
    pid = manager.get_status()["workers"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        record = manager.wait(task_id, timeout=180)
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
    assert record["state"] == "succeeded" and record["attempts"] == 2
    assert manager.get_status()["workers"][0]["restarts"] == 1


@pytest.mark.ray
def test_dispatch_pauses_while_free_memory_is_below_the_floor(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1, "min_free_memory_mb": 1 << 24})
    task_id = manager.add_task(audio("song.wav", seconds=1.0), output_dir=tmp_path / "out")
    wait_for(lambda: manager.get_status()["workers"][0]["memory_paused"])
    time.sleep(1.0)
    assert manager.get_status(task_id)["state"] == "queued"
    assert manager.get_status()["workers"][0]["state"] == "idle"
    manager.cancel(task_id)
