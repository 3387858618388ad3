"""Chaos: faults while tasks run, 1,000 concurrent submits of one key, a SIGKILL while stems are written.

The fault run stops and starts whole Ray instances and removes nodes of a `ray.cluster_utils.Cluster`,
so it runs `bench/chaos.py` in a subprocess that owns its Ray (never the session's) and checks the
JSON it writes. The other two use the session's Ray through `make_service` and the runner's pieces.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos

CHAOS_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def load_chaos():
    """bench/chaos.py as a module (bench/ is no package; dataclasses need it in sys.modules)."""
    name = "raydemucs_bench_chaos"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CHAOS_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_faults_while_tasks_run_lose_nothing(tmp_path):
    """12 tasks; 2 worker SIGKILLs, a scheduler kill, a node removal and a whole-Ray restart."""
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    proc = subprocess.run([sys.executable, str(CHAOS_SCRIPT), "--tasks", "12", "--no-extras",
                           "--json", str(out), "--work-dir", str(tmp_path / "work")],
                          env=env, capture_output=True, text=True, timeout=480)
    log = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert out.exists(), log
    result = json.loads(out.read_text())
    figures = result["figures"]
    assert figures, result["violations"]
    assert figures["faults_injected"] == {"worker_sigkill": 2, "scheduler_kill": 1,
                                          "node_removal": 1, "ray_restart": 1}
    assert figures["accepted"] == figures["submitted"] == 12
    assert figures["lost"] == 0, result["lost_tasks"]
    assert figures["terminal_state_violations"] == 0, result["terminal_state_violations"]
    assert figures["succeeded"] + figures["failed"] == 12 and figures["cancelled"] == 0
    assert all(f["legitimate"] for f in result["failures"]), result["failures"]
    assert sum(f["expected"] for f in result["failures"]) == 1  # the planted bad task
    assert figures["duplicate_outputs"] == 0, result["outputs"]["duplicates"]
    assert figures["partial_output_folders_visible"] == 0, result["outputs"]["partial"]
    assert figures["missing_outputs"] == 0, result["outputs"]["missing_outputs"]
    assert figures["retries"] >= 1
    assert figures["recovery_p50_s"] is not None and figures["recovery_p95_s"] is not None
    # A restarted scheduler resumes the journal's tasks without waiting for a client call.
    assert figures["scheduler_stalls"] == 0, [f for f in result["faults"] if f["stalled"]]
    assert result["ok"], result["violations"]
    assert proc.returncode == 0, log


def test_a_thousand_concurrent_submits_of_one_key_make_one_task(make_service, audio, tmp_path):
    chaos = load_chaos()
    manager = make_service(workers={"max_workers": 1})
    result = chaos.concurrent_submits(manager, audio("same.wav", seconds=2.0), tmp_path / "out",
                                      n=1000, threads=32)
    assert result["distinct_task_ids"] == 1, result
    assert result["journal_rows"] == 1, result
    assert result["state"] == "succeeded" and result["attempts"] == 1, result
    assert result["folder_whole"] and result["other_entries"] == [], result


def test_sigkill_while_stems_are_written_leaves_no_partial_folder(make_service, audio, tmp_path):
    chaos = load_chaos()
    manager = make_service(workers={"max_workers": 1})
    result = chaos.kill_during_write(manager, audio("long.wav", seconds=20.0), tmp_path / "out",
                                     fmt="mp3")
    assert result["hit_write_phase"], result  # the staging folder held some stems, no manifest
    assert not result["final_folder_visible_after_kill"], result
    assert result["state"] == "succeeded" and result["attempts"] == 2, result
    assert result["folder_whole"], result
    assert result["left_in_project_folder"] == [], result


def test_sigkill_while_writing_the_last_attempt_leaves_no_staging_folder(make_service, audio,
                                                                         tmp_path):
    """With no retry left the task fails; its half-written staging folder must not stay behind."""
    chaos = load_chaos()
    manager = make_service(workers={"max_workers": 1}, tasks={"max_retries": 0})
    result = chaos.kill_during_write(manager, audio("long.wav", seconds=20.0), tmp_path / "out",
                                     fmt="mp3")
    assert result["hit_write_phase"], result
    assert not result["final_folder_visible_after_kill"], result
    assert result["state"] == "failed" and result["error"]["type"] == "WorkerDied", result
    assert result["left_in_project_folder"] == [], result
