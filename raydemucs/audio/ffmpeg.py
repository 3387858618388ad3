"""FFmpeg's demuxers, decoders and resampler through PyAV, whose wheels bundle FFmpeg: the decoder
for what sphn cannot read, as demucs's `AudioFile` decodes with the ffmpeg program (the first audio
stream, float samples, resampled by libswresample), with no ffmpeg on the PATH.

Nothing here imports torch: the client's input checks use it too.
"""
from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from ..core.errors import InvalidInput
from ..core.names import printable

BLOCK_FRAMES = 1 << 16         # samples per block when streaming to and from disk


def _open(path: Path, failure: str):
    """The container and its first audio stream; `InvalidInput` saying `failure` if not audio."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        raise InvalidInput(f"input {printable(path)} {failure}") from None
    if not container.streams.audio:
        container.close()
        raise InvalidInput(f"input {printable(path)} holds no audio stream")
    return container, container.streams.audio[0]


def stream_format(path: Path) -> tuple[int, int, float]:
    """The first audio stream's sample rate and channels, and the container's duration in
    seconds, as `ffprobe -show_entries stream=sample_rate,channels:format=duration` reads them."""
    container, stream = _open(path, "is not a decodable audio file")
    with container:
        if container.duration is None:
            raise InvalidInput(f"input {printable(path)} is not a decodable audio file")
        if stream.codec_context is None:  # a codec FFmpeg does not know
            raise InvalidInput(f"input {printable(path)} could not be decoded as audio")
        return stream.rate, stream.channels, container.duration / av.time_base


class Decoder:
    """The first audio stream of a file as float32 `[channels, n]` blocks, at `rate` (the
    stream's own if None) and in channel `layout` (the stream's own if None): the samples
    `ffmpeg -i FILE -map 0:a:0 -f f32le [-ar RATE] [-ac 1]` writes."""

    def __init__(self, path, rate: int | None = None, layout: str | None = None):
        self.path = Path(path)
        self.container, self.stream = _open(self.path, "could not be decoded as audio")
        if self.stream.codec_context is None:       # a codec FFmpeg does not know
            self.container.close()
            raise InvalidInput(f"input {printable(self.path)} could not be decoded as audio")
        self.rate = rate or self.stream.rate
        self.layout = layout
        self.channels = av.AudioLayout(layout).nb_channels if layout else self.stream.channels

    def blocks(self) -> Iterator[np.ndarray]:
        """Blocks of about `BLOCK_FRAMES` samples; the file is closed when they end."""
        resampler = av.AudioResampler(format="flt", layout=self.layout, rate=self.rate)
        pending, count = [], 0
        try:
            for frame in self._frames():
                for out in resampler.resample(frame):
                    pending.append(_samples(out))
                    count += out.samples
                if count >= BLOCK_FRAMES:
                    yield np.concatenate(pending, -1)
                    pending, count = [], 0
            pending += [_samples(out) for out in resampler.resample(None)]
        except (av.FFmpegError, ValueError):         # ValueError: a stream that changes layout
            raise InvalidInput(f"input {printable(self.path)} could not be decoded as audio") \
                from None
        finally:
            self.container.close()
        if pending:
            yield np.concatenate(pending, -1)

    def start(self, frames: int) -> np.ndarray:
        """The first `frames` samples (all, if the stream is shorter); the file is closed."""
        blocks, count = [], 0
        with closing(self.blocks()) as decoded:
            for block in decoded:
                blocks.append(block)
                count += block.shape[-1]
                if count >= frames:
                    break
        return np.concatenate(blocks, -1)[:, :frames] if blocks else \
            np.zeros((self.channels, 0), np.float32)

    def _frames(self):
        """Decoded frames; a damaged packet is skipped, as the ffmpeg program skips it."""
        for packet in self.container.demux(self.stream):
            try:
                yield from packet.decode()
            except av.InvalidDataError:
                continue


def _samples(frame) -> np.ndarray:
    """An interleaved float frame as `[channels, n]`. Planar frames are not read: PyAV reads one
    plane past the last of 8 or more channels (a crash)."""
    return frame.to_ndarray().reshape(-1, len(frame.layout.channels)).T


def av_versions() -> str:
    """PyAV's version and the FFmpeg it bundles."""
    return f"PyAV {av.__version__} with FFmpeg {av.ffmpeg_version_info}"
