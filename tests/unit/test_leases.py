"""Leases on what an owner may hold a few of at once: caps per owner and in all, renewals, and
the lapse that frees a dead holder's slot."""
from __future__ import annotations

import pytest

from raydemucs.core.errors import OverQuota, ServiceUnavailable
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
