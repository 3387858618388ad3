"""A multipart/form-data body read as it streams: small fields kept, the `file` part handed on in
chunks (never whole in memory, spooled to the replica's disk), its size capped and its SHA-256
computed on the way. The form's own parts are capped too: their number, and what follows its
closing boundary (python-multipart caps each part's headers: 8, of 4 KB each)."""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from python_multipart.multipart import MultipartParser, parse_options_header

from ..audio.checks import validate_input
from ..core.config import HttpConfig, InputConfig
from ..core.errors import InputTooLarge, InvalidInput, RayDemucsError
from ..core.names import stored_name
from .bodies import BodyLimits, read_chunks

FIELD_BYTES = 4096  # a form field longer than this is no option of ours
MAX_FIELDS = 64
EPILOGUE_BYTES = 4096  # after the closing boundary (a client sends a line end, if anything)
FORM_BYTES = 1 << 19  # a form's own bytes beside its file: fields, headers, boundaries
DECLARED_FORM_BYTES = 1 << 16  # what a declared length may add to the file's cap (a real form's)


def form_limits(max_file_bytes: int, http: HttpConfig) -> BodyLimits:
    """What a form whose file may be `max_file_bytes` may be, all of it."""
    return BodyLimits(max_file_bytes + FORM_BYTES, http.read_timeout_s, http.body_timeout_s,
                      f"the {max_file_bytes / 2**20:g} MB limit (input.max_file_mb)",
                      declared_max=max_file_bytes + DECLARED_FORM_BYTES)


@dataclass
class Form:
    """What a streamed form held: its fields, and its file's name, size and SHA-256."""

    fields: dict = field(default_factory=dict)
    file_name: str | None = None
    size: int = 0
    sha256: str = ""


class _Events:
    """python-multipart's callbacks, queued so they can be handled with `await`."""

    def __init__(self):
        self.queue: list[tuple] = []
        self.ended = False  # the closing boundary came
        self._header: list[bytes] = [b"", b""]
        self._parts = self._epilogue = 0

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._add(0, data[start:end]),
                "on_header_value": lambda data, start, end: self._add(1, data[start:end]),
                "on_header_end": self._header_end,
                "on_part_data": lambda data, start, end: self.queue.append(
                    ("data", bytes(data[start:end]))),
                "on_part_end": lambda: self.queue.append(("end",)),
                "on_end": self._end}

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_FIELDS + 1:
            raise InvalidInput(f"the form holds more than {MAX_FIELDS + 1} parts "
                               f"(a file and {MAX_FIELDS} fields)")
        self.queue.append(("begin",))

    def _add(self, index: int, data: bytes) -> None:
        self._header[index] += data

    def _header_end(self) -> None:
        name, value = self._header
        self._header = [b"", b""]
        self.queue.append(("header", name.decode("latin-1").lower(), value))

    def _end(self) -> None:
        self.ended = True

    def past_end(self, data: bytes) -> bool:
        """Whether `data` came after the closing boundary: read and counted, `InputTooLarge`
        past `EPILOGUE_BYTES`."""
        if not self.ended:
            return False
        self._epilogue += len(data)
        if self._epilogue > EPILOGUE_BYTES:
            raise InputTooLarge(f"the body goes on past the form's end (over {EPILOGUE_BYTES} "
                                "bytes after its closing boundary)")
        return True

    def take(self) -> list[tuple]:
        events, self.queue = self.queue, []
        return events


def _boundary(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidInput("the body is not multipart/form-data with a boundary")
    return boundary


async def read_form(stream, content_type: str, max_bytes: int, limits: BodyLimits,
                    on_chunk: Callable[[str, bytes], Awaitable[None]], chunk_bytes: int) -> Form:
    """Read a multipart body from `stream` (the request's chunks) within `limits`; the part
    named `file` goes to `on_chunk(file name, chunk)` in chunks of about `chunk_bytes`.
    `InputTooLarge` past `max_bytes` of file, or more than a few KB after the form's end."""
    events, form = _Events(), Form()
    parser = MultipartParser(_boundary(content_type), events.callbacks())
    digest, pending = hashlib.sha256(), bytearray()
    part: dict = {}
    async for received in read_chunks(stream, limits):
        if events.past_end(received):
            continue
        _write(parser, received)
        for event in events.take():
            if event[0] == "begin":
                part = {"name": None, "file": None, "value": bytearray()}
            elif event[0] == "header" and event[1] == "content-disposition":
                _, params = parse_options_header(event[2])
                part["name"] = params.get(b"name", b"").decode("utf-8", "replace")
                part["file"] = params.get(b"filename", b"").decode("utf-8", "replace") or None
            elif event[0] == "data" and part.get("name") == "file":
                form.size += len(event[1])
                if form.size > max_bytes:
                    raise InputTooLarge(f"the file is over {limits.what}")
                digest.update(event[1])
                pending += event[1]
                if len(pending) >= chunk_bytes:
                    await on_chunk(part["file"] or "upload", bytes(pending))
                    pending.clear()
            elif event[0] == "data":
                part["value"] += event[1]
                if len(part["value"]) > FIELD_BYTES:
                    raise InvalidInput(f"form field {part['name']!r} is longer than {FIELD_BYTES} bytes")
            elif event[0] == "end":
                _end_part(form, part)
    parser.finalize()
    if pending:
        await on_chunk(form.file_name or "upload", bytes(pending))

    form.sha256 = digest.hexdigest()
    return form


def _write(parser: MultipartParser, data: bytes) -> None:
    try:
        parser.write(data)
    except RayDemucsError:  # a limit of ours, from a callback
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise InvalidInput(f"the multipart body is malformed: {exc}") from None


def _end_part(form: Form, part: dict) -> None:
    name = part.get("name")
    if not name:
        raise InvalidInput("a form part has no name")
    if name == "file":
        if form.file_name is not None:
            raise InvalidInput("the form holds two `file` parts; send one file per task")
        form.file_name = part["file"] or "upload"
        return
    if name in form.fields:
        raise InvalidInput(f"form field {name!r} is given twice")
    if len(form.fields) >= MAX_FIELDS:
        raise InvalidInput(f"the form holds more than {MAX_FIELDS} fields")
    try:
        form.fields[name] = part["value"].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"form field {name!r} is not UTF-8 text") from None


class Spool:
    """An uploaded file kept on this replica's disk while its form arrives: the body is read as
    fast as it comes (Serve's proxy and replica queue what a slow reader leaves), checked here,
    then sent on to the service's store in chunks."""

    def __init__(self, folder: Path):
        self.folder, self.path, self.size = folder, None, 0

    async def write(self, file_name: str, chunk: bytes) -> None:
        if self.path is None:
            self.path = self.folder / stored_name("upload", file_name)
        self.size += len(chunk)
        await asyncio.to_thread(_append, self.path, chunk)

    def validate(self, name: str, limits: InputConfig) -> float:
        """submit's checks of the file (its duration); messages name it `name`, not the spool."""
        try:
            return validate_input(self.path, limits)
        except InvalidInput as exc:
            raise type(exc)(str(exc).replace(str(self.path), name)) from None

    async def chunks(self, chunk_bytes: int) -> AsyncIterator[bytes]:
        with open(self.path, "rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, chunk_bytes):
                yield chunk


def _append(path: Path, chunk: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(chunk)
