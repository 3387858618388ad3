"""A model that leaks, for the recycle rule's tests: `demucs_unittest`'s network (an HDemucs of 4
channels) whose forward keeps every output it computed, as a cache without a bound would.

Its checkpoint names this class, so a worker that loads it imports this module: as
`tests.leaky_model`, from the repository's root, which Ray puts on its workers' path (the
driver's working directory) and the tests' PYTHONPATH holds.
"""
from __future__ import annotations

from demucs.hdemucs import HDemucs

KEPT: list = []


class LeakyHDemucs(HDemucs):
    def forward(self, mix):
        out = super().forward(mix)
        KEPT.append(out.detach().clone())
        return out
