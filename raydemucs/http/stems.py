"""Stem files for HTTP answers, read wherever they are: this node, another node, or a bucket.

A local output folder lives on the node whose worker wrote it (the stems the service keeps too,
unless `storage.kept_uri` names a store); a replica on another node reads it through a small Ray
task pinned to that node (`storage.nodes`), chunk by chunk, so a stem never sits whole in a
replica's memory. A bucket's stems are
answered with a redirect to a presigned URL where the storage can sign one.

A download reads its file through one open handle, and a whole one is sent only if it hashes to
the ETag (the manifest's sha256): a file replaced under it (a forced rerun, a purge, a sweep)
ends the answer short, never mixes two versions under one ETag.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import re
import zipfile
from typing import AsyncIterator
from urllib.parse import quote

from ..core.config import StorageConfig
from ..storage import nodes
from ..storage.folders import MANIFEST, RemoteFolder
from .errors import RangeNotSatisfiable
from .peaks import peaks, peaks_on_node

logger = logging.getLogger(__name__)
SIGNED_URL_S = 3600
RANGE = re.compile(r"bytes=(\d*)-(\d*)")
MEDIA_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac"}


def attachment(name: str) -> str:
    """RFC 6266 `Content-Disposition` of a download named `name`: an ASCII fallback, and the
    name itself, UTF-8 percent-encoded (a header holds Latin-1 at most)."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def verified(chunks: AsyncIterator[bytes], sha256: str, name: str) -> AsyncIterator[bytes]:
    """`chunks`, the last held back until all of them hash to `sha256`: bytes of another version
    end the answer short of its Content-Length (the client sees a broken download)."""
    digest, held = hashlib.sha256(), None
    async for chunk in chunks:
        digest.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if digest.hexdigest() != sha256:
        logger.warning("stem %s changed during its download; the answer was cut short", name)
        return
    if held is not None:
        yield held


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`(start, stop)` that a single `Range: bytes=...` header asks for; None for a whole-file
    answer (no header, or one this server may ignore: several ranges, another unit)."""
    found = RANGE.fullmatch((header or "").strip())
    if not found or not (found[1] or found[2]):
        return None
    if not found[1]:  # the last N bytes
        start, stop = max(0, size - int(found[2])), size
    else:
        start, stop = int(found[1]), min(size, int(found[2]) + 1) if found[2] else size
    if start >= size or stop <= start:
        raise RangeNotSatisfiable(f"the range {header.strip()} is outside the stem's {size} bytes",
                                  size)
    return start, stop


class StemSource:
    """One task's output folder, as a replica reads it."""

    def __init__(self, location: str, node: str | None, remote: bool, storage: StorageConfig):
        self.location, self.node = location, node
        self.remote = RemoteFolder(location, storage) if remote else None

    async def chunks(self, name: str, start: int, stop: int) -> AsyncIterator[bytes]:
        """The bytes [start, stop) of file `name` of the folder, about a megabyte at a time."""
        if self.remote is not None:
            fs, folder = self.remote.fs, self.remote.path
            for offset in range(start, stop, nodes.CHUNK_BYTES):
                end = min(stop, offset + nodes.CHUNK_BYTES)
                yield await asyncio.to_thread(fs.cat_file, f"{folder}/{name}", start=offset,
                                              end=end)  # (s3fs's third positional: a version)
            return
        async for chunk in nodes.chunks(f"{self.location}/{name}", self.node, start, stop):
            yield chunk

    async def manifest(self) -> dict:
        if self.remote is not None:
            return await asyncio.to_thread(self.remote.manifest)
        data = b"".join([chunk async for chunk in self.chunks(MANIFEST, 0, 1 << 24)])
        return json.loads(data)

    async def peaks(self, name: str, points: int) -> dict:
        """`raydemucs.http.peaks.peaks` of file `name`, computed where it is read."""
        if self.remote is not None:
            def from_bucket():
                with self.remote.fs.open(f"{self.remote.path}/{name}", "rb") as handle:
                    return peaks(handle, points)
            return await asyncio.to_thread(from_bucket)
        path = f"{self.location}/{name}"
        if nodes.is_here(self.node):
            return await asyncio.to_thread(peaks, path, points)
        return await peaks_on_node.options(scheduling_strategy=nodes.pinned(self.node)).remote(
            path, points)

    def signed_url(self, name: str) -> str | None:
        """A presigned URL of a bucket's file, where the storage signs them; else None."""
        if self.remote is None:
            return None
        try:
            return self.remote.fs.sign(f"{self.remote.path}/{name}", expiration=SIGNED_URL_S)
        except (NotImplementedError, AttributeError):  # fsspec: a storage that cannot sign
            return None


class _Sink(io.RawIOBase):
    """A write-only, unseekable stream that hands out what was written since the last `take`."""

    def __init__(self):
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


async def zip_stream(source: StemSource, manifest: dict, root: str) -> AsyncIterator[bytes]:
    """Every stem and `manifest.json` under `root/` in one zip (stored, not compressed: audio
    does not shrink), written as it is read."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for entry in manifest["stems"].values():
            info = zipfile.ZipInfo(f"{root}/{entry['file']}", date_time=(2020, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=entry["bytes"] >= 2**31) as member:
                async for chunk in source.chunks(entry["file"], 0, entry["bytes"]):
                    member.write(chunk)
                    yield sink.take()
        archive.writestr(f"{root}/{MANIFEST}", json.dumps(manifest, indent=2, ensure_ascii=False))
    yield sink.take()
