"""The service's state directory and the files it places there: the directory private to the
service's user (0700, whatever the umask), its secret files 0600, and every file renamed or
linked into place followed by a sync of its directory, so that the name survives a power cut."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def private_dir(path: Path) -> Path:
    """`path`, made 0700 when it is not there yet (its parents as the umask says)."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # made by another process just now: that one set its mode
            return path
        os.chmod(path, 0o700)  # mkdir's mode goes through the umask
    return path


def sync_path(path: Path) -> None:
    """Sync a file, or a directory so that a rename or link just made in it is on disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_private(path: Path, text: str, replace: bool = True) -> bool:
    """Write `path` whole, mode 0600: a synced temporary file renamed over it (`replace`), or
    linked to its name only if none is there (the first of two writers wins); then its directory
    synced. Whether this call placed the file."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    placed = True
    try:
        if replace:
            os.replace(partial, path)
        else:
            os.link(partial, path)
    except FileExistsError:
        placed = False
    finally:
        partial.unlink(missing_ok=True)
    sync_path(path.parent)
    return placed
