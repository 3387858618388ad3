"""Recycling, hung workers and the memory floor on a real service."""
from __future__ import annotations

import os
import signal
import time

import psutil

from support import wait_for


def test_figures_move_when_a_worker_is_busy(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1})
    task_id = manager.add_task(audio("long.wav", seconds=40.0), output_dir=tmp_path / "out",
                               segment=2.0)
    busy = wait_for(lambda: [w for w in manager.get_status()["workers"]
                             if w["state"] == "busy" and (w["cpu_percent"] or 0) > 20])
    assert busy[0]["task_id"] == task_id and busy[0]["rss_bytes"] > 100 * 2**20
    manager.wait(task_id, timeout=120)
    assert manager.get_status()["workers"][0]["tasks_done"] == 1


def test_a_worker_over_its_memory_limit_is_recycled_after_its_task(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1, "max_rss_mb": 50})
    task_id = manager.add_task(audio("song.wav", seconds=8.0), output_dir=tmp_path / "out",
                               segment=2.0)
    assert manager.wait(task_id, timeout=120)["state"] == "succeeded"
    assert wait_for(lambda: manager.get_status()["workers"][0]["restarts"] >= 1)


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


def test_dispatch_pauses_while_free_memory_is_below_the_floor(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1, "min_free_memory_mb": 1 << 24})
    task_id = manager.add_task(audio("song.wav", seconds=1.0), output_dir=tmp_path / "out")
    wait_for(lambda: manager.get_status()["workers"][0]["memory_paused"])
    time.sleep(1.0)
    assert manager.get_status(task_id)["state"] == "queued"
    assert manager.get_status()["workers"][0]["state"] == "idle"
    manager.cancel(task_id)

