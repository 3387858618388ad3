"""One long track on several workers, led by the worker the scheduler gave the task.

The lead decodes the track, lays out demucs's own segment plan (`raydemucs.longtrack`), cuts it
into contiguous pieces, keeps the smallest (it also decodes, joins and writes), sends the others
to the idle workers the scheduler lent it (each gets only its window of samples), and joins the
sums: the stems equal `Separator.separate_tensor`'s within float tolerance. A helper that fails costs time, not the
task: the lead runs that piece itself.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

import ray
import torch as th

from .config import SeparationConfig
from .longtrack import Piece, PieceResult, join_pieces, plan_separation, split_plan, track_stats

logger = logging.getLogger("raydemucs.pieces")

RunPiece = Callable[..., PieceResult]  # (plan, piece, window, mean, std) -> PieceResult


def separate_across_workers(model, wav: th.Tensor, options: SeparationConfig, helpers: Sequence,
                            run_here: RunPiece, abort: threading.Event, task_id: str,
                            attempt: int) -> tuple[th.Tensor, int]:
    """`[sources, channels, time]` for `wav`, computed with `helpers` (actor handles); also
    returns the number of pieces."""
    mean, std = track_stats(wav)
    plan = plan_separation(model, wav.shape[-1], segment=options.segment, overlap=options.overlap,
                           shifts=options.shifts)
    pieces = split_plan(plan, 1 + len(helpers))

    def window(piece: Piece) -> th.Tensor:  # contiguous: a strided view does not survive Ray
        return wav[:, piece.input_start:piece.input_stop].contiguous()

    own = min(pieces, key=lambda piece: len(piece.segments))  # the lead also decodes, joins, writes
    lent = [piece for piece in pieces if piece is not own]
    refs = [helper.separate_piece.remote(task_id, attempt, options.model, options.repo, plan,
                                         piece, window(piece), mean, std)
            for helper, piece in zip(helpers, lent)]
    try:
        results = [run_here(plan, own, window(own), mean, std)]
        for piece, ref in zip(lent, refs):
            result = _helper_result(ref, abort, task_id, piece)
            results.append(result or run_here(plan, piece, window(piece), mean, std))
    except BaseException:
        for helper in helpers:
            helper.abort.remote(task_id, attempt)
        raise
    return join_pieces(plan, results, mean, std), len(pieces)


def _helper_result(ref, abort: threading.Event, task_id: str, piece: Piece) -> PieceResult | None:
    """A helper's piece, or None when the helper failed; an abort here raises KeyboardInterrupt."""
    while not ray.wait([ref], timeout=0.2)[0]:
        if abort.is_set():
            raise KeyboardInterrupt
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        logger.warning("task %s: piece %d failed on its helper (%s); running it here", task_id,
                       piece.index, str(exc).splitlines()[0])
        return None
