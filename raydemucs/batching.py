"""Batching: segments of several tracks through one forward pass (for a GPU worker).

`apply_model` runs one segment per forward pass, so a GPU sees batch 1. `BatchedSeparator`
lays out each track's segments exactly as `apply_model` does (`raydemucs.engine`), queues them,
and runs up to `batch_size` at once: same model, same input length, from any tracks, oldest
first. Outputs are scattered back into each track's own sums, so each track's stems equal
`Separator.separate_tensor`'s within float tolerance (batched kernels round a little differently).
The model's weights stay on the device; the tracks and their sums stay in CPU memory.

    batcher = BatchedSeparator(separator.model, batch_size=8, device="cuda")
    batcher.add("task-1", wav1, shifts=1)        # `[channels, time]`, decoded at the model's rate
    batcher.add("task-2", wav2)
    while batcher.pending():
        for key in batcher.step():               # one forward pass; tracks that just finished
            stems = batcher.pop(key)             # {"drums": [channels, time], ...}
"""
from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping

import torch as th

from .engine import (OverlapAdd, Runner, SeparationPlan, finish, notify, plan_separation, take,
                     track_stats)


@dataclass
class _Track:
    key: Hashable
    plan: SeparationPlan
    mix: th.Tensor                 # normalised, `[1, channels, time]`
    mean: th.Tensor
    std: th.Tensor
    sums: list
    remaining: int
    callback: Callable | None = None
    callback_arg: dict | None = None
    error: BaseException | None = field(default=None)


class BatchedSeparator:
    """Separates queued tracks with forward passes of up to `batch_size` segments each."""

    def __init__(self, model, *, batch_size: int = 8, device=None, rng=random):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model
        self.batch_size = batch_size
        self.runner = Runner(model, device)
        self.rng = rng
        self._tracks: dict = {}
        self._queue: deque = deque()     # (track, segment), oldest first
        self.forward_passes = 0

    def add(self, key: Hashable, wav: th.Tensor, *, segment: float | None = None,
            overlap: float = 0.25, shifts: int = 0, transition_power: float = 1.0,
            callback: Callable | None = None, callback_arg: dict | None = None) -> int:
        """Queue a `[channels, time]` mix; returns its number of segments.

        Options are per track (as a task's); tracks batch together wherever their segments have
        the same model and input length. `callback` gets demucs's progress dicts; raising
        `KeyboardInterrupt` from it drops that track (see `pop`) and leaves the others running.
        """
        if key in self._tracks:
            raise KeyError(f"track {key!r} is already queued")
        mean, std = track_stats(wav)
        plan = plan_separation(self.model, wav.shape[-1], segment=segment, overlap=overlap,
                               shifts=shifts, transition_power=transition_power, rng=self.rng)
        prefix = (1, len(plan.sources), plan.channels)
        track = _Track(key, plan, ((wav - mean) / std)[None], mean, std,
                       [OverlapAdd(prefix, 0, plan.length) for _ in plan.passes],
                       len(plan.segments), callback, callback_arg)
        self._tracks[key] = track
        # each pass in offset order, as apply_model adds them
        for segment_ in sorted(plan.segments, key=lambda s: (s.pass_index, s.offset)):
            self._queue.append((track, segment_))
        return len(plan.segments)

    def pending(self) -> int:
        """Segments waiting for a forward pass."""
        return len(self._queue)

    def _next_batch(self) -> list:
        first_track, first = self._queue[0]
        group = (first_track.plan.passes[first.pass_index].model_index, first.input_length)
        batch, rest = [], deque()
        while self._queue and len(batch) < self.batch_size:
            track, segment = self._queue.popleft()
            if track.error is not None:
                continue
            if (track.plan.passes[segment.pass_index].model_index, segment.input_length) == group:
                batch.append((track, segment))
            else:
                rest.append((track, segment))
        self._queue.extendleft(reversed(rest))
        return batch

    def _notify(self, batch: list, state: str) -> None:
        for track, segment in batch:
            if track.error is None:
                try:
                    notify(track.callback, track.callback_arg, track.plan, segment, state)
                except KeyboardInterrupt as exc:
                    track.error = exc

    def step(self) -> list:
        """Run one forward pass; returns the keys of tracks finished (or dropped) by it."""
        batch = self._next_batch() if self._queue else []
        if not batch:
            return self._drop_failed()
        self._notify(batch, "start")
        batch = [(t, s) for t, s in batch if t.error is None]
        if batch:
            track, segment = batch[0]
            inputs = th.cat([take(t.mix, 0, t.plan.length, s.input_start, s.input_length)
                             for t, s in batch])
            try:
                out = self.runner.forward(track.plan.passes[segment.pass_index].model_index, inputs)
            except Exception as exc:  # out of memory, say: every track in the batch fails with it
                for failed, _ in batch:
                    failed.error = exc
                return self._drop_failed()
            self.forward_passes += 1
            self._notify(batch, "end")
            for i, (track, segment) in enumerate(batch):
                weighted, weight = self.runner.weighted(out[i:i + 1], track.plan, segment)
                track.sums[segment.pass_index].add(segment.start, weighted, weight)
                track.remaining -= 1
        done = [t.key for t, _ in batch if t.remaining == 0 and t.error is None]
        return list(dict.fromkeys(done)) + self._drop_failed()

    def _drop_failed(self) -> list:
        failed = [t for t in self._tracks.values() if t.error is not None and t.remaining >= 0]
        for track in failed:
            track.remaining = -1          # reported once
        if failed:
            self._queue = deque((t, s) for t, s in self._queue if t.error is None)
        return [t.key for t in failed]

    def pop(self, key: Hashable) -> dict:
        """A finished track's stems `{source: [channels, time]}`; re-raises what dropped it (its
        abort, or the error of a forward pass it was in)."""
        track = self._tracks.pop(key)
        if track.error is not None:
            raise track.error
        if track.remaining:
            self._tracks[key] = track
            raise RuntimeError(f"track {key!r} still has {track.remaining} segments to run")
        stems = finish(track.plan, [(acc.out, acc.weight) for acc in track.sums], track.mean,
                       track.std)[0]
        return dict(zip(track.plan.sources, stems))

    def separate(self, wavs: Mapping[Hashable, th.Tensor], **options) -> dict:
        """Queue every mix, run until all are done: `{key: {source: [channels, time]}}`."""
        for key, wav in wavs.items():
            self.add(key, wav, **options)
        results = {}
        while self.pending():
            for key in self.step():
                results[key] = self.pop(key)
        return results


class SharedBatcher:
    """A `BatchedSeparator` that several threads (a worker's concurrent attempts) share.

    Each caller adds its track and blocks in `separate`; whichever caller holds the lock runs the
    next forward pass for everyone's segments, so the device sees full batches whenever several
    tasks are in the worker. Weights stay where the model is.
    """

    def __init__(self, model, *, batch_size: int, device=None):
        self.batcher = BatchedSeparator(model, batch_size=batch_size, device=device)
        self._changed = threading.Condition()
        self._done: dict = {}

    def separate(self, key: Hashable, wav: th.Tensor, **options) -> dict:
        """`{source: [channels, time]}` for `wav` (options as `BatchedSeparator.add`); raises
        `KeyboardInterrupt` when the track's callback aborted it, or a failed forward pass's error."""
        with self._changed:
            self.batcher.add(key, wav, **options)
            while key not in self._done:
                finished = self.batcher.step()
                for done in finished:
                    try:
                        self._done[done] = self.batcher.pop(done)
                    except BaseException as exc:
                        self._done[done] = exc
                if finished:
                    self._changed.notify_all()
                elif not self.batcher.pending() and key not in self._done:
                    self._changed.wait(0.05)
            result = self._done.pop(key)
        if isinstance(result, BaseException):
            raise result
        return result
