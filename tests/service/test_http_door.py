"""The front door over real HTTP: the Host allowlist, requests from other origins, download names
any language may hold, stems never served under another version's ETag, and `two_stems` judged
at the door."""
from __future__ import annotations

import hashlib
import io
import zipfile
from urllib.parse import quote

import httpx
import pytest

from raydemucs.core.errors import InvalidInput

from support import wait_for, write_audio

STEMS = "drums, bass, other, vocals"
OTHER_ORIGINS = [{"Origin": "http://evil.example"}, {"Origin": "null"},
                 {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                 {"Origin": "http://localhost:1"}]


def post(service, path, headers=None, **fields):
    return service.client.post("/v1/tasks", files={"file": (path.name, path.read_bytes())},
                               data={key: str(value) for key, value in fields.items()},
                               headers=headers or {})


def one_line(answer, status: int, kind: str) -> str:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["type"] == kind and "\n" not in error["message"]
    return error["message"]


def held(service) -> tuple:
    """What a refused request may not change: stored files, the queue, the task list."""
    listed = service.client.get("/v1/tasks").json()["tasks"]
    return (service.stored(), service.manager.get_status()["queue"],
            [(task["task_id"], task["state"]) for task in listed])


@pytest.fixture(scope="module")
def named_in_hebrew(http_service, tmp_path_factory):
    """A succeeded task whose name comes from a Hebrew file name."""
    song = write_audio(tmp_path_factory.mktemp("door") / "שיר.wav", seconds=0.5)
    created = post(http_service, song)
    assert created.status_code == 202, created.text
    done = http_service.wait(created.json()["task_id"])
    assert done["state"] == "succeeded", done["error"]
    return done


def test_a_host_outside_the_allowlist_gets_421_and_reaches_nothing(http_service, tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=0.5)
    before = held(http_service)
    for host in ("attacker.example", f"attacker.example:{http_service.config.http.port}",
                 "127.0.0.1.attacker.example", "[::2]"):
        headers = {"Host": host}
        one_line(post(http_service, song, headers), 421, "MisdirectedRequest")
        one_line(http_service.client.get("/v1/tasks", headers=headers), 421, "MisdirectedRequest")
        one_line(http_service.client.get("/", headers=headers), 421, "MisdirectedRequest")
    assert held(http_service) == before
    for host in ("localhost:1", "LOCALHOST", "[::1]:8000", "127.0.0.1"):  # any port
        assert http_service.client.get("/v1/tasks", headers={"Host": host}).status_code == 200


def test_a_write_from_another_origin_is_refused_keys_or_not(http_service, named_in_hebrew,
                                                            tmp_path):
    song = write_audio(tmp_path / "song.wav", seconds=0.5)
    task = named_in_hebrew["links"]["self"]
    before = held(http_service)
    for other in OTHER_ORIGINS:
        for headers in (other, {**other, "Authorization": "Bearer rdk_any"}):
            one_line(post(http_service, song, headers, force="true"), 403, "CrossOrigin")
            one_line(http_service.client.delete(f"{task}?purge=true", headers=headers), 403,
                     "CrossOrigin")
            one_line(http_service.client.post(f"{task}/retry", headers=headers), 403,
                     "CrossOrigin")
    assert held(http_service) == before
    own = f"http://127.0.0.1:{http_service.config.http.port}"  # the page's own fetch
    page = post(http_service, song, {"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert page.status_code == 202, page.text
    assert post(http_service, song, project="curl").status_code == 202  # no Origin: curl, node


def test_a_read_from_another_site_is_refused_but_a_link_to_the_page_opens_it(http_service):
    for headers in ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"},
                    {"Origin": "http://evil.example"},
                    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                     "Sec-Fetch-Dest": "iframe"}):
        one_line(http_service.client.get("/v1/tasks", headers=headers), 403, "CrossOrigin")
        one_line(http_service.client.get("/", headers=headers), 403, "CrossOrigin")
    link = http_service.client.get("/", headers={"Sec-Fetch-Site": "cross-site",
                                                 "Sec-Fetch-Mode": "navigate",
                                                 "Sec-Fetch-Dest": "document"})
    assert link.status_code == 200 and link.headers["content-type"].startswith("text/html")


def test_a_task_named_in_hebrew_downloads_as_a_zip_and_stems(http_service, named_in_hebrew):
    name = named_in_hebrew["file_id"]
    assert name == "שיר"
    answer = http_service.client.get(f"{named_in_hebrew['links']['self']}/stems.zip")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-disposition"] == (
        f"attachment; filename=\"default-___.zip\"; filename*=UTF-8''"
        f"{quote(f'default-{name}.zip', safe='')}")
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert f"{name}/vocals.wav" in archive.namelist()
    stem = http_service.client.get(named_in_hebrew["outputs"]["vocals"])
    assert stem.status_code == 200
    assert stem.headers["content-disposition"] == (
        "attachment; filename=\"vocals.wav\"; filename*=UTF-8''vocals.wav")


def test_a_stem_that_changed_under_its_download_never_comes_under_the_old_etag(http_service,
                                                                              tmp_path):
    song = write_audio(tmp_path / "long.wav", seconds=7.0)
    created = post(http_service, song, project="changing", wav_depth="float32")
    done = http_service.wait(created.json()["task_id"])
    url = done["outputs"]["vocals"]
    whole = http_service.client.get(url)
    assert f'"{hashlib.sha256(whole.content).hexdigest()}"' == whole.headers["etag"]
    assert len(whole.content) > 2**21  # more than two of the replica's chunks
    [path] = (http_service.state / "results").rglob("changing/long/vocals.wav")
    with open(path, "r+b") as stem:  # another version's bytes, written under the manifest
        stem.seek(len(whole.content) // 2)
        stem.write(b"\x01" * 4096)
    try:
        with http_service.client.stream("GET", url) as answer:
            body = b"".join(answer.iter_bytes())
    except httpx.TransportError:
        return  # cut short: the client knows the download broke
    assert f'"{hashlib.sha256(body).hexdigest()}"' == answer.headers["etag"], "a mixed body"


def test_two_stems_the_model_lacks_is_refused_at_the_door(http_service, bucket, tmp_path):
    wait_for(lambda: http_service.client.get("/v1/models").json()["models"][0]["stems"])
    song = write_audio(tmp_path / "song.wav", seconds=0.5)
    fs, root = bucket
    fs.put_file(str(song), f"{root}/song.wav")
    before = held(http_service)
    message = one_line(post(http_service, song, project="two", two_stems="piano"), 422,
                       "InvalidInput")
    assert "'piano'" in message and STEMS in message
    named = http_service.client.post("/v1/tasks", json={"input": f"{root}/song.wav",
                                                        "project": "two", "two_stems": "piano"})
    assert one_line(named, 422, "InvalidInput") == message
    with pytest.raises(InvalidInput, match=f"piano.*{STEMS}"):  # what `submit` runs
        http_service.manager.add_task(song, output_dir=tmp_path / "out", two_stems="piano")
    assert held(http_service) == before
