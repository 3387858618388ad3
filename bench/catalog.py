"""A whole catalogue as one batch: 100,000 tasks submitted from a list, then the service queried
while they wait, in one run.

    python bench/catalog.py                         # 100,000 tasks over 100 short files
    python bench/catalog.py --tasks 5000            # a quick run

1. `submit_batch` of a CSV list (`input,file_id`: `--tasks` rows over `--files` half-second wavs,
   each row its own file id, the result cache off so that each is a task to run) through
   `WorkerManager`, as `submit --from LIST` does: every input checked on the client (its header,
   duration and SHA-256), a thousand specs per call and per journal transaction. Tasks per second,
   and the client's own memory (USS) before, at its peak and after.
2. With them queued (one worker runs the tiny offline model `demucs_unittest`, so the queue stays
   deep while the figures are taken): latency of `status` (the whole service), of `status TASK_ID`
   (one task), of `GET /v1/tasks/{id}` over HTTP, of `status --batch`, and of paging through
   the batch with `list --batch` (1,000 a page); the scheduler actor's RSS and USS.
3. `cancel --batch`: its time.

It starts its own local Ray, service and Serve proxy on a free port, and stops them at the end.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from servicelib import free_port, latency, private_bytes, ray_processes, report  # noqa: E402


def write_list(work: Path, tasks: int, files: int) -> Path:
    clips = [benchlib.write_wav(work / "songs" / f"song{i:03d}.wav",
                                benchlib.make_signal(0.5, seed=i)) for i in range(files)]
    listing = work / "catalog.csv"
    with open(listing, "w") as handle:
        handle.write("input,file_id\n")
        for index in range(tasks):
            handle.write(f"{clips[index % files]},t{index:06d}\n")
    return listing


def submit(manager, listing: Path, out: Path) -> tuple[dict, object]:
    me = psutil.Process()
    before, peak, stop = private_bytes(me), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], private_bytes(me))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    summary = manager.submit_batch([], from_list=str(listing), project_name="catalog",
                                   output_dir=str(out), cache=False)  # each row a real task
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    return {"tasks": summary.items, "queued": summary.queued, "refused": len(summary.refused),
            "wall_s": wall, "tasks_per_s": summary.items / wall,
            "client_uss_mb": {"before": before / 2**20, "peak": peak[0] / 2**20,
                              "after": private_bytes(me) / 2**20}}, summary


def timed(call, times: int) -> dict:
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        spent.append(time.perf_counter() - started)
    return latency(spent)


def query(manager, url: str, batch_id: str, samples: int) -> dict:
    import httpx

    ids = [record["task_id"] for record in manager.list_tasks(batch_id=batch_id, limit=1000)]
    pick = random.Random(0).choice
    scheduler = ray_processes({"ray::SchedulerService": "scheduler"})["scheduler"]
    with httpx.Client(base_url=url, timeout=30) as client:
        result = {
            "status": timed(manager.get_status, samples),
            "status_task": timed(lambda: manager.get_status(pick(ids)), samples),
            "http_get": timed(lambda: client.get(f"/v1/tasks/{pick(ids)}").raise_for_status(),
                              samples),
            "http_healthz": timed(lambda: client.get("/healthz").raise_for_status(), samples),
            "status_batch": timed(lambda: manager.batch(batch_id), samples // 5)}
    result["list_pages"] = page_through(manager, batch_id)
    result["scheduler_mb"] = {"rss": scheduler.memory_info().rss / 2**20,
                              "uss": private_bytes(scheduler) / 2**20}
    return result


def page_through(manager, batch_id: str) -> dict:
    spent, seen, before = [], 0, None
    while True:
        started = time.perf_counter()
        page = manager.list_tasks(batch_id=batch_id, limit=1000, before_seq=before)
        spent.append(time.perf_counter() - started)
        if not page:
            return {"records": seen, **latency(spent)}
        seen, before = seen + len(page), page[-1]["seq"]


def start(work: Path):
    import ray

    from raydemucs import WorkerManager
    from raydemucs.core.config import load_config

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             namespace="raydemucs")
    config = load_config("test", environ={}, overrides={
        "service": {"name": "bench-catalog", "state_dir": str(work / "state")},
        "workers": {"max_workers": 1, "prefetch": 0, "memory_mb": 0},
        "http": {"port": free_port()}})
    manager = WorkerManager(config)
    manager.scheduler(create=True)
    return manager, manager.start_http()


def print_table(result: dict) -> None:
    sent = result["submit"]
    memory = sent["client_uss_mb"]
    print(f"\nsubmit: {sent['tasks']} tasks in {sent['wall_s']:.1f} s = "
          f"{sent['tasks_per_s']:.0f} tasks/s ({sent['refused']} refused); client USS "
          f"{memory['before']:.0f} -> peak {memory['peak']:.0f} -> {memory['after']:.0f} MB")
    asked = result["queued"]
    for name in ("status", "status_task", "http_get", "http_healthz", "status_batch",
                 "list_pages"):
        row = asked[name]
        print(f"  {name:<13} n={row['n']:<5} p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms")
    print(f"  scheduler     RSS {asked['scheduler_mb']['rss']:.0f} MB, "
          f"USS {asked['scheduler_mb']['uss']:.0f} MB with them queued")
    print(f"cancel --batch: {result['cancel']['cancelled']} in {result['cancel']['wall_s']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--samples", type=int, default=500, help="calls timed per query")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "catalog.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as folder:
        work = Path(folder)
        listing = write_list(work, args.tasks, args.files)
        manager, url = start(work)
        try:
            sent, summary = submit(manager, listing, work / "out")
            result = {"load_average": psutil.getloadavg(), "submit": sent,
                      "queued": query(manager, url, summary.batch_id, args.samples)}
            started = time.perf_counter()
            cancelled = manager.cancel_batch(summary.batch_id)
            result["cancel"] = {"cancelled": cancelled, "wall_s": time.perf_counter() - started}
        finally:
            manager.shutdown(now=True)
    report(result, args.out, print_table)


if __name__ == "__main__":
    main()
