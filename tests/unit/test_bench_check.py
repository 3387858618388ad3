"""`bench/run.py --check`: each contender's ratio to the CLI against the published one."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RUN_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "run.py"


@pytest.fixture
def bench_run(tmp_path, monkeypatch):
    """bench/run.py as a module, publishing to a file of the test's own."""
    spec = importlib.util.spec_from_file_location("raydemucs_bench_run", RUN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PUBLISHED", tmp_path / "published.json")
    monkeypatch.setattr(sys, "argv", ["bench/run.py", "--only", "cli,warm"])
    return module


def report(warm: float, clips: int = 8, **more) -> dict:
    contenders = {"cli": {"vs_cli": 1.0}, "warm": {"vs_cli": warm},
                  **{name: {"vs_cli": ratio} for name, ratio in more.items()},
                  "warm-bf16": {"error": "RuntimeError: no bf16 here"}}
    return {"started_at": 0.0, "machine": {"cpus": 2}, "contenders": contenders,
            "args": {"clips": clips, "min_s": 10.0, "max_s": 20.0, "device": "cpu"}}


def test_a_ratio_that_fell_beyond_the_tolerance_is_a_regression(bench_run):
    bench_run.publish(report(1.20))
    lines = bench_run.check(report(1.10, old=0.7), tolerance=0.05)
    assert "REGRESSED  warm: 1.20x -> 1.10x" in [line.strip() for line in lines]
    assert any(line.strip() == "new        old: 0.70x" for line in lines)
    assert not any("warm-bf16" in line for line in lines)  # a failed row has no ratio


def test_a_ratio_within_the_tolerance_is_the_same_and_a_gain_is_improved(bench_run):
    bench_run.publish(report(1.20))
    assert "same       warm: 1.20x -> 1.16x" in map(str.strip, bench_run.check(report(1.16), 0.05))
    assert "improved   warm: 1.20x -> 1.30x" in map(str.strip, bench_run.check(report(1.30), 0.05))


def test_another_workload_is_noted(bench_run):
    bench_run.publish(report(1.20))
    lines = bench_run.check(report(1.20, clips=2), 0.05)
    assert any(line.strip().startswith("note: another workload") for line in lines)
    assert not any("note" in line for line in bench_run.check(report(1.20), 0.05))


def test_the_published_ratios_in_the_repository_name_their_run():
    published = (RUN_SCRIPT.parent / "published.json").read_text()
    assert '"command": "python bench/run.py' in published and '"warm":' in published
