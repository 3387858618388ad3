"""The Ray head raydemucs starts and stops on this machine.

`start` without an address joins the cluster `ray start` runs here, else launches one as
`ray start --head --block` in its own session. The head's pid and start time are kept in the
state directory (`MARKER`), so that `stop` ends this head, with every process it runs, and no
other Ray here, even when its scheduler is gone.
"""
from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from ..core.errors import ServiceUnavailable
from ..core.statedir import private_dir
from .connection import join_ray

MARKER = "ray-started-by-raydemucs"
LOG = "ray-head.log"
DEFAULT_PORT = 6379  # Ray's own default for `ray start --head`
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def ray_command() -> list[str]:
    """Ray's `ray` console script, run by this interpreter: found through the installed
    distribution, not PATH, so that a virtual environment need not be activated."""
    found = importlib.metadata.entry_points(group="console_scripts", name="ray")
    if not found:
        raise ServiceUnavailable(f"Ray's `ray` command is not installed for {sys.executable}")
    entry = next(iter(found))
    launch = (f"import sys; sys.argv[0] = 'ray'; import {entry.module} as cli; "
              f"sys.exit(cli.{entry.attr}())")
    return [sys.executable, "-c", launch]


def ensure_head(state: Path, port: int = DEFAULT_PORT, dashboard_host: str = "127.0.0.1") -> bool:
    """Join the Ray `ray start` runs here, else start a head on `port` and join it; True if
    started. `ServiceUnavailable`, in one line, when the port is held by a head this state
    directory did not start, or the head fails to come up."""
    if _joined():
        return False
    running = marked_head(state)
    if running is not None:
        raise ServiceUnavailable(
            f"the Ray head raydemucs started here (pid {running.pid}) cannot be joined; end it "
            "with `python -m raydemucs stop`, then start again")
    if not port_free(port):
        raise ServiceUnavailable(
            f"port {port} is held by a Ray head (or another program) that raydemucs did not start: "
            f"join it with --address 127.0.0.1:{port}, stop it, or start a head on another --port")
    private_dir(state)
    with open(state / LOG, "ab") as log:
        head = subprocess.Popen(
            [*ray_command(), "start", "--head", "--block", f"--port={port}",
             "--disable-usage-stats", f"--dashboard-host={dashboard_host}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process = psutil.Process(head.pid)
    (state / MARKER).write_text(f"{process.pid} {process.create_time()!r}")
    _wait_joined(state, head)
    return True


def _wait_joined(state: Path, head: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _joined():
        if head.poll() is not None or time.monotonic() > deadline:
            stop_head(state)
            raise ServiceUnavailable(f"`ray start --head` failed ({_last_line(state / LOG)}); "
                                     f"see {state / LOG}")
        time.sleep(0.5)


def stop_head(state: Path) -> int | None:
    """End the Ray head raydemucs started here and the processes it runs; its pid, or None
    when there is none (never started, or already gone)."""
    head = marked_head(state)
    (state / MARKER).unlink(missing_ok=True)
    if head is None:
        return None
    import ray

    ray.shutdown()  # leave the cluster before it goes
    try:
        processes = [head, *head.children(recursive=True)]
        head.terminate()  # `ray start --block` ends its own processes on SIGTERM
    except psutil.NoSuchProcess:
        return head.pid
    _, alive = psutil.wait_procs(processes, timeout=STOP_TIMEOUT_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
    return head.pid


def marked_head(state: Path) -> psutil.Process | None:
    """The head process named in the state directory's marker, if it still runs (a pid reused
    by another process since does not count)."""
    try:
        pid, started = (state / MARKER).read_text().split()
        process = psutil.Process(int(pid))
        if abs(process.create_time() - float(started)) < 0.01:
            return process
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def _joined() -> bool:
    try:
        join_ray(None, start_local=False)
        return True
    except ServiceUnavailable:
        return False


def port_free(port: int) -> bool:
    """Whether nothing on this machine listens on `port`."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else "no output"
