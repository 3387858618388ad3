"""A request's body read as it arrives, within limits: its size (whatever Content-Length says,
chunked or not), the wait for its next bytes, and the time all of it takes."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import AsyncIterator

from ..core.config import HttpConfig
from ..core.errors import BodyTimeout, InputTooLarge, InvalidInput


@dataclass(frozen=True)
class BodyLimits:
    """What one body may be: `max_bytes` long, `read_timeout_s` between its chunks, `total_s`
    in all; `what` names the limit in messages ("the 64 KB limit (http.max_json_kb)")."""

    max_bytes: int
    read_timeout_s: float
    total_s: float
    what: str
    declared_max: int | None = None  # a declared length refused before reading (default max)

    @classmethod
    def json(cls, http: HttpConfig) -> BodyLimits:
        return cls(int(http.max_json_kb * 1024), http.read_timeout_s, http.body_timeout_s,
                   f"the {http.max_json_kb:g} KB limit (http.max_json_kb)")

    def check_declared(self, content_length: str | None) -> None:
        """Refuse a body whose Content-Length is over the limit before reading any of it (a
        client that sends its body whole before it reads an answer gets it at once)."""
        limit = self.declared_max or self.max_bytes
        if content_length and content_length.isdigit() and int(content_length) > limit:
            raise InputTooLarge(f"the body is {size_text(int(content_length))}, over {self.what}")


def size_text(size: int) -> str:
    """`size` bytes for people: 3.4 MB, 70.0 KB, 512 bytes."""
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


async def read_chunks(stream: AsyncIterator[bytes], limits: BodyLimits) -> AsyncIterator[bytes]:
    """The chunks of `stream` (a request's), `InputTooLarge` past `limits.max_bytes` in all and
    `BodyTimeout` when the next chunk is slow to come or the whole body too slow to end."""
    chunks, size = aiter(stream), 0
    deadline = time.monotonic() + limits.total_s
    while True:
        wait_s = min(limits.read_timeout_s, deadline - time.monotonic())
        try:
            chunk = await asyncio.wait_for(anext(chunks), max(wait_s, 0.0))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise BodyTimeout(_late(limits, deadline)) from None
        size += len(chunk)
        if size > limits.max_bytes:
            raise InputTooLarge(f"the body is over {limits.what}")
        yield chunk


def _late(limits: BodyLimits, deadline: float) -> str:
    if time.monotonic() >= deadline:
        return (f"the body took over {limits.total_s:g} s to arrive (http.body_timeout_s); "
                "send it faster")
    return (f"the body stopped arriving for {limits.read_timeout_s:g} s (http.read_timeout_s); "
            "send it again")


async def read_json(stream: AsyncIterator[bytes], limits: BodyLimits) -> object:
    """A JSON body, read within `limits`."""
    body = bytearray()
    async for chunk in read_chunks(stream, limits):
        body += chunk
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not valid JSON") from None
