"""Precision modes: which device can run which, and the autocast that runs a model at one.

fp32 is demucs's own arithmetic (stems within 1 LSB of `python -m demucs.separate`); bf16 and
fp16 run the network's products at half width, faster where the hardware has them (CPUs with
AVX512-BF16 or AMX, GPUs). docs/precision.md gives each mode's SNR against fp32.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from ..core.errors import InvalidInput

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def check_pool(precision: str, device: str) -> None:
    """What a client can tell from the pool's device (`cpu` or `cuda`) alone: fp16 needs a GPU."""
    if precision == "fp16" and device == "cpu":
        raise InvalidInput("precision fp16 needs a GPU, and this model's workers run on the CPU; "
                           "use fp32, or bf16 on a CPU with AVX512-BF16 or AMX")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def check_device(precision: str, device: str) -> None:
    """Raise InvalidInput when this machine's `device` cannot run `precision` at speed."""
    check_pool(precision, device)
    if precision != "bf16":
        return
    if device == "cpu" and not cpu_flags() & set(CPU_BF16_FLAGS):
        raise InvalidInput("precision bf16 needs a CPU with AVX512-BF16 or AMX (this worker's "
                           "has neither: it would run slower than fp32); use fp32")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_bf16_supported():
            raise InvalidInput("precision bf16 needs a GPU that computes in bfloat16 (Ampere or "
                               "newer); use fp16 or fp32")


def autocast(precision: str, device: str):
    """The context that runs torch ops at `precision` on `device` (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)
