"""API keys for the HTTP front door: only their SHA-256 is kept, in the service's state directory.

`python -m raydemucs keys add NAME` writes `STATE_DIR/api-keys.json` (mode 0600) on the machine
that holds the state directory (the head node); the running service rereads it when it changes.
A key is `rdk_` and 43 URL-safe characters (256 random bits), so a plain SHA-256 is a safe digest.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InvalidInput

KEYS_FILE = "api-keys.json"
PREFIX = "rdk_"
KEY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class KeyEntry:
    name: str
    sha256: str
    created_at: float
    max_queued: int | None = None  # unfinished tasks this key may have at once (None: no cap)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyTable:
    """The keys a service knows, by digest: who a presented key belongs to."""

    def __init__(self, entries: list[KeyEntry]):
        self.entries = entries

    def __bool__(self) -> bool:
        return bool(self.entries)

    def owner_of(self, key: str) -> KeyEntry | None:
        """The entry of `key`, compared in constant time against every known digest."""
        presented = digest(key)
        found = None
        for entry in self.entries:
            if hmac.compare_digest(presented, entry.sha256):
                found = entry
        return found

    def to_list(self) -> list[dict]:
        return [asdict(entry) for entry in self.entries]

    @classmethod
    def from_list(cls, items: list[dict]) -> "KeyTable":
        return cls([KeyEntry(**item) for item in items])


class KeyStore:
    """The keys file of one state directory."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / KEYS_FILE

    def table(self) -> KeyTable:
        try:
            return KeyTable.from_list(json.loads(self.path.read_text())["keys"])
        except FileNotFoundError:
            return KeyTable([])

    def version(self) -> float | None:
        """When the file last changed (None: no keys file)."""
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def add(self, name: str, max_queued: int | None = None) -> str:
        """Create a key named `name`; returns the key, which is never stored."""
        if not KEY_NAME.fullmatch(name):
            raise InvalidInput(f"key name {name!r}: use up to 32 lowercase letters, digits, '-' "
                               "and '_', starting with a letter or digit")
        if max_queued is not None and max_queued < 1:
            raise InvalidInput(f"--max-queued {max_queued} must be 1 or more")
        table = self.table()
        if any(entry.name == name for entry in table.entries):
            raise InvalidInput(f"a key named {name!r} exists; revoke it first or choose another name")
        key = PREFIX + secrets.token_urlsafe(32)
        self._write([*table.entries, KeyEntry(name, digest(key), time.time(), max_queued)])
        return key

    def revoke(self, name: str) -> None:
        entries = self.table().entries
        if not any(entry.name == name for entry in entries):
            raise InvalidInput(f"no key named {name!r}")
        self._write([entry for entry in entries if entry.name != name])

    def _write(self, entries: list[KeyEntry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{KEYS_FILE}.{secrets.token_hex(4)}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"keys": KeyTable(entries).to_list()}, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.path)
