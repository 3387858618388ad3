"""Leases on what an owner may hold a few of at once: caps per owner and in all, renewals, the
lapse that frees a dead holder's slot, and a replica's side (renewed while it runs, released when
it ends, also when its client went)."""
from __future__ import annotations

import asyncio

import pytest

from raydemucs.core.errors import OverQuota, ServiceUnavailable
from raydemucs.http.leases import Lease
from raydemucs.scheduler.leases import STREAM, UPLOAD, Leases


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_owner_past_its_cap_is_refused_while_others_still_take_theirs():
    leases = Leases(30.0, Clock())
    first = leases.take(UPLOAD, "a", cap=2)
    leases.take(UPLOAD, "a", cap=2)
    with pytest.raises(OverQuota, match="2 upload"):
        leases.take(UPLOAD, "a", cap=2)
    leases.take(UPLOAD, "b", cap=2)
    leases.take(STREAM, "a", cap=2)  # another kind counts apart
    leases.release(first)
    leases.release(first)  # twice: nothing more
    assert leases.held(UPLOAD, "a") == 1
    leases.take(UPLOAD, "a", cap=2)


def test_all_owners_together_stop_at_the_total():
    leases = Leases(30.0, Clock())
    leases.take(STREAM, "a", cap=5, total=2)
    leases.take(STREAM, "b", cap=5, total=2)
    with pytest.raises(ServiceUnavailable):
        leases.take(STREAM, "c", cap=5, total=2)
    assert leases.count(STREAM) == 2


def test_a_lease_renewed_stays_and_one_left_alone_lapses():
    clock = Clock()
    leases = Leases(30.0, clock)
    kept, dropped = leases.take(STREAM, "a", cap=2), leases.take(STREAM, "a", cap=2)
    clock.now = 20.0
    assert leases.renew(kept)
    clock.now = 40.0  # the other's holder died at 0: it lapsed at 30
    assert leases.held(STREAM, "a") == 1
    assert not leases.renew(dropped) and leases.renew(kept)
    assert leases.held(STREAM, "a", besides=kept) == 0
    clock.now = 100.0
    assert leases.count(STREAM) == 0 and not leases.renew(kept)


class Scheduler:
    """The scheduler's lease calls as a replica makes them, recorded."""

    def __init__(self):
        self.calls: list[tuple] = []

    async def __call__(self, method: str, *args):
        self.calls.append((method, *args))
        return {"id": "stream-1", "renew_s": 0.02} if method == "take_lease" else True


def test_a_replica_renews_its_lease_while_it_runs_and_releases_it_even_when_cancelled():
    async def scenario():
        scheduler = Scheduler()
        lease = await Lease.take(scheduler, STREAM, "alice")
        started = asyncio.Event()

        async def stream():
            async with lease.held():
                started.set()
                await asyncio.sleep(60)  # a client that stays, until it goes

        running = asyncio.create_task(stream())
        await started.wait()
        while [call[0] for call in scheduler.calls].count("renew_lease") < 2:
            await asyncio.sleep(0.01)
        running.cancel()  # the client went
        await asyncio.gather(running, return_exceptions=True)
        await asyncio.sleep(0.05)
        renewals = len(scheduler.calls)
        await asyncio.sleep(0.1)
        return scheduler.calls, renewals

    calls, seen = asyncio.run(scenario())
    assert calls[0] == ("take_lease", STREAM, "alice", None)
    assert calls[-1] == ("release_lease", "stream-1") and len(calls) == seen  # no more renewals
