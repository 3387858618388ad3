"""Two Ray nodes that share nothing: each in a network, mount and PID namespace of its own, made
here (a veth pair between them, private addresses, nothing routed anywhere else; a tmpfs over
/tmp and /dev/shm in each, so no file one node writes is seen by the other), Ray's token auth on.

The scheduler and the HTTP API run on the head; the workers only on the other node (their pool
needs a resource only it offers). Over real HTTP, from the head: a song uploaded, separated,
every stem downloaded (equal within 1 LSB to demucs's own `apply_model` here), the zip, peaks,
`fetch`, what `status` says is held. Then the worker node is frozen with a second task in its
worker's hands and its raylet killed (with the rest of the node's processes): the task is
retried, and succeeds once the node is started again in the same namespaces (a new Ray node);
the first task's stems, on the node that left, answer 410; both are purged. Last, the scheduler
is killed after a third task's stems were written but before it heard of them: restarted, it
finds them on the worker's node and runs nothing again.

The test drives the nodes (`ray start --block` through `nsenter`) and a driver, this file run as
a script in the head's namespaces, step by step over its stdin and stdout. Whatever happens,
every process, mount, veth and namespace it made goes (killing a namespace's init kills all of
its processes and frees its tmpfs). Where the kernel refuses a namespace, the test fails with
its reason.
"""
from __future__ import annotations

import io
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from support import TESTS, save_tiny_htdemucs, wait_for, write_audio

pytestmark = pytest.mark.slow
HEAD_IP, FAR_IP = "10.204.0.1", "10.204.0.2"
GCS = f"{HEAD_IP}:6379"
PORT = 8000  # in the head's own network namespace
ROOT = "/tmp/rd"  # the same path on each node, each its own
STEMS = ["bass", "drums", "other", "vocals"]
POOL = {"name": "far", "resources": {"far": 1}, "num_cpus": 1, "min_workers": 1,
        "max_workers": 1}
REAPER = "import os, time\nwhile True:\n    try: os.wait()\n    except ChildProcessError: time.sleep(0.2)"
NODE_INIT = ("mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /dev/shm && "  # then reap orphans
             f"exec {sys.executable} -c '{REAPER}'")
# The head hears a lost node in about 3 s instead of 15 s (Ray's own settings, not the service's).
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def sh(*command: str) -> str:
    """Run a command; a failure fails the test with the command's own reason."""
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode:
        raise AssertionError(f"{' '.join(command)} failed: {run.stderr.strip() or run.returncode}")
    return run.stdout


class Node:
    """One node's namespaces: a network namespace (one end of the veth) and a mount and PID
    namespace whose init (a Python loop that reaps orphans, over its private /tmp and /dev/shm)
    holds them."""

    def __init__(self, netns: str, address: str):
        self.netns, self.address = netns, address
        self.holder: subprocess.Popen | None = None
        self.init: int | None = None
        self.ray: subprocess.Popen | None = None
        self.starts = 0

    def create(self) -> None:
        self.holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--pid", "--fork",
             "--kill-child", "--mount-proc", "--propagation", "private", "sh", "-c", NODE_INIT],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.init = wait_for(self._init_pid, timeout_s=10, step_s=0.05)

    def _init_pid(self) -> int | None:
        if self.holder.poll() is not None:
            raise AssertionError(f"the namespaces of {self.netns} could not be made: "
                                 f"{self.holder.stderr.read().strip()}")
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children").read_text()
        init = int(children.split()[0]) if children.strip() else None
        ready = init and "os.wait" in Path(f"/proc/{init}/cmdline").read_text()
        return init if ready else None

    def path(self, inside: str) -> Path:
        """A path as this node sees it (its own /tmp), from outside."""
        return Path(f"/proc/{self.init}/root") / inside.lstrip("/")

    def popen(self, *command: str, env: dict, **options) -> subprocess.Popen:
        """A process in this node's namespaces."""
        return subprocess.Popen(["nsenter", "-t", str(self.init), "-m", "-p", "-n", "--",
                                 *command], env=env, **options)

    def start_ray(self, env: dict, *args: str) -> None:
        """`ray start --block ARGS` here; returns once Ray says it started."""
        self.starts += 1
        log = self.path(f"{ROOT}/ray-start-{self.starts}.log")
        with open(log, "w") as out:
            self.ray = self.popen(sys.executable, "-m", "ray.scripts.scripts", "start",
                                  "--block", f"--node-ip-address={self.address}",
                                  "--disable-usage-stats",
                                  "--object-store-memory=80000000", *args, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)

        def started() -> bool:
            if self.ray.poll() is not None:
                raise AssertionError(f"ray start failed on {self.netns}: {log.read_text()[-3000:]}")
            return "Ray runtime started" in log.read_text()
        wait_for(started, timeout_s=60, step_s=0.2)

    def pids(self, name: str = "") -> list[int]:
        """The processes in this node's PID namespace (but its init), or those called `name`
        (their command, or the start of a Ray worker's title: `ray::SchedulerService`)."""
        own = os.readlink(f"/proc/{self.init}/ns/pid")
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if (entry.name.isdigit() and int(entry.name) != self.init
                        and os.readlink(entry / "ns/pid") == own
                        and ((entry / "comm").read_text().strip() == name
                             or (entry / "cmdline").read_text().startswith(name))):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
        return found

    def signal(self, sig: int, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        if self.init:
            self.signal(signal.SIGKILL, [self.init])  # every process of the namespace with it
        for process in (self.ray, self.holder):
            if process is not None:
                process.kill()
                process.wait(30)


class TwoNodes:
    """The head and the worker node, joined by a veth pair and nothing else."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.head = Node(f"rd{tag}h", HEAD_IP)
        self.far = Node(f"rd{tag}f", FAR_IP)
        self.made: list[str] = []

    def create(self) -> None:
        for node in (self.head, self.far):
            sh("ip", "netns", "add", node.netns)
            self.made.append(node.netns)
        head_end, far_end = f"{self.head.netns}v", f"{self.far.netns}v"
        sh("ip", "link", "add", head_end, "netns", self.head.netns, "type", "veth", "peer",
           "name", far_end, "netns", self.far.netns)
        for node, end in ((self.head, head_end), (self.far, far_end)):
            sh("ip", "-n", node.netns, "addr", "add", f"{node.address}/24", "dev", end)
            for link in ("lo", end):
                sh("ip", "-n", node.netns, "link", "set", link, "up")
            node.create()

    def remove(self) -> None:
        for node in (self.head, self.far):
            node.remove()
        for netns in self.made:  # the veth pair goes with its namespaces
            sh("ip", "netns", "del", netns)


@pytest.fixture
def two_nodes():
    nodes = TwoNodes()
    try:
        nodes.create()
        yield nodes
    finally:
        nodes.remove()


class Driver:
    """This file as a script in the head's namespaces: it says what it saw at each step (a JSON
    line), and goes on when told."""

    def __init__(self, node: Node, env: dict, config: dict):
        self.process = node.popen(sys.executable, __file__, json.dumps(config), env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=open(node.path(f"{ROOT}/driver.log"), "w"), text=True)
        self.node, self.lines = node, queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("STEP "):
                self.lines.put(json.loads(line[5:]))
        self.lines.put(None)

    def step(self, name: str, timeout_s: float = 180) -> dict:
        try:
            seen = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            seen = None
        if seen is None or seen["step"] != name:
            log = self.node.path(f"{ROOT}/driver.log")
            raise AssertionError(f"the driver did not reach {name!r}: {seen}\n"
                                 f"{log.read_text()[-4000:] if log.exists() else ''}")
        return seen

    def go(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()


def demucs_stems(repo: Path, song: Path, out: Path) -> dict:
    """Each stem of `song` as demucs separates it (`apply_model`, no shifts), saved as 16-bit wav
    by demucs's `save_audio`, read back as int16."""
    import torch
    from demucs.apply import apply_model
    from demucs.audio import save_audio
    from demucs.pretrained import get_model

    model = get_model("tiny", repo)
    model.eval()
    wav = torch.from_numpy(sf.read(song, dtype="float32")[0].T.copy())
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std()
    with torch.no_grad():
        sources = apply_model(model, ((wav - mean) / std)[None], shifts=0, split=True,
                              overlap=0.25, progress=False)[0] * std + mean
    out.mkdir(parents=True, exist_ok=True)
    stems = {}
    for name, source in zip(model.sources, sources):
        save_audio(source, out / f"{name}.wav", samplerate=model.samplerate, clip="rescale",
                   bits_per_sample=16)
        stems[name] = sf.read(out / f"{name}.wav", dtype="int16")[0]
    return stems


def assert_within_one_lsb(got: Path, expected: dict) -> None:
    for stem in STEMS:
        ours = sf.read(got / f"{stem}.wav", dtype="int16")[0]
        assert ours.shape == expected[stem].shape, stem
        assert np.abs(ours.astype(int) - expected[stem].astype(int)).max() <= 1, stem


def test_two_nodes_that_share_no_disk_upload_separate_download_purge_and_survive_a_raylet(
        two_nodes, tmp_path):
    head, far = two_nodes.head, two_nodes.far
    repo = save_tiny_htdemucs(tmp_path / "models")
    songs = [write_audio(tmp_path / f"song{i}.wav", seconds=3.0, seed=i) for i in range(3)]
    token = secrets.token_hex(32)
    for node in (head, far):  # what a `ray up` cluster installs on every node
        shutil.copytree(repo, node.path(f"{ROOT}/models"))
        node.path(f"{ROOT}/token").write_text(token)
        node.path(f"{ROOT}/token").chmod(0o600)
    head.path(f"{ROOT}/songs").mkdir()
    for song in songs:  # the client's files: on the head, where the driver runs
        shutil.copy(song, head.path(f"{ROOT}/songs"))
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": f"{ROOT}/token",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    head.start_ray({**env, **FAST_HEALTH}, "--head", "--port=6379", "--num-cpus=1",
                   "--include-dashboard=false")
    driver = Driver(head, env, {"songs": [f"{ROOT}/songs/{song.name}" for song in songs]})
    driver.step("serving")  # the replica and the scheduler on the head: no other node yet
    far_ray = (env, f"--address={GCS}", "--num-cpus=1", '--resources={"far": 1}')
    far.start_ray(*far_ray)
    expected = [demucs_stems(repo, song, tmp_path / f"ref{i}") for i, song in enumerate(songs[:2])]

    first = driver.step("first")
    assert first["record"]["state"] == "succeeded" and first["record"]["attempts"] == 1
    assert [first["node"]] == first["far_node"] and first["node"] != first["head_node"]
    assert_within_one_lsb(head.path(f"{ROOT}/got/first"), expected[0])
    assert first["zip"] == sorted([f"song0/{stem}.wav" for stem in STEMS] + ["song0/manifest.json"])
    assert first["peaks"] == 50 and first["fetched"]
    assert first["results_bytes"] > 0  # the stems are counted on the node that holds them
    assert far.path(f"{ROOT}/state/results/two/song0/vocals.wav").is_file()
    assert not head.path(f"{ROOT}/state/results").exists()  # nothing kept on the head...
    assert [p.name for p in head.path(f"{ROOT}/state/uploads").iterdir()
            if not p.name.startswith(".")]  # ...but the upload, which the far node lacks
    assert not far.path(f"{ROOT}/state/uploads").exists()

    lose_the_worker_node_mid_task(driver, far, far_ray)
    second = driver.step("second")
    assert second["record"]["state"] == "succeeded", second["record"]
    assert second["record"]["attempts"] == 2
    assert [second["node"]] == second["far_node"] and second["node"] != first["node"]
    assert_within_one_lsb(head.path(f"{ROOT}/got/second"), expected[1])
    assert second["purge"] == 200 and second["after"] == [410] * 4
    assert not far.path(f"{ROOT}/state/results/two/song1").exists()
    # the first task's stems were on the node that left: gone to the service, in one line
    assert second["left_node"] == [410, "Gone"] and second["first_purge"] == 200

    kill_the_scheduler_after_a_publish(driver, head, far)
    third = driver.step("third")
    assert third["record"]["state"] == "succeeded" and third["record"]["attempts"] == 1


def lose_the_worker_node_mid_task(driver: Driver, far: Node, far_ray: tuple) -> None:
    """The second task reaches the worker of a frozen node; that node's raylet is killed (its
    other processes with it), and the node started again in the same namespaces: a new Ray
    node on the same disk."""
    far.signal(signal.SIGSTOP, far.pids())
    driver.go()
    running = driver.step("running")
    assert running["record"]["state"] == "running" and running["record"]["attempts"] == 1
    far.signal(signal.SIGKILL, far.pids("raylet"))
    far.signal(signal.SIGKILL, far.pids())
    far.ray.send_signal(signal.SIGCONT)  # nsenter stopped with its child: now it reaps it
    far.ray.wait(30)
    wait_for(lambda: not far.pids(), timeout_s=30)
    far.start_ray(*far_ray)
    driver.go()


def kill_the_scheduler_after_a_publish(driver: Driver, head: Node, far: Node) -> None:
    """The scheduler dies after the worker wrote a third task's stems, before it heard of them:
    restarted, it must find them complete on the node that holds them, and run nothing again."""
    worker = far.pids("ray::SeparatorWorker")
    far.signal(signal.SIGSTOP, worker)
    driver.go()
    driver.step("running again")
    scheduler = head.pids("ray::SchedulerService")
    head.signal(signal.SIGSTOP, scheduler)
    far.signal(signal.SIGCONT, worker)
    wait_for(lambda: far.path(f"{ROOT}/state/results/two/song2/manifest.json").is_file(), 60)
    head.signal(signal.SIGKILL, scheduler)
    driver.go()


def scenario(config: dict) -> None:
    """The driver, in the head's namespaces: the service, then each step over HTTP."""
    import ray

    from raydemucs import WorkerManager
    from raydemucs.core.config import load_config

    service = load_config("test", environ={}, overrides={
        "service": {"name": "two", "state_dir": f"{ROOT}/state"}, "workers": {"memory_mb": 0},
        "separation": {"model": "tiny", "repo": f"{ROOT}/models"}, "pools": [POOL],
        "http": {"port": PORT}, "retention": {"sweep_interval_s": 0.5}})
    manager = WorkerManager(service, address=GCS)
    manager.scheduler(create=True)
    client = httpx.Client(base_url=manager.start_http(), timeout=60, trust_env=False)
    head_node = ray.get_runtime_context().get_node_id()
    try:
        print("STEP " + json.dumps({"step": "serving"}), flush=True)
        first = separated(client, config["songs"][0], "first")
        step("first", record=first, **nodes(manager, first, head_node), **served(client, first),
             fetched=fetched(manager, first))
        task = posted(client, config["songs"][1])
        step("running", record=running(client, task))
        second = finished(client, task, "second")
        left = client.get(first["outputs"]["vocals"])
        step("second", record=second, **purge(client, second), **nodes(manager, second, head_node),
             left_node=[left.status_code, error_type(left)],
             first_purge=purge(client, first)["purge"])
        task = posted(client, config["songs"][2])
        step("running again", record=running(client, task))
        print("STEP " + json.dumps({"step": "third", "record": finished(client, task, "third")}),
              flush=True)
    finally:
        client.close()
        manager.shutdown(now=True)


def step(name: str, **seen) -> None:
    """Say what the driver saw; go on when told."""
    print("STEP " + json.dumps({"step": name, **seen}), flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(f"not told to go on after {name}")


def error_type(answer) -> str:
    """The error type of a JSON error answer, else the start of its text."""
    try:
        return answer.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return answer.text[:80]


def served(client, task: dict) -> dict:
    """The zip's names, a stem's peaks and what the service says it holds."""
    archive = zipfile.ZipFile(io.BytesIO(client.get(task["links"]["zip"]).content))
    peaks = client.get(f"{task['links']['self']}/stems/vocals/peaks", params={"points": 50})
    held = wait_for(lambda: client.get("/v1/status").json()["retention"]["results_bytes"],
                    timeout_s=30, step_s=0.2)
    return {"zip": sorted(archive.namelist()), "peaks": len(peaks.json()["max"]),
            "results_bytes": held}


def fetched(manager, task: dict) -> bool:
    """`fetch` (the Python API) copies the stems here, as they were downloaded."""
    outputs = manager.fetch(task["task_id"], f"{ROOT}/fetched")
    return all(Path(path).read_bytes() == Path(f"{ROOT}/got/first/{stem}.wav").read_bytes()
               for stem, path in outputs.items())


def nodes(manager, task: dict, head_node: str) -> dict:
    """The node whose worker ran `task`, the head's, and the other live one's."""
    import ray

    far = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["NodeID"] != head_node]
    return {"node": manager.get_status(task["task_id"])["node"], "head_node": head_node,
            "far_node": far}


def running(client, task: dict) -> dict:
    return wait_for(lambda: (lambda r: r if r["state"] == "running" else None)(
        client.get(task["links"]["self"]).json()), timeout_s=60, step_s=0.05)


def posted(client, song: str) -> dict:
    with open(song, "rb") as handle:
        answer = client.post("/v1/tasks", files={"file": (Path(song).name, handle)},
                             data={"project": "two"})
    assert answer.status_code == 202, answer.text
    return answer.json()


def finished(client, task: dict, name: str) -> dict:
    """Wait for `task` to end; download its stems to ROOT/got/NAME."""
    record = wait_for(lambda: (lambda r: r if r.get("state") in ("succeeded", "failed") else None)(
        client.get(task["links"]["self"]).json()), timeout_s=180, step_s=0.2)  # 503: restarting
    got = Path(f"{ROOT}/got/{name}")
    got.mkdir(parents=True, exist_ok=True)
    for stem, url in (record["outputs"] or {}).items():
        answer = client.get(url)
        assert answer.status_code == 200, answer.text
        (got / f"{stem}.wav").write_bytes(answer.content)
    return record


def separated(client, song: str, name: str) -> dict:
    return finished(client, posted(client, song), name)


def purge(client, record: dict) -> dict:
    answer = client.delete(record["links"]["self"], params={"purge": "true"})
    return {"purge": answer.status_code,
            "after": [client.get(url).status_code for url in record["outputs"].values()]}


if __name__ == "__main__":
    scenario(json.loads(sys.argv[1]))
