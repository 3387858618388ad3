"""Decompression bombs on a real service: a file that declares a rate or channels past the caps,
or decodes to more than its header says, fails its task at once with one line (no retry), and
the worker that met it stays and goes on with its other task."""
from __future__ import annotations

import pytest

from raydemucs.core.errors import InvalidInput

from support import flac_bomb, understated_mp3, wait_for, write_audio

LIMIT_S = 4.0


def assert_one_line(message: str, fragment: str) -> None:
    assert fragment in message and "\n" not in message, message


def test_bombs_fail_at_once_and_the_worker_goes_on(make_service, tmp_path):
    manager = make_service(workers={"max_workers": 1}, tasks={"max_retries": 2},
                           input={"max_duration_s": LIMIT_S})
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
    *bombs, done = manager.wait_all([*expected, good], timeout=180)
    for record in bombs:
        assert record["state"] == "failed" and record["attempts"] == 1, record
        assert record["error"]["type"] == "InvalidInput"
        assert_one_line(record["error"]["message"], expected[record["task_id"]])
    assert done["state"] == "succeeded", done
    [after] = manager.get_status()["workers"]
    assert after["pid"] == worker["pid"] and after["restarts"] == 0
