"""A replica's side of the scheduler's leases (see `raydemucs.scheduler.leases`): one of a
caller's few uploads or event streams at a time, renewed while the request runs, released when
it ends, even when its client went away mid-way. A replica renews every lease it holds in one
call (`HeldLeases`), not a call per lease: 500 open streams are one renewal every `renew_s`."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Awaitable, Callable

logger = logging.getLogger(__name__)

Call = Callable[..., Awaitable]  # the ingress's call to a scheduler method


class HeldLeases:
    """The leases this replica holds: `await leases.take(kind, owner)` (the scheduler's
    `OverQuota` past the caller's cap), then `async with lease.held():`."""

    def __init__(self, call: Call):
        self.call = call
        self.held: set[str] = set()
        self._renewing: asyncio.Task | None = None

    async def take(self, kind: str, owner: str, max_queued: int | None = None) -> Lease:
        answer = await self.call("take_lease", kind, owner, max_queued)
        return Lease(self, answer["id"], answer["renew_s"])

    def hold(self, lease: Lease) -> None:
        self.held.add(lease.id)
        if self._renewing is None or self._renewing.done():
            self._renewing = _logged(asyncio.create_task(self._renew(lease.renew_s)), "renewing")

    def let_go(self, lease: Lease) -> None:
        """Release `lease` (without awaiting: a request whose client went is cancelled, and so
        would be each of its awaits)."""
        self.held.discard(lease.id)
        _logged(asyncio.create_task(self.call("release_lease", lease.id)), "releasing")

    async def _renew(self, renew_s: float) -> None:
        """Every `renew_s` while any is held: renew them all in one call (one that fails is
        logged, and the next round tries again before they lapse)."""
        while True:
            await asyncio.sleep(renew_s)
            if not self.held:
                return
            try:
                lapsed = await self.call("renew_leases", sorted(self.held))
            except Exception as exc:
                logger.warning("renewing %d lease(s) failed: %s", len(self.held), exc)
                continue
            for lease_id in lapsed:
                logger.warning("lease %s lapsed while its request ran", lease_id)
                self.held.discard(lease_id)


class Lease:
    """A lease the scheduler granted, held by this replica's `HeldLeases`."""

    def __init__(self, leases: HeldLeases, lease_id: str, renew_s: float):
        self.leases, self.id, self.renew_s = leases, lease_id, renew_s

    @contextlib.asynccontextmanager
    async def held(self):
        """Renewed while the block runs, released when it ends."""
        self.leases.hold(self)
        try:
            yield self
        finally:
            self.leases.let_go(self)

    async def stream(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """`chunks` (an event stream's) passed on while the lease is held."""
        async with self.held():
            async for chunk in chunks:
                yield chunk


_running: set[asyncio.Task] = set()  # held until done (the loop keeps only weak references)


def _logged(task: asyncio.Task, doing: str) -> asyncio.Task:
    """`task`, kept until it ends, its failure logged (a lease left behind lapses on its own)."""
    def done(finished: asyncio.Task) -> None:
        _running.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            logger.warning("%s a lease failed: %s", doing, finished.exception())
    _running.add(task)
    task.add_done_callback(done)
    return task
