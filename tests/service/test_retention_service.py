"""Retention of a real service over HTTP, with real files: stems and uploads gone after their
time, 410 for what went, a folder named with -o untouched, purge keeping a shared input."""
from __future__ import annotations

import hashlib

import httpx
import pytest

from support import HttpService, cli_env, run_cli, wait_for, write_audio

TTL_S = 8.0


def answer_gone(service, url: str) -> httpx.Response | None:
    """The `410` for `url`, else None; a download that its stem's expiry broke off short (as
    docs/http.md says: never a mix of two versions) is also not yet gone."""
    try:
        answer = service.client.get(url)
    except httpx.RemoteProtocolError:
        return None
    return answer if answer.status_code == 410 else None


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    service = HttpService(tmp_path_factory.mktemp("retention"), serve_port,
                          workers={"max_workers": 1, "prefetch": 0},
                          retention={"uploads_ttl_s": TTL_S, "results_ttl_s": TTL_S,
                                     "sweep_interval_s": 0.2})
    yield service
    service.close()


def upload(service, path, **fields) -> dict:
    answer = service.client.post("/v1/tasks", files={"file": (path.name, path.read_bytes())},
                                 data={key: str(value) for key, value in fields.items()})
    assert answer.status_code == 202, answer.text
    return answer.json()


def stored_input(service, path):
    return service.state / "uploads" / hashlib.sha256(path.read_bytes()).hexdigest()


def test_expired_stems_answer_410_and_a_folder_named_with_o_stays(service, tmp_path):
    mine = service.manager.add_task(write_audio(tmp_path / "mine.wav", seconds=0.5),
                                    output_dir=tmp_path / "mine")
    mine_folder = tmp_path / "mine" / "default" / "mine"
    assert service.manager.wait(mine)["state"] == "succeeded"
    song = write_audio(tmp_path / "expiring.wav", seconds=0.5)
    task = service.wait(upload(service, song, project="ttl")["task_id"])
    stem_url = task["outputs"]["bass"]
    assert service.client.get(stem_url).status_code == 200
    held = wait_for(lambda: (lambda r: r if r.get("results_bytes") and r["next_expiry_at"]
                             else None)(service.client.get("/v1/status").json()["retention"]), 30)
    assert held["uploads_bytes"] > 0 and held["next_expiry_at"] >= task["finished_at"] + TTL_S - 1
    gone = wait_for(lambda: answer_gone(service, stem_url), 60, step_s=0.5)
    assert gone.json()["error"]["type"] == "Gone"
    assert service.client.get(task["links"]["zip"]).status_code == 410
    view = service.client.get(task["links"]["self"]).json()
    assert view["state"] == "succeeded" and view["expired_at"] is not None
    assert not (service.state / "results" / "ttl" / "expiring").exists()
    wait_for(lambda: not stored_input(service, song).exists(), 60)
    retried = service.client.post(f"{task['links']['self']}/retry")
    assert retried.status_code == 410 and "submit the file again" in retried.text
    shown = run_cli("status", task["task_id"], env=cli_env(service)).stdout
    assert "expired: its stored files were deleted" in shown
    assert "held: uploads" in run_cli("status", env=cli_env(service)).stdout
    assert sorted(p.name for p in mine_folder.iterdir()) == [
        "bass.wav", "drums.wav", "manifest.json", "other.wav", "vocals.wav"]


def test_purge_keeps_a_shared_input_until_no_task_needs_it(service, tmp_path):
    song = write_audio(tmp_path / "shared.wav", seconds=0.5)
    first = upload(service, song, project="purge", file_id="first")
    second = upload(service, song, project="purge", file_id="second")
    first = service.wait(first["task_id"])
    purged = service.client.delete(f"{first['links']['self']}?purge=true")
    assert purged.status_code == 200 and purged.json()["expired_at"] is not None
    assert service.client.get(first["outputs"]["drums"]).status_code == 410
    assert stored_input(service, song).is_file()  # the second task needs it
    second = service.wait(second["task_id"])
    ran = run_cli("purge", second["task_id"], env=cli_env(service))
    assert ran.returncode == 0 and "input deleted" in ran.stdout, ran.stdout + ran.stderr
    assert not stored_input(service, song).exists()
    assert service.client.get(second["outputs"]["drums"]).status_code == 410
    assert not (service.state / "results" / "purge").exists() or not any(
        (service.state / "results" / "purge").iterdir())
