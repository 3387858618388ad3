"""Where one attempt reads its input and writes its stems on the worker's own disk.

A task may name a local file and folder (one machine, or a shared filesystem), URIs read and
written through fsspec, or bytes uploaded with it. The worker always separates a local file into
a local folder; `attempt_places` provides both and `Places.deliver` takes the finished folder
where the task wants it.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import storage
from .config import StorageConfig
from .errors import InternalError, InvalidInput
from .outputs import read_manifest, read_output, resolve_output_folder
from .task import TaskSpec

SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass
class Places:
    input_path: Path  # a local file to decode
    folder: Path  # the local folder the stems are written to
    target: str | None  # the remote folder they are published to, if any
    uploaded: bool  # the stems go back to the service as bytes

    def previous_manifest(self, config: StorageConfig) -> dict | None:
        """The manifest of a complete output already where this task's stems go."""
        if self.uploaded:
            return None
        if self.target:
            return storage.read_manifest(self.target, config)
        return read_manifest(self.folder)

    def deliver(self, outputs: dict[str, str], config: StorageConfig) -> dict:
        """Publish a complete local folder; returns the result fields that describe it."""
        if self.target:
            return {"outputs": storage.publish(self.folder, self.target, config)}
        if self.uploaded:
            return {"outputs": outputs, **read_output(self.folder)}
        return {"outputs": outputs}


def _local_name(location: str) -> str:
    suffix = Path(location.rsplit("/", 1)[-1]).suffix
    return "input" + (suffix if SAFE_SUFFIX.match(suffix) else "")


@contextlib.contextmanager
def attempt_places(task: TaskSpec, config: StorageConfig, max_bytes: int,
                   upload: bytes | None = None) -> Iterator[Places]:
    """Local places for one attempt; what it downloads or writes there is removed at the end."""
    remote_in, remote_out = storage.is_uri(task.input_path), storage.is_uri(task.output_dir)
    if not (remote_in or remote_out or task.uploaded):
        yield Places(Path(task.input_path),
                     resolve_output_folder(task.output_dir, task.project, task.file_id), None, False)
        return
    work = Path(tempfile.mkdtemp(prefix=f"raydemucs-{task.task_id}-"))
    try:
        input_path = Path(task.input_path)
        if task.uploaded:
            if upload is None:
                raise InternalError("the task's uploaded input did not arrive with it")
            input_path = work / _local_name(task.input_path)
            input_path.write_bytes(upload)
        elif remote_in:
            size = storage.input_size(task.input_path, config)
            if size > max_bytes:
                raise InvalidInput(f"{task.input_path} is {size / 2**20:.1f} MB, over the limit of "
                                   f"{max_bytes / 2**20:g} MB (input.max_file_mb)")
            input_path = storage.download(task.input_path, work / _local_name(task.input_path),
                                          config)
        if remote_out or task.uploaded:
            folder = resolve_output_folder(work / "out", task.project, task.file_id)
        else:
            folder = resolve_output_folder(task.output_dir, task.project, task.file_id)
        yield Places(input_path, folder, task.output_folder if remote_out else None, task.uploaded)
    finally:
        shutil.rmtree(work, ignore_errors=True)
