"""The command line as a user runs it: subprocesses against the session's Ray."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from raydemucs.client.ray_head import port_free, ray_command

from support import run_cli


@pytest.fixture
def cli_env(ray_cluster, tmp_path):
    """Environment that points the CLI at the session's Ray, a fresh service name and journal."""
    return {"RAY_ADDRESS": ray_cluster, "RAYDEMUCS_SERVICE_NAME": f"cli{uuid.uuid4().hex[:6]}",
            "RAYDEMUCS_SERVICE_STATE_DIR": str(tmp_path / "state"),
            "RAYDEMUCS_WORKERS_MEMORY_MB": "0", "LOG_LEVEL": "warning"}


def test_submit_wait_without_a_service_runs_and_stops_its_own(cli_env, audio, tmp_path):
    songs = [audio(f"{name}.wav", seconds=1.5, seed=i) for i, name in enumerate("abc")]
    result = run_cli("submit", *songs, "-o", tmp_path / "out", "--project", "My Project",
                     "-n", "demucs_unittest", "--shifts", "0", "--wait", "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    accepted, [summary], finished = lines[:3], lines[3:4], lines[4:]  # three files: a batch
    assert [a["file_id"] for a in accepted] == ["a", "b", "c"]
    assert {a["state"] for a in accepted} == {"queued"}
    assert {a["batch_id"] for a in accepted} == {summary["batch"]["batch_id"]}
    assert (summary["batch"]["items"], summary["batch"]["queued"]) == (3, 3)
    assert [f["state"] for f in finished] == ["succeeded"] * 3
    for record in finished:
        for path in record["outputs"].values():
            assert path.startswith(str(tmp_path / "out" / "My Project" / record["file_id"]))
    status = run_cli("status", env=cli_env)
    assert status.returncode == 3 and "no raydemucs service" in status.stderr


def test_service_start_submit_status_wait_cancel_stop(cli_env, audio, tmp_path):
    started = run_cli("start", "--profile", "test", env=cli_env)
    assert started.returncode == 0, started.stderr
    try:
        assert run_cli("start", "--profile", "test", env=cli_env).returncode == 0  # harmless twice
        submitted = run_cli("submit", audio("song.wav", seconds=1.0), "-o", tmp_path / "out",
                            "--json", "--priority", "high", env=cli_env)
        assert submitted.returncode == 0, submitted.stderr
        task = json.loads(submitted.stdout)
        assert set(task) == {"task_id", "file_id", "project", "state"}
        waited = run_cli("wait", task["task_id"], "--timeout", "120", env=cli_env)
        assert waited.returncode == 0, waited.stderr
        assert "succeeded" in waited.stdout and "vocals:" in waited.stdout
        record = json.loads(run_cli("status", task["task_id"], "--json", env=cli_env).stdout)
        assert record["state"] == "succeeded" and record["attempts"] == 1
        assert record["error"] is None and set(record["outputs"]) == {"drums", "bass", "other", "vocals"}
        assert record["priority"] == "high" and record["worker"].startswith("worker-")
        service = json.loads(run_cli("status", "--json", env=cli_env).stdout)
        assert service["queue"]["succeeded"] == 1
        for worker in service["workers"]:
            assert {"state", "task_id", "pid", "rss_bytes", "cpu_percent", "tasks_done",
                    "restarts"} <= set(worker)
        table = run_cli("status", env=cli_env).stdout
        assert "WORKER" in table and "worker-0" in table
        cancelled = run_cli("cancel", task["task_id"], env=cli_env)
        assert cancelled.returncode == 0 and "succeeded" in cancelled.stdout  # already finished
    finally:
        stopped = run_cli("stop", env=cli_env)
    assert stopped.returncode == 0, stopped.stderr
    assert run_cli("status", env=cli_env).returncode == 3


@pytest.mark.parametrize("args, message", [
    (["submit", "{missing}"], "does not exist"),
    (["submit", "{text}"], "not a decodable audio file"),
    (["submit", "{song}", "--project", "../escape"], "project name"),
    (["submit", "{song}", "--file-id", "a/b"], "file id"),
    (["submit", "{song}", "-n", "no_such_model"], "unknown model 'no_such_model'"),
    (["submit", "{song}", "-n", "htdemucs"], "htdemucs is not in the local model caches"),
    (["submit", "{song}", "--shifts", "-1"], "separation.shifts"),
    (["submit", "{song}", "--priority", "urgent"], "priority 'urgent'"),
    (["submit", "{song}", "--profile", "nope"], "unknown profile"),
    (["submit", "{song}", "-o", "{song}"], "not a directory"),
    (["submit", "{song}", "{song}", "--file-id", "x"], "--file-id names one input"),
    (["submit", "{song}", "-n", "demucs_unittest", "--config", "{gpu_only}"],
     "no worker pool serves model 'demucs_unittest'"),
])
def test_bad_input_exits_2_with_one_line_and_queues_nothing(cli_env, audio, tmp_path, args, message):
    song = audio("song.wav", seconds=0.5)
    text = tmp_path / "text.wav"
    text.write_text("not audio")
    gpu_only = tmp_path / "gpu-only.yaml"
    gpu_only.write_text("pools:\n  - {name: gpu, models: [htdemucs], num_gpus: 1}\n")
    names = {"missing": tmp_path / "missing.wav", "text": text, "song": song, "gpu_only": gpu_only}
    offline = {"RAYDEMUCS_SEPARATION_MODEL": "demucs_unittest", "HF_HUB_OFFLINE": "1",
               "HF_HUB_CACHE": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    result = run_cli(*[a.format(**names) for a in args], "--wait", env={**cli_env, **offline})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert not list((tmp_path / "state").glob("*.db"))


def test_a_failed_task_exits_1(cli_env, audio, tmp_path, tiny_repo):
    result = run_cli("submit", audio("song.wav", seconds=0.5), "-o", tmp_path / "out",
                     "-n", "tiny", "--repo", tiny_repo, "--two-stems", "piano", "--wait",
                     env=cli_env)  # a local model's stems: known once loaded, the worker fails it
    assert result.returncode == 1
    assert "failed" in result.stdout and "InvalidInput" in result.stdout


@pytest.fixture
def own_ray(tmp_path):
    """A machine of our own for Ray heads: a private Ray temp dir (so no other Ray here is found),
    a free port, and a PATH without any `ray` (this venv's bin, pyenv's shims), as a systemd unit
    or a container runs `/path/venv/bin/python -m raydemucs`. Every process a test starts here (`started`, and the
    head named in its own state directory) is ended afterwards, with what it runs."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket path limit
    state = tmp_path / "state"
    bare_path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                                if not shutil.which("ray", path=d))  # venv bin, pyenv shims
    started = []
    own = SimpleNamespace(port=_free_port(), state=state, started=started, env={
        "RAY_ADDRESS": None, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": None, "PATH": bare_path,
        "RAYDEMUCS_SERVICE_NAME": "plain", "RAYDEMUCS_SERVICE_STATE_DIR": str(state),
        "RAYDEMUCS_WORKERS_MEMORY_MB": "0", "MAX_WORKERS": "1"})
    yield own
    marked = _marked_pid(state)
    for pid in [*started, *([marked] if marked else [])]:
        _end_process_tree(pid)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _marked_pid(state) -> int | None:
    """The pid of the head `start` recorded in this test's own state directory."""
    marker = state / "ray-started-by-raydemucs"
    return int(marker.read_text().split()[0]) if marker.exists() else None


def _process_tree(pid: int) -> list:
    try:
        head = psutil.Process(pid)
        return [head, *head.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _end_process_tree(pid: int) -> None:
    """End a head this test started (by its pid) and what it runs, whatever the code did."""
    processes = _process_tree(pid)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=30)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=30)


def _wait_until_serving(own, service) -> None:
    deadline = time.monotonic() + 240
    while run_cli("status", env=own.env).returncode != 0:
        assert service.poll() is None, service.communicate()
        assert time.monotonic() < deadline, "the foreground service never answered"
        time.sleep(1)


def test_start_from_an_unactivated_venv_runs_its_own_ray_head_and_stop_ends_it(own_ray, audio,
                                                                                tmp_path):
    """The plain path, as a systemd unit runs it: the venv's interpreter by its path, its bin not
    on PATH, no address, no Ray running: `start` launches `ray start --head` from this interpreter,
    other processes find it (with its auth token), `stop` drains and ends that head, all of it."""
    env = own_ray.env
    assert shutil.which("ray", path=env["PATH"]) is None
    started = run_cli("start", "--profile", "test", "--port", own_ray.port, env=env, timeout=240)
    assert started.returncode == 0, started.stderr
    head = _process_tree(_marked_pid(own_ray.state))
    try:
        submitted = run_cli("submit", audio("song.wav", seconds=1.0), "-o", tmp_path / "out",
                            "--json", env=env)
        assert submitted.returncode == 0, submitted.stderr
        task_id = json.loads(submitted.stdout)["task_id"]
        waited = run_cli("wait", task_id, "--timeout", "120", env=env)
        assert waited.returncode == 0, waited.stderr
    finally:
        stopped = run_cli("stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert head and not [p for p in head if p.is_running()]
    assert not (own_ray.state / "ray-started-by-raydemucs").exists()
    assert port_free(own_ray.port)
    assert run_cli("status", env=env).returncode == 3


def test_a_folder_with_wait_and_no_ray_running_starts_ray_and_separates_it(own_ray, audio,
                                                                           tmp_path):
    """The README's main job on a bare machine: the Ray this command starts is started from its
    main thread (a Ray started from the chunk sender's thread died with it)."""
    for name in ("a/song", "b/song"):
        target = tmp_path / "music" / f"{name}.wav"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(audio(f"{name.replace('/', '-')}.wav", seconds=1.0).read_bytes())
    done = run_cli("submit", tmp_path / "music", "-o", tmp_path / "out", "--project", "catalog",
                   "-n", "demucs_unittest", "--wait", env=own_ray.env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 items: 2 queued" in done.stdout
    for file_id in ("a__song", "b__song"):
        assert (tmp_path / "out" / "catalog" / file_id / "manifest.json").is_file()


def test_stop_ends_the_head_after_the_scheduler_died(own_ray):
    """A foreground service SIGKILLed takes its scheduler with it, not the head it started (its
    own session): `stop` finds no scheduler, still ends that head, and frees the port."""
    service = subprocess.Popen(
        [sys.executable, "-m", "raydemucs", "start", "--foreground", "--profile", "test",
         "--port", str(own_ray.port)], env=_full_env(own_ray.env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    own_ray.started.append(service.pid)
    _wait_until_serving(own_ray, service)
    head = _process_tree(_marked_pid(own_ray.state))
    service.kill()
    service.communicate()
    assert head[0].is_running()
    stopped = run_cli("stop", env=own_ray.env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the Ray head raydemucs started here (pid {head[0].pid})" in stopped.stdout
    assert not [p for p in head if p.is_running()]
    assert port_free(own_ray.port) and _marked_pid(own_ray.state) is None


def test_start_on_a_port_held_by_another_ray_head_says_so_in_one_line(own_ray, tmp_path):
    """A head that raydemucs did not start holds the port (and cannot be joined: its Ray temp dir
    is another's): `start` says so and how to join it, and starts nothing."""
    other_tmp = tempfile.mkdtemp(prefix="ro", dir="/tmp")
    ports = [f"--{name}={_free_port()}" for name in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port")]
    with open(tmp_path / "other-head.log", "wb") as log:
        other = subprocess.Popen(
            [*ray_command(), "start", "--head", "--block", f"--port={own_ray.port}", "--num-cpus=0",
             "--include-dashboard=false", "--disable-usage-stats", *ports],
            env=_full_env({**own_ray.env, "RAY_TMPDIR": other_tmp}), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    own_ray.started.append(other.pid)
    try:
        deadline = time.monotonic() + 120
        while port_free(own_ray.port):
            assert other.poll() is None, (tmp_path / "other-head.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        started = run_cli("start", "--profile", "test", "--port", own_ray.port, env=own_ray.env,
                          timeout=240)
        assert started.returncode == 3, (started.stdout, started.stderr)
        assert len(started.stderr.strip().splitlines()) == 1, started.stderr
        assert f"port {own_ray.port} is held by a Ray head" in started.stderr
        assert f"--address 127.0.0.1:{own_ray.port}" in started.stderr
        assert _marked_pid(own_ray.state) is None and other.poll() is None
    finally:
        _end_process_tree(other.pid)
        shutil.rmtree(other_tmp, ignore_errors=True)


def _full_env(env: dict) -> dict:
    merged = {**os.environ, **env}
    return {key: value for key, value in merged.items() if value is not None}

