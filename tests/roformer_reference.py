"""The reference the RoFormer tests compare raydemucs with: the networks the community checkpoints
were trained with, and the training repo's chunked inference (`demix`).

The networks are python-audio-separator's copy of Music-Source-Separation-Training's model code
(`audio_separator/separator/uvr_lib_v5/roformer/`), installed with `pip install --no-deps
audio-separator` and loaded here by path: its package `__init__` (and its heavy dependencies) never
run. That copy leaves out one step of the training repo's forward pass, `zero_dc` (on by default
there: the DC bin is zeroed before the inverse STFT); `reference_class` adds it back, as the
training repo does it, without changing the copy.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

PACKAGE = "audio_separator"
ROFORMER = f"{PACKAGE}.separator.uvr_lib_v5.roformer"
MODULES = {"bs_roformer": ("bs_roformer", "BSRoformer"),
           "mel_band_roformer": ("mel_band_roformer", "MelBandRoformer")}


def _stub_packages() -> None:
    """Empty packages standing for audio_separator's, so its roformer modules import without
    running any package `__init__`."""
    if ROFORMER in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)  # finds the top package without running it
    if spec is None or not spec.submodule_search_locations:
        raise AssertionError("audio-separator is not installed (pip install --no-deps "
                             "audio-separator; see pyproject.toml's test extra)")
    folder = Path(spec.submodule_search_locations[0])
    name = PACKAGE
    for part in [None, "separator", "uvr_lib_v5", "roformer"]:
        if part:
            name, folder = f"{name}.{part}", folder / part
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules.setdefault(name, package)


class _TorchWithZeroDc:
    """`torch`, but its `istft` zeroes the DC bin first: the training repo's `zero_dc` step
    (`index_fill` of frequency 0, just before the inverse STFT)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def istft(spectrum, *args, **kwargs):
        zero = torch.tensor(0, device=spectrum.device)
        return torch.istft(spectrum.index_fill(1, zero, 0.0), *args, **kwargs)


def reference_class(architecture: str) -> type:
    """The reference network class of `architecture` (`bs_roformer`, `mel_band_roformer`), taking
    a checkpoint's `model:` options; its state dict is the copy's, unchanged."""
    _stub_packages()
    module_name, class_name = MODULES[architecture]
    module = importlib.import_module(f"{ROFORMER}.{module_name}")
    base = getattr(module, class_name)

    def forward(self, raw_audio):
        if not self.zero_dc:
            return base.forward(self, raw_audio)
        module.torch = _TorchWithZeroDc()
        try:
            return base.forward(self, raw_audio)
        finally:
            module.torch = torch

    return type(f"Reference{class_name}", (base,), {"forward": forward})


def linear_fade_window(chunk_size: int, fade_size: int) -> torch.Tensor:
    """Ones, with a linear fade in over the first `fade_size` samples and out over the last."""
    window = torch.ones(chunk_size)
    window[:fade_size] = torch.linspace(0, 1, fade_size)
    window[-fade_size:] = torch.linspace(1, 0, fade_size)
    return window


def reference_demix(model, config, mix, device: str = "cpu") -> np.ndarray:
    """`mix` (`[channels, time]`) separated as the training repo's `demix` does it (its generic
    mode) at `config`'s settings (a `RoformerConfig`): chunks of `chunk_size` every `step`
    samples, the track reflect-padded by `border` on both sides when longer than twice that, a
    short last chunk reflect-padded (zero-padded when under half a chunk), batches of
    `batch_size` chunks, each weighted by the linear fade window (no fade in when the batch is
    the first chunk alone, no fade out in the batch that reaches the end: the window is the
    batch's, as there), summed and divided by the summed weights. `[stems, channels, time]`."""
    chunk, step, border, fade = config.chunk_size, config.step, config.border, config.fade_size
    mix = torch.as_tensor(np.asarray(mix), dtype=torch.float32)
    length = mix.shape[-1]
    padded = length > 2 * border and border > 0
    if padded:
        mix = torch.nn.functional.pad(mix, (border, border), mode="reflect")
    total = mix.shape[-1]
    result = torch.zeros((len(config.stems), *mix.shape))
    counter = torch.zeros_like(result)
    model = model.eval().to(device)
    batch, start = [], 0
    with torch.inference_mode():
        while start < total:
            part = mix[:, start:start + chunk]
            mode = "reflect" if part.shape[-1] > chunk // 2 else "constant"
            batch.append((start, part.shape[-1],
                          torch.nn.functional.pad(part, (0, chunk - part.shape[-1]), mode=mode)))
            start += step
            if len(batch) < config.batch_size and start < total:
                continue
            out = model(torch.stack([part for _, _, part in batch]).to(device)).cpu()
            window = linear_fade_window(chunk, fade)
            if start - step == 0:
                window[:fade] = 1
            elif start >= total:
                window[-fade:] = 1
            for row, (begin, size, _) in enumerate(batch):
                result[..., begin:begin + size] += out[row, ..., :size] * window[:size]
                counter[..., begin:begin + size] += window[:size]
            batch = []
    estimate = np.nan_to_num((result / counter).numpy(), nan=0.0)
    return estimate[..., border:-border] if padded else estimate
