"""One attempt inside a worker (its abort flag, phase and progress) and the line for the model."""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

from ..worker import health


@dataclass(eq=False)
class Attempt:
    """One task attempt inside a worker: its abort flag, phase and segment counts.

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


class ModelTurns:
    """The model runs one attempt at a time, in the order the attempts arrived.

    A plain lock would let a prefetched attempt whose input decodes faster overtake the one ahead
    of it, breaking the scheduler's priorities and its view of which attempt is running.
    """

    def __init__(self):
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
        recording the worker's peak RSS while it holds it."""
        current.phase = "waiting"
        self.wait_for_turn(current)
        try:
            current.phase = "separating"
            health.reset_peak_rss()
            yield
        finally:
            current.peak_rss_bytes = health.peak_rss_bytes()
            self.leave(current)
