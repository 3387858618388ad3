"""Leases on what an owner may hold a few of at once: caps per owner and in all, renewals, the
lapse that frees a dead holder's slot, and a replica's side (all its leases renewed in one call
while they run, each released when it ends, also when its client went)."""
from __future__ import annotations

import asyncio

import pytest

from raydemucs.core.errors import OverQuota, ServiceUnavailable
from raydemucs.http.leases import HeldLeases
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
        self.taken = 0

    async def __call__(self, method: str, *args):
        self.calls.append((method, *args))
        if method == "take_lease":
            self.taken += 1
            return {"id": f"stream-{self.taken}", "renew_s": 0.02}
        return [] if method == "renew_leases" else None


def test_a_replica_renews_its_leases_in_one_call_and_releases_each_even_when_cancelled():
    async def scenario():
        scheduler = Scheduler()
        leases = HeldLeases(scheduler)
        taken = [await leases.take(STREAM, "alice"), await leases.take(STREAM, "bob")]
        started = [asyncio.Event(), asyncio.Event()]

        async def stream(lease, started):
            async with lease.held():
                started.set()
                await asyncio.sleep(60)  # a client that stays, until it goes

        running = [asyncio.create_task(stream(*pair)) for pair in zip(taken, started)]
        await asyncio.gather(*(event.wait() for event in started))
        while [call[0] for call in scheduler.calls].count("renew_leases") < 2:
            await asyncio.sleep(0.01)
        for task in running:
            task.cancel()  # the clients went
        await asyncio.gather(*running, return_exceptions=True)
        await asyncio.sleep(0.05)
        renewals = len(scheduler.calls)
        await asyncio.sleep(0.1)
        return scheduler.calls, renewals

    calls, seen = asyncio.run(scenario())
    assert calls[:2] == [("take_lease", STREAM, "alice", None), ("take_lease", STREAM, "bob", None)]
    renewals = [call for call in calls if call[0] == "renew_leases"]
    assert renewals[0] == ("renew_leases", ["stream-1", "stream-2"])  # both in one call
    assert sorted(calls[-2:]) == [("release_lease", "stream-1"), ("release_lease", "stream-2")]
    assert len(calls) == seen  # no more renewals
