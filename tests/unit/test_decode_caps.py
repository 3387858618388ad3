"""Decompression bombs: the caps on a header's rate and channels, and the decoded length counted
as it decodes, whatever the header said (sphn's path, FFmpeg's, streamed and whole)."""
from __future__ import annotations

import math

import pytest
import sphn

from raydemucs.audio.checks import DECODED_MARGIN_S, DecodedLength, check_format, validate_input
from raydemucs.core.config import InputConfig
from raydemucs.core.errors import InvalidInput
from raydemucs.separation import decode as decoding
from raydemucs.separation.decode import LongerThanHeader, decode, iter_audio, stream_stats

from support import flac_bomb, understated_mp3, write_audio

RATE = 44100
LIMITS = InputConfig(max_duration_s=2.0)


def assert_one_line(error: BaseException, fragment: str) -> None:
    message = str(error)
    assert fragment in message and "\n" not in message, message


def test_a_rate_or_channels_past_the_caps_are_refused(tmp_path):
    path = tmp_path / "a.flac"
    limits = InputConfig(max_samplerate=48000, max_channels=2)
    check_format(path, 48000, 2, limits)
    with pytest.raises(InvalidInput) as refused:
        check_format(path, 48001, 2, limits)
    assert_one_line(refused.value, "a.flac is sampled at 48001 Hz, over the 48000 Hz limit "
                                   "(input.max_samplerate)")
    with pytest.raises(InvalidInput) as refused:
        check_format(path, 48000, 3, limits)
    assert_one_line(refused.value, "a.flac holds 3 channels, over the 2 channel limit "
                                   "(input.max_channels)")


def test_the_decoded_length_stops_past_the_limit_and_its_margin(tmp_path):
    length = DecodedLength(tmp_path / "a.mp3", 100, LIMITS)
    assert length.max_frames == math.ceil((2.0 + DECODED_MARGIN_S) * 100)
    length.add(length.max_frames - 1)
    length.add(1)
    with pytest.raises(InvalidInput) as refused:
        length.add(1)
    assert_one_line(refused.value, "a.mp3 decodes to more than the 2 s limit "
                                   "(input.max_duration_s)")


@pytest.mark.parametrize("name", ["sphn.wav", "sphn.flac", "ffmpeg.ogg"])
def test_header_caps_hold_at_submit_and_at_decode(tmp_path, name):
    """Ogg is decoded by FFmpeg (sphn's seeks in it are not exact)."""
    path = write_audio(tmp_path / name, seconds=1.0, channels=3)
    for limits, fragment in [(InputConfig(max_channels=2), "input.max_channels"),
                             (InputConfig(max_samplerate=32000), "input.max_samplerate")]:
        for check in (lambda: validate_input(path, limits), lambda: decode(path, RATE, 2, limits),
                      lambda: next(iter_audio(path, RATE, 2, limits))):
            with pytest.raises(InvalidInput) as refused:
                check()
            assert_one_line(refused.value, fragment)


def test_a_flac_declaring_8_channels_at_655_khz_is_refused_before_decoding(tmp_path):
    path = flac_bomb(tmp_path / "bomb.flac", 2)
    with pytest.raises(InvalidInput) as refused:
        validate_input(path, InputConfig())
    assert_one_line(refused.value, "655350 Hz, over the 192000 Hz limit (input.max_samplerate)")
    with pytest.raises(InvalidInput) as refused:
        decode(path, RATE, 2)
    assert_one_line(refused.value, "(input.max_samplerate)")
    wide = InputConfig(max_samplerate=1 << 20)  # allowed: decoded at the model's rate and channels
    assert decode(path, RATE, 2, wide).shape == (2, 2 * RATE)


@pytest.mark.parametrize("name", ["a.mp3", "b.m4a"])
def test_a_file_that_decodes_past_the_limit_stops_as_it_decodes(tmp_path, monkeypatch, name):
    """The mp3's Xing header says 0.5 s (sphn's reading, in 1 s windows here); the m4a is
    FFmpeg's path."""
    monkeypatch.setattr(decoding, "SPHN_WINDOW_S", 1)
    seconds = 8 * LIMITS.max_duration_s
    path = (understated_mp3(tmp_path / name, seconds) if name.endswith(".mp3")
            else write_audio(tmp_path / name, seconds))
    if name.endswith(".mp3"):
        assert sphn.durations([str(path)])[0] < 1 and validate_input(path, LIMITS) < 1
    most = math.ceil((LIMITS.max_duration_s + DECODED_MARGIN_S) * RATE)
    frames = 0
    with pytest.raises(InvalidInput) as refused:
        for block in iter_audio(path, RATE, 2, LIMITS):
            frames += block.shape[-1]
    assert_one_line(refused.value, "decodes to more than the 2 s limit (input.max_duration_s)")
    assert 0 < frames <= most < seconds * RATE
    for whole in (lambda: decode(path, RATE, 2, LIMITS), lambda: stream_stats(path, RATE, 2, LIMITS)):
        with pytest.raises(InvalidInput) as refused:
            whole()
        assert_one_line(refused.value, "(input.max_duration_s)")
    assert decode(path, RATE, 2).shape[-1] >= seconds * RATE  # the default limit lets it through


def test_a_whole_decode_past_what_memory_may_hold_says_so(tmp_path):
    """The worker streams such a file instead (its header said it was short enough)."""
    path = understated_mp3(tmp_path / "a.mp3", 4.0)
    with pytest.raises(LongerThanHeader):
        decode(path, RATE, 2, most_s=1.0)
    assert decode(path, RATE, 2, most_s=4.0).shape[-1] >= 4 * RATE
