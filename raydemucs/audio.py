"""Input checks and decoding, the way demucs reads audio (sphn first, ffmpeg as fallback)."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from .config import InputConfig
from .errors import InvalidInput


def check_input_file(path: str | os.PathLike, max_file_mb: float) -> Path:
    """The input exists, is a readable regular file, is not empty and not over the size limit."""
    path = Path(path).expanduser()
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InvalidInput(f"input {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"input {path} cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"input {path} is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"input {path} is not a regular file (FIFO, device or socket)")
    if not os.access(path, os.R_OK):
        raise InvalidInput(f"input {path} is not readable (permission denied)")
    if info.st_size == 0:
        raise InvalidInput(f"input {path} is empty")
    limit = max_file_mb * 1024 * 1024
    if info.st_size > limit:
        raise InvalidInput(f"input {path} is {info.st_size / 2**20:.1f} MB, over the "
                           f"{max_file_mb:g} MB limit (input.max_file_mb)")
    return path


def probe_duration_s(path: Path) -> float:
    """Duration in seconds from the file's header (sphn, then ffprobe); `InvalidInput` if not audio."""
    import sphn

    try:
        duration = sphn.durations([str(path)])[0]
    except Exception:
        duration = None
    if duration is None:
        try:
            output = subprocess.run(
                ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                 "format=duration", "-of", "default=nw=1:nk=1", str(path)],
                capture_output=True, text=True, timeout=60, check=True).stdout.strip()
            duration = float(output)
        except FileNotFoundError:
            raise InvalidInput(f"input {path} is not audio that sphn can read, and ffmpeg is "
                               "not installed to try it") from None
        except (subprocess.SubprocessError, ValueError):
            raise InvalidInput(f"input {path} is not a decodable audio file") from None
    return float(duration)


def validate_input(path: str | os.PathLike, limits: InputConfig) -> float:
    """All checks that need no decoding; returns the duration in seconds."""
    path = check_input_file(path, limits.max_file_mb)
    duration = probe_duration_s(path)
    if duration != duration or duration < limits.min_duration_s:
        raise InvalidInput(f"input {path} lasts {duration:.3f} s, shorter than the "
                           f"{limits.min_duration_s:g} s minimum")
    if duration > limits.max_duration_s:
        raise InvalidInput(f"input {path} lasts {duration:.0f} s, over the "
                           f"{limits.max_duration_s:g} s limit (input.max_duration_s)")
    return duration


def decode(path: Path, samplerate: int, channels: int):
    """Decode to a float32 `[channels, time]` tensor at the model's rate, as `demucs.api` does."""
    import sphn
    import torch
    from demucs.audio import AudioFile, convert_audio

    try:
        data, rate = sphn.read(str(path))
        wav = convert_audio(torch.from_numpy(data), int(rate), samplerate, channels)
    except Exception:
        try:
            wav = AudioFile(path).read(streams=0, samplerate=samplerate, channels=channels)
        except FileNotFoundError:
            raise InvalidInput(f"input {path}: sphn cannot read it and ffmpeg is not installed") from None
        except (subprocess.CalledProcessError, KeyError, IndexError, ValueError):
            raise InvalidInput(f"input {path} could not be decoded as audio") from None
    if wav.shape[-1] == 0:
        raise InvalidInput(f"input {path} holds no samples")
    if not torch.isfinite(wav).all():
        raise InvalidInput(f"input {path} holds NaN or infinite samples")
    return wav.float()
