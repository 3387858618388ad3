"""Inputs and outputs that are not on the worker's disk: fsspec URIs such as `s3://bucket/key`.

Workers read and write them directly (credentials come from each node's usual places: AWS_*
variables, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS). This module opens URIs and reads inputs;
remote output folders are `raydemucs.storage.folders.RemoteFolder`s. An http(s) input is fetched
from public addresses only (`core.addresses`), its redirects not followed, and a failed fetch
says no more than that (no fetch could probe the network through its messages).
"""
from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from ..core.addresses import guarded_resolver, host_refusal
from ..core.config import StorageConfig
from ..core.errors import InvalidInput, OutputNotWritable, StorageUnavailable
from ..core.inputs import WEB
from ..core.names import printable

SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
LOCAL_PROTOCOLS = ("file", "local")
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def is_uri(location: str | Path) -> bool:
    """True for `s3://...`, `gs://...` and other fsspec URIs; False for local paths and file://."""
    found = SCHEME.match(str(location))
    return bool(found) and found.group(1).lower() not in LOCAL_PROTOCOLS


def local_path(location: str | Path) -> Path:
    """A local path, given as a path or a `file://` URI."""
    text = str(location)
    return Path(text.split("://", 1)[1] if SCHEME.match(text) else text).expanduser().absolute()


async def _refuse_redirects(response) -> None:
    if 300 <= response.status < 400:
        raise FileNotFoundError("redirects are not followed")


async def guarded_session(**options):
    """fsspec's aiohttp session for http(s) inputs: it connects to public addresses only and
    follows no redirects."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=guarded_resolver()),
                                 raise_for_status=_refuse_redirects, **options)


def not_fetched(uri: str) -> InvalidInput:
    return InvalidInput(f"{printable(uri)} could not be fetched (missing, or not at a public "
                        "address)")


def missing(uri: str) -> InvalidInput:
    """The refusal of an input that is not there (an http(s) one: or not reachable, unsaid)."""
    return not_fetched(uri) if is_web(uri) else InvalidInput(f"{printable(uri)} does not exist")


def open_uri(uri: str, storage: StorageConfig):
    """`(filesystem, path)` for `uri`, with a one-line error when its protocol is not installed."""
    import fsspec

    protocol = SCHEME.match(uri).group(1).lower()
    options = {"use_listings_cache": False}
    if storage.endpoint_url and protocol in ("s3", "s3a"):
        options["endpoint_url"] = storage.endpoint_url
    if protocol in WEB:
        host = urllib.parse.urlsplit(uri).hostname
        if not host or host_refusal(host):  # an address: aiohttp asks no resolver
            raise not_fetched(uri)
        options.update(get_client=guarded_session, allow_redirects=False)
    try:
        return fsspec.core.url_to_fs(uri, **options)
    except ImportError:
        extra = EXTRAS.get(protocol)
        hint = f"pip install 'raydemucs[{extra}]'" if extra else f"install fsspec's {protocol} support"
        raise InvalidInput(f"{printable(uri)}: {protocol}:// storage is not installed here "
                           f"({hint})") from None
    except ValueError:
        raise InvalidInput(f"{printable(uri)}: unknown storage protocol {protocol!r}") from None


def reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def is_web(uri: str) -> bool:
    found = SCHEME.match(uri)
    return bool(found) and found.group(1).lower() in WEB


def unreachable(uri: str, exc: Exception) -> StorageUnavailable:
    if is_web(uri):  # what failed (refused, no answer, a closed port) stays here
        return StorageUnavailable(f"{printable(uri)} could not be fetched")
    return StorageUnavailable(f"storage at {printable(uri)} failed: {reason(exc)}")


def input_size(uri: str, storage: StorageConfig) -> int:
    """Size in bytes of the object at `uri`; `InvalidInput` if it is missing or not a file."""
    fs, path = open_uri(uri, storage)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise missing(uri) from None
    except PermissionError:
        raise InvalidInput(f"{printable(uri)} is not readable (permission denied)") from None
    except Exception as exc:
        raise unreachable(uri, exc) from None
    if info.get("type") != "file":
        raise InvalidInput(f"{printable(uri)} is not a file")
    return int(info.get("size") or 0)


def download(uri: str, target: Path, storage: StorageConfig) -> Path:
    """Copy the object at `uri` to the local file `target`."""
    fs, path = open_uri(uri, storage)
    try:
        fs.get_file(path, str(target))
    except FileNotFoundError:
        raise missing(uri) from None
    except Exception as exc:
        raise unreachable(uri, exc) from None
    return target


def check_writable(output_dir: str, storage: StorageConfig) -> None:
    """Write and delete a probe object under `output_dir`, or raise `OutputNotWritable`."""
    fs, path = open_uri(output_dir, storage)
    probe = f"{path.rstrip('/')}/.raydemucs-probe"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:
        raise OutputNotWritable(f"output directory {printable(output_dir)} is not writable: "
                                f"{reason(exc)}") from None
