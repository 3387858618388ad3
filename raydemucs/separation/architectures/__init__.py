"""The architectures the engine runs, each behind one small interface (`Architecture`).

An architecture says what a loaded model makes (sources, sample rate, channels), how a track is
laid out into segments (`plan`: the passes, each segment's input span and the samples it
contributes, how inputs past the track's ends are filled), how the mix is normalised, how one
network runs a batch of segments, and how each segment's output is weighted before the
overlap-add. The engine (`raydemucs.separation.engine`) and every strategy built on it (in
memory, split, streamed, batched) only ever go through this interface (`engine.architecture_of`):

- `demucs.DemucsArchitecture`: demucs's own `apply_model` (single models and bags, shifts);
- `roformer.RoformerModel`: BS-RoFormer and Mel-Band RoFormer, the training repo's chunked
  inference (`demix`) at the checkpoint's own settings.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch as th


class Architecture(Protocol):
    """What the engine needs from a model, whatever its architecture."""

    name: str                      # "htdemucs", "bs_roformer", ... (the manifest says it)
    sources: tuple
    samplerate: int
    channels: int

    def networks(self) -> list:
        """The networks the passes run (a bag's models; else one), each an `nn.Module` from
        `[n, channels, length]` to `[n, sources, channels, length]`."""

    def plan(self, length: int, *, segment: float | None, overlap: float, shifts: int,
             transition_power: float, shift_offsets: Sequence[Sequence[int]] | None, rng):
        """Every segment of a mix of `length` samples (`engine.SeparationPlan`)."""

    def stats(self, mean: th.Tensor, std: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """The `(mean, std)` the mix is normalised with, from the whole track's figures."""

    def forward(self, index: int, device: str, precision: str, runtime: str) -> Callable:
        """How network `index` runs a batch on `device` at `precision` on `runtime`."""

    def weighted(self, out: th.Tensor, plan, segment, device) -> tuple[th.Tensor, th.Tensor]:
        """One segment's `(weight * output, weight)` over its output samples."""

    def runtime(self, device: str, runtime: str) -> str:
        """The runtime its first network runs on, on a worker of `runtime`."""

    def default_segment_s(self) -> float:
        """The segment (or chunk) length its plan uses when a task names none."""

    def max_segment_s(self) -> float:
        """The longest segment it accepts."""

    def check_options(self, options) -> None:
        """Raise `InvalidInput` for options it cannot run (beyond the segment's limit)."""
