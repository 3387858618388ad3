"""The ways a worker separates one attempt, the rule that picks one, and the attempt's turn on
the model.

- in memory: decode the whole input, then demucs's segment plan through the engine, one segment
  per forward pass (`raydemucs.separation.engine.separate_track`), which equals
  `Separator.separate_tensor` within 1 LSB in fp32 and runs every precision and runtime;
- streamed (inputs over `separation.stream_over_s`, by their header or, where it said less, as
  they decode): windows in, stems streamed to scratch files, so memory does not grow with the
  track (`raydemucs.separation.streaming`);
- split (when the scheduler lent idle workers): demucs's segment plan cut into pieces, run by
  those workers and joined (`raydemucs.separation.split`);
- batched (`batch_size` > 1): segments of this worker's attempts share forward passes
  (`raydemucs.separation.batching`).

Every path but batching holds the model for one attempt at a time, in arrival order
(`ModelTurns`). Every path runs the task's precision, each network on the worker's runtime
(`raydemucs.models.runtimes`).
"""
from __future__ import annotations

import contextlib
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from ..core.config import InputConfig
from ..core.task import TaskSpec
from .batching import SharedBatcher
from .decode import LongerThanHeader, decode
from .engine import Runner, architecture_of, pick_stems, separate_track
from .split import Helper, separate_across_workers, separate_piece
from .streaming import separate_file


class MemoryMeter(Protocol):
    """How the worker measures its memory around a turn of the model (`worker.health`)."""

    def reset(self) -> None:
        """Restart the peak count (a turn starts)."""

    def read(self) -> int | None:
        """The peak since `reset`."""

    def at_rest(self) -> int | None:
        """The memory held with no attempt running the model, when a sample is due."""


@dataclass(eq=False)
class Attempt:
    """One task attempt inside a worker: its abort flag, phase, segment counts and timings.

    The scheduler starts the attempt's timeout clock when `poll` shows it "separating".
    """

    task_id: str
    number: int
    abort: threading.Event = field(default_factory=threading.Event)
    phase: str = "preparing"  # preparing, waiting (for the model), separating, writing
    chunks_done: int = 0
    chunks_expected: int = 1
    segment_s: float | None = None
    peak_rss_bytes: int | None = None  # the worker's peak while this attempt held the model
    rest_rss_bytes: int | None = None  # its memory as this attempt left the model, if sampled
    timings: dict = field(default_factory=dict)

    def progress(self) -> float:
        return min(0.99, self.chunks_done / self.chunks_expected)

    def to_dict(self) -> dict:
        return {"task_id": self.task_id, "attempt": self.number, "phase": self.phase,
                "progress": self.progress()}

    def on_chunk(self, info: dict) -> None:
        """demucs's progress callback: counts segments, and stops the attempt when aborted.

        A segment entering a forward pass makes the attempt "separating" (a batched attempt
        waits until its first segment does)."""
        if self.abort.is_set():
            raise KeyboardInterrupt
        self.chunks_expected = info.get("segments", self.chunks_expected)
        if info["state"] == "start":
            self.phase = "separating"
        elif info["state"] == "end":
            self.chunks_done += 1

    def on_piece_chunk(self, info: dict) -> None:
        """`on_chunk` counting against this piece's segments, not the whole plan's."""
        self.on_chunk({**info, "segments": self.chunks_expected})

    @contextlib.contextmanager
    def timed(self, name: str):
        started = time.time()
        try:
            yield
        finally:
            self.timings[name] = time.time() - started


class ModelTurns:
    """The model runs one attempt at a time, in the order the attempts arrived.

    A plain lock would let a prefetched attempt whose input decodes faster overtake the one ahead
    of it, breaking the scheduler's priorities and its view of which attempt is running.
    """

    def __init__(self, memory: MemoryMeter):
        self.memory = memory
        self._changed = threading.Condition()
        self._line: list[Attempt] = []

    def join(self, current: Attempt) -> None:
        with self._changed:
            self._line.append(current)

    def leave(self, current: Attempt) -> None:
        with self._changed:
            if current in self._line:
                self._line.remove(current)
                self._changed.notify_all()

    def wait_for_turn(self, current: Attempt) -> None:
        """Block until `current` is first in line; raise KeyboardInterrupt if it is aborted first."""
        with self._changed:
            while self._line[0] is not current:
                if current.abort.is_set():
                    raise KeyboardInterrupt
                self._changed.wait(0.1)
        if current.abort.is_set():
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def turn(self, current: Attempt):
        """Hold the model for `current` (after those ahead of it; abortable while it waits),
        recording the worker's peak memory while it holds it, and its memory at rest as it
        leaves (before the next attempt starts)."""
        current.phase = "waiting"
        self.wait_for_turn(current)
        try:
            current.phase = "separating"
            self.memory.reset()
            yield
        finally:
            current.peak_rss_bytes = self.memory.read()
            current.rest_rss_bytes = self.memory.at_rest()
            self.leave(current)


@dataclass
class Separated:
    """An attempt's stems (tensors, or `StreamedStem`s on disk), after `--two-stems`, and how
    they were made."""

    stems: dict
    samplerate: int
    runtime: str
    streamed: bool = False
    pieces: int = 1


class Strategies:
    """Runs attempts on a worker's models: one at a time in arrival order, or batched; each
    model's network on `runtime`; inputs decoded within `limits`."""

    def __init__(self, device: str, batch_size: int, runtime: str, memory: MemoryMeter,
                 limits: InputConfig):
        self.device = device
        self.limits = limits
        self.batch_size = batch_size
        self.runtime = runtime
        self.memory = memory
        self.turns = ModelTurns(memory)
        self._runners: dict[tuple, Runner] = {}
        self._batchers: dict[tuple, SharedBatcher] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def separate(self, task: TaskSpec, current: Attempt, separator, input_path: Path,
                 scratch: Path, duration_s: float, helpers: list[Helper]) -> Iterator[Separated]:
        """Separate `input_path` the way that fits the task; a streamed track's stems stay in
        `scratch` as long as the context."""
        options, model = task.options, separator.model
        architecture = architecture_of(model)
        current.segment_s = options.segment or architecture.default_segment_s()
        made = {"samplerate": separator.samplerate,
                "runtime": architecture.runtime(self.device, self.runtime)}
        streamed, batched = options.streams(duration_s), self.batch_size > 1 and not helpers
        if not (streamed or batched):
            try:
                with current.timed("decode_s"):
                    wav = decode(input_path, separator.samplerate, separator.audio_channels,
                                 self.limits, options.stream_over_s)
            except LongerThanHeader:  # its header said less: streamed, in bounded memory
                streamed = True
        if streamed:
            try:
                stems = self._streamed(task, current, model, input_path, scratch).stems
                yield Separated(stems, streamed=True, **made)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        pieces = 1
        if batched:
            stems = self._batched(task, current, separator, input_path)
        elif helpers:
            stems, pieces = self._split(task, current, model, wav, helpers)
        else:
            stems = self._in_memory(task, current, model, wav)
        yield Separated(pick_stems(stems, options.two_stems), pieces=pieces, **made)

    def runner(self, model, precision: str) -> Runner:
        """Runs `model` on this worker's device and runtime at `precision`; built once (its
        weights moved, its segment weights computed), used by one attempt at a time."""
        with self._lock:
            runner = self._runners.get((model, precision))
            if runner is None:
                runner = self._runners[model, precision] = Runner(model, self.device, precision,
                                                                  self.runtime)
        return runner

    def _in_memory(self, task: TaskSpec, current: Attempt, model, wav) -> dict:
        """demucs's segment plan for the one track, one segment per forward pass."""
        options = task.options
        with self.turns.turn(current), current.timed("separate_s"):
            return separate_track(self.runner(model, options.precision), wav,
                                  segment=options.segment, overlap=options.overlap,
                                  shifts=options.shifts, callback=current.on_chunk)

    def _split(self, task: TaskSpec, current: Attempt, model, wav,
               helpers: list[Helper]) -> tuple[dict, int]:
        """Split the track with the lent `helpers`; returns the stems and the number of pieces."""
        with self.turns.turn(current), current.timed("separate_s"):
            stems, pieces = separate_across_workers(
                model, wav, task.options, helpers,
                lambda *piece: self.run_piece(model, task.options.precision, current, *piece),
                current.abort, task.task_id, current.number)
        return dict(zip(architecture_of(model).sources, stems)), pieces

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

    def forget(self, model) -> None:
        """Drop what was built for `model` (it left the worker's model cache)."""
        with self._lock:
            self._runners = {key: runner for key, runner in self._runners.items()
                             if runner.model is not model}
            self._batchers = {key: batcher for key, batcher in self._batchers.items()
                              if batcher.batcher.model is not model}

    def _batched(self, task: TaskSpec, current: Attempt, separator, input_path: Path) -> dict:
        """Share forward passes with the other attempts in this worker: announced before it
        decodes, so that passes wait briefly for it; "waiting" until its first segment runs."""
        options = task.options
        batcher = self.batcher(separator, options)
        key = (task.task_id, current.number)
        batcher.reserve(key)
        try:
            with current.timed("decode_s"):
                wav = decode(input_path, separator.samplerate, separator.audio_channels,
                             self.limits)
        except BaseException:
            batcher.withdraw(key)
            raise
        current.phase = "waiting"
        with current.timed("separate_s"):
            stems = batcher.separate(key, wav, abort=current.abort, segment=options.segment,
                                     overlap=options.overlap, shifts=options.shifts,
                                     callback=current.on_chunk)
        current.peak_rss_bytes = self.memory.read()  # shared with the batch's other tasks
        return stems

    def _streamed(self, task: TaskSpec, current: Attempt, model, input_path: Path,
                  scratch: Path):
        """Separate in windows, the stems streamed to temp files in `scratch`."""
        options = task.options
        with self.turns.turn(current), current.timed("separate_s"):
            return separate_file(model, input_path, scratch, segment=options.segment,
                                 overlap=options.overlap, shifts=options.shifts,
                                 runner=self.runner(model, options.precision),
                                 two_stems=options.two_stems, callback=current.on_chunk,
                                 limits=self.limits)

    def run_piece(self, model, precision: str, current: Attempt, plan, piece, window, mean, std):
        """One piece of a split track (the lead's own, or a lent helper's), counted as progress."""
        current.chunks_expected = current.chunks_done + len(piece.segments)
        return separate_piece(model, plan, piece, window, piece.input_start, mean, std,
                              runner=self.runner(model, precision),
                              callback=current.on_piece_chunk)
