#!/usr/bin/env python
"""Long tracks: peak memory streamed vs plain, one track across processes, batching on a GPU.

    python bench/longtrack.py memory                       # 2 and 20 min, plain and streamed
    python bench/longtrack.py memory --durations 60 600 --modes streamed
    python bench/longtrack.py pieces --seconds 60 --pieces 2      # K processes of 1 thread vs 1
    python bench/longtrack.py batch --device cuda --tracks 8 --seconds 30 --batch-size 8
    python bench/longtrack.py split --model htdemucs_rand --seconds 60   # through the service

`memory`, `pieces` and `batch` need torch, demucs and raydemucs's `longtrack`/`batching` modules
only (no Ray); `split` runs the real service on a local Ray (2 workers of 1 CPU), one task at a
time, with splitting off then on, `--rounds` times, interleaved. Every
measured run is a fresh subprocess so that its peak RSS (`getrusage`) is its own. The model is
`demucs_unittest` (seeded) unless `--model htdemucs_rand` (the full htdemucs architecture with
random weights, built by `benchlib`). Results go to `bench/results/longtrack-<cmd>.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchlib  # noqa: E402

SAMPLERATE = benchlib.SAMPLERATE
CHUNK_S = 10


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_long_wav(path: Path, seconds: float) -> Path:
    """A stereo 16-bit wav written 10 s at a time (the generator never holds the whole track)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    total = int(round(seconds * SAMPLERATE))
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLERATE)
        done, seed = 0, 0
        while done < total:
            n = min(CHUNK_S * SAMPLERATE, total - done)
            data = benchlib.make_signal(n / SAMPLERATE, seed)[:n]
            pcm = np.clip(np.round(data * 32767), -32768, 32767).astype("<i2")
            handle.writeframes(pcm.tobytes())
            done, seed = done + n, seed + 1
    return path


def load_model(name: str, repo: str | None):
    import torch
    from demucs.pretrained import get_model

    torch.manual_seed(0)
    model = get_model(name, Path(repo) if repo else None)
    model.eval()
    return model


def model_args(args) -> list[str]:
    out = ["--model", args.model, "--shifts", str(args.shifts), "--overlap", str(args.overlap),
           "--threads", str(args.threads), "--device", args.device]
    if args.repo:
        out += ["--repo", args.repo]
    if args.segment:
        out += ["--segment", str(args.segment)]
    return out


def run_child(argv: list[str], log: Path) -> dict:
    """Run this script as a child; its last stdout line is a JSON object."""
    started = time.perf_counter()
    with open(log, "ab") as err:
        proc = subprocess.run([sys.executable, __file__, *argv], stdout=subprocess.PIPE,
                              stderr=err, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv[:2]} failed (rc {proc.returncode}); see {log}")
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - started
    return result


# -- children -------------------------------------------------------------------------------------
def child_separate(args) -> dict:
    """One separation the way a worker does it: plain (decode, separate_tensor, save_audio) or
    streamed (separate_file, save_streamed). Prints figures as JSON."""
    import torch
    from demucs.api import Separator
    from demucs.audio import save_audio

    from raydemucs.separation import encode, streaming
    from raydemucs.separation.decode import decode

    torch.set_num_threads(args.threads)
    if args.mode == "plain":
        torch.manual_seed(0)
        separator = Separator(args.model, repo=Path(args.repo) if args.repo else None,
                              device=args.device, shifts=args.shifts, overlap=args.overlap,
                              split=True, segment=args.segment, progress=False)
        model = separator.model
    else:
        model = load_model(args.model, args.repo)
    loaded_rss = rss_peak_bytes()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.mode == "plain":
        wav = decode(Path(args.input), model.samplerate, model.audio_channels)
        _, stems = separator.separate_tensor(wav)
        separated = time.perf_counter()
        for name, stem in stems.items():
            save_audio(stem, out / f"{name}.wav", model.samplerate, clip="rescale")
    else:
        with streaming.separate_file(model, args.input, out, segment=args.segment,
                                     overlap=args.overlap, shifts=args.shifts,
                                     device=args.device) as result:
            separated = time.perf_counter()
            for name, stem in result.stems.items():
                encode.save_streamed(stem, out / f"{name}.wav", model.samplerate,
                                       clip="rescale")
    done = time.perf_counter()
    return {"mode": args.mode, "peak_rss_bytes": rss_peak_bytes(), "loaded_rss_bytes": loaded_rss,
            "separate_s": separated - started, "write_s": done - separated,
            "wall_s": done - started}


def child_piece(args) -> dict:
    """Separate one piece of a plan (saved by the parent) and save its sums."""
    import torch

    from raydemucs.separation import split

    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.repo)
    job = torch.load(args.job, weights_only=False)
    started = time.perf_counter()
    result = split.separate_piece_file(model, job["plan"], job["piece"], args.input,
                                        job["mean"], job["std"], device=args.device)
    torch.save(result, args.out)
    return {"piece": job["piece"].index, "separate_s": time.perf_counter() - started,
            "peak_rss_bytes": rss_peak_bytes()}


# -- memory ---------------------------------------------------------------------------------------
def compare_wavs(a: Path, b: Path) -> int:
    """Largest difference between two 16-bit wav files, in LSBs, read a block at a time."""
    worst = 0
    with wave.open(str(a), "rb") as x, wave.open(str(b), "rb") as y:
        if x.getnframes() != y.getnframes():
            return 1 << 16
        while True:
            fa, fb = x.readframes(1 << 18), y.readframes(1 << 18)
            if not fa:
                return worst
            diff = np.frombuffer(fa, "<i2").astype(np.int32) - np.frombuffer(fb, "<i2")
            worst = max(worst, int(np.abs(diff).max()))


def cmd_memory(args, work: Path) -> dict:
    runs = []
    for seconds in args.durations:
        path = write_long_wav(work / f"track_{seconds:g}s.wav", seconds)
        for mode in args.modes.split(","):
            out = work / f"out_{mode}_{seconds:g}s"
            print(f"  {mode:8s} {seconds / 60:5.1f} min ...", end="", flush=True)
            result = run_child(["_separate", "--mode", mode, "--input", str(path), "--out",
                                str(out), *model_args(args)], work / "children.log")
            result["duration_s"] = seconds
            runs.append(result)
            print(f" peak RSS {result['peak_rss_bytes'] / 2**20:7.0f} MiB, "
                  f"{result['wall_s']:6.1f} s")
        if {"plain", "streamed"} <= set(args.modes.split(",")):
            lsb = max(compare_wavs(work / f"out_plain_{seconds:g}s" / f"{name}.wav",
                                   work / f"out_streamed_{seconds:g}s" / f"{name}.wav")
                      for name in benchlib.SOURCES)
            for run in runs[-2:]:
                run["max_lsb_vs_other_mode"] = lsb
        path.unlink()
        for mode in args.modes.split(","):
            shutil.rmtree(work / f"out_{mode}_{seconds:g}s", ignore_errors=True)
    ratios = {}
    short, long = min(args.durations), max(args.durations)
    for mode in args.modes.split(","):
        peak = {r["duration_s"]: r["peak_rss_bytes"] for r in runs if r["mode"] == mode}
        ratios[mode] = peak[long] / peak[short]
    return {"runs": runs, "rss_ratio_long_vs_short": ratios, "target": "streamed <= 1.2"}


def render_memory(report: dict) -> str:
    lines = [f"{'mode':9s} {'track':>8s} {'peak RSS':>10s} {'after load':>10s} "
             f"{'separate':>9s} {'write':>7s} {'LSB':>4s}"]
    for r in report["runs"]:
        lines.append(f"{r['mode']:9s} {r['duration_s'] / 60:6.1f} m "
                     f"{r['peak_rss_bytes'] / 2**20:7.0f} MiB"
                     f" {r['loaded_rss_bytes'] / 2**20:7.0f} MiB {r['separate_s']:8.1f}s "
                     f"{r['write_s']:6.1f}s {r.get('max_lsb_vs_other_mode', '-')!s:>4s}")
    for mode, ratio in report["rss_ratio_long_vs_short"].items():
        lines.append(f"peak RSS long/short, {mode}: {ratio:.2f}x")
    return "\n".join(lines)


# -- pieces ---------------------------------------------------------------------------------------
def cmd_pieces(args, work: Path) -> dict:
    import torch

    from raydemucs.separation import decode, engine
    from raydemucs.separation import split as cut

    path = write_long_wav(work / "track.wav", args.seconds)
    model = load_model(args.model, args.repo)
    mean, std, length = decode.stream_stats(path, model.samplerate, model.audio_channels)
    plan = engine.plan_separation(model, length, segment=args.segment, overlap=args.overlap,
                                  shifts=args.shifts)
    rows, joined = [], {}
    for count in (1, args.pieces):
        pieces = cut.split_plan(plan, count)
        children, started = [], time.perf_counter()
        for piece in pieces:
            job = work / f"job_{count}_{piece.index}.pt"
            torch.save({"plan": plan, "piece": piece, "mean": mean, "std": std}, job)
            argv = [sys.executable, __file__, "_piece", "--input", str(path), "--job", str(job),
                    "--out", str(job.with_suffix(".out")), *model_args(args)]
            children.append(subprocess.Popen(argv, stdout=subprocess.PIPE,
                                             stderr=open(work / "children.log", "ab")))
        outputs = [json.loads(c.communicate()[0].decode().strip().splitlines()[-1])
                   for c in children]
        results = [torch.load(work / f"job_{count}_{p.index}.out", weights_only=False)
                   for p in pieces]
        joined[count] = cut.join_pieces(plan, results, mean, std)
        wall = time.perf_counter() - started
        rows.append({"pieces": len(pieces), "wall_s": wall,
                     "segments": [len(p.segments) for p in pieces],
                     "separate_s": [o["separate_s"] for o in outputs]})
        print(f"  {len(pieces)} piece(s): {wall:6.1f} s (separate {rows[-1]['separate_s']})")
    error = (joined[1] - joined[args.pieces]).abs().max().item()
    return {"seconds": args.seconds, "segments": len(plan.segments), "rows": rows,
            "ratio": rows[1]["wall_s"] / rows[0]["wall_s"], "max_abs_error": error,
            "target": "ratio <= 0.6 for 2 pieces"}


def cmd_split(args, work: Path) -> dict:
    """One long track through raydemucs with 2 idle workers: `tasks.split_over_s` off vs on."""
    import ray

    from raydemucs import WorkerManager
    from raydemucs.core.config import load_config

    path = write_long_wav(work / "track.wav", args.seconds)
    ray.init(address="local", num_cpus=args.pieces, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for round_ in range(args.rounds):
            for split in (False, True):
                config = load_config(overrides={
                    "service": {"name": f"split{round_}{int(split)}", "state_dir": str(work / "state"),
                                "log_level": "warning"},
                    "workers": {"max_workers": args.pieces, "num_cpus": 1, "memory_mb": 0},
                    "tasks": {"split_over_s": 0.0 if split else None, "max_pieces": args.pieces},
                    "separation": {"model": args.model, "repo": args.repo, "shifts": args.shifts,
                                   "overlap": args.overlap, "segment": args.segment}}, environ={})
                manager = WorkerManager(config)
                manager.scheduler(create=True, preload=config.separation)
                while [w["state"] for w in manager.get_status()["workers"]] != ["idle"] * args.pieces:
                    time.sleep(0.2)
                started = time.perf_counter()
                task_id = manager.add_task(path, file_id=f"r{round_}s{int(split)}",
                                           output_dir=work / "out", cache=False)
                record = manager.wait(task_id)
                wall = time.perf_counter() - started
                manager.shutdown(now=True)
                folder = work / "out" / "default" / record["file_id"]
                pieces = json.loads((folder / "manifest.json").read_text())["pieces"]
                rows.append({"round": round_, "split": split, "pieces": pieces, "wall_s": wall})
                print(f"  round {round_} {'split' if split else 'whole'}: {pieces} piece(s) "
                      f"{wall:6.1f} s")
    finally:
        ray.shutdown()
    whole = [r["wall_s"] for r in rows if not r["split"]]
    split = [r["wall_s"] for r in rows if r["split"]]
    lsb = max(compare_wavs(work / "out" / "default" / f"r{r}s0" / "vocals.wav",
                           work / "out" / "default" / f"r{r}s1" / "vocals.wav")
              for r in range(args.rounds))
    return {"seconds": args.seconds, "workers": args.pieces, "rows": rows,
            "ratio": sum(split) / sum(whole), "max_lsb_vocals": lsb,
            "target": "ratio <= 0.6 for 2 workers"}


# -- batching -------------------------------------------------------------------------------------
def cmd_batch(args, work: Path) -> dict:
    import torch
    from demucs.apply import apply_model

    from raydemucs.separation.batching import BatchedSeparator
    from raydemucs.separation.engine import track_stats

    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.repo).to(args.device)
    wavs = {f"t{i}": torch.from_numpy(benchlib.make_signal(args.seconds, seed=i).T.copy())
            for i in range(args.tracks)}

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def unbatched():
        out = {}
        for key, wav in wavs.items():
            mean, std = track_stats(wav)
            out[key] = (apply_model(model, ((wav - mean) / std)[None], shifts=0, split=True,
                                    overlap=args.overlap, segment=args.segment,
                                    device=args.device) * std + mean)[0]
        return out

    unbatched()                                       # warm-up (cuDNN plans, allocator)
    sync()
    started = time.perf_counter()
    ref = unbatched()
    sync()
    plain_s = time.perf_counter() - started
    batcher = BatchedSeparator(model, batch_size=args.batch_size, device=args.device)
    started = time.perf_counter()
    results = batcher.separate(wavs, overlap=args.overlap, segment=args.segment)
    sync()
    batched_s = time.perf_counter() - started
    error = max((torch.stack(list(results[k].values())) - ref[k]).abs().max().item() for k in wavs)
    audio_s = args.tracks * args.seconds
    report = {"device": args.device, "tracks": args.tracks, "seconds": args.seconds,
              "batch_size": args.batch_size, "unbatched_s": plain_s, "batched_s": batched_s,
              "speedup": plain_s / batched_s, "forward_passes": batcher.forward_passes,
              "realtime_unbatched": audio_s / plain_s, "realtime_batched": audio_s / batched_s,
              "max_abs_error": error}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name()
        report["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return report


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["memory", "pieces", "batch", "split", "_separate",
                                            "_piece"])
    parser.add_argument("--model", default="demucs_unittest",
                        help="demucs_unittest, htdemucs_rand (built here), or a name in --repo")
    parser.add_argument("--repo")
    parser.add_argument("--segment", type=float)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--shifts", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--durations", type=float, nargs="+", default=[120.0, 1200.0])
    parser.add_argument("--modes", default="plain,streamed")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pieces", type=int, default=2, help="pieces, or workers for `split`")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work-dir")
    parser.add_argument("--out")
    parser.add_argument("--mode", choices=["plain", "streamed"])
    parser.add_argument("--input")
    parser.add_argument("--job")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command in ("_separate", "_piece"):
        result = (child_separate if args.command == "_separate" else child_piece)(args)
        print(json.dumps(result))
        return 0
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="longtrack-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.model == benchlib.MODEL_NAME and not args.repo:
            args.repo = str(work / "models")
            benchlib.build_model_repo(Path(args.repo))
        command = {"memory": cmd_memory, "pieces": cmd_pieces, "batch": cmd_batch,
                   "split": cmd_split}[args.command]
        report = {"cmd": args.command, "model": args.model, "threads": args.threads,
                  "shifts": args.shifts, "overlap": args.overlap, "segment": args.segment,
                  "cpus": os.cpu_count(), "load_avg_before": os.getloadavg(),
                  **command(args, work), "load_avg_after": os.getloadavg()}
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.command == "memory":
        print(render_memory(report))
    else:
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    out = Path(args.out or HERE / "results" / f"longtrack-{args.command}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
