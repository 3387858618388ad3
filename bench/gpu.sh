#!/usr/bin/env bash
# The GPU benchmark as one prepared command, from a clean checkout:
#
#   bash bench/gpu.sh                         # GPU: 32 clips of 3 min, CLI vs fp32/bf16/fp16
#   bash bench/gpu.sh --device cpu --tiny     # the same code paths on a CPU, in about a minute
#
# Uses $PYTHON (default python3) when it already imports torch, demucs and raydemucs; otherwise
# makes bench/.venv-gpu (seeing the system's packages, so a preinstalled CUDA torch is reused)
# and installs this checkout into it. Every other argument goes to bench/gpu.py, which prints
# one table and writes bench/results/gpu.json (--out).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch, demucs, raydemucs" >/dev/null 2>&1; then
    "$PYTHON" -m venv --system-site-packages bench/.venv-gpu
    PYTHON=bench/.venv-gpu/bin/python
    "$PYTHON" -m pip install -q -e .
fi
exec "$PYTHON" bench/gpu.py "$@"
