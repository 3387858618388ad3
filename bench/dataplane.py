"""The data plane: what the scheduler's process carries while uploaded tasks run.

    python bench/dataplane.py uploads                       # 10, 30 and 60-minute mp3s
    python bench/dataplane.py uploads --minutes 3 10        # a quick run

`uploads`: mp3s of `--minutes` each (made here, 128 kbit/s), posted one after another over HTTP
to a service of `--workers` workers running the tiny offline model (`demucs_unittest`, so that
the model's time does not drown the figures); for each: the scheduler process's peak RSS growth
while the upload and its task run (sampled from /proc every 20 ms, and the kernel's high-water
mark), the workers' peak RSS, and MB/s end to end (the mp3's bytes over the time from the POST to
the task's success). `--kept-uri` keeps the stems in that store instead of on the worker's node.

It starts its own local Ray, service and Serve proxy on a free port, and stops them at the end.
Run it with PYTHONPATH pointing at a checkout to measure that checkout's code.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from servicelib import free_port, ray_processes, report  # noqa: E402

TERMINAL = ("succeeded", "failed", "cancelled")


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


def start_service(work: Path, port: int, workers: int, kept_uri: str | None):
    import ray

    from raydemucs import WorkerManager
    from raydemucs.core.config import load_config

    ray.init(address="local", num_cpus=max(2, workers), include_dashboard=False,
             log_to_driver=False, namespace="raydemucs")
    config = load_config("test", environ={}, overrides={
        "service": {"name": "bench-dataplane", "state_dir": str(work / "state")},
        "workers": {"max_workers": workers, "memory_mb": 0},
        "tasks": {"timeout_s": 7200.0},
        "input": {"max_file_mb": 500.0, "max_duration_s": 4 * 3600.0},
        "http": {"port": port, "body_timeout_s": 3600.0},
        **({"storage": {"kept_uri": kept_uri}} if kept_uri else {})})
    manager = WorkerManager(config)
    manager.scheduler(create=True)
    return manager, manager.start_http()


def run_uploads(args) -> dict:
    import httpx

    with tempfile.TemporaryDirectory(prefix="bench-dataplane-", dir=args.work) as folder:
        work = Path(folder)
        mp3s = {minutes: write_mp3(work / f"song-{minutes:g}min.mp3", minutes)
                for minutes in args.minutes}
        manager, url = start_service(work, free_port(), args.workers, args.kept_uri)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    uploads = commands.add_parser("uploads", help="uploads over HTTP: scheduler and worker RSS")
    uploads.add_argument("--minutes", type=float, nargs="+", default=[10.0, 30.0, 60.0])
    uploads.add_argument("--workers", type=int, default=2)
    uploads.add_argument("--kept-uri", default=None)
    uploads.add_argument("--work", default=None, help="folder for the mp3s and the state")
    uploads.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results"
                         / "dataplane-uploads.json")
    args = parser.parse_args()
    if args.command == "uploads":
        report(run_uploads(args), args.out, print_uploads)


if __name__ == "__main__":
    main()
