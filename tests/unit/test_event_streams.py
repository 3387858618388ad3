"""What an HTTP event stream sends while idle: a comment line at most every `KEEPALIVE_S`, its
turns spread so that streams opened together do not wake together."""
from __future__ import annotations

import asyncio

from raydemucs.http import streams

from fakes import FakeClock


def test_an_idle_stream_sends_a_comment_line_only_every_keepalive():
    clock = FakeClock()
    keepalive = streams.KEEPALIVE_S
    made = [(0.0, ": watching\n\n"), (3.0, ": waiting\n\n"), (4.0, "event: task\n\n"),
            (10.0, ": waiting\n\n"), (4.0 + keepalive, ": waiting\n\n"),
            (5.0 + keepalive, ": waiting\n\n"), (5.5 + keepalive, "event: task\n\n")]

    async def chunks():
        for at, chunk in made:
            clock.now = at
            yield chunk

    async def sent():
        return [(clock.now, chunk) async for chunk in streams.sparse(chunks(), clock)]

    assert asyncio.run(sent()) == [made[0], made[2], made[4], made[6]]


def test_streams_turn_at_most_every_events_wait_and_not_together():
    turns = [streams.turn_s() for _ in range(200)]
    assert all(streams.EVENTS_WAIT_S / 2 <= turn <= streams.EVENTS_WAIT_S for turn in turns)
    assert max(turns) - min(turns) > streams.EVENTS_WAIT_S / 4
