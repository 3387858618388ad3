"""A stem's waveform summary against the whole array, across block edges and formats."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from raydemucs.http import peaks as peaks_module

from support import expected_peaks, write_audio


@pytest.mark.parametrize("frames, points", [(10_000, 7), (10_000, 10_000), (300, 1000), (4097, 64)])
def test_peaks_match_the_whole_array_across_block_edges(tmp_path, monkeypatch, frames, points):
    monkeypatch.setattr(peaks_module, "BLOCK_FRAMES", 1000)  # spans cross the blocks' edges
    rng = np.random.default_rng(frames)
    data = rng.uniform(-1, 1, (frames, 2)).astype(np.float32)
    sf.write(tmp_path / "stem.wav", data, 8000, subtype="FLOAT")
    summary = peaks_module.peaks(str(tmp_path / "stem.wav"), points)
    low, high = expected_peaks(data, points)
    assert summary["min"] == low and summary["max"] == high
    assert summary["points"] == min(points, frames) and summary["frames"] == frames
    assert summary["samplerate"] == 8000 and summary["duration_s"] == frames / 8000


@pytest.mark.parametrize("suffix", [".flac", ".mp3"])
def test_peaks_of_the_other_stem_formats(tmp_path, suffix):
    path = write_audio(tmp_path / f"stem{suffix}", seconds=1.0)
    data, _ = sf.read(str(path), dtype="float32")
    header = sf.info(str(path)).frames  # (an mp3's header promises more frames than it decodes to)
    summary = peaks_module.peaks(str(path), 50)
    assert summary["points"] == 50 and summary["frames"] == header
    low, high = expected_peaks(data, 50, header)
    assert summary["min"] == low and summary["max"] == high

