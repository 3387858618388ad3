"""The separation engine every path uses: an architecture's segment plan, and a runner for any
subset of it.

An architecture (`raydemucs.separation.architectures`: Demucs's `apply_model`, the RoFormers'
chunked `demix`) lays a mix of T samples out into passes of segments (`plan_separation`); each
segment is one forward pass on a window of the mix (filled past the track's ends as the
architecture says: zeros, or a mirror of the track), whose output is weighted and added into
track-long sums and weight sums, then divided. This module runs any of the segments (`Runner`,
`run_segment`), adds their weighted outputs (`OverlapAdd`) and turns the sums into stems
(`finish`). The strategies build on it: `separate_track` (one track in memory),
`raydemucs.separation.split` (one track on several workers), `raydemucs.separation.streaming`
(bounded memory) and `raydemucs.separation.batching` (segments of several tracks per forward pass).

The mix is normalised with the whole track's mean and std (`track_stats`, or `Moments` block by
block), as `Separator.separate_tensor` does (`mix_stats`: where the architecture normalises);
every part of one track must use the same figures.
"""
from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass
from typing import Sequence

import torch as th
from torch.nn import functional as F

STD_EPS = 1e-8                 # what Separator.separate_tensor adds to the std
MIRROR_TAIL = 4                # a segment's kind: its input past the track is its own mirror


# -- threads ----------------------------------------------------------------------------------
# The intra-op threads of this process's forward passes: a CPU worker's own cores, plus the cores
# of idle workers beside it that the scheduler lends it (`raydemucs.scheduler.lending`). OpenMP
# keeps the thread count per calling thread, so each thread that runs a pass sets it before the
# pass whenever the lend changed: a lend, or its end, takes effect at the next segment.

class ComputeThreads:
    """`own` threads (none set: torch's default, untouched) and `lent` ones on top."""

    def __init__(self):
        self.own: int | None = None
        self.lent = 0
        self.in_use: int | None = None  # the threads of the last pass, as torch reported them
        self._local = threading.local()

    def configure(self, own: int) -> None:
        self.own = own
        th.set_num_threads(own)

    def lend(self, extra: int) -> None:
        self.lent = max(0, extra)

    @property
    def wanted(self) -> int | None:
        return None if self.own is None else self.own + self.lent

    def use(self) -> None:
        """Run the calling thread's next passes on `own + lent` threads."""
        wanted = self.wanted
        if wanted is not None and getattr(self._local, "threads", None) != wanted:
            th.set_num_threads(wanted)
            self._local.threads = wanted
        self.in_use = th.get_num_threads()


COMPUTE = ComputeThreads()


# -- the plan ---------------------------------------------------------------------------------
def architecture_of(model):
    """A loaded model's `architectures.Architecture`: a RoFormer is its own, anything else is
    Demucs's."""
    from .architectures.demucs import DemucsArchitecture

    if hasattr(model, "networks") and hasattr(model, "plan"):
        return model
    return DemucsArchitecture.of(model)


@dataclass(frozen=True)
class Pass:
    """One run over the whole track: for demucs, one model of the bag and one shift (or none)."""

    index: int
    model_index: int
    shift_index: int | None
    delay: int            # the pass's position p holds mix position p - delay
    length: int           # the pass's length: T + delay
    segment_length: int
    stride: int


@dataclass(frozen=True)
class Segment:
    """One forward pass of the model; positions are in mix samples (negative: before the mix)."""

    pass_index: int
    offset: int           # in the pass's positions: demucs's callback `segment_offset`
    start: int            # first output sample
    length: int           # output samples (the segment length, shorter at the end)
    input_start: int      # first input sample fed to the model (filled outside the mix)
    input_length: int
    kind: int = 0         # MIRROR_TAIL, and which of its architecture's weights it takes

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def input_end(self) -> int:
        return self.input_start + self.input_length


@dataclass(frozen=True)
class SeparationPlan:
    """Every segment an architecture runs on a mix of `length` (for demucs, every segment
    `apply_model(model, mix, shifts, split=True)` runs)."""

    length: int
    samplerate: int
    channels: int
    sources: tuple
    segment: float | None
    overlap: float
    transition_power: float
    shifts: int
    passes: tuple
    weights: tuple | None       # the bag's weights, None for a single model
    segments: tuple             # sorted by start: the order streaming runs them in
    reflect: int = 0            # inputs mirror this many samples past each end; zeros beyond
    silent_unweighted: bool = False   # a sample no segment weighs is 0 (else: a piece is missing)

    @property
    def num_models(self) -> int:
        return 1 + max(p.model_index for p in self.passes)

    def reads(self, segment: Segment) -> tuple[int, int]:
        """The mix samples `[lo, hi)` that a segment's input is made of."""
        stop = min(segment.input_end, self.length + self.reflect)
        return source_span(segment.input_start, stop, self.length, self.reflect)


def plan_separation(model, length: int, *, segment: float | None = None, overlap: float = 0.25,
                    shifts: int = 0, transition_power: float = 1.0,
                    shift_offsets: Sequence[Sequence[int]] | None = None,
                    rng=random) -> SeparationPlan:
    """Lay out the segments of a mix of `length` samples as `model`'s architecture runs them.

    With demucs's `shifts`, the random offsets are drawn here once (from `rng`, in
    `apply_model`'s order) unless given, so that every piece of one track uses the same ones.
    """
    if length <= 0:
        raise ValueError("the mix is empty")
    return architecture_of(model).plan(length, segment=segment, overlap=overlap, shifts=shifts,
                                       transition_power=transition_power,
                                       shift_offsets=shift_offsets, rng=rng)


def track_stats(wav: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """`(mean, std)` of a `[channels, time]` mix, as `Separator.separate_tensor` takes them."""
    ref = wav.mean(0)
    return ref.mean(), ref.std() + STD_EPS


def mix_stats(model, mean: th.Tensor, std: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """The `(mean, std)` `model`'s architecture normalises the mix with, from the track's."""
    return architecture_of(model).stats(mean, std)


class Moments:
    """Count, mean and sum of squared deviations, merged block by block (Chan et al.)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, ref: th.Tensor) -> None:
        block = ref.double()
        n = block.numel()
        if n == 0:
            return
        mean = block.mean().item()
        m2 = ((block - mean) ** 2).sum().item()
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def stats(self) -> tuple[th.Tensor, th.Tensor]:
        """`(mean, std)` of everything added, as `track_stats` gives them for the whole."""
        std = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else float("nan")
        return th.tensor(self.mean, dtype=th.float32), th.tensor(std, dtype=th.float32) + STD_EPS


# -- running segments -------------------------------------------------------------------------
def source_span(start: int, stop: int, total: int, reflect: int = 0) -> tuple[int, int]:
    """The samples of a mix of `total` that inputs `[start, stop)` read: those inside it, and
    those mirrored into the `reflect` samples past each end (as `F.pad(mode="reflect")`)."""
    lo, hi = max(start, 0), min(stop, total)
    if start < 0 and reflect:
        lo, hi = 0, max(hi, min(-start, reflect) + 1)
    if stop > total and reflect:
        lo = min(lo, total - 1 - min(stop - total, reflect))
        hi = total
    return lo, max(lo, hi)


def take(window: th.Tensor, window_start: int, total: int, start: int, length: int,
         reflect: int = 0) -> th.Tensor:
    """Mix samples [start, start + length) from a window of them: mirrored for `reflect`
    samples past each end of [0, total), zeros beyond."""
    lo, hi = source_span(start, start + length, total, reflect)
    if lo - window_start < 0 or hi - window_start > window.shape[-1]:
        raise ValueError(f"samples [{lo}, {hi}) are outside the window [{window_start}, "
                         f"{window_start + window.shape[-1]})")
    inside = start >= 0 and start + length <= total
    if not reflect or inside:
        a, b = max(start, 0), min(start + length, total)
        if b <= a:
            return window.new_zeros(*window.shape[:-1], length)
        return F.pad(window[..., a - window_start:b - window_start],
                     (a - start, start + length - b))
    positions = th.arange(start, start + length)
    mirrored = th.where(positions < 0, -positions,
                        th.where(positions >= total, 2 * (total - 1) - positions, positions))
    filled = (positions >= -reflect) & (positions < total + reflect)
    index = (mirrored.clamp(lo, max(lo, hi - 1)) - window_start)
    return window[..., index] * filled.to(window.dtype)


def segment_input(window: th.Tensor, window_start: int, plan: SeparationPlan,
                  segment: Segment) -> th.Tensor:
    """A segment's input `[1, channels, input_length]` from a window `[1, channels, n]` of the
    mix (`take`), past the (padded) track zeros or, where its kind says, its own tail mirrored."""
    if not segment.kind & MIRROR_TAIL:
        return take(window, window_start, plan.length, segment.input_start,
                    segment.input_length, plan.reflect)
    size = plan.length + plan.reflect - segment.input_start
    x = take(window, window_start, plan.length, segment.input_start, size, plan.reflect)
    return F.pad(x, (0, segment.input_length - size), mode="reflect")


OOM_TEXTS = ("out of memory", "can't allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the host or the device ran out of memory."""
    return isinstance(exc, MemoryError) or any(text in str(exc).lower() for text in OOM_TEXTS)


class Runner:
    """Runs segments through a model's networks as its architecture says: weights, device,
    callbacks; at `precision`, each network on `runtime` (`raydemucs.models.runtimes`)."""

    def __init__(self, model, device=None, precision: str = "fp32", runtime: str = "eager"):
        self.model = model
        self.architecture = architecture_of(model)
        self.models = self.architecture.networks()
        self.device = th.device(device) if device is not None else None
        self.precision = precision
        for sub in self.models:
            if self.device is not None:
                sub.to(self.device)
            sub.eval()
        where = self.device or next(iter(self.models[0].parameters())).device
        self.forwards = [self.architecture.forward(index, where.type, precision, runtime)
                         for index in range(len(self.models))]

    def forward(self, model_index: int, inputs: th.Tensor) -> th.Tensor:
        """One forward pass of `inputs` `[n, channels, input_length]`, on the compute device
        (copied there from pinned memory without blocking when that is a GPU)."""
        sub = self.models[model_index]
        device = self.device or next(iter(sub.parameters())).device
        if device.type == "cuda":
            inputs = inputs.pin_memory().to(device, non_blocking=True)
        if device.type == "cpu":
            COMPUTE.use()
        with th.no_grad():
            return self.forwards[model_index](inputs.to(device))

    def weighted(self, out: th.Tensor, plan: SeparationPlan, segment: Segment) -> tuple:
        """One segment's `(weight * output, weight)` on the CPU, as its architecture adds them."""
        weighted, weight = self.architecture.weighted(out, plan, segment, out.device)
        return weighted.to("cpu"), weight.to("cpu")


def notify(callback, callback_arg, plan: SeparationPlan, segment: Segment, state: str) -> None:
    """demucs's progress callback for one segment (it may raise `KeyboardInterrupt` to abort)."""
    if callback is not None:
        p = plan.passes[segment.pass_index]
        callback({**(callback_arg or {}), "audio_length": plan.length, "models": plan.num_models,
                  "segments": len(plan.segments),
                  "model_idx_in_bag": p.model_index, "shift_idx": p.shift_index or 0,
                  "segment_offset": segment.offset, "state": state})


def run_segment(runner: Runner, plan, segment, x, callback, callback_arg) -> tuple:
    notify(callback, callback_arg, plan, segment, "start")
    out = runner.forward(plan.passes[segment.pass_index].model_index, x)
    notify(callback, callback_arg, plan, segment, "end")
    return runner.weighted(out, plan, segment)


class OverlapAdd:
    """One pass's weighted sums and weight sums over mix samples [start, stop), growable."""

    def __init__(self, prefix: Sequence[int], start: int = 0, stop: int | None = None):
        self.start = start
        stop = start if stop is None else stop
        self.out = th.zeros(*prefix, stop - start)
        self.weight = th.zeros(stop - start)

    @property
    def stop(self) -> int:
        return self.start + self.weight.shape[-1]

    def add(self, start: int, weighted: th.Tensor, weight: th.Tensor) -> None:
        """Add one segment's output starting at mix sample `start`; samples before 0 are dropped."""
        lo, hi = max(start, 0), start + weighted.shape[-1]
        if hi <= lo:
            return
        if lo < self.start:
            raise ValueError(f"sample {lo} was already released (sums start at {self.start})")
        if hi > self.stop:
            grow = hi - self.stop
            self.out = th.cat([self.out, self.out.new_zeros(*self.out.shape[:-1], grow)], -1)
            self.weight = th.cat([self.weight, self.weight.new_zeros(grow)])
        a, b = lo - self.start, hi - self.start
        self.out[..., a:b] += weighted[..., lo - start:]
        self.weight[a:b] += weight[lo - start:]

    def release(self, upto: int) -> tuple[th.Tensor, th.Tensor]:
        """The sums for [start, upto), dropped from here."""
        cut = upto - self.start
        if cut > self.weight.shape[-1]:
            raise ValueError(f"no sums yet up to sample {upto}")
        out, weight = self.out[..., :cut], self.weight[:cut]
        self.out, self.weight = self.out[..., cut:].clone(), self.weight[cut:].clone()
        self.start = upto
        return out, weight


def combine_passes(plan: SeparationPlan, outs: list[th.Tensor]) -> th.Tensor:
    """Normalised outputs of every pass -> the estimate, by `apply_model`'s operations in order."""
    per_model: list = [None] * plan.num_models
    for p, out in zip(plan.passes, outs):
        if plan.shifts:
            per_model[p.model_index] = (0. + out if per_model[p.model_index] is None
                                        else per_model[p.model_index].add_(out))
        else:
            per_model[p.model_index] = out
    if plan.shifts:
        for out in per_model:
            out /= plan.shifts
    if plan.weights is None:
        return per_model[0]
    estimates = None
    totals = [0.] * len(plan.sources)
    for out, weights in zip(per_model, plan.weights):
        for k, weight in enumerate(weights):
            out[:, k, :, :] *= weight
            totals[k] += weight
        estimates = 0. + out if estimates is None else estimates.add_(out)
    for k in range(estimates.shape[1]):
        estimates[:, k, :, :] /= totals[k]
    return estimates


def finish(plan, sums: list[tuple[th.Tensor, th.Tensor]], mean, std) -> th.Tensor:
    """Per-pass sums -> separated stems `[1, sources, channels, n]` in the mix's scale."""
    outs = []
    for out, weight in sums:
        if plan.silent_unweighted:
            outs.append(th.nan_to_num(out / weight, nan=0.0))
            continue
        if weight.numel() and not weight.min() > 0:
            raise ValueError("some samples got no segment: a piece is missing")
        outs.append(out / weight)
    return combine_passes(plan, outs) * std + mean


def pick_stems(stems: dict, two_stems: str | None) -> dict:
    """All stems, or `STEM` and `no_STEM` (the sum of the others), as `demucs.separate` writes them."""
    if two_stems is None:
        return stems
    others = [wav for name, wav in stems.items() if name != two_stems]
    return {two_stems: stems[two_stems], f"no_{two_stems}": sum(others[1:], others[0].clone())}


def separate_track(runner: Runner, wav: th.Tensor, *, segment: float | None = None,
                   overlap: float = 0.25, shifts: int = 0, callback=None,
                   rng=random) -> dict:
    """`{source: [channels, time]}` for a `[channels, time]` mix, one segment per forward pass
    in `apply_model`'s order (each pass's segments by offset): `Separator.separate_tensor`'s
    stems, at the runner's precision and on its runtime."""
    mean, std = mix_stats(runner.model, *track_stats(wav))
    plan = plan_separation(runner.model, wav.shape[-1], segment=segment, overlap=overlap,
                           shifts=shifts, rng=rng)
    mix = ((wav - mean) / std)[None]
    sums = [OverlapAdd((1, len(plan.sources), plan.channels), 0, plan.length)
            for _ in plan.passes]
    for segment_ in sorted(plan.segments, key=lambda s: (s.pass_index, s.offset)):
        x = segment_input(mix, 0, plan, segment_)
        weighted, weight = run_segment(runner, plan, segment_, x, callback, None)
        sums[segment_.pass_index].add(segment_.start, weighted, weight)
    stems = finish(plan, [(acc.out, acc.weight) for acc in sums], mean, std)[0]
    return dict(zip(plan.sources, stems))
