"""A replica's feeds: one wait at the scheduler per owner for all its streams there, each answer
handed to every stream's inbox that is newer than the stream's own first answer."""
from __future__ import annotations

import asyncio

from raydemucs.http import feeds
from raydemucs.http.feeds import Feeds


def cursor(after: int, epoch: str = "e1") -> dict:
    return {"epoch": epoch, "after": after, "positions_at": 0.0}


class Scheduler:
    """`watch_tasks` answering from a script: each call takes the next answer, or waits."""

    def __init__(self, answers: list[dict]):
        self.answers, self.calls = answers, []

    async def __call__(self, method: str, owner: str, after: dict, wait_s: float) -> dict:
        self.calls.append((method, owner, after["after"]))
        if not self.answers:
            await asyncio.sleep(wait_s)
            return {"views": [], "cursor": after}
        return self.answers.pop(0)


def test_one_wait_for_every_stream_of_an_owner_and_each_gets_what_came_after_its_first():
    answers = [{"views": [{"task_id": "t1"}], "cursor": cursor(5)},
               {"views": [{"task_id": "t2"}], "cursor": cursor(9)}]
    scheduler = Scheduler(answers)

    async def scenario():
        hub = Feeds(scheduler, 60.0)
        async with hub.subscribed("a") as (feed, early), hub.subscribed("a") as (same, late):
            assert feed is same and list(hub.feeds) == ["a"]
            early.restart(cursor(3))
            late.restart(cursor(6))  # its own first answer came after the feed's first
            feed.start(cursor(3))
            feed.start(cursor(6))  # already waiting: one wait for both
            got_early = await early.next(5.0)
            got_late = await late.next(5.0)
        assert not hub.feeds  # the last one out stops the feed
        return got_early, got_late

    got_early, got_late = asyncio.run(scenario())
    assert [a["views"][0]["task_id"] for a in got_early] == ["t1", "t2"]
    assert [a["views"][0]["task_id"] for a in got_late] == ["t2"]  # t1's answer was older
    assert [call[2] for call in scheduler.calls][:3] == [3, 5, 9]  # one wait at a time, in turn


def test_an_inbox_that_falls_behind_says_so_and_another_schedulers_answer_is_newer():
    async def scenario():
        inbox = feeds.Inbox()
        inbox.restart(cursor(10))
        inbox.put({"views": [], "cursor": cursor(2, epoch="e2")})  # after a restart: newer
        assert len(await inbox.next(0.0)) == 1
        for after in range(11, 12 + feeds.INBOX_ANSWERS):
            inbox.put({"views": [], "cursor": cursor(after)})
        assert inbox.overflowed  # its stream takes a first answer again
        inbox.restart(cursor(100))
        assert not inbox.overflowed and await inbox.next(0.0) == []

    asyncio.run(scenario())
