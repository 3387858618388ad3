"""Shared pieces of the benchmark that need only torch and demucs (no Ray, no raydemucs).

Inputs, the random-weight htdemucs repo, RSS sampling, the floor, and the subprocess contenders
(demucs's own CLI and the old one-process-per-file design). `--device cuda` uses only this file.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np

SAMPLERATE = 44100
SOURCES = ["drums", "bass", "other", "vocals"]
MODEL_NAME = "htdemucs_rand"
MODEL_SIG = "htdemucsrand"

# The released `htdemucs` is the bag `remote/htdemucs.yaml` -> signature 955717e8, trained by
# demucs/grids/mmi.py: model=htdemucs with dconv_mode=3, depth=4, t_layers=5, t_dropout=0.02 and
# bottom_channels=512 (the dset=extra44 branch); its segment is 39/5 s (7.8 s), which is what
# apply_model splits tracks into. Every other keyword is HTDemucs's default (= conf/config.yaml).
HTDEMUCS_KWARGS = dict(sources=SOURCES, audio_channels=2, samplerate=SAMPLERATE,
                       segment=Fraction(39, 5), depth=4, dconv_mode=3, t_layers=5,
                       t_dropout=0.02, bottom_channels=512)
# A small HTDemucs (as tests/conftest.py builds) for runs that check code paths, not speed.
TINY_KWARGS = dict(sources=SOURCES, audio_channels=2, samplerate=SAMPLERATE, channels=8,
                   t_layers=1)


# -- inputs ---------------------------------------------------------------------------------------
def clip_durations(clips: int, min_s: float, max_s: float) -> list[float]:
    """`clips` durations spread evenly over [min_s, max_s], rounded to 10 ms."""
    if clips == 1:
        return [round(min_s, 2)]
    return [round(min_s + (max_s - min_s) * i / (clips - 1), 2) for i in range(clips)]


def make_signal(seconds: float, seed: int) -> np.ndarray:
    """Stereo `[time, 2]` float32: a few harmonic tones, a bass line, clicks and noise."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLERATE))
    t = np.arange(n) / SAMPLERATE
    base = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    left = sum(0.12 / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.28)) for k in (1, 2, 3, 5))
    right = sum(0.12 / k * np.sin(2 * np.pi * base * 1.5 * k * t + rng.uniform(0, 6.28)) for k in (1, 2, 4))
    bass = 0.2 * np.sin(2 * np.pi * (base / 2) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    clicks = np.zeros(n)
    clicks[:: SAMPLERATE // 2] = 0.8
    clicks = np.convolve(clicks, np.exp(-np.arange(2000) / 200.0))[:n]
    noise = 0.03 * rng.standard_normal((n, 2))
    mix = np.stack([left + bass + clicks, right + bass + clicks], axis=1) + noise
    return (0.7 * mix / max(1e-6, np.abs(mix).max())).astype(np.float32)


def write_wav(path: Path, data: np.ndarray) -> Path:
    """16-bit PCM wav with the stdlib `wave` module."""
    pcm = np.clip(np.round(data * 32767), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(data.shape[1])
        handle.setsampwidth(2)
        handle.setframerate(SAMPLERATE)
        handle.writeframes(pcm.tobytes())
    return path


def read_wav(path: Path):
    """A 16-bit wav as a float32 torch tensor `[channels, time]`."""
    import torch

    with wave.open(str(path), "rb") as handle:
        channels = handle.getnchannels()
        frames = handle.readframes(handle.getnframes())
    data = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).T.astype(np.float32) / 32768.0
    return torch.from_numpy(np.ascontiguousarray(data))


def make_inputs(folder: Path, durations: list[float], prefix: str = "clip") -> list[Path]:
    return [write_wav(folder / f"{prefix}{i:02d}.wav", make_signal(d, seed=i))
            for i, d in enumerate(durations)]


# -- the model ------------------------------------------------------------------------------------
def build_model_repo(repo: Path, seed: int = 0, kwargs: dict = HTDEMUCS_KWARGS) -> dict:
    """Save htdemucs's architecture (or `kwargs`') with random weights as
    `repo/htdemucsrand.th` + a bag yaml."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(**kwargs)
    repo.mkdir(parents=True, exist_ok=True)
    torch.save({"klass": HTDemucs, "args": (), "kwargs": dict(kwargs),
                "state": model.state_dict()},
               repo / f"{MODEL_SIG}.th")
    (repo / f"{MODEL_NAME}.yaml").write_text(f"models: [{MODEL_SIG}]\n")
    params = sum(p.numel() for p in model.parameters())
    return {"name": MODEL_NAME, "repo": str(repo), "params": params,
            "segment_s": float(model.segment),
            "kwargs": {k: (str(v) if isinstance(v, Fraction) else v)
                       for k, v in kwargs.items()}}


def check_model_loads(repo: Path) -> int:
    """Load the bag through demucs's own `--repo` path; returns its parameter count."""
    from demucs.pretrained import get_model

    bag = get_model(MODEL_NAME, Path(repo))
    return sum(p.numel() for p in bag.parameters())


# -- memory sampling -----------------------------------------------------------------------------
class RssSampler:
    """Samples the RSS of the processes `find()` returns every `interval_s`, in a thread.

    `classify(proc)` names a process's role (e.g. "worker") or returns None to count it only in
    the total. Keeps each pid's peak, the roles, and the peak of the sum over all processes.
    """

    def __init__(self, find, classify=None, interval_s: float = 0.2):
        self.find, self.classify, self.interval_s = find, classify, interval_s
        self.peaks: dict[int, int] = {}
        self.roles: dict[int, str] = {}
        self.total_peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:  # --device cuda needs only torch and demucs: no RSS then
            return
        while not self._stop.is_set():
            total = 0
            try:
                procs = self.find()
            except (psutil.Error, OSError):
                procs = []
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    if self.classify is not None and proc.pid not in self.roles:
                        role = self.classify(proc)
                        if role:
                            self.roles[proc.pid] = role
                except (psutil.Error, OSError):
                    continue
                total += rss
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), rss)
            self.total_peak = max(self.total_peak, total)
            self.samples += 1
            self._stop.wait(self.interval_s)

    def worker_peaks(self, role: str = "worker") -> list[int]:
        pids = [pid for pid, r in self.roles.items() if r == role] if self.classify else list(self.peaks)
        return sorted((self.peaks[pid] for pid in pids), reverse=True)

    def summary(self, role: str = "worker") -> dict:
        peaks = self.worker_peaks(role)
        return {"peak_rss_worker_bytes": max(peaks) if peaks else None,
                "peak_rss_per_worker_bytes": peaks, "peak_rss_total_bytes": self.total_peak or None,
                "rss_samples": self.samples}


def tree(*roots):
    """`find` for RssSampler: the given psutil processes and all their descendants."""
    procs = []
    for root in roots:
        if root is None:
            continue
        try:
            procs.append(root)
            procs.extend(root.children(recursive=True))
        except Exception:  # psutil.Error: the process is gone
            continue
    return procs


def process(pid: int):
    """A psutil.Process, or None when psutil is missing or the process is gone."""
    try:
        import psutil

        return psutil.Process(pid)
    except Exception:
        return None


def is_python_worker(proc) -> str | None:
    """Role of a subprocess contender's process: the python ones are workers."""
    try:
        return "worker" if "python" in os.path.basename(proc.cmdline()[0]) else None
    except Exception:
        return None


# -- statistics ----------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return data[low] + (data[high] - data[low]) * (pos - low)


def balance(durations: list[float], bins: int) -> list[list[int]]:
    """Indices split into `bins` lists, longest first onto the least-loaded (LPT)."""
    loads, out = [0.0] * bins, [[] for _ in range(bins)]
    for i in sorted(range(len(durations)), key=lambda i: -durations[i]):
        b = loads.index(min(loads))
        loads[b] += durations[i]
        out[b].append(i)
    return out


def agreement(pairs) -> dict:
    """How close estimates are to references, over `(reference, estimate)` tensor pairs: SNR in
    dB of all of them together, and the largest difference in 16-bit LSB."""
    signal = noise = 0.0
    largest = 0
    for a, b in pairs:
        a, b = a.double(), b.double()
        signal += float(a.pow(2).sum())
        noise += float((a - b).pow(2).sum())
        largest = max(largest, round(float((a - b).abs().max()) * 32768))
    snr = float("inf") if noise == 0 else 10 * math.log10(signal / noise)
    return {"snr_db": snr, "max_diff_lsb": largest}


# -- the floor -----------------------------------------------------------------------------------
def _floor_process(repo: str, files: list[str], device: str, threads: int, barrier, results) -> None:
    """One floor process: load the model, decode its files, wait, then time apply_model only."""
    import torch
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    if threads > 0:
        torch.set_num_threads(threads)
    model = get_model(MODEL_NAME, Path(repo))
    model.to(device)
    model.eval()
    wavs = [read_wav(Path(f)) for f in files]
    barrier.wait()
    started = time.monotonic()
    per_file = []
    for wav in wavs:
        t0 = time.monotonic()
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        with torch.no_grad():
            out = apply_model(model, ((wav - mean) / std)[None], shifts=0, split=True, overlap=0.25,
                              device=device, progress=False, num_workers=0)
        out = out * std + mean
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        per_file.append(time.monotonic() - t0)
    results.put({"pid": os.getpid(), "started": started, "ended": time.monotonic(),
                 "per_file_s": per_file, "threads": torch.get_num_threads()})


def run_floor(repo: Path, files: list[Path], durations: list[float], procs: int, threads: int,
              device: str) -> dict:
    """The model already loaded in `procs` processes of `threads` threads; no I/O timed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parts = [p for p in balance(durations, procs) if p]
    barrier, results = ctx.Barrier(len(parts) + 1), ctx.Queue()
    workers = [ctx.Process(target=_floor_process,
                           args=(str(repo), [str(files[i]) for i in part], device, threads,
                                 barrier, results), daemon=True) for part in parts]
    for worker in workers:
        worker.start()
    handles = [process(w.pid) for w in workers]
    with RssSampler(lambda: tree(*handles), is_python_worker) as sampler:
        barrier.wait(timeout=600)
        answers = [results.get(timeout=24 * 3600) for _ in workers]
        for worker in workers:
            worker.join()
    wall = max(a["ended"] for a in answers) - min(a["started"] for a in answers)
    return {"wall_s": wall, "processes": len(workers), "threads": answers[0]["threads"],
            "split": [[files[i].name for i in part] for part in parts],
            "busy_s": [sum(a["per_file_s"]) for a in answers], **sampler.summary()}


# -- subprocess contenders ------------------------------------------------------------------------
def demucs_cmd(repo: Path, out: Path, files: list[Path], device: str) -> list[str]:
    return [sys.executable, "-m", "demucs.separate", "-n", MODEL_NAME, "--repo", str(repo),
            "--shifts", "0", "-d", device, "-o", str(out), *map(str, files)]


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children waited for so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(repo: Path, files: list[Path], out: Path, device: str, log: Path) -> dict:
    """demucs's own CLI, one process for all files."""
    with open(log, "wb") as handle:
        cpu_before = children_cpu_s()
        started = time.monotonic()
        proc = subprocess.Popen(demucs_cmd(repo, out, files, device), stdout=handle,
                                stderr=subprocess.STDOUT)
        root = process(proc.pid)
        with RssSampler(lambda: tree(root), is_python_worker) as sampler:
            rc = proc.wait()
        wall = time.monotonic() - started
    _check_rc(rc, "demucs CLI", log)
    return {"wall_s": wall, "cpu_s": children_cpu_s() - cpu_before, "processes": 1,
            **sampler.summary()}


def run_old(repo: Path, files: list[Path], out: Path, device: str, max_workers: int,
            log: Path) -> dict:
    """The old service: one `python -m demucs.separate` per file, `max_workers` at a time, FIFO."""
    pending, running, failures, handles = list(files), [], [], []
    with open(log, "wb") as handle:
        started = time.monotonic()
        with RssSampler(lambda: tree(*handles), is_python_worker) as sampler:
            while pending or running:
                while pending and len(running) < max_workers:
                    path = pending.pop(0)
                    proc = subprocess.Popen(demucs_cmd(repo, out, [path], device), stdout=handle,
                                            stderr=subprocess.STDOUT)
                    running.append(proc)
                    handles.append(process(proc.pid))
                time.sleep(0.02)
                for proc in [p for p in running if p.poll() is not None]:
                    running.remove(proc)
                    handles[:] = [h for h in handles if h is not None and h.pid != proc.pid]
                    if proc.returncode:
                        failures.append(proc.returncode)
        wall = time.monotonic() - started
    if failures:
        _check_rc(failures[0], "old design", log)
    return {"wall_s": wall, "processes": len(files), "max_workers": max_workers,
            **sampler.summary()}


def _check_rc(rc: int, what: str, log: Path) -> None:
    if rc:
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{what} exited with {rc}; see {log}:\n{tail}")
