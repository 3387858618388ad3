"""One wait at the scheduler per owner on each replica, for every `/v1/events` stream of that
owner there.

A stream sends the views of its owner's tasks as they change (`Watchers.watch_tasks` at the
scheduler). With a wait of its own per stream, 500 open streams were 500 calls pending at the
scheduler, each answered and asked again at least every few seconds, all at once; a `Feed` waits
once for all of an owner's streams on this replica and hands each answer to their `Inbox`es.

A stream subscribes first, then takes its own first answer (every unfinished task, and a cursor):
an answer of the feed that is not newer than that cursor is dropped, one that is newer came after
it, so that nothing touched after its first answer is missed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Awaitable, Callable

logger = logging.getLogger(__name__)

Call = Callable[..., Awaitable]  # the ingress's call to a scheduler method
RETRY_S = 1.0  # a feed whose wait failed (the scheduler restarting) asks again this much later
INBOX_ANSWERS = 64  # answers an inbox holds for a slow stream; past that it starts over


class Inbox:
    """A stream's answers from its owner's feed, newer than its own first answer."""

    def __init__(self) -> None:
        self._answers: asyncio.Queue = asyncio.Queue(INBOX_ANSWERS)
        self.first: dict | None = None  # the cursor of the stream's own first answer
        self.overflowed = False  # it missed answers: the stream takes a first answer again

    def put(self, answer: dict) -> None:
        if self.first is None or not _newer(answer["cursor"], self.first):
            return
        try:
            self._answers.put_nowait(answer)
        except asyncio.QueueFull:
            self.overflowed = True

    def restart(self, cursor: dict) -> None:
        """After the stream's own first answer (`cursor`): what came before it is dropped."""
        self.first, self.overflowed = cursor, False
        while not self._answers.empty():
            self._answers.get_nowait()

    async def next(self, timeout_s: float) -> list[dict]:
        """The answers come since the last call, waiting up to `timeout_s` for one ([]: none)."""
        answers = []
        if self._answers.empty():
            with contextlib.suppress(asyncio.TimeoutError):
                answers.append(await asyncio.wait_for(self._answers.get(), timeout_s))
        while not self._answers.empty():
            answers.append(self._answers.get_nowait())
        return answers


def _newer(cursor: dict, than: dict) -> bool:
    """Whether an answer with `cursor` came after one with `than` (another scheduler's: yes)."""
    return cursor["epoch"] != than["epoch"] or cursor["after"] > than["after"]


class Feed:
    """One owner's changes: a wait at the scheduler at a time, from the cursor of the first
    stream's first answer on, each answer with views handed to every inbox."""

    def __init__(self, call: Call, owner: str, wait_s: float):
        self.call, self.owner, self.wait_s = call, owner, wait_s
        self.inboxes: set[Inbox] = set()
        self.cursor: dict | None = None
        self.task: asyncio.Task | None = None

    def start(self, cursor: dict) -> None:
        """Begin waiting after `cursor` (a stream's first answer's), unless waiting already."""
        if self.task is None:
            self.cursor = cursor
            self.task = asyncio.get_running_loop().create_task(self._run())
            self.task.add_done_callback(_logged)

    async def _run(self) -> None:
        while self.inboxes:
            try:
                answer = await self.call("watch_tasks", self.owner, self.cursor, self.wait_s)
            except Exception as exc:  # the scheduler restarting: its streams wait, then go on
                logger.warning("the event feed of an owner failed, again in %g s: %s",
                               RETRY_S, exc)
                await asyncio.sleep(RETRY_S)
                continue
            self.cursor = answer["cursor"]
            if answer["views"]:
                for inbox in list(self.inboxes):
                    inbox.put(answer)


def _logged(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("an event feed ended: %s", task.exception(), exc_info=task.exception())


class Feeds:
    """This replica's feeds, one per owner with a stream open here."""

    def __init__(self, call: Call, wait_s: float):
        self.call, self.wait_s = call, wait_s
        self.feeds: dict[str, Feed] = {}

    @contextlib.asynccontextmanager
    async def subscribed(self, owner: str) -> AsyncIterator[tuple[Feed, Inbox]]:
        """The owner's feed and a new inbox on it, until the block ends (the last one out stops
        the feed)."""
        feed = self.feeds.setdefault(owner, Feed(self.call, owner, self.wait_s))
        inbox = Inbox()
        feed.inboxes.add(inbox)
        try:
            yield feed, inbox
        finally:
            feed.inboxes.discard(inbox)
            if not feed.inboxes and self.feeds.get(owner) is feed:
                del self.feeds[owner]
                if feed.task is not None:
                    feed.task.cancel()
