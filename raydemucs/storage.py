"""Inputs and outputs that are not on the worker's disk: fsspec URIs such as `s3://bucket/key`.

Workers read and write them directly (credentials come from each node's usual places: AWS_*
variables, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS). A remote output folder is written like a
local one, then published: stems first, `manifest.json` last, so a folder with a manifest is
complete.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .config import StorageConfig
from .errors import InvalidInput, OutputNotWritable, StorageUnavailable
from .names import check_name, printable
from . import outputs as local_outputs
from .outputs import MANIFEST, complete_stems, copy_outputs, stem_locations

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


def open_uri(uri: str, storage: StorageConfig):
    """`(filesystem, path)` for `uri`, with a one-line error when its protocol is not installed."""
    import fsspec

    protocol = SCHEME.match(uri).group(1).lower()
    options = {"use_listings_cache": False}
    if storage.endpoint_url and protocol in ("s3", "s3a"):
        options["endpoint_url"] = storage.endpoint_url
    try:
        return fsspec.core.url_to_fs(uri, **options)
    except ImportError:
        extra = EXTRAS.get(protocol)
        hint = f"pip install 'raydemucs[{extra}]'" if extra else f"install fsspec's {protocol} support"
        raise InvalidInput(f"{printable(uri)}: {protocol}:// storage is not installed here "
                           f"({hint})") from None
    except ValueError:
        raise InvalidInput(f"{printable(uri)}: unknown storage protocol {protocol!r}") from None


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _unreachable(uri: str, exc: Exception) -> StorageUnavailable:
    return StorageUnavailable(f"storage at {printable(uri)} failed: {_reason(exc)}")


def input_size(uri: str, storage: StorageConfig) -> int:
    """Size in bytes of the object at `uri`; `InvalidInput` if it is missing or not a file."""
    fs, path = open_uri(uri, storage)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise InvalidInput(f"{printable(uri)} does not exist") from None
    except PermissionError:
        raise InvalidInput(f"{printable(uri)} is not readable (permission denied)") from None
    except Exception as exc:
        raise _unreachable(uri, exc) from None
    if info.get("type") != "file":
        raise InvalidInput(f"{printable(uri)} is not a file")
    return int(info.get("size") or 0)


def download(uri: str, target: Path, storage: StorageConfig) -> Path:
    """Copy the object at `uri` to the local file `target`."""
    fs, path = open_uri(uri, storage)
    try:
        fs.get_file(path, str(target))
    except FileNotFoundError:
        raise InvalidInput(f"{printable(uri)} does not exist") from None
    except Exception as exc:
        raise _unreachable(uri, exc) from None
    return target


def output_folder(output_dir: str, project: str, file_id: str) -> str:
    """`OUTPUT_DIR/PROJECT/FILE_ID` for a URI: the names are checked, so nothing climbs out."""
    check_name("project name", project)
    check_name("file id", file_id)
    return f"{output_dir.rstrip('/')}/{project}/{file_id}"


def check_writable(output_dir: str, storage: StorageConfig) -> None:
    """Write and delete a probe object under `output_dir`, or raise `OutputNotWritable`."""
    fs, path = open_uri(output_dir, storage)
    probe = f"{path.rstrip('/')}/.raydemucs-probe"
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:
        raise OutputNotWritable(f"output directory {printable(output_dir)} is not writable: "
                                f"{_reason(exc)}") from None


def read_manifest(folder: str, storage: StorageConfig) -> dict | None:
    fs, path = open_uri(folder, storage)
    try:
        return json.loads(fs.cat_file(f"{path}/{MANIFEST}"))
    except (FileNotFoundError, ValueError):
        return None
    except Exception as exc:
        raise _unreachable(folder, exc) from None


def _sizes_at(folder: str, storage: StorageConfig):
    """`size_of` for `outputs.complete_stems` in a remote folder."""
    fs, path = open_uri(folder, storage)

    def size_of(name: str) -> int | None:
        try:
            return fs.info(f"{path}/{name}").get("size")
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise _unreachable(folder, exc) from None
    return size_of


def output_is_complete(folder: str, storage: StorageConfig, task_id: str | None = None) -> bool:
    """Like `outputs.output_is_complete`, for a remote folder: a manifest and whole stems."""
    return complete_stems(read_manifest(folder, storage), task_id, _sizes_at(folder, storage))


def publish(local_folder: Path, folder: str, storage: StorageConfig) -> dict[str, str]:
    """Upload a complete local output folder to `folder`: stems first, the manifest last.

    The old manifest is removed first, so a reader never pairs it with half-replaced stems.
    Returns `{stem: uri}`.
    """
    fs, path = open_uri(folder, storage)
    manifest = json.loads((local_folder / MANIFEST).read_text())
    try:
        if fs.exists(f"{path}/{MANIFEST}"):
            fs.rm_file(f"{path}/{MANIFEST}")
        for entry in manifest["stems"].values():
            fs.put_file(str(local_folder / entry["file"]), f"{path}/{entry['file']}")
        fs.put_file(str(local_folder / MANIFEST), f"{path}/{MANIFEST}")
    except Exception as exc:
        raise _unreachable(folder, exc) from None
    return stem_locations(manifest, folder)


def download_output(folder: str, target: Path, storage: StorageConfig) -> dict[str, str]:
    """Copy a complete remote output folder to the local folder `target`, checksums verified."""
    manifest = read_manifest(folder, storage)
    if not manifest:
        raise InvalidInput(f"{printable(folder)} holds no complete output (no {MANIFEST})")
    fs, path = open_uri(folder, storage)

    def fill(file_name: str, local: Path) -> None:
        try:
            fs.get_file(f"{path}/{file_name}", str(local))
        except Exception as exc:
            raise _unreachable(folder, exc) from None

    return copy_outputs(target, manifest, fill)


def finished_outputs(folder: Path | str, config: StorageConfig, task_id: str) -> dict[str, str] | None:
    """`{stem: location}` when `folder`, local or remote, already holds this task's complete
    stems (a crash came after the write); None otherwise, also when storage cannot be reached."""
    try:
        if isinstance(folder, Path):
            manifest, sizes = local_outputs.read_manifest(folder), local_outputs.sizes_in(folder)
        else:
            manifest, sizes = read_manifest(folder, config), _sizes_at(folder, config)
        return stem_locations(manifest, folder) if complete_stems(manifest, task_id, sizes) else None
    except StorageUnavailable:
        return None
