"""Inputs sent with their tasks and those tasks' stems, kept by the service.

For clients that share no storage with the cluster (`submit --upload`, and every file posted over
HTTP): the bytes are stored under the service's state directory on the scheduler's node by
SHA-256, synced before the task is accepted; the worker reads them there itself (`UploadSource`),
and writes the task's stems straight to `KEPT/[@OWNER/]PROJECT/FILE_ID`, where KEPT is
`storage.kept_uri` or else `STATE_DIR/results` on the node that ran the task. Bytes arrive in
chunks, as an HTTP replica or `submit --upload` writes them (`open`, the sender's appends
through `storage.nodes`, `close`), checked as audio before they are kept.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..audio.checks import validate_input
from ..core.actors import node_id
from ..core.config import InputConfig, StorageConfig
from ..core.errors import InputTooLarge, InvalidInput
from ..core.names import stored_name
from ..core.statedir import sync_path
from ..core.task import TaskSpec
from . import nodes, uris
from .folders import file_sha256

IDLE_UPLOAD_S = 600.0  # an incoming upload not submitted this long after it opened was abandoned


@dataclass
class Incoming:
    """An upload arriving in chunks: its partial file, written by the HTTP replica itself."""

    path: Path
    name: str  # the file's name where it came from (its path here never reaches a message)
    max_bytes: int
    opened_at: float = field(default_factory=time.monotonic)


def inputs_dir(state_dir: Path) -> Path:
    """Where the service keeps uploaded inputs, by SHA-256."""
    return state_dir / "uploads"


@dataclass(frozen=True)
class UploadSource:
    """An uploaded input as a worker fetches it: the file on the scheduler's node, read there a
    chunk at a time by a Ray task pinned to it (`storage.nodes`), so that neither the scheduler's
    process nor the call to the worker holds the file."""

    node: str | None  # the scheduler's node
    path: str

    @classmethod
    def of(cls, state_dir: Path, sha256: str) -> "UploadSource":
        """The stored input `sha256` of the service whose state directory (on this node, the
        scheduler's) is `state_dir`."""
        return cls(node_id(), str(inputs_dir(state_dir.absolute()) / sha256))

    def write_to(self, path: Path) -> None:
        try:
            nodes.copy(self.path, self.node, path)
        except FileNotFoundError:  # also raised through Ray, by the task that reads it there
            raise InvalidInput("the uploaded input is gone from the service's state directory; "
                               "submit the file again") from None


class UploadStore:
    def __init__(self, state_dir: Path, limits: InputConfig = InputConfig(),
                 storage: StorageConfig = StorageConfig()):
        state_dir = state_dir.absolute()  # named to workers, whose working folders differ
        self.inputs = inputs_dir(state_dir)
        self.incoming = self.inputs / ".incoming"
        self.results = state_dir / "results"
        self.limits, self.storage, self.kept_uri = limits, storage, storage.kept_uri
        self._open: dict[str, Incoming] = {}
        self.lock = threading.Lock()  # keeping or reusing an input, against retention's removals
        shutil.rmtree(self.incoming, ignore_errors=True)  # what a stopped service left half-sent

    def results_dir(self, owner: str) -> str:
        """Where the stems of an owner's uploaded tasks go (`@` cannot start a project name):
        under `storage.kept_uri`, else under the results folder (on the node that runs it)."""
        root = self.kept_uri.rstrip("/") if self.kept_uri else str(self.results)
        return f"{root}/@{owner}" if owner else root

    def keeps(self, location: str) -> bool:
        """Whether `location` is a task's folder under the service's results (those of
        `storage.kept_uri`, or the local ones), never their root."""
        if uris.is_uri(location):
            return bool(self.kept_uri) and location.startswith(self.kept_uri.rstrip("/") + "/")
        folder, results = Path(location).resolve(), self.results.resolve()
        return folder.is_relative_to(results) and folder != results

    def accept(self, spec: TaskSpec) -> TaskSpec:
        """Point an uploaded task's stems at the service's results; its input must be stored
        here already (sent in chunks, or by an earlier task), and its time is renewed."""
        if not self._reuse(self.inputs / str(spec.input_sha256)):
            raise InvalidInput(f"task {spec.file_id!r} says it was uploaded, but its input is not "
                               "stored here")
        return self.keep(spec)

    def _reuse(self, path: Path) -> bool:
        """Whether a stored input is here; its time is renewed (retention counts from it)."""
        with self.lock:
            try:
                os.utime(path)
                return True
            except FileNotFoundError:
                return False

    def _place(self, source: Path, path: Path) -> None:
        """Rename a synced file into place, and sync the directory that now names it."""
        with self.lock:
            os.replace(source, path)
        sync_path(path.parent)

    def retire_input(self, sha256: str, older_than: float, trash: Path) -> bool:
        """Move a stored input to `trash` unless it was kept or reused since `older_than`;
        never at the same time as a task reuses it."""
        path = self.inputs / sha256
        with self.lock:
            try:
                if path.stat().st_mtime >= older_than:
                    return False
                os.replace(path, trash / f"input-{sha256}-{uuid.uuid4().hex[:8]}")
                return True
            except FileNotFoundError:
                return False

    def keep(self, spec: TaskSpec) -> TaskSpec:
        """Point a task's stems at the service's results, where it keeps them."""
        return dataclasses.replace(spec, output_dir=self.results_dir(spec.owner), kept=True)

    def holds_input(self, spec: TaskSpec) -> bool:
        """Whether an uploaded task's input is still stored (any other task's is not ours)."""
        return not spec.uploaded or (self.inputs / str(spec.input_sha256)).is_file()

    # -- uploads in chunks -------------------------------------------------------------------
    def open(self, file_name: str) -> dict:
        """Start an upload of a file called `file_name` (its suffix helps decoders):
        `{"id", "path", "node"}`, the partial file its sender appends the bytes to, on this (the
        scheduler's) node, through `storage.nodes` (never through the scheduler's process)."""
        upload_id = uuid.uuid4().hex
        folder = self.incoming / upload_id
        folder.mkdir(parents=True)
        name = stored_name("input", file_name)
        self._open[upload_id] = Incoming(folder / name, Path(file_name).name or "upload",
                                         int(self.limits.max_file_mb * 2**20))
        (folder / name).touch()
        return {"id": upload_id, "path": str(folder / name), "node": node_id()}

    def close(self, upload_id: str) -> dict:
        """Check the whole file as a submitted input is checked (its size, its audio), sync it
        and keep it by SHA-256: `{"sha256", "duration_s", "bytes"}`. A file that is not
        acceptable is dropped."""
        incoming = self._get(upload_id)
        try:
            size = incoming.path.stat().st_size
            if size == 0:
                raise InvalidInput("the uploaded file is empty")
            if size > incoming.max_bytes:
                raise InputTooLarge(f"the upload is over the {self.limits.max_file_mb:g} MB "
                                    "limit (input.max_file_mb)")
            try:
                duration_s = validate_input(incoming.path, self.limits)
            except InvalidInput as exc:
                raise type(exc)(str(exc).replace(str(incoming.path), incoming.name)) from None
            sha256 = file_sha256(incoming.path)
            with open(incoming.path, "rb+") as handle:
                os.fsync(handle.fileno())
            target = self.inputs / sha256
            if not self._reuse(target):
                self._place(incoming.path, target)
            return {"sha256": sha256, "duration_s": duration_s, "bytes": size}
        finally:
            self.abort(upload_id)

    def abort(self, upload_id: str) -> None:
        """Drop an upload and its partial file."""
        incoming = self._open.pop(upload_id, None)
        if incoming is not None:
            shutil.rmtree(incoming.path.parent, ignore_errors=True)

    def idle(self) -> list[str]:
        """Uploads open for `IDLE_UPLOAD_S`, not submitted (their sender went away): `abort`
        them."""
        now = time.monotonic()
        return [upload_id for upload_id, incoming in list(self._open.items())
                if now - incoming.opened_at > IDLE_UPLOAD_S]

    def _get(self, upload_id: str) -> Incoming:
        incoming = self._open.get(upload_id)
        if incoming is None:
            raise InvalidInput(f"no upload {upload_id!r} is open here (it ended, or was dropped)")
        return incoming
