"""What a JSON `input` and a `webhook_url` may name, over real HTTP against a real service: only
the storage prefixes and path roots the operator listed, never a chain or a local archive, never
the service's own folders; http(s) inputs and webhooks never reach a loopback listener, however
its address is written. Each refusal is one 4xx line and changes nothing."""
from __future__ import annotations

import socket
import threading
import uuid

import pytest

from raydemucs.core.keys import KeyStore

from support import HttpService, wait_for, write_audio


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts (each closed at once)."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def accept(self):
        while not self.closing.is_set():
            try:
                connection, _ = self.socket.accept()
            except socket.timeout:
                continue
            self.accepted += 1
            connection.close()

    def close(self):
        self.closing.set()
        self.thread.join()
        self.socket.close()


@pytest.fixture(scope="module")
def listener():
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def media(s3_endpoint):
    """A bucket on the session's S3 server, `(filesystem, "s3://NAME")`: its `ok/` is allowed."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, use_listings_cache=False)
    name = f"in{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, f"s3://{name}"


@pytest.fixture(scope="module")
def service(serve_port, s3_endpoint, media, listener, tmp_path_factory):
    """A service whose root directory (holding its own state) is an allowed path root, reading
    s3 inputs under `media`'s `ok/` and http(s) ones from the listener (whose address the
    guard refuses)."""
    root = tmp_path_factory.mktemp("inputs")
    loopback = f"127.0.0.1:{listener.port}"
    service = HttpService(root, serve_port, workers={"max_workers": 1, "prefetch": 0},
                          storage={"endpoint_url": s3_endpoint},
                          http={"inputs": [f"{media[1]}/ok/", f"http://{loopback}/",
                                           f"https://{loopback}/", f"s3://{media[1][5:]}-x"],
                                "allow_paths": [str(root)]})
    service.root = root
    yield service
    service.close()


def refused(service, listener, json: dict | None = None, **request) -> dict:
    """POST a request that must be refused: its one-line 4xx error; nothing stored, nothing
    queued, no connection to the listener."""
    before = (service.stored(), service.manager.get_status()["queue"])
    answer = service.client.post("/v1/tasks", json=json, **request)
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert error["type"] and error["message"] and "\n" not in error["message"]
    assert (service.stored(), service.manager.get_status()["queue"]) == before
    assert listener.accepted == 0
    return error


def test_inputs_outside_the_prefixes_and_http_inputs_at_loopback_are_refused(service, listener,
                                                                             tmp_path):
    here = f"127.0.0.1:{listener.port}"
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    bucket = service.config.http.inputs[0].rstrip("/")  # s3://NAME/ok
    outside = [
        f"ftp://{here}/a.wav", f"simplecache::http://{here}/a.wav", f"zip://x::http://{here}/a.zip",
        f"zip://a.wav::file://{archive}", f"tar://a.wav::file://{archive}", "dir://a.wav",
        "reference://a.wav", "memory://a.wav", "file:///etc/passwd", "local:///etc/passwd",
        "s3://not-allowed-bucket/a.wav", f"{bucket}-other/a.wav", f"{bucket}/../other/a.wav",
        f"{bucket}/a%2e%2e/a.wav", f"{bucket}/a.wav?versionId=1", f"{bucket}//a.wav",
        f"http://{here}/../a.wav", f"http://[::ffff:127.0.0.1]:{listener.port}/a.wav",
        f"http://{here}@127.0.0.1:{listener.port}/a.wav",
    ]
    for uri in outside:
        error = refused(service, listener, {"input": uri})
        assert "is not under a storage prefix this service reads inputs from" in error["message"]
    for uri in (f"http://{here}/a.wav", f"https://{here}/a.wav"):  # listed, at loopback
        error = refused(service, listener, {"input": uri})
        assert error["message"] == f"{uri} could not be fetched (missing, or not at a public address)"


def test_an_s3_input_under_an_allowed_prefix_runs_end_to_end(service, media, tmp_path):
    fs, bucket = media
    fs.put_file(str(write_audio(tmp_path / "ok.wav", seconds=0.5)), f"{bucket}/ok/song.wav")
    created = service.client.post("/v1/tasks", json={"input": f"{bucket}/ok/song.wav"})
    assert created.status_code == 202, created.text
    done = service.wait(created.json()["task_id"])
    assert done["state"] == "succeeded", done["error"]
    assert service.client.get(done["outputs"]["drums"]).content[:4] == b"RIFF"


def test_paths_only_under_a_root_and_never_in_the_service_state(service, listener, tmp_path):
    root = service.root
    song = write_audio(root / "songs" / "song.wav", seconds=0.5)
    secret = write_audio(tmp_path / "outside.wav", seconds=0.5)  # outside the root
    (root / "songs" / "link.wav").symlink_to(secret)
    planted = write_audio(service.state / "planted.wav", seconds=0.5)
    messages = set()
    for path in (root / "songs" / "link.wav", planted, f"{root}/songs/../../{secret.name}",
                 secret, tmp_path / "missing.wav", "/etc/passwd"):
        error = refused(service, listener, {"input": str(path)})
        messages.add(error["message"].replace(str(path), "PATH"))
    assert messages == {"field 'input' PATH is not under a directory this service reads inputs "
                        "from (http.allow_paths)"}  # the same whether the path exists or not
    created = service.client.post("/v1/tasks", json={"input": str(song), "project": "paths"})
    assert created.status_code == 202, created.text
    assert service.wait(created.json()["task_id"])["state"] == "succeeded"


@pytest.mark.parametrize("host", ["[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[::127.0.0.1]",
                                  "[::ffff:127.0.0.1]", "[64:ff9b:1::7f00:1]", "localhost"])
def test_webhooks_to_loopback_written_any_way_are_refused(service, listener, tmp_path, host):
    song = write_audio(tmp_path / "hook.wav", seconds=0.5)
    url = f"http://{host}:{listener.port}/hook"
    error = refused(service, listener, files={"file": (song.name, song.read_bytes())},
                    data={"webhook_url": url})
    kind = "non-public" if host.startswith("[64:ff9b:1:") else "loopback"  # a local-use NAT64
    assert error["message"] == (f"webhook_url {url} names a {kind} address "
                                "(webhooks.allow_private is off)")


def test_a_key_with_its_own_prefixes_names_inputs_under_those_alone(service, listener, media,
                                                                   tmp_path):
    """Last here: once a key exists, every request needs one."""
    fs, bucket = media
    fs.put_file(str(write_audio(tmp_path / "k.wav", seconds=0.5)), f"{bucket}/keyed/song.wav")
    key = KeyStore(service.state).add("tenant", inputs=[f"{bucket}/keyed/"])
    headers = {"Authorization": f"Bearer {key}"}
    wait_for(lambda: service.client.get("/v1/tasks").status_code == 401, timeout_s=10)
    error = refused(service, listener, {"input": f"{bucket}/ok/song.wav"}, headers=headers)
    assert "is not under a storage prefix" in error["message"]  # the service's, not the key's
    created = service.client.post("/v1/tasks", json={"input": f"{bucket}/keyed/song.wav"},
                                  headers=headers)
    assert created.status_code == 202, created.text
    assert service.wait(created.json()["task_id"], **headers)["state"] == "succeeded"
