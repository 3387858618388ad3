"""Long tracks in bounded memory: decode in windows, stream stems to disk, write them at the end.

`separate_file` gives what `demucs.api.Separator.separate_tensor` gives for a whole file while
holding only a window of input and the sums later segments can still touch (see `longtrack` for
the plan); each stem streams to a float32 temp file, and `save_streamed` writes it in the final
format (after `--clip-mode rescale`'s global peak). `save_any` saves a tensor or a streamed stem.
"""
from __future__ import annotations

import random
import shutil
import struct
import subprocess
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch as th
from demucs.audio import _pcm_bytes, prevent_clip
from torch.nn import functional as F

from .audio import resamples_cheaply, sphn_or_none
from .longtrack import (OverlapAdd, Piece, PieceResult, Runner, SeparationPlan, _Moments,
                        _run_one, _stats_from_moments, finish, plan_separation, separate_piece,
                        sub_models, take)
from .outputs import pick_stems

BLOCK_FRAMES = 1 << 16         # samples per block when streaming to and from disk
SPHN_WINDOW_S = 10             # sphn decodes whole seconds: seeks to integer seconds are exact
SPHN_PREROLL_S = 1             # decoded before each window and dropped (mp3 needs a warm-up)

# -- decoding in windows ----------------------------------------------------------------------
def _sphn_seeks_exactly(path: Path) -> bool:
    """WAV, FLAC and MP3 (layer III sync, not AAC's ADTS): sphn's seeks to whole seconds give
    the samples of a whole decode (tested); Ogg's do not."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    return (head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE") or head[:4] == b"fLaC" \
        or head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE6 == 0xE2)


class _SphnSource:
    """Native-rate `[channels, n]` float32 blocks from sphn, windows of whole seconds.

    The first window is decoded on opening, so that a file sphn cannot read fails here and goes
    to ffmpeg, as in `raydemucs.audio.decode`.
    """

    def __init__(self, path: Path):
        import sphn

        self.reader = sphn.FileReader(str(path))
        self.rate = int(self.reader.sample_rate)
        self.first = self.reader.decode(0.0, float(SPHN_WINDOW_S))
        if not self.first.size:
            raise ValueError("no samples")

    def blocks(self) -> Iterator[np.ndarray]:
        data, second = self.first, SPHN_WINDOW_S
        while True:
            if data.shape[-1]:
                yield data
            if data.shape[-1] < SPHN_WINDOW_S * self.rate:
                return
            begin = max(0, second - SPHN_PREROLL_S)
            data = self.reader.decode(float(begin), float(second + SPHN_WINDOW_S - begin))
            data = data[:, (second - begin) * self.rate:]
            second += SPHN_WINDOW_S


class _FfmpegSource:
    """Model-rate blocks from ffmpeg, as `demucs.audio.AudioFile.read` decodes (the fallback)."""

    def __init__(self, path: Path, samplerate: int):
        from demucs.audio import AudioFile

        probe = AudioFile(path)
        self.path = path
        self.channels = probe.channels(0)
        self.command = ["ffmpeg", "-y", "-loglevel", "panic", "-i", str(path), "-map",
                        f"0:{probe._audio_streams[0]}", "-threads", "1", "-f", "f32le", "-ar",
                        str(samplerate), "pipe:1"]
        self.rate = samplerate

    def blocks(self) -> Iterator[np.ndarray]:
        size = BLOCK_FRAMES * self.channels * 4
        with subprocess.Popen(self.command, stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL) as process:
            try:
                while data := process.stdout.read(size):
                    usable = len(data) // (4 * self.channels) * 4 * self.channels
                    yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, self.channels).T
            finally:
                process.kill()
        if process.returncode not in (0, -9):
            raise RuntimeError(f"ffmpeg failed to decode {path_text(self.path)}")


def path_text(path) -> str:
    return str(path).encode("unicode_escape").decode()


class _Resampler:
    """julius's `ResampleFrac`, block by block: equal to resampling the whole track at once."""

    def __init__(self, old: int, new: int):
        import julius

        self.module = julius.ResampleFrac(old, new)
        self.old, self.new = self.module.old_sr, self.module.new_sr
        self.width = self.module._width

    def run(self, blocks: Iterator[th.Tensor]) -> Iterator[th.Tensor]:
        old, width = self.old, self.width
        buffer, buffer_start, frame, total = None, 0, 0, 0
        for block in blocks:
            total += block.shape[-1]
            buffer = block if buffer is None else th.cat([buffer, block], -1)
            # frame k reads input [k*old - width, (k + 1)*old + width)
            frames = max(0, (total - width) // old - frame)
            if frames:
                yield self._frames(buffer, buffer_start, frame, frames, None)
                frame += frames
                keep = max(0, frame * old - width - buffer_start)
                buffer, buffer_start = buffer[..., keep:], buffer_start + keep
        if buffer is None:
            return
        wanted = int(th.floor(th.as_tensor(self.new * total / old)).long())
        frames = max(0, -(-wanted // self.new) - frame)
        if frames:
            out = self._frames(buffer, buffer_start, frame, frames, total)
            yield out[..., :wanted - frame * self.new]

    def _frames(self, buffer, buffer_start, frame, frames, total):
        old, width = self.old, self.width
        index = th.arange(frame * old - width, (frame + frames) * old + width)
        index = index.clamp(0, (total or (1 << 62)) - 1) - buffer_start
        x = buffer[..., index]
        ys = F.conv1d(x.reshape(-1, 1, x.shape[-1]), self.module.kernel, stride=old)
        return ys.transpose(1, 2).reshape(*x.shape[:-1], -1)


def iter_audio(path, samplerate: int, channels: int) -> Iterator[th.Tensor]:
    """The file as model-rate `[channels, n]` float32 blocks, the samples `raydemucs.audio.decode`
    returns: sphn (+ julius) for WAV, FLAC and MP3; ffmpeg where the plain path uses it too (files
    sphn cannot read, rates julius cannot convert cheaply) and for other formats (see the docs)."""
    from demucs.audio import convert_audio_channels

    path = Path(path)
    source = sphn_or_none(lambda: _SphnSource(path)) if _sphn_seeks_exactly(path) else None
    if source is not None and not resamples_cheaply(source.rate, samplerate):
        source = None
    if source is None:
        source = _FfmpegSource(path, samplerate)
    blocks = (convert_audio_channels(th.from_numpy(np.ascontiguousarray(b)), channels)
              for b in source.blocks())
    if source.rate != samplerate:
        blocks = _Resampler(source.rate, samplerate).run(blocks)
    for block in blocks:
        yield block.float()


def stream_stats(path, samplerate: int, channels: int) -> tuple[th.Tensor, th.Tensor, int]:
    """`(mean, std, length)` of a file, one window at a time (the cheap first pass)."""
    moments = _Moments()
    for block in iter_audio(path, samplerate, channels):
        if not th.isfinite(block).all():
            raise ValueError(f"{path_text(path)} holds NaN or infinite samples")
        moments.add(block.mean(0))
    if moments.count == 0:
        raise ValueError(f"{path_text(path)} holds no samples")
    mean, std = _stats_from_moments(moments.count, moments.mean, moments.m2)
    return mean, std, moments.count


def read_window(path, start: int, stop: int, samplerate: int, channels: int) -> th.Tensor:
    """Samples [start, stop) of the file at the model's rate, decoding only up to `stop`."""
    parts, position = [], 0
    for block in iter_audio(path, samplerate, channels):
        lo, hi = max(start - position, 0), min(stop - position, block.shape[-1])
        if hi > lo:
            parts.append(block[..., lo:hi].clone())
        position += block.shape[-1]
        if position >= stop:
            break
    return th.cat(parts, -1) if parts else th.zeros(channels, 0)


def separate_piece_file(model, plan: SeparationPlan, piece: Piece, path, mean, std,
                        **kwargs) -> PieceResult:
    """`separate_piece` on the piece's window, decoded from `path` by the worker that runs it."""
    window = read_window(path, piece.input_start, piece.input_stop, plan.samplerate, plan.channels)
    return separate_piece(model, plan, piece, window, piece.input_start, mean, std, **kwargs)


# -- streaming: bounded memory ----------------------------------------------------------------
class _InputBuffer:
    """The normalised mix, read forward on demand; samples no segment needs any more are dropped."""

    def __init__(self, blocks: Iterator[th.Tensor], mean, std, channels: int, total: int):
        self.blocks, self.mean, self.std, self.total = blocks, mean, std, total
        self.data = th.zeros(channels, 0)
        self.start = 0

    def take(self, start: int, length: int) -> th.Tensor:
        need = min(start + length, self.total)
        while self.start + self.data.shape[-1] < need:
            block = next(self.blocks, None)
            if block is None:
                raise ValueError(f"the file gave {self.start + self.data.shape[-1]} samples the "
                                 f"second time, {self.total} the first")
            self.data = th.cat([self.data, (block - self.mean) / self.std], -1)
        return take(self.data[None], self.start, self.total, start, length)

    def drop_before(self, position: int) -> None:
        cut = min(max(0, position - self.start), self.data.shape[-1])
        if cut:
            self.data = self.data[..., cut:].clone()
            self.start += cut


def stream_separate(model, plan: SeparationPlan, blocks: Iterator[th.Tensor], mean, std,
                    emit: Callable[[th.Tensor], None], *, device=None, callback=None,
                    callback_arg=None, block_frames: int = BLOCK_FRAMES) -> None:
    """Run every segment in order of start, and `emit` the stems `[sources, channels, n]` of each
    run of samples as soon as no later segment can touch it; memory stays a few segments long."""
    segments = plan.segments
    runner = Runner(model, device)
    inputs = _InputBuffer(iter(blocks), mean, std, plan.channels, plan.length)
    prefix = (1, len(plan.sources), plan.channels)
    sums = [OverlapAdd(prefix) for _ in plan.passes]
    waiting = [deque(s.start for s in segments if s.pass_index == p.index) for p in plan.passes]
    needed_from = [0] * (len(segments) + 1)
    needed_from[-1] = plan.length
    for i in range(len(segments) - 1, -1, -1):
        needed_from[i] = min(needed_from[i + 1], max(0, segments[i].input_start))
    released = 0
    for i, segment in enumerate(segments):
        x = inputs.take(segment.input_start, segment.input_length)
        weighted, weight = _run_one(runner, plan, segment, x, callback, callback_arg)
        sums[segment.pass_index].add(segment.start, weighted, weight)
        inputs.drop_before(needed_from[i + 1])
        waiting[segment.pass_index].popleft()
        ready = min(plan.length, *(max(0, q[0]) if q else plan.length for q in waiting))
        if ready - released >= block_frames or ready == plan.length:
            if ready > released:
                emit(finish(plan, [acc.release(ready) for acc in sums], mean, std)[0])
                released = ready


@dataclass
class StreamedStem:
    """A stem held on disk as raw interleaved little-endian float32, with its absolute peak."""

    path: Path
    samplerate: int
    channels: int
    frames: int = 0
    peak: float = 0.0

    def blocks(self, frames: int = BLOCK_FRAMES) -> Iterator[th.Tensor]:
        """`[channels, n]` float32 blocks, read back from disk."""
        size = frames * self.channels * 4
        with open(self.path, "rb") as handle:
            while data := handle.read(size):
                yield th.from_numpy(np.frombuffer(data, dtype="<f4")
                                    .reshape(-1, self.channels).T.copy())

    def load(self) -> th.Tensor:
        """The whole stem in memory (tests, short tracks)."""
        return th.cat(list(self.blocks()), -1)


@dataclass
class StreamedStems:
    """`separate_file`'s result: `{name: StreamedStem}` in a temp folder that `cleanup` removes."""

    stems: dict
    folder: Path
    length: int
    mean: float
    std: float

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "StreamedStems":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


class _TempStemSink:
    """Appends each stem's blocks to its float32 temp file; `two_stems` as demucs.separate."""

    def __init__(self, folder: Path, sources, samplerate, channels, two_stems=None):
        if two_stems is not None and two_stems not in sources:
            raise ValueError(f"two-stems {two_stems!r} is not one of {', '.join(sources)}")
        self.sources, self.two_stems = list(sources), two_stems
        names = self.sources if two_stems is None else [two_stems, f"no_{two_stems}"]
        self.stems = {name: StreamedStem(folder / f"{name}.f32", samplerate, channels)
                      for name in names}
        self.handles = {name: open(stem.path, "wb") for name, stem in self.stems.items()}

    def __call__(self, block: th.Tensor) -> None:
        for name, wav in pick_stems(dict(zip(self.sources, block)), self.two_stems).items():
            stem = self.stems[name]
            stem.frames += wav.shape[-1]
            stem.peak = max(stem.peak, float(wav.abs().max()))
            self.handles[name].write(wav.t().contiguous().numpy().astype("<f4").tobytes())

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def separate_file(model, path, workdir=None, *, segment: float | None = None,
                  overlap: float = 0.25, shifts: int = 0, transition_power: float = 1.0,
                  device=None, two_stems: str | None = None, callback=None, callback_arg=None,
                  shift_offsets=None, rng=random,
                  block_frames: int = BLOCK_FRAMES) -> StreamedStems:
    """Separate a file in bounded memory: one pass for the mean and std, one to separate into
    float32 temp files under `workdir` (which need 4 bytes x channels x samples per stem)."""
    channels, samplerate = sub_models(model)[0].audio_channels, sub_models(model)[0].samplerate
    mean, std, length = stream_stats(path, samplerate, channels)
    plan = plan_separation(model, length, segment=segment, overlap=overlap, shifts=shifts,
                           transition_power=transition_power, shift_offsets=shift_offsets, rng=rng)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".raydemucs-stream-", dir=workdir))
    try:
        sink = _TempStemSink(folder, plan.sources, samplerate, channels, two_stems)
        try:
            stream_separate(model, plan, iter_audio(path, samplerate, channels), mean, std, sink,
                            device=device, callback=callback, callback_arg=callback_arg,
                            block_frames=block_frames)
        finally:
            sink.close()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return StreamedStems(sink.stems, folder, length, float(mean), float(std))


# -- writing streamed stems in the final format ------------------------------------------------
def _clip(block: th.Tensor, mode: str | None, peak: float) -> th.Tensor:
    """`demucs.audio.prevent_clip` on a block; `rescale` with the whole stem's peak."""
    if mode == "rescale":
        return block / max(1.01 * th.tensor(peak, dtype=th.float32), 1)
    return prevent_clip(block, mode)


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
                    data = np.frombuffer(_pcm_bytes(block, 24), dtype=np.uint8)
                    handle.write(data.reshape(-1, 4)[:, 1:].tobytes())
                else:
                    handle.write(_pcm_bytes(block, bits_per_sample))
    elif suffix == ".mp3":
        _save_mp3(blocks, path, stem.channels, samplerate, bitrate, preset)
    elif suffix == ".flac":
        _save_ffmpeg(blocks, path, stem.channels, samplerate, bits_per_sample)
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
            pcm = (block.clamp(-1, 1) * (2**15 - 1)).short()
            handle.write(encoder.encode(pcm.t().numpy().tobytes()))
        handle.write(encoder.flush())


def _save_ffmpeg(blocks, path: Path, channels: int, samplerate: int, bits_per_sample: int):
    command = ["ffmpeg", "-y", "-loglevel", "error", "-f",
               "s16le" if bits_per_sample == 16 else "s32le", "-ar", str(samplerate), "-ac",
               str(channels), "-i", "-", str(path)]
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE)
    except FileNotFoundError:
        raise RuntimeError(f"Saving as {path.suffix} requires ffmpeg to be installed.") from None
    try:
        for block in blocks:
            process.stdin.write(_pcm_bytes(block, bits_per_sample))
        process.stdin.close()
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.wait() != 0:
        raise subprocess.CalledProcessError(process.returncode, command)


def save_any(wav, path, samplerate: int, **kwargs) -> None:
    """`save_audio` for a tensor, `save_streamed` for a `StreamedStem`: one `save` for
    `raydemucs.outputs.write_outputs` whichever path separated the track."""
    if isinstance(wav, StreamedStem):
        save_streamed(wav, path, samplerate, **kwargs)
    else:
        from demucs.audio import save_audio

        save_audio(wav, path, samplerate, **kwargs)
