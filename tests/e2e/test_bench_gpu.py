"""bench/gpu.sh, the GPU benchmark's one command, run here as `--device cpu --tiny`: the same
code paths (the demucs CLI, the engine per precision, one segment per pass and batched, the
table and the JSON) on a small HTDemucs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GPU_SH = Path(__file__).resolve().parents[2] / "bench" / "gpu.sh"


def test_gpu_sh_runs_every_row_on_the_cpu_and_writes_the_table(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(GPU_SH), "--device", "cpu", "--tiny", "--clips", "2",
                           "--seconds", "2", "--batch", "4", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {row["row"]: row for row in report["rows"]}
    assert list(rows) == ["demucs CLI", "raydemucs fp32", "raydemucs fp32, batches <= 4",
                          "raydemucs bf16", "raydemucs bf16, batches <= 4", "raydemucs fp16",
                          "raydemucs fp16, batches <= 4"]
    assert rows["raydemucs fp32"]["snr_db"] == float("inf")      # the reference itself
    for label in ("raydemucs fp32", "raydemucs fp32, batches <= 4"):
        assert rows[label]["max_diff_lsb_vs_cli"] <= 1              # demucs's own arithmetic
    assert rows["raydemucs fp32, batches <= 4"]["forward_passes"] == 1  # both clips in one pass
    assert rows["raydemucs fp32"]["forward_passes"] == 2
    assert "needs a GPU" in rows["raydemucs fp16"]["refused"]
    bf16 = rows["raydemucs bf16"]
    assert "refused" in bf16 or bf16["snr_db"] >= 35.0
    assert report["table"] in proc.stdout and "x real time" in report["table"]
    roformer = {row["row"]: row for row in report["roformer"]["rows"]}
    assert list(roformer) == ["reference demix (MSST)", *list(rows)[1:]]
    for label in ("raydemucs fp32", "raydemucs fp32, batches <= 4"):
        assert roformer[label]["max_diff_lsb"] <= 1                  # the training repo's demix
    assert roformer["raydemucs fp32, batches <= 4"]["forward_passes"] == 3  # 2 x 5 chunks
    assert "needs a GPU" in roformer["raydemucs fp16"]["refused"]
    assert "vs ref" in report["table"]
