"""One track on several workers: demucs's segment plan cut into contiguous pieces and joined.

`split_plan` cuts a plan (`raydemucs.separation.engine`, any architecture's) into pieces; `separate_piece` runs one on the window
of samples it reads (on any worker); `join_pieces` adds the pieces' un-normalised sums and divides,
which gives what `Separator.separate_tensor` gives for the whole track, within float tolerance.

`separate_across_workers` is how a lead worker uses that: it decodes the track, keeps the smallest
piece (it also decodes, joins and writes), sends the others to the idle workers the scheduler lent
it (each gets only its window), and joins. A helper that fails costs time, not the task: the lead
runs that piece itself. The helpers are what the worker hands in (`Helper`): how they are reached
(Ray, its concurrency groups) is the worker's business.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch as th

from ..core.config import SeparationConfig
from .decode import read_window
from .engine import (
    OverlapAdd,
    Runner,
    SeparationPlan,
    finish,
    mix_stats,
    plan_separation,
    run_segment,
    segment_input,
    track_stats,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """A contiguous run of a plan's segments, and the mix samples they read."""

    index: int
    segments: tuple
    input_start: int      # clipped to the mix: decode [input_start, input_stop) for this piece
    input_stop: int


@dataclass
class PieceResult:
    """A piece's un-normalised sums: `{pass index: (first sample, out, weight)}`."""

    index: int
    sums: dict = field(default_factory=dict)


def split_plan(plan: SeparationPlan, pieces: int) -> list[Piece]:
    """Cut the plan into at most `pieces` contiguous runs of near-equal segment counts."""
    segments = plan.segments
    count = min(max(1, pieces), len(segments))
    bounds = [round(i * len(segments) / count) for i in range(count + 1)]
    result = []
    for index in range(count):
        run = segments[bounds[index]:bounds[index + 1]]
        reads = [plan.reads(s) for s in run]
        result.append(Piece(index, tuple(run), min(lo for lo, _ in reads),
                            max(hi for _, hi in reads)))
    return result


def separate_piece(model, plan: SeparationPlan, piece: Piece, window: th.Tensor,
                   window_start: int, mean, std, *, device=None, runner=None, callback=None,
                   callback_arg=None) -> PieceResult:
    """Run a piece's segments on `window` (`[channels, n]`, raw mix samples from `window_start`,
    covering `piece.input_start:piece.input_stop`), normalised with the whole track's stats;
    `runner` (a `Runner`) says how the model runs, by default eager fp32 on `device`."""
    mix = ((window - mean) / std)[None]
    runner = runner or Runner(model, device)
    sums: dict[int, OverlapAdd] = {}
    prefix = (1, len(plan.sources), plan.channels)
    for segment in piece.segments:
        x = segment_input(mix, window_start, plan, segment)
        weighted, weight = run_segment(runner, plan, segment, x, callback, callback_arg)
        if segment.pass_index not in sums:
            runs = [s for s in piece.segments if s.pass_index == segment.pass_index]
            first = max(0, runs[0].start)
            sums[segment.pass_index] = OverlapAdd(prefix, first, max(first, runs[-1].end))
        sums[segment.pass_index].add(segment.start, weighted, weight)
    return PieceResult(piece.index,
                       {i: (acc.start, acc.out, acc.weight) for i, acc in sums.items()})


def join_pieces(plan: SeparationPlan, results: Sequence[PieceResult], mean, std) -> th.Tensor:
    """Add the pieces' sums and divide: `[sources, channels, time]`, as `separate_tensor` returns
    (stacked). Raises `ValueError` when a piece is missing."""
    prefix = (1, len(plan.sources), plan.channels)
    totals = [OverlapAdd(prefix, 0, plan.length) for _ in plan.passes]
    for result in sorted(results, key=lambda r: r.index):
        for index, (start, out, weight) in result.sums.items():
            totals[index].out[..., start:start + out.shape[-1]] += out
            totals[index].weight[start:start + weight.shape[-1]] += weight
    return finish(plan, [(t.out, t.weight) for t in totals], mean, std)[0]


def separate_in_pieces(model, wav: th.Tensor, pieces: int, **options) -> th.Tensor:
    """The whole round trip in one process (for tests and single-machine use)."""
    mean, std = mix_stats(model, *track_stats(wav))
    device = options.pop("device", None)
    plan = plan_separation(model, wav.shape[-1], **options)
    results = [separate_piece(model, plan, piece, wav[:, piece.input_start:piece.input_stop],
                              piece.input_start, mean, std, device=device)
               for piece in split_plan(plan, pieces)]
    return join_pieces(plan, results, mean, std)


def separate_piece_file(model, plan: SeparationPlan, piece: Piece, path, mean, std,
                        **kwargs) -> PieceResult:
    """`separate_piece` on the piece's window, decoded from `path` by the worker that runs it."""
    window = read_window(path, piece.input_start, piece.input_stop, plan.samplerate, plan.channels)
    return separate_piece(model, plan, piece, window, piece.input_start, mean, std, **kwargs)


# -- a lead worker and its helpers ---------------------------------------------------------------
RunPiece = Callable[..., PieceResult]  # (plan, piece, window, mean, std) -> PieceResult


class HelperLost(Exception):
    """Raised by a `PendingPiece` whose helper failed or died: the lead runs the piece itself."""


class PendingPiece(Protocol):
    """A piece sent to a helper."""

    def wait(self, timeout_s: float) -> bool:
        """Whether the piece's answer is in, after waiting up to `timeout_s`."""

    def result(self) -> PieceResult:
        """The piece's sums; raises `HelperLost`."""


class Helper(Protocol):
    """An idle worker lent to the lead (the worker hands the splitter these)."""

    def start(self, task_id: str, attempt: int, options: SeparationConfig, plan: SeparationPlan,
              piece: Piece, window: th.Tensor, mean, std) -> PendingPiece:
        """Send the helper its piece and the window of samples it reads."""

    def abort(self, task_id: str, attempt: int) -> None:
        """Stop the helper's piece at its next segment (without waiting for it)."""


def separate_across_workers(model, wav: th.Tensor, options: SeparationConfig,
                            helpers: Sequence[Helper], run_here: RunPiece,
                            abort: threading.Event, task_id: str,
                            attempt: int) -> tuple[th.Tensor, int]:
    """`[sources, channels, time]` for `wav`, computed with `helpers`; also returns the number
    of pieces."""
    mean, std = mix_stats(model, *track_stats(wav))
    plan = plan_separation(model, wav.shape[-1], segment=options.segment, overlap=options.overlap,
                           shifts=options.shifts)
    pieces = split_plan(plan, 1 + len(helpers))

    def window(piece: Piece) -> th.Tensor:  # contiguous: a strided view does not survive Ray
        return wav[:, piece.input_start:piece.input_stop].contiguous()

    own = min(pieces, key=lambda piece: len(piece.segments))  # the lead also decodes, joins, writes
    lent = [piece for piece in pieces if piece is not own]
    sent = [helper.start(task_id, attempt, options, plan, piece, window(piece), mean, std)
            for helper, piece in zip(helpers, lent)]
    try:
        results = [run_here(plan, own, window(own), mean, std)]
        for piece, pending in zip(lent, sent):
            result = _helper_result(pending, abort, task_id, piece)
            results.append(result or run_here(plan, piece, window(piece), mean, std))
    except BaseException:
        for helper in helpers:
            helper.abort(task_id, attempt)
        raise
    return join_pieces(plan, results, mean, std), len(pieces)


def _helper_result(pending: PendingPiece, abort: threading.Event, task_id: str,
                   piece: Piece) -> PieceResult | None:
    """A helper's piece, or None when the helper failed; an abort here raises KeyboardInterrupt."""
    while not pending.wait(0.2):
        if abort.is_set():
            raise KeyboardInterrupt
    try:
        return pending.result()
    except HelperLost as exc:
        logger.warning("task %s: piece %d failed on its helper (%s); running it here", task_id,
                       piece.index, exc)
        return None
