"""A client with no shared storage: s3:// through the service, and `submit --upload` / `fetch`."""
from __future__ import annotations

import json
import uuid

import pytest

from raydemucs.core.errors import Gone, InvalidInput, OutputNotWritable
from raydemucs.storage.folders import file_sha256

from support import peak_rss, run_cli, write_audio

STEMS = {"drums", "bass", "other", "vocals"}


def test_s3_input_and_output_through_the_service(make_service, bucket, s3_endpoint, audio, tmp_path):
    fs, root = bucket
    fs.put_file(str(audio("song.wav", seconds=1.5)), f"{root}/in/song.wav")
    manager = make_service(storage={"endpoint_url": s3_endpoint})
    task_id = manager.add_task(f"{root}/in/song.wav", output_dir=f"{root}/stems", project_name="p")
    record = manager.wait(task_id, timeout=120)
    assert record["state"] == "succeeded", record["error"]
    assert record["outputs"] == {s: f"{root}/stems/p/song/{s}.wav" for s in STEMS}
    fetched = manager.fetch(task_id, tmp_path / "here")
    manifest = json.loads((tmp_path / "here" / "p" / "song" / "manifest.json").read_text())
    assert {s: file_sha256(p) for s, p in fetched.items()} == {
        s: e["sha256"] for s, e in manifest["stems"].items()}
    with pytest.raises(InvalidInput, match="--force"):
        manager.fetch(task_id, tmp_path / "here")


def test_bad_remote_locations_are_refused_at_submit(make_service, bucket, s3_endpoint, audio):
    fs, root = bucket
    manager = make_service(storage={"endpoint_url": s3_endpoint})
    with pytest.raises(InvalidInput, match="does not exist"):
        manager.prepare_task(f"{root}/missing.wav")
    with pytest.raises(OutputNotWritable):
        manager.prepare_task(audio("song.wav", seconds=1.0), output_dir="s3://no-such-bucket-x/out")
    with pytest.raises(InvalidInput, match="already in storage"):
        manager.prepare_task(f"{root}/missing.wav", upload=True)
    assert manager.get_status()["queue"]["queued"] == 0


def test_upload_wait_and_fetch_round_trip_on_the_cli(ray_cluster, audio, tmp_path):
    env = {"RAY_ADDRESS": ray_cluster, "RAYDEMUCS_SERVICE_NAME": f"up{uuid.uuid4().hex[:6]}",
           "RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path / "state"),
           "RAYDEMUCS_WORKERS_MEMORY_MB": "0", "LOG_LEVEL": "warning"}
    started = run_cli("start", "--profile", "test", env=env)
    assert started.returncode == 0, started.stderr
    try:
        song = audio("song.mp3", seconds=1.5)
        waited = run_cli("submit", song, "--upload", "--wait", "--json", "-o", tmp_path / "mine",
                         env=env)
        assert waited.returncode == 0, waited.stderr
        record = json.loads(waited.stdout.strip().splitlines()[-1])
        mine = tmp_path / "mine" / "default" / "song"
        assert record["outputs"] == {s: str(mine / f"{s}.wav") for s in STEMS}
        kept = tmp_path / "state" / "results" / "default" / "song"
        assert sorted(p.name for p in kept.iterdir()) == sorted(
            [f"{s}.wav" for s in STEMS] + ["manifest.json"])
        fetched = run_cli("fetch", record["task_id"], "-o", tmp_path / "again", env=env)
        assert fetched.returncode == 0, fetched.stderr
        for stem in STEMS:
            assert (file_sha256(tmp_path / "again" / "default" / "song" / f"{stem}.wav")
                    == file_sha256(mine / f"{stem}.wav"))
        refused = run_cli("fetch", record["task_id"], "-o", tmp_path / "again", env=env)
        assert refused.returncode == 2 and "--force" in refused.stderr
        unknown = run_cli("fetch", "nosuchtask", "-o", tmp_path / "x", env=env)
        assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    finally:
        run_cli("stop", "--now", env=env)


def test_an_upload_goes_around_the_scheduler(make_service, tmp_path):
    """`submit --upload` (`add_task(upload=True)`) appends the file a chunk at a time to the one
    the scheduler opens on its node, as the HTTP API's uploads go: the scheduler's peak RSS
    grows by far less than the file's bytes (before, they were an argument of its `submit`)."""
    import ray

    song = write_audio(tmp_path / "wide.wav", seconds=20.0, samplerate=192000, channels=8)
    manager = make_service(workers={"max_workers": 1})
    pid = ray.get(manager.scheduler().ping.remote())["pid"]
    before = peak_rss(pid)
    task_id = manager.add_task(song, upload=True)
    grown = peak_rss(pid) - before
    manager.cancel(task_id)
    size = song.stat().st_size
    assert size > 55 * 2**20
    assert grown < size / 3, f"the scheduler's peak RSS grew {grown / 2**20:.0f} MB"
    kept = tmp_path / "state" / "uploads" / file_sha256(song)
    assert kept.stat().st_size == size
    assert manager.get_status(task_id)["spec"]["input_sha256"] == kept.name


def test_retrying_an_upload_whose_bytes_are_gone_fails_cleanly(make_service, audio, tmp_path,
                                                               tiny_repo):
    import shutil

    manager = make_service()  # a local model's stems are known once loaded: the worker judges
    task_id = manager.add_task(audio("song.wav", seconds=1.0), upload=True, two_stems="piano",
                               model="tiny", repo=str(tiny_repo))
    assert manager.wait_all([task_id], timeout=60)[0]["state"] == "failed"  # no such stem
    failed = manager.get_status(task_id)
    shutil.rmtree(tmp_path / "state" / "uploads")
    with pytest.raises(Gone, match="submit the file again"):  # refused before it is queued
        manager.retry(task_id)
    record = manager.get_status(task_id)
    assert record["state"] == "failed" and record["attempts"] == failed["attempts"]
    assert manager.get_status()["accepting"]


def write_big_wav(path, megabytes: float):
    """A 16-bit stereo WAV of about `megabytes` MB, written a minute at a time."""
    import soundfile as sf

    from support import SAMPLERATE, make_signal

    minute = make_signal(60.0)
    frames = int(megabytes * 2**20 / 4)
    with sf.SoundFile(path, "w", SAMPLERATE, 2, "PCM_16") as handle:
        for start in range(0, frames, len(minute)):
            handle.write(minute[:frames - start])
    return path


def test_status_answers_while_a_100_mb_upload_is_being_stored(make_service, ray_cluster, tmp_path,
                                                              tiny_repo):
    """The upload comes from another process (the CLI); here, `status` is asked again and again
    and counted when it was both asked and answered while the upload's partial file was on the
    service's disk: a scheduler that stored the bytes on its event loop answers none then (its
    bytes now go around the scheduler, which only checks and keeps the file at the end)."""
    import os
    import subprocess
    import sys
    import time

    manager = make_service(workers={"max_workers": 1}, input={"max_file_mb": 101.0})
    big = write_big_wav(tmp_path / "big.wav", 99.0)
    uploads = tmp_path / "state" / "uploads"
    env = {"RAYDEMUCS_SERVICE_NAME": manager.config.service.name,
           "RAYDEMUCS_SERVICE_STATE_DIR": manager.config.service.state_dir,
           "RAYDEMUCS_INPUT_MAX_FILE_MB": "101", "RAY_ADDRESS": ray_cluster}
    upload = subprocess.Popen([sys.executable, "-m", "raydemucs", "submit", str(big), "--upload",
                               "--two-stems", "piano", "-n", "tiny", "--repo", str(tiny_repo),
                               "--json"],  # fails at once in the worker
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)

    def storing() -> bool:  # the file the upload is appended to, until the scheduler keeps it
        incoming = uploads / ".incoming"
        return incoming.is_dir() and any(p.is_file() for p in incoming.rglob("*"))

    answered_while_storing, slowest_s = 0, 0.0
    while upload.poll() is None:
        before, started = storing(), time.monotonic()
        manager.get_status()
        slowest_s = max(slowest_s, time.monotonic() - started)
        answered_while_storing += before and storing()
    out, err = upload.communicate()
    assert upload.returncode == 0, err
    task_id = json.loads(out.splitlines()[-1])["task_id"]
    stored = uploads / manager.get_status(task_id)["spec"]["input_sha256"]
    assert stored.stat().st_size > 98 * 2**20 and not storing()
    assert answered_while_storing >= 3, (answered_while_storing, slowest_s)

