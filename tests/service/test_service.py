"""The service on a real local Ray: separation, priorities, idempotency, faults, timeouts, cancel."""
from __future__ import annotations

import json
import os
import signal

import pytest

from raydemucs.core.errors import InvalidInput, ModelNotFound, TaskFailed

from support import wait_for


def test_separates_wav_mp3_and_flac_with_the_offline_model(make_service, audio, tmp_path):
    manager = make_service()
    out = tmp_path / "out"
    ids = [manager.add_task(audio(f"song-{ext[1:]}{ext}", seconds=2.0), output_dir=out,
                            project_name="My Project") for ext in (".wav", ".mp3", ".flac")]
    for task_id in ids:
        record = manager.wait(task_id, timeout=120)
        assert record["state"] == "succeeded" and record["attempts"] == 1
        assert sorted(record["outputs"]) == ["bass", "drums", "other", "vocals"]
        assert all(os.path.getsize(p) > 1000 for p in record["outputs"].values())
    status = manager.get_status()
    assert status["queue"]["succeeded"] == 3
    assert {w["state"] for w in status["workers"]} == {"idle"}
    assert all(w["pid"] and w["rss_bytes"] > 50e6 for w in status["workers"])


def test_repo_model_two_stems_and_flac_output(make_service, audio, tmp_path, tiny_repo):
    manager = make_service(separation={"model": "tiny", "repo": str(tiny_repo)})
    task_id = manager.add_task(audio("song.wav", seconds=2.0), output_dir=tmp_path / "out",
                               two_stems="vocals", format="flac")
    record = manager.wait(task_id, timeout=120)
    assert sorted(record["outputs"]) == ["no_vocals", "vocals"]
    assert record["outputs"]["vocals"].endswith(".flac")


def test_priorities_decide_the_order_fifo_within_one(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1})
    out = tmp_path / "out"
    blocker = manager.add_task(audio("blocker.wav", seconds=20.0), output_dir=out)
    wait_for(lambda: manager.get_status(blocker)["state"] == "running")
    order = [("low", "l1"), ("normal", "n1"), ("high", "h1"), ("normal", "n2"), ("high", "h2")]
    ids = {name: manager.add_task(audio(f"{name}.wav", seconds=0.5), output_dir=out,
                                  priority=priority) for priority, name in order}
    records = manager.wait_all([blocker, *ids.values()], timeout=180)
    started = sorted(records[1:], key=lambda r: r["started_at"])
    assert [r["file_id"] for r in started] == ["h1", "h2", "n1", "n2", "l1"]


def test_resubmitting_the_same_project_and_file_id_returns_the_same_task(make_service, audio, tmp_path):
    manager = make_service()
    song = audio("song.wav", seconds=1.0)
    first = manager.add_task(song, output_dir=tmp_path / "out", project_name="P")
    assert manager.add_task(song, output_dir=tmp_path / "out", project_name="P") == first
    manager.wait(first, timeout=120)
    assert manager.add_task(song, output_dir=tmp_path / "out", project_name="P") == first
    assert manager.get_status()["queue"]["succeeded"] == 1


def test_bad_input_is_refused_before_queueing(make_service, tmp_path):
    manager = make_service()
    text = tmp_path / "notes.mp3"
    text.write_text("hello")
    with pytest.raises(InvalidInput, match="not a decodable audio file"):
        manager.add_task(text, output_dir=tmp_path / "out")
    with pytest.raises(ModelNotFound, match="available: .*htdemucs"):
        manager.add_task(text, output_dir=tmp_path / "out", model="htdemucs_nope")
    assert sum(manager.get_status()["queue"].values()) == 0
    assert not (tmp_path / "out").exists()


def test_a_failure_inside_the_worker_is_reported_with_its_type(make_service, audio, tmp_path,
                                                              tiny_repo):
    manager = make_service()  # a local model's stems are known once loaded: the worker judges
    task_id = manager.add_task(audio("song.wav", seconds=1.0), output_dir=tmp_path / "out",
                               two_stems="piano", model="tiny", repo=str(tiny_repo))
    with pytest.raises(TaskFailed) as failure:
        manager.wait(task_id, timeout=120)
    record = failure.value.record
    assert record["error"]["type"] == "InvalidInput" and "piano" in record["error"]["message"]
    assert record["attempts"] == 1


def test_sigkill_of_a_busy_worker_retries_the_task_on_a_fresh_worker(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1})
    task_id = manager.add_task(audio("long.wav", seconds=30.0), output_dir=tmp_path / "out",
                               segment=2.0)
    wait_for(lambda: manager.get_status(task_id)["progress"] > 0.05)
    pid = manager.get_status()["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    record = manager.wait(task_id, timeout=180)
    assert record["state"] == "succeeded" and record["attempts"] == 2
    worker = manager.get_status()["workers"][0]
    assert worker["restarts"] == 1 and worker["pid"] != pid and worker["state"] == "idle"
    assert not [p for p in (tmp_path / "out" / "default").iterdir() if p.name.startswith(".")]


def test_a_task_past_its_timeout_is_stopped_and_the_next_task_runs(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1}, tasks={"max_retries": 0, "abort_grace_s": 1.0})
    out = tmp_path / "out"
    slow = manager.add_task(audio("slow.wav", seconds=60.0), output_dir=out, timeout_s=1.5,
                            segment=2.0)
    quick = manager.add_task(audio("quick.wav", seconds=0.5), output_dir=out)
    with pytest.raises(TaskFailed) as failure:
        manager.wait(slow, timeout=120)
    assert failure.value.record["error"]["type"] == "TaskTimeout"
    assert manager.wait(quick, timeout=120)["state"] == "succeeded"
    assert not (out / "default" / "slow").exists()


def test_a_hung_worker_is_killed_and_replaced(make_service, audio, tmp_path):
    """One huge segment never reaches the abort check: the worker is killed after the grace."""
    manager = make_service(workers={"max_workers": 1}, tasks={"max_retries": 0, "abort_grace_s": 0.5})
    out = tmp_path / "out"
    hung = manager.add_task(audio("hung.wav", seconds=120.0), output_dir=out, timeout_s=3.0,
                            segment=150.0)
    quick = manager.add_task(audio("quick.wav", seconds=0.5), output_dir=out)
    with pytest.raises(TaskFailed, match="TaskTimeout"):
        manager.wait(hung, timeout=120)
    assert manager.wait(quick, timeout=120)["state"] == "succeeded"
    assert manager.get_status()["workers"][0]["restarts"] == 1


def test_cancel_queued_and_running_tasks(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1})
    out = tmp_path / "out"
    running = manager.add_task(audio("running.wav", seconds=60.0), output_dir=out, segment=2.0)
    queued = manager.add_task(audio("queued.wav", seconds=1.0), output_dir=out)
    wait_for(lambda: manager.get_status(running)["state"] == "running")
    manager.cancel(queued)  # queued, or prefetched into the busy worker: cancelled either way
    manager.cancel(running)
    records = manager.wait_all([running, queued], timeout=60)
    assert [r["state"] for r in records] == ["cancelled", "cancelled"]
    assert not (out / "default" / "running").exists() and not (out / "default" / "queued").exists()


def test_a_dead_letter_can_be_listed_and_retried(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1})
    song = audio("song.wav", seconds=1.0)
    blocker = manager.add_task(audio("blocker.wav", seconds=10.0), output_dir=tmp_path / "out")
    task_id = manager.add_task(song, output_dir=tmp_path / "out")
    moved = song.rename(song.with_name("elsewhere.wav"))
    with pytest.raises(TaskFailed, match="does not exist"):
        manager.wait(task_id, timeout=120)
    assert [r["task_id"] for r in manager.list_tasks("failed")] == [task_id]
    moved.rename(song)
    assert manager.retry(task_id)["state"] in ("queued", "running")
    assert manager.wait(task_id, timeout=120)["attempts"] == 1
    assert manager.wait(blocker, timeout=120)["state"] == "succeeded"


def test_the_result_cache_links_identical_work_and_no_cache_opts_out(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1})
    song = audio("song.wav", seconds=2.0)
    out = tmp_path / "out"
    first = manager.wait(manager.add_task(song, output_dir=out, project_name="one"), timeout=120)
    cached = manager.wait(manager.add_task(song, output_dir=out, project_name="two"), timeout=120)
    fresh = manager.wait(manager.add_task(song, output_dir=out, project_name="three", cache=False),
                         timeout=120)
    manifests = [json.loads((out / p / "song" / "manifest.json").read_text())
                 for p in ("one", "two", "three")]
    assert "cached_from" not in manifests[0] and "cached_from" not in manifests[2]
    assert manifests[1]["cached_from"] == first["task_id"]
    assert os.path.samefile(cached["outputs"]["vocals"], first["outputs"]["vocals"])
    assert not os.path.samefile(fresh["outputs"]["vocals"], first["outputs"]["vocals"])


def test_with_prefetch_a_busy_worker_takes_the_next_task_and_both_succeed(make_service, audio, tmp_path):
    manager = make_service(workers={"max_workers": 1, "prefetch": 1})
    out = tmp_path / "out"
    first = manager.add_task(audio("first.wav", seconds=20.0), output_dir=out, segment=2.0)
    wait_for(lambda: manager.get_status(first)["progress"] > 0.05)
    second = manager.add_task(audio("second.wav", seconds=1.0), output_dir=out)
    worker = wait_for(lambda: [w for w in manager.get_status()["workers"] if len(w["tasks"]) == 2])
    assert worker[0]["tasks"] == [first, second]
    records = manager.wait_all([first, second], timeout=120)
    assert [r["state"] for r in records] == ["succeeded", "succeeded"]
    assert records[1]["started_at"] >= records[0]["finished_at"] - 1.0


def test_the_same_key_with_other_options_is_refused_on_the_api_and_the_cli(make_service, audio,
                                                                           ray_cluster, tmp_path):
    from raydemucs.core.errors import TaskConflict

    from support import run_cli

    manager = make_service()
    song, out = audio("song.wav", seconds=1.0), tmp_path / "out"
    first = manager.add_task(song, output_dir=out, project_name="p", wav_depth="int24")
    manager.wait(first, timeout=120)
    with pytest.raises(TaskConflict, match="wav_depth: int24 -> float32.*--force"):
        manager.add_task(song, output_dir=out, project_name="p", wav_depth="float32")
    env = {"RAY_ADDRESS": ray_cluster, "RAYDEMUCS_SERVICE_NAME": manager.config.service.name,
           "RAYDEMUCS_SERVICE_STATE_DIR": manager.config.service.state_dir}
    for flags, words in [(["--float32"], "wav_depth: int24 -> float32"),
                         (["--int24", "--two-stems", "vocals"], "two_stems: None -> vocals"),
                         (["--int24", "--mp3"], "format: wav -> mp3")]:
        refused = run_cli("submit", song, "-o", out, "--project", "p", "--wait", *flags,
                          "--profile", "test", env=env)
        assert refused.returncode == 2, refused.stderr
        assert words in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    again = run_cli("submit", song, "-o", out, "--project", "p", "--int24", "--wait",
                    "--profile", "test", env=env)
    assert again.returncode == 0 and first in again.stdout
    forced = manager.add_task(song, output_dir=out, project_name="p", wav_depth="float32",
                              force=True)
    assert manager.wait(forced, timeout=120)["outputs"]["vocals"].endswith(".wav")
    assert json.loads((out / "p" / "song" / "manifest.json").read_text())["options"][
        "wav_depth"] == "float32"
