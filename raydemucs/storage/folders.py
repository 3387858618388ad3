"""Where stems go: one `Folder` for local and remote output folders, atomic writing, the manifest.

A folder is complete when its `manifest.json` lists stems that are all there whole; it is either
absent or complete. Local folders are written in a hidden staging folder beside them, synced and
renamed into place; remote ones (`s3://...`, through fsspec) are staged in a temp folder, then
published stems first and the manifest last, so a remote folder with a manifest is complete too.
"""
from __future__ import annotations

import abc
import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator

from ray.exceptions import RayError

from ..core.config import StorageConfig
from ..core.errors import (
    Gone,
    InvalidInput,
    OutputNotWritable,
    OutputWriteFailed,
    StorageUnavailable,
)
from ..core.names import check_name, check_task_names, printable
from ..core.statedir import sync_path
from . import nodes, uris

MANIFEST = "manifest.json"
STAGING_SUFFIXES = ("tmp", "scratch")  # staging folders, and streaming's scratch files


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Folder(abc.ABC):
    """One task's output folder; subclasses say how to read it and how to publish into it."""

    location: str
    remote: bool  # readable from any machine with the storage's credentials, not only its node

    @abc.abstractmethod
    def manifest(self) -> dict | None:
        """The folder's manifest, or None when there is none (or it is not JSON)."""

    @abc.abstractmethod
    def size_of(self, name: str) -> int | None:
        """Bytes of one file in the folder, None when it is missing."""

    @abc.abstractmethod
    def staging(self) -> contextlib.AbstractContextManager[Path]:
        """A local folder to write the stems and manifest in before `publish`; removed after."""

    @abc.abstractmethod
    def publish(self, staged: Path) -> None:
        """Put a complete staged folder in place of this one."""

    @abc.abstractmethod
    def fetch_file(self, name: str, target: Path) -> None:
        """Copy one file of the folder to the local path `target`."""

    def sweep(self) -> None:
        """Remove what killed attempts left beside the folder (nothing is left remotely)."""

    def scratch(self) -> Path:
        """A fresh local path for an attempt's scratch files (streamed stems)."""
        return Path(tempfile.gettempdir()) / f".raydemucs-{uuid.uuid4().hex[:8]}.scratch"

    def stems(self, manifest: dict) -> dict[str, str]:
        """`{stem: location}` of a manifest's stems in this folder."""
        return {stem: f"{self.location}/{entry['file']}" for stem, entry in manifest["stems"].items()}

    def complete(self, task_id: str | None = None) -> bool:
        """Whether the manifest (for `task_id`, if given) lists stems that all exist whole."""
        return complete_stems(self.manifest(), task_id, self.size_of)

    def finished(self, task_id: str) -> dict[str, str] | None:
        """`{stem: location}` when the folder holds this task's complete stems (a crash came after
        the write); None otherwise, also when its storage cannot be reached."""
        try:
            manifest = self.manifest()
            return self.stems(manifest) if complete_stems(manifest, task_id, self.size_of) else None
        except StorageUnavailable:
            return None


def complete_stems(manifest: dict | None, task_id: str | None,
                   size_of: Callable[[str], int | None]) -> bool:
    """Whether `manifest` (for `task_id`, if given) lists stems whose files `size_of` finds whole."""
    if not manifest or not isinstance(manifest.get("stems"), dict):
        return False
    if task_id is not None and manifest.get("task_id") != task_id:
        return False
    return all(size_of(entry["file"]) == entry["bytes"] for entry in manifest["stems"].values())


class LocalFolder(Folder):
    """A folder on this machine's disk (or a file system every node mounts)."""

    remote = False

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.location = str(self.path)

    def __eq__(self, other) -> bool:
        return isinstance(other, LocalFolder) and other.path == self.path

    def manifest(self) -> dict | None:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def size_of(self, name: str) -> int | None:
        path = self.path / name
        return path.stat().st_size if path.is_file() else None

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A hidden `.NAME.<8 hex digits>.tmp` beside the folder (same file system: renames are atomic)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _refuse_symlinks(self.path.parent, self.path)
        self.sweep(("tmp",))
        staged = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
        staged.mkdir()
        try:
            yield staged
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def publish(self, staged: Path) -> None:
        """Sync the staged folder, then swap it into place; an old folder goes only after."""
        _refuse_symlinks(self.path.parent, self.path)  # one may have appeared since the start
        for path in staged.iterdir():
            sync_path(path)
        sync_path(staged)
        old = None
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
            os.rename(self.path, old)
        os.rename(staged, self.path)
        sync_path(self.path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def fetch_file(self, name: str, target: Path) -> None:
        shutil.copyfile(self.path / name, target)

    def sweep(self, suffixes: tuple = STAGING_SUFFIXES) -> None:
        """Remove the hidden staging (`.NAME.*.tmp`) and scratch (`.NAME.*.scratch`) folders
        killed attempts leave beside the folder."""
        for suffix in suffixes:
            for stale in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.{suffix}"):
                shutil.rmtree(stale, ignore_errors=True)

    def scratch(self) -> Path:
        """A fresh path for an attempt's scratch files, beside the folder where `sweep` finds
        them (what a killed attempt leaves goes with the next sweep)."""
        return self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.scratch"

class RemoteFolder(Folder):
    """A folder in object storage (`s3://bucket/prefix/PROJECT/FILE_ID`), through fsspec."""

    remote = True

    def __init__(self, uri: str, config: StorageConfig):
        self.location, self.config = uri, config

    @functools.cached_property
    def _opened(self) -> tuple:
        return uris.open_uri(self.location, self.config)

    @property
    def fs(self):
        return self._opened[0]

    @property
    def path(self) -> str:
        return self._opened[1]

    def __eq__(self, other) -> bool:
        return isinstance(other, RemoteFolder) and other.location == self.location

    def _call(self, call: Callable):
        try:
            return call()
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise uris.unreachable(self.location, exc) from None

    def manifest(self) -> dict | None:
        try:
            return json.loads(self._call(lambda: self.fs.cat_file(f"{self.path}/{MANIFEST}")))
        except (FileNotFoundError, ValueError):
            return None

    def size_of(self, name: str) -> int | None:
        try:
            return self._call(lambda: self.fs.info(f"{self.path}/{name}")).get("size")
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="raydemucs-stage-") as staged:
            yield Path(staged)

    def publish(self, staged: Path) -> None:
        """Upload the stems, then the manifest; the old manifest goes first, so that a reader
        never pairs it with half-replaced stems."""
        manifest = json.loads((staged / MANIFEST).read_text())

        def upload() -> None:
            if self.fs.exists(f"{self.path}/{MANIFEST}"):
                self.fs.rm_file(f"{self.path}/{MANIFEST}")
            for entry in manifest["stems"].values():
                self.fs.put_file(str(staged / entry["file"]), f"{self.path}/{entry['file']}")
            self.fs.put_file(str(staged / MANIFEST), f"{self.path}/{MANIFEST}")
        self._call(upload)

    def remove(self) -> None:
        """Delete the folder and everything in it."""
        try:
            self._call(lambda: self.fs.rm(self.path, recursive=True))
        except FileNotFoundError:
            pass

    def fetch_file(self, name: str, target: Path) -> None:
        try:
            self._call(lambda: self.fs.get_file(f"{self.path}/{name}", str(target)))
        except FileNotFoundError:
            raise uris.unreachable(self.location, FileNotFoundError(name)) from None


class NodeFolder(LocalFolder):
    """A local folder on the Ray node `node`, read from any process of the cluster (a kept
    task's stems on the node that ran it)."""

    def __init__(self, path: str | os.PathLike, node: str | None):
        super().__init__(path)
        self.node = node

    def manifest(self) -> dict | None:
        try:
            return json.loads(nodes.content(str(self.path / MANIFEST), self.node))
        except (OSError, ValueError, Gone, RayError):  # its node gone, or not answering
            return None

    def size_of(self, name: str) -> int | None:
        try:
            return nodes.size(str(self.path / name), self.node)
        except (OSError, Gone, RayError):
            return None

    def fetch_file(self, name: str, target: Path) -> None:
        nodes.copy(str(self.path / name), self.node, target)


def placed_folder(place: dict, config: StorageConfig) -> Folder:
    """The folder a scheduler's `stems_place` answer names."""
    return folder_on(place["location"], place["node"], config)


def folder_on(location: str, node: str | None, config: StorageConfig) -> Folder:
    """A task's output folder as any process reads it: a URI, or a local path on the node
    whose worker wrote it (`node`; None: this one)."""
    return RemoteFolder(location, config) if uris.is_uri(location) else NodeFolder(location, node)


def open_folder(location: str, config: StorageConfig) -> Folder:
    """The folder at `location`: a URI (`s3://...`) or a local path."""
    return RemoteFolder(location, config) if uris.is_uri(location) else LocalFolder(location)


def _output_root(output_dir: str | os.PathLike) -> Path:
    root = Path(output_dir).expanduser().absolute()
    if "\x00" in str(root):
        raise OutputNotWritable(f"output directory {printable(root)} holds a NUL character")
    return root


def _refuse_symlinks(*paths: str | os.PathLike) -> None:
    for path in paths:
        if os.path.islink(path):
            raise OutputNotWritable(f"{printable(path)} is a symlink; raydemucs never writes "
                                    "through one")


def task_folder(output_dir: str | os.PathLike, project: str, file_id: str,
                config: StorageConfig | None = None) -> Folder:
    """`OUTPUT_DIR/PROJECT/FILE_ID`, refusing names (and local symlinks) that would lead out."""
    check_task_names(project, file_id)
    if uris.is_uri(str(output_dir)):
        return RemoteFolder(f"{str(output_dir).rstrip('/')}/{project}/{file_id}",
                            config or StorageConfig())
    root = str(_output_root(output_dir))
    # names hold no separator and no `..`: with neither part a symlink, the folder is in root
    folder = os.path.join(root, project, file_id)
    _refuse_symlinks(os.path.join(root, project), folder)
    return LocalFolder(folder)


def check_writable(output_dir: str | os.PathLike, config: StorageConfig | None = None) -> None:
    """Create the output directory (or a probe object under a URI) and a file in it, or raise
    `OutputNotWritable`.

    Trying is the only honest test: `os.access` says yes to root even in /proc or on a
    read-only mount.
    """
    if uris.is_uri(str(output_dir)):
        uris.check_writable(str(output_dir), config or StorageConfig())
        return
    path = _output_root(output_dir)
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputNotWritable(f"output directory {printable(path)}: {printable(probe)} is not "
                                "a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".raydemucs-probe-"):
            pass
    except OSError as exc:
        raise OutputNotWritable(f"output directory {printable(path)} is not writable: "
                                f"{exc.strerror or exc}") from None


def write_outputs(folder: Folder, stems: dict, ext: str, save: Callable[[object, Path], None],
                  manifest: dict) -> dict[str, str]:
    """Write every stem and `manifest.json` into a staging folder, then publish it: the folder is
    either absent or complete, and an existing one is replaced only by a whole new one.
    Returns `{stem: location}`."""
    try:
        with folder.staging() as staged:
            entries = {}
            for name, wav in stems.items():
                path = staged / f"{name}.{ext}"
                save(wav, path)
                entries[name] = {"file": path.name, "bytes": path.stat().st_size,
                                 "sha256": file_sha256(path)}
            manifest = {**manifest, "stems": entries}
            (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
            folder.publish(staged)
    except OSError as exc:
        raise OutputWriteFailed(f"writing stems to {printable(folder.location)} failed: "
                                f"{exc.strerror or exc}") from None
    return folder.stems(manifest)


def copy_outputs(folder: Folder, manifest: dict, fill: Callable[[str, Path], None]) -> dict[str, str]:
    """Recreate, at `folder`, the complete output another folder's `manifest` describes.

    `fill(file_name, path)` writes one stem file (from bytes, a bucket, ...); each is checked
    against the manifest's SHA-256 and the folder appears only when whole, like `write_outputs`.
    """
    stems = manifest.get("stems")
    if not isinstance(stems, dict) or not stems:
        raise InvalidInput("the manifest lists no stems")
    files = {}
    for stem, entry in stems.items():
        file_name = check_name("stem file", entry.get("file"))
        if not file_name.startswith(f"{stem}.") or file_name == f"{stem}.":
            raise InvalidInput(f"the manifest names {file_name!r} for stem {stem!r}")
        files[stem] = file_name
    exts = {name.rsplit(".", 1)[1] for name in files.values()}
    if len(exts) != 1:
        raise InvalidInput(f"the manifest mixes stem formats: {', '.join(sorted(exts))}")

    def save(file_name: str, path: Path) -> None:
        fill(file_name, path)
        if file_sha256(path) != stems[path.stem]["sha256"]:
            raise OutputWriteFailed(f"{file_name} arrived corrupt (its SHA-256 does not match)")

    base = {key: value for key, value in manifest.items() if key != "stems"}
    return write_outputs(folder, files, exts.pop(), save, base)


def copy_folder(source: Folder, target: Folder) -> dict[str, str]:
    """Copy a complete folder to `target`, checksums verified."""
    manifest = source.manifest()
    if not manifest:
        raise InvalidInput(f"{printable(source.location)} holds no complete output (no {MANIFEST})")
    return copy_outputs(target, manifest, source.fetch_file)
