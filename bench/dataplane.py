"""The scheduler under load: uploads (its data plane) and event streams (its control plane).

    python bench/dataplane.py uploads                       # 10, 30 and 60-minute mp3s
    python bench/dataplane.py uploads --minutes 3 10        # a quick run
    python bench/dataplane.py streams                       # 500 event streams, 100,000 queued
    python bench/dataplane.py streams --queued 20000 --streams 100   # a smaller machine

`uploads`: mp3s of `--minutes` each (made here, 128 kbit/s), posted one after another over HTTP
to a service of `--workers` workers running the tiny offline model (`demucs_unittest`, so that
the model's time does not drown the figures); for each: the scheduler process's peak RSS growth
while the upload and its task run (sampled from /proc every 20 ms, and the kernel's high-water
mark), the workers' peak RSS, and MB/s end to end (the mp3's bytes over the time from the POST to
the task's success). `--kept-uri` keeps the stems in that store instead of on the worker's node.

It starts its own local Ray, service and Serve proxy on a free port, and stops them at the end.
Run it with PYTHONPATH pointing at a checkout to measure that checkout's code.

`streams`: a service whose only pool never starts a worker (it needs a resource no node has),
so that every task stays queued; `--queued` tasks queued through the actor as a batch (a
thousand to a call, as `submit --from` does), owned by one API key (`bulk`).
0. The CPU the scheduler, the HTTP replica and the Serve proxy use per second over 10 s with
   no request, without and then with the streams open: the streams' own cost, per stream.
1. Without streams: `GET /v1/tasks/{id}` (a random queued task) for half of `--phase-s`
   (40 s), then `POST /v1/tasks` (a half-second upload, queued behind the others) for the other
   half, one call after another; the scheduler's loop lag over the phase (`status`'s, over 10 s,
   read every 10 s: `raydemucs_scheduler_loop_lag_seconds` on the dashboard).
2. The same with `--streams` open `/v1/events` streams (read by a process of their own), spread
   over `--keys` other keys (a key may hold `http.max_streams_per_key`), each key owning a few
   queued tasks; the events they got.
3. `cancel --batch` of the queued batch, with `status` asked every half second meanwhile: its
   time, the loop lag seen during it (its max: a chunk held the loop that long), and how many
   status calls were answered before it ended.

It starts its own local Ray (2 CPUs), service and Serve proxy on a free port, stops them at the
end, prints a table and writes JSON (`--out`).
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from servicelib import free_port, latency, ray_processes, report  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")
PARKED = {"name": "parked", "models": ["htdemucs"], "resources": {"nowhere": 1},
          "min_workers": 0, "max_workers": 1}
TASKS_PER_KEY = 2  # queued tasks of each streaming key
LAG_WINDOW_S = 10.5  # `status`'s loop lag is over the last 10 s
PHASE_S = 40.0  # of GET then POST calls: p99 from about 1,500 and 500 calls



# -- uploads --------------------------------------------------------------------------------------
def write_mp3(path: Path, minutes: float) -> Path:
    """A `minutes`-long 128 kbit/s stereo mp3, encoded a minute at a time."""
    import lameenc
    import numpy as np

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(128)
    encoder.set_in_sample_rate(benchlib.SAMPLERATE)
    encoder.set_channels(2)
    encoder.silence()
    minute = benchlib.make_signal(60.0, seed=0)
    with open(path, "wb") as handle:
        for index in range(int(round(minutes))):
            pcm = (np.roll(minute, index * 4410, axis=0) * (2**15 - 1)).astype("<i2")
            handle.write(encoder.encode(pcm.tobytes()))
        handle.write(encoder.flush())
    return path


def hwm_bytes(pid: int) -> int:
    """A process's peak RSS so far (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


class PeakRss:
    """The peak RSS of some processes, sampled in a thread until `stop`."""

    def __init__(self, processes: dict[str, psutil.Process]):
        self.processes, self.peaks = processes, dict.fromkeys(processes, 0)
        self.baseline = {role: proc.memory_info().rss for role, proc in processes.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for role, proc in self.processes.items():
                try:
                    self.peaks[role] = max(self.peaks[role], proc.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.02)

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        return {role: {"before_mb": self.baseline[role] / 2**20,
                       "peak_mb": self.peaks[role] / 2**20,
                       "growth_mb": (self.peaks[role] - self.baseline[role]) / 2**20}
                for role in self.processes}


def one_upload(client, mp3: Path, minutes: float) -> dict:
    """Post `mp3`, wait for its task; the figures of that one run."""
    processes = ray_processes({"ray::SchedulerService": "scheduler"})
    workers = {f"worker-{i}": proc for i, proc in enumerate(
        p for p in psutil.Process().children(recursive=True)
        if _title(p).startswith("ray::SeparatorWorker"))}
    scheduler = processes["scheduler"]
    hwm_before = hwm_bytes(scheduler.pid)
    sampler = PeakRss({**processes, **workers})
    started = time.perf_counter()
    with open(mp3, "rb") as handle:
        answer = client.post("/v1/tasks", files={"file": (mp3.name, handle)},
                             data={"project": "bench-dataplane", "file_id": f"m{minutes:g}"})
    answer.raise_for_status()
    uploaded_s = time.perf_counter() - started
    url = answer.headers["location"]
    while (record := client.get(url).raise_for_status().json())["state"] not in TERMINAL:
        time.sleep(0.2)
    wall_s = time.perf_counter() - started
    rss = sampler.stop()
    mb = mp3.stat().st_size / 2**20
    worker_peak = max((rss[role]["peak_mb"] for role in workers), default=0.0)
    return {"minutes": minutes, "mp3_mb": mb, "state": record["state"],
            "error": record.get("error"), "upload_s": uploaded_s, "wall_s": wall_s,
            "mb_per_s": mb / wall_s, "audio_x_realtime": minutes * 60 / wall_s,
            "scheduler_rss_growth_mb": rss["scheduler"]["growth_mb"],
            "scheduler_hwm_growth_mb": (hwm_bytes(scheduler.pid) - hwm_before) / 2**20,
            "worker_peak_rss_mb": worker_peak, "rss": rss}


def _title(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def start(work: Path, cpus: int, **overrides):
    """A local Ray of `cpus`, the test profile's service (`overrides`: its sections beside
    `service`) and its HTTP API on a free port: `(manager, url)`."""
    import ray

    from raydemucs import WorkerManager
    from raydemucs.core.config import load_config

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             namespace="raydemucs")
    http = {"port": free_port(), **overrides.pop("http", {})}
    config = load_config("test", environ={}, overrides={
        "service": {"name": "bench-dataplane", "state_dir": str(work / "state")},
        "http": http, **overrides})
    manager = WorkerManager(config)
    manager.scheduler(create=True)
    return manager, manager.start_http()


def run_uploads(args) -> dict:
    import httpx

    with tempfile.TemporaryDirectory(prefix="bench-dataplane-", dir=args.work) as folder:
        work = Path(folder)
        mp3s = {minutes: write_mp3(work / f"song-{minutes:g}min.mp3", minutes)
                for minutes in args.minutes}
        manager, url = start(
            work, max(2, args.workers), workers={"max_workers": args.workers, "memory_mb": 0},
            tasks={"timeout_s": 7200.0},
            input={"max_file_mb": 500.0, "max_duration_s": 4 * 3600.0},
            http={"body_timeout_s": 3600.0},
            **({"storage": {"kept_uri": args.kept_uri}} if args.kept_uri else {}))
        try:
            with httpx.Client(base_url=url, timeout=3600) as client:
                wait_ready(client)
                runs = [one_upload(client, mp3s[minutes], minutes) for minutes in args.minutes]
        finally:
            manager.shutdown(now=True)
    return {"workers": args.workers, "kept_uri": args.kept_uri, "uploads": runs}


def wait_ready(client, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("no worker became ready")
        time.sleep(0.5)


def print_uploads(result: dict) -> None:
    print(f"\n{result['workers']} workers, stems kept {result['kept_uri'] or 'on the node'}")
    print(f"{'minutes':>7} {'mp3 MB':>7} {'state':>9} {'wall s':>7} {'MB/s':>6} "
          f"{'sched RSS +MB':>13} {'sched HWM +MB':>13} {'worker peak MB':>14}")
    for run in result["uploads"]:
        print(f"{run['minutes']:>7g} {run['mp3_mb']:>7.1f} {run['state']:>9} {run['wall_s']:>7.1f} "
              f"{run['mb_per_s']:>6.2f} {run['scheduler_rss_growth_mb']:>13.1f} "
              f"{run['scheduler_hwm_growth_mb']:>13.1f} {run['worker_peak_rss_mb']:>14.0f}")



# -- the service ----------------------------------------------------------------------------------
def add_keys(state: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (key, owner)."""
    from raydemucs.core.keys import KeyStore

    store = KeyStore(state)
    keys = {name: store.add(name) for name in names}
    table = store.table()
    return {name: (key, table.owner_of(key).owner) for name, key in keys.items()}


def queue(manager, owner: str, count: int, batch_id: str | None, out: Path) -> float:
    """Queue `count` tasks of `owner` for the parked pool, a thousand to a call; tasks/s."""
    import ray

    from raydemucs.core.config import SeparationConfig
    from raydemucs.core.task import TaskSpec, new_task_id

    scheduler, started = manager.scheduler(), time.perf_counter()
    for first in range(0, count, 1000):
        specs = [TaskSpec(task_id=new_task_id(), project="bench", file_id=f"{owner}-{i}",
                          input_path="/absent.wav", output_dir=str(out), owner=owner,
                          options=SeparationConfig(model="htdemucs"), cache=False,
                          batch_id=batch_id).to_dict()
                 for i in range(first, min(count, first + 1000))]
        ray.get(scheduler.submit_batch.remote(specs))
    return count / (time.perf_counter() - started)


# -- 1 and 2: latency, with and without streams ---------------------------------------------------
def calls(url: str, key: str, ids: list[str], song: Path, phase_s: float) -> dict:
    """GET then POST, each one after another for `phase_s / 2` seconds."""
    import httpx

    pick, headers = random.Random(0).choice, {"Authorization": f"Bearer {key}"}
    gets, posts = [], []
    with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        until = time.monotonic() + phase_s / 2
        while time.monotonic() < until:
            started = time.perf_counter()
            client.get(f"/v1/tasks/{pick(ids)}").raise_for_status()
            gets.append(time.perf_counter() - started)
        until = time.monotonic() + phase_s / 2
        while time.monotonic() < until:
            started = time.perf_counter()
            client.post("/v1/tasks", files={"file": (song.name, song.read_bytes())},
                        data={"project": "posted", "file_id": uuid.uuid4().hex,
                              "model": "htdemucs"}).raise_for_status()
            posts.append(time.perf_counter() - started)
    return {"get": latency(gets), "post": latency(posts)}


class Streams:
    """`count` open `/v1/events` streams over `keys` (round robin), read in a process of their
    own (not a thread of this one: reading 500 streams would hold this process's GIL while it
    times calls); how many opened, the events they got, the first errors."""

    def __init__(self, url: str, keys: list[str], count: int):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.count = count
        self._opened, self._events = context.Value("i", 0), context.Value("i", 0)
        self._errors, self._stop = context.Queue(), context.Event()
        self.errors: list[str] = []
        self._process = context.Process(target=read_streams, daemon=True, args=(
            url, keys, count, self._opened, self._events, self._errors, self._stop))

    @property
    def opened(self) -> int:
        return self._opened.value

    @property
    def events(self) -> int:
        return self._events.value

    def __enter__(self) -> "Streams":
        self._process.start()
        deadline = time.monotonic() + 300
        while (self.opened + self._take_errors() < self.count and time.monotonic() < deadline
               and self._process.is_alive()):
            time.sleep(0.2)
        if self.opened < self.count:
            self.__exit__()
            raise RuntimeError(f"{self.opened} of {self.count} streams opened: {self.errors[:3]}")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
        self._take_errors()

    def _take_errors(self) -> int:
        while not self._errors.empty():
            self.errors.append(self._errors.get())
        return len(self.errors)


def read_streams(url: str, keys: list[str], count: int, opened, events, errors, stop) -> None:
    """The streams' process: read them all until `stop` is set."""
    async def one(client, key: str) -> None:
        try:
            async with client.stream("GET", "/v1/events",
                                     headers={"Authorization": f"Bearer {key}"}) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    counter = (opened if line == ": watching"
                               else events if line.startswith("event: ") else None)
                    if counter is not None:
                        with counter.get_lock():
                            counter.value += 1
        except Exception as exc:  # counted: the table says how many streams failed
            if not isinstance(exc, asyncio.CancelledError):
                errors.put(f"{type(exc).__name__}: {exc}")

    async def run() -> None:
        import httpx

        limits = httpx.Limits(max_connections=count + 10)
        async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
            readers = [asyncio.create_task(one(client, keys[i % len(keys)]))
                       for i in range(count)]
            while not stop.is_set():
                await asyncio.sleep(0.2)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    asyncio.run(run())


ROLES = {"ray::SchedulerService": "scheduler", "ray::ServeReplica": "replica",
         "ray::ProxyActor": "proxy"}
IDLE_S = 10.0  # the quiet window the streams' own CPU is measured over


def idle_cpu(seconds: float = IDLE_S) -> dict[str, float]:
    """CPU seconds per second of the scheduler, the HTTP replica and the Serve proxy over
    `seconds` with no request: what the open streams (if any) cost them."""
    processes = ray_processes(ROLES)
    before = {role: sum(proc.cpu_times()[:2]) for role, proc in processes.items()}
    time.sleep(seconds)
    return {role: (sum(proc.cpu_times()[:2]) - before[role]) / seconds
            for role, proc in processes.items()}


def scheduler_cpu_s() -> float:
    """CPU seconds the scheduler actor's process used so far (its work, whatever the load of
    the machine: a busy machine's lag is also the time the process waited for a core)."""
    times = ray_processes({"ray::SchedulerService": "scheduler"})["scheduler"].cpu_times()
    return times.user + times.system


def loaded(manager, url: str, key: str, ids: list[str], song: Path, phase_s: float) -> dict:
    """One phase's latencies, the scheduler's CPU, and its loop lag over the phase (read every
    10 s: the worst window's p99 and max, the windows' median p50)."""
    cpu, windows, done = scheduler_cpu_s(), [], threading.Event()

    def read_lag() -> None:
        while not done.wait(LAG_WINDOW_S - 0.5):
            windows.append(manager.get_status()["loop_lag"])
    reader = threading.Thread(target=read_lag, daemon=True)
    reader.start()
    result = calls(url, key, ids, song, phase_s)
    done.set()
    reader.join()
    result["scheduler_cpu_s"] = scheduler_cpu_s() - cpu
    windows = [lag for lag in [*windows, manager.get_status()["loop_lag"]] if lag["samples"]]
    result["loop_lag"] = {"p50_ms": statistics.median(lag["p50_ms"] for lag in windows),
                          **{key: max(lag[key] for lag in windows)
                             for key in ("p99_ms", "max_ms")}}
    return result


# -- 3: batch cancel ------------------------------------------------------------------------------
def cancel(manager, batch_id: str) -> dict:
    import ray

    scheduler = manager.scheduler()
    time.sleep(LAG_WINDOW_S)  # the lag's window holds the cancel then, and what was idle
    started, cpu = time.perf_counter(), scheduler_cpu_s()
    cancelling = scheduler.cancel_batch.remote(batch_id)
    lags, answered = [], 0
    while not ray.wait([cancelling], timeout=0.5)[0]:
        lags.append(ray.get(scheduler.status.remote())["loop_lag"])
        answered += not ray.wait([cancelling], timeout=0)[0]
    cancelled, wall = ray.get(cancelling), time.perf_counter() - started
    cpu = scheduler_cpu_s() - cpu
    lags.append(manager.get_status()["loop_lag"])
    worst = [lag for lag in lags if lag["samples"]]
    return {"cancelled": cancelled, "wall_s": wall, "scheduler_cpu_s": cpu,
            "status_answered_during": answered,
            "loop_lag_max_ms": max((lag["max_ms"] for lag in worst), default=None),
            "loop_lag_p99_ms": max((lag["p99_ms"] for lag in worst), default=None)}


# -- the command ----------------------------------------------------------------------------------
def run_streams(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as folder:
        work = Path(folder)
        song = benchlib.write_wav(work / "song.wav", benchlib.make_signal(0.5, seed=0))
        manager, url = start(work, 2, workers={"memory_mb": 0}, pools=[PARKED],
                             http={"max_streams": max(1000, args.streams + 10)})
        try:
            state = Path(manager.config.service.state_dir)
            keys = add_keys(state, ["bulk", *(f"s{i}" for i in range(args.keys))])
            bulk_key, bulk = keys.pop("bulk")
            rate = queue(manager, bulk, args.queued, "deep", work / "out")
            for _, owner in keys.values():
                queue(manager, owner, TASKS_PER_KEY, None, work / "out")
            ids = [r["task_id"] for r in manager.list_tasks(batch_id="deep", limit=1000)]
            result = {"scale": {"queued": args.queued, "streams": args.streams,
                                "stream_keys": args.keys, "phase_s": args.phase_s,
                                "cpus": psutil.cpu_count(),
                                "load_average_at_start": psutil.getloadavg()},
                      "queue_tasks_per_s": rate,
                      "idle_cpu_without": idle_cpu(),
                      "without_streams": loaded(manager, url, bulk_key, ids, song, args.phase_s)}
            with Streams(url, [key for key, _ in keys.values()], args.streams) as streams:
                result["idle_cpu_with"] = idle_cpu()
                result["with_streams"] = loaded(manager, url, bulk_key, ids, song,
                                                args.phase_s)
                result["stream_events"], result["stream_errors"] = (streams.events,
                                                                    len(streams.errors))
                result["cancel"] = cancel(manager, "deep")
            result["load_average"] = psutil.getloadavg()
        finally:
            manager.shutdown(now=True)
    return result


def print_streams(result: dict) -> None:
    scale = result["scale"]
    print(f"\n{scale['queued']} queued ({result['queue_tasks_per_s']:.0f} tasks/s to queue), "
          f"{scale['streams']} streams over {scale['stream_keys']} keys, {scale['cpus']} CPUs, "
          f"load average {scale['load_average_at_start'][0]:.1f} at the start, "
          f"{result['load_average'][0]:.1f} at the end")
    print(f"{'':<16}{'GET p50':>9}{'GET p99':>9}{'POST p50':>10}{'POST p99':>10}"
          f"{'lag p50':>9}{'lag p99':>9}{'lag max':>9}  (ms){'scheduler CPU':>15}")
    for name in ("without_streams", "with_streams"):
        row, lag = result[name], result[name]["loop_lag"]
        print(f"{name:<16}{row['get']['p50_ms']:9.1f}{row['get']['p99_ms']:9.1f}"
              f"{row['post']['p50_ms']:10.1f}{row['post']['p99_ms']:10.1f}"
              f"{lag['p50_ms']:9.1f}{lag['p99_ms']:9.1f}{lag['max_ms']:9.1f}"
              f"{row['scheduler_cpu_s']:14.1f} s")
    with_, without = result["with_streams"], result["without_streams"]
    ratio = {kind: with_[kind]["p99_ms"] / without[kind]["p99_ms"] for kind in ("get", "post")}
    print(f"p99 with / without streams: GET {ratio['get']:.2f}x, POST {ratio['post']:.2f}x; "
          f"{result['stream_events']} events sent, {result['stream_errors']} streams failed")
    idle = {role: 1000 * (result["idle_cpu_with"][role] - result["idle_cpu_without"][role])
            / scale["streams"] for role in result["idle_cpu_with"]}
    print(f"open streams, idle: {', '.join(f'{role} {ms:.3f}' for role, ms in idle.items())} "
          "ms of CPU per stream per second")
    done = result["cancel"]
    print(f"cancel --batch: {done['cancelled']} in {done['wall_s']:.1f} s "
          f"({done['scheduler_cpu_s']:.1f} s of the scheduler's CPU), loop lag meanwhile "
          f"p99 {done['loop_lag_p99_ms']:.1f} ms, max {done['loop_lag_max_ms']:.1f} ms; "
          f"{done['status_answered_during']} status calls answered during it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    results = Path(__file__).resolve().parent / "results"
    uploads = commands.add_parser("uploads", help="uploads over HTTP: scheduler and worker RSS")
    uploads.add_argument("--minutes", type=float, nargs="+", default=[10.0, 30.0, 60.0])
    uploads.add_argument("--workers", type=int, default=2)
    uploads.add_argument("--kept-uri", default=None)
    uploads.add_argument("--work", default=None, help="folder for the mp3s and the state")
    uploads.add_argument("--out", type=Path, default=results / "dataplane-uploads.json")
    streams = commands.add_parser("streams", help="event streams on a deep queue, batch cancel")
    streams.add_argument("--queued", type=int, default=100_000)
    streams.add_argument("--streams", type=int, default=500)
    streams.add_argument("--keys", type=int, default=50, help="keys the streams are spread over")
    streams.add_argument("--phase-s", type=float, default=PHASE_S,
                         help="seconds of GET then POST calls per phase")
    streams.add_argument("--out", type=Path, default=results / "dataplane-streams.json")
    args = parser.parse_args()
    if args.command == "uploads":
        report(run_uploads(args), args.out, print_uploads)
    else:
        report(run_streams(args), args.out, print_streams)


if __name__ == "__main__":
    main()
