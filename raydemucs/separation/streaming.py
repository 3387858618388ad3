"""Streamed separation: a long track in bounded memory, its stems streamed to disk.

`separate_file` gives what `demucs.api.Separator.separate_tensor` gives for a whole file while
holding only a window of input and the sums later segments can still touch (the plan and the
runner are `raydemucs.separation.engine`'s; the windows `raydemucs.separation.decode`'s); each stem streams to a
float32 temp file (`StreamedStem`), which `raydemucs.separation.encode` writes in the final format.
"""
from __future__ import annotations

import random
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch as th

from ..audio.ffmpeg import BLOCK_FRAMES
from ..core.config import InputConfig
from .decode import DEFAULT_LIMITS, iter_audio, stream_stats
from .engine import (
    OverlapAdd,
    Runner,
    SeparationPlan,
    architecture_of,
    finish,
    mix_stats,
    pick_stems,
    plan_separation,
    run_segment,
    segment_input,
)


class _InputBuffer:
    """The normalised mix, read forward on demand; samples no segment needs any more are dropped."""

    def __init__(self, blocks: Iterator[th.Tensor], mean, std, channels: int, total: int):
        self.blocks, self.mean, self.std, self.total = blocks, mean, std, total
        self.data = th.zeros(channels, 0)
        self.start = 0

    def take(self, plan: SeparationPlan, segment) -> th.Tensor:
        need = plan.reads(segment)[1]
        while self.start + self.data.shape[-1] < need:
            block = next(self.blocks, None)
            if block is None:
                raise ValueError(f"the file gave {self.start + self.data.shape[-1]} samples the "
                                 f"second time, {self.total} the first")
            self.data = th.cat([self.data, (block - self.mean) / self.std], -1)
        return segment_input(self.data[None], self.start, plan, segment)

    def drop_before(self, position: int) -> None:
        cut = min(max(0, position - self.start), self.data.shape[-1])
        if cut:
            self.data = self.data[..., cut:].clone()
            self.start += cut


def stream_separate(model, plan: SeparationPlan, blocks: Iterator[th.Tensor], mean, std,
                    emit: Callable[[th.Tensor], None], *, device=None, runner=None,
                    callback=None, callback_arg=None, block_frames: int = BLOCK_FRAMES) -> None:
    """Run every segment in order of start, and `emit` the stems `[sources, channels, n]` of each
    run of samples as soon as no later segment can touch it; memory stays a few segments long.
    `runner` (a `Runner`) says how the model runs; by default, eager fp32 on `device`."""
    segments = plan.segments
    runner = runner or Runner(model, device)
    inputs = _InputBuffer(iter(blocks), mean, std, plan.channels, plan.length)
    prefix = (1, len(plan.sources), plan.channels)
    sums = [OverlapAdd(prefix) for _ in plan.passes]
    waiting = [deque(s.start for s in segments if s.pass_index == p.index) for p in plan.passes]
    needed_from = [0] * (len(segments) + 1)
    needed_from[-1] = plan.length
    for i in range(len(segments) - 1, -1, -1):
        needed_from[i] = min(needed_from[i + 1], plan.reads(segments[i])[0])
    released = 0
    for i, segment in enumerate(segments):
        x = inputs.take(plan, segment)
        weighted, weight = run_segment(runner, plan, segment, x, callback, callback_arg)
        sums[segment.pass_index].add(segment.start, weighted, weight)
        inputs.drop_before(needed_from[i + 1])
        waiting[segment.pass_index].popleft()
        ready = min(plan.length, *(max(0, q[0]) if q else plan.length for q in waiting))
        if ready - released >= block_frames or ready == plan.length:
            if ready > released:
                emit(finish(plan, [acc.release(ready) for acc in sums], mean, std)[0])
                released = ready


@dataclass
class StreamedStem:
    """A stem held on disk as raw interleaved little-endian float32, with its absolute peak."""

    path: Path
    samplerate: int
    channels: int
    frames: int = 0
    peak: float = 0.0

    def blocks(self, frames: int = BLOCK_FRAMES) -> Iterator[th.Tensor]:
        """`[channels, n]` float32 blocks, read back from disk."""
        size = frames * self.channels * 4
        with open(self.path, "rb") as handle:
            while data := handle.read(size):
                yield th.from_numpy(np.frombuffer(data, dtype="<f4")
                                    .reshape(-1, self.channels).T.copy())

    def load(self) -> th.Tensor:
        """The whole stem in memory (tests, short tracks)."""
        return th.cat(list(self.blocks()), -1)


@dataclass
class StreamedStems:
    """`separate_file`'s result: `{name: StreamedStem}` in a temp folder that `cleanup` removes."""

    stems: dict
    folder: Path
    length: int
    mean: float
    std: float

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "StreamedStems":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


class _TempStemSink:
    """Appends each stem's blocks to its float32 temp file; `two_stems` as demucs.separate."""

    def __init__(self, folder: Path, sources, samplerate, channels, two_stems=None):
        if two_stems is not None and two_stems not in sources:
            raise ValueError(f"two-stems {two_stems!r} is not one of {', '.join(sources)}")
        self.sources, self.two_stems = list(sources), two_stems
        names = self.sources if two_stems is None else [two_stems, f"no_{two_stems}"]
        self.stems = {name: StreamedStem(folder / f"{name}.f32", samplerate, channels)
                      for name in names}
        self.handles = {name: open(stem.path, "wb") for name, stem in self.stems.items()}

    def __call__(self, block: th.Tensor) -> None:
        for name, wav in pick_stems(dict(zip(self.sources, block)), self.two_stems).items():
            stem = self.stems[name]
            stem.frames += wav.shape[-1]
            stem.peak = max(stem.peak, float(wav.abs().max()))
            self.handles[name].write(wav.t().contiguous().numpy().astype("<f4").tobytes())

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def separate_file(model, path, workdir=None, *, segment: float | None = None,
                  overlap: float = 0.25, shifts: int = 0, transition_power: float = 1.0,
                  device=None, runner=None, two_stems: str | None = None, callback=None,
                  callback_arg=None,
                  shift_offsets=None, rng=random, limits: InputConfig = DEFAULT_LIMITS,
                  block_frames: int = BLOCK_FRAMES) -> StreamedStems:
    """Separate a file in bounded memory: one pass for the mean and std (which stops a file
    past the input `limits`), one to separate into float32 temp files under `workdir` (which
    need 4 bytes x channels x samples per stem)."""
    architecture = architecture_of(model)
    channels, samplerate = architecture.channels, architecture.samplerate
    mean, std, length = stream_stats(path, samplerate, channels, limits)
    mean, std = mix_stats(model, mean, std)
    plan = plan_separation(model, length, segment=segment, overlap=overlap, shifts=shifts,
                           transition_power=transition_power, shift_offsets=shift_offsets, rng=rng)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".raydemucs-stream-", dir=workdir))
    try:
        sink = _TempStemSink(folder, plan.sources, samplerate, channels, two_stems)
        try:
            stream_separate(model, plan, iter_audio(path, samplerate, channels, limits), mean,
                            std, sink,
                            device=device, runner=runner, callback=callback,
                            callback_arg=callback_arg,
                            block_frames=block_frames)
        finally:
            sink.close()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return StreamedStems(sink.stems, folder, length, float(mean), float(std))
