"""Where one attempt reads its input and writes its stems, from the worker's point of view.

A task may name a local file and folder (one machine, or a shared filesystem), URIs read and
written through fsspec, or bytes uploaded with it. The worker always decodes a local file;
`attempt_places` provides it, the `Folder` the stems are published to, and a local place for
scratch files.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..core.config import StorageConfig
from ..core.errors import InputTooLarge, InternalError
from ..core.task import TaskSpec
from ..storage import uris
from ..storage.folders import Folder, task_folder
from ..storage.uploads import UploadSource

SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass
class Places:
    input_path: Path  # a local file to decode
    folder: Folder  # where the stems go (when the service keeps them, a local folder sent back)
    scratch: Path  # a local path for scratch files (streamed stems), removed after the attempt
    kept: bool  # the stems go back to the service as bytes

    def previous_manifest(self) -> dict | None:
        """The manifest of an output already where this task's stems go."""
        return None if self.kept else self.folder.manifest()

    def deliver(self, outputs: dict[str, str]) -> dict:
        """The result fields that describe the published stems (their bytes, when the service
        keeps them)."""
        if self.kept:
            return {"outputs": outputs, **self.folder.read_files()}
        return {"outputs": outputs}


def _local_name(location: str) -> str:
    suffix = Path(location.rsplit("/", 1)[-1]).suffix
    return "input" + (suffix if SAFE_SUFFIX.match(suffix) else "")


@contextlib.contextmanager
def attempt_places(task: TaskSpec, config: StorageConfig, max_bytes: int,
                   upload: bytes | UploadSource | None = None) -> Iterator[Places]:
    """Local places for one attempt; what it downloads or writes there is removed at the end.
    An uploaded input comes as its bytes, or as the `UploadSource` the worker fetches it from."""
    remote_in = uris.is_uri(task.input_path)
    if not (remote_in or task.kept or uris.is_uri(task.output_dir)):
        folder = task_folder(task.output_dir, task.project, task.file_id, config)
        yield Places(Path(task.input_path), folder, folder.scratch(), False)
        return
    work = Path(tempfile.mkdtemp(prefix=f"raydemucs-{task.task_id}-"))
    try:
        input_path = Path(task.input_path)
        if task.uploaded:
            if upload is None:
                raise InternalError("the task's uploaded input did not arrive with it")
            input_path = work / _local_name(task.input_path)
            if isinstance(upload, bytes):
                input_path.write_bytes(upload)
            else:
                upload.write_to(input_path)
        elif remote_in:
            size = uris.input_size(task.input_path, config)
            if size > max_bytes:
                raise InputTooLarge(f"{task.input_path} is {size / 2**20:.1f} MB, over the limit of "
                                   f"{max_bytes / 2**20:g} MB (input.max_file_mb)")
            input_path = uris.download(task.input_path, work / _local_name(task.input_path),
                                          config)
        out = work / "out" if task.kept else task.output_dir
        folder = task_folder(out, task.project, task.file_id, config)
        yield Places(input_path, folder, folder.scratch(), task.kept)
    finally:
        shutil.rmtree(work, ignore_errors=True)
