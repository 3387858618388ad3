"""Leases on what an owner may hold only a few of at once (uploads, event streams), counted by
the scheduler so that the limits hold across replicas. A holder renews its lease while it runs
and releases it when it ends; a lease whose holder died (a replica lost) lapses `ttl_s` after
its last renewal, so that no slot leaks."""
from __future__ import annotations

import itertools
import time
from typing import Callable

from ..core.errors import OverQuota, ServiceUnavailable

UPLOAD, STREAM = "upload", "stream"
LEASE_TTL_S = 30.0  # a lease lapses this long after it was taken or last renewed
NOUNS = {UPLOAD: "upload(s) in progress", STREAM: "event stream(s) open"}


class Leases:
    """The leases held now, by kind and owner; `clock` is injected (tests step it)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        self._held: dict[tuple[str, str], dict[str, float]] = {}  # -> lease id -> expiry
        self._holders: dict[str, tuple[str, str]] = {}  # lease id -> (kind, owner)
        self._ids = itertools.count(1)

    def take(self, kind: str, owner: str, cap: int, total: int | None = None) -> str:
        """A new lease of `owner`'s on one of `kind`: `OverQuota` when it holds `cap` already,
        `ServiceUnavailable` when all owners together hold `total`."""
        held = self.held(kind, owner)
        if held >= cap:
            raise OverQuota(f"this key has {held} {NOUNS[kind]} and may have {cap} at once; "
                            "try again when one has ended")
        if total is not None and self.count(kind) >= total:
            raise ServiceUnavailable(f"the service has {total} {NOUNS[kind]}, as many as it "
                                     "holds; try again later")
        lease_id = f"{kind}-{next(self._ids)}"
        self._held.setdefault((kind, owner), {})[lease_id] = self.clock() + self.ttl_s
        self._holders[lease_id] = (kind, owner)
        return lease_id

    def renew(self, lease_id: str) -> bool:
        """Keep a lease another `ttl_s`; False when it lapsed or was released."""
        holder = self._holders.get(lease_id)
        if holder is None:
            return False
        self._lapse(holder)
        if lease_id not in self._holders:
            return False
        self._held[holder][lease_id] = self.clock() + self.ttl_s
        return True

    def release(self, lease_id: str) -> None:
        """End a lease (one that lapsed or ended already: nothing to do)."""
        holder = self._holders.pop(lease_id, None)
        if holder is not None:
            leases = self._held[holder]
            del leases[lease_id]
            if not leases:
                del self._held[holder]

    def held(self, kind: str, owner: str, besides: str | None = None) -> int:
        """How many leases on `kind` `owner` holds, other than `besides`."""
        self._lapse((kind, owner))
        leases = self._held.get((kind, owner), {})
        return len(leases) - (besides in leases)

    def count(self, kind: str) -> int:
        """How many leases on `kind` all owners hold."""
        for holder in [holder for holder in self._held if holder[0] == kind]:
            self._lapse(holder)
        return sum(len(leases) for (of, _), leases in self._held.items() if of == kind)

    def _lapse(self, holder: tuple[str, str]) -> None:
        now = self.clock()
        for lease_id, expires_at in list(self._held.get(holder, {}).items()):
            if expires_at <= now:
                self.release(lease_id)
