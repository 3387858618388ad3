"""The event-stream routes (server-sent events): a task's own, every change of the caller's tasks
(`/v1/events`, through this replica's `Feeds`), and the service's status.

Each stream holds a lease at the scheduler (`http.max_streams_per_key`, `http.max_streams`),
rechecks its caller's key on each turn (at most `EVENTS_WAIT_S` apart) and ends once the key is
revoked. An idle stream sends a comment line only every `KEEPALIVE_S` (`sparse`), and its
turns are spread (`turn_s`): 500 streams opened at once do not wake, nor send, together.
`EventStreams` is a part of the `Ingress` deployment (`raydemucs.http.app`), which gives it
`call`, `keys`, `leases`, `caller`, `task_of` and `base`.
"""
from __future__ import annotations

import asyncio
import functools
import json
import random
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..core.public import public_task
from ..core.task import TaskState
from ..scheduler.leases import STREAM
from .feeds import Feeds

EVENTS_WAIT_S = 5.0  # a stream's longest turn: it rechecks its key (revoked?) on each
KEEPALIVE_S = 15.0  # an idle stream's comment line, at most this often (idle proxies close)
STATUS_EVERY_S = 2.0

router = APIRouter()


def event_stream(chunks) -> StreamingResponse:
    """Server-sent events, sent as they come (no cache, no proxy buffering)."""
    return StreamingResponse(sparse(chunks), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def sparse(chunks, clock=time.monotonic):
    """`chunks` with a comment line passed on only when nothing was sent for `KEEPALIVE_S` (the
    first chunk always): every chunk is relayed by the replica and the proxy."""
    sent = float("-inf")
    async for chunk in chunks:
        if not chunk.startswith(":") or clock() - sent >= KEEPALIVE_S:
            sent = clock()
            yield chunk


def turn_s() -> float:
    """A stream's wait for its next turn: at most `EVENTS_WAIT_S`, and not the same as the other
    streams' (those opened together drift apart)."""
    return random.uniform(EVENTS_WAIT_S / 2, EVENTS_WAIT_S)


def task_event(number: int, kind: str, view: dict, base: str) -> str:
    return f"id: {number}\nevent: {kind}\ndata: {json.dumps(public_task(view, base))}\n\n"


class EventStreams:
    """The `Ingress`'s event-stream routes."""

    @functools.cached_property
    def feeds(self) -> Feeds:
        """This replica's feeds of its owners' changes."""
        return Feeds(self.call, EVENTS_WAIT_S)

    async def still_allowed(self, caller) -> bool:
        """Whether the caller's key is still known (an open stream's recheck on each turn)."""
        keys = await self.keys()
        if caller.sha256 is None:  # let in over loopback while the service had no keys
            return not keys
        return any(entry.sha256 == caller.sha256 for entry in keys.entries)

    @router.get("/v1/tasks/{task_id}/events", summary="Server-sent events until the task ends")
    async def task_events(self, task_id: str, request: Request):
        caller = await self.caller(request)
        first = await self.task_of(caller, task_id)
        lease = await self.leases.take(STREAM, caller.owner)
        return event_stream(lease.stream(self._events(caller, first, self.base(request))))

    async def _events(self, caller, view: dict, base: str):
        """One event per change (`state` when the state moved, else `progress`), the current
        state first, the terminal one last; a comment line keeps an idle stream open. It ends
        when the caller's key is revoked."""
        seen, number = None, 0
        while await self.still_allowed(caller):
            if view != seen:
                kind = "state" if seen is None or view["state"] != seen["state"] else "progress"
                number += 1
                yield task_event(number, kind, view, base)
                if TaskState(view["state"]).is_terminal():
                    return
            else:
                yield ": waiting\n\n"
            seen = view
            view = await self.call("watch", view["task_id"], seen, turn_s())

    @router.get("/v1/events", summary="Server-sent events: every change of the caller's tasks")
    async def caller_events(self, request: Request):
        caller = await self.caller(request)
        lease = await self.leases.take(STREAM, caller.owner)
        return event_stream(lease.stream(self._changes(caller, self.base(request))))

    async def _changes(self, caller, base: str):
        """A `task` event per change of the caller's tasks, its unfinished ones first (queue
        positions coarsely: see `raydemucs.scheduler.streams`); a comment line at once, and
        whenever nothing changed for a while. It runs until the client goes, or the caller's key
        is revoked. Its changes come from its owner's feed on this replica (`Feeds`)."""
        sent, number = {}, 0  # sent: the unfinished tasks' views last sent
        yield ": watching\n\n"
        async with self.feeds.subscribed(caller.owner) as (feed, inbox):
            answers = None  # None: take a first answer (at the start, or after falling behind)
            while await self.still_allowed(caller):
                if answers is None:
                    first = await self.call("watch_tasks", caller.owner, None, 0.0)
                    inbox.restart(first["cursor"])
                    feed.start(first["cursor"])
                    answers = [first]
                views = [view for answer in answers for view in answer["views"]
                         if view != sent.get(view["task_id"])]
                for view in views:
                    number += 1
                    yield task_event(number, "task", view, base)
                    if TaskState(view["state"]).is_terminal():
                        sent.pop(view["task_id"], None)
                    else:
                        sent[view["task_id"]] = view
                if not views:
                    yield ": waiting\n\n"
                answers = await inbox.next(turn_s())
                if inbox.overflowed:
                    answers = None

    @router.get("/v1/status/events",
                summary="Server-sent events: the service's status as it changes")
    async def status_events(self, request: Request):
        caller = await self.caller(request)
        lease = await self.leases.take(STREAM, caller.owner)
        return event_stream(lease.stream(self._statuses(caller)))

    async def _statuses(self, caller):
        """A `status` event (what GET /v1/status answers) at once and whenever it changed, read
        every STATUS_EVERY_S, else a comment line. It runs until the client goes, or the
        caller's key is revoked."""
        sent = None
        while await self.still_allowed(caller):
            status = await self.call("status", caller.scope)
            changed = {key: value for key, value in status.items() if key != "uptime_s"}
            if changed != sent:
                yield f"event: status\ndata: {json.dumps(status)}\n\n"
                sent = changed
            else:
                yield ": unchanged\n\n"
            await asyncio.sleep(STATUS_EVERY_S)
