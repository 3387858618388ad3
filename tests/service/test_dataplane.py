"""Stems kept in a store over real HTTP: with `storage.kept_uri` (here a bucket on the session's
S3 server) the worker writes an uploaded task's stems there, and every route and the purge read
or delete them there (the node-local variant is test_http.py's service; the sweep of a store's
stems is tests/unit/test_retention.py's); and the pinned Ray tasks that reach another node's
files."""
from __future__ import annotations

import asyncio
import io
import json
import uuid
import zipfile

import pytest
import ray

from raydemucs.storage import nodes

from support import HttpService, write_audio

STEMS = ["bass", "drums", "other", "vocals"]


def upload(service, path, **fields):
    answer = service.client.post("/v1/tasks", files={"file": (path.name, path.read_bytes())},
                                 data={key: str(value) for key, value in fields.items()})
    assert answer.status_code == 202, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def in_store(serve_port, s3_endpoint, tmp_path_factory):
    """A service that keeps its stems in a bucket: `(service, s3fs filesystem, kept root)`."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, use_listings_cache=False)
    name = f"kept{uuid.uuid4().hex[:10]}"
    fs.mkdir(name)
    service = HttpService(tmp_path_factory.mktemp("store"), serve_port,
                          workers={"max_workers": 1, "prefetch": 0},
                          storage={"endpoint_url": s3_endpoint, "kept_uri": f"s3://{name}/kept"})
    yield service, fs, f"{name}/kept"
    service.close()


def test_stems_kept_in_a_store_download_zip_peak_and_purge(in_store, tmp_path):
    """Written by the worker straight to the bucket: each stem downloads byte-identical to its
    object (whole and in a range), the zip holds them, peaks are read there, a purge deletes
    them; nothing lands in the state directory's results."""
    service, fs, root = in_store
    record = upload(service, write_audio(tmp_path / "Store Song.wav", seconds=2.0),
                    project="store")
    done = service.wait(record["task_id"])
    assert done["state"] == "succeeded", done["error"]
    folder = f"{root}/store/Store Song"
    manifest = json.loads(fs.cat_file(f"{folder}/manifest.json"))
    assert sorted(manifest["stems"]) == STEMS
    for stem, url in done["outputs"].items():
        stored = fs.cat_file(f"{folder}/{stem}.wav")
        whole = service.client.get(url, follow_redirects=True)
        assert whole.status_code == 200 and whole.content == stored, stem
        part = service.client.get(url, headers={"Range": "bytes=100-199"}, follow_redirects=True)
        assert part.status_code == 206 and part.content == stored[100:200]
    archive = zipfile.ZipFile(io.BytesIO(service.client.get(done["links"]["zip"]).content))
    assert archive.read("Store Song/drums.wav") == fs.cat_file(f"{folder}/drums.wav")
    peaks = service.client.get(f"/v1/tasks/{record['task_id']}/stems/vocals/peaks",
                               params={"points": 100})
    assert peaks.status_code == 200, peaks.text
    assert peaks.json()["points"] == 100 and len(peaks.json()["max"]) == 100
    assert not (service.state / "results").exists()

    purged = service.client.delete(f"/v1/tasks/{record['task_id']}", params={"purge": "true"})
    assert purged.status_code == 200, purged.text
    assert not fs.exists(f"{folder}/manifest.json") and not fs.exists(f"{folder}/drums.wav")
    gone = service.client.get(done["outputs"]["drums"])
    assert gone.status_code == 410, gone.text


def test_files_on_another_node_are_read_written_and_removed_by_a_pinned_task(ray_cluster,
                                                                            tmp_path,
                                                                            monkeypatch):
    """The path a file on another node takes (`storage.nodes`: a Ray task pinned to that node),
    taken here on this node by telling this process it is elsewhere; sizes are counted there."""
    here = ray.get_runtime_context().get_node_id()
    monkeypatch.setattr(nodes, "is_here", lambda node: False)
    path, data = tmp_path / "sent" / "file.bin", bytes(range(256)) * 9000
    path.parent.mkdir()

    async def write_and_read():
        for offset in range(0, len(data), 1 << 20):
            await nodes.append(str(path), here, data[offset:offset + (1 << 20)])
        return b"".join([chunk async for chunk in nodes.chunks(str(path), here, 10, len(data))])
    assert asyncio.run(write_and_read()) == data[10:]
    nodes.copy(str(path), here, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data == nodes.content(str(path), here)
    assert nodes.size(str(path.parent), here) == len(data) == nodes.size(str(path), here)
    assert nodes.size(str(tmp_path / "none"), here) is None
    nodes.remove(str(path.parent), here)
    assert not path.parent.exists()
