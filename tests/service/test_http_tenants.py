"""Tenants kept apart over real HTTP: keys' ceilings, owners by key id (a name given again owns
nothing of the old key's), status scoped to the caller, streams that end with their key, each
key's own webhook secret, and the state directory's modes."""
from __future__ import annotations

import json
import os

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from raydemucs.core.keys import KeyStore
from raydemucs.webhooks.signing import load_secret

from support import HttpService, cli_env, run_cli, wait_for, write_audio


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    """A service started under umask 0o022, with a tenant key holding ceilings (`alice`), a
    plain tenant (`bob`) and an operator (`op`): `(service, {name: headers})`."""
    umask = os.umask(0o022)
    try:
        service = HttpService(tmp_path_factory.mktemp("tenants"), serve_port,
                              workers={"max_workers": 1, "prefetch": 0},
                              webhooks={"allow_private": True, "retry_backoff_s": 0.2})
        keys = {"alice": add(service, "alice", max_shifts=1, max_overlap=0.3),
                "bob": add(service, "bob"), "op": add(service, "op", role="operator",
                                                      max_priority="high")}
    finally:
        os.umask(umask)
    yield service, keys
    service.close()


def add(service, name, **options) -> dict:
    """A new key's headers, once the service honours it."""
    headers = {"Authorization": f"Bearer {KeyStore(service.state).add(name, **options)}"}
    wait_for(lambda: service.client.get("/v1/models", headers=headers).status_code == 200,
             timeout_s=10)
    return headers


def post(service, song, headers, **fields):
    return service.client.post("/v1/tasks", files={"file": (song.name, song.read_bytes())},
                               data=fields, headers=headers)


def test_a_key_over_its_ceilings_gets_one_line_and_nothing_is_queued(service, tmp_path):
    service, keys = service
    song = write_audio(tmp_path / "ceiling.wav", seconds=0.5)
    stored = service.stored()
    for fields, words in [
            ({"priority": "high"}, "priority high is above this key's ceiling (normal)"),
            ({"shifts": "2"}, "shifts 2 is above this key's ceiling (1)"),
            ({"overlap": "0.5"}, "overlap 0.5 is above this key's ceiling (0.3)")]:
        refused = post(service, song, keys["alice"], project="ceiling", **fields)
        assert refused.status_code == 403, refused.text
        assert refused.json() == {"error": {"type": "OverCeiling", "message": words}}
    assert service.client.get("/v1/tasks", headers=keys["alice"]).json()["tasks"] == []
    assert service.stored() == stored
    allowed = post(service, song, keys["alice"], project="ceiling", shifts="1", overlap="0.3")
    assert allowed.status_code == 202, allowed.text
    high = post(service, song, keys["op"], project="ceiling", priority="high")
    assert high.status_code == 202 and high.json()["priority"] == "high"


def test_a_tenant_sees_its_own_status_and_an_operator_all(service, tmp_path):
    service, keys = service
    long = write_audio(tmp_path / "long.wav", seconds=10.0)
    task_id = post(service, long, keys["alice"], project="secret-project",
                   segment="1").json()["task_id"]
    wait_for(lambda: service.client.get(f"/v1/tasks/{task_id}", headers=keys["alice"]
                                        ).json()["state"] == "running")
    statuses = {name: service.client.get("/v1/status", headers=headers).json()
                for name, headers in keys.items()}
    with service.client.stream("GET", "/v1/status/events", headers=keys["bob"]) as stream:
        streamed = json.loads(next(line for line in stream.iter_lines()
                                   if line.startswith("data: "))[len("data: "):])
    for tenant in (statuses["bob"], streamed):
        text = json.dumps(tenant)
        for hidden in (task_id, "secret-project", str(service.state), "journal", "pid", "node"):
            assert hidden not in text
        assert tenant["view"] == "tenant" and tenant["running"] == []
        assert tenant["queue"]["running"] == 0 and tenant["pools"][0]["workers"] == 1
        assert [worker["state"] for worker in tenant["workers"]] == ["busy"]
    mine = statuses["alice"]
    assert [r["task_id"] for r in mine["running"]] == [task_id] and mine["queue"]["running"] == 1
    assert str(service.state) not in json.dumps(mine)
    everything = statuses["op"]
    assert everything["view"] == "operator" and everything["journal"].startswith(str(service.state))
    assert [r["task_id"] for r in everything["running"]] == [task_id]
    assert everything["workers"][0]["task_id"] == task_id
    ready = service.client.get("/readyz")  # no key needed, and nothing told but ok
    assert ready.status_code == 200 and ready.json() == {"ok": True}
    service.client.delete(f"/v1/tasks/{task_id}", headers=keys["alice"])


def test_a_new_key_given_a_revoked_keys_name_owns_none_of_its_tasks(service, tmp_path):
    service, _ = service
    old = add(service, "carol")
    task_id = post(service, write_audio(tmp_path / "mine.wav", seconds=0.5), old,
                   project="carol").json()["task_id"]
    stem = next(iter(service.wait(task_id, **old)["outputs"]))
    paths = (f"/v1/tasks/{task_id}", f"/v1/tasks/{task_id}/stems/{stem}",
             f"/v1/tasks/{task_id}/stems.zip")
    assert [service.client.get(path, headers=old).status_code for path in paths] == [200] * 3
    KeyStore(service.state).revoke("carol")
    new = add(service, "carol")
    assert [service.client.get(path, headers=new).status_code for path in paths] == [404] * 3
    assert service.client.get("/v1/tasks", headers=new).json()["tasks"] == []


def test_open_streams_end_when_their_key_is_revoked(service):
    service, _ = service
    dave = add(service, "dave")
    with service.client.stream("GET", "/v1/events", headers=dave) as changes, \
            service.client.stream("GET", "/v1/status/events", headers=dave) as statuses:
        lines = {stream: stream.iter_lines() for stream in (changes, statuses)}
        for stream in lines.values():
            next(stream)  # open, and answering
        KeyStore(service.state).revoke("dave")
        for stream in lines.values():
            for count, _ in enumerate(stream):
                assert count < 20, "the stream outlived its key"


def test_each_key_signs_its_webhooks_with_its_own_secret(service, receivers, tmp_path):
    service, _ = service
    keys = {name: add(service, name) for name in ("erin", "frank")}
    secrets = {name: service.client.get("/v1/webhooks/secret", headers=headers).json()["secret"]
               for name, headers in keys.items()}
    assert len({*secrets.values(), load_secret(service.state)}) == 3
    printed = run_cli("webhooks", "secret", "--key", "erin", env=cli_env(service))
    assert printed.stdout.strip() == secrets["erin"], printed.stderr
    song = write_audio(tmp_path / "hooked.wav", seconds=0.5)
    got = {}
    for name, headers in keys.items():
        got[name] = receivers()
        assert post(service, song, headers, project="hooks",
                    webhook_url=got[name].url).status_code == 202
    wait_for(lambda: all(receiver.got for receiver in got.values()))
    for name, other in (("erin", "frank"), ("frank", "erin")):
        request_headers, body = got[name].got[0]
        assert Webhook(secrets[name]).verify(body, request_headers)["type"] == "task.succeeded"
        with pytest.raises(WebhookVerificationError):
            Webhook(secrets[other]).verify(body, request_headers)


def test_the_state_directory_is_private_and_its_secret_files_0600(service):
    service, _ = service
    assert oct(service.state.stat().st_mode & 0o777) == "0o700"
    for name in ("api-keys.json", "webhook-secret"):
        assert oct((service.state / name).stat().st_mode & 0o777) == "0o600", name
