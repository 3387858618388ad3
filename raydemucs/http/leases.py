"""A replica's side of the scheduler's leases (see `raydemucs.scheduler.leases`): one of a
caller's few uploads or event streams at a time, renewed while the request runs, released when
it ends, even when its client went away mid-way."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Awaitable, Callable

logger = logging.getLogger(__name__)

Call = Callable[..., Awaitable]  # the ingress's call to a scheduler method


class Lease:
    """A lease the scheduler granted: `await Lease.take(call, kind, owner)` (the scheduler's
    `OverQuota` past the caller's cap), then `async with lease.held():`."""

    def __init__(self, call: Call, lease_id: str, renew_s: float):
        self.call, self.id, self.renew_s = call, lease_id, renew_s

    @classmethod
    async def take(cls, call: Call, kind: str, owner: str,
                   max_queued: int | None = None) -> Lease:
        answer = await call("take_lease", kind, owner, max_queued)
        return cls(call, answer["id"], answer["renew_s"])

    @contextlib.asynccontextmanager
    async def held(self):
        """Renewed while the block runs, released when it ends. Nothing here awaits on the way
        out: a request whose client went is cancelled, and so would be each of its awaits."""
        renewing = _logged(asyncio.create_task(self._renew()), "renewing")
        try:
            yield self
        finally:
            renewing.cancel()
            _logged(asyncio.create_task(self.call("release_lease", self.id)), "releasing")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.renew_s)
            if not await self.call("renew_lease", self.id):
                logger.warning("lease %s lapsed while its request ran", self.id)
                return

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
