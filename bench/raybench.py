"""The raydemucs contenders: cold (`submit --wait` in a subprocess), warm (Python API against a
service already running) and the dispatch-latency probe. Imported only when Ray is wanted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchlib import MODEL_NAME, RssSampler, percentile, tree

WORKER_CLASS = "SeparatorWorker"


def other_ray_clusters() -> list[str]:
    """Live gcs_server processes on this machine (any user): a cold run would join one of them.

    `WorkerManager.connect` calls `ray.init(address="auto")`, which joins the cluster named in
    /tmp/ray/ray_current_cluster or, failing that, any gcs_server it finds running here.
    """
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "gcs_server" or any(
                    "gcs_server" in os.path.basename(part) for part in (proc.info["cmdline"] or [])[:1]):
                found.append(f"pid {proc.pid}")
        except Exception:
            continue
    marker = Path("/tmp/ray/ray_current_cluster")
    if marker.exists():
        found.append(f"{marker} names {marker.read_text().strip()!r}")
    return found


def is_ray_worker(proc) -> str | None:
    """Role for RssSampler: Ray titles an actor process `ray::[NAME:]SeparatorWorker[.method]`."""
    try:
        title = " ".join(proc.cmdline())
    except Exception:
        return None
    return "worker" if title.startswith("ray::") and WORKER_CLASS in title else None


def _records_from_json_lines(text: str) -> list[dict]:
    records = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if "finished_at" in data:
            records[data["task_id"]] = data
    return list(records.values())


def _manifests(records: list[dict]) -> dict[str, dict]:
    out = {}
    for record in records:
        outputs = record.get("outputs") or {}
        if outputs:
            path = Path(next(iter(outputs.values()))).parent / "manifest.json"
            try:
                manifest = json.loads(path.read_text())
                mtime = path.stat().st_mtime
            except (OSError, ValueError):
                continue
            # manifest.json is written last, after every stem: its mtime is when writing ended.
            # The worker serializes `timings` before it measures `write_s`, so fill that in here.
            timings = manifest.setdefault("timings", {})
            if "write_s" not in timings and "created_at" in manifest:
                timings["write_s"] = max(0.0, mtime - manifest["created_at"])
                manifest["write_s_from_mtime"] = True
            manifest["written_at"] = mtime
            out[record["task_id"]] = manifest
    return out


def breakdown(records: list[dict], manifests: dict[str, dict], t0_wall: float,
              t_end_wall: float) -> dict:
    """Where the time went, from the scheduler's timestamps and the workers' manifests."""
    done = [r for r in records if r.get("started_at") and r.get("finished_at")]
    if not done:
        return {}
    first_submit = min(r["submitted_at"] for r in records)
    first_start = min(r["started_at"] for r in done)
    last_finish = max(r["finished_at"] for r in done)
    per_worker: dict[str, list[dict]] = {}
    for record in sorted(done, key=lambda r: r["started_at"]):
        per_worker.setdefault(record["worker"], []).append(record)
    work = {"decode_s": 0.0, "separate_s": 0.0, "write_s": 0.0}
    other = []
    for record in done:
        timings = manifests.get(record["task_id"], {}).get("timings", {})
        for key in work:
            work[key] += timings.get(key, 0.0)
        other.append((record["finished_at"] - record["started_at"]) - sum(timings.values()))
    # the first task on each worker also loads the model when it is not the service default
    first_overheads = [(r[0]["finished_at"] - r[0]["started_at"])
                       - sum(manifests.get(r[0]["task_id"], {}).get("timings", {}).values())
                       for r in per_worker.values()]
    return {
        "to_first_submit_s": first_submit - t0_wall,
        "submit_to_first_dispatch_s": first_start - first_submit,
        "first_dispatch_to_last_finish_s": last_finish - first_start,
        "last_finish_to_exit_s": t_end_wall - last_finish,
        "tasks_per_worker": {w: len(rs) for w, rs in per_worker.items()},
        "sum_decode_s": work["decode_s"], "sum_separate_s": work["separate_s"],
        "sum_write_s": work["write_s"],
        "sum_task_overhead_s": sum(other),
        "first_task_overhead_per_worker_s": first_overheads,
    }


# -- cold ----------------------------------------------------------------------------------------
def run_cold(repo: Path, files: list[Path], out: Path, work: Path, log: Path,
             preload: bool = False, ray_mode: str = "auto") -> dict:
    """`python -m raydemucs submit f1..fN --wait` with no Ray running: it starts Ray itself.

    ray_mode "auto": RAY_ADDRESS unset, exactly as a user runs it, when no other Ray cluster runs
    here; otherwise (or with "local") RAY_ADDRESS=local, which makes `ray.init` start a fresh
    local instance instead of joining another session's cluster. Both start Ray in the subprocess.
    """
    import psutil

    others = other_ray_clusters()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if ray_mode == "local" or others:
        env["RAY_ADDRESS"] = "local"
        ray_mode = "local"
    env.update(MAX_WORKERS="2", RAYDEMUCS_WORKERS_NUM_CPUS="1",
               RAYDEMUCS_SERVICE_STATE_DIR=str(work / f"cold-state-{uuid.uuid4().hex[:8]}"),
               RAYDEMUCS_SERVICE_NAME=f"bench-cold-{uuid.uuid4().hex[:6]}")
    if preload:  # what a fixed `submit --wait -n MODEL` would do: workers preload MODEL
        env.update(RAYDEMUCS_SEPARATION_MODEL=MODEL_NAME, RAYDEMUCS_SEPARATION_REPO=str(repo))
    cmd = [sys.executable, "-m", "raydemucs", "submit", *map(str, files), "--wait", "--json",
           "-n", MODEL_NAME, "--repo", str(repo), "--shifts", "0", "-o", str(out),
           "--project", f"cold-{uuid.uuid4().hex[:6]}"]
    with open(log, "wb") as err:
        t0_wall, started = time.time(), time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        root = psutil.Process(proc.pid)
        with RssSampler(lambda: tree(root), is_ray_worker) as sampler:
            stdout, _ = proc.communicate()
        wall, t_end_wall = time.monotonic() - started, time.time()
    text = stdout.decode(errors="replace")
    (log.with_suffix(".stdout")).write_text(text)
    if proc.returncode:
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"raydemucs cold exited with {proc.returncode}; see {log}:\n{tail}")
    records = _records_from_json_lines(text)
    failed = [r for r in records if r["state"] != "succeeded"]
    if len(records) != len(files) or failed:
        raise RuntimeError(f"raydemucs cold: {len(records)} records, {len(failed)} not succeeded")
    leftovers = [p for p in tree(root)[1:] if p.is_running()]
    return {"wall_s": wall, "processes": len(sampler.worker_peaks()), **sampler.summary(),
            "breakdown": breakdown(records, _manifests(records), t0_wall, t_end_wall),
            "preload_env": preload, "leftover_processes": len(leftovers),
            "ray_address": "local (RAY_ADDRESS=local)" if ray_mode == "local" else "auto (unset)",
            "other_clusters_seen": others}


# -- warm and dispatch (one Ray started here, by its own address) --------------------------------
class LocalRay:
    """A Ray instance started by this process (never joined): `address="local"`."""

    def __enter__(self):
        import ray

        if ray.is_initialized():
            raise RuntimeError("Ray is already initialized in the benchmark process")
        env_address = os.environ.pop("RAY_ADDRESS", None)
        self._env_address = env_address
        try:
            ctx = ray.init(address="local", num_cpus=2, include_dashboard=False,
                           namespace="raydemucs", log_to_driver=False, logging_level="WARNING")
        except Exception:
            ray.shutdown()  # a start that timed out leaves its GCS running otherwise
            raise
        self.address = ctx.address_info.get("gcs_address") or ctx.address_info.get("address")
        return self

    def __exit__(self, *exc):
        import ray

        ray.shutdown()
        if self._env_address is not None:
            os.environ["RAY_ADDRESS"] = self._env_address


def _config(work: Path, name: str, model: str, repo: Path | None, out: Path,
            precision: str = "fp32", runtime: str = "eager", lend_cores: bool = True):
    from raydemucs.core.config import load_config

    # OpenVINO keeps its compiled network beside the model: about 1.8 GB at rest for htdemucs,
    # near the default memory_mb (2048), which is also a ceiling on a worker's RSS (a recycle)
    memory_mb = 3072 if runtime == "openvino" else 2048
    overrides = {
        "workers": {"max_workers": 2, "num_cpus": 1.0, "runtime": runtime,
                    "memory_mb": memory_mb, "lend_cores": lend_cores},
        "separation": {"model": model, "repo": str(repo) if repo else None, "shifts": 0,
                       "precision": precision},
        "service": {"name": name, "state_dir": str(work / f"{name}-state"),
                    "output_dir": str(out), "log_level": "warning"},
    }
    return load_config(overrides=overrides, environ={})


def _start_service(config, timeout_s: float = 600.0):
    """A running service with every worker idle (model loaded); returns its WorkerManager."""
    from raydemucs import WorkerManager

    manager = WorkerManager(config)
    manager.scheduler(create=True)
    deadline = time.monotonic() + timeout_s
    while True:
        workers = manager.get_status()["workers"]
        if workers and all(w["state"] == "idle" for w in workers):
            errors = [w["load_error"] for w in workers if w.get("load_error")]
            if errors:
                raise RuntimeError(f"workers could not load the model: {errors[0]}")
            return manager
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers not ready after {timeout_s:g} s: {workers}")
        time.sleep(0.1)


class StatusSampler(RssSampler):
    """Samples `get_status()["workers"][i]["rss_bytes"]` (the scheduler's last poll) instead."""

    def __init__(self, manager, interval_s: float = 0.2):
        super().__init__(find=None, interval_s=interval_s)
        self.manager = manager

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                workers = self.manager.get_status()["workers"]
            except Exception:
                workers = []
            total = 0
            for w in workers:
                if w.get("pid") and w.get("rss_bytes"):
                    self.peaks[w["pid"]] = max(self.peaks.get(w["pid"], 0), w["rss_bytes"])
                    self.roles[w["pid"]] = "worker"
                    total += w["rss_bytes"]
            self.total_peak = max(self.total_peak, total)
            self.samples += 1
            self._stop.wait(self.interval_s)


def process_role(proc) -> str:
    """What a process on this machine is, for the CPU beside the workers: a Ray part, this
    benchmark, or other work on the machine."""
    if proc.pid == os.getpid():
        return "benchmark (driver)"
    try:
        title = " ".join(proc.cmdline()[:3])
        name = proc.name()
    except Exception:
        return "other"
    if title.startswith("ray::"):
        return ("workers" if WORKER_CLASS in title else "scheduler" if "Scheduler" in title
                else "ray idle workers" if "IDLE" in title else "other actors")
    roles = {"raylet": "raylet", "gcs_server": "gcs_server"}
    if name in roles:
        return roles[name]
    for part, role in (("dashboard/agent", "dashboard agent"), ("runtime_env", "runtime env agent"),
                       ("log_monitor", "log monitor"), ("dashboard/dashboard", "dashboard"),
                       ("monitor.py", "autoscaler monitor")):
        if part in title:
            return role
    return "other"


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) for every process this user can read."""
    import psutil

    found = {}
    for proc in psutil.process_iter():
        try:
            found[proc.pid] = (process_role(proc), sum(proc.cpu_times()[:2]))
        except Exception:
            continue
    return found


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds each role used between two `cpu_by_process` snapshots (a process that started
    meanwhile counts whole; one that ended is gone with its time)."""
    used: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        spent = cpu - before[pid][1] if pid in before and before[pid][0] == role else cpu
        used[role] = used.get(role, 0.0) + max(0.0, spent)
    return dict(sorted(used.items(), key=lambda item: -item[1]))


def workers_cpu_s(handles) -> float:
    """CPU seconds (user + system) the worker processes have used, with their threads (a worker
    replaced meanwhile counts until it went: its own CPU time is gone with it)."""
    import psutil

    total = 0.0
    for handle in handles:
        try:
            total += sum(handle.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def run_warm(repo: Path, files: list[Path], out: Path, work: Path,
             precision: str = "fp32", runtime: str = "eager", lend_cores: bool = True) -> dict:
    """Submit + wait of all files through the Python API, against a service already running
    (its workers' networks built on `runtime` for `precision` at start)."""
    import psutil

    config = _config(work, f"bench-warm-{uuid.uuid4().hex[:6]}", MODEL_NAME, repo, out,
                     precision, runtime, lend_cores)
    manager = _start_service(config)
    try:
        project = f"warm-{uuid.uuid4().hex[:6]}"
        with StatusSampler(manager) as sampler:
            # cross-check with psutil on the same pids (the scheduler polls every 0.5 s)
            pids = [w["pid"] for w in manager.get_status()["workers"]]
            handles = [psutil.Process(pid) for pid in pids]
            cpu_before, machine_before = workers_cpu_s(handles), cpu_by_process()
            with RssSampler(lambda: handles) as direct:
                t0_wall, started = time.time(), time.monotonic()
                specs = [manager.prepare_task(f, output_dir=out, project_name=project,
                                              model=MODEL_NAME, repo=str(repo), shifts=0,
                                              precision=precision, force=True) for f in files]
                submitted = manager.submit(specs)
                records = manager.wait_all([r["task_id"] for r in submitted], poll_s=0.05)
                wall, t_end_wall = time.monotonic() - started, time.time()
            cpu_s = workers_cpu_s(handles) - cpu_before
            beside = cpu_by_role(machine_before, cpu_by_process())
        replaced = sum(w["restarts"] for w in manager.get_status()["workers"])
        if replaced:
            print(f"    note: {replaced} worker(s) replaced during the run", flush=True)
        failed = [r for r in records if r["state"] != "succeeded"]
        if failed:
            raise RuntimeError(f"raydemucs warm: {len(failed)} task(s) failed: {failed[0]['error']}")
        last_finish = max(r["finished_at"] for r in records)
        return {"wall_s": wall, "cpu_s": cpu_s, "wall_to_last_finish_s": last_finish - t0_wall,
                "processes": len(pids), "workers_replaced": replaced, "cpu_by_role_s": beside,
                **sampler.summary(),
                "peak_rss_worker_psutil_bytes": max(direct.peaks.values(), default=None),
                "breakdown": breakdown(records, _manifests(records), t0_wall, t_end_wall)}
    finally:
        manager.shutdown(now=True)


def run_dispatch(clip: Path, tasks: int, out: Path, work: Path) -> dict:
    """`tasks` short tasks on demucs_unittest, 2 workers: worker free -> next task started."""
    config = _config(work, f"bench-dispatch-{uuid.uuid4().hex[:6]}", "demucs_unittest", None, out)
    manager = _start_service(config)
    try:
        project = f"dispatch-{uuid.uuid4().hex[:6]}"
        started = time.monotonic()
        specs = [manager.prepare_task(clip, file_id=f"t{i:04d}", output_dir=out,
                                      project_name=project, model="demucs_unittest", shifts=0,
                                      force=True) for i in range(tasks)]
        prepare_s = time.monotonic() - started
        submitted = manager.submit(specs)
        records = manager.wait_all([r["task_id"] for r in submitted], poll_s=0.1)
        wall = time.monotonic() - started
    finally:
        manager.shutdown(now=True)
    failed = [r for r in records if r["state"] != "succeeded"]
    if failed:
        raise RuntimeError(f"dispatch probe: {len(failed)} task(s) failed: {failed[0]['error']}")
    manifests = _manifests(records)
    gaps, worker_gaps = [], []
    by_worker: dict[str, list[dict]] = {}
    for record in records:
        by_worker.setdefault(record["worker"], []).append(record)
    for runs in by_worker.values():
        runs.sort(key=lambda r: r["started_at"])
        for prev, nxt in zip(runs, runs[1:]):
            gaps.append(nxt["started_at"] - prev["finished_at"])
            a, b = manifests.get(prev["task_id"]), manifests.get(nxt["task_id"])
            if a and b:
                end_a = a["written_at"]
                start_b = (b["created_at"] - b["timings"].get("separate_s", 0.0)
                           - b["timings"].get("decode_s", 0.0))
                worker_gaps.append(start_b - end_a)
    ms = lambda values, q: None if not values else 1000 * percentile(values, q)  # noqa: E731
    return {"tasks": tasks, "workers": len(by_worker), "gaps": len(gaps), "wall_s": wall,
            "client_prepare_s": prepare_s, "tasks_per_s": tasks / wall,
            "p50_ms": ms(gaps, 50), "p99_ms": ms(gaps, 99), "max_ms": ms(gaps, 100),
            "worker_side_p50_ms": ms(worker_gaps, 50), "worker_side_p99_ms": ms(worker_gaps, 99),
            "worker_side_max_ms": ms(worker_gaps, 100)}
