"""The HTTP front door under load, beside the same work through WorkerManager, in one run.

    python bench/http_load.py                    # 200 clients, then ten 100 MB uploads at once
    python bench/http_load.py --clients 50 --uploads 3 --upload-mb 20     # a quick run

1. `--clients` concurrent HTTP clients each POST a small clip and poll `GET /v1/tasks/{id}` until
   it ends (the tiny offline model, `demucs_unittest`, so that the model's time does not drown
   the figures): errors, p50/p99 of both calls, wall time.
2. The same submits and polls through `WorkerManager` from as many threads.
3. `--uploads` uploads of `--upload-mb` MB at once (their tasks cancelled as they are accepted):
   the peak private memory (USS: RSS without shared pages such as Ray's object store) of the
   ingress replica, the Serve proxy and the scheduler while they stream.

It starts its own local Ray, service and Serve proxy on a free port, and stops them at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from servicelib import free_port, latency, private_bytes, ray_processes, report  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")


# -- 1. HTTP clients ------------------------------------------------------------------------------
async def http_client(client, clip: Path, index: int, posts: list, gets: list) -> str:
    started = time.perf_counter()
    answer = await client.post("/v1/tasks", files={"file": (clip.name, clip.read_bytes())},
                               data={"project": "bench-http", "file_id": f"c{index}"})
    posts.append(time.perf_counter() - started)
    answer.raise_for_status()
    url = answer.headers["location"]
    while True:
        started = time.perf_counter()
        record = (await client.get(url)).raise_for_status().json()
        gets.append(time.perf_counter() - started)
        if record["state"] in TERMINAL:
            return record["state"]
        await asyncio.sleep(0.2)


async def run_http_clients(url: str, clip: Path, clients: int) -> dict:
    import httpx

    posts, gets, started = [], [], time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        states = await asyncio.gather(*(http_client(client, clip, i, posts, gets)
                                        for i in range(clients)), return_exceptions=True)
    errors = [repr(s) for s in states if not isinstance(s, str) or s != "succeeded"]
    return {"clients": clients, "errors": len(errors), "first_errors": errors[:3],
            "wall_s": time.perf_counter() - started, "post": latency(posts), "get": latency(gets)}


# -- 2. WorkerManager -----------------------------------------------------------------------------
def run_manager_clients(manager, clip: Path, clients: int) -> dict:
    posts, gets, lock = [], [], threading.Lock()

    def one(index: int) -> str:
        started = time.perf_counter()
        task_id = manager.add_task(clip, project_name="bench-api", file_id=f"c{index}",
                                   upload=True)
        with lock:
            posts.append(time.perf_counter() - started)
        while True:
            started = time.perf_counter()
            record = manager.get_status(task_id)
            with lock:
                gets.append(time.perf_counter() - started)
            if record["state"] in TERMINAL:
                return record["state"]
            time.sleep(0.2)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        states = list(pool.map(one, range(clients)))
    return {"clients": clients, "errors": sum(s != "succeeded" for s in states),
            "wall_s": time.perf_counter() - started, "post": latency(posts), "get": latency(gets)}


# -- 3. big uploads at once -----------------------------------------------------------------------
def sample_memory(watched: dict, peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        for role, proc in watched.items():
            try:
                peaks[role] = max(peaks.get(role, 0), private_bytes(proc))
            except psutil.Error:
                pass
        time.sleep(0.05)


async def run_big_uploads(url: str, song: Path, uploads: int) -> dict:
    import httpx

    watched = ray_processes({"ray::ServeReplica": "replica", "ray::ProxyActor": "proxy",
                              "ray::SchedulerService": "scheduler"})
    baseline = {role: private_bytes(proc) for role, proc in watched.items()}
    peaks, stop = {}, threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(watched, peaks, stop), daemon=True)
    sampler.start()

    async def send(client, index: int) -> float:
        started = time.perf_counter()
        with open(song, "rb") as handle:  # httpx streams the file from disk
            answer = await client.post("/v1/tasks", files={"file": (song.name, handle)},
                                       data={"project": "bench-big", "file_id": f"b{index}"})
        answer.raise_for_status()
        await client.delete(answer.headers["location"])
        return time.perf_counter() - started

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        times = await asyncio.gather(*(send(client, i) for i in range(uploads)))
    stop.set()
    sampler.join()
    mb = song.stat().st_size / 2**20
    return {"uploads": uploads, "upload_mb": mb, "wall_s": time.perf_counter() - started,
            "upload_s_max": max(times), "uss_mb": {
                role: {"before": baseline[role] / 2**20, "peak": peaks.get(role, 0) / 2**20,
                       "growth_per_upload_mb": (peaks.get(role, 0) - baseline[role]) / 2**20 / uploads}
                for role in baseline}}


# -- the run --------------------------------------------------------------------------------------
def start(work: Path, port: int):
    import ray

    from raydemucs import WorkerManager
    from raydemucs.core.config import load_config

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             namespace="raydemucs")
    config = load_config("test", environ={}, overrides={
        "service": {"name": "bench-http", "state_dir": str(work / "state")},
        "workers": {"max_workers": 2, "memory_mb": 0},
        "input": {"max_file_mb": 101.0}, "http": {"port": port}})
    manager = WorkerManager(config)
    manager.scheduler(create=True)
    return manager, manager.start_http()


def print_table(result: dict) -> None:
    rows = [("HTTP", result["http"]), ("WorkerManager", result["manager"])]
    print(f"\n{'path':<14} {'clients':>7} {'errors':>6} {'wall s':>7} {'submit p50/p99 ms':>19} "
          f"{'get p50/p99 ms':>17}")
    for name, row in rows:
        print(f"{name:<14} {row['clients']:>7} {row['errors']:>6} {row['wall_s']:>7.1f} "
              f"{row['post']['p50_ms']:>9.1f}/{row['post']['p99_ms']:<9.1f} "
              f"{row['get']['p50_ms']:>8.1f}/{row['get']['p99_ms']:<8.1f}")
    big = result["uploads"]
    print(f"\n{big['uploads']} uploads of {big['upload_mb']:.0f} MB at once, {big['wall_s']:.1f} s:")
    for role, uss in big["uss_mb"].items():
        print(f"  {role:<10} own memory (USS) {uss['before']:6.0f} MB -> peak {uss['peak']:6.0f} MB "
              f"({uss['growth_per_upload_mb']:+.1f} MB per upload in flight)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--upload-mb", type=float, default=99.0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "http.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-http-") as folder:
        work = Path(folder)
        clip = benchlib.write_wav(work / "clip.wav", benchlib.make_signal(0.5, seed=0))
        big = benchlib.write_wav(work / "big.wav", benchlib.make_signal(
            args.upload_mb * 2**20 / 4 / benchlib.SAMPLERATE, seed=1))
        manager, url = start(work, free_port())
        try:
            result = {"http": asyncio.run(run_http_clients(url, clip, args.clients)),
                      "manager": run_manager_clients(manager, clip, args.clients),
                      "uploads": asyncio.run(run_big_uploads(url, big, args.uploads))}
        finally:
            manager.shutdown(now=True)
    report(result, args.out, print_table)


if __name__ == "__main__":
    main()
