"""Project names and file ids: safe as one folder name each, on any platform."""
from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

from .errors import InvalidName

MAX_NAME_CHARS = 128
# A folder name holds at most 255 bytes; the staging folder `.{name}.{8 hex}.tmp` adds 14.
MAX_NAME_BYTES = 240
_PUNCTUATION = frozenset(" ._-")
_PLAIN = re.compile(r"[A-Za-z0-9 ._-]*")  # allowed without asking Unicode (a batch has many)
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


def _allowed(char: str) -> bool:
    category = unicodedata.category(char)
    return char in _PUNCTUATION or category[0] in "LNM"


def check_name(kind: str, value: object) -> str:
    """Return `value` if it is a valid project name or file id, else raise `InvalidName`.

    Letters of any script, digits, combining marks, spaces, `.`, `_` and `-` are allowed; path
    separators (and look-alikes, which are not letters), `..`, a leading dot, control characters,
    surrounding spaces, names over 128 characters and names over 240 bytes in UTF-8 are not.
    """
    if not isinstance(value, str) or not value:
        raise InvalidName(f"{kind} must be a non-empty string")
    shown = ascii(value) if len(value) <= 40 else ascii(value[:40]) + "..."
    if len(value) > MAX_NAME_CHARS:
        raise InvalidName(f"{kind} {shown} is longer than {MAX_NAME_CHARS} characters")
    bad = None if _PLAIN.fullmatch(value) else next((c for c in value if not _allowed(c)), None)
    if bad is not None:
        raise InvalidName(f"{kind} {shown} holds {ascii(bad)}; allowed are letters, digits, "
                          "spaces, '.', '_' and '-'")
    if value.startswith(".") or ".." in value:
        raise InvalidName(f"{kind} {shown} may not start with '.' or hold '..'")
    if value != value.strip():
        raise InvalidName(f"{kind} {shown} may not start or end with a space")
    size = len(value.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise InvalidName(f"{kind} {shown} takes {size} bytes in UTF-8, over the "
                          f"{MAX_NAME_BYTES}-byte limit of a folder name")
    return value


def check_task_names(project: str, file_id: str) -> None:
    """A task's project name and file id, each checked by `check_name`."""
    check_name("project name", project)
    check_name("file id", file_id)


def name_from_filename(stem: str) -> str:
    """A valid file id derived from an input file's name (other characters become `_`)."""
    cleaned = "".join(c if _allowed(c) else "_" for c in stem)
    while ".." in cleaned:
        cleaned = cleaned.replace("..", ".")
    cleaned = cleaned[:MAX_NAME_CHARS]
    while len(cleaned.encode("utf-8")) > MAX_NAME_BYTES:
        cleaned = cleaned[:-1]
    return cleaned.lstrip(". ").rstrip() or "audio"


def printable(value: object) -> str:
    """`value` as text fit for a one-line message: as is if printable, else escaped by `ascii`."""
    text = str(value)
    return text if text.isprintable() else ascii(text)


def stored_name(stem: str, file_name: str) -> str:
    """`stem` with the suffix of `file_name` (the name a file came with) when it is a plain one
    (a dot and up to 8 letters or digits): how an input's bytes are named where they are kept,
    so that decoders that go by the suffix still can."""
    suffix = PurePosixPath(file_name.replace("\\", "/")).suffix
    return stem + (suffix if _SUFFIX.fullmatch(suffix) else "")
