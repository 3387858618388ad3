#!/usr/bin/env python
"""Soak: N short clips through a real service on `demucs_unittest`; each worker's RSS.

    python bench/soak.py --tasks 1500 --compare --json soak.json  # the README's figure
    python bench/soak.py --tasks 2000 --no-recycle               # recycling off: the raw growth
    python bench/soak.py --tasks 400 --clip-s 2 12               # 2 s clips, then 12 s clips

The run owns its Ray (a local instance under a private `RAY_TMPDIR`, `--workers` CPUs) and a real
service on it (`WorkerManager`, scheduler, the test profile; the journal on tmpfs where there is
one, since its fsyncs would otherwise measure the disk rather than the workers). `--compare`
runs the same soak twice in one invocation, on fresh services of the same Ray: first as the
code was before issue 16 (`workers.release_memory` off, no recycling), then with the defaults.
It keeps `--window` tasks queued or running, each one of `--clips` distinct clips of `--clip-s`
seconds (1 s; several lengths: the tasks in that many phases, in order, on the same service) with
`cache=False` (so every task separates) and its own file id, and deletes each succeeded task's
folder (10,000 tasks of stems would fill the disk).

Each worker slot (`worker-0`, ...) is sampled every `--sample-s` seconds: the RSS its own health
poll reports (what the recycle rule sees), its tasks done, its restarts; and, read here from
`/proc/PID/smaps_rollup`, its anonymous memory (heap, torch tensors: the process's own) apart from
shared memory and mapped files. The figures: each slot's RSS after 100, 1,000 and N tasks, the
ratio of the last to the one after 100, the slope of RSS over tasks from task 100 on (MB per
task, least squares, the slot's first process only), the recycles, the throughput, the
machine's load average, and the recycle rule's view (`worker.health.MemoryTrend`): the samples
at rest it judged and the highest of them against its baseline (1.5 is a leak's threshold).
Exit 1 when a task fails or a worker ends more than `--within` above its size at 100 (with
`--compare`, judged on the second soak).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

MARKS = (1, 100, 1000)
SMAPS_KEYS = ("Rss", "Anonymous", "Shared_Clean", "Shared_Dirty", "Private_Clean",
              "Private_Dirty")


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def smaps_rollup(pid: int) -> dict:
    """A process's memory by kind, in bytes (Linux); {} when it is gone."""
    figures = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in SMAPS_KEYS:
                    figures[key.lower()] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return figures


class Sampler(threading.Thread):
    """Every `interval_s`: each worker slot's RSS, memory by kind, tasks done and restarts."""

    def __init__(self, manager, interval_s: float):
        super().__init__(daemon=True, name="soak-sampler")
        self.manager, self.interval_s = manager, interval_s
        self.samples: list[dict] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
        self.sample()

    def sample(self) -> None:
        try:
            workers = self.manager.get_status()["workers"]
        except Exception as exc:  # a slow status is a missed sample, not a failed run
            log(f"status: {exc}")
            return
        now = time.time()
        for worker in workers:
            if worker["rss_bytes"] is None or not worker["pid"]:
                continue
            self.samples.append({"t": now, "worker": worker["worker_id"], "pid": worker["pid"],
                                 "tasks_done": worker["tasks_done"],
                                 "restarts": worker["restarts"], "rss": worker["rss_bytes"],
                                 "memory": worker["memory"], **smaps_rollup(worker["pid"])})


def at_mark(samples: list[dict], mark: int) -> dict | None:
    """The first sample taken once the slot had done `mark` tasks."""
    return next((s for s in samples if s["tasks_done"] >= mark), None)


def mb_per_task(samples: list[dict], start: int = 100) -> float | None:
    """The least-squares slope of RSS over tasks done, from `start` tasks on, in MB per task
    (of one worker process: samples of a later pid, after a recycle, are left out)."""
    points = [(s["tasks_done"], s["rss"] / 2**20) for s in samples
              if s["tasks_done"] >= start and s["pid"] == samples[0]["pid"]]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    return round(sum((x - mean_x) * (y - mean_y) for x, y in points)
                 / sum((x - mean_x) ** 2 for x, _ in points), 4)


def slot_figures(samples: list[dict], tasks: int) -> dict:
    last = samples[-1]
    marks = {str(m): at_mark(samples, m) for m in MARKS}
    marks["last"] = last
    figures = {"tasks_done": last["tasks_done"], "recycles": last["restarts"],
               "pids": len({s["pid"] for s in samples}),
               "rss_mb": {k: s and round(s["rss"] / 2**20, 1) for k, s in marks.items()},
               "anonymous_mb": {k: s and s.get("anonymous") and round(s["anonymous"] / 2**20, 1)
                                for k, s in marks.items()},
               "max_rss_mb": round(max(s["rss"] for s in samples) / 2**20, 1),
               "mb_per_task_first_pid": mb_per_task(samples),
               "at_rest": last["memory"]}
    at_100 = marks["100"]
    figures["last_vs_100"] = at_100 and round(last["rss"] / at_100["rss"], 3)
    return figures


BEFORE = {"release_memory": False, "max_rss_mb": 0, "max_rss_growth": 0}  # as before issue 16


def state_root() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def run(args, work: Path, workers_overrides: dict) -> dict:
    from raydemucs import WorkerManager
    from raydemucs.core.config import load_config

    output_dir = work / "out"
    state_dir = Path(tempfile.mkdtemp(prefix="raydemucs-soak-state-", dir=state_root()))
    phases = [[benchlib.write_wav(work / "inputs" / f"clip{seconds:g}s{i:02d}.wav",
                                  benchlib.make_signal(seconds, seed=i)) for i in range(args.clips)]
              for seconds in args.clip_s]
    workers = {"max_workers": args.workers, "memory_mb": 0, **workers_overrides}
    config = load_config("test", environ={}, overrides={
        "service": {"name": f"soak{uuid.uuid4().hex[:6]}", "state_dir": str(state_dir),
                    "log_level": "warning"}, "workers": workers})
    manager = WorkerManager(config)
    manager.scheduler(create=True)
    sampler = Sampler(manager, args.sample_s)
    sampler.start()
    started = time.time()
    load_before = os.getloadavg()
    failed: list[dict] = []
    pending: list[str] = []
    submitted = done = 0
    next_log = 500
    try:
        while done < args.tasks:
            chunk = min(args.window - len(pending), args.tasks - submitted)
            if chunk > 0:
                specs = [manager.prepare_task(clip_for(phases, submitted + i, args.tasks),
                                              file_id=f"t{submitted + i:06d}",
                                              output_dir=output_dir, project_name="soak",
                                              cache=False) for i in range(chunk)]
                pending += [r["task_id"] for r in manager.submit(specs)]
                submitted += chunk
            time.sleep(args.sample_s / 2)
            still = []
            for record in manager.get_tasks(pending):
                if record["state"] not in ("succeeded", "failed", "cancelled"):
                    still.append(record["task_id"])
                    continue
                done += 1
                if record["state"] != "succeeded":
                    failed.append({"task_id": record["task_id"], "error": record["error"]})
                shutil.rmtree(output_dir / "soak" / record["file_id"], ignore_errors=True)
            pending = still
            if done >= next_log:
                log(f"{done} done, {len(failed)} failed, {time.time() - started:.0f} s")
                next_log += 500
    finally:
        sampler.stop()
        wall_s = time.time() - started
        try:
            manager.shutdown(now=True)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)
    by_slot: dict[str, list[dict]] = {}
    for sample in sampler.samples:
        by_slot.setdefault(sample["worker"], []).append(sample)
    slots = {name: slot_figures(samples, args.tasks) for name, samples in sorted(by_slot.items())}
    result = {"tasks": args.tasks, "failed": len(failed), "failures": failed[:20],
              "wall_s": round(wall_s, 1), "tasks_per_s": round(args.tasks / wall_s, 2),
              "workers": slots,
              "recycles": sum(s["recycles"] for s in slots.values()),
              "load_avg": {"before": [round(x, 2) for x in load_before],
                           "after": [round(x, 2) for x in os.getloadavg()]},
              "setup": {"workers": args.workers, "window": args.window, "clips": args.clips,
                        "model": "demucs_unittest", "shifts": 0, "clip_s": args.clip_s,
                        "workers_config": dict(config.workers.__dict__), "cpus": os.cpu_count()}}
    if args.samples:
        result["samples"] = sampler.samples
    return result


def clip_for(phases: list[list[Path]], task: int, tasks: int) -> Path:
    """The clip of task number `task`: its phase's length, the phase's clips in turn."""
    clips = phases[task * len(phases) // tasks]
    return clips[task % len(clips)]


def check(result: dict, within: float) -> list[str]:
    """Failed tasks, and, for clips of one length, workers that grew by more than `within` over
    their size after 100 tasks (a worker that shrinks is fine; longer clips later need more)."""
    problems = [f"{result['failed']} task(s) failed"] if result["failed"] else []
    if len(result["setup"]["clip_s"]) > 1:
        return problems
    for name, slot in result["workers"].items():
        ratio = slot["last_vs_100"]
        if ratio is not None and ratio - 1 > within:
            problems.append(f"{name}: RSS at the end is {ratio:.3f}x its RSS after 100 tasks")
    return problems


def print_report(result: dict) -> None:
    print(f"{result['tasks']} tasks in {result['wall_s']} s ({result['tasks_per_s']} tasks/s), "
          f"{result['failed']} failed, {result['recycles']} recycles; load average "
          f"{result['load_avg']['before'][0]} -> {result['load_avg']['after'][0]}")
    print(f"  {'worker':<10} {'tasks':>6} {'recycles':>8} {'RSS@1':>7} {'@100':>7} {'@1000':>7} "
          f"{'@end':>7} {'max':>7} {'end/100':>7} {'MB/task':>8} {'judged':>6} {'rest/base':>9}")
    for name, slot in result["workers"].items():
        rss, rest = slot["rss_mb"], slot["at_rest"]
        cells = [rss.get(k) for k in ("1", "100", "1000", "last")]
        print(f"  {name:<10} {slot['tasks_done']:>6} {slot['recycles']:>8} "
              + " ".join(f"{'-' if c is None else c:>7}" for c in cells)
              + f" {slot['max_rss_mb']:>7} {slot['last_vs_100'] or '-':>7}"
              + f" {'-' if slot['mb_per_task_first_pid'] is None else slot['mb_per_task_first_pid']:>8}"
              + f" {rest['judged']:>6} {rest['highest_ratio']:>9}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=int, default=32, help="tasks kept queued or running")
    parser.add_argument("--clips", type=int, default=20, help="distinct clips of each length")
    parser.add_argument("--clip-s", type=float, nargs="+", default=[1.0],
                        help="clip lengths in seconds, one phase of the tasks each, in order")
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--no-recycle", action="store_true",
                        help="workers.max_rss_mb and workers.max_rss_growth 0: never recycle")
    parser.add_argument("--compare", action="store_true",
                        help="two soaks in one run: as before issue 16 (no release_memory, no "
                             "recycling), then the defaults")
    parser.add_argument("--within", type=float, default=0.15,
                        help="largest allowed RSS at the end / RSS after 100 - 1 (default 0.15)")
    parser.add_argument("--samples", action="store_true", help="every sample in the JSON")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.workers < 1 or args.window < 1:
        parser.error("need --tasks, --workers and --window of at least 1")
    return args


def variants(args) -> dict[str, dict]:
    """The soaks to run, by name, each as `workers` overrides."""
    if args.compare:
        return {"before": BEFORE, "after": {}}
    return {"run": {"max_rss_mb": 0, "max_rss_growth": 0} if args.no_recycle else {}}


def main(argv=None) -> int:
    import ray

    args = parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)
    ray_tmp = tempfile.mkdtemp(prefix="rdsoak", dir="/tmp")  # a private Ray: no other joins it
    os.environ["RAY_TMPDIR"] = ray_tmp
    results = {}
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False,
             namespace="raydemucs", log_to_driver=False, logging_level="WARNING")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="raydemucs-soak-")).absolute()
    try:
        for name, overrides in variants(args).items():
            log(f"{name}: {args.tasks} tasks, workers {overrides or 'defaults'}")
            results[name] = run(args, work / name, overrides)
            results[name]["problems"] = check(results[name], args.within)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    for name, result in results.items():
        print(f"{name}:")
        print_report(result)
    problems = results[list(results)[-1]]["problems"]  # with --compare, "before" may grow
    print("OK" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
