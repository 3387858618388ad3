"""Inputs and outputs off the worker's disk: s3:// on a local S3 server (moto), and uploaded bytes."""
from __future__ import annotations

import json

import pytest
import soundfile as sf

from raydemucs.core.config import SeparationConfig, StorageConfig, load_config
from raydemucs.core.errors import InvalidInput, InvalidName, OutputWriteFailed, StorageUnavailable
from raydemucs.core.task import TaskSpec, new_task_id
from raydemucs.storage import uris
from raydemucs.storage.folders import (
    LocalFolder,
    RemoteFolder,
    copy_folder,
    copy_outputs,
    file_sha256,
    task_folder,
)
from raydemucs.storage.uploads import UploadSource, UploadStore
from raydemucs.worker.actor import SeparatorWorker
from raydemucs.worker.files import attempt_places

from support import store_upload

STEMS = ["bass", "drums", "other", "vocals"]


def s3_worker(endpoint):
    config = load_config("test", overrides={"storage": {"endpoint_url": endpoint}}, environ={})
    return SeparatorWorker("worker-s3", config.to_dict())


def spec(input_path, output_dir, file_id="song", **fields):
    return TaskSpec(task_id=new_task_id(), project="proj", file_id=file_id, input_path=str(input_path),
                    output_dir=str(output_dir), options=SeparationConfig(model="demucs_unittest", shifts=0),
                    **fields)


def test_uris_and_local_paths_are_told_apart():
    assert uris.is_uri("s3://bucket/a.wav") and uris.is_uri("gs://b/k") and uris.is_uri("memory://x")
    assert not uris.is_uri("/data/a.wav") and not uris.is_uri("song.mp3")
    assert not uris.is_uri("file:///data/a.wav")
    assert str(uris.local_path("file:///data/a.wav")) == "/data/a.wav"


@pytest.mark.parametrize("project, file_id", [("..", "x"), ("p", "a/b"), ("p", ".hidden")])
def test_a_remote_output_folder_cannot_climb_out(project, file_id):
    with pytest.raises(InvalidName):
        task_folder("s3://bucket/stems", project, file_id)


def test_an_unknown_protocol_is_one_clear_error():
    with pytest.raises(InvalidInput, match="unknown storage protocol 'nosuch'"):
        uris.input_size("nosuch://bucket/a.wav", StorageConfig())


def test_s3_in_and_out_through_a_worker(audio, bucket, s3_endpoint, tmp_path):
    fs, root = bucket
    fs.put_file(str(audio("song.mp3", seconds=2.0)), f"{root}/in/song.mp3")
    worker = s3_worker(s3_endpoint)
    task = spec(f"{root}/in/song.mp3", f"{root}/stems")
    result = worker.separate(task.to_dict(), 1)
    assert result["ok"], result
    folder = f"{root}/stems/proj/song"
    assert result["outputs"] == {stem: f"{folder}/{stem}.wav" for stem in STEMS}
    manifest = json.loads(fs.cat_file(f"{folder}/manifest.json"))
    assert manifest["input"]["path"] == f"{root}/in/song.mp3" and manifest["task_id"] == task.task_id
    remote = RemoteFolder(folder, StorageConfig(endpoint_url=s3_endpoint))
    assert remote.complete(task.task_id) and remote.finished(task.task_id) == result["outputs"]
    fetched = copy_folder(remote, LocalFolder(tmp_path / "here" / "song"))
    for stem, path in fetched.items():
        assert file_sha256(path) == manifest["stems"][stem]["sha256"]
        assert sf.info(path).duration == pytest.approx(2.0, abs=0.05)
    again = worker.separate(spec(f"{root}/in/song.mp3", f"{root}/stems").to_dict(), 1)
    assert again["error"]["type"] == "InvalidInput" and "--force" in again["error"]["message"]


def test_remote_failures_are_typed(audio, bucket, s3_endpoint, tmp_path):
    fs, root = bucket
    worker = s3_worker(s3_endpoint)
    missing = worker.separate(spec(f"{root}/none.wav", tmp_path / "out").to_dict(), 1)
    assert missing["error"]["type"] == "InvalidInput" and "does not exist" in missing["error"]["message"]
    fs.put_file(str(audio("song.wav", seconds=1.0)), f"{root}/song.wav")
    down = s3_worker("http://127.0.0.1:9")  # nothing listens there
    unreachable = down.separate(spec(f"{root}/song.wav", tmp_path / "out").to_dict(), 1)
    assert unreachable["error"]["type"] == "StorageUnavailable"
    assert StorageUnavailable("x").retryable
    assert not (tmp_path / "out").exists()


def test_a_remote_input_over_the_size_limit_is_refused_before_download(bucket, s3_endpoint, tmp_path):
    fs, root = bucket
    fs.pipe_file(f"{root}/big.wav", b"\0" * (2 * 2**20))
    config = StorageConfig(endpoint_url=s3_endpoint)
    with pytest.raises(InvalidInput, match="over the limit"):
        with attempt_places(spec(f"{root}/big.wav", tmp_path / "out"), config, max_bytes=2**20):
            pass


@pytest.mark.parametrize("in_store", [False, True], ids=["node", "store"])
def test_a_kept_tasks_stems_are_written_by_the_worker_and_its_result_carries_no_bytes(
        in_store, audio, tmp_path, request):
    """An uploaded (kept) task: the worker writes its stems where the service keeps them (the
    results folder here, or the `storage.kept_uri` store) and sends back their locations only."""
    import pickle

    source = audio("song.flac", seconds=1.5)
    endpoint, kept_uri, uploads = None, None, UploadStore(tmp_path / "state")
    if in_store:
        fs, root = request.getfixturevalue("bucket")
        endpoint, kept_uri = request.getfixturevalue("s3_endpoint"), f"{root}/kept"
        uploads = UploadStore(tmp_path / "state", storage=StorageConfig(endpoint_url=endpoint,
                                                                        kept_uri=kept_uri))
    worker = s3_worker(endpoint)
    kept = store_upload(uploads, source)
    task = uploads.accept(spec(source.name, "uploaded", uploaded=True,
                               input_sha256=kept["sha256"]))
    assert task.output_dir == (f"{kept_uri}" if in_store else str(tmp_path / "state" / "results"))
    result = worker.separate(task.to_dict(), 1,
                             upload=UploadSource.of(tmp_path / "state", kept["sha256"]))
    assert result["ok"], result
    assert set(result) >= {"outputs", "duration_s"} and "files" not in result
    assert len(pickle.dumps(result)) < 16_384  # metadata: no stem's bytes
    folder = (RemoteFolder(task.output_location, StorageConfig(endpoint_url=endpoint)) if in_store
              else LocalFolder(task.output_location))
    assert folder.complete(task.task_id)
    assert result["outputs"] == {stem: f"{task.output_location}/{stem}.wav" for stem in STEMS}
    with pytest.raises(InvalidInput, match="not stored here"):
        uploads.accept(spec(source.name, "uploaded", uploaded=True, input_sha256="0" * 64))


def test_a_copied_output_is_whole_or_absent(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "vocals.wav").write_bytes(b"voice")
    manifest = {"task_id": "t", "stems": {"vocals": {"file": "vocals.wav", "bytes": 5,
                                                     "sha256": file_sha256(source / "vocals.wav")}}}
    copied = copy_outputs(LocalFolder(tmp_path / "a" / "song"), manifest,
                          lambda name, path: path.write_bytes((source / name).read_bytes()))
    assert copied == {"vocals": str(tmp_path / "a" / "song" / "vocals.wav")}
    with pytest.raises(OutputWriteFailed, match="corrupt"):
        copy_outputs(LocalFolder(tmp_path / "b" / "song"), manifest, lambda name, path: path.write_bytes(b"noise"))
    assert not (tmp_path / "b" / "song").exists()
    escaping = {"stems": {"vocals": {"file": "../../evil.wav", "bytes": 1, "sha256": "0"}}}
    with pytest.raises(InvalidInput):
        copy_outputs(LocalFolder(tmp_path / "c" / "song"), escaping, lambda name, path: path.write_bytes(b"x"))
    assert not (tmp_path / "evil.wav").exists() and not (tmp_path / "c").exists()
