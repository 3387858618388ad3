"""An attempt's files, from the worker's point of view: its input (fetched when remote or uploaded,
then checked again), its output folder (swept of what killed attempts left), the stems of an
identical earlier task linked in, and the stems published with their manifest.

A task may name a local file and folder (one machine, or a shared filesystem), URIs read and
written through fsspec, or an upload the service keeps. The worker always decodes a local file;
`attempt_places` provides it, the `Folder` the stems are published to, and a local place for
scratch files; `attempt_files` checks them for one attempt, which the worker then separates.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..audio.checks import validate_input
from ..core.config import Config, StorageConfig
from ..core.errors import InputTooLarge, InternalError, InvalidInput
from ..core.names import stored_name
from ..core.task import TaskSpec
from ..separation.encode import stem_saver
from ..storage import uris
from ..storage.folders import Folder, LocalFolder, task_folder, write_outputs
from ..storage.uploads import UploadSource

logger = logging.getLogger(__name__)



@dataclass
class Places:
    input_path: Path  # a local file to decode
    folder: Folder  # where the stems go: the task's folder, local or remote
    scratch: Path  # a local path for scratch files (streamed stems), removed after the attempt
    kept: bool  # the service keeps the stems: a later task of the same names replaces them

    def previous_manifest(self) -> dict | None:
        """The manifest of another task's output already where this task's stems go."""
        return None if self.kept else self.folder.manifest()


def _local_name(location: str) -> str:
    return stored_name("input", location.rsplit("/", 1)[-1])


@contextlib.contextmanager
def attempt_places(task: TaskSpec, config: StorageConfig, max_bytes: int,
                   upload: UploadSource | None = None) -> Iterator[Places]:
    """Local places for one attempt; what it downloads or writes there is removed at the end.
    An uploaded input comes as the `UploadSource` the worker fetches it from.
    The stems go straight to the task's folder (a kept task's too: on this node, or in the
    store of `storage.kept_uri`), never back through the scheduler."""
    remote_in = uris.is_uri(task.input_path)
    if not (remote_in or task.uploaded or uris.is_uri(task.output_dir)):
        folder = task_folder(task.output_dir, task.project, task.file_id, config)
        yield Places(Path(task.input_path), folder, folder.scratch(), task.kept)
        return
    work = Path(tempfile.mkdtemp(prefix=f"raydemucs-{task.task_id}-"))
    try:
        input_path = Path(task.input_path)
        if task.uploaded:
            if upload is None:
                raise InternalError("the task's uploaded input did not arrive with it")
            input_path = work / _local_name(task.input_path)
            upload.write_to(input_path)
        elif remote_in:
            size = uris.input_size(task.input_path, config)
            if size > max_bytes:
                raise InputTooLarge(f"{task.input_path} is {size / 2**20:.1f} MB, over the limit of "
                                   f"{max_bytes / 2**20:g} MB (input.max_file_mb)")
            input_path = uris.download(task.input_path, work / _local_name(task.input_path),
                                          config)
        folder = task_folder(task.output_dir, task.project, task.file_id, config)
        try:
            yield Places(input_path, folder, folder.scratch(), task.kept)
        except InvalidInput as exc:  # named as the task names its input, not by the local copy
            raise type(exc)(str(exc).replace(str(input_path), task.input_path)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target`, or copy it across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@dataclass
class AttemptFiles:
    """One attempt's checked input and its output folder; `stamp` says who makes the stems
    (worker, node, device, raydemucs_version), for the manifest."""

    task: TaskSpec
    places: Places
    duration_s: float
    stamp: dict

    def reuse(self, location: str | None, attempt: int) -> dict | None:
        """Link in the stems of an earlier task with the same cache key (its folder at
        `location`); None when there is none or its folder is not complete."""
        source = LocalFolder(location) if location else None
        if source is None or not source.complete():
            return None
        previous = source.manifest()
        stems = {name: source.path / entry["file"] for name, entry in previous["stems"].items()}
        manifest = {**self._manifest(attempt), "samplerate": previous.get("samplerate"),
                    "cached_from": previous["task_id"], "timings": {}}
        started = time.time()
        outputs = write_outputs(self.places.folder, stems, self.task.options.format,
                                link_or_copy, manifest)
        logger.info("task %s attempt %d: reused the stems of task %s", self.task.task_id, attempt,
                    previous["task_id"])
        return {"outputs": outputs, "timings": {"write_s": time.time() - started},
                "duration_s": self.duration_s, "cached_from": previous["task_id"]}

    def publish(self, separated, current, extra: dict | None = None) -> dict:
        """Write `separated`'s stems (a `separation.strategies.Separated`) in the task's format
        and publish them with the manifest of the attempt `current` (and `extra`'s entries)."""
        options = self.task.options
        manifest = {**self._manifest(current.number), **(extra or {}),
                    "samplerate": separated.samplerate,
                    "streamed": separated.streamed, "runtime": separated.runtime,
                    "pieces": separated.pieces, "peak_rss_bytes": current.peak_rss_bytes,
                    "timings": current.timings}
        with current.timed("write_s"):
            outputs = write_outputs(self.places.folder, separated.stems, options.format,
                                    stem_saver(options, separated.samplerate), manifest)
        return {"outputs": outputs, "timings": current.timings,
                "duration_s": self.duration_s}

    def _manifest(self, attempt: int) -> dict:
        task = self.task
        return {"task_id": task.task_id, "project": task.project, "file_id": task.file_id,
                "input": {"path": task.input_path, "duration_s": self.duration_s,
                          "sha256": task.input_sha256},
                "model": task.options.model, "options": task.to_dict()["options"],
                "attempt": attempt, **self.stamp, "created_at": time.time()}


@contextlib.contextmanager
def attempt_files(task: TaskSpec, config: Config, stamp: dict,
                  upload: UploadSource | None = None) -> Iterator[AttemptFiles]:
    """An attempt's files, checked: the input again (it may have changed since submit), and that
    the output folder holds no other task's stems (unless forced); what killed attempts of this
    task left beside it is swept."""
    max_bytes = int(config.input.max_file_mb * 2**20)
    with attempt_places(task, config.storage, max_bytes, upload) as places:
        previous = places.previous_manifest()
        if previous and previous.get("task_id") != task.task_id and not task.force:
            raise InvalidInput(f"{task.output_location} already holds the stems of task "
                               f"{previous.get('task_id')}; pass --force to replace them")
        duration_s = validate_input(places.input_path, config.input)
        places.folder.sweep()
        yield AttemptFiles(task, places, duration_s, stamp)
