"""The ensemble presets shipped as `ensembles.presets`' default (configs/default.yaml lists them)."""
from __future__ import annotations

import copy

FOUR_STEMS = ("vocals", "drums", "bass", "other")

SHIPPED_PRESETS = {
    # each stem: the average of two models' waveforms
    "blend": {"parts": {"a": {"model": "htdemucs"}, "b": {"model": "mdx_extra"}},
              "stems": {stem: {"average": ["a", "b"]} for stem in FOUR_STEMS}},
    # a chain: vocals first, then the rest (the mix minus the vocals) split again
    "vocals-then-rest": {
        "parts": {"voc": {"model": "htdemucs"},
                  "rest": {"model": "htdemucs_ft", "input": {"part": "voc", "without": "vocals"}}},
        "stems": {"vocals": {"take": "voc"},
                  **{stem: {"take": "rest"} for stem in FOUR_STEMS[1:]}}},
    # vocals from a Mel-Band RoFormer (downloaded on first use), the other stems from htdemucs
    "roformer-vocals": {
        "parts": {"mel": {"model": "mel_band_roformer_kj"}, "demucs": {"model": "htdemucs"}},
        "stems": {"vocals": {"take": "mel"},
                  **{stem: {"take": "demucs"} for stem in FOUR_STEMS[1:]}}},
}


def shipped_presets() -> dict:
    """A fresh copy of the shipped presets (a config's default)."""
    return copy.deepcopy(SHIPPED_PRESETS)
