"""Pools on a real multi-node Ray (`ray.cluster_utils.Cluster` on this machine): a pool whose
workers need a resource no node has yet stays pending, starts when a node offering it joins, runs
its tasks there, and shrinks to zero once idle.

The cluster and its driver live in a subprocess (`python THIS_FILE`), with their own RAY_TMPDIR:
a driver joins one cluster only, and the session's Ray must stay untouched.
"""
from __future__ import annotations

import json
import sys
import time
import uuid

from support import run_cluster_scenario

POOL = {"name": "edge", "models": ["demucs_unittest"], "resources": {"pool_node": 1},
        "num_cpus": 1, "min_workers": 0, "max_workers": 2, "idle_timeout_s": 2.0}


def test_a_pool_waits_for_its_node_runs_there_and_shrinks_when_idle(audio, tmp_path):
    songs = [str(audio(f"song{i}.wav", seconds=1.0, seed=i)) for i in range(3)]
    result = run_cluster_scenario(__file__, tmp_path, songs, timeout_s=240)
    assert result.get("refused", "").startswith("no worker pool serves model 'htdemucs'")
    assert result["pending"] == {"workers": 2, "pending": 2, "queued": 3}
    assert result["states_before_node"] == ["starting", "starting"]
    assert result["actor_names"] == [f"{result['service']}:edge-worker-0",
                                     f"{result['service']}:edge-worker-1"]
    assert result["states"] == ["succeeded"] * 3
    assert set(result["nodes"]) == {result["added_node"]}
    assert result["shrunk"]
    print(json.dumps(result["timings"]))


def scenario(tmp_path: str, songs: list[str]) -> dict:
    """Run the pool through pending, placed and shrunk on a two-node cluster; return what was seen."""
    import ray
    from ray.cluster_utils import Cluster

    from raydemucs import WorkerManager
    from raydemucs.core.config import load_config
    from raydemucs.core.errors import InvalidInput

    from support import wait_for

    started = time.monotonic()
    timings = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2,
                                                            "include_dashboard": False})
    service = f"p{uuid.uuid4().hex[:6]}"
    config = load_config("test", environ={}, overrides={
        "service": {"name": service, "state_dir": f"{tmp_path}/state"},
        "workers": {"memory_mb": 0}, "pools": [POOL]})
    manager = WorkerManager(config, address=cluster.address)
    seen: dict = {"service": service}
    try:
        manager.scheduler(create=True)
        try:
            manager.add_task(songs[0], output_dir=f"{tmp_path}/out", model="htdemucs")
        except InvalidInput as exc:
            seen["refused"] = str(exc)
        ids = [manager.add_task(song, output_dir=f"{tmp_path}/out") for song in songs]
        wait_for(lambda: manager.get_status()["pools"][0]["workers"] == 2)
        time.sleep(3.0)  # no node offers pool_node: the workers stay pending, the tasks queued
        status = manager.get_status()
        seen["pending"] = {key: status["pools"][0][key] for key in ("workers", "pending", "queued")}
        seen["states_before_node"] = [w["state"] for w in status["workers"]]
        seen["actor_names"] = sorted(w["actor_name"] for w in status["workers"])
        timings["pending_s"] = time.monotonic() - started
        node = cluster.add_node(num_cpus=2, resources={"pool_node": 2})
        seen["added_node"] = node.node_id
        records = manager.wait_all(ids, timeout=120)
        timings["tasks_done_s"] = time.monotonic() - started
        seen["states"] = [r["state"] for r in records]
        seen["nodes"] = [r["node"] for r in records]
        wait_for(lambda: manager.get_status()["pools"][0]["workers"] == 0)
        seen["shrunk"] = True
        timings["shrunk_s"] = time.monotonic() - started
    finally:
        manager.shutdown(now=True)
        ray.shutdown()
        cluster.shutdown()
    seen["timings"] = timings
    return seen


if __name__ == "__main__":
    print("RESULT " + json.dumps(scenario(sys.argv[1], sys.argv[2:])), flush=True)
