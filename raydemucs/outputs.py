"""Where stems go: safe folder resolution, atomic writing through a staging folder, the manifest."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from .errors import InvalidInput, OutputNotWritable, OutputWriteFailed
from .names import check_name, printable

MANIFEST = "manifest.json"


def _output_root(output_dir: str | os.PathLike) -> Path:
    root = Path(output_dir).expanduser().absolute()
    if "\x00" in str(root):
        raise OutputNotWritable(f"output directory {printable(root)} holds a NUL character")
    return root


def _refuse_symlinks(*paths: Path) -> None:
    for path in paths:
        if path.is_symlink():
            raise OutputNotWritable(f"{printable(path)} is a symlink; raydemucs never writes "
                                    "through one")


def resolve_output_folder(output_dir: str | os.PathLike, project: str, file_id: str) -> Path:
    """`OUTPUT_DIR/PROJECT/FILE_ID`, refusing names or symlinks that would lead outside it."""
    check_name("project name", project)
    check_name("file id", file_id)
    root = _output_root(output_dir)
    folder = root / project / file_id
    _refuse_symlinks(root / project, folder)
    if not folder.resolve().is_relative_to(root.resolve()):
        raise OutputNotWritable(f"{printable(folder)} resolves outside the output directory "
                                f"{printable(root)}")
    return folder


def pick_stems(stems: dict, two_stems: str | None) -> dict:
    """All stems, or `STEM` and `no_STEM` (the sum of the others), as `demucs.separate` writes them."""
    if two_stems is None:
        return stems
    others = [wav for name, wav in stems.items() if name != two_stems]
    return {two_stems: stems[two_stems], f"no_{two_stems}": sum(others[1:], others[0].clone())}


def check_writable(output_dir: str | os.PathLike) -> None:
    """Create the output directory if needed and a file in it, or raise `OutputNotWritable`.

    Trying is the only honest test: `os.access` says yes to root even in /proc or on a
    read-only mount.
    """
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_staging(folder: Path, suffixes: tuple = ("tmp", "scratch")) -> None:
    """Remove the hidden folders killed attempts leave beside `folder`: staging (`.FILE_ID.*.tmp`)
    and streaming scratch (`.FILE_ID.*.scratch`)."""
    for suffix in suffixes:
        for stale in folder.parent.glob(f".{glob_escape(folder.name)}.*.{suffix}"):
            shutil.rmtree(stale, ignore_errors=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_outputs(folder: Path, stems: dict, ext: str, save: Callable[[object, Path], None],
                  manifest: dict) -> dict[str, str]:
    """Write every stem and `manifest.json` into a staging folder, sync, then rename into place.

    The folder is either absent or complete: an existing one is replaced only after the new one
    is whole. Symlinks are checked again here: one may have appeared since the task started.
    Returns `{stem: path}`.
    """
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _refuse_symlinks(folder.parent, folder)
        remove_staging(folder, ("tmp",))
        staging.mkdir()
        entries = {}
        for name, wav in stems.items():
            path = staging / f"{name}.{ext}"
            save(wav, path)
            _fsync(path)
            entries[name] = {"file": path.name, "bytes": path.stat().st_size,
                             "sha256": file_sha256(path)}
        manifest = {**manifest, "stems": entries}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        _fsync(staging / MANIFEST)
        _fsync(staging)
        _swap_into_place(staging, folder)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputWriteFailed(f"writing stems to {printable(folder)} failed: "
                                f"{exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {name: str(folder / entry["file"]) for name, entry in entries.items()}


def copy_outputs(folder: Path, manifest: dict, fill: Callable[[str, Path], None]) -> dict[str, str]:
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


def _swap_into_place(staging: Path, folder: Path) -> None:
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
        os.rename(folder, old)
    os.rename(staging, folder)
    _fsync(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def complete_stems(manifest: dict | None, task_id: str | None,
                   size_of: Callable[[str], int | None]) -> bool:
    """Whether `manifest` (for `task_id`, if given) lists stems that all exist whole, wherever
    they are: `size_of(file name)` is a stem file's size, None when it is missing."""
    if not manifest or not isinstance(manifest.get("stems"), dict):
        return False
    if task_id is not None and manifest.get("task_id") != task_id:
        return False
    return all(size_of(entry["file"]) == entry["bytes"] for entry in manifest["stems"].values())


def stem_locations(manifest: dict, folder: Path | str) -> dict[str, str]:
    """`{stem: location}` of a manifest's stems in `folder` (a path or a URI)."""
    return {stem: f"{folder}/{entry['file']}" for stem, entry in manifest["stems"].items()}


def sizes_in(folder: Path) -> Callable[[str], int | None]:
    """`size_of` for `complete_stems` in a local folder."""
    def size_of(name: str) -> int | None:
        path = folder / name
        return path.stat().st_size if path.is_file() else None
    return size_of


def output_is_complete(folder: Path, task_id: str | None = None) -> bool:
    """True when `manifest.json` exists (for `task_id`, if given) and lists files that exist whole."""
    return complete_stems(read_manifest(folder), task_id, sizes_in(folder))


def read_output(folder: Path) -> dict:
    """`{"manifest", "files": {file name: bytes}}` of a complete output folder (for `fetch`)."""
    manifest = read_manifest(folder)
    if not complete_stems(manifest, None, sizes_in(folder)):
        raise InvalidInput(f"{printable(folder)} holds no complete output here")
    return {"manifest": manifest,
            "files": {entry["file"]: (folder / entry["file"]).read_bytes()
                      for entry in manifest["stems"].values()}}


def copy_output_bytes(folder: Path, output: dict) -> dict[str, str]:
    """`copy_outputs` from what `read_output` returns (bytes sent across processes)."""
    files = output["files"]
    return copy_outputs(folder, output["manifest"], lambda name, path: path.write_bytes(files[name]))
