"""What the page needs of the HTTP API, over real HTTP on a real Ray Serve: the page and its
modules, a stem's peaks summary, and one event stream of all of a caller's tasks."""
from __future__ import annotations

import io
import json
import re
import time

import pytest
import soundfile as sf

from raydemucs.core.keys import KeyStore

from support import HttpService, expected_peaks, wait_for, write_audio


# -- over HTTP --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(serve_port, tmp_path_factory):
    """A service with two API keys: `(service, {"alice": headers, "bob": headers})`."""
    service = HttpService(tmp_path_factory.mktemp("web"), serve_port,
                          workers={"max_workers": 1, "prefetch": 0})
    keys = {name: {"Authorization": f"Bearer {KeyStore(service.state).add(name)}"}
            for name in ("alice", "bob")}
    wait_for(lambda: service.client.get("/v1/models").status_code == 401, timeout_s=10)
    yield service, keys
    service.close()


def upload(service, path, headers, **fields):
    answer = service.client.post("/v1/tasks", files={"file": (path.name, path.read_bytes())},
                                 data={key: str(value) for key, value in fields.items()},
                                 headers=headers)
    assert answer.status_code == 202, answer.text
    return answer.json()


def test_the_page_and_every_module_it_imports(keyed):
    service, _ = keyed
    page = service.client.get("/")  # no key needed: the page asks for one
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="(web/[^"]+)"', page.text)
    assert "web/app.js" in assets and "web/style.css" in assets
    pending, seen = list(assets), set()
    while pending:
        asset = pending.pop()
        if asset in seen:
            continue
        seen.add(asset)
        answer = service.client.get(f"/{asset}")
        assert answer.status_code == 200, asset
        if asset.endswith(".js"):
            assert "javascript" in answer.headers["content-type"], asset
            pending += [f"web/{name}" for name in re.findall(r'from "\./([\w.]+)"', answer.text)]
    assert {"web/api.js", "web/player.js", "web/tasks.js", "web/operator.js"} <= seen
    missing = service.client.get("/web/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"
    assert "/" not in service.client.get("/openapi.json").json()["paths"]


def test_peaks_of_a_stem_are_those_of_its_samples(keyed, tmp_path):
    service, keys = keyed
    task = upload(service, write_audio(tmp_path / "peaks.wav", seconds=2.0), keys["alice"],
                  project="peaks")
    done = service.wait(task["task_id"], **keys["alice"])
    assert done["state"] == "succeeded", done["error"]
    stem = service.client.get(done["outputs"]["vocals"], headers=keys["alice"])
    url = f"/v1/tasks/{task['task_id']}/stems/vocals/peaks"
    answer = service.client.get(url, params={"points": 300}, headers=keys["alice"])
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    data, rate = sf.read(io.BytesIO(stem.content), dtype="float32")
    low, high = expected_peaks(data.min(axis=1)[:, None], 300)[0], \
        expected_peaks(data.max(axis=1)[:, None], 300)[1]
    assert summary["stem"] == "vocals" and summary["points"] == 300
    assert summary["min"] == low and summary["max"] == high
    assert summary["frames"] == len(data) and summary["samplerate"] == rate
    again = service.client.get(url, params={"points": 300},
                               headers={**keys["alice"], "If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304
    assert service.client.get(url, headers=keys["alice"]).json()["points"] == 1000  # the default


def test_peaks_refuse_bad_parameters_in_one_line(keyed, tmp_path):
    service, keys = keyed
    task = upload(service, write_audio(tmp_path / "bad.wav", seconds=0.5), keys["alice"],
                  project="peaks-bad")
    service.wait(task["task_id"], **keys["alice"])
    base = f"/v1/tasks/{task['task_id']}/stems"
    for url, params, status, words in [
            (f"{base}/vocals/peaks", {"points": 0}, 422, "points 0 must be between 1 and 10000"),
            (f"{base}/vocals/peaks", {"points": 10_001}, 422, "between 1 and 10000"),
            (f"{base}/vocals/peaks", {"points": "many"}, 422, "points"),
            (f"{base}/guitar/peaks", {}, 404, "no stem 'guitar'"),
            ("/v1/tasks/nosuchtask/stems/vocals/peaks", {}, 404, "no task")]:
        answer = service.client.get(url, params=params, headers=keys["alice"])
        assert answer.status_code == status, (url, params, answer.text)
        message = answer.json()["error"]["message"]
        assert words in message and "\n" not in message
    other = service.client.get(f"{base}/vocals/peaks", headers=keys["bob"])
    assert other.status_code == 404  # another key's task is as unknown as a missing one


def read_events(service, headers, then, until, timeout_s: float = 120.0):
    """The `/v1/events` stream's lines and task events: `then()` once it is open, and on
    until `until(tasks)` holds."""
    lines, tasks = [], []
    deadline = time.monotonic() + timeout_s
    with service.client.stream("GET", "/v1/events", headers=headers) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            lines.append(line)
            if len(lines) == 1:
                then()
            if line.startswith("data: "):
                tasks.append(json.loads(line[len("data: "):]))
                if until(tasks):
                    break
            assert time.monotonic() < deadline, "the stream did not show it in time"
    return lines, tasks


def ended(task_ids, state="succeeded"):
    return lambda tasks: set(task_ids) <= {t["task_id"] for t in tasks if t["state"] == state}


def test_one_stream_shows_every_change_of_the_callers_tasks_and_only_theirs(keyed, tmp_path):
    service, keys = keyed
    mine, theirs = [], []

    def submit():
        mine.extend(upload(service, write_audio(tmp_path / f"e{i}.wav", seconds=1.0, seed=i),
                           keys["alice"], project="events")["task_id"] for i in range(2))
        theirs.append(upload(service, write_audio(tmp_path / "b.wav", seconds=1.0), keys["bob"],
                             project="events")["task_id"])

    lines, tasks = read_events(service, keys["alice"], submit, ended(mine))
    assert lines[0] == ": watching"
    assert {t["task_id"] for t in tasks} == set(mine)  # never bob's
    for task_id in mine:
        states = [t["state"] for t in tasks if t["task_id"] == task_id]
        progress = [t["progress"] for t in tasks if t["task_id"] == task_id]
        assert states[0] in ("queued", "running") and states[-1] == "succeeded"
        assert states.count("succeeded") == 1 and progress == sorted(progress)
    assert all(t["links"]["self"].endswith(t["task_id"]) and "spec" not in t for t in tasks)
    assert service.wait(theirs[0], **keys["bob"])["state"] == "succeeded"


def test_a_retried_task_comes_back_to_the_stream(keyed, tmp_path):
    service, keys = keyed
    task_id = upload(service, write_audio(tmp_path / "again.wav", seconds=10.0), keys["alice"],
                     project="retried")["task_id"]
    service.client.delete(f"/v1/tasks/{task_id}", headers=keys["alice"])
    assert service.wait(task_id, **keys["alice"])["state"] == "cancelled"

    def retry():
        service.client.post(f"/v1/tasks/{task_id}/retry", headers=keys["alice"])

    _, tasks = read_events(service, keys["alice"], retry, ended([task_id]))
    assert tasks[0]["state"] in ("queued", "running") and tasks[-1]["state"] == "succeeded"


def test_the_stream_needs_a_key_like_every_request(keyed):
    service, _ = keyed
    for path in ("/v1/events", "/v1/status/events"):
        answer = service.client.get(path)
        assert answer.status_code == 401 and answer.json()["error"]["type"] == "Unauthenticated"


def test_the_status_stream_sends_the_status_as_it_changes(keyed, tmp_path):
    service, keys = keyed
    statuses, task_id = [], None
    with service.client.stream("GET", "/v1/status/events", headers=keys["alice"]) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            statuses.append(json.loads(line[len("data: "):]))
            if task_id is None:
                task_id = upload(service, write_audio(tmp_path / "s.wav", seconds=1.0),
                                 keys["alice"], project="status-stream")["task_id"]
            elif statuses[-1]["queue"]["succeeded"] > statuses[0]["queue"]["succeeded"]:
                break
            assert len(statuses) < 100, "the stream did not show the task's end"
    assert set(statuses[0]) == set(service.client.get("/v1/status", headers=keys["alice"]).json())
    without_uptime = [{k: v for k, v in status.items() if k != "uptime_s"} for status in statuses]
    assert all(one != other for one, other in zip(without_uptime, without_uptime[1:]))  # changes only
    assert service.wait(task_id, **keys["alice"])["state"] == "succeeded"

