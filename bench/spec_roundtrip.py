"""What a spec costs to cross a process boundary: `TaskSpec.from_dict(spec.to_dict())`, the
round trip a batch submit, the scheduler and the journal make for every task.

    python bench/spec_roundtrip.py                  # 100,000 round trips, best of 3
    python bench/spec_roundtrip.py --n 20000 --rounds 5
"""
from __future__ import annotations

import argparse
import time

from raydemucs.core.config import SeparationConfig
from raydemucs.core.task import TaskSpec, new_task_id


def sample_spec() -> TaskSpec:
    """A spec as a batch submit makes one: every option set, a hash, a batch id."""
    options = SeparationConfig(model="htdemucs", shifts=1, overlap=0.25, segment=7.8,
                               format="mp3", mp3_bitrate=256)
    return TaskSpec(task_id=new_task_id(), project="catalogue", file_id="song-0001",
                    input_path="/music/song-0001.wav", output_dir="/stems", options=options,
                    input_sha256="ab" * 32, duration_s=212.5, batch_id="batch-1")


def round_trips(spec: TaskSpec, n: int) -> float:
    """Seconds for `n` round trips of `spec` through a plain dict."""
    start = time.perf_counter()
    for _ in range(n):
        spec = TaskSpec.from_dict(spec.to_dict())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best is reported")
    args = parser.parse_args()
    spec = sample_spec()
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    best = min(round_trips(spec, args.n) for _ in range(args.rounds))
    print(f"{args.n} round trips: {best:.3f} s, {best / args.n * 1e6:.2f} us each, "
          f"{args.n / best:,.0f} per second")


if __name__ == "__main__":
    main()
