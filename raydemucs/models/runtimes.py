"""How a worker runs a model's network: the precisions each device may run, and the runtime.

fp32 is demucs's own arithmetic (stems within 1 LSB of `python -m demucs.separate`); bf16 and
fp16 run the network's products at half width, faster where the hardware has them (CPUs with
AVX512-BF16 or AMX, GPUs), under torch's autocast. A CPU worker may run HTDemucs's network
exported and compiled by OpenVINO instead (`workers.runtime`, `raydemucs.models.compiled`);
other models (HDemucs, Demucs) and GPUs run eager. docs/precision.md gives each mode's SNR.

Nothing here imports torch until it runs a model: the client checks a precision against a pool's
device (`check_pool`) with this module.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from pathlib import Path
from typing import Callable

from ..core.errors import ConfigError, InvalidInput

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


# -- precisions -------------------------------------------------------------------------------
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


# -- runtimes ---------------------------------------------------------------------------------
def worker_runtime(wanted: str, device: str) -> str:
    """The runtime a worker on `device` runs for the config's `workers.runtime`: auto is
    `openvino` for a CPU worker where the extra is installed, else `eager`; GPUs run eager."""
    installed = importlib.util.find_spec("openvino") is not None
    if wanted == "openvino" and not installed:
        raise ConfigError("workers.runtime=openvino, but OpenVINO is not installed on this "
                          "worker; pip install 'raydemucs[openvino]', or use auto or eager")
    if device != "cpu" or wanted == "eager":
        return "eager"
    return "openvino" if installed else "eager"


def is_spectral(model) -> bool:
    """Whether `model` is an HTDemucs padding segments to its training length (as released
    models do), whose network can be exported."""
    from demucs.htdemucs import HTDemucs

    return isinstance(model, HTDemucs) and model.use_train_segment


def runtime_of(model, device: str, runtime: str) -> str:
    """The runtime `model` (one of a bag) runs on, on a worker of `runtime`: models that do not
    export, and GPUs, run eager."""
    return "openvino" if runtime == "openvino" and device == "cpu" and is_spectral(model) else "eager"


def forward_for(model, device: str, precision: str = "fp32", runtime: str = "eager") -> Callable:
    """How one model of a bag runs a batch of segments on `device` at `precision`: a function
    from `[n, channels, length]` to `[n, sources, channels, length]`."""
    if runtime_of(model, device, runtime) == "openvino":
        from .compiled import compiled_network, spectral_forward

        network = compiled_network(model, precision)
        return lambda mix: spectral_forward(model, mix, network)

    def eager(mix):
        with autocast(precision, device):
            return model(mix).float()
    return eager
