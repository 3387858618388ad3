"""Nothing lost: the scheduler actor killed mid-run, and a foreground service drained by SIGTERM."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

from raydemucs import WorkerManager
from raydemucs.journal import Journal

from support import save_poison_model, wait_for


def test_a_killed_scheduler_restarts_and_finishes_every_task(make_service, audio, tmp_path):
    import ray

    manager = make_service(workers={"max_workers": 2})
    ids = [manager.add_task(audio(f"s{i}.wav", seconds=6.0 if i else 40.0, seed=i),
                            output_dir=tmp_path / "out", segment=2.0) for i in range(5)]
    wait_for(lambda: manager.get_status(ids[0])["progress"] > 0.05)  # the long one computes
    ray.kill(manager.scheduler(create=False), no_restart=False)
    records = manager.wait_all(ids, timeout=240)
    assert [r["state"] for r in records] == ["succeeded"] * 5
    assert records[0]["attempts"] == 2  # interrupted by the kill (its worker went with it), rerun
    for record in records:
        folder = tmp_path / "out" / "default" / record["file_id"]
        assert sorted(p.name for p in folder.iterdir()) == [
            "bass.wav", "drums.wav", "manifest.json", "other.wav", "vocals.wav"]
    assert not [p for p in (tmp_path / "out" / "default").iterdir() if p.name.startswith(".")]


def test_a_task_that_kills_the_scheduler_fails_after_its_retries(make_service, audio, tmp_path):
    """Each restart counts the attempt it cut off; past `tasks.max_retries` the task fails with
    one line instead of killing the service on every restart."""
    repo = save_poison_model(tmp_path / "models")
    manager = make_service(workers={"max_workers": 1},
                           separation={"model": "poison", "repo": str(repo)},
                           tasks={"max_retries": 1, "retry_backoff_s": 0.0})
    task_id = manager.add_task(audio("poison.wav", seconds=1.0), output_dir=tmp_path / "out")
    record = manager.wait_all([task_id], timeout=180)[0]
    assert record["state"] == "failed" and record["attempts"] == 2, record
    assert record["error"]["message"] == "the service restarted 2 times while this task ran"
    assert record["error"]["type"] == "ServiceRestarted"
    assert manager.get_status()["workers"]  # the service runs on


def test_sigterm_on_a_foreground_service_drains_and_the_next_start_resumes(ray_cluster, audio, tmp_path):
    name = f"fg{uuid.uuid4().hex[:6]}"
    env = {"RAY_ADDRESS": ray_cluster, "RAYDEMUCS_SERVICE_NAME": name,
           "RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path / "state"), "RAYDEMUCS_WORKERS_MEMORY_MB": "0",
           "MAX_WORKERS": "1"}
    command = [sys.executable, "-m", "raydemucs", "start", "--foreground", "--profile", "test"]
    foreground = subprocess.Popen(command, env={**__import__("os").environ, **env},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        from support import service_config
        config = service_config(tmp_path, service={"name": name}, workers={"max_workers": 1})
        manager = WorkerManager(config)
        deadline = time.monotonic() + 120
        while True:
            try:
                manager.scheduler(create=False)
                break
            except Exception:
                assert time.monotonic() < deadline and foreground.poll() is None
                time.sleep(0.5)
        # ~10 s of compute: the drain surely arrives while it runs (the 60 s grace lets it finish)
        running = manager.add_task(audio("running.wav", seconds=60.0), output_dir=tmp_path / "out",
                                   segment=2.0, shifts=2)
        queued = manager.add_task(audio("queued.wav", seconds=1.0), output_dir=tmp_path / "out")
        while not manager.get_status(running)["progress"]:  # computing, with `queued` prefetched
            assert manager.get_status(running)["state"] in ("queued", "running")
            time.sleep(0.1)
        foreground.send_signal(signal.SIGTERM)
        out, err = foreground.communicate(timeout=120)
    finally:
        if foreground.poll() is None:
            foreground.kill()
    assert foreground.returncode == 0, err
    assert "0 task(s) interrupted, 1 queued" in out
    journal = Journal(tmp_path / "state" / "journal.db")
    assert journal.tasks.get(running).state.value == "succeeded"
    assert journal.tasks.get(queued).state.value == "queued"
    journal.close()
    restarted = WorkerManager(config)
    restarted.scheduler(create=True)
    try:
        assert restarted.wait(queued, timeout=120)["state"] == "succeeded"
    finally:
        restarted.shutdown(now=True)
    assert json.loads((tmp_path / "out" / "default" / "queued" / "manifest.json").read_text())
