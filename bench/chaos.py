#!/usr/bin/env python
"""Chaos run: submit N tasks and, while they run, kill workers, the scheduler, a node and Ray itself.

    python bench/chaos.py --tasks 300 --json out.json     # the figures in docs/reliability.md
    python bench/chaos.py --tasks 12 --no-extras          # the size tests/e2e/test_chaos.py runs

The run owns its Ray: a `ray.cluster_utils.Cluster` whose head has 0 CPUs (the scheduler lives
there) and two worker nodes of one CPU each (one worker actor on each), started under a private
`RAY_TMPDIR` so that no other Ray on this machine is joined or re-pointed. The service is the
real one (`WorkerManager`, detached scheduler, SQLite journal in a state folder of the run), with
model `demucs_unittest`, shifts 0 and clips of 1-4 s made here, at mixed priorities.

Faults, each injected while a task runs (the run waits for one in the journal):
  worker_sigkill   SIGKILL of a busy worker process (pid from `get_status()["workers"]`)
  scheduler_kill   `ray.kill(scheduler, no_restart=False)`; Ray restarts it and it recovers
                   from the journal. The run then calls nothing on it for `--unprompted-s`
                   seconds: a restarted scheduler must resume on its own, with no client.
  node_removal     the node of a busy worker disappears (its processes SIGKILLed, or SIGTERM
                   with --graceful-node-removal), then a fresh node joins
  ray_restart      every process of the Ray instance SIGKILLed at once (`ray stop --force`), a
                   new instance started, and a new service on the same state folder (journal)

Then (unless --no-extras) 1,000 concurrent `add_task` calls for one (project, file id), and a
SIGKILL of a worker while it writes stems (the moment its `.FILE_ID.*.tmp` staging folder appears).

Recovery time of a fault: from its injection to the moment every task it interrupted is running
again (a later attempt dispatched to a live worker) or has reached a terminal state. A fault that
interrupted no task (its target finished first) has none. Times come from the journal's own
`started_at`/`finished_at`, polled every 0.1 s.

At the end everything is stopped and the journal and output folder are checked: lost = 0 (every
accepted task has exactly one record, terminal, and no record ever left a terminal state),
duplicate outputs = 0, partial output folders = 0 (no `.tmp` staging left, every folder has a
complete manifest whose files match their sizes and sha256), every failure has a legitimate
reason, no scheduler stalled. The figures print as a table and go to --json; exit 1 on a violation.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

FAULT_KINDS = ("worker_sigkill", "scheduler_kill", "node_removal", "ray_restart")
TERMINAL = ("succeeded", "failed", "cancelled")
# Error types a task may legitimately end `failed` with after using up its retries under chaos.
RETRYABLE_TYPES = ("WorkerDied", "ServiceRestarted", "TaskTimeout", "OutOfMemory",
                   "OutputWriteFailed", "InternalError")
# The planted bad task: its clip is overwritten once accepted, so the worker's own check of the
# input fails at once (InvalidInput, no retry); submit's checks would refuse it before.
DOOMED_BYTES = b"not audio at all " * 64
# What its failure says: the header check found no audio, or (overwritten after the worker checked
# it) the decoder failed.
DOOMED_WORDS = ("is not a decodable audio file", "could not be decoded as audio")


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the journal, read directly --------------------------------------------------------------------
def read_journal(path: Path) -> dict[str, dict]:
    """Every record in the journal by task id (read-only; safe while the service writes)."""
    if not Path(path).exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = db.execute("SELECT task_id, record FROM tasks").fetchall()
    finally:
        db.close()
    return {task_id: json.loads(record) for task_id, record in rows}


@dataclasses.dataclass
class Trace:
    """What the watcher saw of one task: when each attempt started, and its terminal state."""

    starts: dict = dataclasses.field(default_factory=dict)  # attempt -> started_at
    terminal: tuple | None = None  # (state, finished_at, attempts)


class JournalWatcher(threading.Thread):
    """Polls the journal every `interval_s`: attempt start times, terminal states, violations."""

    def __init__(self, path: Path, interval_s: float = 0.1):
        super().__init__(daemon=True, name="journal-watcher")
        self.path, self.interval_s = Path(path), interval_s
        self.traces: dict[str, Trace] = {}
        self.violations: list[str] = []
        self.records: dict[str, dict] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self.poll()

    def poll(self) -> None:
        try:
            records = read_journal(self.path)
        except sqlite3.Error:
            return
        with self._lock:
            self.records = records
            for task_id, record in records.items():
                trace = self.traces.setdefault(task_id, Trace())
                if record["attempts"] and record["started_at"]:
                    trace.starts.setdefault(record["attempts"], record["started_at"])
                state = record["state"]
                if state in TERMINAL:
                    seen = (state, record["finished_at"], record["attempts"])
                    if trace.terminal is None:
                        trace.terminal = seen
                    elif trace.terminal[:2] != seen[:2]:
                        self.violations.append(f"task {task_id} reached a second terminal state: "
                                               f"{trace.terminal[0]} then {state}")
                        trace.terminal = seen
                elif trace.terminal is not None:
                    self.violations.append(f"task {task_id} left terminal state "
                                           f"{trace.terminal[0]} for {state}")

    def running(self) -> dict[str, int]:
        """Tasks the journal says are running now, with their attempt."""
        self.poll()
        with self._lock:
            return {t: r["attempts"] for t, r in self.records.items() if r["state"] == "running"}

    def states(self) -> dict[str, str]:
        with self._lock:
            return {t: r["state"] for t, r in self.records.items()}

    def recovered_at(self, task_id: str, attempt: int, since: float) -> float | None:
        """When `task_id` ran again after losing `attempt` (or ended), else None."""
        with self._lock:
            trace = self.traces.get(task_id)
            if trace is None:
                return None
            times = [t for a, t in trace.starts.items() if a > attempt and t and t >= since - 1.0]
            if trace.terminal is not None and trace.terminal[1] and trace.terminal[1] >= since:
                times.append(trace.terminal[1])
            return max(since, min(times)) if times else None

    def finished_before(self, task_id: str, since: float) -> bool:
        with self._lock:
            trace = self.traces.get(task_id)
            return bool(trace and trace.terminal and trace.terminal[1] and trace.terminal[1] < since)


# -- Ray, owned by this run ------------------------------------------------------------------------
def isolate_ray() -> str:
    """Point Ray's temp dir (sessions, the `ray_current_cluster` file) at a private folder.

    `Cluster` writes its address there, and `WorkerManager` joins what that file names: with the
    default `/tmp/ray`, other raydemucs clients on this machine would join the chaos cluster.
    """
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = tempfile.mkdtemp(prefix="rdchaos", dir="/tmp")  # short: unix socket paths are limited
    os.environ["RAY_TMPDIR"] = tmp
    return tmp


def _process_tree(pids: list[int]) -> list:
    import psutil

    procs = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            continue
        procs[proc.pid] = proc
        try:
            for child in proc.children(recursive=True):
                procs[child.pid] = child
        except psutil.Error:
            pass
    return list(procs.values())


def sigkill_all(procs: list) -> int:
    import psutil

    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=30)
    return len(procs)


def node_processes(node) -> list:
    """Every process a Ray node started (raylet, agents, GCS on a head) and their children."""
    pids = [info.process.pid for infos in node.all_processes.values() for info in infos
            if info.process is not None]
    return _process_tree(pids)


class ChaosCluster:
    """A head with 0 CPUs (the scheduler) and `nodes` worker nodes of `cpus_per_node` CPUs."""

    def __init__(self, nodes: int = 2, cpus_per_node: int = 1):
        self.nodes, self.cpus_per_node = nodes, cpus_per_node
        self.cluster = None

    def start(self) -> "ChaosCluster":
        import ray
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=0, include_dashboard=False))
        for _ in range(self.nodes):
            self.add_node()
        ray.init(address=self.cluster.address, namespace="raydemucs", log_to_driver=False,
                 logging_level="WARNING")
        return self

    def add_node(self):
        return self.cluster.add_node(num_cpus=self.cpus_per_node)

    def worker_node(self, node_id: str):
        return next((n for n in self.cluster.worker_nodes if n.node_id == node_id), None)

    def remove_node(self, node, graceful: bool) -> None:
        if not graceful:  # the machine vanishes: nothing gets to say goodbye
            sigkill_all(node_processes(node))
        self.cluster.remove_node(node, allow_graceful=graceful)

    def hard_stop(self) -> int:
        """`ray stop --force` for this instance: the driver detaches, then every process dies."""
        import ray

        ray.shutdown()
        procs = [p for node in self.cluster.list_all_nodes() for p in node_processes(node)]
        killed = sigkill_all(procs)
        for node in list(self.cluster.worker_nodes):
            self.cluster.remove_node(node, allow_graceful=False)
        if self.cluster.head_node is not None:
            self.cluster.remove_node(self.cluster.head_node, allow_graceful=False)
        return killed

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()


def chaos_config(state_dir: Path, max_workers: int = 2, **sections):
    """The test profile (demucs_unittest, shifts 0) with this run's journal and a fresh name."""
    from raydemucs.core.config import load_config

    overrides = {"service": {"name": f"chaos{uuid.uuid4().hex[:6]}", "state_dir": str(state_dir),
                             "log_level": "info"},
                 "workers": {"memory_mb": 0, "max_workers": max_workers}}
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_config("test", overrides=overrides, environ={})


def new_manager(config):
    from raydemucs import WorkerManager

    manager = WorkerManager(config)
    manager.scheduler(create=True, detached=True)
    return manager


# -- the pieces the tests call on their own ---------------------------------------------------------
def make_clips(folder: Path, count: int, min_s: float = 1.0, max_s: float = 4.0,
               seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    return [benchlib.write_wav(folder / f"clip{i:03d}.wav",
                               benchlib.make_signal(round(rng.uniform(min_s, max_s), 2), seed=i))
            for i in range(count)]


def folder_is_whole(folder: Path) -> tuple[bool, str | None]:
    """(complete, manifest task id): the manifest exists and every stem matches size and sha256."""
    from raydemucs.storage.folders import file_sha256

    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False, None
    stems = manifest.get("stems")
    if not isinstance(stems, dict) or not stems:
        return False, manifest.get("task_id")
    listed = {"manifest.json"}
    for entry in stems.values():
        path = folder / entry["file"]
        listed.add(entry["file"])
        if (not path.is_file() or path.stat().st_size != entry["bytes"]
                or file_sha256(path) != entry["sha256"]):
            return False, manifest.get("task_id")
    extra = {p.name for p in folder.iterdir()} - listed
    return not extra, manifest.get("task_id")


def scan_outputs(output_dir: Path, records: dict[str, dict]) -> dict:
    """Check every folder under `output_dir` against the journal's `records`.

    partial: `.tmp` staging folders left behind, and visible folders that are not whole.
    duplicate: more than one folder naming one task, or a folder no (project, file id) owns.
    missing: succeeded tasks without their whole folder. orphan: a whole folder of a task that
    did not succeed (allowed by at-least-once execution, reported).
    """
    by_key = {(r["project"], r["file_id"]): r for r in records.values()}
    found: dict[str, list[str]] = {}
    partial, staging, foreign, orphans = [], [], [], []
    root = Path(output_dir)
    for project in sorted(root.iterdir()) if root.exists() else []:
        if not project.is_dir():
            continue
        for entry in sorted(project.iterdir()):
            rel = f"{project.name}/{entry.name}"
            if entry.name.startswith("."):
                (staging if entry.name.endswith(".tmp") else partial).append(rel)
                continue
            whole, task_id = folder_is_whole(entry)
            if not whole:
                partial.append(rel)
                continue
            owner = by_key.get((project.name, entry.name))
            if owner is None or owner["task_id"] != task_id:
                foreign.append(rel)
                continue
            found.setdefault(task_id, []).append(rel)
            if owner["state"] != "succeeded":
                orphans.append(f"{rel} ({owner['state']})")
    duplicates = [f for folders in found.values() if len(folders) > 1 for f in folders[1:]]
    missing = [r["task_id"] for r in records.values()
               if r["state"] == "succeeded" and r["task_id"] not in found]
    mismatched = [r["task_id"] for r in records.values() if r["state"] == "succeeded"
                  and r["task_id"] in found and not all(Path(p).is_file()
                                                          for p in (r["outputs"] or {}).values())]
    return {"folders": sum(len(f) for f in found.values()),
            "partial_visible": len(partial) + len(staging), "partial": partial + staging,
            "staging_left": staging, "duplicate_outputs": len(duplicates) + len(foreign),
            "duplicates": duplicates + foreign, "missing_outputs": missing + mismatched,
            "orphan_outputs": orphans}


def concurrent_submits(manager, clip: Path, output_dir: Path, n: int = 1000, threads: int = 32,
                       project: str = "idempotency", file_id: str = "same-song",
                       wait_s: float = 180.0) -> dict:
    """`n` threads-worth of `add_task` for one (project, file id): one task, run once, one folder."""
    barrier = threading.Barrier(threads)

    def one(i: int) -> str:
        if i < threads:
            barrier.wait()  # the first wave starts together
        return manager.add_task(clip, file_id=file_id, output_dir=output_dir,
                                project_name=project, priority=("high", "normal", "low")[i % 3])

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(one, range(n)))
    submit_s = time.monotonic() - started
    distinct = sorted(set(ids))
    record = manager.wait_all(distinct, timeout=wait_s)[0]
    journal = read_journal(Path(manager.get_status()["journal"]))
    rows = [r for r in journal.values() if r["project"] == project]
    whole, owner = folder_is_whole(Path(output_dir) / project / file_id)
    leftovers = [p.name for p in (Path(output_dir) / project).iterdir() if p.name != file_id]
    return {"submits": n, "threads": threads, "submit_s": round(submit_s, 2),
            "distinct_task_ids": len(distinct), "journal_rows": len(rows),
            "state": record["state"], "attempts": record["attempts"],
            "folder_whole": whole and owner == record["task_id"], "other_entries": leftovers}


def kill_during_write(manager, clip: Path, output_dir: Path, project: str = "write-kill",
                      file_id: str = "long-song", fmt: str = "mp3", min_files: int = 1,
                      wait_s: float = 240.0) -> dict:
    """SIGKILL the worker once its staging folder holds `min_files` stems and no manifest yet.

    The staging folder is `.FILE_ID.<hex>.tmp` in the project folder; mp3 on a long-ish clip
    makes each stem take a while to write, so the kill lands between two stems.
    """
    project_dir = Path(output_dir) / project
    task_id = manager.add_task(clip, file_id=file_id, output_dir=output_dir,
                               project_name=project, format=fmt, priority="high")
    deadline = time.monotonic() + wait_s
    pid = None
    while pid is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} never started")
        worker = next((w for w in manager.get_status()["workers"]
                       if w["task_id"] == task_id and w["pid"]), None)
        pid = worker and worker["pid"]
        time.sleep(0.05)
    check_worker_pid(pid)
    prefix = f".{file_id}."
    staging = None
    while staging is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} never reached the write phase")
        if project_dir.exists():
            staging = next((e for e in os.scandir(project_dir)
                            if e.name.startswith(prefix) and e.name.endswith(".tmp")), None)
        try:
            if staging is not None and len(os.listdir(staging.path)) < min_files:
                staging = None
        except OSError:
            staging = None
        if staging is None:
            time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    try:
        in_staging = sorted(os.listdir(staging.path))
    except OSError:
        in_staging = None
    final_visible_after_kill = (project_dir / file_id).exists()
    records = manager.wait_all([task_id], timeout=wait_s)
    record = records[0]
    whole, owner = folder_is_whole(project_dir / file_id)
    left = sorted(p.name for p in project_dir.iterdir() if p.name != file_id)
    return {"task_id": task_id, "format": fmt, "killed_pid": pid, "killed_at": killed_at,
            "staging_at_kill": staging.name, "files_in_staging_at_kill": in_staging,
            "hit_write_phase": (in_staging is not None and len(in_staging) >= min_files
                                and "manifest.json" not in in_staging),
            "final_folder_visible_after_kill": final_visible_after_kill,
            "state": record["state"], "attempts": record["attempts"],
            "error": record["error"], "folder_whole": whole and owner == task_id,
            "left_in_project_folder": left}


def is_live_worker(pid: int | None) -> bool:
    """Whether `pid` is a live raydemucs worker process (a status may name one just killed)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "SeparatorWorker" in " ".join(proc.cmdline())
    except (psutil.Error, TypeError, ValueError):
        return False


def check_worker_pid(pid: int) -> None:
    """Refuse to signal anything but a live raydemucs worker process."""
    if not is_live_worker(pid):
        raise RuntimeError(f"pid {pid} is not a live SeparatorWorker process")


# -- the run --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Fault:
    kind: str
    at: float
    affected: dict  # task id -> attempt it interrupted
    detail: str = ""
    recovery_s: float | None = None
    stalled: bool = False


class ChaosRun:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.work_dir or tempfile.mkdtemp(prefix="raydemucs-chaos-")).absolute()
        self.state_dir = self.work / "state"
        self.output_dir = self.work / "out"
        self.config = chaos_config(self.state_dir, tasks={"max_retries": args.max_retries})
        self.cluster: ChaosCluster | None = None
        self.manager = None
        self.watcher = JournalWatcher(self.state_dir / "journal.db")
        self.accepted: dict[str, dict] = {}  # task id -> what the run expects of it
        self.faults: list[Fault] = []
        self.submit_errors: list[str] = []
        self.extras: dict = {}
        self.hits: dict[str, int] = {}  # task id -> faults that interrupted it

    # -- plan -------------------------------------------------------------------------------
    def fault_plan(self) -> list[str]:
        args = self.args
        plan = (["worker_sigkill"] * args.worker_kills + ["scheduler_kill"] * args.scheduler_kills
                + ["node_removal"] * args.node_losses)
        self.rng.shuffle(plan)
        plan.insert(len(plan) // 2, "ray_restart")
        return plan

    def task_list(self, clips: list[Path]) -> list[dict]:
        doomed = set(self.rng.sample(range(len(clips)), max(1, len(clips) // 20)))
        return [{"clip": clip, "file_id": clip.stem, "project": f"p{i % 3}",
                 "priority": self.rng.choice(["high", "normal", "normal", "low"]),
                 "doomed": i in doomed} for i, clip in enumerate(clips)]

    # -- steps ------------------------------------------------------------------------------
    def submit(self, task: dict) -> None:
        try:
            task_id = self.manager.add_task(task["clip"], file_id=task["file_id"],
                                            output_dir=self.output_dir,
                                            project_name=task["project"],
                                            priority=task["priority"])
        except Exception as exc:  # a refused submit is not an accepted task; it is reported
            self.submit_errors.append(f"{task['project']}/{task['file_id']}: {exc}")
            return
        if task["doomed"]:
            task["clip"].write_bytes(DOOMED_BYTES)
        self.accepted[task_id] = task

    def wait_for_running(self, timeout_s: float = 120.0, fresh_s: float = 10.0) -> dict[str, int]:
        """Wait for a running task, for `fresh_s` one that no fault has hit yet."""
        start = time.monotonic()
        while time.monotonic() < start + timeout_s:
            running = self.watcher.running()
            fresh = [t for t in running if not self.hits.get(t)]
            if fresh or (running and time.monotonic() > start + fresh_s):
                return running
            states = self.watcher.states()
            if all(states.get(t) in TERMINAL for t in self.accepted):
                return {}
            time.sleep(0.05)
        return {}

    def inject(self, kind: str) -> Fault:
        return getattr(self, f"_inject_{kind}")()

    def _busy_workers(self) -> list[dict]:
        """Live busy workers, each with `held`: {task id: attempt} of every task in it."""
        status = self.manager.get_status()
        attempts = {r["task_id"]: r["attempts"] for r in status["running"]}
        busy = []
        for worker in status["workers"]:
            held = worker.get("tasks") or ([worker["task_id"]] if worker["task_id"] else [])
            if worker["state"] == "busy" and held and is_live_worker(worker["pid"]):
                busy.append({**worker, "held": {t: attempts.get(t, 1) for t in held}})
        return busy

    def _busy_workers_soon(self, tries: int = 40) -> list[dict]:
        """`_busy_workers`, waiting up to `tries` x 50 ms for one (faults aim at busy workers)."""
        for _ in range(tries):
            busy = self._busy_workers()
            if busy:
                return busy
            time.sleep(0.05)
        return []

    def _least_hit(self, workers: list[dict]) -> dict:
        """A worker whose tasks were interrupted least so far (spreads faults over tasks)."""
        def hits(worker):
            return sum(self.hits.get(t, 0) for t in worker["held"])
        least = min(hits(w) for w in workers)
        return self.rng.choice([w for w in workers if hits(w) == least])

    def _inject_worker_sigkill(self) -> Fault:
        busy = self._busy_workers_soon()
        if busy:
            worker = self._least_hit(busy)
            affected = dict(worker["held"])
        else:
            live = [w for w in self.manager.get_status()["workers"] if is_live_worker(w["pid"])]
            if not live:
                raise RuntimeError("no live worker to kill")
            worker, affected = self.rng.choice(live), {}
        check_worker_pid(worker["pid"])
        at = time.time()
        os.kill(worker["pid"], signal.SIGKILL)
        return Fault("worker_sigkill", at, affected, f"{worker['worker_id']} pid {worker['pid']}")

    def _inject_scheduler_kill(self) -> Fault:
        import ray

        handle = self.manager.scheduler(create=False)
        affected = self.watcher.running()
        at = time.time()
        ray.kill(handle, no_restart=False)
        fault = Fault("scheduler_kill", at, affected, "ray.kill(no_restart=False)")
        # Hands off: no call reaches the restarted scheduler until it has resumed by itself.
        deadline = time.monotonic() + self.args.unprompted_s
        while time.monotonic() < deadline and not self._recovered(fault):
            time.sleep(0.1)
        if not self._recovered(fault):
            fault.stalled = True
            log(f"scheduler did not resume within {self.args.unprompted_s:g} s without a client "
                "call; pinging it")
            self.manager.get_status()
        return fault

    def _inject_node_removal(self) -> Fault:
        busy = self._busy_workers_soon()
        workers = self.manager.get_status()["workers"]
        target = self._least_hit(busy)["node"] if busy else self.rng.choice(
            [w["node"] for w in workers if w["node"]])
        node = self.cluster.worker_node(target)
        if node is None:
            raise RuntimeError(f"node {target} is not one of the chaos cluster's worker nodes")
        affected = {t: a for w in busy if w["node"] == target for t, a in w["held"].items()}
        at = time.time()
        self.cluster.remove_node(node, graceful=self.args.graceful_node_removal)
        fault = Fault("node_removal", at, affected, f"node {target[:8]} removed")
        self.cluster.add_node()  # the replacement, as an autoscaler would bring one
        fault.detail += f"; a new node joined after {time.time() - at:.1f} s"
        return fault

    def _inject_ray_restart(self) -> Fault:
        affected = self.watcher.running()
        at = time.time()
        killed = self.cluster.hard_stop()
        self.manager = None
        self.cluster = ChaosCluster(self.args.nodes).start()
        self.manager = new_manager(self.config)
        return Fault("ray_restart", at, affected,
                     f"{killed} processes SIGKILLed; new instance and service after "
                     f"{time.time() - at:.1f} s")

    def _recovered(self, fault: Fault) -> bool:
        return all(self.watcher.finished_before(t, fault.at)
                   or self.watcher.recovered_at(t, a, fault.at) is not None
                   for t, a in fault.affected.items())

    def wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = self.watcher.states()
            if all(states.get(t) in TERMINAL for t in self.accepted):
                return
            time.sleep(0.2)
        raise TimeoutError(f"tasks not finished after {timeout_s:g} s")

    # -- the whole run ----------------------------------------------------------------------
    def run(self) -> dict:
        started = time.time()
        clips = make_clips(self.work / "inputs", self.args.tasks, seed=self.args.seed)
        tasks = self.task_list(clips)
        plan = self.fault_plan()
        per_batch = max(1, len(tasks) // (len(plan) + 1))  # at least one batch per fault
        batches = [tasks[i:i + per_batch] for i in range(0, len(tasks), per_batch)]
        log(f"{len(tasks)} tasks in {len(batches)} batches; faults: {', '.join(plan)}; "
            f"work dir {self.work}")
        self.cluster = ChaosCluster(self.args.nodes).start()
        self.manager = new_manager(self.config)
        self.watcher.start()
        try:
            for i, batch in enumerate(batches):
                for task in batch:
                    self.submit(task)
                if i < len(plan):
                    self._fault(plan[i])
            self.wait_all(self.args.timeout_s)
            if self.args.extras:
                self.run_extras()
        finally:
            self.stop()
        return self.report(time.time() - started)

    def _fault(self, kind: str) -> None:
        running = self.wait_for_running()
        if not running:
            log(f"{kind}: no task running to interrupt; injecting anyway")
        fault = self.inject(kind)
        self.faults.append(fault)
        for task_id in fault.affected:
            self.hits[task_id] = self.hits.get(task_id, 0) + 1
        # One fault at a time: the next waits for this one's recovery, so that each recovery
        # time measures one fault (tasks keep running and arriving meanwhile).
        deadline = time.monotonic() + self.args.recovery_wait_s
        while not self._recovered(fault) and time.monotonic() < deadline:
            time.sleep(0.1)
        log(f"fault {len(self.faults)}: {kind} ({fault.detail}); interrupted "
            f"{len(fault.affected)} task(s); recovered: {self._recovered(fault)}")

    def run_extras(self) -> None:
        log("1,000 concurrent submits of one (project, file id)")
        clip = make_clips(self.work / "inputs" / "idem", 1, 2.0, 2.0, seed=99)[0]
        self.extras["concurrent_submits"] = concurrent_submits(
            self.manager, clip, self.output_dir, n=self.args.concurrent_submits)
        log("SIGKILL of a worker while it writes stems")
        long_clip = benchlib.write_wav(self.work / "inputs" / "long.wav",
                                       benchlib.make_signal(20.0, seed=7))
        self.extras["kill_during_write"] = kill_during_write(self.manager, long_clip,
                                                             self.output_dir)

    def stop(self) -> None:
        try:
            if self.manager is not None:
                self.manager.shutdown(now=True)
        except Exception as exc:
            log(f"shutdown: {exc}")
        if self.cluster is not None:
            self.cluster.shutdown()
        if self.watcher.is_alive():
            self.watcher.stop()

    # -- figures ----------------------------------------------------------------------------
    def report(self, wall_s: float) -> dict:
        for fault in self.faults:
            times = []
            for task_id, attempt in fault.affected.items():
                if self.watcher.finished_before(task_id, fault.at):
                    continue  # it finished before the signal landed: not interrupted
                at = self.watcher.recovered_at(task_id, attempt, fault.at)
                times.append(float("inf") if at is None else at - fault.at)
            fault.recovery_s = round(max(times), 3) if times else None
        records = read_journal(self.state_dir / "journal.db")
        ours = {t: records.get(t) for t in self.accepted}
        lost = [t for t, r in ours.items() if r is None or r["state"] not in TERMINAL]
        states = {s: sum(1 for r in ours.values() if r and r["state"] == s) for s in TERMINAL}
        failures, illegitimate = [], []
        for task_id, record in ours.items():
            if record is None or record["state"] not in ("failed", "cancelled"):
                if self.accepted[task_id]["doomed"] and record and record["state"] == "succeeded":
                    illegitimate.append(f"{task_id}: a doomed task succeeded")
                continue
            error = record["error"] or {}
            reason = f"{error.get('type')}: {error.get('message')}"
            task = self.accepted[task_id]
            if record["state"] == "cancelled":
                legit = False  # nobody cancels in this run
            elif task["doomed"]:
                legit = (error.get("type") == "InvalidInput"
                         and any(words in reason for words in DOOMED_WORDS))
            else:
                legit = (error.get("type") in RETRYABLE_TYPES
                         and record["attempts"] > self.args.max_retries)
            failures.append({"task_id": task_id, "file": f"{task['project']}/{task['file_id']}",
                             "state": record["state"], "attempts": record["attempts"],
                             "reason": reason, "expected": task["doomed"], "legitimate": legit})
            if not legit:
                illegitimate.append(f"{task_id}: {record['state']} with {reason}")
        outputs = scan_outputs(self.output_dir, records)
        recovery = [f.recovery_s for f in self.faults if f.recovery_s is not None]
        by_kind = {k: sum(1 for f in self.faults if f.kind == k) for k in FAULT_KINDS}
        recovery_by_kind = {k: [f.recovery_s for f in self.faults if f.kind == k] for k in FAULT_KINDS}
        unexpected_rows = sorted(set(records) - set(self.accepted) - self._extra_ids())
        figures = {
            "submitted": len(self.accepted) + len(self.submit_errors),
            "accepted": len(self.accepted), "submit_refused": len(self.submit_errors),
            "succeeded": states["succeeded"], "failed": states["failed"],
            "cancelled": states["cancelled"], "lost": len(lost),
            "terminal_state_violations": len(self.watcher.violations),
            "duplicate_outputs": outputs["duplicate_outputs"],
            "partial_output_folders_visible": outputs["partial_visible"],
            "missing_outputs": len(outputs["missing_outputs"]),
            "orphan_outputs": len(outputs["orphan_outputs"]),
            "retries": sum(max(0, (r or {}).get("attempts", 0) - 1) for r in ours.values()),
            "tasks_retried": sum(1 for r in ours.values() if r and r["attempts"] > 1),
            "faults_injected": by_kind, "faults_total": len(self.faults),
            "faults_without_interrupted_task": sum(1 for f in self.faults if f.recovery_s is None),
            "scheduler_stalls": sum(1 for f in self.faults if f.stalled),
            "recovery_p50_s": _round(benchlib.percentile(recovery, 50)),
            "recovery_p95_s": _round(benchlib.percentile(recovery, 95)),
            "recovery_max_s": _round(max(recovery) if recovery else None),
            "recovery_s_by_kind": recovery_by_kind,
            "wall_s": round(wall_s, 1),
        }
        violations = []
        checks = [("lost", 0), ("terminal_state_violations", 0), ("duplicate_outputs", 0),
                  ("partial_output_folders_visible", 0), ("missing_outputs", 0),
                  ("scheduler_stalls", 0), ("submit_refused", 0)]
        for key, want in checks:
            if figures[key] != want:
                violations.append(f"{key} = {figures[key]}, want {want}")
        if illegitimate:
            violations.append(f"failures without a legitimate reason: {illegitimate}")
        if unexpected_rows:
            violations.append(f"journal rows nobody submitted: {unexpected_rows}")
        missing_kinds = [k for k in FAULT_KINDS if by_kind[k] == 0]
        if missing_kinds:
            violations.append(f"fault kinds never injected: {missing_kinds}")
        if any(math.isinf(x) for x in recovery):
            violations.append("an interrupted task never ran again")
        violations += self._extra_violations()
        return {"ok": not violations, "violations": violations, "figures": figures,
                "extras": self.extras, "failures": failures, "lost_tasks": lost,
                "terminal_state_violations": self.watcher.violations,
                "submit_errors": self.submit_errors, "outputs": outputs,
                "faults": [dataclasses.asdict(f) for f in self.faults],
                "definitions": DEFINITIONS,
                "setup": {"tasks": self.args.tasks, "seed": self.args.seed,
                          "nodes": self.args.nodes, "workers": 2, "max_retries": self.args.max_retries,
                          "model": "demucs_unittest", "shifts": 0, "clips_s": [1.0, 4.0],
                          "node_removal": "graceful" if self.args.graceful_node_removal else "sigkill",
                          "unprompted_s": self.args.unprompted_s, "work_dir": str(self.work),
                          "planned_faults": {"worker_sigkill": self.args.worker_kills,
                                             "scheduler_kill": self.args.scheduler_kills,
                                             "node_removal": self.args.node_losses,
                                             "ray_restart": 1},
                          "machine": {"cpus": os.cpu_count(),
                                      "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}}}

    def _extra_ids(self) -> set:
        return {e["task_id"] for e in self.extras.values() if "task_id" in e} | {
            t for t, r in read_journal(self.state_dir / "journal.db").items()
            if r["project"] == "idempotency"}

    def _extra_violations(self) -> list[str]:
        out = []
        idem = self.extras.get("concurrent_submits")
        if idem and not (idem["distinct_task_ids"] == 1 and idem["journal_rows"] == 1
                         and idem["state"] == "succeeded" and idem["attempts"] == 1
                         and idem["folder_whole"] and not idem["other_entries"]):
            out.append(f"concurrent submits: {idem}")
        kill = self.extras.get("kill_during_write")
        if kill and not (kill["hit_write_phase"] and not kill["final_folder_visible_after_kill"]
                         and kill["state"] == "succeeded" and kill["attempts"] == 2
                         and kill["folder_whole"] and not kill["left_in_project_folder"]):
            out.append(f"kill during write: {kill}")
        return out


DEFINITIONS = {
    "lost": "accepted tasks (submit returned a task id) whose journal record is missing or not "
            "terminal after the run; plus any record that left a terminal state (counted apart)",
    "duplicate_outputs": "output folders beyond one per task, or folders no (project, file id) "
                         "of the journal owns",
    "partial_output_folders_visible": "`.FILE_ID.*.tmp` staging folders left, and folders "
                                      "without a manifest whose stems match size and sha256",
    "retries": "sum over accepted tasks of (attempts - 1)",
    "recovery_s": "from a fault's injection to the moment every task it interrupted is running "
                  "again (a later attempt dispatched to a live worker, journal started_at) or "
                  "terminal (finished_at); faults that interrupted no task have none",
    "legitimate_failure": "the planted bad task (its clip overwritten once accepted -> "
                          "InvalidInput, no retry), or a "
                          "retryable error after max_retries + 1 attempts",
    "scheduler_stalls": "scheduler kills after which the interrupted tasks did not run again "
                        "within --unprompted-s seconds while no client called the scheduler",
}


def _round(value):
    return None if value is None else round(value, 3)


def print_report(result: dict) -> None:
    f = result["figures"]
    rows = [("submitted", f["submitted"]), ("succeeded", f["succeeded"]),
            ("failed", f"{f['failed']} ({sum(x['expected'] for x in result['failures'])} planted, "
                       f"{sum(x['legitimate'] for x in result['failures'])} legitimate)"),
            ("cancelled", f["cancelled"]), ("lost", f["lost"]),
            ("terminal-state violations", f["terminal_state_violations"]),
            ("duplicate outputs", f["duplicate_outputs"]),
            ("partial output folders visible", f["partial_output_folders_visible"]),
            ("succeeded without outputs", f["missing_outputs"]),
            ("retries", f"{f['retries']} ({f['tasks_retried']} tasks)"),
            ("faults injected", ", ".join(f"{k} {v}" for k, v in f["faults_injected"].items())),
            ("scheduler stalls (no client)", f["scheduler_stalls"]),
            ("recovery p50 / p95 / max", f"{f['recovery_p50_s']} / {f['recovery_p95_s']} / "
                                         f"{f['recovery_max_s']} s"),
            ("wall clock", f"{f['wall_s']} s")]
    for kind, times in f["recovery_s_by_kind"].items():
        rows.append((f"  recovery {kind}", ", ".join("-" if t is None else f"{t:.2f}" for t in times)))
    idem = result["extras"].get("concurrent_submits")
    if idem:
        rows.append(("concurrent submits", f"{idem['submits']} submits -> "
                                           f"{idem['distinct_task_ids']} task, {idem['journal_rows']} "
                                           f"journal row, {idem['attempts']} attempt, "
                                           f"{idem['submit_s']} s"))
    kill = result["extras"].get("kill_during_write")
    if kill:
        rows.append(("kill during write", f"staging held {kill['files_in_staging_at_kill']} at "
                                          f"the kill; final folder visible: "
                                          f"{kill['final_folder_visible_after_kill']}; then "
                                          f"{kill['state']} on attempt {kill['attempts']}, "
                                          f"left: {kill['left_in_project_folder']}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for failure in result["failures"]:
        print(f"  failed: {failure['file']} after {failure['attempts']} attempt(s): "
              f"{failure['reason']}{'' if failure['legitimate'] else '  <-- NOT LEGITIMATE'}")
    print("OK" if result["ok"] else "VIOLATIONS:\n  " + "\n  ".join(result["violations"]),
          flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=60, help="tasks to submit (default 60)")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes of 1 CPU (default 2)")
    parser.add_argument("--max-retries", type=int, default=3)
    parser.add_argument("--worker-kills", type=int,
                        help="worker SIGKILLs (default: one per 15 tasks, at least 2)")
    parser.add_argument("--scheduler-kills", type=int,
                        help="scheduler kills (default: one per 100 tasks, at least 1)")
    parser.add_argument("--node-losses", type=int,
                        help="node removals (default: one per 300 tasks, at least 1)")
    parser.add_argument("--unprompted-s", type=float, default=20.0,
                        help="after a scheduler kill, seconds it gets to resume with no client call")
    parser.add_argument("--recovery-wait-s", type=float, default=120.0,
                        help="longest wait for a fault's recovery before the next fault")
    parser.add_argument("--graceful-node-removal", action="store_true",
                        help="SIGTERM the removed node's raylet (a drained node) instead of "
                             "SIGKILLing all its processes (a vanished machine)")
    parser.add_argument("--no-extras", dest="extras", action="store_false",
                        help="skip the 1,000 concurrent submits and the kill during a write")
    parser.add_argument("--concurrent-submits", type=int, default=1000)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="for all tasks to end")
    parser.add_argument("--work-dir", type=Path, help="inputs, journal and outputs (default: temp)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp work dir and Ray's session logs (scheduler log lines)")
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.nodes < 1:
        parser.error("need --tasks >= 2 and --nodes >= 1")
    for name, per, least in (("worker_kills", 15, 2), ("scheduler_kills", 100, 1),
                             ("node_losses", 300, 1)):
        if getattr(args, name) is None:
            setattr(args, name, max(least, args.tasks // per))
        elif getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} cannot be negative")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    ray_tmp = isolate_ray()
    run = ChaosRun(args)
    try:
        result = run.run()
    except Exception:
        traceback.print_exc()
        result = {"ok": False, "violations": [f"the run itself failed: {traceback.format_exc()}"],
                  "figures": {}, "faults": [dataclasses.asdict(f) for f in run.faults]}
    result["setup"] = {**result.get("setup", {}), "ray_tmpdir": ray_tmp}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if not args.keep:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if args.work_dir is None:
            shutil.rmtree(run.work, ignore_errors=True)
    if result.get("figures"):
        print_report(result)
    else:
        print("VIOLATIONS:\n  " + "\n  ".join(result["violations"]), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
