"""Idle CPU workers' cores lent to the busy ones on their node (`raydemucs.scheduler.lending`),
and a worker's forward passes taking them (`raydemucs.separation.engine.COMPUTE`)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from raydemucs.scheduler.lending import lent_threads
from raydemucs.separation.engine import ComputeThreads


@dataclass
class Slot:
    worker_id: str
    state: str
    node: str | None = "a"
    pool: str = "default"
    device: str | None = "cpu"
    recycling: str | None = None
    tasks: dict = field(default_factory=dict)


def lend(*slots, threads: dict | None = None) -> dict:
    return lent_threads(slots, lambda pool: (threads or {}).get(pool, 1))


def test_one_busy_worker_takes_every_idle_core_on_its_node():
    assert lend(Slot("w0", "busy"), Slot("w1", "idle"), Slot("w2", "idle")) == {"w0": 2}


def test_idle_cores_are_shared_between_the_busy_workers_the_remainder_to_the_first():
    slots = [Slot("w2", "busy"), Slot("w0", "busy"), Slot("w1", "idle"), Slot("w3", "idle"),
             Slot("w4", "idle")]
    assert lend(*slots) == {"w0": 2, "w2": 1}


def test_no_lend_across_nodes_nor_to_or_from_gpu_workers():
    slots = [Slot("w0", "busy", node="a"), Slot("w1", "idle", node="b"),
             Slot("g0", "idle", device="cuda"), Slot("g1", "busy", device="cuda")]
    assert lend(*slots) == {"w0": 0}


def test_only_idle_workers_with_nothing_held_and_not_about_to_be_replaced_lend():
    slots = [Slot("w0", "busy"), Slot("w1", "starting"), Slot("w2", "restarting"),
             Slot("w3", "idle", recycling="over its ceiling"), Slot("w4", "idle", tasks={"t": 1}),
             Slot("w5", "idle", node=None), Slot("w6", "dead")]
    assert lend(*slots) == {"w0": 0}


def test_a_lender_gives_its_pools_threads():
    slots = [Slot("w0", "busy"), Slot("big-0", "idle", pool="big")]
    assert lend(*slots, threads={"big": 4}) == {"w0": 4}


def test_nothing_is_lent_while_every_worker_is_busy_or_none_is():
    assert lend(Slot("w0", "busy"), Slot("w1", "busy")) == {"w0": 0, "w1": 0}
    assert lend(Slot("w0", "idle"), Slot("w1", "idle")) == {}


def test_a_forward_thread_takes_a_lend_at_its_next_pass_and_gives_it_back():
    before = torch.get_num_threads()
    threads = ComputeThreads()
    seen = []

    def passes():
        threads.use()
        seen.append(torch.get_num_threads())
        threads.lend(1)
        threads.use()
        seen.append(torch.get_num_threads())
        threads.lend(0)
        threads.use()
        seen.append(torch.get_num_threads())

    try:
        threads.configure(1)
        worker = threading.Thread(target=passes)
        worker.start()
        worker.join()
        assert seen == [1, 2, 1] and threads.wanted == threads.in_use == 1
    finally:
        torch.set_num_threads(before)


def test_threads_left_alone_until_configured():
    before = torch.get_num_threads()
    threads = ComputeThreads()
    threads.lend(3)
    threads.use()
    assert threads.wanted is None and torch.get_num_threads() == before
