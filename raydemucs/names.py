"""Project names and file ids: safe as one folder name each, on any platform."""
from __future__ import annotations

import unicodedata

from .errors import InvalidName

MAX_NAME_CHARS = 128
_PUNCTUATION = frozenset(" ._-")


def _allowed(char: str) -> bool:
    category = unicodedata.category(char)
    return char in _PUNCTUATION or category[0] in "LNM"


def check_name(kind: str, value: object) -> str:
    """Return `value` if it is a valid project name or file id, else raise `InvalidName`.

    Letters of any script, digits, combining marks, spaces, `.`, `_` and `-` are allowed; path
    separators (and look-alikes, which are not letters), `..`, a leading dot, control characters,
    surrounding spaces and names over 128 characters are not.
    """
    if not isinstance(value, str) or not value:
        raise InvalidName(f"{kind} must be a non-empty string")
    shown = ascii(value) if len(value) <= 40 else ascii(value[:40]) + "..."
    if len(value) > MAX_NAME_CHARS:
        raise InvalidName(f"{kind} {shown} is longer than {MAX_NAME_CHARS} characters")
    bad = next((c for c in value if not _allowed(c)), None)
    if bad is not None:
        raise InvalidName(f"{kind} {shown} holds {ascii(bad)}; allowed are letters, digits, "
                          "spaces, '.', '_' and '-'")
    if value.startswith(".") or ".." in value:
        raise InvalidName(f"{kind} {shown} may not start with '.' or hold '..'")
    if value != value.strip():
        raise InvalidName(f"{kind} {shown} may not start or end with a space")
    return value


def name_from_filename(stem: str) -> str:
    """A valid file id derived from an input file's name (other characters become `_`)."""
    cleaned = "".join(c if _allowed(c) else "_" for c in stem)
    while ".." in cleaned:
        cleaned = cleaned.replace("..", ".")
    return cleaned[:MAX_NAME_CHARS].lstrip(". ").rstrip() or "audio"
