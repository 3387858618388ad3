"""Request bodies read within limits, without a server: sizes, the wait for the next bytes, the
whole body's time, and a multipart form's own parts (their count, their headers, what follows
its end)."""
from __future__ import annotations

import asyncio

import pytest

from raydemucs.core.config import HttpConfig
from raydemucs.core.errors import BodyTimeout, InputTooLarge, InvalidInput
from raydemucs.http.bodies import BodyLimits, read_chunks, read_json
from raydemucs.http.forms import EPILOGUE_BYTES, MAX_FIELDS, form_limits, read_form

LIMITS = BodyLimits(1000, read_timeout_s=0.2, total_s=5.0, what="the test limit")


async def body(*chunks: bytes, pause_s: float = 0.0):
    for chunk in chunks:
        await asyncio.sleep(pause_s)
        yield chunk


def read(stream, limits=LIMITS) -> list[bytes]:
    async def all_of():
        return [chunk async for chunk in read_chunks(stream, limits)]
    return asyncio.run(all_of())


def test_a_body_within_its_limits_is_read_whole():
    assert read(body(b"a" * 500, b"b" * 500)) == [b"a" * 500, b"b" * 500]
    assert asyncio.run(read_json(body(b'{"in', b'put": 1}'), LIMITS)) == {"input": 1}


def test_a_body_past_its_size_or_declared_so_is_refused():
    with pytest.raises(InputTooLarge, match="over the test limit"):
        read(body(*[b"x" * 300] * 4))
    with pytest.raises(InputTooLarge, match="1001 bytes"):
        LIMITS.check_declared("1001")
    LIMITS.check_declared("1000")
    LIMITS.check_declared(None)  # chunked: counted as it comes


def test_a_body_that_stalls_or_trickles_too_long_times_out():
    with pytest.raises(BodyTimeout, match="stopped arriving for 0.2 s"):
        read(body(b"a", b"b", pause_s=0.5))
    slow = BodyLimits(1000, read_timeout_s=0.2, total_s=0.3, what="the test limit")
    with pytest.raises(BodyTimeout, match="took over 0.3 s"):
        read(body(*[b"a"] * 10, pause_s=0.1), slow)


BOUNDARY = "b0undary"
KIND = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, value: bytes, *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n{extra}\r\n'
            .encode() + value + b"\r\n")


def parse(*chunks: bytes):
    async def kept(name, chunk):
        pass
    return asyncio.run(read_form(body(*chunks), KIND, 10_000, BodyLimits(
        200_000, 5.0, 5.0, "the form limit"), kept, 1024))


END = f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("chunks, error, message", [
    ((part("project", b"p") + END, b"\r\n", b"x" * (EPILOGUE_BYTES + 1)), InputTooLarge,
     "past the form's end"),
    ((b"".join(part(f"f{n}", b"v") for n in range(MAX_FIELDS + 2)) + END,), InvalidInput,
     "more than 65 parts"),
    ((part("project", b"p", *[f"X-{n}: v" for n in range(8)]) + END,), InvalidInput,
     "header count exceeded"),
    ((part("project", b"p", "X-Long: " + "v" * 5000) + END,), InvalidInput,
     "header size exceeded"),
], ids=["epilogue", "parts", "headers", "header_bytes"])
def test_a_forms_own_parts_are_capped(chunks, error, message):
    with pytest.raises(error, match=message):
        parse(*chunks)


def test_a_form_and_a_line_end_after_it_are_read():
    form = parse(part("project", b"p") + part("file", b"RIFF") + END, b"\r\n")
    assert form.fields == {"project": "p"} and form.file_name == "upload"


def test_a_declared_form_over_its_file_cap_is_refused_before_reading_in_megabytes():
    """A browser sends its whole form before it reads an answer: a declared length gets it one
    at once, in the units of the limit."""
    limits = form_limits(3 * 2**20, HttpConfig())
    limits.check_declared(str(3 * 2**20 + 2**15))  # a file at its cap and a form's few fields
    with pytest.raises(InputTooLarge, match=r"^the body is 3\.4 MB, over the 3 MB limit "
                                            r"\(input\.max_file_mb\)$"):
        limits.check_declared(str(int(3.4 * 2**20)))
