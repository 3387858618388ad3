"""The RoFormer rows of the benchmarks: raydemucs's engine against the training repo's `demix`.

A BS-RoFormer with random weights at the settings of a public checkpoint (the MSST viperx
"ep 317" vocals model: 512 wide, 12 layers, 8 s chunks, overlap 2, batches of 4; speed does not
depend on the weights' values) is written in the community layout (`NAME.ckpt` + `NAME.yaml`)
and loaded as a worker loads it. The reference is tests/roformer_reference.py's `demix` with the
reference network on the same checkpoint, in the same process, on the same clip; every engine
row is reported against it: wall and CPU seconds, their ratio, the largest difference in 16-bit
LSB and the SNR. `bench/run.py` runs it on the CPU (fp32 and bf16), `bench/gpu.py` on a GPU.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import benchlib
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "bs_roformer_viperx_317_random"
# model_bs_roformer_ep_317_sdr_12.9755.yaml's network and inference settings
VIPERX_317 = {
    "model": {"dim": 512, "depth": 12, "stereo": True, "num_stems": 1,
              "time_transformer_depth": 1, "freq_transformer_depth": 1,
              "linear_transformer_depth": 0,
              "freqs_per_bands": (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8
              + (128, 129),
              "dim_head": 64, "heads": 8, "attn_dropout": 0.1, "ff_dropout": 0.1,
              "flash_attn": True, "dim_freqs_in": 1025, "stft_n_fft": 2048,
              "stft_hop_length": 441, "stft_win_length": 2048, "stft_normalized": False,
              "mask_estimator_depth": 2},
    "audio": {"chunk_size": 352800, "num_channels": 2, "sample_rate": 44100},
    "training": {"instruments": ["vocals", "other"], "target_instrument": "vocals"},
    "inference": {"batch_size": 4, "num_overlap": 2},
}
TINY = {**VIPERX_317, "model": {**VIPERX_317["model"], "dim": 16, "depth": 1, "dim_head": 8,
                                "heads": 2, "mask_estimator_depth": 1},
        "audio": {**VIPERX_317["audio"], "chunk_size": 44100}}


class TupleDumper(yaml.SafeDumper):
    """Writes tuples as `!!python/tuple`, as the community YAML files hold them."""


TupleDumper.add_representer(tuple, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:python/tuple", data))


def write_checkpoint(repo: Path, tiny: bool = False) -> dict:
    """A random-weight BS-RoFormer in `repo` (`NAME.ckpt`, `NAME.yaml`); its size."""
    import torch

    from raydemucs.models.roformer.config import load_config
    from raydemucs.models.roformer.loading import build_network

    repo.mkdir(parents=True, exist_ok=True)
    (repo / f"{NAME}.yaml").write_text(yaml.dump(TINY if tiny else VIPERX_317,
                                                 Dumper=TupleDumper, sort_keys=False))
    torch.manual_seed(0)
    network = build_network(load_config(repo / f"{NAME}.yaml"))
    torch.save(network.state_dict(), repo / f"{NAME}.ckpt")
    return {"name": NAME, "settings": "tiny" if tiny else "MSST viperx ep 317",
            "params": sum(p.numel() for p in network.parameters())}


def reference():
    """tests/roformer_reference.py (it needs audio-separator: pip install --no-deps)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import roformer_reference

    return roformer_reference


def reference_network(repo: Path):
    """The reference class with the checkpoint's weights, and the checkpoint's config."""
    import torch

    from raydemucs.models.roformer.config import load_config

    config = load_config(repo / f"{NAME}.yaml")
    network = reference().reference_class(config.architecture)(**config.kwargs)
    network.load_state_dict(torch.load(repo / f"{NAME}.ckpt", weights_only=True))
    return network.eval(), config


def timed(fn) -> tuple:
    wall, cpu = time.monotonic(), time.process_time()
    result = fn()
    return result, {"wall_s": time.monotonic() - wall, "cpu_s": time.process_time() - cpu}


def reference_row(repo: Path, wavs: dict, device: str) -> tuple[dict, dict]:
    """`demix` on every clip: the row and `{clip: [stems, channels, time]}`."""
    import torch

    network, config = reference_network(repo)
    network.to(device)
    stems, row = timed(lambda: {key: torch.from_numpy(reference().reference_demix(
        network, config, wav.numpy(), device)) for key, wav in wavs.items()})
    return {"row": "reference demix (MSST)", "precision": "fp32",
            "batch": config.batch_size, **row}, stems


def label(precision: str, batch: int) -> str:
    return f"raydemucs {precision}" + (f", batches <= {batch}" if batch > 1 else "")


def engine_row(model, wavs: dict, device: str, precision: str, batch: int) -> tuple[dict, dict]:
    """The worker's engine on every clip (one `BatchedSeparator`: batch 1 is a worker's
    in-memory path, one chunk per pass): the row and the stems, stacked per clip."""
    import torch

    from raydemucs.separation.batching import BatchedSeparator

    separator = BatchedSeparator(model, batch_size=batch, device=device, precision=precision)
    out, row = timed(lambda: separator.separate(wavs))
    stems = {key: torch.stack(list(sources.values())) for key, sources in out.items()}
    return {"row": label(precision, batch), "precision": precision, "batch": batch, "forward_passes": separator.forward_passes,
            **row}, stems


def compare(rows: list[dict], outputs: list[dict], agreement) -> list[dict]:
    """Each row against the first (the reference): ratios, LSB and SNR."""
    base, ref = rows[0], outputs[0]
    for row, stems in zip(rows, outputs):
        row["vs_reference"] = base["wall_s"] / row["wall_s"]
        row["cpu_vs_reference"] = base["cpu_s"] / row["cpu_s"] if row["cpu_s"] else None
        row.update(agreement((ref[key], stems[key]) for key in ref))
    return rows


def run(work: Path, wavs: dict, device: str, precisions, batch: int, agreement=benchlib.agreement,
        tiny: bool = False, refusal=None) -> dict:
    """Every row for the clips `wavs` (`{name: [channels, time]}` at 44.1 kHz)."""
    from raydemucs.models.loading import load_separator

    repo = work / "roformer"
    report = {"model": write_checkpoint(repo, tiny)}
    print(f"RoFormer ({report['model']['params'] / 1e6:.1f} M params): reference demix ...",
          flush=True)
    row, stems = reference_row(repo, wavs, device)
    rows, outputs = [row], [stems]
    model = load_separator(NAME, str(repo), device).model
    for precision in precisions:
        for size in sorted({1, batch}):
            why = refusal(precision, device) if refusal else None
            if why:
                rows.append({"row": label(precision, size), "precision": precision,
                             "batch": size, "refused": why})
                continue
            print(f"RoFormer: raydemucs {precision}, batch {size} ...", flush=True)
            row, stems = engine_row(model, wavs, device, precision, size)
            rows.append(row)
            outputs.append(stems)
    compare([r for r in rows if "refused" not in r], outputs, agreement)
    report["rows"] = rows
    return report


def cpu_row(work: Path, seconds: float) -> dict:
    """bench/run.py's row: one clip on the CPU, the reference demix, then the engine in fp32 and
    in bf16 (run even where a worker would refuse bf16 for want of bf16 units)."""
    clip = benchlib.write_wav(work / "inputs" / "roformer.wav", benchlib.make_signal(seconds, 7))
    try:
        report = run(work, {"clip": benchlib.read_wav(clip)}, "cpu", ["fp32", "bf16"], 1,
                     benchlib.agreement)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    return {**report, "audio_s": seconds}


def cpu_lines(report: dict) -> list[str]:
    """`cpu_row`'s table, and whether fp32 is within 1 LSB of the reference."""
    if "error" in report:
        return ["", f"RoFormer: failed: {report['error'].splitlines()[0]}"]
    fp32 = next(row for row in report["rows"][1:] if row["precision"] == "fp32")
    mark = "PASS" if fp32["max_diff_lsb"] <= 1 else "FAIL"
    return ["", *render(report, report["audio_s"]),
            f"  {mark}  RoFormer fp32 within 1 LSB of demix: measured {fp32['max_diff_lsb']} LSB"]


def render(report: dict, audio_s: float) -> list[str]:
    model = report["model"]
    lines = [f"RoFormer: BS-RoFormer at the {model['settings']} settings, "
             f"{model['params'] / 1e6:.1f} M params, random weights, {audio_s:g} s of audio; "
             "each row against the training repo's demix in this process", ""]
    head = (f"{'row':36} {'wall s':>8} {'CPU s':>8} {'vs ref':>7} {'CPU/ref':>7} {'SNR dB':>7} "
            f"{'max LSB':>7}")
    lines += [head, "-" * len(head)]
    for row in report["rows"]:
        if "refused" in row:
            lines.append(f"{row['row']:36} refused: {row['refused']}")
            continue
        snr = row["snr_db"]
        lines.append(f"{row['row']:36} {row['wall_s']:8.2f} {row['cpu_s']:8.1f} "
                     f"{row['vs_reference']:6.2f}x {row['cpu_vs_reference'] or 0:6.2f}x "
                     f"{'inf' if snr == float('inf') else format(snr, '.1f'):>7} "
                     f"{row['max_diff_lsb']:7d}")
    return lines
