"""Background work is supervised: a failure is logged and counted, a loop goes on after one."""
from __future__ import annotations

import asyncio
import logging

import pytest

from raydemucs.scheduler.supervision import LoopLag, Supervisor

from fakes import FakeClock


def test_a_failed_task_and_a_failing_loop_are_logged_and_counted(caplog, monkeypatch):
    counted = []
    steps = []

    async def failing():
        raise ValueError("boom")

    async def step() -> float:
        steps.append(1)
        if len(steps) < 3:
            raise OSError(f"step {len(steps)} failed")
        return 10.0

    async def scenario():
        supervisor = Supervisor(counted.append)
        supervisor.spawn("once", failing())
        supervisor.forever("loop", step, retry_s=0.01)
        for _ in range(100):
            if len(steps) >= 3:
                break
            await asyncio.sleep(0.01)
        supervisor.cancel_all()
        await asyncio.sleep(0)

    caplog.set_level(logging.ERROR, logger="raydemucs")
    monkeypatch.setattr(logging.getLogger("raydemucs"), "propagate", True)  # see configure_logging
    asyncio.run(scenario())
    assert sorted(counted) == ["loop", "loop", "once"] and len(steps) == 3
    assert "background job once failed: boom" in caplog.text
    assert all(record.exc_info for record in caplog.records)  # each with its traceback


def test_the_loop_lag_is_how_late_each_wake_came_and_its_recent_percentiles():
    clock, recorded = FakeClock(), []
    lag = LoopLag(recorded.append, interval_s=0.1, clock=clock)

    async def wakes():
        assert await lag.step() == 0.1  # the first wake only sets the next one's time
        for late_s in (0.0, 0.002, 0.3):
            clock.advance(0.1 + late_s)
            await lag.step()

    assert lag.summary()["samples"] == 0
    asyncio.run(wakes())
    assert recorded == [0.0, pytest.approx(0.002), pytest.approx(0.3)]
    assert lag.summary() == {"samples": 3, "p50_ms": pytest.approx(2.0),
                             "p99_ms": pytest.approx(300.0), "max_ms": pytest.approx(300.0)}
