"""API keys and owners over real HTTP: the open laptop door, keys added and revoked while the
service runs, tasks private to their key, caps, and no start on a public address without keys."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from raydemucs.core.keys import KeyStore

from support import HttpService, run_cli, wait_for, write_audio


@pytest.fixture
def service(serve_port, tmp_path):
    service = HttpService(tmp_path, serve_port, workers={"max_workers": 1, "prefetch": 0})
    yield service
    service.close()


def add_key(service, name, *extra) -> str:
    """`python -m raydemucs keys add NAME` against the service's state directory; the key."""
    added = run_cli("keys", "add", name, *extra, env={
        "RAYDEMUCS_SERVICE_STATE_DIR": service.config.service.state_dir})
    assert added.returncode == 0, added.stderr
    return added.stdout.strip().splitlines()[-1]


def post(service, song, key=None, **fields):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return service.client.post("/v1/tasks", files={"file": (song.name, song.read_bytes())},
                               data=fields, headers=headers)


def test_keys_gate_every_request_and_tasks_belong_to_their_key(service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=0.5)
    assert post(service, song).status_code == 202  # loopback, no key yet: the laptop door
    alice, bob = add_key(service, "alice"), add_key(service, "bob")
    assert alice.startswith("rdk_") and alice not in KeyStore(service.state).path.read_text()
    missing = wait_for(lambda: (lambda r: r if r.status_code == 401 else None)(
        service.client.get("/v1/tasks")), timeout_s=10)  # honoured within seconds, no restart
    wrong = service.client.get("/v1/tasks", headers={"Authorization": "Bearer rdk_wrong"})
    assert missing.json() == wrong.json() and wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    mine = post(service, song, alice, project="a")
    assert mine.status_code == 202, mine.text
    task_id = mine.json()["task_id"]
    for key, status in [(alice, 200), (bob, 404)]:
        seen = service.client.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {key}"})
        assert seen.status_code == status
        listed = service.client.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"})
        assert (task_id in [t["task_id"] for t in listed.json()["tasks"]]) == (key == alice)
    theirs = post(service, song, bob, project="a")  # the same project and file id, another owner
    assert theirs.status_code == 202 and theirs.json()["task_id"] != task_id
    cancel = service.client.delete(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {bob}"})
    assert cancel.status_code == 404
    revoked = run_cli("keys", "revoke", "alice", env={
        "RAYDEMUCS_SERVICE_STATE_DIR": service.config.service.state_dir})
    assert revoked.returncode == 0
    wait_for(lambda: service.client.get("/v1/tasks", headers={
        "Authorization": f"Bearer {alice}"}).status_code == 401, timeout_s=10)
    listing = run_cli("keys", "list", env={
        "RAYDEMUCS_SERVICE_STATE_DIR": service.config.service.state_dir})
    assert "bob" in listing.stdout and "alice" not in listing.stdout and bob not in listing.stdout
    assert not files_holding(service, alice, bob, "rdk_wrong")  # no log, no state file
    assert any(service.state not in path.parents  # the scan reads the logs: Serve's access log
               for path in files_holding(service, "/v1/tasks"))


def files_holding(service, *secrets) -> list[Path]:
    """The files of this Ray session's logs and of the service's state directory that hold any
    of `secrets`."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # the tests' own Ray
    found = []
    for path in [*logs.rglob("*"), *service.state.rglob("*")]:
        if path.is_file() and any(secret.encode() in path.read_bytes() for secret in secrets):
            found.append(path)
    return found


def test_a_key_past_its_cap_gets_429_with_retry_after(service, tmp_path):
    capped = add_key(service, "capped", "--max-queued", "1")
    time.sleep(2.5)  # the replica's copy of the keys
    long = write_audio(tmp_path / "long.wav", seconds=10.0)
    assert post(service, long, capped, segment="1").status_code == 202
    over = post(service, write_audio(tmp_path / "more.wav", seconds=0.5), capped)
    assert over.status_code == 429 and over.headers["retry-after"]
    assert "may have 1" in over.json()["error"]["message"]



def test_every_loopback_address_is_the_same_open_door(serve_port, tmp_path):
    """127.0.0.2 is loopback for the check that starts the API without keys and for the one
    that answers requests without a key alike (they disagreed: it started, then said 401)."""
    import httpx

    service = HttpService(tmp_path, serve_port, http={"host": "127.0.0.2"},
                          workers={"max_workers": 1})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=60) as client:
            answer = client.get("/v1/tasks")
        assert answer.status_code == 200, answer.text
    finally:
        service.close()
