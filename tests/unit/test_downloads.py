"""Catalogue models downloaded on first use, from a real HTTP server on loopback: verified by
sha256 before anything reads them, written atomically, a mismatched or truncated file deleted
with one line, an entry without a sha256 refused at submit."""
from __future__ import annotations

import hashlib
import http.server
import threading

import pytest
import yaml

from raydemucs.core.config import ModelsConfig
from raydemucs.core.errors import ModelNotFound
from raydemucs.models.catalogue import (
    check_model_name,
    describe,
    model_directory,
    model_source,
)
from raydemucs.models.downloads import fetch_model

CKPT = b"PK\x03\x04 a tiny checkpoint " * 1000
YAML = b"model:\n  num_bands: 4\naudio:\n  sample_rate: 44100\n"


class Files(http.server.ThreadingHTTPServer):
    """Serves `files` ({path: bytes}); `/short/...` declares the whole length, sends half."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.hits = files, []
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits.append(self.path)
        body = self.server.files.get(self.path.removeprefix("/short"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if self.path.startswith("/short") else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    files = Files({"/kim.ckpt": CKPT, "/kim.yaml": YAML})
    yield files
    files.shutdown()
    files.server_close()


def models_config(tmp_path, server, ckpt_path="/kim.ckpt", **ckpt) -> ModelsConfig:
    """A catalogue file with model `kim` served by `server`, and a cache under `tmp_path`."""
    sha = hashlib.sha256
    entry = {"architecture": "mel_band_roformer", "licence": "MIT", "stems": ["vocals", "other"],
             "files": {"ckpt": {"url": server.url(ckpt_path), "size": len(CKPT),
                                "sha256": sha(CKPT).hexdigest(), **ckpt},
                       "yaml": {"url": server.url("/kim.yaml"), "sha256": sha(YAML).hexdigest()}}}
    (tmp_path / "catalogue.yaml").write_text(yaml.safe_dump({"models": {"kim": entry}}))
    return ModelsConfig(catalogue=str(tmp_path / "catalogue.yaml"),
                        cache_dir=str(tmp_path / "cache"), download_timeout_s=10)


def test_a_catalogue_model_is_downloaded_once_and_verified(tmp_path, server):
    models = models_config(tmp_path, server)
    assert "downloaded on first use from http://127.0.0.1" in model_source("kim", None, models=models)
    folder = tmp_path / "cache" / "kim"
    assert model_directory("kim", None, models) == str(folder)  # where the worker loads it from
    assert (folder / "kim.ckpt").read_bytes() == CKPT and (folder / "kim.yaml").read_bytes() == YAML
    assert sorted(p.name for p in folder.iterdir()) == ["kim.ckpt", "kim.yaml"]  # no partial file
    fetch_model(describe("kim", None, models.catalogue), models)
    assert sorted(server.hits) == ["/kim.ckpt", "/kim.yaml"]  # the second use downloads nothing
    (folder / "kim.ckpt").write_bytes(CKPT[:-1] + b"!")  # changed on disk since
    with pytest.raises(ModelNotFound, match="^the downloaded kim.ckpt of model 'kim' does not "
                       "match the catalogue's sha256; delete it from models.cache_dir"):
        check_model_name("kim", None, models)


@pytest.mark.parametrize("change, refusal", [
    ({"sha256": "0" * 64}, rf"\({len(CKPT)} bytes, sha256 [0-9a-f]{{12}}\.\.\.; expected "
     rf"{len(CKPT)}, 000000000000\.\.\.\): the file was deleted"),
    ({"ckpt_path": "/short/kim.ckpt"}, rf"\({len(CKPT) // 2} bytes, .*: the file was deleted"),
    ({"ckpt_path": "/nowhere.ckpt"}, "could not be downloaded from .*: HTTP 404"),
    ({"size": len(CKPT) - 1}, "does not match the catalogue"),
])
def test_a_mismatched_or_truncated_download_is_deleted_with_one_line(tmp_path, server, change,
                                                                     refusal):
    models = models_config(tmp_path, server, **change)
    with pytest.raises(ModelNotFound, match=refusal) as refused:
        fetch_model(describe("kim", None, models.catalogue), models)
    assert str(refused.value).startswith("model 'kim': its ckpt file ")
    assert "\n" not in str(refused.value)
    assert sorted(p.name for p in (tmp_path / "cache" / "kim").iterdir()) == ["kim.yaml"]


def test_an_entry_without_a_sha256_is_refused_at_submit(tmp_path, server):
    models = models_config(tmp_path, server, sha256=None)
    with pytest.raises(ModelNotFound, match="^model 'kim': the catalogue has no sha256 for its "
                       "ckpt file, so it is not downloaded; pin one in the models.catalogue file"):
        check_model_name("kim", None, models)
    assert server.hits == []
