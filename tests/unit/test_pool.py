"""The pool's health polls, without Ray: fake workers whose polls the test answers (or not).

Each worker is polled on its own: a tick never waits for a slow worker, at most one poll is out
per worker, an answer is applied when it comes, and a worker that leaves `max_missed_pings`
polls unanswered is hung."""
from __future__ import annotations

import asyncio

from ray.exceptions import RayActorError

from raydemucs.core.config import load_config
from raydemucs.scheduler.pool import RayWorkerPool, WorkerSlot
from raydemucs.worker.actor import CONTROL


class RemoteMethod:
    """`handle.METHOD.options(...).remote()` of a fake worker: a future the test resolves."""

    def __init__(self):
        self.sent: list[asyncio.Future] = []
        self.args: list[tuple] = []
        self.groups: list[str | None] = []

    def options(self, concurrency_group=None):
        self.groups.append(concurrency_group)
        return self

    def remote(self, *args):
        self.args.append(args)
        self.sent.append(asyncio.get_running_loop().create_future())
        return self.sent[-1]


class FakeWorker:
    def __init__(self):
        self.poll = RemoteMethod()


def answer(task_id: str, progress: float) -> dict:
    return {"tasks": [{"task_id": task_id, "attempt": 1, "phase": "separating",
                       "progress": progress}],
            "rss_bytes": 400 * 2**20, "cpu_percent": 90.0, "num_threads": 8, "threads": 1,
            "node_available_bytes": 2**34, "gpu_memory_bytes": None, "stems": {}}


class Pool:
    """A pool of two live fake workers, a clock the test moves, and the workers reported lost."""

    def __init__(self, max_missed_pings: int = 2, lend_cores: bool = True):
        config = load_config("test", overrides={"workers": {
            "max_missed_pings": max_missed_pings, "lend_cores": lend_cores}}, environ={})
        self.now = 0.0
        self.lost: list[tuple[str, str]] = []
        self.pool = RayWorkerPool(config, on_ready=lambda: None,
                                  on_result=lambda *args: None,
                                  on_lost=lambda *lost: self.lost.append(lost),
                                  clock=lambda: self.now)
        self.workers = {}
        for name in ("worker-0", "worker-1"):
            self.workers[name] = FakeWorker()
            self.pool.slots[name] = WorkerSlot(name, handle=self.workers[name], state="busy")

    async def tick(self, after_s: float = 0.0) -> list[dict]:
        """Let the answers that came be applied, move the clock on, poll."""
        for _ in range(3):
            await asyncio.sleep(0)
        self.now += after_s
        return await self.pool.poll()


def test_a_tick_does_not_wait_for_a_worker_that_does_not_answer():
    async def scenario():
        fakes = Pool()
        slow, quick = fakes.workers["worker-0"], fakes.workers["worker-1"]
        tick = asyncio.ensure_future(fakes.pool.poll())
        await asyncio.sleep(0)
        assert tick.done() and tick.result() == []  # sent, nothing awaited
        quick.poll.sent[0].set_result(answer("t1", 0.25))
        await asyncio.sleep(0)
        assert await fakes.tick() == answer("t1", 0.25)["tasks"]
        assert fakes.pool.slots["worker-1"].rss_bytes == 400 * 2**20
        assert len(slow.poll.sent) == 1 and len(quick.poll.sent) == 2  # one poll out per worker
        assert set(slow.poll.groups + quick.poll.groups) == {CONTROL}
    asyncio.run(scenario())


def test_a_worker_that_leaves_max_missed_pings_polls_unanswered_is_hung():
    async def scenario():
        fakes = Pool(max_missed_pings=2)
        timeout_s = fakes.pool.ping_timeout_s
        await fakes.tick()
        for _ in range(3):  # worker-1 answers every poll
            fakes.workers["worker-1"].poll.sent[-1].set_result(answer("t1", 0.5))
            await fakes.tick(timeout_s / 2)
        assert fakes.pool.slots["worker-0"].missed_pings == 1 and not fakes.lost
        await fakes.tick(timeout_s / 2)
        assert fakes.lost == [("worker-0", "it left 2 health polls unanswered")]
        assert fakes.pool.slots["worker-1"].missed_pings == 0
    asyncio.run(scenario())


def test_a_late_answer_is_applied_and_clears_the_missed_polls():
    async def scenario():
        fakes = Pool(max_missed_pings=3)
        late = fakes.workers["worker-0"]
        await fakes.tick()
        await fakes.tick(fakes.pool.ping_timeout_s)
        assert fakes.pool.slots["worker-0"].missed_pings == 1
        late.poll.sent[0].set_result(answer("t0", 0.75))
        await asyncio.sleep(0)
        assert fakes.pool.slots["worker-0"].missed_pings == 0
        assert await fakes.tick() == answer("t0", 0.75)["tasks"]
        assert len(late.poll.sent) == 2 and not fakes.lost
    asyncio.run(scenario())


def test_a_worker_whose_poll_fails_because_it_died_is_lost():
    async def scenario():
        fakes = Pool()
        await fakes.tick()
        fakes.workers["worker-1"].poll.sent[0].set_exception(RayActorError())
        await fakes.tick()
        assert fakes.lost == [("worker-1", "it died")]
    asyncio.run(scenario())


def test_an_idle_workers_cores_go_to_the_busy_one_beside_it_with_its_poll():
    async def scenario(lend_cores):
        fakes = Pool(lend_cores=lend_cores)
        for slot in fakes.pool.slots.values():
            slot.node, slot.device = "node-a", "cpu"
        fakes.pool.slots["worker-1"].state = "idle"
        await fakes.pool.poll()
        return {name: worker.poll.args[-1] for name, worker in fakes.workers.items()}

    assert asyncio.run(scenario(True)) == {"worker-0": (1,), "worker-1": (0,)}
    assert asyncio.run(scenario(False)) == {"worker-0": (0,), "worker-1": (0,)}
