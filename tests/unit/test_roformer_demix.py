"""The reference chunked inference (tests/roformer_reference.py's `demix`) joins its chunks
back into the track: a network that returns its input gives the mix back, whatever the batch,
but for the training repo's one quirk: a track too short to be padded (at most twice the border)
whose first batch holds several chunks loses its first sample (its fade-in weight is 0)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raydemucs.models.roformer.config import parse_config

from roformer_reference import linear_fade_window, reference_demix

CONFIG = {"model": {"dim": 8, "depth": 1, "num_bands": 4, "num_stems": 2},
          "training": {"instruments": ["a", "b"]}, "audio": {"chunk_size": 1000}}


class Echo(torch.nn.Module):
    """Stem `s` is the input times `s + 1`: `[batch, channels, time] -> [batch, 2, ...]`."""

    def forward(self, mix):
        return torch.stack([mix, 2 * mix], dim=1)


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("length", [700, 2600, 7321])
def test_joined_chunks_give_the_track_back(batch_size, length):
    config = parse_config({**CONFIG, "inference": {"num_overlap": 4, "batch_size": batch_size}},
                          "echo.yaml")
    mix = np.random.default_rng(length).uniform(-1, 1, (2, length)).astype(np.float32)
    stems = reference_demix(Echo(), config, mix)
    assert stems.shape == (2, 2, length)
    if length <= 2 * config.border and batch_size > 1:
        assert not stems[..., 0].any()
        stems, mix = stems[..., 1:], mix[..., 1:]
    np.testing.assert_allclose(stems[0], mix, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stems[1], 2 * mix, rtol=1e-5, atol=1e-6)


def test_the_fade_window_is_linear_at_both_ends():
    assert linear_fade_window(10, 3).tolist() == [0, 0.5, 1, 1, 1, 1, 1, 1, 0.5, 0]
