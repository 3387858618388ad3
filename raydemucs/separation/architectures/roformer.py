"""BS-RoFormer and Mel-Band RoFormer as an engine architecture: the training repo's `demix`.

The reference chunked inference (Music-Source-Separation-Training's `demix`, generic mode) at a
checkpoint's own settings (`raydemucs.models.roformer.config.RoformerConfig`): chunks of
`chunk_size` samples every `step = chunk_size // num_overlap`, on the track reflect-padded by
`border = chunk_size - step` at both ends when it is longer than twice that; a short last chunk
reflect-padded (zero-padded when under half a chunk); each chunk's output weighted by a linear
fade window (a tenth of a chunk each way), summed, divided by the summed weights, a sample with
no weight silent. The window is the one of the batch of `batch_size` chunks a chunk falls in
there: no fade in for a batch that is the first chunk alone, no fade out for the batch that
reaches the end. `RoformerModel.plan` lays that out as one pass of segments in mix positions
(the plan's `reflect` is the border), so every strategy of the engine runs it; the stems equal
`demix`'s within 1 LSB at fp32. No normalisation, no shifts: the mix goes in as it is.
"""
from __future__ import annotations

import torch as th
from torch import nn

from ...core.errors import InvalidInput
from ..engine import MIRROR_TAIL, Pass, Segment, SeparationPlan

NO_FADE_IN, NO_FADE_OUT = 1, 2     # a segment's `kind`: which ends of its window stay at 1


def fade_window(chunk: int, fade: int, kind: int, device="cpu") -> th.Tensor:
    """The linear fade window of `demix`, with the ends `kind` says kept at 1."""
    window = th.ones(chunk)
    if fade > 0:
        if not kind & NO_FADE_IN:
            window[:fade] = th.linspace(0, 1, fade)
        if not kind & NO_FADE_OUT:
            window[-fade:] = th.linspace(1, 0, fade)
    return window.to(device)


class RoformerModel:
    """A loaded RoFormer network (`raydemucs.models.roformer`: `[n, channels, t]` to
    `[n, stems, channels, t]`) with its checkpoint's config, as the engine sees it."""

    def __init__(self, network: nn.Module, config):
        self.network = network
        self.config = config
        self.name = config.architecture
        self.sources = tuple(config.stems)
        self.samplerate = int(config.samplerate)
        self.channels = self.audio_channels = int(config.channels)
        self._windows: dict = {}

    def networks(self) -> list:
        return [self.network]

    def stats(self, mean, std):
        """`demix` takes the mix as it is."""
        return th.zeros_like(mean), th.ones_like(std)

    def chunk_size(self, segment: float | None) -> int:
        return self.config.chunk_size if segment is None else int(segment * self.samplerate)

    def plan(self, length: int, *, segment: float | None = None, overlap: float = 0.25,
             shifts: int = 0, transition_power: float = 1.0, shift_offsets=None,
             rng=None) -> SeparationPlan:
        """`demix`'s chunks for a mix of `length` samples (`segment`: another chunk length, in
        seconds; the overlap stays the checkpoint's), clipped to the mix."""
        chunk = self.chunk_size(segment)
        step = chunk // self.config.num_overlap
        if step <= 0:
            raise ValueError(f"chunks of {chunk} samples leave no step")
        border = chunk - step
        pad = border if length > 2 * border and border > 0 else 0
        total, batch = length + 2 * pad, self.config.batch_size
        starts = range(0, total, step)
        segments = []
        for k, begin in enumerate(starts):
            last = min((k // batch + 1) * batch, len(starts)) - 1   # the batch's last chunk
            kind = NO_FADE_IN if last == 0 else NO_FADE_OUT if (last + 1) * step >= total else 0
            size = min(chunk, total - begin)
            if chunk // 2 < size < chunk:
                kind |= MIRROR_TAIL
            first, stop = max(begin - pad, 0), min(begin - pad + size, length)
            if stop > first:     # else the chunk holds padding only, cut off at the end
                segments.append(Segment(0, begin, first, stop - first, begin - pad, chunk, kind))
        return SeparationPlan(length, self.samplerate, self.channels, self.sources, segment,
                              overlap, 1.0, 0, (Pass(0, 0, None, 0, length, chunk, step),),
                              None, tuple(segments), reflect=pad, silent_unweighted=True)

    def forward(self, index: int, device: str, precision: str, runtime: str):
        from ...models.runtimes import forward_for

        return forward_for(self.network, device, precision, "eager")

    def runtime(self, device: str, runtime: str) -> str:
        return "eager"

    def weighted(self, out: th.Tensor, plan: SeparationPlan, segment: Segment, device) -> tuple:
        """The chunk's output over its samples in the mix, times its fade window there."""
        key = (segment.input_length, segment.kind & (NO_FADE_IN | NO_FADE_OUT), str(device))
        if key not in self._windows:
            self._windows[key] = fade_window(segment.input_length, segment.input_length // 10,
                                             key[1], device)
        at = segment.start - segment.input_start
        weight = self._windows[key][at:at + segment.length]
        return out[..., at:at + segment.length] * weight, weight

    def default_segment_s(self) -> float:
        return self.config.chunk_size / self.samplerate

    def max_segment_s(self) -> float:
        """The chunk the checkpoint was trained and is run with."""
        return self.default_segment_s()

    def check_options(self, options) -> None:
        if options.shifts > 1:
            raise InvalidInput(f"shifts {options.shifts}: shifts are Demucs's; a RoFormer model "
                               "runs its checkpoint's chunked inference (use --shifts 1 or 0)")
