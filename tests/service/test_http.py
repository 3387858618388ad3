"""The HTTP API on a real Ray Serve, over real HTTP: upload, status, events, stems, cancel, retry."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
import ray

from raydemucs.core.actors import get_scheduler

from support import peak_rss, write_audio

STEMS = ["bass", "drums", "other", "vocals"]


def upload(service, path, **fields):
    return service.client.post("/v1/tasks", files={"file": (path.name, path.read_bytes())},
                               data={key: str(value) for key, value in fields.items()})


def events(service, task_id) -> list[tuple[str, dict]]:
    """The task's server-sent events, to the end of the stream: `(event, data)`."""
    found, kind = [], None
    with service.client.stream("GET", f"/v1/tasks/{task_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                found.append((kind, json.loads(line[len("data: "):])))
    return found


def test_upload_events_and_every_stem_and_the_zip(http_service, tmp_path):
    song = write_audio(tmp_path / "My Song.wav", seconds=3.0)
    created = upload(http_service, song, project="My Project", shifts=0)
    assert created.status_code == 202, created.text
    record = created.json()
    assert created.headers["location"] == record["links"]["self"]
    assert record["file_id"] == "My Song" and record["project"] == "My Project"
    assert "input_path" not in json.dumps(record) and str(tmp_path) not in created.text
    seen = events(http_service, record["task_id"])
    assert seen[0][0] == "state" and seen[-1][1]["state"] == "succeeded"
    assert [kind for kind, _ in seen].count("state") >= 2
    progress = [data["progress"] for _, data in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0
    done = http_service.client.get(record["links"]["self"]).json()
    assert sorted(done["outputs"]) == STEMS and done["queue_position"] is None
    folder = http_service.state / "results" / "My Project" / "My Song"
    manifest = json.loads((folder / "manifest.json").read_text())
    for stem, url in done["outputs"].items():
        answer = http_service.client.get(url)
        assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav"
        assert answer.content == (folder / f"{stem}.wav").read_bytes()
        assert answer.headers["etag"] == f'"{manifest["stems"][stem]["sha256"]}"'
        assert int(answer.headers["content-length"]) == len(answer.content)
    archive = zipfile.ZipFile(io.BytesIO(http_service.client.get(done["links"]["zip"]).content))
    assert sorted(archive.namelist()) == sorted([f"My Song/{s}.wav" for s in STEMS]
                                                + ["My Song/manifest.json"])
    assert archive.read("My Song/vocals.wav") == (folder / "vocals.wav").read_bytes()
    late = events(http_service, record["task_id"])  # a late client gets the current state
    assert [(kind, data["state"]) for kind, data in late] == [("state", "succeeded")]


def test_ranges_and_etags_of_a_stem(http_service, tmp_path):
    record = upload(http_service, write_audio(tmp_path / "ranges.wav", seconds=1.0)).json()
    url = http_service.wait(record["task_id"])["outputs"]["bass"]
    whole = http_service.client.get(url)
    size = len(whole.content)
    for header, (start, stop) in [("bytes=0-99", (0, 100)), ("bytes=100-", (100, size)),
                                  ("bytes=-50", (size - 50, size)),
                                  (f"bytes=10-{size + 999}", (10, size))]:
        part = http_service.client.get(url, headers={"Range": header})
        assert part.status_code == 206 and part.content == whole.content[start:stop], header
        assert part.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}"
    past = http_service.client.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["error"]["type"] == "RangeNotSatisfiable"
    again = http_service.client.get(url, headers={"If-None-Match": whole.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_the_same_project_and_file_id_is_the_same_task_unless_forced(http_service, tmp_path):
    song = write_audio(tmp_path / "same.wav", seconds=1.0)
    first = upload(http_service, song, project="idem").json()
    again = upload(http_service, song, project="idem")
    assert again.status_code == 202 and again.json()["task_id"] == first["task_id"], again.text

    http_service.wait(first["task_id"])
    conflict = upload(http_service, song, project="idem", format="flac")
    assert conflict.status_code == 409 and "format: wav -> flac" in conflict.json()["error"]["message"]
    forced = upload(http_service, song, project="idem", format="flac", force="true")
    assert forced.status_code == 202 and forced.json()["task_id"] == first["task_id"]
    done = http_service.wait(first["task_id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["options"]["format"] == "flac"



def test_a_batch_submitted_by_the_client_is_listed_by_its_batch_id(http_service, tmp_path):
    folder = tmp_path / "catalog"
    for index in range(2):
        write_audio(folder / f"song{index}.wav", seconds=0.5, seed=index)
    summary = http_service.manager.submit_batch([str(folder)], project_name="catalog",
                                                output_dir=str(tmp_path / "out"))
    listed = http_service.client.get("/v1/tasks", params={"batch_id": summary.batch_id}).json()
    assert sorted(t["file_id"] for t in listed["tasks"]) == ["song0", "song1"]
    assert {t["batch_id"] for t in listed["tasks"]} == {summary.batch_id}
    other = http_service.client.get("/v1/tasks", params={"batch_id": "b-none"}).json()
    assert other["tasks"] == []
    for task in listed["tasks"]:
        http_service.wait(task["task_id"])


def test_an_s3_input_named_in_json(http_service, bucket, tmp_path):
    fs, root = bucket
    fs.put_file(str(write_audio(tmp_path / "remote.wav", seconds=1.0)), f"{root}/in/remote.wav")
    created = http_service.client.post("/v1/tasks", json={"input": f"{root}/in/remote.wav",
                                                          "project": "s3"})
    assert created.status_code == 202, created.text
    done = http_service.wait(created.json()["task_id"])
    assert done["state"] == "succeeded", done["error"]
    assert http_service.client.get(done["outputs"]["drums"]).content[:4] == b"RIFF"


def test_pages_of_tasks_newest_first(http_service, tmp_path):
    ids = [upload(http_service, write_audio(tmp_path / f"page{i}.wav", seconds=0.5, seed=i),
                  project="pages").json()["task_id"] for i in range(3)]
    first = http_service.client.get("/v1/tasks", params={"project": "pages", "limit": 2}).json()
    assert [t["task_id"] for t in first["tasks"]] == ids[::-1][:2] and first["cursor"]
    rest = http_service.client.get("/v1/tasks", params={"project": "pages", "limit": 2,
                                                        "cursor": first["cursor"]}).json()
    assert [t["task_id"] for t in rest["tasks"]] == [ids[0]] and rest["cursor"] is None
    for task_id in ids:
        http_service.wait(task_id)
    done = http_service.client.get("/v1/tasks", params={"state": "succeeded", "project": "pages"})
    assert len(done.json()["tasks"]) == 3


def test_cancel_a_queued_task_and_retry_it(http_service, tmp_path):
    busy = upload(http_service, write_audio(tmp_path / "busy.wav", seconds=10.0),
                  project="cancel", segment=1).json()["task_id"]
    queued = upload(http_service, write_audio(tmp_path / "later.wav", seconds=0.5),
                    project="cancel").json()
    assert queued["state"] == "queued" and queued["queue_position"] is not None
    cancelled = http_service.client.delete(queued["links"]["self"])
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    retried = http_service.client.post(f"{queued['links']['self']}/retry")
    assert retried.status_code == 202 and retried.json()["state"] in ("queued", "running")
    http_service.client.delete(f"/v1/tasks/{busy}")
    assert http_service.wait(queued["task_id"])["state"] == "succeeded"


def test_models_status_health_and_docs(http_service):
    models = http_service.client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["demucs_unittest"] and models[0]["device"] == "cpu"
    assert http_service.client.get("/v1/status").json()["service"] == http_service.config.service.name
    assert http_service.client.get("/healthz").json() == {"ok": True}
    assert http_service.client.get("/readyz").status_code == 200
    schema = http_service.client.get("/openapi.json").json()
    assert "/v1/tasks/{task_id}/stems/{stem}" in schema["paths"]
    assert http_service.client.get("/docs").status_code == 200


# -- bad input: each a status, one line, nothing stored, nothing queued ---------------------------
def not_audio(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("these are notes, not audio\n" * 50)
    return {"files": {"file": (path.name, path.read_bytes())}}


BAD = {
    "malformed_json": (lambda t: {"content": b"{not json", "headers": {
        "content-type": "application/json"}}, 422, "not valid JSON"),
    "json_not_an_object": (lambda t: {"json": ["s3://b/a.wav"]}, 422, "JSON object"),
    "malformed_multipart": (lambda t: {"content": b"--x\r\ngarbage", "headers": {
        "content-type": "multipart/form-data; boundary=x"}}, 422, "no `file` part"),
    "multipart_without_boundary": (lambda t: {"content": b"x", "headers": {
        "content-type": "multipart/form-data"}}, 422, "boundary"),
    "other_content_type": (lambda t: {"content": b"x", "headers": {"content-type": "text/plain"}},
                           422, "multipart/form-data"),
    "missing_file": (lambda t: {"data": {"project": "p"}, "files": {"other": ("a", b"x")}}, 422,
                     "no `file` part"),
    "empty_file": (lambda t: {"files": {"file": ("empty.wav", b"")}}, 422, "empty"),
    "not_audio": (lambda t: not_audio(t), 422, "not a decodable audio file"),
    "too_large": (lambda t: {"files": {"file": ("big.wav", b"\0" * (3 * 2**20))}}, 413,
                  "over the 2 MB limit"),
    "unknown_field": (lambda t: {**audio_form(t), "data": {"colour": "red"}}, 422,
                      "unknown field 'colour'"),
    "mistyped_field": (lambda t: {**audio_form(t), "data": {"shifts": "many"}}, 422,
                       "separation.shifts='many' is not a valid int"),
    "escaping_project": (lambda t: {**audio_form(t), "data": {"project": "../up"}}, 422,
                         "holds '/'"),
    "dot_dot_file_id": (lambda t: {**audio_form(t), "data": {"file_id": ".."}}, 422,
                        "may not start with '.' or hold '..'"),
    "escaping_file_id": (lambda t: {**audio_form(t), "data": {"file_id": "a/b"}}, 422,
                         "holds '/'"),
    "unknown_model": (lambda t: {**audio_form(t), "data": {"model": "htdemucs_nope"}}, 422,
                      "is not served here"),
    "repo_field": (lambda t: {**audio_form(t), "data": {"repo": "/tmp"}}, 422,
                   "field 'repo' is not accepted"),
    "a_path_input": (lambda t: {"json": {"input": "/etc/passwd"}}, 422, "http.allow_paths"),
    "a_missing_s3_input": (lambda t: {"json": {"input": "s3://no-such-bucket-x/a.wav"}}, 422,
                           "does not exist"),
}


def audio_form(tmp_path):
    song = write_audio(tmp_path / "fine.wav", seconds=0.5)
    return {"files": {"file": (song.name, song.read_bytes())}}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_request_gets_one_line_and_changes_nothing(http_service, tmp_path, case):
    make, status, words = BAD[case]
    before = (http_service.stored(), http_service.manager.get_status()["queue"])
    answer = http_service.client.post("/v1/tasks", **make(tmp_path))
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error["message"] and "\n" not in error["message"] and error["type"]
    assert (http_service.stored(), http_service.manager.get_status()["queue"]) == before
    assert not list((http_service.state / "uploads" / ".incoming").glob("*"))


@pytest.mark.parametrize("path, status, words", [
    ("/v1/tasks/nope", 404, "no task with id 'nope'"),
    ("/v1/tasks/nope/events", 404, "no task"),
    ("/v1/tasks/nope/stems/vocals", 404, "no task"),
    ("/v1/nowhere", 404, "Not Found"),
    ("/v1/tasks?limit=0", 422, "limit 0"),
    ("/v1/tasks?state=lost", 422, "state 'lost'"),
    ("/v1/tasks?cursor=forged", 422, "cursor"),
])
def test_unknown_things_are_answered_in_one_line(http_service, path, status, words):
    answer = http_service.client.get(path)
    assert answer.status_code == status and words in answer.json()["error"]["message"]


def test_a_stem_the_task_lacks_and_stems_before_success(http_service, tmp_path):
    record = upload(http_service, write_audio(tmp_path / "two.wav", seconds=1.0),
                    two_stems="vocals").json()
    early = http_service.client.get(f"{record['links']['self']}/stems/vocals")
    done = http_service.wait(record["task_id"])
    assert early.status_code in (200, 422)  # it may have finished already
    assert sorted(done["outputs"]) == ["no_vocals", "vocals"]
    lacking = http_service.client.get(f"{record['links']['self']}/stems/drums")
    assert lacking.status_code == 404 and "has no stem 'drums'" in lacking.text


def test_a_stem_streams_from_the_store_with_its_sha256(http_service, tmp_path):
    record = upload(http_service, write_audio(tmp_path / "sum.wav", seconds=1.0)).json()
    url = http_service.wait(record["task_id"])["outputs"]["other"]
    with http_service.client.stream("GET", url) as answer:
        digest = hashlib.sha256(b"".join(answer.iter_bytes())).hexdigest()
    assert f'"{digest}"' == answer.headers["etag"]


def test_the_scheduler_never_holds_the_stems_of_a_long_upload(http_service, tmp_path):
    """A 30-second upload whose float32 stems are ~42 MB: the worker writes them on its node,
    the scheduler hears their locations, and its peak RSS grows by far less than their bytes
    (on main it held and wrote every one); they download byte-identical from the node."""
    scheduler = get_scheduler(http_service.config.service.name)
    pid = ray.get(scheduler.ping.remote())["pid"]
    before = peak_rss(pid)
    record = upload(http_service, write_audio(tmp_path / "long.mp3", seconds=30.0),
                    project="long", wav_depth="float32").json()
    done = http_service.wait(record["task_id"])
    assert done["state"] == "succeeded", done["error"]
    grown = peak_rss(pid) - before
    folder = http_service.state / "results" / "long" / "long"
    stems_bytes = sum((folder / f"{stem}.wav").stat().st_size for stem in STEMS)
    assert stems_bytes > 36 * 2**20
    assert grown < stems_bytes / 3, f"the scheduler's peak RSS grew {grown / 2**20:.0f} MB"
    assert http_service.manager.get_status(record["task_id"])["node"] == \
        ray.get_runtime_context().get_node_id()
    answer = http_service.client.get(done["outputs"]["drums"])
    assert answer.status_code == 200 and answer.content == (folder / "drums.wav").read_bytes()
