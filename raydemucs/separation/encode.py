"""Stem files: a stem (a tensor, or a `StreamedStem` on disk) written as wav, mp3 or flac.

WAV and MP3 hold the bytes `demucs.audio.save_audio` writes for the same samples and options;
FLAC holds the samples it gives the ffmpeg program, written with soundfile (libsndfile, in its
wheel) instead: lossless, so they decode to the same samples. A streamed stem is written block
by block (with `--clip-mode rescale`'s peak of the whole stem).
"""
from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch as th
from demucs.audio import prevent_clip, save_audio

from .streaming import StreamedStem

DEPTH_KWARGS = {"int16": {"bits_per_sample": 16}, "int24": {"bits_per_sample": 24},
                "float32": {"as_float": True}}


def _clip(block: th.Tensor, mode: str | None, peak: float) -> th.Tensor:
    """`demucs.audio.prevent_clip` on a block; `rescale` with the whole stem's peak."""
    if mode == "rescale":
        return block / max(1.01 * th.tensor(peak, dtype=th.float32), 1)
    return prevent_clip(block, mode)


def pcm(block: th.Tensor, bits_per_sample: int) -> np.ndarray:
    """`[time, channels]` integer PCM as demucs makes it for wav and flac: int16, or for 24 bits
    int32 with the sample in its top 3 bytes (wav keeps those, flac encoders drop the low one)."""
    frames = block.clamp(-1, 1).t().contiguous().cpu().numpy()
    if bits_per_sample == 16:
        return (frames * (2**15 - 1)).astype("<i2")
    if bits_per_sample == 24:
        return (frames * (2**23 - 1)).astype("<i4") << 8
    raise ValueError(f"Invalid bits_per_sample: {bits_per_sample}")


def _wav_header(channels: int, samplerate: int, frames: int, bits: int, as_float: bool) -> bytes:
    """The header `demucs.audio.encode_wav` writes, for `frames` samples to follow."""
    bits = 32 if as_float else bits
    data_bytes = frames * channels * bits // 8
    fmt = struct.pack("<HHIIHH", 3 if as_float else 1, channels, samplerate,
                      samplerate * channels * bits // 8, channels * bits // 8, bits)
    chunks = [(b"fmt ", len(fmt))] + ([(b"fact", 4)] if as_float else []) + [(b"data", data_bytes)]
    riff_size = 4 + sum(8 + size for _, size in chunks)
    if riff_size > 0xFFFFFFFF:
        raise ValueError(f"{data_bytes} bytes of samples do not fit a WAV file (4 GiB); "
                         "use flac or mp3")
    header = b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
    header += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    if as_float:
        header += b"fact" + struct.pack("<I", 4) + struct.pack("<I", frames)
    return header + b"data" + struct.pack("<I", data_bytes)


def save_streamed(stem: StreamedStem, path, samplerate: int, bitrate: int = 320,
                  clip: str = "rescale", bits_per_sample: int = 16, as_float: bool = False,
                  preset: int = 2) -> None:
    """`demucs.audio.save_audio` for a streamed stem, block by block: the same bytes."""
    path = Path(path)
    suffix = path.suffix.lower()
    blocks = (_clip(block, clip, stem.peak) for block in stem.blocks())
    if suffix == ".wav":
        with open(path, "wb") as handle:
            handle.write(_wav_header(stem.channels, samplerate, stem.frames, bits_per_sample,
                                     as_float))
            for block in blocks:
                if as_float:
                    handle.write(block.clamp(-1, 1).t().numpy().astype("<f4").tobytes())
                elif bits_per_sample == 24:
                    handle.write(pcm(block, 24).view(np.uint8).reshape(-1, 4)[:, 1:].tobytes())
                else:
                    handle.write(pcm(block, bits_per_sample).tobytes())
    elif suffix == ".mp3":
        _save_mp3(blocks, path, stem.channels, samplerate, bitrate, preset)
    elif suffix == ".flac":
        _save_flac(blocks, path, stem.channels, samplerate, bits_per_sample)
    else:
        raise ValueError(f"Invalid suffix for path: {suffix}")


def _save_mp3(blocks, path: Path, channels: int, samplerate: int, bitrate: int, preset: int):
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bitrate)
    encoder.set_in_sample_rate(samplerate)
    encoder.set_channels(channels)
    encoder.set_quality(preset)
    with open(path, "wb") as handle:
        for block in blocks:
            samples = (block.clamp(-1, 1) * (2**15 - 1)).short()
            handle.write(encoder.encode(samples.t().numpy().tobytes()))
        handle.write(encoder.flush())


def _save_flac(blocks, path: Path, channels: int, samplerate: int, bits_per_sample: int):
    """FLAC of the PCM demucs pipes to ffmpeg; libsndfile keeps a 24-bit int32's top 3 bytes."""
    with sf.SoundFile(path, "w", samplerate, channels, f"PCM_{bits_per_sample}", format="FLAC") \
            as handle:
        for block in blocks:
            handle.write(pcm(block, bits_per_sample))


def save_any(wav, path, samplerate: int, clip: str = "rescale", bits_per_sample: int = 16,
             **kwargs) -> None:
    """`save_audio` for a tensor, `save_streamed` for a `StreamedStem`: one `save` for
    `raydemucs.storage.folders.write_outputs` whichever path separated the track; FLAC via soundfile."""
    if isinstance(wav, StreamedStem):
        save_streamed(wav, path, samplerate, clip=clip, bits_per_sample=bits_per_sample, **kwargs)
    elif Path(path).suffix.lower() == ".flac":
        _save_flac([prevent_clip(wav, clip)], Path(path), wav.shape[0], samplerate,
                   bits_per_sample)
    else:
        save_audio(wav, path, samplerate, clip=clip, bits_per_sample=bits_per_sample, **kwargs)


def stem_saver(options, samplerate: int):
    """`save(stem, path)` for a task's separation options (format, depth, bitrate, clip mode)."""
    return functools.partial(save_any, samplerate=samplerate, bitrate=options.mp3_bitrate,
                             preset=options.mp3_preset, clip=options.clip_mode,
                             **DEPTH_KWARGS[options.wav_depth])
