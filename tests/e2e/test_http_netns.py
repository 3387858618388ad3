"""No key, no way in but loopback, wherever Ray Serve listens: in a network namespace of its own
(a veth pair with a private address, nothing that leads out), a Serve proxy already listens on
0.0.0.0 when the service asks for 127.0.0.1 (`serve.start` keeps a running proxy's bind).

Starting the API without keys is refused there; with a key it starts, and once the last key is
revoked, a request that reaches the namespace's private address gets no further than a key
check, while one over loopback is the laptop's open door. The scenario runs in the namespace
(`ip netns exec`), with its own Ray; the namespace is deleted whatever happens.
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from support import run_cluster_scenario

pytestmark = pytest.mark.slow
ADDRESS = "10.203.0.1"  # private, and only inside the namespace
LINKS = (["link", "set", "lo", "up"], ["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
         ["addr", "add", f"{ADDRESS}/24", "dev", "v0"], ["link", "set", "v0", "up"],
         ["link", "set", "v1", "up"])


def test_without_keys_only_loopback_gets_in_though_serve_listens_on_every_address(tmp_path):
    namespace = f"rd{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        for link in LINKS:
            subprocess.run(["ip", "-n", namespace, *link], check=True)
        seen = run_cluster_scenario(__file__, tmp_path, [], timeout_s=300,
                                    prefix=("ip", "netns", "exec", namespace))
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=True)
    assert "the running Ray Serve proxy's address 0.0.0.0 is not loopback: add an API key" in (
        seen["keyless_start"])
    assert seen["loopback"] == 200
    assert seen["outside"] == [421, "MisdirectedRequest"]  # its Host is not an allowed name
    assert seen["outside_named_localhost"] == [401, "Unauthenticated"]


def scenario(tmp_path: str) -> dict:
    import httpx
    import ray
    from ray import serve

    from raydemucs import WorkerManager
    from raydemucs.core.errors import ConfigError
    from raydemucs.core.keys import KeyStore

    from support import free_port, service_config, wait_for

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "0.0.0.0", "port": port})
    config = service_config(Path(tmp_path), http={"host": "127.0.0.1", "port": port},
                            workers={"max_workers": 1})
    manager, keys, seen = WorkerManager(config), KeyStore(Path(config.service.state_dir)), {}
    try:
        manager.scheduler(create=True)
        try:
            seen["keyless_start"] = f"started at {manager.start_http()}"
        except ConfigError as error:
            seen["keyless_start"] = str(error)
        keys.add("ops")
        manager.start_http()
        keys.revoke("ops")
        with httpx.Client(timeout=60, trust_env=False) as client:
            loopback = f"http://127.0.0.1:{port}/v1/tasks"
            seen["loopback"] = wait_for(lambda: (lambda code: code if code == 200 else None)(
                client.get(loopback).status_code), timeout_s=60, step_s=0.5)
            outside = f"http://{ADDRESS}:{port}/v1/tasks"
            for name, headers in (("outside", {}),
                                  ("outside_named_localhost", {"Host": f"127.0.0.1:{port}"})):
                answer = client.get(outside, headers=headers)
                seen[name] = [answer.status_code, answer.json()["error"]["type"]]
    finally:
        manager.shutdown(now=True)
        serve.shutdown()
        ray.shutdown()
    return seen


if __name__ == "__main__":
    print("RESULT " + json.dumps(scenario(sys.argv[1])), flush=True)
