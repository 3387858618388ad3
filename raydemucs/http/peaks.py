"""A stem's waveform summary: the lowest and highest sample in each of `points` equal spans.

Computed where the stem is read (this node, the node that holds it, or a bucket's file), a block
at a time, so a stem is never whole in memory; a page draws its waveforms from it without
decoding whole stems. A replica keeps the last few summaries, keyed by the stem's SHA-256.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import ray
import soundfile as sf

from ..core.errors import InvalidInput

MAX_POINTS = 10_000
BLOCK_FRAMES = 1 << 16
CACHED = 64


def check_points(points: int) -> int:
    if not 1 <= points <= MAX_POINTS:
        raise InvalidInput(f"points {points} must be between 1 and {MAX_POINTS}")
    return points


def peaks(source, points: int) -> dict:
    """`{"points", "frames", "samplerate", "duration_s", "min", "max"}` of an audio file (a path
    or a binary file object): frame f is in span f * spans // frames, with every channel; fewer
    spans than `points` when the file has fewer frames."""
    with sf.SoundFile(source) as audio:
        frames, rate = audio.frames, audio.samplerate
        count = min(points, frames)
        low, high = np.full(count, np.inf, np.float32), np.full(count, -np.inf, np.float32)
        start = 0
        while start < frames:  # (`blocks` would pad a short read with stale memory)
            block = audio.read(min(BLOCK_FRAMES, frames - start), dtype="float32", always_2d=True)
            if not len(block):
                break
            spans = (np.arange(start, start + len(block)) * count) // frames
            edges = np.flatnonzero(np.diff(spans)) + 1
            firsts = np.concatenate(([0], edges))
            where = spans[firsts]
            low[where] = np.minimum(low[where], np.minimum.reduceat(block.min(axis=1), firsts))
            high[where] = np.maximum(high[where], np.maximum.reduceat(block.max(axis=1), firsts))
            start += len(block)
    low[np.isinf(low)], high[np.isinf(high)] = 0.0, 0.0  # spans the header promised, the file lacked
    return {"points": count, "frames": frames, "samplerate": rate, "duration_s": frames / rate,
            "min": np.round(low.astype(float), 4).tolist(),
            "max": np.round(high.astype(float), 4).tolist()}


@ray.remote(num_cpus=0)
def peaks_on_node(path: str, points: int) -> dict:
    """`peaks` of a file on the node this task runs on."""
    return peaks(path, points)


class PeaksCache:
    """The last `CACHED` summaries, by (stem SHA-256, points)."""

    def __init__(self):
        self._found: OrderedDict[tuple[str, int], dict] = OrderedDict()

    def get(self, key: tuple[str, int]) -> dict | None:
        if key in self._found:
            self._found.move_to_end(key)
        return self._found.get(key)

    def put(self, key: tuple[str, int], summary: dict) -> None:
        self._found[key] = summary
        while len(self._found) > CACHED:
            self._found.popitem(last=False)
