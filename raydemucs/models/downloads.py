"""Catalogue models downloaded on first use: each file fetched from where the catalogue says it
is published into `models.cache_dir/NAME/` (a model directory in the community layout), its
sha256 checked against the catalogue before anything reads it (a checkpoint is a pickle), and
only then renamed into place. A file that does not match is deleted."""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from ..core.config import ModelsConfig
from ..core.errors import ModelNotFound
from ..core.statedir import sync_path
from .entries import FILE_KINDS, ModelFile, ModelInfo, file_sha256

CHUNK_BYTES = 1 << 20
SCHEMES = ("https://", "http://")


def model_dir(info: ModelInfo, models: ModelsConfig) -> Path:
    """Where this node keeps the downloaded files of catalogue model `info`."""
    return Path(models.cache_dir).expanduser() / info.name


def check_download(info: ModelInfo, models: ModelsConfig) -> None:
    """Refuse, before queueing, a downloadable model that cannot be verified: a file without a
    sha256 in the catalogue, or a copy already downloaded here that no longer matches it."""
    for kind in FILE_KINDS:
        spec = info.files[kind]
        if not spec.sha256:
            raise ModelNotFound(
                f"model {info.name!r}: the catalogue has no sha256 for its {kind} file, so it is "
                "not downloaded; pin one in the models.catalogue file, or put "
                f"{info.name}.ckpt and {info.name}.yaml in a --repo directory")
        kept = model_dir(info, models) / f"{info.name}.{kind}"
        if kept.is_file() and file_sha256(kept) != spec.sha256:
            raise ModelNotFound(f"the downloaded {kept.name} of model {info.name!r} does not match "
                                "the catalogue's sha256; delete it from models.cache_dir to "
                                "download it again")


def fetch_model(info: ModelInfo, models: ModelsConfig) -> Path:
    """The directory holding `NAME.ckpt` and `NAME.yaml` of catalogue model `info`, each file
    downloaded and verified first if it is not here whole."""
    check_download(info, models)
    folder = model_dir(info, models)
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("yaml", "ckpt"):
        path = folder / f"{info.name}.{kind}"
        if not path.is_file():
            download(info.name, kind, info.files[kind], path, models.download_timeout_s)
    return folder


def download(name: str, kind: str, spec: ModelFile, path: Path, timeout_s: float) -> None:
    """`spec.url` written to `path` if and only if its bytes have `spec.sha256` (and `spec.size`);
    a partial or mismatched file is deleted, never renamed into place."""
    if not spec.url.startswith(SCHEMES):
        raise ModelNotFound(f"model {name!r}: its {kind} URL must be https:// or http://")
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        digest, size = _fetch(spec, partial, timeout_s)
        if digest != spec.sha256 or (spec.size is not None and size != spec.size):
            raise ModelNotFound(
                f"model {name!r}: its {kind} file downloaded from {spec.url} does not match the "
                f"catalogue ({size} bytes, sha256 {digest[:12]}...; expected "
                f"{spec.size if spec.size is not None else 'any size'}, {spec.sha256[:12]}...): "
                "the file was deleted")
        os.replace(partial, path)
        sync_path(path.parent)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) else (
            getattr(exc, "reason", None) or type(exc).__name__)
        raise ModelNotFound(f"model {name!r}: its {kind} file could not be downloaded from "
                            f"{spec.url}: {reason}; the partial file was deleted") from None
    finally:
        partial.unlink(missing_ok=True)


def _fetch(spec: ModelFile, partial: Path, timeout_s: float) -> tuple[str, int]:
    """Stream `spec.url` into `partial` (synced); its sha256 and size. Reading stops one byte
    past `spec.size`: a file that is too long is not read to its end."""
    digest, size = hashlib.sha256(), 0
    limit = None if spec.size is None else spec.size + 1
    with urllib.request.urlopen(spec.url, timeout=timeout_s) as response, \
            open(partial, "wb") as out:
        while limit is None or size < limit:
            block = response.read(CHUNK_BYTES if limit is None else min(CHUNK_BYTES, limit - size))
            if not block:
                break
            digest.update(block)
            out.write(block)
            size += len(block)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size
