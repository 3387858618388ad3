"""API keys for the HTTP front door: only their SHA-256 is kept, in the service's state directory.

`python -m raydemucs keys add NAME` writes `STATE_DIR/api-keys.json` (mode 0600) on the machine
that holds the state directory (the head node); the running service rereads it when it changes.
A key is `rdk_` and 43 URL-safe characters (256 random bits), so a plain SHA-256 is a safe digest.

Each key has a random `id`, the owner of its tasks: a new key given a revoked key's name owns
none of the old one's tasks (entries written before ids keep their name as the owner). A key's
role is `tenant` (its own tasks, its own view of the service) or `operator` (every owner's view
of the service), and its ceilings bound what its tasks may ask for.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InvalidInput, OverCeiling
from .inputs import PREFIX_FORM, uri_parts
from .statedir import private_dir, write_private
from .task import PRIORITIES, TaskSpec, priority_name

KEYS_FILE = "api-keys.json"
PREFIX = "rdk_"
KEY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
ROLES = ("tenant", "operator")
MAX_SHIFTS, MAX_OVERLAP = 100, 0.99  # separation.shifts and .overlap's own ranges


@dataclass(frozen=True)
class Ceilings:
    """The most a key's tasks may ask for (None: what the service allows anyone)."""

    max_priority: str = "high"
    max_shifts: int | None = None
    max_overlap: float | None = None

    def check(self, spec: TaskSpec) -> None:
        """`OverCeiling` when the task asks for more than these allow."""
        if spec.priority < PRIORITIES[self.max_priority]:
            raise OverCeiling(f"priority {priority_name(spec.priority)} is above this key's "
                              f"ceiling ({self.max_priority})")
        for field, ceiling in (("shifts", self.max_shifts), ("overlap", self.max_overlap)):
            asked = getattr(spec.options, field)
            if ceiling is not None and asked > ceiling:
                raise OverCeiling(f"{field} {asked:g} is above this key's ceiling ({ceiling:g})")


@dataclass(frozen=True)
class KeyEntry:
    name: str
    sha256: str
    created_at: float
    max_queued: int | None = None  # unfinished tasks this key may have at once (None: no cap)
    id: str | None = None  # the owner of its tasks; None in files written before ids (the name)
    role: str = "tenant"
    max_priority: str = "normal"
    max_shifts: int | None = None
    max_overlap: float | None = None
    inputs: list[str] | None = None  # the input URI prefixes it may name (None: the service's)

    @property
    def owner(self) -> str:
        return self.id or self.name

    @property
    def ceilings(self) -> Ceilings:
        return Ceilings(self.max_priority, self.max_shifts, self.max_overlap)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def checked_entry(entry: KeyEntry) -> KeyEntry:
    """`entry` with its name, role and ceilings checked (`InvalidInput` naming the option)."""
    if not KEY_NAME.fullmatch(entry.name):
        raise InvalidInput(f"key name {entry.name!r}: use up to 32 lowercase letters, digits, '-' "
                           "and '_', starting with a letter or digit")
    if entry.max_queued is not None and entry.max_queued < 1:
        raise InvalidInput(f"--max-queued {entry.max_queued} must be 1 or more")
    if entry.role not in ROLES:
        raise InvalidInput(f"--role {entry.role!r}: use {' or '.join(ROLES)}")
    if entry.max_priority not in PRIORITIES:
        raise InvalidInput(f"--max-priority {entry.max_priority!r}: use {', '.join(PRIORITIES)}")
    if entry.max_shifts is not None and not 0 <= entry.max_shifts <= MAX_SHIFTS:
        raise InvalidInput(f"--max-shifts {entry.max_shifts} must be between 0 and {MAX_SHIFTS}")
    if entry.max_overlap is not None and not 0 <= entry.max_overlap <= MAX_OVERLAP:
        raise InvalidInput(f"--max-overlap {entry.max_overlap:g} must be between 0 and "
                           f"{MAX_OVERLAP:g}")
    if entry.inputs is not None and not all(isinstance(p, str) and uri_parts(p, prefix=True)
                                            for p in entry.inputs):
        raise InvalidInput(f"--input takes {PREFIX_FORM}")
    return entry


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

    def named(self, name: str) -> KeyEntry:
        found = next((entry for entry in self.entries if entry.name == name), None)
        if found is None:
            raise InvalidInput(f"no key named {name!r}")
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

    def add(self, name: str, max_queued: int | None = None, **options) -> str:
        """Create a key named `name` with a new id, and `KeyEntry`'s role, ceilings and inputs
        as `options`; returns the key, which is never stored."""
        key = PREFIX + secrets.token_urlsafe(32)
        entry = checked_entry(KeyEntry(name, digest(key), time.time(), max_queued,
                                       id=f"key_{secrets.token_hex(8)}", **options))
        table = self.table()
        if any(known.name == name for known in table.entries):
            raise InvalidInput(f"a key named {name!r} exists; revoke it first or choose another "
                               "name")
        self._write([*table.entries, entry])
        return key

    def revoke(self, name: str) -> None:
        entries = self.table().entries
        if not any(entry.name == name for entry in entries):
            raise InvalidInput(f"no key named {name!r}")
        self._write([entry for entry in entries if entry.name != name])

    def _write(self, entries: list[KeyEntry]) -> None:
        private_dir(self.path.parent)
        write_private(self.path, json.dumps({"keys": KeyTable(entries).to_list()}, indent=2))
