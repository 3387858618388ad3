"""What event streams are sent: the tasks touched after a stream's cursor, queue positions alone
only for an owner's first queued tasks, at most every few seconds after the queue moved."""
from __future__ import annotations

import asyncio
import collections

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


def test_a_change_of_one_owners_task_wakes_no_watcher_of_another_owner():
    """A task's own stream and an owner's stream wait for their owner's changes: a hundred
    changes of owner a's task look at none of owner b's tasks again (counted views)."""
    viewed = collections.Counter()
    views = {task_id: {"task_id": task_id, "seq": i, "owner": task_id[0], "state": "running",
                       "queue_position": None, "progress": 0.0}
             for i, task_id in enumerate(["a1", "b1"])}

    def view(task_id: str) -> dict:
        viewed[task_id] += 1
        return views[task_id]

    async def scenario():
        watchers = Watchers(view, lambda owner: [t for t in views if t[0] == owner], FakeClock())
        cursor = (await watchers.watch_tasks("b", None, 0.0))["cursor"]
        own = asyncio.ensure_future(watchers.watch("b1", views["b1"], 30.0))
        owners = asyncio.ensure_future(watchers.watch_tasks("b", cursor, 30.0))
        await asyncio.sleep(0)
        viewed.clear()
        for _ in range(100):
            watchers.touch("a1", "a")
            await asyncio.sleep(0)
        assert viewed["b1"] == 0 and not own.done() and not owners.done()
        assert watchers.waiting == 2
        views["b1"] = {**views["b1"], "progress": 0.5}
        watchers.touch("b1", "b")
        assert (await own)["progress"] == 0.5
        assert [v["progress"] for v in (await owners)["views"]] == [0.5]
        assert watchers.waiting == 0

    asyncio.run(scenario())


def test_a_first_answer_of_many_tasks_is_built_a_step_at_a_time(monkeypatch):
    """An owner's stream starts with every unfinished task (100,000 of a deep batch): their views
    are built `VIEWS_PER_STEP` a step, other calls running between steps."""
    monkeypatch.setattr(streams, "VIEWS_PER_STEP", 10)
    views = {f"t{i}": {"task_id": f"t{i}", "seq": i, "state": "queued", "queue_position": i}
             for i in range(35)}
    viewed = []

    def view(task_id: str) -> dict:
        viewed.append(task_id)
        return views[task_id]

    async def scenario():
        watchers = Watchers(view, lambda owner: list(views), FakeClock())
        seen = []

        async def other_call():
            while True:
                seen.append(len(viewed))
                await asyncio.sleep(0)
        other = asyncio.create_task(other_call())
        await asyncio.sleep(0)
        answer = await watchers.watch_tasks("a", None, 0.0)
        other.cancel()
        assert ids(answer) == list(views)
        assert {10, 20, 30} <= set(seen)

    asyncio.run(scenario())
