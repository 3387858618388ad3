"""What a request may name as its input: a URI under a storage prefix the operator allowed
(`http.inputs`), or a path whose real path lies under a root the operator allowed
(`http.allow_paths`) and outside the service's own folders.

Nothing is fetched or read to decide (a path's root is checked before its file is touched), and
each refusal is one line that reads the same whatever is, or is not, behind the name.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Sequence

from pydantic_core import PydanticCustomError

from .errors import InvalidInput
from .names import printable

SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https")  # storage we read
WEB = ("http", "https")
MAX_CHARS = 2048
URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
# No chain (`simplecache::`, `zip://a::file://`), query, fragment, user info or backslash, no
# control character, no percent-encoded dot, separator, percent or NUL.
TRICKS = re.compile(r"::|[?#@\\\x00-\x1f\x7f]|%(2e|2f|5c|25|00)", re.IGNORECASE)
PREFIX_FORM = (f"a storage prefix such as s3://bucket/folder/ or a whole scheme such as s3:// "
               f"({', '.join(SCHEMES)}), without '..', '::', '?', '#', '@' or escapes")


def uri_parts(text: str, prefix: bool = False) -> tuple[str, tuple[str, ...]] | None:
    """`(scheme, segments)` of a URI in a form an input (or, with `prefix`, an allowed prefix,
    which may end in '/' or be a bare scheme) may take; None for any other text."""
    found = URI.fullmatch(text) if isinstance(text, str) and len(text) <= MAX_CHARS else None
    if not found or TRICKS.search(text) or found.group(1).lower() not in SCHEMES:
        return None
    scheme, segments = found.group(1).lower(), found.group(2).split("/")
    if prefix and segments[-1] == "":
        segments.pop()
    if not (segments or prefix) or any(part in ("", ".", "..") for part in segments):
        return None
    if scheme in WEB and segments:
        segments[0] = segments[0].lower()  # the host and port
    return scheme, tuple(segments)


def under_prefix(uri: str, allowed: Iterable[str]) -> bool:
    """True when `uri` names an object below one of the `allowed` prefixes, whole segments
    matched (`s3://bucket` lets `s3://bucket/x` in, not `s3://bucket-other/x`)."""
    parts = uri_parts(uri)
    if parts is None:
        return False
    scheme, segments = parts
    for prefix in allowed:
        scope = uri_parts(prefix, prefix=True)
        if scope and scope[0] == scheme and len(segments) > len(scope[1]) \
                and segments[:len(scope[1])] == scope[1]:
            return True
    return False


def within(path: str, folder: str) -> bool:
    """True when `path` is `folder` or lies below it (both normalised, absolute)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def path_allowed(path: str, roots: Sequence[str], private: Sequence[str]) -> bool:
    """True when the absolute `path` lies under one of `roots`, on its face and once its
    symlinks are resolved, and in none of the `private` folders. Its face is checked first, so
    a path outside every root is refused before anything about it is looked up."""
    if "\x00" in path or ".." in path.split("/"):
        return False
    if not any(within(os.path.normpath(path), os.path.normpath(root)) for root in roots):
        return False
    real = os.path.realpath(path)
    return (any(within(real, os.path.realpath(root)) for root in roots)
            and not any(within(real, os.path.realpath(os.path.expanduser(folder)))
                        for folder in private))


def check_input(value: Any, allowed: Sequence[str], roots: Sequence[str],
                private: Sequence[str]) -> str:
    """`value` when a request may name it as its input: a URI under one of the `allowed`
    prefixes, or an absolute path under one of the `roots` (`http.allow_paths`) and in none of
    the `private` folders (the service's state and outputs). Else one `InvalidInput` line."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("field 'input' must be a URI such as s3://bucket/song.mp3")
    shown = printable(value if len(value) <= MAX_CHARS else f"{value[:80]}...")
    if value.startswith("/"):
        if not path_allowed(value, roots, private):
            raise InvalidInput(f"field 'input' {shown} is not under a directory this service "
                               "reads inputs from (http.allow_paths)")
    elif not under_prefix(value, allowed):
        raise InvalidInput(f"field 'input' {shown} is not under a storage prefix this service "
                           "reads inputs from (http.inputs)")
    return value


# -- the config's lists ----------------------------------------------------------------------------
def listed(value: Any) -> Any:
    """A list given as one string (an environment variable): its comma-separated items."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return () if value is None else value


def allowed_roots(value: Any) -> Any:
    """`http.allow_paths`: root directories; `false` (the old form) is none, `true` is refused."""
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "yes", "on")):
        raise PydanticCustomError("refused", "http.allow_paths takes the root directories "
                                  "requests may name inputs under (e.g. [/mnt/shared/music]), "
                                  "not true: list the roots")
    if value is False or (isinstance(value, str) and value.strip().lower() in ("false", "no",
                                                                               "off")):
        return ()
    return listed(value)


def check_root(root: str) -> str:
    if not root.startswith("/") or "\x00" in root or ".." in root.split("/"):
        raise PydanticCustomError("allowed", "; allowed: absolute directories such as "
                                  "/mnt/shared/music")
    return root


def check_prefix(prefix: str) -> str:
    if uri_parts(prefix, prefix=True) is None:
        raise PydanticCustomError("allowed", f"; allowed: {PREFIX_FORM}")
    return prefix
