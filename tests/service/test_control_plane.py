"""The control plane stays responsive with thousands of tasks queued: a batch cancel lets other
calls in between its chunks, and the event stream of a caller's tasks sends what changed, not
every queued task on every dispatch. One service for the module: a pool of one worker, and a
`parked` pool whose worker never starts (it needs a resource no node has), so that its tasks
stay queued."""
from __future__ import annotations

import contextlib
import json

import pytest

from raydemucs.core.config import SeparationConfig
from raydemucs.core.task import TaskSpec, new_task_id

from support import HttpService, wait_for

PARKED = {"name": "parked", "models": ["htdemucs"], "resources": {"nowhere": 1},
          "min_workers": 0, "max_workers": 1}
MAIN = {"name": "main", "models": ["demucs_unittest"], "min_workers": 1, "max_workers": 1}


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    service = HttpService(tmp_path_factory.mktemp("control"), serve_port,
                          workers={"prefetch": 0}, pools=[PARKED, MAIN])
    yield service
    service.close()


def queue(service, count: int, model: str, batch_id: str | None = None) -> list[str]:
    """Queue `count` tasks (of the Python API's owner) through the actor, as a batch does; their
    ids. Their input does not exist: a worker that takes one fails it at once."""
    import ray

    scheduler = service.manager.scheduler()
    ids = []
    for start in range(0, count, 1000):
        specs = [TaskSpec(task_id=new_task_id(), project=f"p-{model}", file_id=f"{batch_id}-{i}",
                          input_path="/absent.wav", output_dir=str(service.state / "out"),
                          options=SeparationConfig(model=model), cache=False,
                          batch_id=batch_id).to_dict()
                 for i in range(start, min(count, start + 1000))]
        ids += [reply["task_id"] for reply in ray.get(scheduler.submit_batch.remote(specs))]
    return ids


def test_calls_are_answered_between_the_chunks_of_a_batch_cancel(service):
    import ray

    count = 3000
    ids = queue(service, count, "htdemucs", batch_id="deep")
    scheduler = service.manager.scheduler()
    cancelling = scheduler.cancel_batch.remote("deep")
    seen = []  # the cancelled count each status saw while the cancel ran
    while not ray.wait([cancelling], timeout=0)[0]:
        assert ray.get(scheduler.get_task.remote(ids[-1]))["task_id"] == ids[-1]
        seen.append(ray.get(scheduler.status.remote())["queue"]["cancelled"])
    assert ray.get(cancelling) == count
    assert any(0 < cancelled < count for cancelled in seen), seen  # answered midway
    assert service.manager.batch("deep")["by_state"]["cancelled"] == count


def test_the_callers_stream_sends_what_changed_not_every_queued_task_on_each_dispatch(service):
    count, events, ended = 150, 0, set()
    with service.client.stream("GET", "/v1/events", timeout=120) as response:
        lines = response.iter_lines()
        assert next(lines) == ": watching"
        # each fails at once on the one worker: a dispatch after each, every other one moved up
        ids = set(queue(service, count, "demucs_unittest", batch_id="moving"))
        for line in lines:
            if line.startswith("data: "):
                task = json.loads(line[len("data: "):])
                events += task["task_id"] in ids
                if task["task_id"] in ids and task["state"] == "failed":
                    ended.add(task["task_id"])
                if ended == ids:
                    break
    # queued, running, failed: a few events a task (and now and then the first ones' places),
    # where resending every queued task on each dispatch is thousands
    assert events < 4 * count, events
    assert wait_for(lambda: service.manager.batch("moving")["done"])


def test_the_streams_of_one_key_share_one_wait_at_the_scheduler(service):
    """Three `/v1/events` streams of one key hold one wait at the scheduler between them (their
    owner's feed on the replica), each gets every change, and the wait ends with the streams."""
    status = service.manager.get_status
    with contextlib.ExitStack() as opened:
        streams = [opened.enter_context(service.client.stream("GET", "/v1/events", timeout=60))
                   for _ in range(3)]
        lines = [stream.iter_lines() for stream in streams]
        assert all(next(stream_lines) == ": watching" for stream_lines in lines)
        [task_id] = queue(service, 1, "htdemucs", batch_id="shared")  # parked: it stays queued
        for stream_lines in lines:
            assert any(task_id in line for line in stream_lines if line.startswith("data: "))
        waits = []  # the streams' waits at the scheduler, sampled for 2 s
        wait_for(lambda: waits.append(status()["stream_waits"]) or len(waits) == 20)
        assert max(waits) == 1, waits
    assert wait_for(lambda: status()["stream_waits"] == 0, timeout_s=30)
    service.manager.cancel(task_id)
