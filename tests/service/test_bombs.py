"""Decompression bombs on a real service, through the client and over HTTP: a file that declares
a rate past the caps is refused at the door (one line, nothing queued or stored), or, when it gets
to a worker anyway, fails its task at once with one line; so does a file that decodes to more
than its header says. No retry, and the worker that met it stays and goes on with its other task."""
from __future__ import annotations

import json

import pytest

from raydemucs.core.errors import InvalidInput

from support import HttpService, flac_bomb, understated_mp3, wait_for, write_audio

LIMIT_S = 4.0


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    """One worker, two retries (a bomb must use none), a short duration limit."""
    service = HttpService(tmp_path_factory.mktemp("bombs"), serve_port,
                          workers={"max_workers": 1}, tasks={"max_retries": 2},
                          input={"max_duration_s": LIMIT_S})
    yield service
    service.close()


def assert_one_line(message: str, fragment: str) -> None:
    assert fragment in message and "\n" not in message, message


def test_bombs_fail_at_once_and_the_worker_goes_on(service, tmp_path):
    manager = service.manager
    [worker] = wait_for(lambda: [w for w in manager.get_status()["workers"]
                                 if w["state"] in ("idle", "busy")])
    out = tmp_path / "out"
    with pytest.raises(InvalidInput) as refused:  # the client reads the header
        manager.add_task(flac_bomb(tmp_path / "bomb.flac", 1), output_dir=out)
    assert_one_line(str(refused.value), "655350 Hz, over the 192000 Hz limit (input.max_samplerate)")
    mp3 = understated_mp3(tmp_path / "long.mp3", seconds=5 * LIMIT_S)  # its header: 0.5 s
    expected = {manager.add_task(mp3, file_id="whole", output_dir=out): "input.max_duration_s",
                manager.add_task(mp3, file_id="streamed", output_dir=out, stream_over_s=0):
                "input.max_duration_s"}
    swapped = write_audio(tmp_path / "swapped.flac", seconds=1.0)
    spec = manager.prepare_task(swapped, output_dir=out)
    flac_bomb(swapped, 1)  # behind the client's back: the worker reads the header again
    expected[manager.submit([spec])[0]["task_id"]] = "input.max_samplerate"
    good = manager.add_task(write_audio(tmp_path / "good.wav", seconds=1.0), output_dir=out)
    longer = manager.add_task(understated_mp3(tmp_path / "longer.mp3", seconds=LIMIT_S - 1),
                              output_dir=out, stream_over_s=1)  # in memory, by its header
    *bombs, done, streamed = manager.wait_all([*expected, good, longer], timeout=180)
    for record in bombs:
        assert record["state"] == "failed" and record["attempts"] == 1, record
        assert record["error"]["type"] == "InvalidInput"
        assert_one_line(record["error"]["message"], expected[record["task_id"]])
    assert done["state"] == "succeeded", done
    assert streamed["state"] == "succeeded", streamed  # past 1 s as it decoded: streamed instead
    manifest = json.loads((out / "default" / "longer" / "manifest.json").read_text())
    assert manifest["streamed"] and manifest["input"]["duration_s"] < 1
    [after] = manager.get_status()["workers"]
    assert after["pid"] == worker["pid"] and after["restarts"] == 0


def test_bombs_over_http_are_refused_at_the_door_or_fail_at_once(service, tmp_path):
    before = service.stored()
    bomb = flac_bomb(tmp_path / "bomb.flac", 1)
    refused = service.client.post("/v1/tasks", files={"file": (bomb.name, bomb.read_bytes())})
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "InvalidInput"
    assert_one_line(refused.json()["error"]["message"],
                    "input bomb.flac is sampled at 655350 Hz, over the 192000 Hz limit "
                    "(input.max_samplerate)")
    assert service.stored() == before
    mp3 = understated_mp3(tmp_path / "long.mp3", seconds=5 * LIMIT_S)
    created = service.client.post("/v1/tasks", files={"file": (mp3.name, mp3.read_bytes())})
    assert created.status_code == 202, created.text
    done = service.wait(created.json()["task_id"])
    assert done["state"] == "failed" and done["attempts"] == 1, done
    assert done["error"]["type"] == "InvalidInput"
    assert_one_line(done["error"]["message"], "input long.mp3 decodes to more than the 4 s limit "
                                              "(input.max_duration_s)")
    assert "/" not in done["error"]["message"]  # not the worker's copy of the upload
