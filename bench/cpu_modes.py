#!/usr/bin/env python
"""CPU seconds of each stage around the model and of each precision mode, in one process.

    python bench/cpu_modes.py                 # a 14 s clip, the full htdemucs, 1 thread
    python bench/cpu_modes.py --seconds 8 --threads 2

CPU time (`time.process_time`) rather than wall time, so that a machine shared with other work
still gives usable ratios: decoding and writing (demucs's and ours), demucs's `apply_model`
against raydemucs's engine (`BatchedSeparator`, one segment per pass, as a worker runs a
track), then each precision and runtime with its SNR and largest difference against eager fp32.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

MODES = [("fp32", "eager"), ("bf16", "eager"), ("fp32", "openvino"), ("bf16", "openvino")]


def cpu_s(label: str, fn, repeats: int = 1):
    """Run `fn` `repeats` times; print the least CPU time; return its last result."""
    best = None
    for _ in range(repeats):
        started = time.process_time()
        result = fn()
        spent = time.process_time() - started
        best = spent if best is None else min(best, spent)
    print(f"{label:42} {best:7.2f} CPU s", flush=True)
    return result, best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=14.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import sphn
    import torch as th
    from demucs.api import save_audio
    from demucs.apply import apply_model
    from demucs.audio import convert_audio
    from demucs.pretrained import get_model

    from raydemucs.models.runtimes import check_device
    from raydemucs.separation.batching import BatchedSeparator
    from raydemucs.separation.decode import decode
    from raydemucs.separation.encode import save_any

    th.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="raydemucs-cpu-modes-"))
    benchlib.build_model_repo(work / "models")
    model = get_model(benchlib.MODEL_NAME, work / "models")
    clip = benchlib.write_wav(work / "clip.wav", benchlib.make_signal(args.seconds, seed=1))
    rate = model.samplerate

    wav, _ = cpu_s("demucs: decode (sphn, convert_audio)", lambda: convert_audio(
        th.from_numpy(sphn.read(str(clip))[0]), rate, rate, 2))
    cpu_s("raydemucs: decode", lambda: decode(clip, rate, 2))
    ref = wav.mean(0)
    mix = (wav - ref.mean()) / (ref.std() + 1e-8)
    with th.no_grad():
        _, demucs_s = cpu_s("demucs: apply_model", lambda: apply_model(
            model, mix[None], shifts=0, split=True, overlap=0.25, progress=False), args.repeats)
    results, seconds = {}, {}
    for precision, runtime in MODES:
        try:
            check_device(precision, "cpu")
        except Exception as exc:
            print(f"{precision} {runtime}: {exc}")
            continue
        engine = BatchedSeparator(model, batch_size=1, precision=precision, runtime=runtime)
        engine.separate({"warm-up": wav[:, :rate]})  # builds or loads an export
        stems, seconds[precision, runtime] = cpu_s(
            f"raydemucs: {precision} {runtime}",
            lambda: engine.separate({"clip": wav}, overlap=0.25, shifts=0)["clip"], args.repeats)
        results[precision, runtime] = stems
    stems = results["fp32", "eager"]
    cpu_s("demucs: save_audio x4", lambda: [save_audio(s, str(work / f"d-{k}.wav"), rate)
                                             for k, s in stems.items()])
    cpu_s("raydemucs: save_any x4", lambda: [save_any(s, work / f"r-{k}.wav", rate)
                                              for k, s in stems.items()])
    base = seconds["fp32", "eager"]
    print(f"\nengine vs apply_model: {demucs_s / base:.2f}x")
    for key, estimate in results.items():
        figures = benchlib.agreement((stems[s], estimate[s]) for s in stems)
        print(f"{key[0]} {key[1]:9} {base / seconds[key]:5.2f}x eager fp32, SNR "
              f"{figures['snr_db']:.1f} dB, largest difference {figures['max_diff_lsb']} LSB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
