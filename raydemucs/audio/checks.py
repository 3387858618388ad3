"""Input checks made before a task is accepted (and again by its worker): the file, its header
(rate, channels, duration), the first samples, read as demucs reads audio (sphn first, then
FFmpeg through PyAV where demucs runs the ffmpeg program); and the caps a decode keeps to
whatever the header said (`check_format`, `DecodedLength`).

Nothing here imports torch: the client runs these checks."""
from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.config import InputConfig
from ..core.errors import InputTooLarge, InvalidInput
from ..core.names import printable

# Fewer samples than this cannot be separated (demucs fails on a single one); 10 ms at 44.1 kHz.
MIN_SAMPLES = 441
# A decoded start this much shorter than the minimum duration still counts as long enough.
DURATION_SLACK_S = 0.005
# A decode may give this much more than `input.max_duration_s` (padding, a header's rounding).
DECODED_MARGIN_S = 1.0
PROBE_RATE = 44100
SCAN_BLOCK = 1 << 20
FLOAT_WAV_DTYPES = {32: "<f4", 64: "<f8"}
WAVE_FORMAT_PCM = 1
WAVE_FORMAT_IEEE_FLOAT = 3
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# julius, demucs's resampler, needs time and memory that grow with the terms of the reduced rate
# ratio: 44056 -> 44100 Hz (11014:11025) takes GBs for seconds of audio. FFmpeg takes any ratio.
MAX_RESAMPLE_TERMS = 1000


def _is_decoder_failure(exc: BaseException) -> bool:
    """sphn reports bad files as exceptions, and as Rust panics that are not `Exception`s."""
    if isinstance(exc, MemoryError):
        return False
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def sphn_or_none(call: Callable[[], object]) -> object | None:
    """`call()`, or None when sphn cannot read the file."""
    try:
        return call()
    except BaseException as exc:
        if not _is_decoder_failure(exc):
            raise
        return None


def check_input_file(path: str | os.PathLike, max_file_mb: float) -> Path:
    """The input exists, is a readable regular file, is not empty and not over the size limit."""
    path = Path(path).expanduser()
    shown = printable(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InvalidInput(f"input {shown} does not exist") from None
    except ValueError:
        raise InvalidInput(f"input path {shown} holds a NUL character") from None
    except OSError as exc:
        raise InvalidInput(f"input {shown} cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"input {shown} is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"input {shown} is not a regular file (FIFO, device or socket)")
    if not os.access(path, os.R_OK):
        raise InvalidInput(f"input {shown} is not readable (permission denied)")
    if info.st_size == 0:
        raise InvalidInput(f"input {shown} is empty")
    limit = max_file_mb * 1024 * 1024
    if info.st_size > limit:
        raise InputTooLarge(f"input {shown} is {info.st_size / 2**20:.1f} MB, over the "
                           f"{max_file_mb:g} MB limit (input.max_file_mb)")
    return path


@dataclass(frozen=True)
class WavLayout:
    """What a RIFF/WAVE header declares, and where its samples lie."""

    format_tag: int
    channels: int
    samplerate: int
    bits: int
    block_align: int
    data_offset: int
    data_bytes: int

    def duration_s(self, file_bytes: int) -> float | None:
        """Seconds of PCM or float samples, as sphn gives them, when the file holds all that
        its data chunk declares; None when the header cannot tell (another codec, a cut file, a
        stream's or RF64's size field, no block size)."""
        if self.format_tag not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
            return None
        if self.block_align <= 0 or self.samplerate <= 0:
            return None
        if self.data_bytes > file_bytes - self.data_offset:
            return None
        return self.data_bytes // self.block_align / self.samplerate


def _riff_chunks(handle):
    """`(id, offset, size)` of each chunk after the 12-byte RIFF header."""
    while True:
        header = handle.read(8)
        if len(header) < 8:
            return
        kind, size = header[:4], int.from_bytes(header[4:], "little")
        offset = handle.tell()
        yield kind, offset, size
        handle.seek(offset + size + (size & 1))


def _wav_layout(path: Path) -> WavLayout | None:
    """The layout of a WAV file (RIFF or RF64), or None for any other file."""
    with open(path, "rb") as handle:
        head = handle.read(12)
        if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        fmt = None
        for kind, offset, size in _riff_chunks(handle):
            if kind == b"fmt " and size >= 16:
                fmt = handle.read(min(size, 40))
            elif kind == b"data" and fmt is not None:
                tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
                if tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
                    tag = int.from_bytes(fmt[24:26], "little")
                return WavLayout(tag, channels, rate, bits, align, offset, size)
    return None


def _check_finite_samples(path: Path, layout: WavLayout) -> None:
    """Scan a float WAV's samples in blocks; NaN or infinity is refused."""
    import numpy as np

    dtype = np.dtype(FLOAT_WAV_DTYPES[layout.bits])
    available = max(0, path.stat().st_size - layout.data_offset)
    count = min(layout.data_bytes, available) // dtype.itemsize
    if count == 0:
        return
    samples = np.memmap(path, dtype=dtype, mode="r", offset=layout.data_offset, shape=(count,))
    for start in range(0, count, SCAN_BLOCK):
        if not np.isfinite(samples[start:start + SCAN_BLOCK]).all():
            raise InvalidInput(f"input {printable(path)} holds NaN or infinite samples")


def check_wav_header(path: Path) -> WavLayout | None:
    """A WAV declares channels and a sample rate, and its float samples are finite; its layout
    (None for any other file)."""
    try:
        layout = _wav_layout(path)
    except OSError as exc:
        raise InvalidInput(f"input {printable(path)} cannot be read: {exc.strerror}") from None
    if layout is None:
        return None
    if layout.channels == 0 or layout.samplerate == 0:
        raise InvalidInput(f"input {printable(path)} is a WAV file declaring {layout.channels} "
                           f"channel(s) at {layout.samplerate} Hz")
    if layout.format_tag == WAVE_FORMAT_IEEE_FLOAT and layout.bits in FLOAT_WAV_DTYPES:
        _check_finite_samples(path, layout)
    return layout


@dataclass(frozen=True)
class Header:
    """What a file's header declares."""

    samplerate: int
    channels: int
    duration_s: float


def read_header(path: Path, layout: WavLayout | None) -> Header:
    """The header of a file (`layout`: its WAV layout, if it is one): a WAV's own when it tells
    the duration, else sphn's reading, else PyAV's; `InvalidInput` if not audio."""
    import sphn

    duration = layout.duration_s(path.stat().st_size) if layout is not None else None
    if duration is not None:
        return Header(layout.samplerate, layout.channels, duration)

    def read():
        reader = sphn.FileReader(str(path))
        return Header(int(reader.sample_rate), int(reader.channels), float(reader.duration_sec))

    header = sphn_or_none(read)
    if header is not None:
        return header
    from .ffmpeg import stream_format

    return Header(*stream_format(path))


def check_format(path: Path, samplerate: int, channels: int, limits: InputConfig) -> None:
    """A sample rate and channel count within `input.max_samplerate` and `input.max_channels`
    (checked before anything is decoded at them)."""
    if samplerate > limits.max_samplerate:
        raise InvalidInput(f"input {printable(path)} is sampled at {samplerate} Hz, over the "
                           f"{limits.max_samplerate} Hz limit (input.max_samplerate)")
    if channels > limits.max_channels:
        raise InvalidInput(f"input {printable(path)} holds {channels} channels, over the "
                           f"{limits.max_channels} channel limit (input.max_channels)")


class DecodedLength:
    """Counts the frames a decode gives at `samplerate` and stops it (`InvalidInput`) past
    `input.max_duration_s` plus `DECODED_MARGIN_S`, whatever the header said."""

    def __init__(self, path: Path, samplerate: int, limits: InputConfig):
        self.path, self.limit_s = path, limits.max_duration_s
        self.max_frames = math.ceil((limits.max_duration_s + DECODED_MARGIN_S) * samplerate)
        self.frames = 0

    def add(self, frames: int) -> None:
        self.frames += frames
        if self.frames > self.max_frames:
            raise InvalidInput(f"input {printable(self.path)} decodes to more than the "
                               f"{self.limit_s:g} s limit (input.max_duration_s)")


def _decode_start(path: Path, seconds: float):
    """The first `seconds` of audio as `(samples, rate)`: sphn, else PyAV (mono)."""
    import sphn

    def read():
        reader = sphn.FileReader(str(path))
        samples = reader.decode(0.0, seconds)
        return (samples, reader.sample_rate) if samples.size and reader.sample_rate else None

    found = sphn_or_none(read)
    if found:
        return found
    from .ffmpeg import Decoder

    return Decoder(path, PROBE_RATE, "mono").start(round(seconds * PROBE_RATE)), PROBE_RATE


def check_decodes(path: Path, min_duration_s: float) -> None:
    """Decode the start: it holds at least the minimum duration of finite samples."""
    import numpy as np

    window_s = max(min_duration_s, MIN_SAMPLES / PROBE_RATE)
    samples, rate = _decode_start(path, window_s)
    decoded_s = samples.shape[-1] / rate
    if samples.shape[-1] == 0:
        raise InvalidInput(f"input {printable(path)} holds no audio samples")
    if decoded_s + DURATION_SLACK_S < min_duration_s:
        raise InvalidInput(f"input {printable(path)} holds {decoded_s:.3f} s of audio, shorter "
                           f"than the {min_duration_s:g} s minimum")
    if not np.isfinite(samples).all():
        raise InvalidInput(f"input {printable(path)} holds NaN or infinite samples")


def validate_input(path: str | os.PathLike, limits: InputConfig) -> float:
    """Every check short of decoding the whole file; returns the duration in seconds."""
    path = check_input_file(path, limits.max_file_mb)
    header = read_header(path, check_wav_header(path))
    check_format(path, header.samplerate, header.channels, limits)
    duration = header.duration_s
    if not duration >= limits.min_duration_s:
        raise InvalidInput(f"input {printable(path)} lasts {duration:.3f} s, shorter than the "
                           f"{limits.min_duration_s:g} s minimum")
    if duration > limits.max_duration_s:
        raise InvalidInput(f"input {printable(path)} lasts {duration:.0f} s, over the "
                           f"{limits.max_duration_s:g} s limit (input.max_duration_s)")
    check_decodes(path, limits.min_duration_s)
    return duration


def resamples_cheaply(rate: int, samplerate: int) -> bool:
    """Whether julius converts `rate` to `samplerate` in bounded time and memory."""
    return max(rate, samplerate) // math.gcd(rate, samplerate) <= MAX_RESAMPLE_TERMS
