"""Batching: segments of several tracks through one forward pass (for a GPU worker).

`apply_model` runs one segment per forward pass, so a GPU sees batch 1. `BatchedSeparator`
lays out each track's segments exactly as `apply_model` does (`raydemucs.separation.engine`), queues them,
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

`SharedBatcher` is the same for a worker's concurrent attempts: each announces itself before it
decodes (`reserve`), then blocks in `separate` until its own stems are done, while the passes
fill with the segments of every track in the worker.

On a GPU, `batch_size` is a ceiling: the first pass runs one segment and measures the memory it
takes, and the batch becomes what the free device memory holds (`fit_batch_size`); two passes
may be in flight, so that one's inputs are gathered and copied while the other computes. A pass
that runs out of memory (on any device) is split in halves and the batch size halved, down to
one segment; only a pass of one segment that still does not fit fails its tracks.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping

import torch as th

from .engine import (
    OverlapAdd,
    Runner,
    SeparationPlan,
    finish,
    is_out_of_memory,
    mix_stats,
    notify,
    plan_separation,
    segment_input,
    track_stats,
)

logger = logging.getLogger(__name__)

LINGER_S = 1.0   # the longest a pass with room left waits for a track still decoding
MEMORY_HEADROOM = 0.8   # the share of free device memory a batch may take


def fit_batch_size(ceiling: int, free_bytes: int, segment_bytes: int,
                   headroom: float = MEMORY_HEADROOM) -> int:
    """The most segments (1 to `ceiling`) whose passes fit in `headroom` of `free_bytes`, when
    one segment takes `segment_bytes` of device memory."""
    if segment_bytes <= 0:
        return ceiling
    return max(1, min(ceiling, int(headroom * free_bytes // segment_bytes)))


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

    def __init__(self, model, *, batch_size: int = 8, device=None, precision: str = "fp32",
                 runtime: str = "eager", rng=random):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model
        self.batch_size = batch_size
        self.runner = Runner(model, device, precision, runtime)
        self.on_gpu = self.runner.device is not None and self.runner.device.type == "cuda"
        self.segment_bytes: int | None = None if self.on_gpu else 0  # measured on a GPU
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
        mean, std = mix_stats(self.model, *track_stats(wav))
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

    def take(self) -> list:
        """The next forward pass's `(track, segment)`s, out of the queue and told "start"
        (empty when nothing is left to run, or every one of them was just aborted)."""
        batch = self._next_batch() if self._queue else []
        self._notify(batch, "start")
        return [(t, s) for t, s in batch if t.error is None]

    def run(self, batch: list) -> list:
        """The forward passes of a `take`n batch: each segment's `(weight * output, weight)` on
        the CPU, in passes of at most `batch_size` (halved on out of memory). Touches no queue or
        sums, so it may run while other threads add tracks."""
        outputs: list = []
        while len(outputs) < len(batch):
            chunk = batch[len(outputs):len(outputs) + self.batch_size]
            try:
                outputs += self._forward(chunk)
            except Exception as exc:
                if not is_out_of_memory(exc) or len(chunk) == 1:
                    raise
                self._shrink(len(chunk), exc)
        return outputs

    def _forward(self, chunk: list) -> list:
        """One forward pass (of the first segment alone while a GPU's need is unmeasured)."""
        measuring = self.segment_bytes is None
        if measuring:
            chunk = chunk[:1]
            th.cuda.reset_peak_memory_stats(self.runner.device)
            before = th.cuda.memory_allocated(self.runner.device)
        track, segment = chunk[0]
        inputs = th.cat([segment_input(t.mix, 0, t.plan, s) for t, s in chunk])
        out = self.runner.forward(track.plan.passes[segment.pass_index].model_index, inputs)
        outputs = [self.runner.weighted(out[i:i + 1], t.plan, s) for i, (t, s) in enumerate(chunk)]
        if measuring:
            self.segment_bytes = th.cuda.max_memory_allocated(self.runner.device) - before
            free, _ = th.cuda.mem_get_info(self.runner.device)
            self.batch_size = fit_batch_size(self.batch_size, free, self.segment_bytes)
            logger.info("a segment takes %.0f MB on %s: batches of up to %d", self.segment_bytes
                        / 2**20, self.runner.device, self.batch_size)
        return outputs

    def _shrink(self, failed: int, exc: BaseException) -> None:
        self.batch_size = max(1, min(self.batch_size, failed // 2))
        if self.on_gpu:
            th.cuda.empty_cache()
        logger.warning("a pass of %d segments ran out of memory (%s): batches of %d from now on",
                       failed, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                       self.batch_size)

    def put(self, batch: list, outputs: list) -> list:
        """Add a pass's outputs into its tracks' sums; the keys of tracks finished (or dropped)."""
        self.forward_passes += 1
        self._notify(batch, "end")
        for (track, segment), (weighted, weight) in zip(batch, outputs):
            if track.error is None:
                track.sums[segment.pass_index].add(segment.start, weighted, weight)
                track.remaining -= 1
        done = [t.key for t, _ in batch if t.remaining == 0 and t.error is None]
        return list(dict.fromkeys(done)) + self.dropped()

    def fail(self, batch: list, error: BaseException) -> list:
        """A pass that failed (out of memory, say): every track in it fails with `error`; the
        keys of the tracks dropped."""
        for track, _ in batch:
            track.error = track.error or error
        return self.dropped()

    def drop(self, key: Hashable, error: BaseException) -> list:
        """Stop a queued track (its abort while it waits); the keys of the tracks dropped."""
        track = self._tracks[key]
        track.error = track.error or error
        return self.dropped()

    def step(self) -> list:
        """Run one forward pass; returns the keys of tracks finished (or dropped) by it."""
        batch = self.take()
        if not batch:
            return self.dropped()
        try:
            outputs = self.run(batch)
        except Exception as exc:  # out of memory, say: every track in the batch fails with it
            return self.fail(batch, exc)
        return self.put(batch, outputs)

    def dropped(self) -> list:
        """The keys of tracks that failed since the last call (each reported once)."""
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
    """A `BatchedSeparator` shared by a worker's concurrent attempts, each waiting for its stems.

    An attempt `reserve`s its key when it arrives (before it decodes), then `separate`s its track.
    Whichever waiting caller finds no pass running takes the next batch (oldest track's segments
    first, the others' filling the room it leaves) and runs it with the lock released, so tracks
    that arrive meanwhile join the next pass; one pass runs at a time (two on a GPU, so that one
    gathers and copies its inputs while the other computes). A pass with room left first
    waits for tracks announced but still decoding, up to `linger_s` after each one's `reserve`.
    An abort, or a failed pass, drops only the tracks it touches.
    """

    def __init__(self, model, *, batch_size: int, device=None, precision: str = "fp32",
                 runtime: str = "eager", linger_s: float = LINGER_S):
        self.batcher = BatchedSeparator(model, batch_size=batch_size, device=device,
                                        precision=precision, runtime=runtime)
        self.linger_s = linger_s
        self.passes_in_flight = 2 if self.batcher.on_gpu else 1
        self._changed = threading.Condition()
        self._announced: dict = {}    # key -> until when a pass with room left waits for it
        self._results: dict = {}      # key -> stems, or the error that dropped the track
        self._running = 0             # passes in flight

    def reserve(self, key: Hashable) -> None:
        """Announce a track that will be `separate`d once it is decoded."""
        with self._changed:
            self._announced[key] = time.monotonic() + self.linger_s

    def withdraw(self, key: Hashable) -> None:
        """A reserved track will not come after all (its decoding failed)."""
        with self._changed:
            self._announced.pop(key, None)
            self._changed.notify_all()

    def separate(self, key: Hashable, wav: th.Tensor, *, abort: threading.Event | None = None,
                 **options) -> dict:
        """`{source: [channels, time]}` for `wav` (options as `BatchedSeparator.add`); raises
        `KeyboardInterrupt` when the track's callback aborted it or `abort` was set while it
        waited, or the error of a failed forward pass it was in."""
        with self._changed:
            self._announced.pop(key, None)
            self.batcher.add(key, wav, **options)
            self._changed.notify_all()
            while key not in self._results:
                if abort is not None and abort.is_set():
                    self._record(self.batcher.drop(key, KeyboardInterrupt()))
                elif self._running >= self.passes_in_flight or not self.batcher.pending():
                    self._changed.wait(0.1)
                elif (linger_s := self._linger_s()) > 0:
                    self._changed.wait(linger_s)
                else:
                    self._run_pass()
            result = self._results.pop(key)
        if isinstance(result, BaseException):
            raise result
        return result

    def _linger_s(self) -> float:
        """How long the next pass should wait for announced tracks (0 or less: run it now)."""
        if self.batcher.pending() >= self.batcher.batch_size:
            return 0.0
        now = time.monotonic()
        return max((until - now for until in self._announced.values()), default=0.0)

    def _run_pass(self) -> None:
        """Run the next batch, the lock released while the model runs; record what it ended."""
        batch = self.batcher.take()
        if not batch:
            self._record(self.batcher.dropped())
            return
        self._running, outputs, error = self._running + 1, None, None
        self._changed.release()
        try:
            outputs = self.batcher.run(batch)
        except BaseException as exc:  # out of memory, say: only this pass's tracks fail
            error = exc
        self._changed.acquire()
        self._running -= 1
        self._record(self.batcher.put(batch, outputs) if error is None
                     else self.batcher.fail(batch, error))
        self._changed.notify_all()

    def _record(self, keys: list) -> None:
        for key in keys:
            try:
                self._results[key] = self.batcher.pop(key)
            except BaseException as exc:
                self._results[key] = exc
        if keys:
            self._changed.notify_all()
