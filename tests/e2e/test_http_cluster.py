"""Stems on another node than the HTTP replica's, on a real multi-node Ray
(`ray.cluster_utils.Cluster` on this machine): the replica reads them through a task pinned to
the node that wrote them, range requests included.

The cluster and its driver live in a subprocess (`python THIS_FILE`), with their own RAY_TMPDIR:
a driver joins one cluster only, and the session's Ray must stay untouched.
"""
from __future__ import annotations

import hashlib
import json
import sys
import uuid

import pytest

from support import run_cluster_scenario

pytestmark = pytest.mark.slow
POOL = {"name": "far", "resources": {"stem_node": 1}, "num_cpus": 1, "min_workers": 1,
        "max_workers": 1}


def test_a_stem_on_another_node_than_the_replica_downloads_whole_and_in_ranges(audio, tmp_path):
    song = str(audio("song.wav", seconds=2.0))
    result = run_cluster_scenario(__file__, tmp_path, [song], timeout_s=300)
    assert result["stems_node"] == result["far_node"] != result["replica_node"]
    assert result["whole_sha256"] == result["file_sha256"] == result["etag"]
    assert result["range"] == result["file_range"]


def scenario(tmp_path: str, song: str) -> dict:
    import httpx
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from raydemucs import WorkerManager
    from raydemucs.core.config import load_config

    from support import free_port

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2,
                                                            "include_dashboard": True})
    port = free_port()
    config = load_config("test", environ={}, overrides={
        "service": {"name": f"c{uuid.uuid4().hex[:6]}", "state_dir": f"{tmp_path}/state"},
        "workers": {"memory_mb": 0}, "pools": [POOL], "http": {"port": port}})
    manager = WorkerManager(config, address=cluster.address)
    seen = {}
    try:
        manager.scheduler(create=True)
        url = manager.start_http()  # before the far node joins: the replica stays on the head
        seen["far_node"] = cluster.add_node(num_cpus=1, resources={"stem_node": 1}).node_id
        task_id = manager.add_task(song, output_dir=f"{tmp_path}/out", project_name="p")
        record = manager.wait(task_id, timeout=180)
        seen["stems_node"] = record["node"]
        replicas = [a for a in list_actors(filters=[("state", "=", "ALIVE")])
                    if a.class_name.startswith("ServeReplica")]
        seen["replica_node"] = replicas[0].node_id
        path = record["outputs"]["vocals"]
        data = open(path, "rb").read()
        seen["file_sha256"], seen["file_range"] = hashlib.sha256(data).hexdigest(), data[
            1000:5000].hex()
        with httpx.Client(base_url=url, timeout=60) as client:
            stem = f"/v1/tasks/{task_id}/stems/vocals"
            whole = client.get(stem)
            seen["whole_sha256"] = hashlib.sha256(whole.content).hexdigest()
            seen["etag"] = whole.headers["etag"].strip('"')
            seen["range"] = client.get(stem, headers={"Range": "bytes=1000-4999"}).content.hex()
    finally:
        manager.shutdown(now=True)
        ray.shutdown()
        cluster.shutdown()
    return seen


if __name__ == "__main__":
    print("RESULT " + json.dumps(scenario(sys.argv[1], sys.argv[2])), flush=True)
