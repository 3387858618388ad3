"""What happens when an attempt ends: one pure function of the record, the run and the error.

`decide` returns an `Outcome`; the scheduler carries it out (journal, queue, metrics). Retries are
the scheduler's alone: a retryable error goes back to the queue after an exponential backoff with
jitter, until `tasks.max_retries`; out of memory retries with half the segment.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

from ..core.config import TasksConfig
from ..core.errors import OutOfMemory, RayDemucsError, SeparationAborted, TaskTimeout

MIN_OOM_SEGMENT_S = 1.0


class Decision(str, enum.Enum):
    SUCCEED = "succeed"
    CANCEL = "cancel"
    STEP_BACK = "step_back"  # requeued as it was, its attempt not counted
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    error: RayDemucsError | None = None  # what the record keeps
    delay_s: float = 0.0  # before a retry
    segment_s: float | None = None  # the segment a retry runs with (after out of memory)
    note: str = ""


def retry_delay_s(attempt: int, base_s: float, max_s: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, scaled by [0.5, 1)."""
    return min(max_s, base_s * 2 ** max(0, attempt - 1)) * (0.5 + 0.5 * rng())


def decide(attempts: int, run, error: RayDemucsError | None, timeout_s: float,
           tasks: TasksConfig, rng: Callable[[], float]) -> Outcome:
    """The outcome of an attempt (the record's `attempts`-th) that ended with `error` (None:
    its stems are written), given what the scheduler asked of its `run` (a cancel, a step back,
    an abort at the deadline)."""
    if error is None:
        return Outcome(Decision.SUCCEED)
    if run.cancel_requested:
        return Outcome(Decision.CANCEL)
    if run.step_back and isinstance(error, SeparationAborted):
        return Outcome(Decision.STEP_BACK, note=run.step_back)
    if isinstance(error, SeparationAborted) and run.abort_sent_at is not None:
        error = TaskTimeout(f"task ran past its timeout of {timeout_s:g} s")
    retryable = error.retryable or isinstance(error, SeparationAborted)
    if not retryable or attempts > tasks.max_retries:
        return Outcome(Decision.FAIL, error, note=str(error))
    delay = retry_delay_s(attempts, tasks.retry_backoff_s, tasks.retry_backoff_max_s, rng)
    note = f"retry in {delay:.2f} s: {error}"
    segment_s = None
    if isinstance(error, OutOfMemory) and error.segment_s:
        segment_s = max(MIN_OOM_SEGMENT_S, error.segment_s / 2)
        note += f"; with a {segment_s:g} s segment"
    return Outcome(Decision.RETRY, error, delay, segment_s, note)
