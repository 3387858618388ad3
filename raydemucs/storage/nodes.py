"""Files on one Ray node's own disk, reached from any process of the cluster: read or written a
chunk at a time (through Ray's object store, never whole in one process's memory) or removed, by
a small Ray task pinned to that node; directly when the node is the caller's own (or None: no node named).

Where the service keeps files on local disks (an upload on the scheduler's node, a kept task's
stems on the node that ran it), every other process reads and writes them through here: the
scheduler's process never carries their bytes. A node is known by its Ray node id: once it left
the cluster (died, or restarted: Ray gives it a new id), what it kept is `Gone` to the service.
"""
from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import AsyncIterator, Iterator

import ray
from ray.exceptions import NodeDiedError, TaskUnschedulableError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..core.errors import Gone

CHUNK_BYTES = 1 << 20
ANSWER_TIMEOUT_S = 30.0  # a node that does not answer a small read (a manifest, a size) in time


def read(path: str, start: int, stop: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes [start, stop) of a file here, chunk by chunk, through one open handle."""
    with open(path, "rb") as handle:
        handle.seek(start)
        for offset in range(start, stop, chunk_bytes):
            chunk = handle.read(min(stop, offset + chunk_bytes) - offset)
            if not chunk:
                return
            yield chunk


@ray.remote(num_cpus=0)
def _read_there(path: str, start: int, stop: int, chunk_bytes: int):
    yield from read(path, start, stop, chunk_bytes)


def _append(path: str, chunk: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(chunk)


_append_there = ray.remote(num_cpus=0)(_append)


@ray.remote(num_cpus=0)
def _remove_there(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _size(path: str) -> int | None:
    root = Path(path)
    if root.is_file():
        return root.stat().st_size
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else None


_size_there = ray.remote(num_cpus=0)(_size)


def _whole(path: str) -> bytes:
    return Path(path).read_bytes()


_whole_there = ray.remote(num_cpus=0)(_whole)


def is_here(node: str | None) -> bool:
    """Whether `node` is this process's node (None: any node, the file is where we are)."""
    return node is None or not ray.is_initialized() or \
        node == ray.get_runtime_context().get_node_id()


def alive() -> list[str | None]:
    """The live nodes of the cluster ([None]: this process's, without Ray)."""
    if not ray.is_initialized():
        return [None]
    return [node["NodeID"] for node in ray.nodes() if node["Alive"]]


def pinned(node: str):
    """The scheduling strategy of a Ray task that must run on `node`."""
    return NodeAffinitySchedulingStrategy(node, soft=False)


@contextlib.contextmanager
def _there():
    """Around a call of a task pinned to a node: the node gone from the cluster (dead, or
    restarted: a new node to Ray) is `Gone`, its files with it as far as the service knows."""
    try:
        yield
    except (TaskUnschedulableError, NodeDiedError):
        raise Gone("these files were kept on a Ray node that has left the cluster; run the "
                   "task again to make them anew") from None


async def chunks(path: str, node: str | None, start: int, stop: int,
                 chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """`read` of a file on `node`, awaited chunk by chunk (the disk read off the event loop)."""
    if is_here(node):
        reader = read(path, start, stop, chunk_bytes)
        try:
            while (chunk := await asyncio.to_thread(next, reader, None)) is not None:
                yield chunk
        finally:
            reader.close()
        return
    with _there():
        async for ref in _read_there.options(scheduling_strategy=pinned(node)).remote(
                path, start, stop, chunk_bytes):
            yield await ref


async def append(path: str, node: str | None, chunk: bytes) -> None:
    """Append `chunk` to a file on `node` (made when missing)."""
    if is_here(node):
        await asyncio.to_thread(_append, path, chunk)
    else:
        with _there():
            await _append_there.options(scheduling_strategy=pinned(node)).remote(path, chunk)


def send(source: Path, path: str, node: str | None, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Append the local file `source` to a file on `node`, a chunk at a time (blocking)."""
    with open(source, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            if is_here(node):
                _append(path, chunk)
                continue
            with _there():
                ray.get(_append_there.options(scheduling_strategy=pinned(node)).remote(path, chunk))


def copy(path: str, node: str | None, target: Path, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Copy a file on `node` to the local path `target`, a chunk at a time (blocking)."""
    with open(target, "wb") as handle:
        if is_here(node):
            for chunk in read(path, 0, 1 << 62, chunk_bytes):
                handle.write(chunk)
            return
        with _there():
            for ref in _read_there.options(scheduling_strategy=pinned(node)).remote(
                    path, 0, 1 << 62, chunk_bytes):
                handle.write(ray.get(ref))


def content(path: str, node: str | None) -> bytes:
    """A small file on `node`, whole (a manifest; at most `ANSWER_TIMEOUT_S`)."""
    if is_here(node):
        return _whole(path)
    with _there():
        return ray.get(_whole_there.options(scheduling_strategy=pinned(node)).remote(path),
                       timeout=ANSWER_TIMEOUT_S)


def size(path: str, node: str | None) -> int | None:
    """The bytes of a file, or of the files under a folder, on `node` (None when missing;
    blocking, at most `ANSWER_TIMEOUT_S`)."""
    if is_here(node):
        return _size(path)
    with _there():
        return ray.get(_size_there.options(scheduling_strategy=pinned(node)).remote(path),
                       timeout=ANSWER_TIMEOUT_S)


def remove(path: str, node: str | None) -> None:
    """Remove a folder on `node` (blocking)."""
    if is_here(node):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with _there():
            ray.get(_remove_there.options(scheduling_strategy=pinned(node)).remote(path))
