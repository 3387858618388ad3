"""Decoding samples, the way `demucs.api` reads audio: sphn (+ julius to resample), FFmpeg as the
fallback (through PyAV, where demucs runs the ffmpeg program), in windows of bounded memory
(`iter_audio`, `read_window`, `stream_stats`) or joined into a whole track (`decode`).

Every decode keeps to the input limits whatever the header said: the rate and channels it
decodes at are checked before the first window, and the samples it gives at the model's rate
are counted as they come, so that a file that decodes to more than `input.max_duration_s`
stops there (memory follows the model's rate and the limit, not the file's).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch as th
from torch.nn import functional as F

from ..audio.checks import (
    DECODED_MARGIN_S,
    MIN_SAMPLES,
    DecodedLength,
    check_format,
    resamples_cheaply,
    sphn_or_none,
)
from ..audio.ffmpeg import Decoder
from ..core.config import InputConfig
from ..core.errors import InvalidInput
from ..core.names import printable
from .engine import Moments

SPHN_WINDOW_S = 10             # sphn decodes whole seconds: seeks to integer seconds are exact
SPHN_PREROLL_S = 1             # decoded before each window and dropped (mp3 needs a warm-up)
DEFAULT_LIMITS = InputConfig()

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
    to PyAV.
    """

    def __init__(self, reader):
        self.reader = reader
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


class _Resampler:
    """julius's `ResampleFrac`, block by block: equal to resampling the whole track at once
    (its kernel spans `old + 2 * width` input samples per frame of `new` outputs)."""

    def __init__(self, old: int, new: int):
        import julius

        self.module = julius.ResampleFrac(old, new)
        self.old, self.new = self.module.old_sr, self.module.new_sr
        self.width = (self.module.kernel.shape[-1] - self.old) // 2

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


def _pyav_blocks(path: Path, samplerate: int, channels: int,
                 limits: InputConfig) -> Iterator[th.Tensor]:
    """Model-rate blocks decoded and resampled by FFmpeg (PyAV), channels as demucs converts."""
    from demucs.audio import convert_audio_channels

    decoder = Decoder(path, samplerate)
    check_format(path, decoder.stream.rate, decoder.stream.channels, limits)
    for block in decoder.blocks():
        yield convert_audio_channels(th.from_numpy(block), channels)


def iter_audio(path, samplerate: int, channels: int,
               limits: InputConfig = DEFAULT_LIMITS) -> Iterator[th.Tensor]:
    """The file as model-rate `[channels, n]` float32 blocks within `limits` (`InvalidInput`
    past them): sphn (+ julius) for WAV, FLAC and MP3; FFmpeg for files sphn cannot read, rates
    julius cannot convert cheaply, and other formats (see the docs)."""
    path = Path(path)
    length = DecodedLength(path, samplerate, limits)
    for block in _model_rate_blocks(path, samplerate, channels, limits):
        length.add(block.shape[-1])
        yield block


def _sphn_source(path: Path, samplerate: int, limits: InputConfig) -> _SphnSource | None:
    """sphn's windows of the file, its rate and channels checked first; None where FFmpeg
    decodes it (formats whose seeks are not exact, files sphn cannot read, rates julius cannot
    convert cheaply)."""
    import sphn

    reader = sphn_or_none(lambda: sphn.FileReader(str(path))) if _sphn_seeks_exactly(path) \
        else None
    if reader is None:
        return None
    check_format(path, int(reader.sample_rate), int(reader.channels), limits)
    if not resamples_cheaply(int(reader.sample_rate), samplerate):
        return None
    return sphn_or_none(lambda: _SphnSource(reader))


def _model_rate_blocks(path: Path, samplerate: int, channels: int,
                       limits: InputConfig) -> Iterator[th.Tensor]:
    """`iter_audio`'s blocks, uncounted."""
    from demucs.audio import convert_audio_channels

    source = _sphn_source(path, samplerate, limits)
    if source is None:
        yield from _pyav_blocks(path, samplerate, channels, limits)
        return
    blocks = (convert_audio_channels(th.from_numpy(np.ascontiguousarray(b)), channels)
              for b in source.blocks())
    if source.rate != samplerate:
        blocks = _Resampler(source.rate, samplerate).run(blocks)
    for block in blocks:
        yield block.float()


def stream_stats(path, samplerate: int, channels: int,
                 limits: InputConfig = DEFAULT_LIMITS) -> tuple[th.Tensor, th.Tensor, int]:
    """`(mean, std, length)` of a file, one window at a time (the cheap first pass)."""
    moments = Moments()
    for block in iter_audio(path, samplerate, channels, limits):
        if not th.isfinite(block).all():
            raise ValueError(f"{printable(path)} holds NaN or infinite samples")
        moments.add(block.mean(0))
    if moments.count == 0:
        raise ValueError(f"{printable(path)} holds no samples")
    mean, std = moments.stats()
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


class LongerThanHeader(Exception):
    """Raised when a whole decode goes past the length it may hold in memory (its header said
    less): the track is to be streamed instead."""


def decode(path: Path, samplerate: int, channels: int, limits: InputConfig = DEFAULT_LIMITS,
           most_s: float | None = None):
    """The whole file as a float32 `[channels, time]` tensor at the model's rate: `iter_audio`'s
    blocks, each checked finite, joined (at most twice the track in memory, while joining);
    `LongerThanHeader` past `most_s` seconds (plus `DECODED_MARGIN_S`)."""
    most = math.inf if most_s is None else (most_s + DECODED_MARGIN_S) * samplerate
    blocks, frames = [], 0
    for block in iter_audio(path, samplerate, channels, limits):
        if not th.isfinite(block).all():
            raise InvalidInput(f"input {printable(path)} holds NaN or infinite samples")
        frames += block.shape[-1]
        if frames > most:
            raise LongerThanHeader(f"input {printable(path)} decodes to more than {most_s:g} s")
        blocks.append(block)
    wav = th.cat(blocks, -1) if blocks else th.zeros(channels, 0)
    blocks.clear()
    if wav.shape[-1] == 0:
        raise InvalidInput(f"input {printable(path)} holds no audio samples")
    if wav.shape[-1] < MIN_SAMPLES:
        raise InvalidInput(f"input {printable(path)} holds {wav.shape[-1]} samples at "
                           f"{samplerate} Hz, too few to separate (at least {MIN_SAMPLES})")
    return wav
