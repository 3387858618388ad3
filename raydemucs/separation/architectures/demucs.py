"""Demucs (HTDemucs, HDemucs, Demucs and their bags) as an engine architecture: `apply_model`.

`apply_model(model, mix, shifts, split=True)` cuts a mix of T samples into segments at
`range(0, T, stride)`, runs the model on each one (padded with the real neighbouring samples,
zeros past the track's ends), multiplies by a triangular weight, adds into a track-long sum and a
track-long weight sum, and divides. Shifts repeat that on the mix delayed by a random amount and
average; a bag of models repeats it per model and averages with the bag's weights. A *pass* is
one such split run (one model, one shift); `DemucsArchitecture.plan` lays out every segment of
every pass exactly as `apply_model` does, so that the engine's stems equal
`Separator.separate_tensor`'s within 1 LSB in fp32.
"""
from __future__ import annotations

import random
import weakref
from typing import Sequence

import torch as th

from ..engine import Pass, Segment, SeparationPlan


def sub_models(model) -> list:
    """The models of a bag, or `[model]`."""
    from demucs.apply import BagOfModels

    return list(model.models) if isinstance(model, BagOfModels) else [model]


def _bag_weights(model) -> tuple | None:
    from demucs.apply import BagOfModels

    if not isinstance(model, BagOfModels):
        return None
    return tuple(tuple(float(w) for w in weights) for weights in model.weights)


def _input_length(sub, segment: float | None, length: int) -> int:
    """What `apply_model(split=False)` pads a chunk of `length` samples to."""
    from demucs.htdemucs import HTDemucs

    if isinstance(sub, HTDemucs) and segment is not None:
        return int(segment * sub.samplerate)
    if hasattr(sub, "valid_length"):
        return int(sub.valid_length(length))
    return length


def draw_shift_offsets(model, shifts: int, rng=random) -> list[list[int]]:
    """Random shifts as `apply_model` draws them (`randint(0, samplerate // 2)`), per model.

    After `random.seed(s)`, these equal the ones `apply_model` draws after the same seed.
    """
    return [[rng.randint(0, int(0.5 * sub.samplerate)) for _ in range(shifts)]
            for sub in sub_models(model)]


def transition_weight(segment_length: int, power: float, device="cpu") -> th.Tensor:
    """`apply_model`'s triangular weight, maximal in the middle of a segment."""
    weight = th.cat([th.arange(1, segment_length // 2 + 1, device=device),
                     th.arange(segment_length - segment_length // 2, 0, -1, device=device)])
    return (weight / weight.max()) ** power


class DemucsArchitecture:
    """A demucs model (or bag) as the engine sees it; one per model (`of`)."""

    _known: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, model):
        self.model = model
        self.subs = sub_models(model)
        first = self.subs[0]
        self.name = type(first).__name__.lower()
        self.sources = tuple(first.sources)
        self.samplerate = int(first.samplerate)
        self.channels = int(first.audio_channels)
        self._weights: dict = {}

    @classmethod
    def of(cls, model) -> "DemucsArchitecture":
        known = cls._known.get(model)
        if known is None:
            known = cls._known[model] = cls(model)
        return known

    def networks(self) -> list:
        return self.subs

    def stats(self, mean, std):
        return mean, std

    def plan(self, length: int, *, segment: float | None = None, overlap: float = 0.25,
             shifts: int = 0, transition_power: float = 1.0,
             shift_offsets: Sequence[Sequence[int]] | None = None, rng=random) -> SeparationPlan:
        """Lay out the segments as `apply_model` does for a mix of `length` samples.

        With `shifts`, the random offsets are drawn here once (from `rng`, in `apply_model`'s
        order) unless given, so that every piece of one track uses the same ones.
        """
        if shifts and shift_offsets is None:
            shift_offsets = draw_shift_offsets(self.model, shifts, rng)
        passes = []
        for index, sub in enumerate(self.subs):
            segment_length = int(sub.samplerate * (segment if segment is not None else sub.segment))
            stride = int((1 - overlap) * segment_length)
            if segment_length <= 0 or stride <= 0:
                raise ValueError(f"segment {segment} s with overlap {overlap} leaves no stride")
            if not shifts:
                passes.append(Pass(len(passes), index, None, 0, length, segment_length, stride))
                continue
            max_shift = int(0.5 * sub.samplerate)
            for shift_index, offset in enumerate(shift_offsets[index]):
                delay = max_shift - offset
                passes.append(Pass(len(passes), index, shift_index, delay, length + delay,
                                   segment_length, stride))
        segments = []
        for p in passes:
            for offset in range(0, p.length, p.stride):
                out_length = min(p.length - offset, p.segment_length)
                in_length = _input_length(self.subs[p.model_index], segment, out_length)
                start = offset - p.delay
                segments.append(Segment(p.index, offset, start, out_length,
                                        start - (in_length - out_length) // 2, in_length))
        segments.sort(key=lambda s: (s.start, s.pass_index))
        return SeparationPlan(length, self.samplerate, self.channels, self.sources, segment,
                              overlap, transition_power, shifts, tuple(passes),
                              _bag_weights(self.model), tuple(segments))

    def forward(self, index: int, device: str, precision: str, runtime: str):
        from ...models.runtimes import forward_for

        return forward_for(self.subs[index], device, precision, runtime)

    def runtime(self, device: str, runtime: str) -> str:
        from ...models.runtimes import runtime_of

        return runtime_of(self.subs[0], device, runtime)

    def weighted(self, out: th.Tensor, plan: SeparationPlan, segment: Segment, device) -> tuple:
        """`apply_model`'s: the output's middle, times the triangular weight of its pass."""
        from demucs.utils import center_trim

        chunk = center_trim(out, segment.length)
        p = plan.passes[segment.pass_index]
        key = (p.segment_length, plan.transition_power, str(device))
        if key not in self._weights:
            self._weights[key] = transition_weight(p.segment_length, plan.transition_power,
                                                   device)
        weight = self._weights[key][:segment.length]
        return weight * chunk, weight

    def default_segment_s(self) -> float:
        return float(self.subs[0].segment)

    def max_segment_s(self) -> float:
        """Transformer models are bounded by their training segment."""
        from demucs.apply import BagOfModels
        from demucs.htdemucs import HTDemucs

        if isinstance(self.model, BagOfModels):
            return self.model.max_allowed_segment
        if isinstance(self.model, HTDemucs):
            return float(self.model.segment)
        return float("inf")

    def check_options(self, options) -> None:
        """Demucs runs every option the config accepts."""
