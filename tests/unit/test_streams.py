"""What event streams are sent: the tasks touched after a stream's cursor, queue positions alone
only for an owner's first queued tasks, at most every few seconds after the queue moved."""
from __future__ import annotations

import asyncio

from raydemucs.core.task import TaskRecord, TaskSpec, TaskState
from raydemucs.scheduler import streams
from raydemucs.scheduler.streams import Watchers

from fakes import FakeClock


def ids(answer: dict) -> list[str]:
    return [view["task_id"] for view in answer["views"]]


def test_a_stream_gets_what_changed_after_its_cursor_and_positions_coarsely():
    clock = FakeClock()
    views = {f"t{i}": {"task_id": f"t{i}", "seq": i, "state": "queued", "queue_position": i}
             for i in range(30)}
    owned = {"a": list(views)}

    async def scenario():
        watchers = Watchers(views.__getitem__, lambda owner: owned.get(owner, []), clock)
        first = await watchers.watch_tasks("a", None, 0.0)
        assert ids(first) == list(views)  # every unfinished task, at first
        watchers.touch("t7", "a")
        watchers.touch("t9", "b")  # another owner's
        answer = await watchers.watch_tasks("a", first["cursor"], 0.0)
        assert ids(answer) == ["t7"]
        started = TaskRecord(TaskSpec("t0", "p", "f", "/in.wav", "/out", owner="a"), seq=0,
                             state=TaskState.RUNNING)
        clock.advance(1.0)
        watchers.on_transition(started, TaskState.QUEUED)  # a dispatch: the queue moved
        answer = await watchers.watch_tasks("a", answer["cursor"], 0.0)
        assert ids(answer) == ["t0"]  # the task that started, not every queued one
        clock.advance(streams.POSITIONS_EVERY_S)
        answer = await watchers.watch_tasks("a", answer["cursor"], 0.0)
        assert ids(answer) == [f"t{i}" for i in range(streams.POSITIONS_SHOWN)]  # places, coarsely
        assert ids(await watchers.watch_tasks("a", answer["cursor"], 0.0)) == []
        other = Watchers(views.__getitem__, lambda owner: owned.get(owner, []), clock)
        assert len(ids(await other.watch_tasks("a", answer["cursor"], 0.0))) == 30  # restarted

    asyncio.run(scenario())
