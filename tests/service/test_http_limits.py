"""Limits the front door enforces before it holds a request's bytes, over real HTTP: bodies
(JSON and forms, declared or chunked, what follows a form's end), read timeouts, a key's uploads
and event streams at once, its quota under concurrent submits, and event streams that never take
the scheduler calls everything else needs."""
from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from raydemucs.core.keys import KeyStore

from support import HttpService, wait_for, write_audio

KEYS = {"alice": None, "bob": None, "carol": None, "capped": 1}  # name -> max_queued
BOUNDARY = "limits-boundary"


@pytest.fixture(scope="module")
def service(serve_port, s3_endpoint, tmp_path_factory):
    """Keys on; one upload and two streams per key at once, three streams in all; a 2 s read
    timeout; uploads up to 2 MB; s3:// inputs (any bucket) on the session's S3 server."""
    service = HttpService(tmp_path_factory.mktemp("limits"), serve_port, input={"max_file_mb": 2.0},
                          workers={"max_workers": 1, "prefetch": 0},
                          storage={"endpoint_url": s3_endpoint},
                          http={"read_timeout_s": 2.0, "max_uploads_per_key": 1,
                                "max_streams_per_key": 2, "max_streams": 3, "inputs": ["s3://"]})
    store = KeyStore(service.state)
    service.keys = {name: {"Authorization": f"Bearer {store.add(name, max_queued=cap)}"}
                    for name, cap in KEYS.items()}
    wait_for(lambda: service.client.get("/v1/tasks", headers=service.keys["alice"])
             .status_code == 200, timeout_s=20)  # the replica's copy of the keys
    yield service
    service.close()


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    return write_audio(tmp_path_factory.mktemp("songs") / "song.wav", seconds=0.5).read_bytes()


def form(song: bytes, **fields) -> bytes:
    """A multipart body with the `file` part and `fields`, up to its closing boundary."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             .encode() for name, value in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="song.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode() + song + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def connect(service, key: str, kind: str, length: int | None) -> socket.socket:
    """A raw `POST /v1/tasks` whose headers are sent (Content-Length `length`, else chunked),
    its body not yet."""
    sock = socket.create_connection(("127.0.0.1", service.config.http.port), timeout=30)
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    sock.sendall((f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  f"Authorization: {service.keys[key]['Authorization']}\r\n"
                  f"Content-Type: {kind}\r\n{framing}\r\n\r\n").encode())
    return sock


def trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> threading.Thread:
    """Send `data` a byte every 0.2 s until `stop`: a slow client, never idle for long."""
    def run():
        for byte in data:
            if stop.wait(0.2):
                return
            sock.sendall(bytes([byte]))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def opened(service, path: str, key: str):
    """An event stream opened by `key`: its response (headers read, body as it comes)."""
    with service.client.stream("GET", path, headers=service.keys[key]) as response:
        yield response


def answer(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body the server answered on `sock`."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    status, body = response.status, json.loads(response.read())
    sock.close()
    return status, body


def send_until_answered(sock: socket.socket, chunk: bytes, timeout_s: float = 60.0) -> None:
    """Send `chunk` again and again as HTTP chunks, a little at a time, until the server
    answers: a body that would never end."""
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    deadline = time.monotonic() + timeout_s
    while not select.select([sock], [], [], 0.02)[0]:
        assert time.monotonic() < deadline, "the server read on and on without answering"
        sock.sendall(framed)


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def test_a_form_that_goes_on_past_its_end_is_refused_and_nothing_is_kept(service, song):
    """What follows a form's closing boundary is read and counted: 1 MB of it (declared) and an
    endless chunked stream of it are each refused with 413, and neither leaves a task or a file."""
    before, tasks = service.stored(), service.client.get("/v1/tasks", headers=service.keys["bob"])
    declared = service.client.post("/v1/tasks", content=form(song) + b"x" * 2**20, headers={
        **service.keys["bob"], "Content-Type": MULTIPART})
    assert declared.status_code == 413, declared.text
    assert "past the form's end" in declared.json()["error"]["message"]
    sock = connect(service, "bob", MULTIPART, None)
    sock.sendall(b"%x\r\n%s\r\n" % (len(form(song)), form(song)))
    send_until_answered(sock, b"y" * 65536)
    status, body = answer(sock)
    assert status == 413 and "past the form's end" in body["error"]["message"]
    assert service.stored() == before
    assert service.client.get("/v1/tasks", headers=service.keys["bob"]).json() == tasks.json()


def test_json_bodies_past_their_limit_get_413_declared_or_chunked(service):
    declared = connect(service, "bob", "application/json", 10 * 2**20)  # no byte of it sent
    status, body = answer(declared)
    assert status == 413 and "64 KB limit (http.max_json_kb)" in body["error"]["message"]
    chunked = connect(service, "bob", "application/json", None)
    send_until_answered(chunked, b'{"input": "' + b"a" * 8192)
    status, body = answer(chunked)
    assert status == 413 and "http.max_json_kb" in body["error"]["message"]
    assert len(body["error"]["message"].splitlines()) == 1


def test_a_body_that_stops_arriving_gets_408_and_frees_its_upload(service, song):
    before = service.stored()
    body = form(song)
    stalled = connect(service, "carol", MULTIPART, len(body))
    stalled.sendall(body[: len(body) // 2])  # then nothing, past the 2 s read timeout
    status, answered = answer(stalled)
    assert status == 408 and "http.read_timeout_s" in answered["error"]["message"]
    assert service.stored() == before
    again = service.client.post("/v1/tasks", content=body, headers={
        **service.keys["carol"], "Content-Type": MULTIPART})  # its one upload slot is free
    assert again.status_code == 202, again.text


def test_a_keys_second_upload_at_once_gets_429_before_its_body_is_read(service, song):
    """With one upload per key: while alice's first upload is on its way, her second is
    refused before it sends a byte of its body; bob's goes through; when her first client
    goes, her slot is free again."""
    body = form(song, project="second")
    first, stop = connect(service, "alice", MULTIPART, len(body)), threading.Event()
    sending = trickle(first, body[:1000], stop)
    try:
        wait_for(lambda: service.manager.get_status()["leases"]["upload"] == 1, timeout_s=30)
        second = connect(service, "alice", MULTIPART, len(body))  # headers only
        status, answered = answer(second)
        assert status == 429 and "1 upload(s) in progress" in answered["error"]["message"]
        bobs = service.client.post("/v1/tasks", content=body, headers={
            **service.keys["bob"], "Content-Type": MULTIPART})
        assert bobs.status_code == 202, bobs.text
    finally:
        stop.set()
        sending.join()
        first.close()  # the client goes mid-body
    wait_for(lambda: service.client.post("/v1/tasks", content=body, headers={
        **service.keys["alice"], "Content-Type": MULTIPART}).status_code == 202, timeout_s=30)


def test_concurrent_submits_of_a_key_with_room_for_one_make_one_task(service, bucket):
    """Six JSON submits at once of a key with room for one task: one task; then its upload is
    refused for its quota before it sends a byte of its body."""
    fs, base = bucket
    long = write_audio(service.state.parent / "long.wav", seconds=40.0, samplerate=11025,
                       channels=1)  # under 1 MB, its task still running when the test ends
    fs.pipe(f"{base[5:]}/song.wav", long.read_bytes())

    def submit(number: int):
        return service.client.post("/v1/tasks", headers=service.keys["capped"], json={
            "input": f"{base}/song.wav", "file_id": f"take{number}", "segment": "1"})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(submit, range(6)))
    assert sorted(a.status_code for a in answers) == [202] + [429] * 5, [a.text for a in answers]
    listed = service.client.get("/v1/tasks", headers=service.keys["capped"]).json()["tasks"]
    assert len(listed) == 1 and listed[0]["state"] in ("queued", "running")
    upload = connect(service, "capped", MULTIPART, 2**20)  # its quota before any of its body
    status, body = answer(upload)
    assert status == 429 and "may have 1" in body["error"]["message"]


def test_streams_past_a_keys_cap_get_429_and_full_streams_hold_no_other_call(service, song):
    """Two streams per key, three in all (the scheduler's streams group): alice's third gets
    429 while bob opens one; with all three open, a submit and a task's view still answer, and
    a fourth key's stream gets 503; a stream whose client went frees its slot."""
    lines = []  # each stream's lines, read on (a line iterator let go closes its stream)
    with contextlib.ExitStack() as streams:
        def watch(key: str) -> None:  # its first line: its wait at the scheduler comes next
            stream = streams.enter_context(opened(service, "/v1/events", key))
            lines.append(stream.iter_lines())
            assert stream.status_code == 200 and next(lines[-1]) == ": watching"

        watch("alice")
        watch("alice")
        with opened(service, "/v1/status/events", "alice") as third:
            assert third.status_code == 429
            assert "2 event stream(s) open" in third.read().decode()
        watch("bob")
        created = service.client.post("/v1/tasks", content=form(song, project="busy"), headers={
            **service.keys["bob"], "Content-Type": MULTIPART})
        assert created.status_code == 202, created.text
        seen = service.client.get(f"/v1/tasks/{created.json()['task_id']}",
                                  headers=service.keys["bob"])
        assert seen.status_code == 200
        with opened(service, "/v1/events", "carol") as fourth:
            assert fourth.status_code == 503
            assert "3 event stream(s) open" in fourth.read().decode()
    wait_for(lambda: service.manager.get_status()["leases"]["stream"] == 0, timeout_s=30)
    with opened(service, "/v1/events", "alice") as again:
        assert again.status_code == 200
