"""The four ways a worker separates one attempt, and the rule that picks one.

- in memory: decode the whole input, then demucs's segment plan through the engine
  (`raydemucs.separation.batching`, the track's own segments `batch_size` at a time), which equals
  `Separator.separate_tensor` within 1 LSB in fp32 and runs every precision and runtime;
- streamed (inputs over `separation.stream_over_s`): windows in, stems streamed to scratch files,
  so memory does not grow with the track (`raydemucs.separation.streaming`);
- split (when the scheduler lent idle workers): demucs's segment plan cut into pieces, run by
  those workers and joined (`raydemucs.separation.split`);
- batched (`batch_size` > 1): segments of this worker's attempts share forward passes
  (`raydemucs.separation.batching`).

Every path but batching holds the model for one attempt at a time, in arrival order (`ModelTurns`).
Every path runs the task's precision, each network on the worker's runtime (`raydemucs.models.runtimes`).
"""
from __future__ import annotations

import contextlib
import functools
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..core.task import TaskSpec
from ..models.loading import default_segment_s
from ..worker import health
from .attempt import Attempt, ModelTurns
from .batching import BatchedSeparator, SharedBatcher
from .decode import decode
from .engine import Runner, pick_stems
from .split import separate_across_workers, separate_piece
from .streaming import separate_file


@dataclass
class Separated:
    """An attempt's stems (tensors, or `StreamedStem`s on disk), after `--two-stems`."""

    stems: dict
    streamed: bool = False
    pieces: int = 1


class Strategies:
    """Runs attempts on a worker's models: one at a time in arrival order, or batched; each
    model's network on `runtime`."""

    def __init__(self, device: str, batch_size: int, runtime: str = "eager"):
        self.device = device
        self.batch_size = batch_size
        self.runtime = runtime
        self.turns = ModelTurns()
        self._batchers: dict[tuple, SharedBatcher] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def separate(self, task: TaskSpec, current: Attempt, separator, input_path: Path,
                 scratch: Path, duration_s: float, helpers: list,
                 timings: dict) -> Iterator[Separated]:
        """Separate `input_path` the way that fits the task; a streamed track's stems stay in
        `scratch` as long as the context."""
        options = task.options
        current.segment_s = options.segment or default_segment_s(separator.model)
        if options.streams(duration_s):
            try:
                yield Separated(self._streamed(task, current, separator, input_path, scratch,
                                               timings).stems, streamed=True)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        decode_wav = functools.partial(self._decode, separator, input_path, timings)
        pieces = 1
        if helpers:
            stems, pieces = self._split(task, current, separator, decode_wav(), helpers, timings)
        elif self.batch_size > 1:
            stems = self._batched(task, current, separator, decode_wav, timings)
        else:
            stems = self._in_memory(task, current, separator, decode_wav(), timings)
        yield Separated(pick_stems(stems, options.two_stems), pieces=pieces)

    @staticmethod
    def _decode(separator, input_path: Path, timings: dict):
        started = time.time()
        wav = decode(input_path, separator.samplerate, separator.audio_channels)
        timings["decode_s"] = time.time() - started
        return wav

    def runner(self, model, precision: str) -> Runner:
        """Runs `model` on this worker's device and runtime at `precision`."""
        return Runner(model, self.device, precision, self.runtime)

    def _in_memory(self, task: TaskSpec, current: Attempt, separator, wav, timings: dict) -> dict:
        """demucs's segment plan for the one track, `batch_size` segments per forward pass."""
        options = task.options
        with self.turns.turn(current):
            started = time.time()
            batcher = BatchedSeparator(separator.model, batch_size=self.batch_size,
                                       device=self.device, precision=options.precision,
                                       runtime=self.runtime)
            stems = batcher.separate({task.task_id: wav}, segment=options.segment,
                                     overlap=options.overlap, shifts=options.shifts,
                                     callback=current.on_chunk)[task.task_id]
            timings["separate_s"] = time.time() - started
        return stems

    def _split(self, task: TaskSpec, current: Attempt, separator, wav, helpers: list,
               timings: dict) -> tuple[dict, int]:
        """Split the track with the lent `helpers`; returns the stems and the number of pieces."""
        with self.turns.turn(current):
            started = time.time()
            stems, pieces = separate_across_workers(
                separator.model, wav, task.options, helpers,
                lambda *piece: self.run_piece(separator.model, task.options.precision, current,
                                              *piece),
                current.abort, task.task_id, current.number)
            timings["separate_s"] = time.time() - started
        return dict(zip(separator.model.sources, stems)), pieces

    def batcher(self, separator, options) -> SharedBatcher:
        """The batcher this worker's attempts with `options`' model and precision share."""
        key = (options.model, options.repo, options.precision)
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None or batcher.batcher.model is not separator.model:
                batcher = self._batchers[key] = SharedBatcher(
                    separator.model, batch_size=self.batch_size, device=self.device,
                    precision=options.precision, runtime=self.runtime)
        return batcher

    def _batched(self, task: TaskSpec, current: Attempt, separator, decode_wav,
                 timings: dict) -> dict:
        """Share forward passes with the other attempts in this worker: announced before it
        decodes, so that passes wait briefly for it; "waiting" until its first segment runs."""
        options = task.options
        batcher = self.batcher(separator, options)
        key = (task.task_id, current.number)
        batcher.reserve(key)
        try:
            wav = decode_wav()
        except BaseException:
            batcher.withdraw(key)
            raise
        current.phase = "waiting"
        started = time.time()
        stems = batcher.separate(key, wav, abort=current.abort, segment=options.segment,
                                 overlap=options.overlap, shifts=options.shifts,
                                 callback=current.on_chunk)
        timings["separate_s"] = time.time() - started
        current.peak_rss_bytes = health.peak_rss_bytes()  # shared with the batch's other tasks
        return stems

    def _streamed(self, task: TaskSpec, current: Attempt, separator, input_path: Path,
                  scratch: Path, timings: dict):
        """Separate in windows, the stems streamed to temp files in `scratch`."""
        options = task.options
        with self.turns.turn(current):
            started = time.time()
            stems = separate_file(separator.model, input_path, scratch,
                                  segment=options.segment, overlap=options.overlap,
                                  shifts=options.shifts,
                                  runner=self.runner(separator.model, options.precision),
                                  two_stems=options.two_stems, callback=current.on_chunk)
            timings["separate_s"] = time.time() - started
        return stems

    def run_piece(self, model, precision: str, current: Attempt, plan, piece, window, mean, std):
        """One piece of a split track (the lead's own, or a lent helper's), counted as progress."""
        current.chunks_expected = current.chunks_done + len(piece.segments)
        return separate_piece(model, plan, piece, window, piece.input_start, mean, std,
                              runner=self.runner(model, precision),
                              callback=current.on_piece_chunk)
