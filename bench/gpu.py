#!/usr/bin/env python
"""GPU benchmark: demucs's CLI against the engine raydemucs's workers run, per precision and batch.

    bash bench/gpu.sh                          # on a GPU machine: 32 clips of 3 min, one table
    bash bench/gpu.sh --device cpu --tiny      # the same code paths on a CPU in about a minute

Rows: `demucs CLI` (`python -m demucs.separate -d DEVICE`, one process for every clip), then for
each precision the worker's engine (`raydemucs.separation.batching.BatchedSeparator`, in this process, the
model on the device) once with one segment per forward pass (no batching) and once with every
clip queued together and up to `--batch` segments per pass, sized down from free GPU memory
(cross-task batching). Each row reports the real-time factor, the GPU memory peak and its SNR
against the fp32 row without batching; the fp32 rows also their largest difference from the
CLI's stems in 16-bit LSB. A precision the device cannot run is reported as refused.

Then the RoFormer rows (bench/roformer.py): a BS-RoFormer at a public checkpoint's settings
(random weights; a tiny one with --tiny) on the first `--roformer-clips` clips, the training
repo's `demix` on the device first, then the engine per precision, unbatched and batched, each
against that reference (ratio, SNR, largest difference in LSB).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="a small HTDemucs and 2 clips of 3 s: checks the code paths")
    parser.add_argument("--clips", type=int, help="clips (default 32; 2 with --tiny)")
    parser.add_argument("--seconds", type=float, help="seconds per clip (default 180; 3 with --tiny)")
    parser.add_argument("--batch", type=int, default=64,
                        help="most segments per forward pass in the batched rows (default 64)")
    parser.add_argument("--roformer-clips", type=int, default=4,
                        help="clips the RoFormer rows run (default 4; 0 skips them)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="comma-separated subset of fp32,bf16,fp16 (fp32 is always run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results"
                        / "gpu.json")
    args = parser.parse_args(argv)
    args.clips = args.clips or (2 if args.tiny else 32)
    args.seconds = args.seconds or (3.0 if args.tiny else 180.0)
    wanted = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if set(wanted) - set(PRECISIONS) or args.clips < 1 or args.seconds <= 0 or args.batch < 1:
        parser.error("need --precisions from fp32,bf16,fp16, --clips >= 1, --seconds > 0, "
                     "--batch >= 1")
    args.precisions = ["fp32", *[p for p in PRECISIONS[1:] if p in wanted]]
    return args


def machine(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def engine_row(model, wavs: dict, device: str, precision: str, batch: int) -> tuple[dict, dict]:
    """Separate every clip through one BatchedSeparator; the row's figures and the stems."""
    import torch

    from raydemucs.separation.batching import BatchedSeparator

    separator = BatchedSeparator(model, batch_size=batch, device=device, precision=precision)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    stems = separator.separate(wavs, overlap=0.25, shifts=0)
    if device == "cuda":
        torch.cuda.synchronize()
    row = {"wall_s": time.monotonic() - started, "forward_passes": separator.forward_passes,
           "gpu_peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None}
    return row, stems


def refusal(precision: str, device: str) -> str | None:
    """Why a worker on `device` would refuse `precision`, or None."""
    from raydemucs.core.errors import InvalidInput
    from raydemucs.models.runtimes import check_device

    try:
        check_device(precision, device)
    except InvalidInput as exc:
        return str(exc)
    return None


def stem_pairs(reference: dict, stems: dict):
    for key, sources in reference.items():
        for source, wav in sources.items():
            yield wav, stems[key][source]


def cli_pairs(cli_out: Path, files: list[Path], stems: dict, samplerate: int):
    """The CLI's stems and ours, quantized as the CLI writes them (16-bit wav)."""
    from raydemucs.separation.encode import save_any

    scratch = cli_out / "ours"
    scratch.mkdir(exist_ok=True)
    for path in files:
        for source, wav in stems[path.stem].items():
            ours = scratch / f"{path.stem}-{source}.wav"
            save_any(wav, ours, samplerate)
            theirs = cli_out / benchlib.MODEL_NAME / path.stem / f"{source}.wav"
            yield benchlib.read_wav(theirs), benchlib.read_wav(ours)


def run(args, work: Path) -> dict:
    import torch
    from demucs.pretrained import get_model

    repo = work / "models"
    kwargs = benchlib.TINY_KWARGS if args.tiny else benchlib.HTDEMUCS_KWARGS
    report = {"machine": machine(args.device), "model": benchlib.build_model_repo(repo, kwargs=kwargs),
              "args": {k: str(v) for k, v in vars(args).items()}}
    durations = [args.seconds] * args.clips
    files = benchlib.make_inputs(work / "inputs", durations)
    audio_s = sum(durations)
    report["audio_s"] = audio_s
    rows = []
    print(f"{args.clips} clips of {args.seconds:g} s on {args.device}: demucs CLI ...", flush=True)
    cli = benchlib.run_cli(repo, files, work / "cli", args.device, work / "cli.log")
    rows.append({"row": "demucs CLI", "precision": "fp32", "batch": 1, **cli})
    model = get_model(benchlib.MODEL_NAME, repo)
    wavs = {path.stem: benchlib.read_wav(path) for path in files}
    reference = None
    for precision in args.precisions:
        for batch in sorted({1, args.batch}):
            label = f"raydemucs {precision}" + (f", batches <= {batch}" if batch > 1 else "")
            why = refusal(precision, args.device)
            if why:
                rows.append({"row": label, "precision": precision, "batch": batch,
                             "refused": why})
                continue
            print(f"{label} ...", flush=True)
            row, stems = engine_row(model, wavs, args.device, precision, batch)
            if reference is None:
                reference = stems
            row.update(benchlib.agreement(stem_pairs(reference, stems)))
            if precision == "fp32":
                row["max_diff_lsb_vs_cli"] = benchlib.agreement(
                    cli_pairs(work / "cli", files, stems, model.samplerate))["max_diff_lsb"]
            rows.append({"row": label, "precision": precision, "batch": batch, **row})
            del stems
            if args.device == "cuda":
                torch.cuda.empty_cache()
    for row in rows:
        if "wall_s" in row:
            row["realtime_x"] = audio_s / row["wall_s"]
            row["vs_cli"] = cli["wall_s"] / row["wall_s"]
    report["rows"] = rows
    if args.roformer_clips > 0:
        import roformer

        clips = dict(list(wavs.items())[:args.roformer_clips])
        report["roformer"] = roformer.run(work, clips, args.device, args.precisions, args.batch,
                                          benchlib.agreement, args.tiny, refusal)
        report["roformer"]["audio_s"] = args.seconds * len(clips)
    return report


def render(report: dict) -> str:
    fmt = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731
    machine_ = report["machine"]
    lines = [f"{report['args']['clips']} clips of {report['args']['seconds']} s "
             f"({report['audio_s']:.0f} s of audio), {report['model']['params'] / 1e6:.2f} M "
             f"params, on {machine_.get('gpu') or 'cpu'} (torch {machine_['torch']})", ""]
    head = (f"{'row':36} {'wall s':>8} {'x real time':>11} {'vs CLI':>7} {'GPU peak':>9} "
            f"{'SNR dB':>7} {'LSB/CLI':>7}")
    lines += [head, "-" * len(head)]
    for row in report["rows"]:
        if "refused" in row:
            lines.append(f"{row['row']:36} refused: {row['refused']}")
            continue
        peak = row.get("gpu_peak_bytes")
        lines.append(f"{row['row']:36} {row['wall_s']:8.2f} {row['realtime_x']:11.1f} "
                     f"{row['vs_cli']:6.2f}x {fmt(peak and peak / 2**30, '7.2f') + ' G' if peak else '        -'} "
                     f"{fmt(row.get('snr_db'), '7.1f')} {fmt(row.get('max_diff_lsb_vs_cli'), '7d')}")
    if report.get("roformer"):
        import roformer

        lines += ["", *roformer.render(report["roformer"], report["roformer"]["audio_s"])]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device (use --device cpu --tiny to check the script)")
    work = Path(tempfile.mkdtemp(prefix="raydemucs-gpu-bench-"))
    try:
        started = time.monotonic()
        report = run(args, work)
        report["elapsed_s"] = time.monotonic() - started
        report["table"] = render(report)
        print("\n" + report["table"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.out} ({report['elapsed_s']:.0f} s in all)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
